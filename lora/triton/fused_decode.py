"""QKV / gate-up for decode-sized batches in one launch: shrink and expand as two phases of one kernel.

For stack ``S`` (3: QKV, 2: gate-up), slot ``w`` of rank ``r`` and slice ``j``::

    out[rows of w, off[j]:off[j+1]] += scaling[w] * (x[rows] @ A[w, j*r:(j+1)*r].T) @ B[w, off[j]:off[j+1], :r].T

Two kinds of work item share one 1-D grid:

* **shrink** ``(group w, slice j, K split k)``: ``x[rows] @ A[w, j*r:(j+1)*r].T`` over its K range, stored
  as a float32 partial to a workspace indexed by (split, row, slice column), then one arrival on the
  (w, j) counter;
* **expand** ``(group w, slice j, column tile t)``: finds its rows, waits until the (w, j) counter has all
  ``SPLIT_K`` arrivals, sums the partials in split order (so the result is the same bits every run),
  rounds them to the activation dtype (as the two-kernel path stores its intermediate), then adds
  ``scaling * xa @ B.T`` into ``base_output`` over its ``N_ITERS`` column blocks.

A program's role comes from a ticket (an atomic counter), not from its program id: tickets are handed out
in the order programs start, so every shrink item is taken by a program that is already running before any
program can be an expand item waiting for it -- no deadlock whatever order the hardware starts programs in.
An expand item's row search and metadata loads overlap the shrink items still running (the second launch's
start-up and the gap between two launches are gone). The wait is bounded; if it ever ran out the rows are
written as NaN (loud, never silently wrong).

Rows come from the batch's grouping (:class:`.grouping.GroupMeta`, derived once per batch by the backend's
``prepare``): no item scans the segments. Workspace and counters are this stream's split-K scratch
(:mod:`.scratch`); counters are zero when allocated and every launch leaves them at zero: the program with
the last ticket resets the ticket counter, and the last expand item of each (w, j) resets that counter, so a
CUDA graph replays without a memset. Nothing is read on the host: the grid and constants depend only on shapes.

When this path is used is a plan decision (:func:`lora.triton.tiling.plan_fused`): a device's table says
so where it was measured faster than two launches (``python -m lora tune``); otherwise two kernels run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import tiling
from .grouping import GroupMeta, chunk_rows, group_extent, meta_for
from .scratch import scratch_for

#: Column blocks start on multiples of this many elements (16-byte vectors for every dtype).
ALIGN = 16
#: Polls of a counter before an expand item gives up and writes NaN: the ticket order keeps a real wait
#: to the shrink items' few microseconds; this is about a second.
MAX_SPINS = 1 << 20


@triton.jit(do_not_specialize=["num_tokens", "num_lora", "stride"])
def _fused_decode_kernel(
    x_ptr, a_ptr, b_ptr, out_ptr, offsets_ptr, ws_ptr, cnt_ptr,
    group_rows, group_start, row_order, lora_ranks, scalings,
    num_tokens, K, num_lora, stride,
    stride_xm, stride_al, stride_an, stride_bl, stride_bn, stride_om,
    STACK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr, N_ITERS: tl.constexpr, N_TILES: tl.constexpr,
    PRECISION: tl.constexpr, ALIGN: tl.constexpr, MAX_SPINS: tl.constexpr,
):
    total = tl.num_programs(0)
    ticket = tl.atomic_add(cnt_ptr, 1, sem="acq_rel", scope="gpu")
    if ticket == total - 1:
        tl.atomic_xchg(cnt_ptr, 0, sem="relaxed", scope="gpu")  # every program has its ticket
    n_shrink = num_lora * (STACK * SPLIT_K)
    ws_row: tl.constexpr = STACK * BLOCK_R  # workspace: (SPLIT_K, num_tokens, STACK * BLOCK_R) float32
    kr = tl.arange(0, BLOCK_R)
    if ticket < n_shrink:
        pid_k = ticket % SPLIT_K
        gj = ticket // SPLIT_K
        slice_j = gj % STACK
        group = gj // STACK
        rank = tl.load(lora_ranks + group)
        n_rows, first = group_extent(group, group_rows, group_start, num_tokens, num_lora, stride)
        n_rows = tl.where(rank > 0, n_rows, 0)
        k_steps = tl.cdiv(K, BLOCK_K)
        per_split = tl.cdiv(k_steps, SPLIT_K)
        k_lo = pid_k * per_split * BLOCK_K
        k_hi = tl.minimum(K, k_lo + per_split * BLOCK_K)
        rm = kr < rank
        # A rows j*r .. j*r + r - 1 of the slot, as a (BLOCK_K, BLOCK_R) tile: row n of A is column n
        a_cols = a_ptr + group.to(tl.int64) * stride_al + (slice_j * rank + kr)[None, :] * stride_an
        # The first chunk's rows load with the group's size and rank (grouping.chunk_rows); that chunk is
        # peeled off the loop (rows carried through it made the decode shrinks slower, session 23).
        rows, row_ok = chunk_rows(group, 0, n_rows, first, row_order, num_tokens, num_lora, stride, BLOCK_M)
        if n_rows > 0:
            _shrink_rows(x_ptr, a_cols, ws_ptr, rows, row_ok, rm, kr, pid_k, slice_j, num_tokens, k_lo, k_hi, K,
                         stride_xm, ws_row, BLOCK_M, BLOCK_K, BLOCK_R, PRECISION)
        for chunk in range(1, tl.cdiv(n_rows, BLOCK_M)):
            rows_c, ok_c = chunk_rows(group, chunk, n_rows, first, row_order, num_tokens, num_lora, stride, BLOCK_M)
            _shrink_rows(x_ptr, a_cols, ws_ptr, rows_c, ok_c, rm, kr, pid_k, slice_j, num_tokens, k_lo, k_hi, K,
                         stride_xm, ws_row, BLOCK_M, BLOCK_K, BLOCK_R, PRECISION)
        tl.debug_barrier()  # every thread's partial is stored before the arrival
        tl.atomic_add(cnt_ptr + 1 + gj, 1, sem="acq_rel", scope="gpu")
    else:
        item = ticket - n_shrink
        pid_n = item % N_TILES
        gj = item // N_TILES
        slice_j = gj % STACK
        group = gj // STACK
        rank = tl.load(lora_ranks + group)
        scale = tl.load(scalings + group)
        lo = tl.load(offsets_ptr + slice_j).to(tl.int64)
        hi = tl.load(offsets_ptr + slice_j + 1).to(tl.int64)
        n_start = (lo // ALIGN) * ALIGN + pid_n * (BLOCK_N * N_ITERS)
        n_start = tl.multiple_of(n_start, ALIGN)
        n_rows, first = group_extent(group, group_rows, group_start, num_tokens, num_lora, stride)
        n_rows = tl.where((rank > 0) & (n_start < hi), n_rows, 0)
        # Vector loads and stores need bounds the compiler knows to be aligned (slice offsets and ranks
        # are device values): branch once on their alignment, rebuilding them there as (v // a) * a.
        if (lo % ALIGN == 0) & (hi % ALIGN == 0) & (rank % 8 == 0):
            _expand_item(
                x_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr + 1 + gj, first, row_order, num_lora, stride,
                num_tokens, stride_bl, stride_bn, stride_om, group, slice_j, (rank // 8) * 8, scale,
                (lo // ALIGN) * ALIGN, (hi // ALIGN) * ALIGN, n_start, n_rows,
                STACK, BLOCK_M, BLOCK_R, SPLIT_K, BLOCK_N, N_ITERS, N_TILES, PRECISION, MAX_SPINS,
            )
        else:
            _expand_item(
                x_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr + 1 + gj, first, row_order, num_lora, stride,
                num_tokens, stride_bl, stride_bn, stride_om, group, slice_j, rank, scale, lo, hi, n_start, n_rows,
                STACK, BLOCK_M, BLOCK_R, SPLIT_K, BLOCK_N, N_ITERS, N_TILES, PRECISION, MAX_SPINS,
            )


@triton.jit
def _shrink_rows(
    x_ptr, a_cols, ws_ptr, rows, row_ok, rm, kr, pid_k, slice_j, num_tokens, k_lo, k_hi, K, stride_xm,
    ws_row: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr,
):
    """A shrink item's product for one chunk of rows over ``[k_lo, k_hi)``, stored as its float32 partial."""
    x_rows = x_ptr + rows * stride_xm
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + offs_k
        km = kk < K
        x = tl.load(x_rows[:, None] + kk[None, :], mask=row_ok[:, None] & km[None, :], other=0.0)
        w = tl.load(a_cols + kk[:, None], mask=km[:, None] & rm[None, :], other=0.0, eviction_policy="evict_last")
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
    part = ws_ptr + (pid_k * num_tokens + rows)[:, None] * ws_row + (slice_j * BLOCK_R + kr)[None, :]
    tl.store(part, acc, mask=row_ok[:, None])


