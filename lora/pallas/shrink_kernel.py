"""Shrink kernels: xa = x @ A[slot].T per row, masked to each slot's real rank, accumulated in float32.

    x     (Bpad, K)          activations (a torch caller's tensor may have only s <= Bpad rows)
    x_tail (64, K)           rows [s-64, s) of the same memory (only with ``cfg.tail``)
    A     (L, NA, K)         NA = stack * max_r; slot w uses rows [0, stack * rank[w])
    out   (Bpad, cols)       rows of slot w: columns [0, stack*rank[w]) hold x @ A[w].T, the rest 0;
                             rows with no adapter are 0; in the activations' dtype (one rounding of
                             the float32 result: ``cfg.out_dtype``), cols = ``cfg.out_cols``

Three variants (chosen in :func:`lora.pallas.tiling.shrink_config`):

* **block** (prefill, mixed): one CTA per 64-row block. It runs one pipelined K loop (TMA ->
  wgmma, ``cfg.stages`` deep) per two adapters present in the block's rows (each x tile feeds one
  wgmma per adapter; ``cfg.pair_stages`` deep) and merges the results with the per-row slot mask,
  then stores its box with one TMA copy. The clamped box of a partial last
  block overlaps the block before: that block also runs the adapters of the block before (an
  adapter of both runs twice; the merge is idempotent), so the overlapping rows get the values the
  block before writes. Each row of x is read once per two adapters of its block (once, except
  where three or more segments meet in one block).
* **wide** (a Tuning for prefill-sized batches, ``Tuning(shrink_wide=True)``; not a default: on the
  H200 it was slower than the block variant on every prefill-8k / mixed shrink but one, session 22):
  the block variant split in K with two blocks a CTA, warp-specialized (a producer warpgroup streaming
  x and A tiles, one consumer warpgroup per block), so an A tile is read once for 128 rows; partial
  tiles added by :func:`add_parts` (:func:`_shrink_wide`).
* **split** (decode-sized batches, <= 4 blocks): CTA (block, adapter index, K split, column chunk).
  Decode batches are weight-bound (every adapter's A must be streamed once) and have too few
  blocks to fill the GPU, so the K loop is split across CTAs. Each CTA stores its float32 tile,
  masked to its adapter's rows of its block, as its own partial tile; the caller adds the partials
  in index order (:func:`add_parts`). No two CTAs write the same memory and
  nothing is added in completion order, so the result is bitwise the same run to run (the earlier
  TMA reduce-add of the K-split partials into one buffer was not: float addition is not
  associative, a one-ulp difference in a few percent of runs), and this is the code that CPU
  interpret mode runs too (it has no TMA reductions). The partials take nb * L * ksplit tiles
  (about 2 MB for a 64-token, 8-adapter QKV): decode-sized batches only.

:func:`add_parts` is the second half of a split shrink (and of the K-split block variant): the
partial tiles added over their index in a fixed order, written as the float32 input of a fused
op's expand or straight as the op's result in its dtype (one kernel instead of a reduction and a
cast: session 6 on the H200 measured 4.0 + 1.7 us for those two torch kernels at 64 tokens).

Arguments: ``meta`` (the batch's metadata, :mod:`lora.pallas.tiling`), ``nrows`` ((1,) int32: the
real row count s), ``ranks``, x (and its tail view), A.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from . import common as C
from .tiling import BM, MetaLayout, PartsConfig, ShrinkConfig, column_chunk

__all__ = ["shrink_block", "shrink_split", "add_parts", "column_chunk"]


def _staged_cols(cols: int, dtype) -> int:
    """Columns of a staging tile whose rows are stored one TMA copy each: a copy out of shared memory
    must start on a 128-byte multiple, and a tile of ``cols`` columns is written into the staging
    rows' first ``cols`` (Mosaic: a row stride that ``cols`` divides)."""
    return math.lcm(cols, 128 // jnp.dtype(dtype).itemsize)


def _box(nrows_ref, b, cfg: ShrinkConfig):
    """(s, row_lo, rx, is_tail): the block's first row and the first row of its box."""
    s = nrows_ref[0]
    row_lo = b * BM
    rx, is_tail = C.box_start(s, row_lo, cfg.tail)
    return s, row_lo, rx, is_tail


def _matmul_into(cfg: ShrinkConfig, x_ref, x_tail_ref, a_ref, b, products, c, is_tail, k_first, nk):
    """For each (w, merge) of ``products`` (one or two): merge(acc) with acc (BM, CW) = box rows of
    x @ A[w, chunk c].T over k-blocks [k_first, k_first+nk). One pass over x: each x tile feeds one
    wgmma per adapter, so a block with two adapters reads its rows once.

    ``merge`` consumes the accumulator inside the control flow that produced it (it writes SMEM):
    wgmma accumulators must not flow out of a branch or loop as values (that miscompiles to an
    illegal instruction on the device).
    """
    cw = column_chunk(cfg.na)
    dt = x_ref.dtype
    x_tf = C.tiled(dt, cfg.block_k)
    stages = max(2, cfg.stages if len(products) == 1 else cfg.pair_stages)

    def run(src_ref, blk):
        def acc_scope(*accs):
            def step(_, xs, *as_):
                for acc_ref, a_s in zip(accs, as_):
                    plgpu.wgmma(acc_ref, xs, a_s.T)
                # the step before's products are done: its slots are refilled after this step
                plgpu.wgmma_wait(len(accs))

            a_spec = plgpu.BlockSpec((cw, cfg.block_k), lambda k: (c, k + k_first), transforms=x_tf, delay_release=1)
            plgpu.emit_pipeline(
                step,
                grid=(nk,),
                in_specs=[
                    plgpu.BlockSpec((BM, cfg.block_k), lambda k: (blk, k + k_first), transforms=x_tf, delay_release=1),
                    *[a_spec] * len(accs),
                ],
                max_concurrent_steps=stages,
            )(src_ref, *[a_ref.at[w] for w, _ in products])
            for acc_ref, (_, merge) in zip(accs, products):
                merge(acc_ref[...])

        pl.run_scoped(acc_scope, *[plgpu.ACC((BM, cw)) for _ in products])

    if cfg.tail:
        pl.when(is_tail)(lambda: run(x_tail_ref, 0))
        pl.when(jnp.logical_not(is_tail))(lambda: run(x_ref, b))
    else:
        run(x_ref, b)


def _keep(rs_smem, w, ncols, c, cw):
    """(BM, cw) mask: rows of slot w, columns below stack*rank (built where it is used)."""
    rs = plgpu.load(rs_smem, layout=plgpu.Layout.WGMMA.reduce(1))
    cols = C.col_iota(BM, cw) + c * cw
    return (lax.broadcast_in_dim(rs, (BM, cw), [0]) == w) & (cols < ncols)


def shrink_block(meta, nrows, ranks, x, x_tail, a, *, cfg: ShrinkConfig):
    """Block variant: returns the (Bpad, cfg.out_cols) shrink output in ``cfg.out_dtype`` (rows >= s
    unspecified): merged in a float32 tile, rounded once to the output dtype when it is stored.

    A CTA runs its block's adapters in *units* of one K loop (two adapters when ``cfg.pair_stages``,
    else one). A block whose adapters make more than one unit (three segments meeting in its rows)
    would take one K loop per unit: a tail the other CTAs wait for (session 14 on the H200: two such
    blocks of 112 made the rank-16 shrink 23.5 us against 18.9 without them). With ``cfg.extra_units``,
    the bucket's CTAs of blocks past ``s`` (no rows of their own) run such units: the i-th of them the
    batch's i-th *extra unit* (every unit of a block after its first, numbered by the metadata,
    :mod:`lora.pallas.tiling`); the block's own CTA runs its first unit and the extra units no idle CTA
    is left for. Such a block's rows are then written by more than one CTA, each storing only the rows
    of its own adapters, one TMA store per row (from a staging tile of 128-byte rows): the rows are
    disjoint, so the result is the same whichever CTA finishes first. Other blocks store their box with
    one copy.

    With ``cfg.ksplit > 1`` (a Tuning) the K loop is split over ``ksplit`` CTAs per block, each
    storing its tile as a partial tile (nb, ksplit, 64, na_out), added like the split variant's
    (:func:`add_parts`): more CTAs (bytes in flight) for the same rows.
    """
    C.TRACE_COUNT["shrink"] += 1
    if cfg.wide:
        return _shrink_wide(meta, nrows, ranks, x, x_tail, a, cfg=cfg)
    lay = MetaLayout(cfg.num_lora)
    cw = column_chunk(cfg.na)
    nc = -(-cfg.na // cw)
    KS = cfg.ksplit
    nk_split = cfg.nk // KS
    out_dt = jnp.dtype(jnp.float32 if KS > 1 else cfg.out_dtype)
    cast = out_dt != jnp.float32  # stored from a second tile in the output dtype
    unit = 2 if cfg.pair_stages else 1  # adapters per K loop
    staged_cols = _staged_cols(cw, out_dt)  # (rows stored alone)

    def body(meta_ref, nrows_ref, ranks_ref, x_ref, *rest):
        rest = list(rest)
        x_tail_ref = rest.pop(0) if cfg.tail else None
        a_ref, o_ref, rs_smem, o_smem, bar = rest
        b = lax.axis_index("b")
        c = lax.axis_index("c")
        ks = lax.axis_index("ks") if KS > 1 else 0
        s, row_lo, rx, is_tail = _box(nrows_ref, b, cfg)
        with_rows = lax.div(s + (BM - 1), BM)  # blocks with rows; the CTAs of the others run extra units
        idle = cfg.nb - with_rows

        def extra(g, k):  # entry k of group g's extra-unit entries (tiling.MetaLayout.extra)
            return meta_ref[lay.extra(g, unit) + k]

        def products(g, box_tail, ws):
            """The product of each adapter of ``ws`` (slot ids) over block g's box, merged into o_smem."""

            def merge(w, acc):
                keep = _keep(rs_smem, w, cfg.stack * ranks_ref[w], c, cw)
                o_smem[...] = jnp.where(keep, acc, plgpu.load(o_smem, layout=plgpu.Layout.WGMMA, optimized=False))

            prods = [(w, functools.partial(merge, w)) for w in ws]
            _matmul_into(cfg, x_ref, x_tail_ref, a_ref, g, prods, c, box_tail, ks * nk_split, nk_split)

        def run_unit(g, box_tail, slot, total, first):
            """Over block g's box: adapters slot(first) .. slot(first + unit - 1), those below ``total``."""
            if unit == 1:
                products(g, box_tail, [slot(first)])
                return
            pl.when(first + 1 < total)(lambda: products(g, box_tail, [slot(first), slot(first + 1)]))
            pl.when(first + 1 >= total)(lambda: products(g, box_tail, [slot(first)]))

        def slot_range(g, count, first, n):
            """The slot ids of adapters first .. first+n-1 of block g's list (ascending ids): (lowest, highest)."""
            return (C.block_slot(meta_ref, lay, g, first),
                    C.block_slot(meta_ref, lay, g, jnp.minimum(first + n, count) - 1))

        def store_box(g, box_row):
            def store(src):
                plgpu.commit_smem()
                if KS > 1:
                    plgpu.copy_smem_to_gmem(src, o_ref.at[g, ks, :, pl.ds(c * cw, cw)])
                else:
                    plgpu.copy_smem_to_gmem(src, o_ref.at[pl.ds(box_row, BM), pl.ds(c * cw, cw)])
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)

            def cast_and_store(c_smem):
                plgpu.commit_smem()  # (the merges' stores, read by other threads)
                c_smem[...] = o_smem[...].astype(out_dt)
                store(c_smem)

            if cast:  # the tile in the output dtype takes the K loops' shared memory, free by now
                pl.run_scoped(cast_and_store, plgpu.SMEM((BM, cw), out_dt))
            else:
                store(o_smem)

        def store_rows(g, box_row, keep_row):
            """Row i of the tile where keep_row(token row, its slot): one TMA store per row."""

            def store(src):
                plgpu.commit_smem()

                @pl.loop(0, BM)
                def _(i):
                    @pl.when(keep_row(box_row + i, rs_smem[i]))
                    def _():
                        dst = o_ref.at[g, ks, pl.ds(i, 1)] if KS > 1 else o_ref.at[pl.ds(box_row + i, 1)]
                        plgpu.copy_smem_to_gmem(src.at[pl.ds(i, 1), pl.ds(0, cw)], dst.at[:, pl.ds(c * cw, cw)],
                                                commit_group=False)

                plgpu.commit_smem_to_gmem_group()
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)

            def staged(st):
                plgpu.commit_smem()
                st.at[:, pl.ds(0, cw)][...] = o_smem[...].astype(out_dt)
                store(st)

            if cast or staged_cols != cw:  # in the K loops' shared memory, free by now
                pl.run_scoped(staged, plgpu.SMEM((BM, staged_cols), out_dt))
            else:
                store(o_smem)

        # (the partial tiles of blocks past s are not written: add_parts does not read them)
        @pl.when(row_lo < s)
        def _():
            count = C.block_count(meta_ref, lay, b)

            def all_here():  # every adapter here, and (clamped box) those of the block before: one box store
                prev = jnp.maximum(b - 1, 0)
                n_prev = 0 if is_tail is None else jnp.where(is_tail & (b > 0), C.block_count(meta_ref, lay, prev), 0)
                total = count + n_prev

                def slot(i):  # this block's adapters, then (clamped box) those of the block before
                    own = C.block_slot(meta_ref, lay, b, jnp.minimum(i, count - 1))
                    before = C.block_slot(meta_ref, lay, prev, jnp.maximum(i - count, 0))
                    return jnp.where(i < count, own, before)

                pl.loop(0, lax.div(total + unit - 1, unit))(lambda p: run_unit(b, is_tail, slot, total, p * unit))
                store_box(b, rx)

            if not cfg.extra_units:
                C.load_box_slots(meta_ref, lay, rx, rs_smem, bar.at[0])
                o_smem[...] = C.wgmma_zeros(BM, cw)
                all_here()
                return
            units = lax.div(count + (unit - 1), unit)
            first_extra = extra(b, 0)
            # units 1 .. away of this block run on CTAs of their own (none when away is 0)
            away = jnp.maximum(jnp.minimum(idle - first_extra, units - 1), 0)  # (no adapter: units is 0)
            C.load_box_slots(meta_ref, lay, rx, rs_smem, bar.at[0])
            o_smem[...] = C.wgmma_zeros(BM, cw)
            pl.when(away == 0)(all_here)

            @pl.when(away > 0)
            def _():  # unit 0 and units past ``away``; then the rows of every adapter but those of units 1..away
                own_slot = functools.partial(C.block_slot, meta_ref, lay, b)

                @pl.loop(0, units)
                def _(u):
                    pl.when((u == 0) | (u > away))(lambda: run_unit(b, is_tail, own_slot, count, u * unit))

                lo, hi = slot_range(b, count, unit, away * unit)  # the slots of units 1..away

                def keep_row(row, w):
                    own = (row >= row_lo) & (row < s)
                    elsewhere = own & (w >= lo) & (w <= hi)
                    return jnp.logical_not(elsewhere) if KS > 1 else own & jnp.logical_not(elsewhere)

                store_rows(b, rx, keep_row)

        if not cfg.extra_units:
            return

        @pl.when(b >= with_rows)
        def _():  # a CTA with no rows of its own: the extra unit of its index, if there is one
            j = b - with_rows
            g = extra(j, 1)

            @pl.when(g >= 0)
            def _():
                first = extra(j, 2)
                count = C.block_count(meta_ref, lay, g)
                _, g_lo, g_rx, g_tail = _box(nrows_ref, g, cfg)
                C.load_box_slots(meta_ref, lay, g_rx, rs_smem, bar.at[0])
                o_smem[...] = C.wgmma_zeros(BM, cw)
                run_unit(g, g_tail, functools.partial(C.block_slot, meta_ref, lay, g), count, first)
                lo, hi = slot_range(g, count, first, unit)
                store_rows(g, g_rx, lambda row, w: (row >= g_lo) & (row < s) & (w >= lo) & (w <= hi))

    args = [meta, nrows, ranks, x] + ([x_tail] if cfg.tail else []) + [a]
    out_shape = cfg.parts_shape if KS > 1 else (cfg.bpad, cfg.out_cols)
    return C.mgpu_call(
        body,
        args,
        out_type=jax.ShapeDtypeStruct(out_shape, out_dt),
        grid=(cfg.nb, KS, nc) if KS > 1 else (cfg.nb, nc),
        grid_names=("b", "ks", "c") if KS > 1 else ("b", "c"),
        scratch=[plgpu.SMEM((BM,), jnp.int32), plgpu.SMEM((BM, cw), jnp.float32), plgpu.Barrier(num_barriers=1)],
        pdl=cfg.pdl,
    )


