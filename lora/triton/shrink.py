"""Shrink (LoRA A): ``x (s, K) -> out (s, stack*max_r)``, per segment ``x @ A[w, :stack*r].T``.

The adapter of rank ``r`` is packed as ``[A_1; ...; A_stack]`` in the first ``stack*r`` rows of its
slot, so the stacked shrink is one GEMM of width ``stack*r``; rows at or past ``stack*r`` (stale
tails of the buffer) are never read, and the output columns there are written as zeros.

One program computes a ``BLOCK_M x (N_SUB*BLOCK_N)`` output tile for one chunk of an adapter's rows
(by chunk slot for prefill, by adapter group for decode: see :mod:`.grouping`), streaming its K
range in ``BLOCK_K`` steps: the x tile is loaded once per
step and multiplied by ``N_SUB`` weight sub-tiles, so x is read from memory once for the whole
stacked width (192 columns for QKV at rank 64 are three sub-tiles of 64, no padding to 256).

Split-K (``SPLIT_K > 1``, grid axis 2) gives decode and short batches enough programs to fill the
GPU: each program stores its float32 partial tile to a workspace, then takes a ticket from a
per-tile counter; the program that arrives last sums the partials in a fixed order (so the result
is deterministic), writes the output and resets the counter to zero for the next call. Counters are
zero when allocated and left zero by every call, so a CUDA graph replays without a memset.

Partials (``lora_shrink(..., partials=...)``, a decode plan with split-K): each split stores its float32
sums for the expand of a QKV / gate-up pair to add up as it loads them (``lora_expand(..., x_splits=...)``),
and takes no ticket: the finish above (a round trip for the ticket, one for the partials) leaves the
shrink's critical path. Where the pair runs so is a plan decision (``FusedPlan.partials``, measured by
``python -m lora tune``).

Descriptor loads (``ShrinkPlan.tma``, prefill, Hopper and later, 16-bit inputs): the weight sub-tiles come
through a tensor descriptor over the stacked slots (``num_lora * N_OUT`` rows; columns past the rank are
zeroed after the dot), and the x tile through a descriptor over x where the chunk's rows are consecutive tokens
(checked per chunk: ``row - position`` the same for every row), else by the pointer gather. Rows of the box
past the chunk are other tokens' (never stored); rows and K past the tensors read as zeros. The column groups of
a chunk are neighbouring programs (grid axes 0 and 1 swapped), so they read its x tile at about the same time.
Inputs a descriptor cannot take (:func:`.tiling.tma_supported`) run the same tiles through pointers.

Stream-K (``ShrinkPlan.stream_k``, prefill): one chunk per program leaves a wave nearly empty when the
chunk count is just over the number of programs that fit on the GPU at once (72 chunks of 128 rows
with two K splits are 144 programs for 132 multiprocessors: a second wave as long as the first for 12
of them). Instead a fixed grid of ``stream_k`` programs per multiprocessor takes equal shares of the
batch's iterations, each a K step of one tile (chunk x column group), in tile order. The shares are cut
from the chunk count's bound known from shapes (``cdiv(s, BLOCK_M) + num_lora``), so that every loop
bound is uniform to the compiler (see ``_stream_tiles``); iterations past the real chunks fall on
rowless tiles. A tile one program covers whole is stored directly; a tile cut between programs (at
most the first and the last of each program's share) is finished like a split-K tile: each contributor
stores its float32 partial in its own slot, and the last to take a ticket sums them in program order
(deterministic) after its own loop, and writes it. Rows without work (rank-0 slots, the rows after the
segments) are zero tiles dealt round the grid.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import triton
import triton.language as tl

from . import tiling
from .grouping import GroupMeta, chunk_rows, find_chunk, group_extent, group_places, locate_chunk, meta_for
from .scratch import scratch_for


# Batch sizes vary call to call: keep them out of the specialisation key (one compile, not
# one per divisibility class of the token / segment / slot counts).
@triton.jit(do_not_specialize=["num_tokens", "num_lora", "stride", "max_chunks"])
def _shrink_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    ws_ptr,
    cnt_ptr,
    x_desc,
    w_desc,
    group_rows,
    group_start,
    row_order,
    lora_ranks,
    num_tokens,
    K,
    num_lora,
    stride,
    max_chunks,
    stride_xm,
    stride_wl,
    stride_wn,
    stride_om,
    STACK: tl.constexpr,
    N_OUT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    N_SUB: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    GROUP_GRID: tl.constexpr,
    L_BLOCK: tl.constexpr,
    PRECISION: tl.constexpr,
    PDL_TRIGGER: tl.constexpr = False,
    STREAM_K: tl.constexpr = False,
    PARTIALS: tl.constexpr = False,
    TMA: tl.constexpr = False,
):
    if TMA:  # the column groups of a chunk are neighbouring programs (grid axis 0)
        pid_m = tl.program_id(1)
        pid_n = tl.program_id(0)
        n_groups = tl.num_programs(0)
    else:
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        n_groups = tl.num_programs(1)
    if PDL_TRIGGER:
        # The next kernel, launched as this one's programmatic dependent (a decode expand), may launch now:
        # it waits for this grid to finish before it reads what this grid writes. This kernel itself is
        # launched plainly (so everything before it is complete when it starts): chaining the shrinks as
        # dependents too was measured slower on the H200 (tiling.pdl_chain).
        tl.extra.cuda.gdc_launch_dependents()
    if STREAM_K:
        _stream_tiles(
            x_ptr, w_ptr, out_ptr, ws_ptr, cnt_ptr, group_rows, group_start, row_order, lora_ranks,
            num_tokens, K, num_lora, stride, max_chunks, stride_xm, stride_wl, stride_wn, stride_om,
            STACK, N_OUT, BLOCK_M, BLOCK_N, N_SUB, BLOCK_K, L_BLOCK, PRECISION,
        )
    elif GROUP_GRID:
        # Decode layout: program = (group, column group, K split), walking the group's chunks.
        # The group's size and rank and its first chunk's rows are independent loads (the rows are at a place
        # known from the group alone: grouping.chunk_rows): one round trip before the first x tile.
        group = pid_m
        n_rows, first = group_extent(group, group_rows, group_start, num_tokens, num_lora, stride)
        rank = tl.load(lora_ranks + group, mask=group < num_lora, other=0)
        # (The first chunk is peeled off the loop, not carried into it: rows carried through the loop made the
        # decode shrinks 1.1-3x slower on the H200, session 23.)
        rows, row_ok = chunk_rows(group, 0, n_rows, first, row_order, num_tokens, num_lora, stride, BLOCK_M)
        tile = (pid_m * n_groups + pid_n) * max_chunks
        if n_rows > 0:
            _shrink_chunk(
                x_ptr, w_ptr, out_ptr, ws_ptr, cnt_ptr, x_desc, w_desc, pid_n, rows, row_ok, K, num_tokens, stride_xm, stride_wl, stride_wn,
                stride_om, group, rank, tile, STACK, N_OUT, BLOCK_M, BLOCK_N, N_SUB, BLOCK_K, SPLIT_K, PRECISION,
                PARTIALS, False,
            )
        for chunk in range(1, tl.cdiv(n_rows, BLOCK_M)):
            rows_c, ok_c = chunk_rows(group, chunk, n_rows, first, row_order, num_tokens, num_lora, stride, BLOCK_M)
            _shrink_chunk(
                x_ptr, w_ptr, out_ptr, ws_ptr, cnt_ptr, x_desc, w_desc, pid_n, rows_c, ok_c, K, num_tokens, stride_xm, stride_wl, stride_wn,
                stride_om, group, rank, tile + chunk, STACK, N_OUT, BLOCK_M, BLOCK_N, N_SUB, BLOCK_K, SPLIT_K,
                PRECISION, PARTIALS, False,
            )
    else:
        # Prefill layout: program = (chunk slot, column group, K split).
        group, chunk, n_rows, first, rank, total = find_chunk(
            pid_m, group_rows, group_start, lora_ranks, num_tokens, num_lora, stride, BLOCK_M, L_BLOCK, True,
        )
        if pid_m >= total:
            return
        rows, row_ok = chunk_rows(group, chunk, n_rows, first, row_order, num_tokens, num_lora, stride, BLOCK_M)
        _shrink_chunk(
            x_ptr, w_ptr, out_ptr, ws_ptr, cnt_ptr, x_desc, w_desc, pid_n, rows, row_ok, K, num_tokens, stride_xm,
            stride_wl, stride_wn, stride_om, group, rank, pid_m * n_groups + pid_n,
            STACK, N_OUT, BLOCK_M, BLOCK_N, N_SUB, BLOCK_K, SPLIT_K, PRECISION, False, TMA,
        )


@triton.jit
def _stream_tiles(
    x_ptr, w_ptr, out_ptr, ws_ptr, cnt_ptr, group_rows, group_start, row_order, lora_ranks,
    num_tokens, K, num_lora, stride, max_chunks, stride_xm, stride_wl, stride_wn, stride_om,
    STACK: tl.constexpr, N_OUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, N_SUB: tl.constexpr,
    BLOCK_K: tl.constexpr, L_BLOCK: tl.constexpr, PRECISION: tl.constexpr,
):
    """Stream-K layout (``ShrinkPlan.stream_k``): this program's equal share of the batch's (tile, K step)
    iterations, then its share of the zero tiles; see the module docstring."""
    pid = tl.program_id(0)
    progs = tl.num_programs(0)
    N_GROUPS: tl.constexpr = (N_OUT + N_SUB * BLOCK_N - 1) // (N_SUB * BLOCK_N)
    tile_elems: tl.constexpr = BLOCK_M * N_SUB * BLOCK_N
    gids = tl.arange(0, L_BLOCK)
    sizes = tl.load(group_rows + gids, mask=gids < num_lora, other=0)
    ranks = tl.load(lora_ranks + gids, mask=gids < num_lora, other=0)
    covered = tl.load(group_start + num_lora)
    firsts = group_places(gids, covered, num_lora, stride)  # each group's first place in row_order
    work = tl.where(ranks > 0, sizes, 0)  # rows multiplied by their adapter
    chunks = (work + (BLOCK_M - 1)) // BLOCK_M
    ends = tl.cumsum(chunks, 0)
    # The shares come from an upper bound on the chunk count known from shapes (``max_chunks``: each group adds
    # at most one partial chunk), not from the group sizes read here, so no loop bound below depends on a
    # value loaded from memory. With bounds from the group sizes, ptxas (Triton 3.6, sm_90) built the K loop's
    # wgmma descriptors in vector registers and moved them to uniform ones one by one: 567 instructions per K
    # step against the plain kernel's 298 (benchmarks/compile_report.py); with these bounds, 296. Iterations
    # past the real chunks belong to tiles without rows: masked loads, nothing stored.
    k_steps = tl.cdiv(K, BLOCK_K)
    per = tl.cdiv(max_chunks * N_GROUPS * k_steps, progs)
    offs_n = tl.arange(0, BLOCK_N)
    start = pid * per
    # Tiles this program must finish after its loop (-1: none): its first and its last tile when cut between
    # programs and this one took the last ticket (summing partials inside the loop would keep that code's
    # registers live across the K loop).
    fix_first = -1
    fix_last = -1
    # The share [start, start + per) is K steps [ks, ke) of each tile it meets.
    for t in range(start // k_steps, (start + per + k_steps - 1) // k_steps):
        ks = tl.maximum(start - t * k_steps, 0)
        ke = tl.minimum(start + per - t * k_steps, k_steps)
        c = t // N_GROUPS
        n_a = (t - c * N_GROUPS) * (N_SUB * BLOCK_N) + offs_n
        group, chunk, n_rows, first = locate_chunk(c, gids, chunks, ends, work, firsts)
        rank = tl.sum(tl.where(gids == group, ranks, 0), axis=0)
        rows, row_ok = chunk_rows(group, chunk, n_rows, first, row_order, num_tokens, num_lora, stride, BLOCK_M)
        acc0, acc1, acc2, acc3 = _k_range(
            x_ptr, w_ptr, rows, row_ok, group, n_a, STACK * rank, ks * BLOCK_K, tl.minimum(K, ke * BLOCK_K), K,
            stride_xm, stride_wl, stride_wn, BLOCK_M, BLOCK_N, N_SUB, BLOCK_K, PRECISION,
        )
        if (ks == 0) & (ke == k_steps):
            _store_tile(out_ptr + rows * stride_om, row_ok, n_a, acc0, acc1, acc2, acc3, N_OUT, BLOCK_N, N_SUB)
        else:
            # A partial tile: the program's first (slot 0) or its last (slot 1); the tile's contributors are the
            # programs q_lo..q_hi, and the last of them to arrive sums their partials (after its loop).
            is_first = t * k_steps + ks == start
            loc = tl.arange(0, BLOCK_M)[:, None] * (N_SUB * BLOCK_N) + offs_n[None, :]
            _put_partial(ws_ptr + _partial_slot(pid, t, per, k_steps) * tile_elems + loc, row_ok, acc0, acc1, acc2, acc3, BLOCK_N,
                         N_SUB)
            tl.debug_barrier()  # every thread's partial is stored before the ticket is taken
            q_lo = (t * k_steps) // per
            q_hi = ((t + 1) * k_steps - 1) // per
            ticket = tl.atomic_add(cnt_ptr + t, 1, sem="acq_rel", scope="gpu")
            if ticket == q_hi - q_lo:
                if is_first:
                    fix_first = t
                else:
                    fix_last = t
    if fix_first >= 0:
        _finish_tile(fix_first, per, k_steps, gids, chunks, ends, work, firsts, out_ptr, ws_ptr, cnt_ptr, row_order,
                     num_tokens, num_lora, stride, stride_om, offs_n, N_OUT, BLOCK_M, BLOCK_N, N_SUB, N_GROUPS)
    if fix_last >= 0:
        _finish_tile(fix_last, per, k_steps, gids, chunks, ends, work, firsts, out_ptr, ws_ptr, cnt_ptr, row_order,
                     num_tokens, num_lora, stride, stride_om, offs_n, N_OUT, BLOCK_M, BLOCK_N, N_SUB, N_GROUPS)
    # Rows without an adapter to multiply (rank-0 slots, and the rows after the last segment) get zeros:
    # their tiles are dealt round the programs.
    idle = tl.where(gids == num_lora, num_tokens - covered, sizes - work)
    idle_chunks = (idle + (BLOCK_M - 1)) // BLOCK_M
    idle_ends = tl.cumsum(idle_chunks, 0)
    zero = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(pid, tl.sum(idle_chunks, axis=0) * N_GROUPS, progs):
        c = t // N_GROUPS
        group, chunk, n_rows, first = locate_chunk(c, gids, idle_chunks, idle_ends, idle, firsts)
        rows, row_ok = chunk_rows(group, chunk, n_rows, first, row_order, num_tokens, num_lora, stride, BLOCK_M)
        n_a = (t - c * N_GROUPS) * (N_SUB * BLOCK_N) + offs_n
        _store_tile(out_ptr + rows * stride_om, row_ok, n_a, zero, zero, zero, zero, N_OUT, BLOCK_N, N_SUB)


@triton.jit
def _partial_slot(q, t, per, k_steps):
    """Stream-K: the workspace slot (int64) of program ``q``'s partial of tile ``t``: slot 0 of the program's two
    holds its first tile, slot 1 its last (written by the program, read by the tile's last contributor)."""
    return (2 * q + ((q * per) // k_steps != t).to(tl.int32)).to(tl.int64)


@triton.jit
def _finish_tile(
    t, per, k_steps, gids, chunks, ends, work, firsts, out_ptr, ws_ptr, cnt_ptr, row_order,
    num_tokens, num_lora, stride, stride_om, offs_n,
    N_OUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, N_SUB: tl.constexpr, N_GROUPS: tl.constexpr,
):
    """Stream-K: sum the partials of tile ``t`` that its contributors (programs ``q_lo..q_hi``) stored, in
    program order (the same result every run), write the tile and leave its counter at zero."""
    tile_elems: tl.constexpr = BLOCK_M * N_SUB * BLOCK_N
    loc = tl.arange(0, BLOCK_M)[:, None] * (N_SUB * BLOCK_N) + offs_n[None, :]
    c = t // N_GROUPS
    n_a = (t - c * N_GROUPS) * (N_SUB * BLOCK_N) + offs_n
    group, chunk, n_rows, first = locate_chunk(c, gids, chunks, ends, work, firsts)
    rows, row_ok = chunk_rows(group, chunk, n_rows, first, row_order, num_tokens, num_lora, stride, BLOCK_M)
    q_lo = (t * k_steps) // per
    q_hi = ((t + 1) * k_steps - 1) // per
    acc0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for q in range(q_lo, q_hi + 1):
        acc0, acc1, acc2, acc3 = _add_partial(ws_ptr + _partial_slot(q, t, per, k_steps) * tile_elems + loc, row_ok,
                                              acc0, acc1, acc2, acc3, BLOCK_N, N_SUB)
    tl.atomic_xchg(cnt_ptr + t, 0)
    _store_tile(out_ptr + rows * stride_om, row_ok, n_a, acc0, acc1, acc2, acc3, N_OUT, BLOCK_N, N_SUB)


@triton.jit
def _shrink_chunk(
    x_ptr, w_ptr, out_ptr, ws_ptr, cnt_ptr, x_desc, w_desc, pid_n, rows, row_ok, K, num_tokens, stride_xm, stride_wl,
    stride_wn, stride_om, group, rank, tile,
    STACK: tl.constexpr, N_OUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, N_SUB: tl.constexpr,
    BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, PRECISION: tl.constexpr, PARTIALS: tl.constexpr,
    TMA: tl.constexpr,
):
    """One chunk of a group (its ``rows``, :func:`.grouping.chunk_rows`): columns ``[pid_n * N_SUB * BLOCK_N,
    ...)``, K split ``pid_k``. ``PARTIALS``: this split's float32 sums are stored at ``out[pid_k, rows]`` (``out``
    is ``(SPLIT_K, num_tokens, N_OUT)``) and nothing else is done: the expand sums them (no ticket here).
    ``TMA``: tiles through the tensor descriptors (:func:`_k_range_tma`)."""
    pid_k = tl.program_id(2)
    n0 = pid_n * (N_SUB * BLOCK_N)
    n_real = STACK * rank  # 0 for rank-0 slots and for the trailing-row group
    offs_n = tl.arange(0, BLOCK_N)
    out_rows = out_ptr + rows * stride_om
    n_a = n0 + offs_n

    acc0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if n_real <= n0:
        # No real column in this tile: only zeros to write, once (by split 0); with PARTIALS nothing (the
        # expand reads no column at or past STACK * rank).
        if not PARTIALS:
            if pid_k == 0:
                _store_tile(out_rows, row_ok, n_a, acc0, acc1, acc2, acc3, N_OUT, BLOCK_N, N_SUB)
    else:
        k_steps = tl.cdiv(K, BLOCK_K)
        per_split = tl.cdiv(k_steps, SPLIT_K)
        k_lo = pid_k * per_split * BLOCK_K
        k_hi = tl.minimum(K, k_lo + per_split * BLOCK_K)
        if TMA:
            row0 = _box_row(rows, row_ok, num_tokens, BLOCK_M)
            w_row = group * N_OUT + n0  # the slot's rows in the (num_lora * N_OUT, K) view
            if row0 >= 0:
                acc0, acc1, acc2, acc3 = _k_range_tma(
                    x_desc, w_desc, rows, row_ok, row0, w_row, k_lo, k_hi, x_ptr, stride_xm,
                    BLOCK_M, BLOCK_N, N_SUB, BLOCK_K, PRECISION, True,
                )
            else:
                acc0, acc1, acc2, acc3 = _k_range_tma(
                    x_desc, w_desc, rows, row_ok, row0, w_row, k_lo, k_hi, x_ptr, stride_xm,
                    BLOCK_M, BLOCK_N, N_SUB, BLOCK_K, PRECISION, False,
                )
            # Columns at or past STACK * rank came from the slot's stale tail (or the next slot): zeros.
            acc0 = tl.where((n_a < n_real)[None, :], acc0, 0.0)
            acc1 = tl.where((n_a + BLOCK_N < n_real)[None, :], acc1, 0.0)
            acc2 = tl.where((n_a + 2 * BLOCK_N < n_real)[None, :], acc2, 0.0)
            acc3 = tl.where((n_a + 3 * BLOCK_N < n_real)[None, :], acc3, 0.0)
        else:
            acc0, acc1, acc2, acc3 = _k_range(
                x_ptr, w_ptr, rows, row_ok, group, n_a, n_real, k_lo, k_hi, K, stride_xm, stride_wl, stride_wn,
                BLOCK_M, BLOCK_N, N_SUB, BLOCK_K, PRECISION,
            )

        if PARTIALS:
            part_rows = out_ptr + (pid_k.to(tl.int64) * num_tokens + rows) * N_OUT
            _store_tile(part_rows, row_ok, n_a, acc0, acc1, acc2, acc3, N_OUT, BLOCK_N, N_SUB)
        elif SPLIT_K > 1:
            tile_elems: tl.constexpr = BLOCK_M * N_SUB * BLOCK_N
            ws_tile = ws_ptr + tile.to(tl.int64) * (SPLIT_K * tile_elems)
            loc = tl.arange(0, BLOCK_M)[:, None] * (N_SUB * BLOCK_N) + offs_n[None, :]
            _put_partial(ws_tile + pid_k * tile_elems + loc, row_ok, acc0, acc1, acc2, acc3, BLOCK_N, N_SUB)
            tl.debug_barrier()  # every thread's partial is stored before the ticket is taken
            ticket = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
            if ticket == SPLIT_K - 1:
                # Last to arrive: sum all partials in split order (deterministic), from L2.
                acc0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                acc3 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for s in tl.static_range(SPLIT_K):
                    acc0, acc1, acc2, acc3 = _add_partial(ws_tile + s * tile_elems + loc, row_ok, acc0, acc1, acc2,
                                                          acc3, BLOCK_N, N_SUB)
                tl.atomic_xchg(cnt_ptr + tile, 0)
                _store_tile(out_rows, row_ok, n_a, acc0, acc1, acc2, acc3, N_OUT, BLOCK_N, N_SUB)
        else:
            _store_tile(out_rows, row_ok, n_a, acc0, acc1, acc2, acc3, N_OUT, BLOCK_N, N_SUB)


@triton.jit
def _k_range(
    x_ptr, w_ptr, rows, row_ok, group, n_a, n_real, k_lo, k_hi, K, stride_xm, stride_wl, stride_wn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, N_SUB: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """float32 sums over ``k in [k_lo, k_hi)`` of the chunk's rows times columns ``n_a`` (and the next
    ``N_SUB - 1`` sub-tiles) of the slot's packed A: the four sub-tile accumulators (unused ones zero)."""
    acc0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    x_rows = x_ptr + rows * stride_xm
    w_slot = w_ptr + group.to(tl.int64) * stride_wl
    offs_k = tl.arange(0, BLOCK_K)
    n_b = n_a + BLOCK_N
    n_c = n_b + BLOCK_N
    n_d = n_c + BLOCK_N
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + offs_k
        km = kk < K
        # x streams through once; the adapter's weights are read again by the group's other chunks
        x = tl.load(x_rows[:, None] + kk[None, :], mask=row_ok[:, None] & km[None, :], other=0.0,
                    eviction_policy="evict_first")
        # Weight sub-tiles as (BLOCK_K, BLOCK_N): row n of A is column n of the product.
        w = tl.load(w_slot + n_a[None, :] * stride_wn + kk[:, None], mask=km[:, None] & (n_a < n_real)[None, :], other=0.0,
                    eviction_policy="evict_last")
        acc0 = tl.dot(x, w, acc0, input_precision=PRECISION)
        if N_SUB > 1:
            w = tl.load(w_slot + n_b[None, :] * stride_wn + kk[:, None], mask=km[:, None] & (n_b < n_real)[None, :], other=0.0,
                    eviction_policy="evict_last")
            acc1 = tl.dot(x, w, acc1, input_precision=PRECISION)
        if N_SUB > 2:
            w = tl.load(w_slot + n_c[None, :] * stride_wn + kk[:, None], mask=km[:, None] & (n_c < n_real)[None, :], other=0.0,
                    eviction_policy="evict_last")
            acc2 = tl.dot(x, w, acc2, input_precision=PRECISION)
        if N_SUB > 3:
            w = tl.load(w_slot + n_d[None, :] * stride_wn + kk[:, None], mask=km[:, None] & (n_d < n_real)[None, :], other=0.0,
                    eviction_policy="evict_last")
            acc3 = tl.dot(x, w, acc3, input_precision=PRECISION)
    return acc0, acc1, acc2, acc3


@triton.jit
def _box_row(rows, row_ok, num_tokens, BLOCK_M: tl.constexpr):
    """The first row of a chunk whose rows are consecutive tokens (one segment, or segments that follow each
    other: ``row - position`` the same for every row that exists), so that its x tile is one descriptor box at
    that row (the box's rows past the chunk are other tokens', or past x and read as zeros: never stored);
    -1 (int32) for a chunk of scattered rows, or of none."""
    lag = rows - tl.arange(0, BLOCK_M)
    lo = tl.min(tl.where(row_ok, lag, num_tokens), axis=0)
    hi = tl.max(tl.where(row_ok, lag, -1), axis=0)
    return tl.where(lo == hi, lo, -1).to(tl.int32)


@triton.jit
def _k_range_tma(
    x_desc, w_desc, rows, row_ok, row0, w_row, k_lo, k_hi, x_ptr, stride_xm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, N_SUB: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    X_BOX: tl.constexpr,
):
    """:func:`_k_range` with the weight sub-tiles loaded through ``w_desc`` (rows ``w_row ...`` of the stacked
    slots; all columns, the caller zeroes those past the rank) and the x tile through ``x_desc`` at row ``row0``
    (``X_BOX``) or gathered by pointers. The K tail past ``K`` reads as zeros from both descriptors."""
    acc0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    x_rows = x_ptr + rows * stride_xm
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        if X_BOX:
            x = x_desc.load([row0, k0])
        else:
            kk = k0 + offs_k
            x = tl.load(x_rows[:, None] + kk[None, :], mask=row_ok[:, None] & (kk < k_hi)[None, :], other=0.0)
        acc0 = tl.dot(x, w_desc.load([w_row, k0]).T, acc0, input_precision=PRECISION)
        if N_SUB > 1:
            acc1 = tl.dot(x, w_desc.load([w_row + BLOCK_N, k0]).T, acc1, input_precision=PRECISION)
        if N_SUB > 2:
            acc2 = tl.dot(x, w_desc.load([w_row + 2 * BLOCK_N, k0]).T, acc2, input_precision=PRECISION)
        if N_SUB > 3:
            acc3 = tl.dot(x, w_desc.load([w_row + 3 * BLOCK_N, k0]).T, acc3, input_precision=PRECISION)
    return acc0, acc1, acc2, acc3


@triton.jit
def _put_partial(at, row_ok, acc0, acc1, acc2, acc3, BLOCK_N: tl.constexpr, N_SUB: tl.constexpr):
    """Store a tile's float32 partial sums at ``at`` (pointers of sub-tile 0; the others follow at BLOCK_N)."""
    tl.store(at, acc0, mask=row_ok[:, None])
    if N_SUB > 1:
        tl.store(at + BLOCK_N, acc1, mask=row_ok[:, None])
    if N_SUB > 2:
        tl.store(at + 2 * BLOCK_N, acc2, mask=row_ok[:, None])
    if N_SUB > 3:
        tl.store(at + 3 * BLOCK_N, acc3, mask=row_ok[:, None])


@triton.jit
def _add_partial(at, row_ok, acc0, acc1, acc2, acc3, BLOCK_N: tl.constexpr, N_SUB: tl.constexpr):
    """The accumulators plus the partial stored at ``at`` by :func:`_put_partial` (read from L2)."""
    acc0 += tl.load(at, mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
    if N_SUB > 1:
        acc1 += tl.load(at + BLOCK_N, mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
    if N_SUB > 2:
        acc2 += tl.load(at + 2 * BLOCK_N, mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
    if N_SUB > 3:
        acc3 += tl.load(at + 3 * BLOCK_N, mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
    return acc0, acc1, acc2, acc3


@triton.jit
def _store_tile(out_rows, row_ok, n, acc0, acc1, acc2, acc3, N_OUT: tl.constexpr, BLOCK_N: tl.constexpr,
                N_SUB: tl.constexpr):
    dtype = out_rows.dtype.element_ty
    tl.store(out_rows[:, None] + n[None, :], acc0.to(dtype), mask=row_ok[:, None] & (n < N_OUT)[None, :])
    if N_SUB > 1:
        n = n + BLOCK_N
        tl.store(out_rows[:, None] + n[None, :], acc1.to(dtype), mask=row_ok[:, None] & (n < N_OUT)[None, :])
    if N_SUB > 2:
        n = n + BLOCK_N
        tl.store(out_rows[:, None] + n[None, :], acc2.to(dtype), mask=row_ok[:, None] & (n < N_OUT)[None, :])
    if N_SUB > 3:
        n = n + BLOCK_N
        tl.store(out_rows[:, None] + n[None, :], acc3.to(dtype), mask=row_ok[:, None] & (n < N_OUT)[None, :])


def shrink_grid(num_tokens: int, num_lora: int, n_out: int, plan: tiling.ShrinkPlan, sms: int) -> tuple[int, int, int]:
    """Launch grid from shapes: (groups or chunk slots, column groups, K splits), the first two swapped for a
    ``tma`` plan; stream-K plans: ``stream_k`` programs per multiprocessor (``sms``, read by stream-K plans only)."""
    if plan.stream_k:
        return (plan.stream_k * sms, 1, 1)
    groups = num_lora + 1  # + the rows after the last segment (zeros)
    rows = groups if plan.group_grid else triton.cdiv(num_tokens, plan.block_m) + groups
    cols = triton.cdiv(n_out, plan.block_n * plan.n_sub)
    return (cols, rows, plan.split_k) if plan.tma else (rows, cols, plan.split_k)


def lora_shrink(
    x: torch.Tensor,
    weights: torch.Tensor,
    stack_num: int,
    batch_info,
    plan: tiling.ShrinkPlan | None = None,
    out: torch.Tensor | None = None,
    meta: GroupMeta | None = None,
    pdl_trigger: bool = False,
    partials: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x (s, K)``, ``weights (num_lora, stack*max_r, K)`` -> ``(s, stack*max_r)`` in x's dtype.

    ``meta``: the batch's grouping (:func:`.grouping.derive`), which must hold at least ``s`` rows;
    the backend derives it once per batch. Without it, it is derived here (an allocation and one
    more launch: for direct calls and tests). Inputs are assumed validated (:mod:`lora.validation`);
    nothing here reads device values. ``pdl_trigger``: the next kernel on the stream may be launched as a
    programmatic dependent (``lora_expand(..., pdl=...)``): let it launch at this kernel's start.

    ``partials``: a float32 buffer of at least ``split_k * s * stack*max_r`` elements, for a decode plan with
    split-K (the adapter-group grid, ``split_k > 1``): each split's sums are stored there as ``(split_k, s,
    stack*max_r)``, nothing is summed, and that view is returned (for ``lora_expand(..., x_splits=split_k)``;
    only the columns below ``stack * rank`` of the rows of slots with rank > 0 are written). ``out`` is not
    used.
    """
    s, k = x.shape
    num_lora, n_out, _ = weights.shape
    if plan is None:
        plan = tiling.plan_shrink(s, k, n_out, num_lora, batch_info.bs, x.dtype, x.device)
    if partials is not None:
        if not (plan.group_grid and plan.split_k > 1):  # (a decode plan is never stream-K: ShrinkPlan checks)
            raise ValueError(f"partials need a decode shrink plan with split-K, not {plan}")
        out = partials[: plan.split_k * s * n_out].view(plan.split_k, s, n_out)
    elif out is None:
        out = torch.empty((s, n_out), dtype=x.dtype, device=x.device)
    if s == 0:
        return out
    meta = meta_for(batch_info, meta, num_lora, s, x.device)
    x_desc = w_desc = None
    if plan.tma:
        # (a tma grid has the chunk slots on axis 1, at most 65535 long)
        if tiling.tma_supported(x, weights) and shrink_grid(s, num_lora, n_out, plan, 0)[1] < 65536:
            from triton.tools.tensor_descriptor import TensorDescriptor

            x_desc = TensorDescriptor(x, [s, k], [x.stride(0), 1], [plan.block_m, plan.block_k])
            w_desc = TensorDescriptor(weights, [num_lora * n_out, k], [weights.stride(1), 1], [plan.block_n, plan.block_k])
        else:
            plan = replace(plan, tma=False)  # the same tiles through pointers
    grid = shrink_grid(s, num_lora, n_out, plan, tiling.device_info(x.device)[1] if plan.stream_k else 0)
    tile_elems = plan.block_m * plan.n_sub * plan.block_n
    # A group walks up to this many chunks (by-group layout); counters and partials are per chunk.
    max_chunks = triton.cdiv(s, plan.block_m) if plan.group_grid else 1
    if plan.stream_k:
        max_chunks = triton.cdiv(s, plan.block_m) + num_lora  # the chunks of the groups with work, at most
        # two partial tiles per program; a counter per (chunk slot, column group)
        counters = max_chunks * triton.cdiv(n_out, plan.block_n * plan.n_sub)
        ws, cnt = scratch_for(x.device).split_k(max(counters, 2 * grid[0]), tile_elems)
    elif plan.split_k > 1 and partials is None:
        ws, cnt = scratch_for(x.device).split_k(grid[0] * grid[1] * max_chunks, plan.split_k * tile_elems)
    else:
        ws = cnt = out  # unused
    _shrink_kernel[grid](
        x, weights, out, ws, cnt, x_desc, w_desc,
        meta.group_rows, meta.group_start, meta.row_order, batch_info.lora_ranks,
        s, k, num_lora, meta.stride(num_lora), max_chunks,
        x.stride(0), weights.stride(0), weights.stride(1), out.stride(-2),
        STACK=stack_num,
        N_OUT=n_out,
        BLOCK_M=plan.block_m,
        BLOCK_N=plan.block_n,
        N_SUB=plan.n_sub,
        BLOCK_K=plan.block_k,
        SPLIT_K=plan.split_k,
        GROUP_GRID=plan.group_grid,
        L_BLOCK=tiling.group_block(num_lora + 1),
        PRECISION=tiling.dot_precision(x.dtype, x.device),
        PDL_TRIGGER=pdl_trigger and tiling.pdl_supported(x.device),
        STREAM_K=plan.stream_k > 0,
        PARTIALS=partials is not None,
        TMA=plan.tma,
        num_warps=plan.num_warps,
        num_stages=plan.num_stages,
    )
    return out
