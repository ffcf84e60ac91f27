"""Expand kernel: base[:, off_j:off_j+1] += scaling[w] * x[:, j*r:(j+1)*r] @ B[w, off_j:off_j+1, :r].T, in place.

    meta, nrows              the batch metadata and the real row count s ((1,) int32)
    x      (Bpad, NA)        shrink output (float32 in the fused ops) or the caller's (s, NA) tensor
    x_tail (64, NA)          rows [s-64, s) of x (only with ``cfg.tail``)
    B      (L, N, max_r)     slot w uses columns [0, rank[w])
    base   (Bpad, N)         updated in place; only rows < s that belong to a segment with a
                             nonzero-rank slot are written (row-exact TMA stores)
    offsets (stack+1,) int32 slice boundaries [0, ..., N], read at run time

One CTA per (64-row block, ``block_n`` output columns). It loads the block's base rows (a ladder
of power-of-two TMA boxes: row-exact, so the caller's tensor needs no padding), then pipelines over
the adapters present in the block (``emit_pipeline`` with a dynamic grid: the next adapter's
tiles are in flight while the current one computes). Per adapter: the x window of its slice
(columns ``j*r .. j*r+kr``, fetched by TMA at that column) and its B tile are masked to the real
rank in registers (which also clears the NaN/garbage tails of the buffers), cast to the operand
dtype, multiplied with one wgmma (K = max_r rounded up to 16), scaled in float32 and merged into the
block's result with the per-row slot mask. The float32 result is added to base and stored back
with the same row ladder.

When every slice boundary is a multiple of ``block_n`` (all real model shapes), a column tile lies
in one slice and one x window per adapter is fetched; otherwise (checked at run time) every
slice's window is fetched and merged with column masks.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from . import common as C
from .tiling import BM, ExpandConfig, MetaLayout

__all__ = ["expand"]


def expand(meta, nrows, ranks, scalings, offsets, x, x_tail, b_w, base, *, cfg: ExpandConfig):
    """Returns ``base`` with the LoRA update added (aliased: in place on the GPU)."""
    C.TRACE_COUNT["expand"] += 1
    lay = MetaLayout(cfg.num_lora)
    L, BN, kr, kw, stack = cfg.num_lora, cfg.block_n, cfg.kr, cfg.kw, cfg.stack
    op = jnp.dtype(cfg.op_dtype)
    q = 16 // jnp.dtype(cfg.x_dtype).itemsize  # a TMA start column must be 16-byte aligned
    rungs = C.ladder_rungs()

    def body(meta_ref, nrows_ref, ranks_ref, scal_ref, offs_ref, x_ref, *rest):
        if not cfg.tail:
            rest = (None, *rest)
        if not cfg.x_shift:
            rest = (*rest, None)
        x_tail_ref, b_ref, base_ref, out_ref, rs_smem, base_smem, xop, bars, xsh = rest
        del out_ref  # aliased with base_ref
        bi = lax.axis_index("b")
        n = lax.axis_index("n")
        s = nrows_ref[0]
        row_lo = bi * BM
        count = C.block_count(meta_ref, lay, bi)

        @pl.when((row_lo < s) & (count > 0))
        def _():
            rx, is_tail = C.box_start(s, row_lo, cfg.tail)
            nrows_b = jnp.minimum(row_lo + BM, s) - row_lo
            sm_off = row_lo - rx
            n0 = n * BN

            def load_base(off, size, k):
                plgpu.copy_gmem_to_smem(
                    base_ref.at[pl.ds(row_lo + off, size), pl.ds(n0, BN)],
                    base_smem.at[pl.ds(sm_off + off, size)],
                    bars.at[1 + k],
                )

            def wait_base(off, size, k):
                plgpu.barrier_wait(bars.at[1 + k])

            if cfg.reduce_add:
                # The tile holds the update only (each element is written by one slot and one
                # slice, the rest stay 0) and is added to base by the TMA engine at the end.
                base_smem[...] = C.wgmma_zeros(BM, BN, base_smem.dtype)
            else:
                C.ladder(nrows_b, load_base)

            # In flight with the base rows and the pipeline's first tiles: waited for in the first step.
            C.issue_box_slots(meta_ref, lay, rx, rs_smem, bars.at[0])
            offs = [offs_ref[j] for j in range(stack + 1)]
            aligned = offs[0] == 0
            for o in offs[1:]:
                aligned = aligned & (lax.rem(o, BN) == 0)
            j0 = jnp.int32(0)
            for o in offs[1:-1]:
                j0 = j0 + (n0 >= o).astype(jnp.int32)
            # Register values are created where they are used (inside the pipeline step), never
            # carried into or out of a loop or branch: see _matmul_into in shrink_kernel.

            def prep_x(xs, r):
                """The x window as the operand dtype, columns >= r zeroed (NaN tails included)."""
                xf = plgpu.load(xs, layout=plgpu.Layout.WGMMA, optimized=False).astype(jnp.float32)
                xf = jnp.where(C.col_iota(BM, kr) < r, xf, 0.0)
                hi = xf.astype(op)
                if cfg.x_part == 0:
                    return hi
                return (xf - hi.astype(jnp.float32)).astype(op)

            def x_into_xop(xs, r, j):
                """xop = the operand of slice j: x columns [j*r, j*r + kr) of the window.

                With ``cfg.x_shift`` (stacked slices: j*r is a device value) the window starts at
                j*r rounded down to 16 bytes (a TMA start must be aligned), d columns early, and is
                kw wide; its kr columns at offset d are moved to an aligned scratch tile with
                one-element accesses (a vector access at an odd offset would be misaligned, and a
                WGMMA-layout load of a column slice needs a tile-aligned row stride). So no layout
                of x ever changes: no repack of the shrink output, whatever the ranks."""
                if not cfg.x_shift:
                    xop[...] = prep_x(xs, r)
                    return
                d = lax.rem(j * r, q)
                strided = plgpu.Layout.WG_STRIDED((BM, kr), vec_size=1)
                xsh[...] = plgpu.load(xs.at[:, pl.ds(d, kr)], layout=strided, optimized=False)
                plgpu.commit_smem()  # written and read by different threads
                xop[...] = prep_x(xsh, r)

            def product_into(xs, bs, r, j, merge):
                x_into_xop(xs, r, j)
                plgpu.commit_smem()

                def acc_scope(acc_ref):
                    plgpu.wgmma(acc_ref, xop, bs.T)
                    merge(acc_ref[...])  # consumed in place: accumulators never leave their region

                pl.run_scoped(acc_scope, plgpu.ACC((BM, BN)))

            def mask_b(bs, r):
                bs[...] = jnp.where(C.col_iota(BN, kr) < r, plgpu.load(bs, layout=plgpu.Layout.WGMMA), 0).astype(op)
                plgpu.commit_smem()

            def slot_of(i):
                return C.block_slot(meta_ref, lay, bi, i)

            def update_base(w, jj, acc, scale):
                """base rows of slot w (and columns of slice jj, if given) += scale * acc.

                Each element belongs to one slot and one slice, so it is rounded once.
                """
                rs = plgpu.load(rs_smem, layout=plgpu.Layout.WGMMA.reduce(1))
                keep = lax.broadcast_in_dim(rs, (BM, BN), [0]) == w
                if jj is not None:
                    cols = C.col_iota(BM, BN) + n0
                    keep = keep & (cols >= offs[jj]) & (cols < offs[jj + 1])
                old = plgpu.load(base_smem, layout=plgpu.Layout.WGMMA, optimized=False)
                new = (old.astype(jnp.float32) + acc * scale).astype(base_smem.dtype)
                base_smem[...] = jnp.where(keep, new, old)

            def slice_start(j, r):
                """First x column of the window of slice j: j*r (the contract's packed layout)
                rounded down to 16 bytes (a misaligned TMA start is an illegal instruction)."""
                start = j * r
                return start - lax.rem(start, q)

            def run(src_ref, row0, slices):
                def step(idx, *refs):
                    *xss, bs = refs
                    (i,) = idx
                    w = slot_of(i)
                    r = ranks_ref[w]
                    scale = scal_ref[w]

                    @pl.when(i == 0)
                    def _():  # the row slots and base rows were loaded while the first tiles came in
                        plgpu.barrier_wait(bars.at[0])
                        if not cfg.reduce_add:
                            C.ladder(nrows_b, wait_base)

                    mask_b(bs, r)
                    for jj, xs in enumerate(xss):
                        slice_j = None if slices is None else jj  # general path: column mask of slice jj
                        j = j0 if slices is None else jnp.int32(jj)
                        product_into(xs, bs, r, j, functools.partial(update_base, w, slice_j, scale=scale))

                def x_index(jj):
                    def index(i):
                        j = j0 if slices is None else jnp.int32(jj)
                        return (row0, slice_start(j, ranks_ref[slot_of(i)]))

                    return index

                nx = 1 if slices is None else stack
                x_specs = [plgpu.BlockSpec((pl.Element(BM), pl.Element(kw)), x_index(jj)) for jj in range(nx)]
                b_spec = plgpu.BlockSpec(
                    (None, BN, kr), lambda i: (slot_of(i), n, 0), transforms=C.tiled(op, kr)
                )
                plgpu.emit_pipeline(
                    step,
                    grid=(count,),
                    in_specs=[*x_specs, b_spec],
                    max_concurrent_steps=cfg.stages,
                )(*([src_ref] * nx), b_ref)

            def path(slices):
                if cfg.tail:
                    pl.when(is_tail)(lambda: run(x_tail_ref, 0, slices))
                    pl.when(jnp.logical_not(is_tail))(lambda: run(x_ref, rx, slices))
                else:
                    run(x_ref, rx, slices)

            pl.when(aligned)(lambda: path(None))
            pl.when(jnp.logical_not(aligned))(lambda: path(True))
            plgpu.commit_smem()

            def store_base(off, size, k):
                plgpu.copy_smem_to_gmem(
                    base_smem.at[pl.ds(sm_off + off, size)],
                    base_ref.at[pl.ds(row_lo + off, size), pl.ds(n0, BN)],
                    commit_group=False,
                    reduction_op="add" if cfg.reduce_add else None,
                )

            C.ladder(nrows_b, store_base)
            plgpu.commit_smem_to_gmem_group()
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    args = [meta, nrows, ranks, scalings, offsets, x] + ([x_tail] if cfg.tail else []) + [b_w, base]
    return C.mgpu_call(
        body,
        args,
        out_type=jax.ShapeDtypeStruct(base.shape, base.dtype),
        # The last grid axis varies fastest (CUDA's x): consecutive CTAs take consecutive row blocks
        # of one column tile, so each adapter's B tile is read from DRAM once and then hits L2.
        grid=(cfg.ntn, cfg.nb),
        grid_names=("n", "b"),
        scratch=[
            plgpu.SMEM((BM,), jnp.int32),
            plgpu.SMEM((BM, BN), base.dtype),
            plgpu.SMEM((BM, kr), op, transforms=C.tiled(op, kr)),
            plgpu.Barrier(num_barriers=1 + rungs),
        ]
        + ([plgpu.SMEM((BM, kr), jnp.dtype(cfg.x_dtype))] if cfg.x_shift else []),
        aliases={len(args) - 1: 0},
    )
