"""Issue 17 (prefill / mixed shrinks): what the vendor GEMM does with the same shape, as a yardstick.

The rank-64 QKV shrink of the prefill-8k case is ``x (8192 x 4096) @ A.T`` with 192 output columns: 12.9 GFLOP
over ~80 MB, so it must keep the tensor cores busy *and* stream at the copy bandwidth to reach issue 17's 85%.
This script times ``torch.matmul`` (cuBLAS) on the dense GEMM of each shrink's shape, one weight for the whole
batch (no adapters, no metadata, no gather: less work than the LoRA kernel does), at the prefill-8k (8192) and
the mixed (8768) token counts, the way ``python -m lora compare`` times (one call among many in one CUDA graph,
inputs rotating past L2). It prints each time, its share of the copy bandwidth for the GEMM's own bytes, and the
dense GEMM's tensor-core rate.

    PYTHONPATH=. python benchmarks/dense_reference.py --json $OUT/dense_reference.json
"""

from __future__ import annotations

import argparse
import sys

import torch

from lora.compare import timing as TM
from probe_record import pct_of_copy, write_rows  # benchmarks/: the script's directory

# (label, output columns): the shrinks of a Llama-3-8B layer at ranks 16 and 64 (shrink1..3 = 1..3 slices)
SHAPES = [("r16 shrink1", 16), ("r16 shrink3", 48), ("r64 shrink1", 64), ("r64 shrink2", 128), ("r64 shrink3", 192)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    p.add_argument("--tokens", default="8192,8768", help="token counts (prefill-8k: 8192; the mixed case: 8768)")
    p.add_argument("--k", type=int, default=4096)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    budget = TM.Budget(10.0, 50.0, 10, 500)
    copy = TM.copy_bandwidth(dev)["gbps"]
    print(f"{torch.cuda.get_device_name()}  copy {copy:.0f} GB/s", flush=True)
    K, rows = args.k, []
    for s in (int(t) for t in args.tokens.split(",")):
        for label, n in SHAPES:
            nbytes = (s * K + n * K + s * n) * 2
            sets = TM.rotation_sets(nbytes, dev)
            xs = [torch.randn(s, K, device=dev, dtype=torch.bfloat16) for _ in range(sets)]
            w = torch.randn(n, K, device=dev, dtype=torch.bfloat16)
            outs = [torch.empty(s, n, device=dev, dtype=torch.bfloat16) for _ in range(sets)]
            fns = [(lambda i=i: torch.matmul(xs[i], w.t(), out=outs[i])) for i in range(sets)]
            fns[0]()
            torch.cuda.synchronize()
            ref = xs[0].double() @ w.double().t()
            err = ((outs[0].double() - ref).norm() / ref.norm()).item()
            assert err < 1.5e-2, (label, s, err)
            _, batched = TM.time_cuda_graph(fns, dev, budget)
            us = batched.median_us
            pct = pct_of_copy(nbytes, us, copy)
            tflops = 2 * s * K * n / (us * 1e-6) / 1e12
            bound = nbytes / (0.85 * copy * 1e3)
            rows.append(dict(shape=label, tokens=s, K=K, n=n, bytes=nbytes, us=us, pct_copy=pct, tflops=tflops,
                             bound85_us=bound, rel_err=err))
            print(f"{label:12s} s={s:5d} n={n:3d}  cublas {us:7.2f} us  {pct:5.1f}% of copy  {tflops:6.1f} TFLOP/s"
                  f"  (85% of copy: {bound:6.2f} us)", flush=True)
            del xs, outs
            torch.cuda.empty_cache()
    if args.json:
        write_rows(args.json, copy, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