#: Registers a thread of the two-block shrink's producer warpgroup keeps; the two consumer warpgroups
#: share the rest (jax's Hopper matmul reserves the same for its producer).
PRODUCER_REGISTERS = 40


def _shrink_wide(meta, nrows, ranks, x, x_tail, a, *, cfg: ShrinkConfig):
    """The K-split block variant with two blocks a CTA (``cfg.wide``), warp-specialized.

    CTA (g, ks, c) runs blocks 2g and 2g+1 over K split ks with three warpgroups: a producer that
    streams each K step's tiles into shared memory with TMA (both blocks' x tiles and one A tile per
    adapter of the unit), and one consumer per block that multiplies its block's x tile by the A
    tile(s). Each A tile is read once for 128 rows (half the A bytes a row of the 64-row kernel), and
    a slot is refilled as soon as both consumers have released it (jax's Hopper matmul, session 20:
    128-row tiles split two ways in K reached 81-102% of copy on the dense shrink shapes).

    The CTA's *units* are pipelines over its K steps, one or (``cfg.pair_stages``) two adapters each:
    the adapters of block 2g, then those of block 2g+1 but the slot of block 2g's last row (a segment
    across the blocks' edge, already run), paired in that order. Every unit computes both blocks, each
    consumer merging its product into its block's float32 tile with its own row-slot mask, so a block's
    rows of an adapter get its product whichever list the adapter came from; an adapter in both lists
    otherwise (two segments of one slot) runs twice, which the masked merge makes idempotent. Each
    block with rows stores its tile as a partial tile (nb, ksplit, 64, na_out), added by
    :func:`add_parts` (which reads a clamped box's tile from the block's first row on).

    The units share one set of x / A slots (``max(stages, pair_stages)`` deep); each pipeline leaves
    every slot released when it returns (its producer waits for the last release), so the next reuses
    them. x tiles live in one buffer, block i's slots after block 0's, so that consumer i reads its own
    tile by index.
    """
    lay = MetaLayout(cfg.num_lora)
    cw = column_chunk(cfg.na)
    nc = -(-cfg.na // cw)
    KS = cfg.ksplit
    nk = cfg.nk // KS
    unit = 2 if cfg.pair_stages else 1
    depth = max(cfg.stages, cfg.pair_stages)  # slots of the shared x / A buffers
    dt = x.dtype
    tf = C.tiled(dt, cfg.block_k)

    def body(meta_ref, nrows_ref, ranks_ref, x_ref, *rest):
        rest = list(rest)
        x_tail_ref = rest.pop(0) if cfg.tail else None
        a_ref, o_ref, rs, tiles, bar, xbuf, abuf, *pipe_bars = rest
        g = lax.axis_index("b")
        c = lax.axis_index("c")
        ks = lax.axis_index("ks")
        wg = lax.axis_index("wg")  # 0, 1: the consumers of blocks 2g, 2g+1; 2: the producer
        me = jnp.minimum(wg, 1)
        b0, b1 = 2 * g, 2 * g + 1
        s, lo0, rx0, tail0 = _box(nrows_ref, b0, cfg)
        _, lo1, rx1, tail1 = _box(nrows_ref, b1, cfg)
        has1 = (lo1 < s) & (b1 < cfg.nb)
        mine = (wg == 0) | ((wg == 1) & has1)  # a consumer whose block has rows
        own_rs, own_tile = rs.at[me], tiles.at[me]
        k_first = ks * nk

        def merge(w, acc):  # (consumers) block ``me``'s rows of slot w, columns below its stacked rank
            keep = _keep(own_rs, w, cfg.stack * ranks_ref[w], c, cw)
            own_tile[...] = jnp.where(keep, acc, plgpu.load(own_tile, layout=plgpu.Layout.WGMMA, optimized=False))

        def unit_pipeline(srcs, ws):
            """One pipeline over the K steps: x @ A[w].T for each w of ``ws`` over both blocks' x tiles."""
            n = len(ws)
            st = cfg.stages if n == 1 else cfg.pair_stages
            produced, consumed = pipe_bars[0:2] if n == 1 else pipe_bars[2:4]

            def step(idxs, *args):
                a_tiles, accs = args[2:2 + n], args[-1]
                (k,) = idxs
                xs = xbuf.at[me * depth + lax.rem(k, st)]  # this consumer's x tile (the pipeline's slot)
                for acc, a_s in zip(accs, a_tiles):
                    plgpu.wgmma(acc, xs, a_s.T)
                plgpu.wgmma_wait(0)  # the slot is released when the step returns
                return accs

            def context(run):
                def scope(*accs):
                    run(accs)
                    for w, acc in zip(ws, accs):
                        merge(w, acc[...])

                pl.run_scoped(scope, *[plgpu.ACC((BM, cw)) for _ in ws])

            def x_spec(blk):
                return plgpu.BlockSpec((BM, cfg.block_k), lambda k: (blk, k + k_first), transforms=tf)

            a_spec = plgpu.BlockSpec((cw, cfg.block_k), lambda k: (c, k + k_first), transforms=tf)
            (x0_ref, blk0), (x1_ref, blk1) = srcs
            pipe = plgpu.emit_pipeline_warp_specialized(
                step,
                grid=(nk,),
                memory_registers=PRODUCER_REGISTERS,
                in_specs=[x_spec(blk0), x_spec(blk1), *[a_spec] * n],
                wg_axis="wg",
                num_compute_wgs=2,
                max_concurrent_steps=st,
                compute_context=context,
            )
            allocations = dict(
                flat_in_smem_refs=[xbuf.at[pl.ds(0, st)], xbuf.at[pl.ds(depth, st)],
                                   *[abuf.at[pl.ds(j * depth, st)] for j in range(n)]],
                flat_out_smem_refs=[],
                flat_produced_barrier_refs=[produced],
                flat_consumed_barrier_refs=[consumed],
            )
            pipe(x0_ref, x1_ref, *[a_ref.at[w] for w in ws], allocations=allocations)

        @pl.when(lo0 < s)
        def _():
            count0 = C.block_count(meta_ref, lay, b0)
            # (the metadata may hold only the blocks with rows: block 2g+1's entries are read where it has some)
            last = lax.div(s + (BM - 1), BM) - 1
            count1 = jnp.where(has1, C.block_count(meta_ref, lay, jnp.minimum(b1, last)), 0)
            # the slot of block 2g's last row (its own box, not clamped, where block 2g+1 has rows)
            edge = meta_ref[lay.group(b0) + lay.head + BM - 1]

            def scan(i, acc):  # block 2g+1's list is in ascending slot ids: where the edge slot is in it
                w = C.block_slot(meta_ref, lay, jnp.minimum(b1, last), i)
                return acc[0] + (w < edge).astype(jnp.int32), acc[1] | (w == edge)

            below, present = lax.fori_loop(0, count1, scan, (jnp.int32(0), False))
            skip = present.astype(jnp.int32)
            total = count0 + count1 - skip

            def slot(i):  # the i-th adapter of the CTA's list (block 2g's, then block 2g+1's but the edge)
                j = jnp.maximum(i - count0, 0)
                j = j + jnp.where(present & (j >= below), 1, 0)
                own = C.block_slot(meta_ref, lay, b0, jnp.minimum(i, count0 - 1))
                second = C.block_slot(meta_ref, lay, jnp.minimum(b1, last), jnp.minimum(j, jnp.maximum(count1 - 1, 0)))
                return jnp.where(i < count0, own, second)

            @pl.when(mine)
            def _():  # each consumer: its box's row slots, and a zero tile
                rx = jnp.where(wg == 0, rx0, rx1)
                C.issue_box_slots(meta_ref, lay, rx, own_rs, bar.at[me])
                own_tile[...] = C.wgmma_zeros(BM, cw)
                plgpu.barrier_wait(bar.at[me])

            def units(srcs):
                @pl.loop(0, lax.div(total + unit - 1, unit))
                def _(p):
                    first = p * unit
                    if unit == 1:
                        unit_pipeline(srcs, [slot(first)])
                        return
                    pl.when(first + 1 < total)(lambda: unit_pipeline(srcs, [slot(first), slot(first + 1)]))
                    pl.when(first + 1 >= total)(lambda: unit_pipeline(srcs, [slot(first)]))

            # x tiles: block 2g's box, and block 2g+1's (block 2g's again when it has no rows: never stored)
            if cfg.tail:
                pl.when(tail0)(lambda: units(((x_tail_ref, 0), (x_tail_ref, 0))))
                pl.when(has1 & tail1)(lambda: units(((x_ref, b0), (x_tail_ref, 0))))
                pl.when(jnp.logical_not(tail0) & jnp.logical_not(has1 & tail1))(
                    lambda: units(((x_ref, b0), (x_ref, jnp.where(has1, b1, b0)))))
            else:
                units(((x_ref, b0), (x_ref, jnp.where(has1, b1, b0))))

            @pl.when(mine)
            def _():
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(own_tile, o_ref.at[jnp.minimum(b0 + me, cfg.nb - 1), ks, :, pl.ds(c * cw, cw)])
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    pair = cfg.pair_stages
    scratch = [
        plgpu.SMEM((2, BM), jnp.int32),
        plgpu.SMEM((2, BM, cw), jnp.float32),
        plgpu.Barrier(num_barriers=2),
        plgpu.SMEM((2 * depth, BM, cfg.block_k), dt, transforms=tf),
        plgpu.SMEM((depth + pair, cw, cfg.block_k), dt, transforms=tf),  # a unit's first A tile, then a pair's second
        plgpu.Barrier(num_arrivals=3, num_barriers=cfg.stages),  # one unit's: x tiles and A tile landed
        plgpu.Barrier(num_arrivals=2, num_barriers=cfg.stages),  # ... both consumers released the slot
    ]
    if pair:
        scratch += [plgpu.Barrier(num_arrivals=4, num_barriers=pair),
                    plgpu.Barrier(num_arrivals=2, num_barriers=pair)]
    args = [meta, nrows, ranks, x] + ([x_tail] if cfg.tail else []) + [a]
    return C.mgpu_call(
        body,
        args,
        out_type=jax.ShapeDtypeStruct(cfg.parts_shape, jnp.float32),
        grid=(-(-cfg.nb // 2), KS, nc),
        grid_names=("b", "ks", "c"),
        scratch=scratch,
        threads=3,
        pdl=cfg.pdl,
    )


def shrink_split(meta, nrows, ranks, x, x_tail, a, *, cfg: ShrinkConfig):
    """Split variant: per-CTA float32 partial tiles (nb, L*ksplit, 64, na_out); tile (b, i*ksplit + ks)
    holds K split ks of the i-th adapter of block b, masked to that adapter's rows of the block (rows
    of the clamped box that belong to the block before are 0), zeros when the CTA has no adapter.
    :func:`add_parts` adds them in index order and places them at their rows.
    """
    C.TRACE_COUNT["shrink"] += 1
    lay = MetaLayout(cfg.num_lora)
    cw = column_chunk(cfg.na)
    nc = -(-cfg.na // cw)
    L, KS = cfg.num_lora, cfg.ksplit
    nk_split = cfg.nk // KS

    def body(meta_ref, nrows_ref, ranks_ref, x_ref, *rest, dep_wait):
        if cfg.tail:
            x_tail_ref, a_ref, o_ref, rs_smem, o_smem, bar = rest
        else:
            x_tail_ref = None
            a_ref, o_ref, rs_smem, o_smem, bar = rest
        b = lax.axis_index("b")
        i = lax.axis_index("i")
        ks = lax.axis_index("ks")
        c = lax.axis_index("c")
        s, row_lo, rx, is_tail = _box(nrows_ref, b, cfg)
        count = C.block_count(meta_ref, lay, b)
        active = (row_lo < s) & (i < count)
        # read with the count, not after it (an entry past the count is padding, never used)
        w = C.block_slot(meta_ref, lay, b, i)
        # the row slots come in while the K loop runs (waited for by the merge); metadata only, before the PDL wait
        pl.when(active)(lambda: C.issue_box_slots(meta_ref, lay, rx, rs_smem, bar.at[0]))
        dep_wait()

        @pl.when(active)
        def _():
            def merge(acc):
                plgpu.barrier_wait(bar.at[0])
                keep = _keep(rs_smem, w, cfg.stack * ranks_ref[w], c, cw)
                keep = keep & (C.row_iota(BM, cw) + rx >= row_lo)  # the box may overlap the block before
                o_smem[...] = jnp.where(keep, acc, 0.0)

            _matmul_into(cfg, x_ref, x_tail_ref, a_ref, b, [(w, merge)], c, is_tail, ks * nk_split, nk_split)

        @pl.when(jnp.logical_not(active))
        def _():
            o_smem[...] = C.wgmma_zeros(BM, cw)

        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, o_ref.at[b, i * KS + ks, :, pl.ds(c * cw, cw)])
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    args = [meta, nrows, ranks, x] + ([x_tail] if cfg.tail else []) + [a]
    return C.mgpu_call(
        body,
        args,
        out_type=jax.ShapeDtypeStruct(cfg.parts_shape, jnp.float32),
        grid=(cfg.nb, L, KS, nc),
        grid_names=("b", "i", "ks", "c"),
        scratch=[plgpu.SMEM((BM,), jnp.int32), plgpu.SMEM((BM, cw), jnp.float32), plgpu.Barrier(num_barriers=1)],
        pdl=cfg.pdl,
        early=True,
    )


def add_parts(nrows, parts, *, cfg: PartsConfig):
    """(bpad, out_cols) ``out_dtype``: rows < s (``nrows[0]``) of columns [0, na) hold the partial
    tiles ``parts`` ((nb * tiles, 64, in_cols) float32) added over the tile index, in index order
    (the same bits every run: no atomics, no completion order), one rounding to the output dtype;
    rows >= s and the other columns untouched (so the output may be a caller's tensor of s rows).

    CTA (block b, ``cfg.rows``-row chunk, ``cfg.cols``-column chunk: 8 x 16, one element per thread,
    for a split shrink; a block's 64 rows for a K-split block shrink): a pipeline over the block's
    tiles, ``cfg.tiles_per_step`` per step, each piece added to a float32 running sum. A CTA whose
    rows lie past s exits at once. With ``cfg.tail``, the tiles of a
    partial last block (s > 64 and not a multiple of 64) hold its clamped box, rows s-64 .. s-1: its
    CTAs read their rows at that offset (the rows past the box come in as zeros). The chunk that s
    cuts is stored row by row, rows < s only (from a staging tile of 128-byte rows: a TMA copy's
    shared-memory start must be 128-byte aligned).
    """
    C.TRACE_COUNT["parts"] += 1
    RR, CW, TC = cfg.rows, cfg.cols, cfg.tiles_per_step
    steps = cfg.tiles // TC
    out_dtype = jnp.dtype(cfg.out_dtype)
    staged_cols = _staged_cols(CW, out_dtype)

    def body(n_ref, p_ref, o_ref, acc, o_smem, o_rows, dep_wait):
        b = lax.axis_index("b")
        rc = lax.axis_index("r")
        c = lax.axis_index("c")
        s = n_ref[0]
        row0 = b * BM + rc * RR
        dep_wait()  # (s is metadata, read before it)

        @pl.when(row0 < s)
        def _():
            rx, _ = C.box_start(s, b * BM, cfg.tail)  # the first row of the block's tiles
            shift = b * BM - rx
            acc[...] = jnp.zeros((RR, CW), jnp.float32)

            def step(_, blk):
                total = acc[...]
                for t in range(TC):
                    total = total + blk[t]
                acc[...] = total

            plgpu.emit_pipeline(
                step,
                grid=(steps,),
                in_specs=[plgpu.BlockSpec((TC, pl.Element(RR), CW), lambda t: (b * steps + t, rc * RR + shift, c))],
                max_concurrent_steps=cfg.stages,
            )(p_ref)

            @pl.when(row0 + RR <= s)
            def _():
                o_smem[...] = acc[...].astype(out_dtype)
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(o_smem, o_ref.at[pl.ds(row0, RR), pl.ds(c * CW, CW)])

            @pl.when(row0 + RR > s)
            def _():
                o_rows.at[:, pl.ds(0, CW)][...] = acc[...].astype(out_dtype)
                plgpu.commit_smem()

                @pl.loop(0, s - row0)
                def _(i):
                    plgpu.copy_smem_to_gmem(o_rows.at[pl.ds(i, 1), pl.ds(0, CW)],
                                            o_ref.at[pl.ds(row0 + i, 1), pl.ds(c * CW, CW)], commit_group=False)

                plgpu.commit_smem_to_gmem_group()

            plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    return C.mgpu_call(
        body,
        [nrows, parts],
        out_type=jax.ShapeDtypeStruct((cfg.bpad, cfg.out_cols), out_dtype),
        grid=(cfg.nb, BM // RR, cfg.na // CW),
        grid_names=("b", "r", "c"),
        scratch=[plgpu.SMEM((RR, CW), jnp.float32), plgpu.SMEM((RR, CW), out_dtype),
                 plgpu.SMEM((RR, staged_cols), out_dtype)],
        pdl=cfg.pdl,
        early=True,
    )
