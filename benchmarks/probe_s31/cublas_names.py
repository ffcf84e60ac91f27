"""Session 31 probe: the names and device times of the cuBLAS kernels torch.matmul picks for the shrinks' dense shapes."""
import torch
from torch.profiler import profile, ProfilerActivity
dev = "cuda"
for s, n in ((8192, 192), (8768, 192), (8192, 128), (8192, 64)):
    x = torch.randn(s, 4096, device=dev, dtype=torch.bfloat16); w = torch.randn(n, 4096, device=dev, dtype=torch.bfloat16)
    for _ in range(3): torch.matmul(x, w.t())
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5): torch.matmul(x, w.t())
        torch.cuda.synchronize()
    for e in prof.key_averages():
        if e.device_type.name == "CUDA" or "gemm" in e.key.lower():
            print(s, n, e.key[:200], round(e.device_time / 1, 2) if hasattr(e, "device_time") else "")
