"""Expand (LoRA B) with fused scaling and in-place add, over 1, 2 or 3 output slices in one launch.

For slice ``j`` of ``stack = len(output_offset) - 1`` and a segment with slot ``w`` of rank ``r``::

    out[:, off[j]:off[j+1]] += scaling[w] * x[:, j*r:(j+1)*r] @ B[w, off[j]:off[j+1], :r].T

Grid: (chunk slots -- or adapter groups in the decode layout, see :mod:`.grouping` --, slices,
column groups of the widest slice). A program loads its chunk's x columns of slice ``j`` once
(``BLOCK_M x BLOCK_R``, only the real rank read) and then walks ``N_ITERS`` column blocks of
``BLOCK_N``: B tile, ``base_output`` tile, one dot, scale, add, store (base_output with
evict-first hints: it streams through once, the weights stay in L2).
The slice bounds come from ``output_offset`` on the device (GQA: q != kv), so the same launch serves
plain expand (one slice), gate-up (two) and QKV (three). Only rows of groups with rank > 0 are
touched; every other row of ``base_output`` is left as it was.

``x_splits > 1``: x is a split-K shrink's float32 partials (:func:`.shrink.lora_shrink` with
``partials``), added up in split order from zero as the chunk's x is loaded and rounded to the output
dtype, the bits the shrink's own finish would have stored.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import tiling
from .grouping import GroupMeta, chunk_rows, find_chunk, group_extent, meta_for

#: Column blocks start on multiples of this many elements (16-byte vectors for every dtype).
ALIGN = 16


# Batch sizes vary call to call: keep them out of the specialisation key.
@triton.jit(do_not_specialize=["num_tokens", "num_lora", "stride"])
def _expand_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    offsets_ptr,
    group_rows,
    group_start,
    row_order,
    lora_ranks,
    scalings,
    num_tokens,
    num_lora,
    stride,
    stride_xm,
    stride_xs,
    stride_wl,
    stride_wn,
    stride_om,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    N_ITERS: tl.constexpr,
    GROUP_GRID: tl.constexpr,
    L_BLOCK: tl.constexpr,
    PRECISION: tl.constexpr,
    ALIGN: tl.constexpr,
    RAGGED_N: tl.constexpr,
    PDL: tl.constexpr = 0,
    ACC_BASE: tl.constexpr = False,
    X_SPLITS: tl.constexpr = 1,
):
    pid_m = tl.program_id(0)
    pid_j = tl.program_id(1)
    pid_n = tl.program_id(2)
    if PDL == 1:
        # tiling.PDL_ANY: the kernel before may have written anything this one reads. Once it is complete,
        # the next kernel may launch (it waits for this grid before it touches what this grid writes).
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    lo = tl.load(offsets_ptr + pid_j).to(tl.int64)
    hi = tl.load(offsets_ptr + pid_j + 1).to(tl.int64)
    # Column blocks start on a multiple of ALIGN so base_output is read and written in 16-byte
    # vectors (the slice offsets are device values the compiler cannot see); the columns of the
    # first block that belong to the previous slice are masked off.
    n_start = (lo // ALIGN) * ALIGN + pid_n * (BLOCK_N * N_ITERS)
    n_start = tl.multiple_of(n_start, ALIGN)
    if GROUP_GRID:
        # Decode layout: program = (group, slice, column group), walking the group's chunks. The slice bounds,
        # the group's size, rank and scale and its first chunk's rows are independent loads (the rows are at
        # a place known from the group alone: grouping.chunk_rows), so they make one round trip together.
        group = pid_m
        rank = tl.load(lora_ranks + group)
        scale = tl.load(scalings + group)
        n_rows, first = group_extent(group, group_rows, group_start, num_tokens, num_lora, stride)
        # (The first chunk is peeled off the loop, not carried into it: see the shrink's decode layout.)
        rows, row_ok = chunk_rows(group, 0, n_rows, first, row_order, num_tokens, num_lora, stride, BLOCK_M)
        n_rows = tl.where((rank > 0) & (n_start < hi), n_rows, 0)
        if n_rows > 0:
            _expand_chunk(
                x_ptr, w_ptr, out_ptr, rows, row_ok, scale, stride_xm, stride_xs, stride_wl, stride_wn, stride_om,
                group, rank, lo, hi, n_start, BLOCK_N, BLOCK_R, N_ITERS, PRECISION, ALIGN, RAGGED_N, PDL, ACC_BASE,
                X_SPLITS,
            )
        for chunk in range(1, tl.cdiv(n_rows, BLOCK_M)):
            rows_c, ok_c = chunk_rows(group, chunk, n_rows, first, row_order, num_tokens, num_lora, stride, BLOCK_M)
            _expand_chunk(
                x_ptr, w_ptr, out_ptr, rows_c, ok_c, scale, stride_xm, stride_xs, stride_wl, stride_wn, stride_om,
                group, rank, lo, hi, n_start, BLOCK_N, BLOCK_R, N_ITERS, PRECISION, ALIGN, RAGGED_N, PDL, ACC_BASE,
                X_SPLITS,
            )
    else:
        # Prefill layout: program = (chunk slot, slice, column group).
        if n_start >= hi:
            return
        group, chunk, n_rows, first, rank, total = find_chunk(
            pid_m, group_rows, group_start, lora_ranks, num_tokens, num_lora, stride, BLOCK_M, L_BLOCK, False,
        )
        if pid_m >= total:
            return
        rows, row_ok = chunk_rows(group, chunk, n_rows, first, row_order, num_tokens, num_lora, stride, BLOCK_M)
        _expand_chunk(
            x_ptr, w_ptr, out_ptr, rows, row_ok, tl.load(scalings + group), stride_xm, stride_xs, stride_wl, stride_wn,
            stride_om, group, rank, lo, hi, n_start, BLOCK_N, BLOCK_R, N_ITERS, PRECISION, ALIGN, RAGGED_N, PDL,
            ACC_BASE, X_SPLITS,
        )


@triton.jit
def _expand_chunk(
    x_ptr, w_ptr, out_ptr, rows, row_ok, scale, stride_xm, stride_xs, stride_wl, stride_wn, stride_om, group, rank,
    lo, hi, n_start, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, N_ITERS: tl.constexpr, PRECISION: tl.constexpr,
    ALIGN: tl.constexpr, RAGGED_N: tl.constexpr, PDL: tl.constexpr, ACC_BASE: tl.constexpr, X_SPLITS: tl.constexpr,
):
    pid_j = tl.program_id(1)
    w_slot = w_ptr + group.to(tl.int64) * stride_wl
    out_rows = out_ptr + rows * stride_om
    # Vector loads and stores need bounds the compiler knows to be aligned; offsets and ranks are
    # device values, so branch once on their alignment (uniform per program). In the aligned branch
    # the bounds are rebuilt as (v // a) * a: equal to v there, and visibly a multiple of a to the
    # compiler (tl.multiple_of would tag the value itself, the other branch's too).
    if (lo % ALIGN == 0) & (hi % ALIGN == 0) & (rank % 8 == 0):
        rank_a = (rank // 8) * 8
        _expand_columns(
            x_ptr, w_slot, out_rows, rows, row_ok, (lo // ALIGN) * ALIGN, (hi // ALIGN) * ALIGN, n_start,
            pid_j * rank_a, rank_a, scale, stride_xm, stride_xs, stride_wn,
            BLOCK_N, BLOCK_R, N_ITERS, PRECISION, PDL, ACC_BASE, X_SPLITS,
        )
    else:
        # Scalar accesses: the same columns in 4x narrower blocks, so this rarely taken branch does
        # not set the kernel's register budget (and with it the occupancy of the vector branch).
        _expand_columns(
            x_ptr, w_slot, out_rows, rows, row_ok, lo, hi, n_start, pid_j * rank, rank, scale, stride_xm, stride_xs,
            stride_wn, RAGGED_N, BLOCK_R, N_ITERS * (BLOCK_N // RAGGED_N), PRECISION, PDL, ACC_BASE, X_SPLITS,
        )


@triton.jit
def _expand_columns(
    x_ptr, w_slot, out_rows, rows, row_ok, lo, hi, n_start, x_col, rank, scale, stride_xm, stride_xs, stride_wn,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, N_ITERS: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr,
    ACC_BASE: tl.constexpr, X_SPLITS: tl.constexpr,
):
    """``out[rows, lo:hi] += scale * x[rows, x_col:x_col+rank] @ w_slot[lo:hi, :rank].T`` for the
    ``N_ITERS`` column blocks from ``n_start``.

    ``PDL == 2`` (tiling.PDL_SHRINK: a programmatic dependent of the shrink that writes x): the first column
    block's B and ``base_output`` tiles are loaded while the shrink may still run, then the program
    waits for it (``gdc_wait``) before it reads x."""
    kr = tl.arange(0, BLOCK_R)
    km = kr < rank
    if PDL == 2:
        w, base, o_ptrs, om = _column_block(w_slot, out_rows, row_ok, lo, hi, n_start, kr, km, stride_wn, BLOCK_N)
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
        x = _load_x(x_ptr, rows, row_ok, x_col, kr, km, stride_xm, stride_xs, X_SPLITS, out_rows.dtype.element_ty)
        x = _scaled_operand(x, scale, ACC_BASE)
        for it in range(N_ITERS):
            if it > 0:
                w, base, o_ptrs, om = _column_block(w_slot, out_rows, row_ok, lo, hi, n_start + it * BLOCK_N, kr, km,
                                                    stride_wn, BLOCK_N)
            _add_block(x, w, base, o_ptrs, om, scale, PRECISION, ACC_BASE)
    else:
        # (x first: loading the first B / base tiles ahead of it, as the PDL branch must, was measured
        # 4-15% slower on prefill batches on the H200)
        x = _load_x(x_ptr, rows, row_ok, x_col, kr, km, stride_xm, stride_xs, X_SPLITS, out_rows.dtype.element_ty)
        x = _scaled_operand(x, scale, ACC_BASE)
        for it in range(N_ITERS):
            w, base, o_ptrs, om = _column_block(w_slot, out_rows, row_ok, lo, hi, n_start + it * BLOCK_N, kr, km,
                                                stride_wn, BLOCK_N)
            _add_block(x, w, base, o_ptrs, om, scale, PRECISION, ACC_BASE)


@triton.jit
def _load_x(x_ptr, rows, row_ok, x_col, kr, km, stride_xm, stride_xs, X_SPLITS: tl.constexpr, op_dtype: tl.constexpr):
    """The chunk's x columns ``x_col .. x_col + rank``; ``X_SPLITS > 1``: x is a split-K shrink's float32
    partials (``stride_xs`` apart), summed in split order from zero and rounded to ``op_dtype``: the bits the
    shrink's own finish would have stored."""
    ptrs = x_ptr + rows[:, None] * stride_xm + (x_col + kr)[None, :]
    mask = row_ok[:, None] & km[None, :]
    if X_SPLITS == 1:
        return tl.load(ptrs, mask=mask, other=0.0)
    acc = tl.zeros((rows.shape[0], kr.shape[0]), dtype=tl.float32)
    for s in tl.static_range(X_SPLITS):
        acc += tl.load(ptrs + s * stride_xs, mask=mask, other=0.0, cache_modifier=".cg")
    return acc.to(op_dtype)


