"""Issue 16: where the time of the pallas expand goes, on the GPU, with JAX only (no torch).

Times (CUPTI, per kernel, median of 20 runs) on a prefill-8k Llama-3-8B shape (8192 rows, bf16
base, 128-wide tiles, 8 adapters of 1024 rows):

* ``stream-*``: a persistent kernel with the expand's pipeline over base tiles (one CTA per SM,
  ``emit_pipeline`` of TMA loads, the tile stored by TMA from its slot) and progressively more of
  the expand's per-tile work: nothing (``copy``), a register round trip of the tile (``regs``),
  plus the scalar metadata reads the TMA coordinates depend on (``meta``); walked as a contiguous
  run of tiles per CTA or round robin (``rr``). This is the ceiling of the kernel's structure.
* ``shrink-stream-*``: the block shrink's structure (CTA per 64-row block and K split, a pipeline of
  x and A tiles into one wgmma accumulator) with and without its wgmma: the shrink's ceiling; and
  ``shrink-backend-*``, the backend's shrink (``lora.pallas.api.shrink``) on the same rows.
* ``expand-*``: the backend's expand kernels (``lora.pallas.api.expand`` / ``gate_up_lora``'s expand)
  under Tunings: the persistent kernel and one CTA per tile.

    PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/pallas_expand_probe.py --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.mosaic.gpu import profiler
from jax.experimental.pallas import mosaic_gpu as plgpu

from lora import pallas as lp
from lora.pallas import common as C
from lora.pallas.tiling import BM, MetaLayout, Tuning

ROWS, N, L = 8192, 4096, 8
COPY_GBPS = 4150.0  # the H200's measured copy bandwidth (read + write), for the % column


def stream_kernel(base, meta, ranks, scal, *, bn, stages, walk, swizzle, regs, meta_reads):
    lay = MetaLayout(L)
    nsm, ntn, nb = 132, N // bn, ROWS // BM
    tf = C.tiled(jnp.bfloat16, bn) if swizzle else ()

    def body(base_ref, meta_ref, ranks_ref, scal_ref, out_ref):
        del out_ref
        sm = lax.axis_index("sm")
        total = nb * ntn
        if walk == "contig":
            per, extra = total // nsm, total % nsm
            first = sm * per + jnp.minimum(sm, extra)
            steps = per + (sm < extra).astype(jnp.int32)
            tile = lambda i: (lax.div(first + i, ntn), lax.rem(first + i, ntn))  # noqa: E731
        else:
            steps = lax.div(total - sm + nsm - 1, nsm)
            tile = lambda i: (lax.div(sm + i * nsm, ntn), lax.rem(sm + i * nsm, ntn))  # noqa: E731

        def index(i):
            b, n = tile(i)
            if meta_reads:  # a TMA coordinate that depends on two dependent scalar loads
                w = meta_ref[b * lay.record + 1]
                b = b + 0 * ranks_ref[w]
            return (b, n)

        def step(idx, base_s):
            (i,) = idx
            b, n = tile(i)
            if regs:
                scale = jnp.float32(1.0)
                if meta_reads:
                    w = meta_ref[b * lay.record + 1]
                    scale = jnp.where(meta_ref[b * lay.record] > 0, scal_ref[w] * 0 + 1, scale) + 0.0 * ranks_ref[w]
                v = plgpu.load(base_s, layout=plgpu.Layout.WGMMA, optimized=swizzle)
                base_s[...] = (v.astype(jnp.float32) * scale).astype(base_s.dtype)
                plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(base_s, base_ref.at[pl.ds(b * BM, BM), pl.ds(n * bn, bn)])
            plgpu.wait_smem_to_gmem(1, wait_read_only=True)

        plgpu.emit_pipeline(
            step, grid=(steps,),
            in_specs=[plgpu.BlockSpec((BM, bn), index, transforms=tf, delay_release=1)],
            max_concurrent_steps=stages,
        )(base_ref)
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    return C.mgpu_call(body, [base, meta, ranks, scal], out_type=jax.ShapeDtypeStruct(base.shape, base.dtype),
                       grid=(nsm,), grid_names=("sm",), aliases={0: 0})


def shrink_stream(x, a, *, bk, stages, wgmma, ksplit=1, na=16):
    """The block shrink's structure without its merge: CTA (64-row block, K split), a pipeline of
    (64, bk) x tiles and (na, bk) A tiles into one (64, na) wgmma accumulator (or no wgmma)."""
    rows, k = x.shape
    nb, nk = rows // BM, k // bk // ksplit

    def body(x_ref, a_ref, o_ref, o_smem):
        b, ks = lax.axis_index("b"), lax.axis_index("ks")
        tf = C.tiled(jnp.bfloat16, bk)

        def acc_scope(acc_ref):
            def step(_, xs, as_):
                if wgmma:
                    plgpu.wgmma(acc_ref, xs, as_.T)

            plgpu.emit_pipeline(
                step, grid=(nk,),
                in_specs=[plgpu.BlockSpec((BM, bk), lambda i: (b, i + ks * nk), transforms=tf, delay_release=1),
                          plgpu.BlockSpec((na, bk), lambda i: (0, i + ks * nk), transforms=tf, delay_release=1)],
                max_concurrent_steps=stages,
            )(x_ref, a_ref)
            o_smem[...] = acc_ref[...]

        pl.run_scoped(acc_scope, plgpu.ACC((BM, na)))
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, o_ref.at[ks, pl.ds(b * BM, BM)])
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    return C.mgpu_call(body, [x, a], out_type=jax.ShapeDtypeStruct((ksplit, rows, na), jnp.float32),
                       grid=(nb, ksplit), grid_names=("b", "ks"), scratch=[plgpu.SMEM((BM, na), jnp.float32)])


def timed(fn, *args, iters=20):
    """Median CUPTI time (us) of each kernel fn launches, by launch position."""
    _, runs = profiler.measure(fn, aggregate=False, iterations=iters)(*args)
    per = {}
    for run in runs:
        for k, (name, ms) in enumerate(run):
            per.setdefault(f"{k}:{name[:40]}", []).append(ms * 1e3)
    return {k: statistics.median(v) for k, v in per.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    lens = [ROWS // L] * L
    indptr = jnp.asarray(np.concatenate([[0], np.cumsum(lens)]), jnp.int32)
    slots = jnp.arange(L, dtype=jnp.int32)
    rows = []

    def report(name, times, nbytes):
        big = max(times.values())
        row = dict(name=name, kernels=times, us=big, pct_copy=100 * nbytes / (big * 1e-6) / 1e9 / COPY_GBPS)
        rows.append(row)
        print(f"{name:34s} {big:8.1f} us {row['pct_copy']:5.1f}%   {times}", flush=True)

    base = jnp.asarray(rng.standard_normal((ROWS, N)), jnp.bfloat16)
    xs = jnp.asarray(rng.standard_normal((ROWS, 4096)), jnp.bfloat16)
    for na in (16, 48):
        a0 = jnp.asarray(rng.standard_normal((na, 4096)), jnp.bfloat16)
        for name, kw in (("nowgmma-bk128-s8", dict(bk=128, stages=8, wgmma=False)),
                         ("bk128-s8", dict(bk=128, stages=8, wgmma=True)),
                         ("bk128-s4", dict(bk=128, stages=4, wgmma=True)),
                         ("bk64-s8", dict(bk=64, stages=8, wgmma=True)),
                         ("bk128-s4-ks2", dict(bk=128, stages=4, wgmma=True, ksplit=2)),
                         ("bk128-s6-ks2", dict(bk=128, stages=6, wgmma=True, ksplit=2)),
                         ("nowgmma-bk128-s4-ks2", dict(bk=128, stages=4, wgmma=False, ksplit=2))):
            if na == 48 and name.startswith("bk64"):
                continue
            if na == 48:  # eight stages of 176 rows do not fit shared memory
                kw = {**kw, "stages": min(kw["stages"], 6)}
            try:
                f = jax.jit(functools.partial(shrink_stream, na=na, **kw))
                report(f"shrink-stream-na{na}-{name}", timed(f, xs, a0), xs.nbytes + ROWS * na * 2)
            except Exception as exc:  # noqa: BLE001
                print(f"shrink {name}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        # the backend's shrink on the same rows (8 adapters of 1024 rows, rank 16, na / 16 slices):
        # what the kernel's metadata, merge and output add to the structure above
        stack = na // 16
        a8 = jnp.asarray(rng.standard_normal((L, na, 4096)) * 0.02, jnp.bfloat16)
        b16 = lp.make_batch(indptr, slots, jnp.full((L,), 16, jnp.int32), jnp.ones((L,), jnp.float32),
                            num_tokens=ROWS)
        try:
            f = jax.jit(functools.partial(lp.shrink, batch=b16, stack=stack))
            report(f"shrink-backend-stack{stack}", timed(lambda x, a: f(x, a), xs, a8), xs.nbytes + ROWS * na * 2)
        except Exception as exc:  # noqa: BLE001
            print(f"shrink backend stack {stack}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
    for r in (16, 64):
        ranks = jnp.full((L,), r, jnp.int32)
        scal = jnp.full((L,), 0.5, jnp.float32)
        batch = lp.make_batch(indptr, slots, ranks, scal, num_tokens=ROWS)
        if r == 16:
            for name, kw in (
                ("stream-copy-contig", dict(regs=False, meta_reads=False, walk="contig", swizzle=True)),
                ("stream-copy-rr", dict(regs=False, meta_reads=False, walk="rr", swizzle=True)),
                ("stream-regs-contig-swz", dict(regs=True, meta_reads=False, walk="contig", swizzle=True)),
                ("stream-regs-contig-noswz", dict(regs=True, meta_reads=False, walk="contig", swizzle=False)),
                ("stream-meta-contig-swz", dict(regs=True, meta_reads=True, walk="contig", swizzle=True)),
                ("stream-meta-rr-swz", dict(regs=True, meta_reads=True, walk="rr", swizzle=True)),
                ("stream-copy-contig-bn256", dict(regs=False, meta_reads=False, walk="contig", swizzle=True, bn=256)),
                ("stream-meta-contig-bn256", dict(regs=True, meta_reads=True, walk="contig", swizzle=True, bn=256)),
            ):
                kw = {"bn": 128, "stages": 4, **kw}
                try:
                    f = jax.jit(functools.partial(stream_kernel, **kw))
                    report(name, timed(f, base, batch.meta, ranks, scal), 2 * base.nbytes)
                except Exception as exc:  # noqa: BLE001
                    print(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        x = jnp.asarray(rng.standard_normal((ROWS, r)), jnp.bfloat16)
        b = jnp.asarray(rng.standard_normal((L, N, r)) * 0.05, jnp.bfloat16)
        xg = jnp.asarray(rng.standard_normal((ROWS, 4)), jnp.bfloat16)
        a2 = jnp.asarray(rng.standard_normal((L, 2 * r, 4)), jnp.bfloat16)
        bg = jnp.asarray(rng.standard_normal((L, 2 * 14336, r)) * 0.05, jnp.bfloat16)
        baseg = jnp.asarray(rng.standard_normal((ROWS, 2 * 14336)), jnp.bfloat16)
        for tname, tun in (("default", Tuning()), ("grid", Tuning(expand_persistent=False)),
                           ("persistent-bn128", Tuning(expand_block_n=128, expand_persistent=True)),
                           ("persistent-bn256", Tuning(expand_block_n=256, expand_persistent=True))):
            try:
                f = jax.jit(functools.partial(lp.expand, batch=batch, tuning=tun))
                report(f"expand-r{r}-{tname}", timed(lambda x, b, base: f(x, b, base=base), x, b, base),
                       2 * base.nbytes + x.nbytes)
                g = jax.jit(functools.partial(lp.gate_up_lora, batch=batch, tuning=tun))
                report(f"gate_up(K=4)-r{r}-{tname}", timed(lambda x, a, b, base: g(x, a, b, base=base), xg, a2, bg, baseg),
                       2 * baseg.nbytes)
            except Exception as exc:  # noqa: BLE001
                print(f"{tname} r{r}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(jax.devices()[0]), "command": " ".join(sys.argv), "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