@triton.jit
def _expand_item(
    x_ptr, b_ptr, out_ptr, ws_ptr, cnt, first, row_order, num_lora, stride,
    num_tokens, stride_bl, stride_bn, stride_om, group, slice_j, rank, scale, lo, hi, n_start, n_rows,
    STACK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr,
    N_ITERS: tl.constexpr, N_TILES: tl.constexpr, PRECISION: tl.constexpr, MAX_SPINS: tl.constexpr,
):
    """Columns ``[n_start, n_start + N_ITERS * BLOCK_N)`` of slice ``slice_j`` for the rows of ``group``,
    once the (group, slice) counter ``cnt`` has all ``SPLIT_K`` shrink arrivals; then this item's arrival."""
    ws_row: tl.constexpr = STACK * BLOCK_R
    kr = tl.arange(0, BLOCK_R)
    rm = kr < rank
    b_slot = b_ptr + group.to(tl.int64) * stride_bl
    offs_n = tl.arange(0, BLOCK_N)
    # Before waiting: the first chunk's rows, and its first column block of B and of base_output; none
    # depends on the shrink, so these loads overlap the shrink items still running.
    rows, row_ok = chunk_rows(group, 0, n_rows, first, row_order, num_tokens, num_lora, stride, BLOCK_M)
    n = n_start + offs_n
    nm = (n >= lo) & (n < tl.where(n_rows > 0, hi, lo))  # nothing when the item has no rows
    w_first = tl.load(b_slot + n[None, :] * stride_bn + kr[:, None], mask=rm[:, None] & nm[None, :], other=0.0,
                      eviction_policy="evict_last")
    base_first = tl.load(out_ptr + rows[:, None] * stride_om + n[None, :], mask=row_ok[:, None] & nm[None, :],
                         other=0.0, eviction_policy="evict_first")
    # Wait for the shrink of (group, slice): SPLIT_K arrivals. Every expand item of (group, slice) waits,
    # even one without work, so the counter is reset only after all arrivals.
    seen = tl.atomic_add(cnt, 0, sem="acquire", scope="gpu")
    spins = 0
    while (seen < SPLIT_K) & (spins < MAX_SPINS):
        seen = tl.atomic_add(cnt, 0, sem="acquire", scope="gpu")
        spins += 1
    scale = tl.where(seen >= SPLIT_K, scale, float("nan"))
    for chunk in range(0, tl.cdiv(n_rows, BLOCK_M)):
        if chunk > 0:
            rows, row_ok = chunk_rows(group, chunk, n_rows, first, row_order, num_tokens, num_lora, stride,
                                      BLOCK_M)
        xa = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        part = ws_ptr + rows[:, None] * ws_row + (slice_j * BLOCK_R + kr)[None, :]
        for s in tl.static_range(SPLIT_K):  # fixed order: the same bits every run
            xa += tl.load(part + s * num_tokens * ws_row, mask=row_ok[:, None] & rm[None, :], other=0.0,
                          cache_modifier=".cg")
        xa = xa.to(x_ptr.dtype.element_ty)
        out_rows = out_ptr + rows * stride_om
        for it in range(N_ITERS):
            n = n_start + it * BLOCK_N + offs_n
            nm = (n >= lo) & (n < hi)
            o_ptrs = out_rows[:, None] + n[None, :]
            om = row_ok[:, None] & nm[None, :]
            if (chunk == 0) & (it == 0):
                w = w_first
                base = base_first
            else:
                w = tl.load(b_slot + n[None, :] * stride_bn + kr[:, None], mask=rm[:, None] & nm[None, :],
                            other=0.0, eviction_policy="evict_last")
                base = tl.load(o_ptrs, mask=om, other=0.0, eviction_policy="evict_first")
            acc = tl.dot(xa, w, input_precision=PRECISION)
            out = (acc * scale + base.to(tl.float32)).to(out_ptr.dtype.element_ty)
            tl.store(o_ptrs, out, mask=om, eviction_policy="evict_first")
    arrived = tl.atomic_add(cnt, 1, sem="acq_rel", scope="gpu")
    if arrived == SPLIT_K + N_TILES - 1:
        tl.atomic_xchg(cnt, 0, sem="relaxed", scope="gpu")  # the last of (group, slice)


