"""One small case of each Triton kernel, for compute-sanitizer (memcheck) in test_sanitizer.py.

Runs: shrink (one pass, and split-K with its workspace and counters), expand with aligned slices
(vector branch) and ragged slices (scalar branch), and the fused QKV op. Exits non-zero on a wrong
result, so a sanitizer run also checks the answers.
"""

from __future__ import annotations

import sys

import torch

from lora import LoRABatchInfo, get_backend_from_name
from lora.triton import tiling
from lora.triton.expand import lora_expand
from lora.triton.shrink import lora_shrink


def main() -> int:
    dev = "cuda"
    torch.manual_seed(0)
    bi = LoRABatchInfo.from_segments([5, 0, 40, 3], [1, 0, 0, 2], [16, 8, 0], [0.5, 1.0, 2.0], device=dev)
    s, k = 50, 256
    x = torch.randn(s, k, device=dev, dtype=torch.bfloat16)
    a = torch.randn(3, 3 * 16, k, device=dev, dtype=torch.bfloat16) / 16
    ref_backend = get_backend_from_name("torch")("torch", bi)
    want = ref_backend.run_lora_a_sgemm(x, a, stack_num=3).float()
    ok = True
    for plan in (tiling.ShrinkPlan(16, 16, 3, 64, 1), tiling.ShrinkPlan(32, 16, 3, 64, 2)):
        got = lora_shrink(x, a, 3, bi, plan=plan).float()
        ok &= bool(torch.allclose(got, want, atol=3e-2, rtol=3e-2))
    xa = want.to(torch.bfloat16)
    for offsets in ([0, 64, 96, 128], [0, 61, 90, 128]):
        b = torch.randn(3, 128, 16, device=dev, dtype=torch.bfloat16) / 4
        base = torch.randn(s, 128, device=dev, dtype=torch.bfloat16)
        off = torch.tensor(offsets, dtype=torch.int32, device=dev)
        widest = max(q - p for p, q in zip(offsets, offsets[1:]))
        expect = ref_backend.expand(xa, b, off, widest, base.clone()).float()
        got = lora_expand(xa, b, off, widest, base, bi, plan=tiling.ExpandPlan(16, 32, 2)).float()
        ok &= bool(torch.allclose(got, expect, atol=3e-2, rtol=3e-2))
    tb = get_backend_from_name("triton")("triton", bi)
    b = torch.randn(3, 128, 16, device=dev, dtype=torch.bfloat16) / 4
    base = torch.randn(s, 128, device=dev, dtype=torch.bfloat16)
    off = torch.tensor([0, 64, 96, 128], dtype=torch.int32, device=dev)
    expect = ref_backend.run_qkv_lora(x, a, b, off, 64, base_output=base.clone()).float()
    got = tb.run_qkv_lora(x, a, b, off, 64, base_output=base).float()
    ok &= bool(torch.allclose(got, expect, atol=5e-2, rtol=5e-2))
    torch.cuda.synchronize()
    print("sanitize_case:", "ok" if ok else "WRONG RESULTS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
