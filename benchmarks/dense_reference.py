"""Issue 17 (prefill / mixed shrinks): what the vendor GEMM does with the same shape, as a yardstick.

The rank-64 QKV shrink of the prefill-8k case is ``x (8192 x 4096) @ A.T`` with 192 output columns: 12.9 GFLOP
over ~80 MB, so it must keep the tensor cores busy *and* stream at the copy bandwidth to reach issue 17's 85%.
This script times ``torch.matmul`` (cuBLAS) on the dense GEMM of each shrink's shape, one weight for the whole
batch (no adapters, no metadata, no gather: less work than the LoRA kernel does), at the prefill-8k (8192) and
the mixed (8768) token counts, the way ``python -m lora compare`` times (one call among many in one CUDA graph,
inputs rotating past L2). It prints each time, its share of the copy bandwidth for the GEMM's own bytes, and the
dense GEMM's tensor-core rate.

Beside cuBLAS, the same GEMM in Triton (``--triton``, on by default), one output tile of ``BLOCK_M x BLOCK_N``
a program with the column groups of a row block launched next to each other, in two ways: ``cp.async`` (tiles
loaded through pointers, as the shrink kernel does) and ``tma`` (tiles loaded through host-made tensor
descriptors). That separates what the Triton compiler reaches on the bare shape from what the LoRA kernel adds
(metadata, the row gather). ``--modes`` adds two more: ``ws`` (descriptor loads, the K loop warp-specialized by
the compiler: a producer warp issuing the loads, the kernel's warps the wgmmas), ``persist`` (one program per SM
walking the tiles, the output stored through a descriptor) and ``persist-ws`` (the same, its tile loop
warp-specialized). On the H100 with Triton 3.6 (session 33) ``ws`` did not finish (killed after 280 s): run it
last, under a timeout.

    PYTHONPATH=. python benchmarks/dense_reference.py --json $OUT/dense_reference.json
"""

from __future__ import annotations

import argparse
import sys

import torch
import triton
import triton.language as tl

from lora.compare import timing as TM
from probe_record import pct_of_copy, write_rows  # benchmarks/: the script's directory

# (label, output columns): the shrinks of a Llama-3-8B layer at ranks 16 and 64 (shrink1..3 = 1..3 slices)
SHAPES = [("r16 shrink1", 16), ("r16 shrink3", 48), ("r64 shrink1", 64), ("r64 shrink2", 128), ("r64 shrink3", 192)]
# Triton tiles timed on the rank-64 shapes: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). The first two are the
# tiling of the shipped rank-64 shrink3 plans (three column groups of 64: H200 128 rows, H100 256 rows).
TILES = [(128, 64, 64, 4, 4), (256, 64, 64, 8, 4), (128, 64, 128, 4, 3), (64, 64, 64, 4, 4), (128, 128, 64, 8, 4),
         (64, 192, 64, 4, 4), (128, 128, 64, 4, 3)]


@triton.jit
def _dense_gemm(x_ptr, w_ptr, out_ptr, x_desc, w_desc, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, TMA: tl.constexpr, WS: tl.constexpr = False):
    """``out[m, n] = sum_k x[m, k] w[n, k]``, one ``BLOCK_M x BLOCK_N`` tile a program; the column groups of a row
    block are consecutive programs (read x together, so all but one read it from L2). ``WS`` (with ``TMA``): the K
    loop warp-specialized by the compiler."""
    groups = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    pid_m = pid // groups
    pid_n = pid - pid_m * groups
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, warp_specialize=WS):
        if TMA:
            a = x_desc.load([pid_m * BLOCK_M, k0])
            b = w_desc.load([pid_n * BLOCK_N, k0])
        else:
            a = tl.load(x_ptr + offs_m[:, None] * K + (k0 + offs_k)[None, :], mask=offs_m[:, None] < M, other=0.0)
            b = tl.load(w_ptr + offs_n[:, None] * K + (k0 + offs_k)[None, :], mask=offs_n[:, None] < N, other=0.0)
        acc = tl.dot(a, b.T, acc)
    tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _dense_gemm_persistent(x_desc, w_desc, out_desc, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr, PROGRAMS: tl.constexpr, WS: tl.constexpr):
    """One program per SM walking the tiles (column groups of a row block next to each other), the tile loop
    warp-specialized when ``WS``; the tile is stored through a descriptor."""
    groups = tl.cdiv(N, BLOCK_N)
    tiles = tl.cdiv(M, BLOCK_M) * groups
    for t in tl.range(tl.program_id(0), tiles, PROGRAMS, warp_specialize=WS):
        pid_m = t // groups
        pid_n = t - pid_m * groups
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            a = x_desc.load([pid_m * BLOCK_M, k0])
            b = w_desc.load([pid_n * BLOCK_N, k0])
            acc = tl.dot(a, b.T, acc)
        out_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(out_desc.dtype))


