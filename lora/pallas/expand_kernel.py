"""Expand kernels: base[:, off_j:off_j+1] += scaling[w] * x[:, j*r:(j+1)*r] @ B[w, off_j:off_j+1, :r].T, in place.

    meta, nrows              the batch metadata and the real row count s ((1,) int32)
    x      (Bpad, NA)        shrink output (float32 in the fused ops) or the caller's (s, NA) tensor
    x_tail (64, NA)          rows [s-64, s) of x (only with ``cfg.tail``)
    B      (L, N, max_r)     slot w uses columns [0, rank[w])
    base   (Bpad, N)         updated in place; only rows < s that belong to a segment with a
                             nonzero-rank slot are written (row-exact TMA stores)
    offsets (stack+1,) int32 slice boundaries [0, ..., N], read at run time

The unit of work is a *tile*: one 64-row block by ``block_n`` output columns. Three kernels run tiles
(chosen in :func:`lora.pallas.tiling.expand_config`):

* **gather** (decode-sized batches with several row blocks and many column tiles, or stacked slices
  of rank >= 64): one CTA per (group of column tiles, chunk of the metadata's chunk table: one
  adapter's rows, at most 64), :func:`_gather_group`. Its rows are gathered by one TMA copy each, so
  each adapter's B tile is read once per chunk instead of once per row block, and each tile is
  added to base by per-row TMA reduce-adds. ``cfg.gather_stages`` B tiles are in flight.

* **grid** (decode-sized batches): one CTA per tile, :func:`_tile_program` ``.one_tile``. It loads
  the block's base rows (a ladder of power-of-two TMA boxes: row-exact, so the caller's tensor
  needs no padding; with ``cfg.full_tile`` a full block's are one box into a tiled tile), then
  pipelines over the adapters present in the block (``emit_pipeline`` with a dynamic grid: the
  next adapters' tiles are in flight while the current one computes). Decode blocks hold many
  adapters, so that pipeline is what hides the loads. With ``cfg.accumulate`` (aligned slices)
  every adapter's product goes into one wgmma accumulator: its x operand keeps only the adapter's
  rows, already multiplied by its scale, and the tile is added to the base rows once at the end
  (session 6 on the H200: rank-16 64-token expand 10.1 -> 6.3 us).
* **persistent** (prefill, mixed): ``cfg.ctas`` CTAs, two per SM where their tiles in flight fit
  beside each other (else one), each walking a contiguous run of the full row blocks' tiles
  (column tile major) through one ``emit_pipeline`` whose steps are tiles: while one tile
  computes, the base tiles, x windows, B tiles and row slots of the next
  ``cfg.stream_stages - 1`` are in flight, and the finished tile is stored by TMA straight from
  its pipeline slot (released one step later, when the store has read it). Prefill blocks hold
  one adapter: such a tile is one wgmma. A block that holds several adapters (a segment boundary)
  fetches the others' x windows (as the wgmma operand where the slice starts on a tile) and B tiles
  in its step (from L2) and adds them to the same slot. A step's tile, block count and first slot
  come from a ring in shared memory, made ``stream_stages`` steps ahead (no round trip to L2 on the
  steps' critical path, no division). When a slice boundary is not a
  multiple of ``block_n`` the steps skip their tiles, and ``one_tile`` runs them after the pipeline,
  as it runs the partial last block's tiles (in the pipeline's shared memory, free by then). Each
  tile is written by one CTA, so no two CTAs ever touch the same base element.

Per adapter: the x window of its slice (columns ``j*r .. j*r+kr``, fetched by TMA at that column)
and its B tile are masked to the real rank in registers (which also clears the NaN/garbage tails
of the buffers), cast to the operand dtype, multiplied with one wgmma (K = max_r rounded up to 16),
scaled in float32 and merged into the tile with the per-row slot mask: each element is rounded once
(``accumulate``: the scale is applied to x in float32 before its rounding to the operand dtype).

When every slice boundary is a multiple of ``block_n`` (all real model shapes), a column tile lies
in one slice and one x window per adapter is fetched; otherwise (checked at run time) every
slice's window is fetched and merged with column masks (``one_tile`` only).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from . import common as C
from .tiling import BM, CHUNK, RING, ExpandConfig, MetaLayout

__all__ = ["expand"]


def _tile_program(cfg: ExpandConfig, refs: SimpleNamespace):
    """The per-tile steps, over the kernel's refs: one_tile(bi, n) and the pieces the persistent
    kernel's pipeline step reuses. ``refs``: meta, nrows, ranks, scal, offs, x, x_tail, b, base
    (GMEM), rs, base_smem, xop, bars, xsh, base_full (scratch)."""
    lay = MetaLayout(cfg.num_lora)
    BN, kr, kw, stack = cfg.block_n, cfg.kr, cfg.kw, cfg.stack
    op = jnp.dtype(cfg.op_dtype)
    q = 16 // jnp.dtype(cfg.x_dtype).itemsize  # a TMA start column must be 16-byte aligned
    R = refs
    offs = [R.offs[j] for j in range(stack + 1)]
    aligned = offs[0] == 0
    for o in offs[1:]:
        aligned = aligned & (lax.rem(o, BN) == 0)

    def slice_of(n0):
        """The slice column tile n0.. lies in (aligned offsets)."""
        j0 = jnp.int32(0)
        for o in offs[1:-1]:
            j0 = j0 + (n0 >= o).astype(jnp.int32)
        return j0

    # Register values are created where they are used (inside a pipeline step), never carried into
    # or out of a loop or branch: see _matmul_into in shrink_kernel.

    def slot_rows(w):
        """A (BM, kr) mask of the rows of slot w in the box (the row slots in ``R.rs``)."""

        def keep():
            rs = plgpu.load(R.rs, layout=plgpu.Layout.WGMMA.reduce(1))
            return lax.broadcast_in_dim(rs, (BM, kr), [0]) == w

        return keep

    def prep_x(xs, r, rows=None):
        """The x window as the operand dtype, columns >= r zeroed (NaN tails included). ``rows``:
        (keep, scale): only the rows where keep() (a (BM, kr) mask) holds are kept, multiplied by
        scale (the others zeroed)."""
        xf = plgpu.load(xs, layout=plgpu.Layout.WGMMA, optimized=False).astype(jnp.float32)
        keep = C.col_iota(BM, kr) < r
        if rows is not None:
            row_keep, scale = rows
            keep = keep & row_keep()
            xf = xf * scale
        xf = jnp.where(keep, xf, 0.0)
        hi = xf.astype(op)
        if cfg.x_part == 0:
            return hi
        return (xf - hi.astype(jnp.float32)).astype(op)

    def x_into_xop(xs, r, j, dst=None, rows=None, width=kw):
        """dst (default: xop) = the operand of slice j: x columns [j*r, j*r + kr) of the window
        (``width`` columns; ``rows``: see prep_x).

        With ``cfg.x_shift`` (stacked slices: j*r is a device value) the window starts at
        j*r rounded down to 16 bytes (a TMA start must be aligned), d columns early, and is
        kw wide; its kr columns at offset d are moved to an aligned scratch tile with
        one-element accesses (a vector access at an odd offset would be misaligned, and a
        WGMMA-layout load of a column slice needs a tile-aligned row stride), 16-byte ones when
        d == 0. So no layout
        of x ever changes: no repack of the shrink output, whatever the ranks."""
        dst = R.xop if dst is None else dst
        if not cfg.x_shift and width == kr:
            dst[...] = prep_x(xs, r, rows)
            return
        d = lax.rem(j * r, q) if cfg.x_shift else 0  # (one slice: the window starts at column 0)

        def moved(start, vec):
            strided = plgpu.Layout.WG_STRIDED((BM, kr), vec_size=vec)
            R.xsh[...] = plgpu.load(xs.at[:, pl.ds(start, kr)], layout=strided, optimized=False)
            plgpu.commit_smem()  # written and read by different threads
            dst[...] = prep_x(R.xsh, r, rows)

        def in_place():
            dst[...] = prep_x(xs.at[:, pl.ds(0, kr)], r, rows)

        # A slice that starts the window (d == 0: j*r a multiple of 16 bytes, e.g. every full-rank
        # slice) is loaded where it is when the window's row stride is a multiple of the slice width
        # (max_r <= 16), else moved with 16-byte accesses.
        if not cfg.x_shift:
            (in_place if width % kr == 0 else functools.partial(moved, 0, q))()
            return
        pl.when(d == 0)(in_place if width % kr == 0 else functools.partial(moved, 0, q))
        pl.when(d != 0)(functools.partial(moved, d, 1))

    def product_into(xs, bs, r, j, merge, direct=False):
        """merge(x window @ B tile^T), B masked to the rank by the caller (mask_b). ``direct``: xs is
        already a wgmma operand (the operand dtype, tiled and swizzled, kr columns from the slice's
        first; it may be xop itself), used as it is when the rank fills it (r == kr), else masked
        into xop, B masked here. (One branch holds both masks: as two branches on the same condition,
        the column compares of both were computed ahead of them in every step, ~40 instructions.)"""

        def product(a_ref):
            def acc_scope(acc_ref):
                plgpu.wgmma(acc_ref, a_ref, bs.T)
                merge(acc_ref[...])  # consumed in place: accumulators never leave their region

            pl.run_scoped(acc_scope, plgpu.ACC((BM, BN)))

        def via_xop():
            if direct:
                mask_b_now(bs, r)
                R.xop[...] = prep_x(xs, r)
            else:
                x_into_xop(xs, r, j)
            plgpu.commit_smem()
            product(R.xop)

        if direct:
            pl.when(r == kr)(lambda: product(xs))
            pl.when(r != kr)(via_xop)
        else:
            via_xop()

    def mask_b_now(bs, r):
        bs[...] = jnp.where(C.col_iota(BN, kr) < r, plgpu.load(bs, layout=plgpu.Layout.WGMMA), 0).astype(op)
        plgpu.commit_smem()

    def mask_b(bs, r):
        """B columns >= r zeroed (NaN / garbage tails): nothing to do when the rank fills the tile."""
        pl.when(r != kr)(lambda: mask_b_now(bs, r))

    def update(rs_ref, tile_ref, w, acc, scale, n0, jj=None, optimized=False):
        """tile rows of slot w (and columns of slice jj, if given) += scale * acc."""
        rs = plgpu.load(rs_ref, layout=plgpu.Layout.WGMMA.reduce(1))
        keep = lax.broadcast_in_dim(rs, (BM, BN), [0]) == w
        if jj is not None:
            cols = C.col_iota(BM, BN) + n0
            keep = keep & (cols >= offs[jj]) & (cols < offs[jj + 1])
        old = plgpu.load(tile_ref, layout=plgpu.Layout.WGMMA, optimized=optimized)
        new = (old.astype(jnp.float32) + acc * scale).astype(tile_ref.dtype)
        tile_ref[...] = jnp.where(keep, new, old)

    def slice_start(j, r):
        """First x column of the window of slice j: j*r (the contract's packed layout)
        rounded down to 16 bytes (a misaligned TMA start is an illegal instruction)."""
        start = j * r
        return start - lax.rem(start, q)

    def one_tile(bi, n, dep_wait=None):
        """Tile (row block bi, column tile n), if it has rows < s with an adapter: base rows loaded
        and stored row-exact, a pipeline over the block's adapters. Waits for its own stores.
        ``dep_wait`` (the grid kernel): the PDL wait, run once the block's metadata is read."""
        s = R.nrows[0]
        row_lo = bi * BM
        count = C.block_count(R.meta, lay, bi)
        # The block's slot list, in shared memory (read by every pipeline step): loaded with its count,
        # before the branch on it, so both wait for global memory once (inside the branch the list's
        # loads could only start after the count had come back: a second round trip before any tile).
        C.copy_scalars(R.meta, lay.group(bi) + 1, R.slots, cfg.num_lora)
        if dep_wait is not None:  # (every CTA, before the branch: base and x may be the kernel before's)
            dep_wait()

        @pl.when((row_lo < s) & (count > 0))
        def _():
            rx, is_tail = C.box_start(s, row_lo, cfg.tail)
            nrows_b = jnp.minimum(row_lo + BM, s) - row_lo
            sm_off = row_lo - rx
            n0 = n * BN
            # A full block on the aligned path (``cfg.full_tile``) keeps its base rows in a tiled, swizzled
            # tile: one TMA box each way and vectorized merge loads and stores, where the row-exact ladder's
            # plain tile takes a scalar access an element (a full block is never the clamped tail box).
            full = (nrows_b == BM) & aligned if cfg.full_tile else False
            plain = jnp.logical_not(full) if cfg.full_tile else True
            base_box = R.base.at[pl.ds(row_lo, BM), pl.ds(n0, BN)]

            def load_base(off, size, k):
                plgpu.copy_gmem_to_smem(
                    R.base.at[pl.ds(row_lo + off, size), pl.ds(n0, BN)],
                    R.base_smem.at[pl.ds(sm_off + off, size)],
                    R.bars.at[1 + k],
                )

            def wait_base(off, size, k):
                plgpu.barrier_wait(R.bars.at[1 + k])

            if cfg.reduce_add:
                # The tile holds the update only (each element is written by one slot and one
                # slice, the rest stay 0) and is added to base by the TMA engine at the end.
                R.base_smem[...] = C.wgmma_zeros(BM, BN, R.base_smem.dtype)
            else:
                pl.when(full)(lambda: plgpu.copy_gmem_to_smem(base_box, R.base_full, R.bars.at[1]))
                pl.when(plain)(lambda: C.ladder(nrows_b, load_base))

            # In flight with the base rows and the pipeline's first tiles: waited for in the first step.
            C.issue_box_slots(R.meta, lay, rx, R.rs, R.bars.at[0])
            j0 = slice_of(n0)

            def slot_of(i):
                return R.slots[i]

            def adapter_specs(row0, slices, delay=0):
                """The specs of a pipeline over the block's adapters: the x window of the tile's slice
                (``slices`` None) or one per slice, and the adapter's B tile."""

                def x_index(jj):
                    def index(i):
                        j = j0 if slices is None else jnp.int32(jj)
                        return (row0, slice_start(j, R.ranks[slot_of(i)]))

                    return index

                nx = 1 if slices is None else stack
                x_specs = [plgpu.BlockSpec((pl.Element(BM), pl.Element(kw)), x_index(jj), delay_release=delay)
                           for jj in range(nx)]
                b_spec = plgpu.BlockSpec((None, BN, kr), lambda i: (slot_of(i), n, 0), transforms=C.tiled(op, kr),
                                         delay_release=delay)
                return [*x_specs, b_spec]

            def run(src_ref, row0, slices):
                def step(idx, *refs):
                    *xss, bs = refs
                    (i,) = idx
                    w = slot_of(i)
                    r = R.ranks[w]
                    scale = R.scal[w]

                    @pl.when(i == 0)
                    def _():  # the row slots and base rows were loaded while the first tiles came in
                        plgpu.barrier_wait(R.bars.at[0])
                        if not cfg.reduce_add:
                            C.ladder(nrows_b, wait_base)

                    mask_b(bs, r)
                    for jj, xs in enumerate(xss):
                        slice_j = None if slices is None else jj  # general path: column mask of slice jj
                        j = j0 if slices is None else jnp.int32(jj)
                        product_into(xs, bs, r, j, functools.partial(update, R.rs, R.base_smem, w, scale=scale,
                                                                     n0=n0, jj=slice_j))

                nx = 1 if slices is None else stack
                plgpu.emit_pipeline(
                    step,
                    grid=(count,),
                    in_specs=adapter_specs(row0, slices),
                    max_concurrent_steps=cfg.stages,
                )(*([src_ref] * nx), R.b)

            def merge_accumulator(acc_ref):
                """Once every adapter's wgmma is issued (run_accumulate): wait for them and the base rows,
                then add the accumulator to the rows of the base tile that belong to a slot (with
                ``reduce_add``: the tile holds zeros, the accumulator is the update)."""
                plgpu.wgmma_wait(0)

                def merge_into(tile_ref, optimized):
                    rs = plgpu.load(R.rs, layout=plgpu.Layout.WGMMA.reduce(1))
                    keep = lax.broadcast_in_dim(rs, (BM, BN), [0]) >= 0  # rows of a slot (rank > 0)
                    old = plgpu.load(tile_ref, layout=plgpu.Layout.WGMMA, optimized=optimized)
                    new = (old.astype(jnp.float32) + acc_ref[...]).astype(tile_ref.dtype)
                    tile_ref[...] = jnp.where(keep, new, old)

                @pl.when(full)
                def _():
                    plgpu.barrier_wait(R.bars.at[1])
                    merge_into(R.base_full, True)

                @pl.when(plain)
                def _():
                    if not cfg.reduce_add:
                        C.ladder(nrows_b, wait_base)
                    merge_into(R.base_smem, False)

            def run_accumulate(src_ref, row0, _slices):
                """Aligned offsets: every adapter's product accumulates into one wgmma accumulator
                (x rows of other slots zeroed and the adapter's scale folded into x), added to the
                base tile once: one merge per tile instead of one per adapter, and the next
                adapter's x is prepared while the wgmma before runs."""
                delay = 1 if cfg.stages > 1 else 0  # the slot of a step is refilled once its wgmma is done

                def scope(xops, acc_ref):
                    def step(idx, xs, bs):
                        (i,) = idx
                        w = slot_of(i)
                        r = R.ranks[w]

                        @pl.when(i == 0)
                        def _():  # the row slots were loaded while the first tiles came in
                            plgpu.barrier_wait(R.bars.at[0])

                        mask_b(bs, r)
                        dst = xops.at[lax.rem(i, 2)]  # the wgmma of the step before may still read the other
                        x_into_xop(xs, r, j0, dst=dst, rows=(slot_rows(w), R.scal[w]))
                        plgpu.commit_smem()
                        plgpu.wgmma(acc_ref, dst, bs.T)
                        plgpu.wgmma_wait(delay)

                    plgpu.emit_pipeline(step, grid=(count,), in_specs=adapter_specs(row0, None, delay),
                                        max_concurrent_steps=cfg.stages)(src_ref, R.b)
                    merge_accumulator(acc_ref)

                def with_xops(xops):  # (register and shared memory scopes are allocated apart)
                    pl.run_scoped(functools.partial(scope, xops), plgpu.ACC((BM, BN)))

                pl.run_scoped(with_xops, plgpu.SMEM((2, BM, kr), op, transforms=C.tiled(op, kr)))

            def path(slices):
                go = run_accumulate if (slices is None and cfg.accumulate) else run
                if cfg.tail:
                    pl.when(is_tail)(lambda: go(R.x_tail, 0, slices))
                    pl.when(jnp.logical_not(is_tail))(lambda: go(R.x, rx, slices))
                else:
                    go(R.x, rx, slices)

            pl.when(aligned)(lambda: path(None))
            pl.when(jnp.logical_not(aligned))(lambda: path(True))
            plgpu.commit_smem()

            def store_base(off, size, k):
                plgpu.copy_smem_to_gmem(
                    R.base_smem.at[pl.ds(sm_off + off, size)],
                    R.base.at[pl.ds(row_lo + off, size), pl.ds(n0, BN)],
                    commit_group=False,
                    reduction_op="add" if cfg.reduce_add else None,
                )

            pl.when(full)(lambda: plgpu.copy_smem_to_gmem(R.base_full, base_box, commit_group=False))
            pl.when(plain)(lambda: C.ladder(nrows_b, store_base))
            plgpu.commit_smem_to_gmem_group()
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    return SimpleNamespace(one_tile=one_tile, aligned=aligned, slice_of=slice_of, slice_start=slice_start,
                           mask_b=mask_b, product_into=product_into, update=update, x_into_xop=x_into_xop)


def _refs(cfg: ExpandConfig, meta_ref, nrows_ref, ranks_ref, scal_ref, offs_ref, x_ref, rest):
    """The kernel's refs by name. ``ranks`` and ``scal`` are shared-memory copies of the slots' ranks
    and scalings, made when the kernel starts (:func:`lora.pallas.common.copy_scalars`): the
    pipeline steps read them (and ``slots``, a tile's slot list) from shared memory, not from global
    memory, where each read would wait a round trip to L2 after the read it depends on."""
    base_full = rest[-1] if cfg.full_tile else None  # (the last scratch)
    if cfg.full_tile:
        rest = rest[:-1]
    if not cfg.tail:
        rest = (None, *rest)
    if not (cfg.x_shift or cfg.gather):
        rest = (*rest, None)
    if cfg.ctas or cfg.gather:  # the persistent / gathering kernel scopes one_tile's base tile apart
        rest = (*rest[:5], None, *rest[5:])
    x_tail_ref, b_ref, base_ref, out_ref, table, base_smem, xop, bars, scal_s, xsh = rest
    del out_ref  # aliased with base_ref
    # One int32 scratch (each scratch takes a multiple of 1 KB): a box's row slots, two tables, and
    # the persistent kernel's ring of its steps' tiles (row block, column tile), block counts and
    # first slots.
    L = cfg.num_lora
    rs_smem, ranks_s, slots_s, ring_b, ring_n, ring_count, ring_slot = (
        table.at[pl.ds(off, n)]
        for off, n in ((0, BM), (BM, L), (BM + L, L), *((BM + 2 * L + k * RING, RING) for k in range(4))))

    def load_tables():
        C.copy_scalars(ranks_ref, 0, ranks_s, L)
        C.copy_scalars(scal_ref, 0, scal_s, L)

    return SimpleNamespace(meta=meta_ref, nrows=nrows_ref, ranks=ranks_s, scal=scal_s, slots=slots_s,
                           offs=offs_ref, x=x_ref, x_tail=x_tail_ref, b=b_ref, base=base_ref, rs=rs_smem,
                           base_smem=base_smem, base_full=base_full, xop=xop, bars=bars, xsh=xsh,
                           load_tables=load_tables,
                           ring_b=ring_b, ring_n=ring_n, ring_count=ring_count, ring_slot=ring_slot,
                           ranks_gmem=ranks_ref, scal_gmem=scal_ref)


#: Barriers per group (Mosaic's limit): a gathered chunk's 64 rows wait on two groups.
ROW_BARS = 32


def _gather_group(cfg: ExpandConfig, R: SimpleNamespace, prog, g, c, dep_wait):
    """Column tiles g*T .. g*T+T-1 (T = ``cfg.gather_tiles``) of chunk c of the chunk table (decode:
    one adapter's rows, at most 64).

    The chunk's x rows are gathered row by row (one TMA copy each, all in flight at once) and made
    the wgmma operand once (rows of the chunk only, the adapter's scale folded in); then a pipeline
    over the group's column tiles brings the adapter's B tiles, and each tile's product is added to
    the chunk's base rows by one TMA reduce-add per row, in flight while the next tile computes.
    A chunk's rows are its adapter's only and every row of a segment is in one chunk, so each
    element of base gets exactly one addend: the same bits every run (the update is rounded to the
    base dtype, then added: two roundings). Interpret mode (no TMA reductions) loads the rows of
    base and stores base + update instead (one rounding). A group that crosses a slice boundary
    (never with real model shapes) gathers x again for each tile past it.

    The chunk's record, rank, scale and row list are read before the PDL wait (``dep_wait``: metadata only),
    and the first x rows are in flight with the pipeline's first B tiles."""
    lay = MetaLayout(cfg.num_lora)
    BN, kr, kg, T, ntn = cfg.block_n, cfg.kr, cfg.gather_cols, cfg.gather_tiles, cfg.ntn
    kx = min(kg, cfg.na)  # columns of one x row copy (past x's last column: TMA's zero fill)
    op, x_dt = jnp.dtype(cfg.op_dtype), jnp.dtype(cfg.x_dtype)
    base_dt = jnp.dtype(cfg.base_dtype)
    reduce = not C.interpret_mode_active()
    rec = lay.chunk(c)
    w = R.meta[rec]
    rows = R.meta[rec + 1]
    n_first = g * T
    pl.when(rows <= 0)(dep_wait)

    @pl.when(rows > 0)
    def _():
        r = R.ranks_gmem[w]
        scale = R.scal_gmem[w]

        def scope(win, lst, outs, bars, bars_lo, bars_hi):
            def with_row_bar(k, fn):  # row k's barrier (Mosaic allows 32 barriers per group)
                pl.when(k < ROW_BARS)(lambda: fn(bars_lo.at[k]))
                pl.when(k >= ROW_BARS)(lambda: fn(bars_hi.at[k - ROW_BARS]))

            def each_row(fn):
                pl.loop(0, rows)(fn)

            plgpu.copy_gmem_to_smem(R.meta.at[pl.ds(rec + CHUNK - BM, BM)], lst, bars.at[0])
            plgpu.barrier_wait(bars.at[0])
            dep_wait()

            def fetch_x(j):
                """The chunk's rows of slice j's x window into ``win`` (one TMA copy a row, in flight)."""
                start = prog.slice_start(j, r)

                def fetch(k):
                    with_row_bar(k, lambda bar: plgpu.copy_gmem_to_smem(
                        R.x.at[pl.ds(lst[k], 1), pl.ds(start, kx)], win.at[pl.ds(k, 1), pl.ds(0, kx)], bar))

                each_row(fetch)

            def x_operand(j):
                """R.xop = the chunk's rows of slice j (fetched by fetch_x), scaled, masked to the rank."""
                each_row(lambda k: with_row_bar(k, plgpu.barrier_wait))
                prog.x_into_xop(win, r, j, rows=(lambda: C.row_iota(BM, kr) < rows, scale), width=kg)
                plgpu.commit_smem()

            j_first = prog.slice_of(n_first * BN)
            fetch_x(j_first)  # in flight with the pipeline's first B tiles

            def step(idx, bs):
                (t,) = idx
                n = n_first + t
                n0 = n * BN
                out = outs.at[lax.rem(t, 2)]
                pl.when(t == 0)(lambda: x_operand(j_first))  # (n_first < ntn: the grid's groups start on tiles)

                @pl.when(n < ntn)
                def _():
                    j = prog.slice_of(n0)

                    @pl.when(j != j_first)
                    def _():
                        fetch_x(j)
                        x_operand(j)

                    prog.mask_b(bs, r)
                    # the row stores of two tiles before have read this buffer
                    plgpu.wait_smem_to_gmem(1, wait_read_only=True)
                    if not reduce:
                        each_row(lambda k: with_row_bar(k, lambda bar: plgpu.copy_gmem_to_smem(
                            R.base.at[pl.ds(lst[k], 1), pl.ds(n0, BN)], out.at[pl.ds(k, 1)], bar)))
                        each_row(lambda k: with_row_bar(k, plgpu.barrier_wait))

                    def acc_scope(acc_ref):
                        plgpu.wgmma(acc_ref, R.xop, bs.T)
                        if reduce:
                            out[...] = acc_ref[...].astype(base_dt)
                        else:
                            old = plgpu.load(out, layout=plgpu.Layout.WGMMA, optimized=False)
                            out[...] = (old.astype(jnp.float32) + acc_ref[...]).astype(base_dt)

                    pl.run_scoped(acc_scope, plgpu.ACC((BM, BN)))
                    plgpu.commit_smem()

                    def store(k):
                        plgpu.copy_smem_to_gmem(out.at[pl.ds(k, 1)], R.base.at[pl.ds(lst[k], 1), pl.ds(n0, BN)],
                                                commit_group=False, reduction_op="add" if reduce else None)

                    each_row(store)
                    plgpu.commit_smem_to_gmem_group()

            plgpu.emit_pipeline(
                step,
                grid=(T,),
                in_specs=[plgpu.BlockSpec((None, BN, kr), lambda t: (w, jnp.minimum(n_first + t, ntn - 1), 0),
                                          transforms=C.tiled(op, kr))],
                max_concurrent_steps=cfg.gather_stages,
            )(R.b)
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)

        pl.run_scoped(
            scope,
            plgpu.SMEM((BM, kg), x_dt),
            plgpu.SMEM((BM,), jnp.int32),
            plgpu.SMEM((2, BM, BN), base_dt),
            plgpu.Barrier(num_barriers=1),
            plgpu.Barrier(num_barriers=ROW_BARS),
            plgpu.Barrier(num_barriers=BM - ROW_BARS),
        )