# ---- launcher ----------------------------------------------------------------------------------------


def fused_grid(num_lora: int, stack: int, max_slice_width: int, plan: tiling.FusedPlan) -> tuple[int, int]:
    """(shrink items, expand column tiles per (group, slice)); the grid is ``num_lora * stack * (SPLIT_K + tiles)``."""
    tiles = triton.cdiv(max_slice_width + ALIGN - 1, plan.block_n * plan.n_iters)
    return num_lora * stack * plan.split_k, tiles


def lora_fused_decode(
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    output_offset: torch.Tensor,
    max_slice_width: int,
    base_output: torch.Tensor,
    batch_info,
    stack: int,
    plan: tiling.FusedPlan,
    meta: GroupMeta | None = None,
) -> torch.Tensor:
    """``base_output += `` the stacked LoRA of ``x`` (QKV: stack 3, gate-up: stack 2) in one launch.

    ``x (s, K)``, ``a (num_lora, stack*max_r, K)``, ``b (num_lora, N, max_r)``, ``output_offset
    (stack+1,)`` on the device; inputs are assumed validated. ``meta``: the batch's grouping
    (:func:`.grouping.derive`, at least ``s`` rows; derived here when not given). Returns ``base_output``.
    """
    s, k = x.shape
    num_lora, n_a, _ = a.shape
    max_r = n_a // stack
    if s == 0 or batch_info.bs == 0:
        return base_output
    meta = meta_for(batch_info, meta, num_lora, s, x.device)
    block_r = tiling.rank_block(max_r)
    n_shrink, tiles = fused_grid(num_lora, stack, max_slice_width, plan)
    # counters: [0] tickets, [1 + group * stack + slice] shrink arrivals; workspace: (split, s, stack * block_r)
    counters = 1 + num_lora * stack
    ws, cnt = scratch_for(x.device).split_k(counters, triton.cdiv(plan.split_k * s * stack * block_r, counters))
    _fused_decode_kernel[(n_shrink + num_lora * stack * tiles,)](
        x, a, b, base_output, output_offset, ws, cnt,
        meta.group_rows, meta.group_start, meta.row_order, batch_info.lora_ranks, batch_info.scalings,
        s, k, num_lora, meta.stride(num_lora),
        x.stride(0), a.stride(0), a.stride(1), b.stride(0), b.stride(1), base_output.stride(0),
        STACK=stack,
        BLOCK_M=plan.block_m,
        BLOCK_K=plan.block_k,
        BLOCK_R=block_r,
        SPLIT_K=plan.split_k,
        BLOCK_N=plan.block_n,
        N_ITERS=plan.n_iters,
        N_TILES=tiles,
        PRECISION=tiling.dot_precision(x.dtype, x.device),
        ALIGN=ALIGN,
        MAX_SPINS=MAX_SPINS,
        num_warps=plan.num_warps,
        num_stages=plan.num_stages,
    )
    return base_output