def triton_gemm(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, tile: tuple, mode: str):
    """A launcher for the Triton GEMM of ``mode`` (``cp.async``, ``tma``, ``ws``, ``persist``, ``persist-ws``;
    ``K`` a multiple of ``BLOCK_K``; ``BLOCK_N`` a power of two, so a 192-wide tile is 256 with the last 64
    columns masked)."""
    bm, bn, bk, warps, stages = tile
    bn = triton.next_power_of_2(bn)
    M, K = x.shape
    N = w.shape[0]
    assert K % bk == 0, (K, bk)
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    x_desc = w_desc = None
    if mode != "cp.async":
        from triton.tools.tensor_descriptor import TensorDescriptor

        x_desc = TensorDescriptor.from_tensor(x, [bm, bk])
        w_desc = TensorDescriptor.from_tensor(w, [bn, bk])
    if mode in ("persist", "persist-ws"):
        out_desc = TensorDescriptor.from_tensor(out, [bm, bn])
        programs = min(torch.cuda.get_device_properties(x.device).multi_processor_count, tiles)
        return lambda: _dense_gemm_persistent[(programs,)](x_desc, w_desc, out_desc, M, N, K, BLOCK_M=bm, BLOCK_N=bn,
                                                           BLOCK_K=bk, PROGRAMS=programs, WS=mode == "persist-ws",
                                                           num_warps=warps, num_stages=stages)
    return lambda: _dense_gemm[(tiles,)](x, w, out, x_desc, w_desc, M, N, K, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                                         TMA=mode != "cp.async", WS=mode == "ws", num_warps=warps, num_stages=stages)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    p.add_argument("--tokens", default="8192,8768", help="token counts (prefill-8k: 8192; the mixed case: 8768)")
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--no-triton", dest="triton", action="store_false", help="cuBLAS only")
    p.add_argument("--modes", default="cp.async,tma", help="Triton load modes: cp.async, tma, ws, persist, persist-ws")
    p.add_argument("--shapes", default="", help="only the shapes whose label contains one of these (comma list)")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    shapes = [sh for sh in SHAPES if not args.shapes or any(f in sh[0] for f in args.shapes.split(","))]
    dev = torch.device("cuda")
    budget = TM.Budget(10.0, 50.0, 10, 500)
    copy = TM.copy_bandwidth(dev)["gbps"]
    print(f"{torch.cuda.get_device_name()}  copy {copy:.0f} GB/s", flush=True)
    K, rows = args.k, []
    for s in (int(t) for t in args.tokens.split(",")):
        for label, n in shapes:
            nbytes = (s * K + n * K + s * n) * 2
            sets = TM.rotation_sets(nbytes, dev)
            xs = [torch.randn(s, K, device=dev, dtype=torch.bfloat16) for _ in range(sets)]
            w = torch.randn(n, K, device=dev, dtype=torch.bfloat16)
            outs = [torch.empty(s, n, device=dev, dtype=torch.bfloat16) for _ in range(sets)]
            ref = xs[0].double() @ w.double().t()
            variants = {"cublas": [(lambda i=i: torch.matmul(xs[i], w.t(), out=outs[i])) for i in range(sets)]}
            if args.triton and n >= 64:
                for tile in TILES:
                    for mode in modes:
                        name = f"{mode} {'x'.join(map(str, tile[:3]))} w{tile[3]} s{tile[4]}"
                        variants[name] = [triton_gemm(xs[i], w, outs[i], tile, mode) for i in range(sets)]
            for name, fns in variants.items():
                try:
                    outs[0].fill_(float("nan"))  # poisoned: a tile the kernel skips shows as an error
                    fns[0]()
                    torch.cuda.synchronize()
                    err = ((outs[0].double() - ref).norm() / ref.norm()).item()
                    if not err < 1.5e-2:
                        raise AssertionError(f"relative error {err:.3g}")
                    _, batched = TM.time_cuda_graph(fns, dev, budget)
                except Exception as exc:  # noqa: BLE001  (a tile that does not compile or fit is reported, not fatal)
                    rows.append(dict(shape=label, tokens=s, n=n, variant=name, error=f"{type(exc).__name__}: {exc}"[:300]))
                    print(f"{label:12s} s={s:5d} n={n:3d}  {name:26s} FAIL {rows[-1]['error'][:120]}", flush=True)
                    continue
                us = batched.median_us
                pct = pct_of_copy(nbytes, us, copy)
                tflops = 2 * s * K * n / (us * 1e-6) / 1e12
                bound = nbytes / (0.85 * copy * 1e3)
                rows.append(dict(shape=label, tokens=s, K=K, n=n, variant=name, bytes=nbytes, us=us, pct_copy=pct,
                                 tflops=tflops, bound85_us=bound, rel_err=err))
                print(f"{label:12s} s={s:5d} n={n:3d}  {name:26s} {us:7.2f} us  {pct:5.1f}% of copy  "
                      f"{tflops:6.1f} TFLOP/s  (85% of copy: {bound:6.2f} us)", flush=True)
            del xs, outs, variants
            torch.cuda.empty_cache()
    if args.json:
        write_rows(args.json, copy, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