@triton.jit
def _column_block(w_slot, out_rows, row_ok, lo, hi, n0, kr, km, stride_wn, BLOCK_N: tl.constexpr):
    """The B tile (rank x BLOCK_N) and the ``base_output`` tile of the column block from ``n0``, with the
    block's output pointers and mask."""
    n = n0 + tl.arange(0, BLOCK_N)
    nm = (n >= lo) & (n < hi)
    w = tl.load(w_slot + n[None, :] * stride_wn + kr[:, None], mask=km[:, None] & nm[None, :], other=0.0,
                eviction_policy="evict_last")
    o_ptrs = out_rows[:, None] + n[None, :]
    om = row_ok[:, None] & nm[None, :]
    # base_output streams through once: do not let it push the adapters' weights out of L2
    base = tl.load(o_ptrs, mask=om, other=0.0, eviction_policy="evict_first")
    return w, base, o_ptrs, om


@triton.jit
def _scaled_operand(x, scale, ACC_BASE: tl.constexpr):
    """``ACC_BASE``: x times the adapter's scale, in float32, rounded to x's dtype (the dot's operand)."""
    if ACC_BASE:
        x = (x.to(tl.float32) * scale).to(x.dtype)
    return x


@triton.jit
def _add_block(x, w, base, o_ptrs, om, scale, PRECISION: tl.constexpr, ACC_BASE: tl.constexpr):
    """base tile += scale * x @ w, stored back: the product scaled and added to base in float32 and rounded
    once; or (``ACC_BASE``, x already scaled by :func:`_scaled_operand`) base as the dot's accumulator."""
    if ACC_BASE:
        out = tl.dot(x, w, base.to(tl.float32), input_precision=PRECISION).to(o_ptrs.dtype.element_ty)
    else:
        acc = tl.dot(x, w, input_precision=PRECISION)
        out = (acc * scale + base.to(tl.float32)).to(o_ptrs.dtype.element_ty)
    tl.store(o_ptrs, out, mask=om, eviction_policy="evict_first")