def _gather_body(cfg: ExpandConfig, R: SimpleNamespace, prog, dep_wait):
    """The decode expand: CTA (g, c) runs column tile group g of chunk c (:func:`_gather_group`).
    When a slice boundary is not a multiple of ``block_n`` (checked at run time), CTA (g, b) for
    b < nb runs ``one_tile`` on the group's tiles of block b instead (every slice's window, column
    masks)."""
    g, c = lax.axis_index("g"), lax.axis_index("c")
    pl.when(prog.aligned)(lambda: _gather_group(cfg, R, prog, g, c, dep_wait))
    pl.when(jnp.logical_not(prog.aligned))(dep_wait)

    @pl.when(jnp.logical_not(prog.aligned) & (c < cfg.nb))
    def _():
        R.load_tables()

        def tiles(base_smem):  # (its base tile scoped apart from the gathering kernel's buffers)
            R.base_smem = base_smem

            @pl.loop(0, cfg.gather_tiles)
            def _(t):
                n = g * cfg.gather_tiles + t
                pl.when(n < cfg.ntn)(lambda: prog.one_tile(c, n))

        pl.run_scoped(tiles, plgpu.SMEM((BM, cfg.block_n), jnp.dtype(cfg.base_dtype)))


def _persistent_body(cfg: ExpandConfig, R: SimpleNamespace, prog):
    """The persistent kernel: this CTA's tiles of the full row blocks as one pipeline, then its
    tiles of the partial last block (module docstring)."""
    lay = MetaLayout(cfg.num_lora)
    BN, kr, kw, nsm, ntn = cfg.block_n, cfg.kr, cfg.kw, cfg.ctas, cfg.ntn
    op = jnp.dtype(cfg.op_dtype)
    sm = lax.axis_index("sm")
    s = R.nrows[0]
    nfull = lax.div(s, BM)
    ntiles = nfull * ntn
    # CTA sm walks a contiguous run of tiles, column tile major: a run covers consecutive row blocks
    # of one or two column tiles, so the (slower) tiles of the blocks that hold several adapters are
    # spread over the CTAs. (Row block major runs were faster on metadata reads, but put all the
    # column tiles of a segment boundary on one CTA: 3.6x slower on uneven prefill segments.)
    per, extra = lax.div(ntiles, nsm), lax.rem(ntiles, nsm)
    first_tile = sm * per + jnp.minimum(sm, extra)
    steps = per + (sm < extra).astype(jnp.int32)
    rows_of = jnp.maximum(nfull, 1)

    S = cfg.stream_stages
    assert S < RING, (S, RING)  # the ring holds the entries of steps i .. i + S at step i

    # Step i's tile (row block b, column tile n), its block's adapter count and first slot (any slot
    # id when the block has no adapter: only fetched, never used) are read from a ring in shared
    # memory. Step i makes the entry of step i + S: its tile is the one after step i + S - 1's (no
    # division: session 19 call 1 found three integer divisions, ~90 of a step's ~580 instructions);
    # its block's count and first slot are loaded from global memory when the step starts and stored
    # with the tile when it ends, after the tile's work, so the load's round trip to L2 is hidden
    # behind it; the pipeline then fetches step i + S's tiles (their index maps read the ring). The
    # first S entries are made before the pipeline.
    def next_tile(b, n):
        last = b == rows_of - 1
        return jnp.where(last, 0, b + 1), jnp.where(last, n + 1, n)

    def block_info(b):
        return C.block_count(R.meta, lay, b), C.block_slot(R.meta, lay, b, 0)

    def put(j, tile_bn, info):
        k = lax.rem(j, RING)
        R.ring_b[k], R.ring_n[k] = tile_bn
        R.ring_count[k], R.ring_slot[k] = info

    def tile(i):
        k = lax.rem(i, RING)
        return R.ring_b[k], R.ring_n[k]

    def first_slot(i):
        return R.ring_slot[lax.rem(i, RING)]

    def tile_of(i):  # (by division: before and after the pipeline)
        t = first_tile + i
        return lax.rem(t, rows_of), lax.div(t, rows_of)

    tiles = [tile_of(0)]
    for _ in range(S - 1):
        tiles.append(next_tile(*tiles[-1]))
    infos = [block_info(b) for b, _ in tiles]  # (all loads in flight, then the stores)
    for j, (tile_bn, info) in enumerate(zip(tiles, infos)):
        put(jnp.int32(j), tile_bn, info)

    # x in the operand dtype: the pipeline fetches the first adapter's x window as a wgmma operand
    # (kr columns, tiled, swizzled), used as it is when the rank fills it: at column 0 (one slice),
    # or at the slice's first column j*r (stacked slices) when that is a multiple of the tiling's
    # column count ``tc`` (a tiled copy starts on a tile: e.g. whenever r == kr <= 64). Else the step
    # fetches the kw-wide window from j*r's 16-byte boundary and shifts it (x_into_xop).
    direct = cfg.direct
    tc = C.tile_columns(op, kr)

    def x_index(i):
        b, n = tile(i)
        if direct and not cfg.x_shift:
            return (b, 0)
        j, r = prog.slice_of(n * BN), R.ranks[first_slot(i)]
        if not direct:
            return (b * BM, prog.slice_start(j, r))
        start = j * r
        return (b * BM, pl.multiple_of(start - lax.rem(start, tc), tc))

    if direct:
        x_block = (BM, kr) if not cfg.x_shift else (pl.Element(BM), pl.Element(kr))
        x_spec = plgpu.BlockSpec(x_block, x_index, transforms=C.tiled(op, kr))
    else:
        x_spec = plgpu.BlockSpec((pl.Element(BM), pl.Element(kw)), x_index)
    # the window of a block's further adapters (and of an unaligned slice start): fetched in the step
    plain_direct = direct and not cfg.x_shift

    def b_index(i):
        _, n = tile(i)
        return (first_slot(i), n, 0)

    def base_index(i):
        return tile(i)

    def rs_index(i):
        b, _ = tile(i)
        return (lay.group(b) + lay.head,)  # the row slots of box 64b: shifted copy 0

    # Base tiles tiled and swizzled in SMEM, the layout the optimized WGMMA-layout load needs (an
    # unswizzled tile with the generic load measured the same on the H200, session 5 calls 1-2).
    base_tf = C.tiled(jnp.dtype(cfg.base_dtype), BN)

    def step(xs2, bs2, bar2, idx, xs, bs, base_s, rs_s):
        (i,) = idx
        b, n = tile(i)
        tile_ahead = next_tile(*tile(i + S - 1))
        ahead = block_info(tile_ahead[0])  # stored at the end of the step
        count = R.ring_count[lax.rem(i, RING)]
        n0 = n * BN
        j = prog.slice_of(n0)

        def add_adapter(w, xs_ref, bs_ref, is_operand):
            r = R.ranks[w]
            if not is_operand:  # (the direct product masks B in its own branch)
                prog.mask_b(bs_ref, r)
            prog.product_into(
                xs_ref, bs_ref, r, j,
                functools.partial(prog.update, rs_s, base_s, w, scale=R.scal[w], n0=n0, optimized=True),
                direct=is_operand,
            )

        def on_tile(w):
            """Adapter w's slice starts on a tile: its x columns can come as the wgmma operand."""
            return lax.rem(j * R.ranks[w], tc) == 0

        def fetch_x(w):
            """xs2 = adapter w's x window (kr columns at 0, or kw from the slice's aligned start)."""
            if plain_direct:
                x_src = R.x.at[pl.ds(b * BM, BM), pl.ds(0, kr)]
            else:
                x_src = R.x.at[pl.ds(b * BM, BM), pl.ds(prog.slice_start(j, R.ranks[w]), kw)]
            plgpu.copy_gmem_to_smem(x_src, xs2, bar2.at[0])

        @pl.when(prog.aligned & (count > 0))
        def _():
            w0 = first_slot(i)  # its tiles came with the pipeline
            if direct and cfg.x_shift:
                w0_on_tile = on_tile(w0)
                pl.when(w0_on_tile)(lambda: add_adapter(w0, xs, bs, True))

                @pl.when(jnp.logical_not(w0_on_tile))
                def _():
                    fetch_x(w0)
                    plgpu.barrier_wait(bar2.at[0])
                    add_adapter(w0, xs2, bs, False)
            else:
                add_adapter(w0, xs, bs, direct)

            @pl.loop(1, count)
            def _(k):  # a segment boundary: the block's other adapters, fetched now (from L2)
                w = C.block_slot(R.meta, lay, b, k)
                plgpu.copy_gmem_to_smem(R.b.at[w, pl.ds(n0, BN), pl.ds(0, kr)], bs2, bar2.at[1])

                def from_window():
                    fetch_x(w)
                    plgpu.barrier_wait(bar2.at[0])
                    plgpu.barrier_wait(bar2.at[1])
                    add_adapter(w, xs2, bs2, plain_direct)

                if not (direct and cfg.x_shift):
                    from_window()
                    return
                # A slice that starts on a tile comes as the wgmma operand itself, into xop (no
                # shift through shared memory: session 19 call 1, r64 mixed QKV expand 95.1 -> 88.3 us).
                w_on_tile = on_tile(w)

                @pl.when(w_on_tile)
                def _():
                    x_src = R.x.at[pl.ds(b * BM, BM), pl.ds(pl.multiple_of(j * R.ranks[w], tc), kr)]
                    plgpu.copy_gmem_to_smem(x_src, R.xop, bar2.at[0])
                    plgpu.barrier_wait(bar2.at[0])
                    plgpu.barrier_wait(bar2.at[1])
                    add_adapter(w, R.xop, bs2, True)

                pl.when(jnp.logical_not(w_on_tile))(from_window)

            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(base_s, R.base.at[pl.ds(b * BM, BM), pl.ds(n0, BN)])
            # the store of the step before has read its slot, which the pipeline refills after this step
            plgpu.wait_smem_to_gmem(1, wait_read_only=True)

        @pl.when(jnp.logical_not(prog.aligned & (count > 0)))
        def _():  # no store of this step: the slot of the step before is refilled once its store has read it
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)

        put(i + S, tile_ahead, ahead)

    def pipeline(xs2, bs2, bar2):
        plgpu.emit_pipeline(
            functools.partial(step, xs2, bs2, bar2),
            grid=(steps,),
            in_specs=[
                x_spec,
                plgpu.BlockSpec((None, BN, kr), b_index, transforms=C.tiled(op, kr)),
                # released one step late: this step's TMA store reads the slot until the next step
                plgpu.BlockSpec((BM, BN), base_index, transforms=base_tf, delay_release=1),
                plgpu.BlockSpec((pl.Element(BM),), rs_index),
            ],
            max_concurrent_steps=cfg.stream_stages,
        )(R.x, R.b, R.base, R.meta)

    x_dt = jnp.dtype(cfg.x_dtype)
    pl.run_scoped(
        pipeline,
        plgpu.SMEM((BM, kr), op, transforms=C.tiled(op, kr)) if plain_direct else plgpu.SMEM((BM, kw), x_dt),
        plgpu.SMEM((BN, kr), op, transforms=C.tiled(op, kr)),
        plgpu.Barrier(num_barriers=2),
    )
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    def tiles_one_by_one(base_smem):
        """one_tile's work, in the pipeline's shared memory (free by now): this CTA's tiles when a
        slice boundary is not a multiple of block_n (the pipeline's steps skipped them), then the
        partial last block (s not a multiple of 64): column tile n on CTA nsm - 1 - n % nsm, from
        the last CTA down, whose pipelines hold a step less when the tiles do not divide evenly."""
        R.base_smem = base_smem

        @pl.when(jnp.logical_not(prog.aligned))
        def _():
            @pl.loop(0, steps)
            def _(i):
                prog.one_tile(*tile_of(i))  # (nothing when the block has no adapter)

        rank = nsm - 1 - sm
        ntail = jnp.where(lax.rem(s, BM) != 0, lax.div(jnp.maximum(ntn - rank + nsm - 1, 0), nsm), 0)

        @pl.loop(0, ntail)
        def _(k):
            prog.one_tile(nfull, rank + k * nsm)

    pl.run_scoped(tiles_one_by_one, plgpu.SMEM((BM, BN), jnp.dtype(cfg.base_dtype)))


