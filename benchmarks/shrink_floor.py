"""Issue 17 (prefill): what a rank-16 prefill shrink costs without what the real kernel adds to a GEMM.

The shipped shrink (``lora/triton/shrink.py``, plan 64 x 16, BLOCK_K 128, 4 stages) reads the 8192 x 4096
x of the prefill-8k case at 80-82% of copy bandwidth, and the same plan reads the 8192 x 14336 x of the
down projection at 98%: fitted over the two, about 4.6 us of each call is a fixed cost. This script times,
as ``python -m lora compare`` does (one call among many in one CUDA graph, inputs rotating past L2), the
same tile loop with less around it, at both K:

* ``plain``: one program per 64-row block, one weight (16 x K) for every block: a dense GEMM, no metadata;
* ``plain-8w``: the same, the block's weight one of eight (16 blocks each), as eight equal segments;
* ``gather``: ``plain-8w`` with the block's rows read through a row index loaded from memory (the shipped
  kernel's ``row_order``), and the block's weight and row count read from a per-block table first: the
  two dependent loads the shipped kernel makes before its K loop;
* ``w-trip``: rows from the program id (x loads need no metadata), the block's weight read from a
  per-block table first (one dependent load before the weight tiles only);
* ``one-trip``: the block's weight and its row indices read together (one dependent load before both);
* ``cublas``: ``torch.matmul`` of x and one weight (the vendor GEMM on the same bytes).

The shipped kernel's own times on these shapes are the compare's (``shrink1`` and ``shrink_down`` of
``llama3-8b-r16-prefill-8k``).

    PYTHONPATH=. python benchmarks/shrink_floor.py --json $OUT/shrink_floor.json
"""

from __future__ import annotations

import argparse
import sys

import torch
import triton
import triton.language as tl

from lora.compare import timing as TM
from probe_record import pct_of_copy, write_rows  # benchmarks/: the script's directory


@triton.jit
def _shrink_rows(x_ptr, w_ptr, out_ptr, tab_ptr, idx_ptr, K, stride_xm, stride_wl,
                 WEIGHTS: tl.constexpr, TRIPS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """``TRIPS``: what the program reads before its K loop. 0: nothing (rows and weight from the program
    id); 1: the weight; 2: the weight and row count, then the row indices; 3: the weight and the row indices
    together."""
    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    if TRIPS == 1:  # the weight from the table, the rows from the program id
        w = tl.load(tab_ptr + 2 * pid)
        row_ok = offs_m < BLOCK_M
        rows = pid * BLOCK_M + offs_m
    elif TRIPS == 3:  # weight and row indices in one round trip (independent loads)
        w = tl.load(tab_ptr + 2 * pid)
        rows = tl.load(idx_ptr + pid * BLOCK_M + offs_m)
        row_ok = rows >= 0
    elif TRIPS == 2:
        w = tl.load(tab_ptr + 2 * pid)
        n_rows = tl.load(tab_ptr + 2 * pid + 1)
        row_ok = offs_m < n_rows
        rows = tl.load(idx_ptr + pid * BLOCK_M + offs_m, mask=row_ok, other=0)
    else:
        w = pid * WEIGHTS // tl.num_programs(0)
        row_ok = offs_m < BLOCK_M
        rows = pid * BLOCK_M + offs_m
    x_ptrs = x_ptr + rows[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + w * stride_wl + offs_n[None, :] * K + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(x_ptrs + k, mask=row_ok[:, None], other=0.0)
        b = tl.load(w_ptrs + k)
        acc = tl.dot(a, b, acc)
    o_ptrs = out_ptr + rows[:, None] * BLOCK_N + offs_n[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    p.add_argument("--tokens", type=int, default=8192)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    budget = TM.Budget(10.0, 50.0, 10, 500)
    copy = TM.copy_bandwidth(dev)["gbps"]
    print(f"{torch.cuda.get_device_name()}  copy {copy:.0f} GB/s", flush=True)
    s, r, L, BM = args.tokens, 16, 8, 64
    rows = []
    for K in (4096, 14336):
        nbytes = s * K * 2 + L * r * K * 2 + s * r * 2
        sets = TM.rotation_sets(nbytes, dev)
        xs = [torch.randn(s, K, device=dev, dtype=torch.bfloat16) for _ in range(sets)]
        w = torch.randn(L, r, K, device=dev, dtype=torch.bfloat16)
        outs = [torch.empty(s, r, device=dev, dtype=torch.bfloat16) for _ in range(sets)]
        nb = s // BM
        tab = torch.tensor([[b * L // nb, BM] for b in range(nb)], device=dev, dtype=torch.int32)
        idx = torch.arange(s, device=dev, dtype=torch.int32)

        def tri(weights, trips, stages, i):
            return lambda: _shrink_rows[(nb,)](xs[i], w, outs[i], tab, idx, K, K, r * K, WEIGHTS=weights,
                                                TRIPS=trips, BLOCK_M=BM, BLOCK_N=r, BLOCK_K=128,
                                                num_warps=4, num_stages=stages)

        variants = {
            "plain": lambda i: tri(1, 0, 4, i),
            "plain-5st": lambda i: tri(1, 0, 5, i),
            "plain-8w": lambda i: tri(L, 0, 4, i),
            "gather": lambda i: tri(L, 2, 4, i),
            "w-trip": lambda i: tri(L, 1, 4, i),
            "one-trip": lambda i: tri(L, 3, 4, i),
            "cublas": lambda i: (lambda: torch.matmul(xs[i], w[0].t(), out=outs[i])),
        }
        ref = (xs[0].float() @ w[0].float().t())
        for name, make in variants.items():
            fns = [make(i) for i in range(sets)]
            fns[0]()
            torch.cuda.synchronize()
            if name in ("plain", "plain-5st", "cublas"):
                err = ((outs[0].float() - ref).norm() / ref.norm()).item()
                assert err < 1.5e-2, (name, err)
            _, batched = TM.time_cuda_graph(fns, dev, budget)
            us = batched.median_us
            pct = pct_of_copy(nbytes, us, copy)
            rows.append(dict(variant=name, K=K, tokens=s, bytes=nbytes, us=us, pct_copy=pct))
            print(f"K={K:5d} {name:10s} {us:7.2f} us  {pct:5.1f}% of copy", flush=True)
        del xs, outs
        torch.cuda.empty_cache()
    # fixed cost per call, fitted over the two K: t = F + bytes / rate
    for name in dict.fromkeys(r_["variant"] for r_ in rows):
        a, b = [r_ for r_ in rows if r_["variant"] == name]
        rate = (b["bytes"] - a["bytes"]) / (b["us"] - a["us"])  # bytes per us
        fixed = a["us"] - a["bytes"] / rate
        print(f"{name:10s} rate {rate / 1e3:6.0f} GB/s  fixed {fixed:5.2f} us", flush=True)
    if args.json:
        write_rows(args.json, copy, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