def expand_grid(num_tokens: int, num_lora: int, stack: int, max_slice_width: int, plan: tiling.ExpandPlan):
    """Launch grid from shapes: (groups or chunk slots, slices, column groups of the widest slice)."""
    return (
        num_lora if plan.group_grid else triton.cdiv(num_tokens, plan.block_m) + num_lora,
        stack,
        triton.cdiv(max_slice_width + ALIGN - 1, plan.block_n * plan.n_iters),
    )


def lora_expand(
    x: torch.Tensor,
    weights: torch.Tensor,
    output_offset: torch.Tensor,
    max_slice_width: int,
    base_output: torch.Tensor,
    batch_info,
    plan: tiling.ExpandPlan | None = None,
    meta: GroupMeta | None = None,
    pdl: int = 0,
    x_splits: int = 1,
) -> torch.Tensor:
    """``base_output (s, N) += `` the slice-wise scaled ``x @ B.T``; returns ``base_output``.

    ``x (s, stack*max_r)``, ``weights (num_lora, N, max_r)``, ``output_offset (stack+1,)`` on the
    device. ``meta`` as for :func:`.shrink.lora_shrink` (derived here when None). Inputs are assumed
    validated; nothing here reads device values. ``pdl``: launched as a programmatic dependent
    (:func:`.tiling.pdl_supported` devices) of the kernel before it on the stream, overlapping this kernel's
    start with that one's end: :data:`.tiling.PDL_SHRINK` when that kernel is the shrink writing x (the first
    B and base_output tiles load before waiting for it), :data:`.tiling.PDL_ANY` for any kernel.

    ``x_splits > 1``: x is ``(x_splits, s, stack*max_r)`` float32, a split-K shrink's partials
    (``lora_shrink(..., partials=...)``): summed here in split order and rounded to base_output's dtype,
    the same bits as the shrink's own finish.
    """
    if x_splits > 1:
        if x.dim() != 3 or x.shape[0] != x_splits or x.dtype != torch.float32:
            raise ValueError(f"x_splits={x_splits} needs float32 x of shape ({x_splits}, s, n), not "
                             f"{x.dtype} {tuple(x.shape)}")
        parts, x = x, x[0]
        op_dtype = base_output.dtype
    else:
        parts, op_dtype = None, x.dtype
    s = x.shape[0]
    num_lora, n_total, max_r = weights.shape
    stack = output_offset.shape[0] - 1
    if s == 0 or batch_info.bs == 0:
        return base_output
    meta = meta_for(batch_info, meta, num_lora, s, x.device)
    if plan is None:
        plan = tiling.plan_expand(s, max_r, n_total, max_slice_width, stack, num_lora, batch_info.bs, op_dtype,
                                  x.device)
    grid = expand_grid(s, num_lora, stack, max_slice_width, plan)
    _expand_kernel[grid](
        x, weights, base_output, output_offset,
        meta.group_rows, meta.group_start, meta.row_order, batch_info.lora_ranks, batch_info.scalings,
        s, num_lora, meta.stride(num_lora),
        x.stride(0), 0 if parts is None else parts.stride(0), weights.stride(0), weights.stride(1),
        base_output.stride(0),
        BLOCK_M=plan.block_m,
        BLOCK_N=plan.block_n,
        BLOCK_R=tiling.rank_block(max_r),
        N_ITERS=plan.n_iters,
        GROUP_GRID=plan.group_grid,
        L_BLOCK=tiling.group_block(num_lora),
        PRECISION=tiling.dot_precision(op_dtype, x.device),
        ALIGN=ALIGN,
        RAGGED_N=max(16, plan.block_n // 4),
        # fp16 x times a scale above 1 can leave fp16's range before the product: the scaled-product epilogue there
        ACC_BASE=plan.acc_base and op_dtype != torch.float16,
        X_SPLITS=x_splits,
        num_warps=plan.num_warps,
        num_stages=plan.num_stages,
        **tiling.pdl_launch(pdl, x.device),
    )
    return base_output