def expand(meta, nrows, ranks, scalings, offsets, x, x_tail, b_w, base, *, cfg: ExpandConfig):
    """Returns ``base`` with the LoRA update added (aliased: in place on the GPU)."""
    C.TRACE_COUNT["expand"] += 1
    BN, kr = cfg.block_n, cfg.kr
    op = jnp.dtype(cfg.op_dtype)
    rungs = C.ladder_rungs()

    def body(meta_ref, nrows_ref, ranks_ref, scal_ref, offs_ref, x_ref, *rest, dep_wait):
        R = _refs(cfg, meta_ref, nrows_ref, ranks_ref, scal_ref, offs_ref, x_ref, rest)
        prog = _tile_program(cfg, R)  # (reads the slice offsets: before the PDL wait)
        if cfg.gather:
            _gather_body(cfg, R, prog, dep_wait)
            return
        R.load_tables()
        if cfg.ctas:
            dep_wait()
            _persistent_body(cfg, R, prog)
        else:
            prog.one_tile(lax.axis_index("b"), lax.axis_index("n"), dep_wait=dep_wait)

    args = [meta, nrows, ranks, scalings, offsets, x] + ([x_tail] if cfg.tail else []) + [b_w, base]
    if cfg.ctas:
        grid, names = (cfg.ctas,), ("sm",)
    elif cfg.gather:  # a CTA per (group of column tiles, chunk); those past the batch's chunks exit at once
        grid, names = (-(-cfg.ntn // cfg.gather_tiles), cfg.nb + cfg.num_lora), ("g", "c")
    else:
        # The last grid axis varies fastest (CUDA's x): consecutive CTAs take consecutive row blocks
        # of one column tile, so each adapter's B tile is read from DRAM once and then hits L2.
        grid, names = (cfg.ntn, cfg.nb), ("n", "b")
    return C.mgpu_call(
        body,
        args,
        out_type=jax.ShapeDtypeStruct(base.shape, base.dtype),
        grid=grid,
        grid_names=names,
        scratch=[
            plgpu.SMEM((BM + 2 * cfg.num_lora + 4 * RING,), jnp.int32),
            *([] if cfg.ctas or cfg.gather else [plgpu.SMEM((BM, BN), base.dtype)]),
            plgpu.SMEM((BM, kr), op, transforms=C.tiled(op, kr)),
            plgpu.Barrier(num_barriers=1 + rungs),
            plgpu.SMEM((cfg.num_lora,), jnp.float32),
        ]
        + ([plgpu.SMEM((BM, kr), jnp.dtype(cfg.x_dtype))] if cfg.x_shift or cfg.gather else [])
        + ([plgpu.SMEM((BM, BN), base.dtype, transforms=C.tiled(base.dtype, BN))] if cfg.full_tile else []),
        aliases={len(args) - 1: 0},
        pdl=cfg.pdl,
        early=True,
    )
