"""Quick device smoke test of the "pallas" backend: each public op on a few compositions vs the oracle.

    PYTHONPATH=. python benchmarks/pallas_smoke.py
"""
import os, sys, time, traceback
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
import numpy as np
import torch
import lora
from tests.lora import contract as C
from tests.lora.torch_cases import run_op

print({s.name: (s.available, s.reason) for s in lora.available_backends()}, flush=True)
be = lora.get_backend_from_name("pallas")("pallas")
rng = np.random.default_rng(0)
fails = 0
cases = [
    ("decode64", C.decode_composition(rng, 64, 8, 16), 4096, 4096, 1024),
    ("decode17", C.decode_composition(rng, 17, 5, 16), 4096, 4096, 1024),
    ("mixed", C.Composition([300, 0, 500, 211], [2, 1, 0, 2], [64, 64, 29, 0], [0.5, 1.0, 2.0, 1.5], 64, 1013), 4096, 4096, 1024),
    ("prefill", C.Composition([1000, 3000, 120, 4072], [0, 1, 2, 3], [64] * 4, [0.5] * 4, 64, 8192), 4096, 4096, 1024),
    ("tiny", C.random_composition(rng), 40, 24, 8),
]
only = sys.argv[1].split(",") if len(sys.argv) > 1 else None
for name, comp, k, n, kv in cases:
    if only and name not in only:
        continue
    for op in ["shrink1", "shrink3", "expand", "expand_nobase", "qkv", "gate_up"]:
        for dt in ["bfloat16"] + (["float16", "float32"] if name in ("tiny", "decode17") else []):
            t0 = time.time()
            try:
                chk, _ = run_op(be, op, comp, rng, dt, "cuda", k=k, n=n, kv=kv)
                torch.cuda.synchronize()
                ok, detail = chk.ok, chk.detail
            except Exception as e:
                ok, detail = False, f"{type(e).__name__}: {e}"[:300]
                traceback.print_exc()
            fails += not ok
            print(f"{name:9s} {op:14s} {dt:9s} {'OK ' if ok else 'BAD'} {detail} ({time.time()-t0:.1f}s)", flush=True)
from lora.pallas import interop
print("compile stats", interop.stats())
sys.exit(1 if fails else 0)
