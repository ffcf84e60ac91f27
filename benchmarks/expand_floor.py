"""Issue 17 (prefill): the prefill expand's tile loop on a dense batch, with two ways to add the product to base.

The shipped expand (``lora/triton/expand.py``) reads the rank-64 prefill-8k batch at about 70% of copy
bandwidth and the rank-16 one at 84%; session 13's profile of the rank-64 kernel found shared memory 75% busy
and DRAM at 49% (x, B and the accumulator's change of layout all go through shared memory). This script
times, as ``python -m lora compare`` does (one call among many in one CUDA graph, inputs rotating past L2),
``base (s, N) += scale * x (s, r) @ B (N, r).T`` for one adapter, no metadata, one program per
``BLOCK_M x (N_ITERS * BLOCK_N)`` tile, two epilogues:

* ``add``: the shipped one: ``acc = x @ B``, then ``acc * scale + base`` (base loaded in its own layout);
* ``acc``: base is the dot's accumulator (``acc = dot(x * scale, B, base)``): x scaled in float32 and
  rounded to the operand dtype before the product.

and three ways to find a block's rows: from the program id (no metadata), ``trips=1`` (the block's row
indices read from memory first: one dependent load before x and base), ``trips=2`` (the block's row count read
from a per-block table, then its row indices: the shipped kernel's two dependent loads). ``--tma`` (session 32)
adds the metadata-free loop with x, B and base loaded, and base stored, through tensor descriptors (TMA), against
the same tiles through pointers, and cuBLAS's ``base.addmm_(x, B.T, alpha=scale)`` as a yardstick, at ranks 16
and 64 and at the gate-up width (N = 28672) too. ``--persist`` (session 33) times, instead, one program per SM
walking the tiles through descriptors, its tile loop warp-specialized by the compiler or not, against the
pointer loop.

    PYTHONPATH=. python benchmarks/expand_floor.py --json $OUT/expand_floor.json
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
def _expand_tma(x_desc, w_desc, o_desc, scale, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                N_ITERS: tl.constexpr):
    """The metadata-free loop of :func:`_expand_dense` with every tile moved by the tensor memory accelerator."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    x = _x_operand(x_desc, pid_m * BLOCK_M, scale, ACC)
    for it in range(N_ITERS):
        _add_tile(x, w_desc, o_desc, pid_m * BLOCK_M, (pid_n * N_ITERS + it) * BLOCK_N, scale, ACC)


@triton.jit
def _x_operand(x_desc, m0, scale, ACC: tl.constexpr):
    """The x rows m0.. through the descriptor; with ``ACC`` scaled in float32 and rounded to x's dtype."""
    x = x_desc.load([m0, 0])
    if ACC:
        x = (x.to(tl.float32) * scale).to(x.dtype)
    return x


@triton.jit
def _add_tile(x, w_desc, o_desc, m0, n0, scale, ACC: tl.constexpr):
    """base[m0.., n0..] += x @ B[n0..].T (x from :func:`_x_operand`), loaded and stored through descriptors:
    with ``ACC`` base is the dot's accumulator, else the product is scaled, then added."""
    w = w_desc.load([n0, 0])
    base = o_desc.load([m0, n0])
    if ACC:
        acc = tl.dot(x, w.T, base.to(tl.float32))
    else:
        acc = tl.dot(x, w.T) * scale + base.to(tl.float32)
    o_desc.store([m0, n0], acc.to(base.dtype))


@triton.jit
def _expand_persistent(x_desc, w_desc, o_desc, scale, M, N, ACC: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, PROGRAMS: tl.constexpr, WS: tl.constexpr):
    """:func:`_expand_tma` with one program per SM walking the tiles (the row blocks of a column tile next to
    each other, so its B tile stays in L2), the tile loop warp-specialized when ``WS``: the loads of the next
    tiles in flight while this one is multiplied, added and stored."""
    blocks = tl.cdiv(M, BLOCK_M)
    tiles = blocks * tl.cdiv(N, BLOCK_N)
    for t in tl.range(tl.program_id(0), tiles, PROGRAMS, warp_specialize=WS):
        m0 = (t % blocks) * BLOCK_M
        _add_tile(_x_operand(x_desc, m0, scale, ACC), w_desc, o_desc, m0, (t // blocks) * BLOCK_N, scale, ACC)


@triton.jit
def _expand_dense(x_ptr, w_ptr, out_ptr, tab_ptr, idx_ptr, scale, N, R: tl.constexpr, ACC: tl.constexpr,
                  TRIPS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, N_ITERS: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    if TRIPS == 2:
        n_rows = tl.load(tab_ptr + pid_m)
        rows = tl.load(idx_ptr + pid_m * BLOCK_M + offs_m, mask=offs_m < n_rows, other=0)
    elif TRIPS == 1:
        rows = tl.load(idx_ptr + pid_m * BLOCK_M + offs_m)
    else:
        rows = pid_m * BLOCK_M + offs_m
    kr = tl.arange(0, R)
    x = tl.load(x_ptr + rows[:, None] * R + kr[None, :])
    if ACC:
        x = (x.to(tl.float32) * scale).to(x_ptr.dtype.element_ty)
    for it in range(N_ITERS):
        n = (pid_n * N_ITERS + it) * BLOCK_N + tl.arange(0, BLOCK_N)
        w = tl.load(w_ptr + n[None, :] * R + kr[:, None], eviction_policy="evict_last")
        o_ptrs = out_ptr + rows[:, None].to(tl.int64) * N + n[None, :]
        base = tl.load(o_ptrs, eviction_policy="evict_first")
        if ACC:
            acc = tl.dot(x, w, base.to(tl.float32))
        else:
            acc = tl.dot(x, w) * scale + base.to(tl.float32)
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), eviction_policy="evict_first")


def _inputs(s: int, N: int, r: int, scale: float, dev):
    """Inputs rotating past L2 for ``base (s, N) += scale * x (s, r) @ w (N, r).T``: the bytes one call moves, the
    x and base sets, w, a pristine copy of base set 0 (the timed calls update the sets in place) and the float64
    reference for set 0."""
    nbytes = 2 * s * N * 2 + s * r * 2 + N * r * 2
    sets = TM.rotation_sets(nbytes, dev)
    xs = [torch.randn(s, r, device=dev, dtype=torch.bfloat16) for _ in range(sets)]
    w = torch.randn(N, r, device=dev, dtype=torch.bfloat16)
    bases = [torch.randn(s, N, device=dev, dtype=torch.bfloat16) for _ in range(sets)]
    pristine = bases[0].clone()
    ref = pristine.double() + scale * (xs[0].double() @ w.double().t())
    return nbytes, xs, w, bases, pristine, ref


def _check_and_time(launch, xs, bases, pristine, ref, dev, budget, what: str) -> tuple[float, float]:
    """``launch(x, base)``'s relative error on a copy of the pristine base (AssertionError past bf16's 1.5e-2,
    before any timing), and its time (us, graph-batched)."""
    check = pristine.clone()
    launch(xs[0], check)
    torch.cuda.synchronize()
    err = ((check.double() - ref).norm() / ref.norm()).item()
    if not err < 1.5e-2:
        raise AssertionError(f"{what}: relative error {err:.3g}")
    _, batched = TM.time_cuda_graph([lambda i=i: launch(xs[i], bases[i]) for i in range(len(xs))], dev, budget)
    return err, batched.median_us


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    p.add_argument("--tma", action="store_true", help="descriptor loads / stores against pointers, and cuBLAS")
    p.add_argument("--persist", action="store_true", help="persistent descriptor loops (warp-specialized or not)")
    args = p.parse_args(argv)
    if args.tma or args.persist:
        return tma_main(args)
    dev = torch.device("cuda")
    budget = TM.Budget(10.0, 50.0, 10, 500)
    copy = TM.copy_bandwidth(dev)["gbps"]
    print(f"{torch.cuda.get_device_name()}  copy {copy:.0f} GB/s", flush=True)
    s, N, scale = 8192, 4096, 0.5
    rows = []
    for r in (16, 64):
        nbytes, xs, w, bases, pristine, ref = _inputs(s, N, r, scale, dev)
        idx = torch.arange(s, device=dev, dtype=torch.int32)
        variants = [(32, 128, 1, 4, 2, m, t) for m in (False, True) for t in (0, 1, 2)]
        variants += [(64, 64, 1, 4, 2, m, t) for m in (False, True) for t in (0, 1, 2)]
        variants += [(64, 128, 1, 4, 2, m, t) for m in (False, True) for t in (0, 1, 2)]
        variants += [(128, 64, 1, 4, 2, m, 0) for m in (False, True)]
        for bm, bn, iters, warps, stages, acc_mode, trips in variants:
            grid = (s // bm, N // (bn * iters))
            tab = torch.full((s // bm,), bm, device=dev, dtype=torch.int32)  # each block's row count

            def launch(x, base):
                _expand_dense[grid](x, w, base, tab, idx, scale, N, R=r, ACC=acc_mode, TRIPS=trips, BLOCK_M=bm,
                                    BLOCK_N=bn, N_ITERS=iters, num_warps=warps, num_stages=stages)

            err, us = _check_and_time(launch, xs, bases, pristine, ref, dev, budget, f"r={r} {bm}x{bn} acc={acc_mode}")
            pct = pct_of_copy(nbytes, us, copy)
            name = f"{'acc' if acc_mode else 'add'} {bm}x{bn}x{iters} w{warps} st{stages} trips={trips}"
            rows.append(dict(rank=r, variant=name, bytes=nbytes, us=us, pct_copy=pct, rel_error=err))
            print(f"r={r:2d} {name:26s} {us:7.2f} us  {pct:5.1f}% of copy  (rel err {err:.1e})", flush=True)
        del xs, bases, pristine, ref
        torch.cuda.empty_cache()
    if args.json:
        write_rows(args.json, copy, rows)
    return 0


def tma_main(args) -> int:
    from triton.tools.tensor_descriptor import TensorDescriptor

    dev = torch.device("cuda")
    budget = TM.Budget(10.0, 50.0, 10, 500)
    copy = TM.copy_bandwidth(dev)["gbps"]
    print(f"{torch.cuda.get_device_name()}  copy {copy:.0f} GB/s", flush=True)
    s, scale, rows = 8192, 0.5, []
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    tiles = [(64, 128, 1, 4, 2), (128, 128, 1, 8, 2), (128, 64, 1, 4, 2), (64, 128, 4, 4, 3), (128, 128, 2, 8, 3),
             (64, 256, 1, 8, 2), (128, 256, 1, 8, 2)]
    for r, N in ((64, 4096), (16, 4096)) if args.persist else ((16, 4096), (64, 4096), (64, 28672)):
        nbytes, xs, w, bases, pristine, ref = _inputs(s, N, r, scale, dev)
        idx = torch.arange(s, device=dev, dtype=torch.int32)
        tab = torch.zeros(1, device=dev, dtype=torch.int32)
        variants = {"cublas addmm_": lambda x, base: base.addmm_(x, w.t(), alpha=scale)}
        for bm, bn, iters, warps, stages in tiles:
            if N % (bn * iters) or (args.persist and iters > 1):
                continue
            for acc_mode in (False, True):
                tag = f"{'acc' if acc_mode else 'add'} {bm}x{bn}x{iters} w{warps} st{stages}"
                grid = (s // bm, N // (bn * iters))

                def ptr(x, base, bm=bm, bn=bn, iters=iters, warps=warps, stages=stages, acc_mode=acc_mode, grid=grid):
                    _expand_dense[grid](x, w, base, tab, idx, scale, N, R=r, ACC=acc_mode, TRIPS=0, BLOCK_M=bm,
                                        BLOCK_N=bn, N_ITERS=iters, num_warps=warps, num_stages=stages)

                def tma(x, base, bm=bm, bn=bn, iters=iters, warps=warps, stages=stages, acc_mode=acc_mode, grid=grid):
                    _expand_tma[grid](TensorDescriptor.from_tensor(x, [bm, r]), TensorDescriptor.from_tensor(w, [bn, r]),
                                      TensorDescriptor.from_tensor(base, [bm, bn]), scale, ACC=acc_mode, BLOCK_M=bm,
                                      BLOCK_N=bn, N_ITERS=iters, num_warps=warps, num_stages=stages)

                variants["pointers " + tag] = ptr
                if not args.persist:
                    variants["tma " + tag] = tma
                elif iters == 1:
                    programs = min(sms, grid[0] * grid[1])
                    for ws in (False, True):
                        def persist(x, base, bm=bm, bn=bn, warps=warps, stages=stages, acc_mode=acc_mode, ws=ws,
                                    programs=programs):
                            _expand_persistent[(programs,)](
                                TensorDescriptor.from_tensor(x, [bm, r]), TensorDescriptor.from_tensor(w, [bn, r]),
                                TensorDescriptor.from_tensor(base, [bm, bn]), scale, s, N, ACC=acc_mode, BLOCK_M=bm,
                                BLOCK_N=bn, PROGRAMS=programs, WS=ws, num_warps=warps, num_stages=stages)

                        variants[f"persist{'-ws' if ws else ''} " + tag] = persist
        for name, launch in variants.items():
            try:
                err, us = _check_and_time(launch, xs, bases, pristine, ref, dev, budget, name)
            except Exception as exc:  # noqa: BLE001  (a tile that does not compile or fit is reported, not fatal)
                rows.append(dict(rank=r, N=N, variant=name, error=f"{type(exc).__name__}: {exc}"[:300]))
                print(f"r={r:2d} N={N:5d} {name:34s} FAIL {rows[-1]['error'][:120]}", flush=True)
                continue
            pct = pct_of_copy(nbytes, us, copy)
            rows.append(dict(rank=r, N=N, variant=name, bytes=nbytes, us=us, pct_copy=pct, rel_error=err))
            print(f"r={r:2d} N={N:5d} {name:34s} {us:7.2f} us  {pct:5.1f}% of copy  (rel err {err:.1e})", flush=True)
        del xs, bases, pristine, ref
        torch.cuda.empty_cache()
    if args.json:
        write_rows(args.json, copy, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
