"""Work assignment shared by the shrink and expand kernels: derived once per batch, read by every launch.

Both kernels tile the batch **by adapter**: the rows of every segment that uses slot ``w`` form one
group, cut into chunks of ``BLOCK_M`` rows, so a chunk reads its adapter's weights once however the
segments are ordered or interleaved (decode: 256 one-token segments over 8 slots become 8 groups of
about 32 rows instead of 256 tiles of one row). Shrink adds one more group, index ``num_lora``: the
rows after the last segment, which it fills with zeros.

**Per batch** (:func:`derive`, one launch of :func:`_derive_kernel`, from ``set_batch_info``): the
batch metadata becomes :class:`GroupMeta`:

* ``group_rows[w]``: rows of the segments of slot ``w`` (``w < num_lora``);
* ``group_start[num_lora]``: the number of rows the segments cover (``group_start[w]``, the exclusive
  prefix sum of ``group_rows``, is written too, for readers of the metadata; no kernel needs it);
* ``row_order``: the covered row indices grouped by slot (segment order within a group), each group
  at a fixed place: rows ``row_order[w * stride : w * stride + group_rows[w]]`` are the rows of slot
  ``w``, where ``stride = row_order.numel() // num_lora`` (:meth:`GroupMeta.stride`, at least the
  batch's rows). A program knows where its group's rows are without reading anything, so it loads
  them together with the group's size and rank: one dependent round trip less before its first x
  row than a packed list, whose group starts are device values (measured on the H200 in session 23).

The launch reads only device values and writes into buffers the backend keeps (no host read, no
allocation), so it can run eagerly before a CUDA-graph replay or be captured inside the graph.

**Per launch** (the kernels), both with a grid that depends only on shapes:

* **by chunk** (prefill): axis 0 has ``cdiv(tokens, BLOCK_M) + groups`` chunk slots, an upper bound
  (each group adds at most one partial chunk). :func:`find_chunk` reads the ``num_lora + 1`` group
  sizes and tells a program which group and chunk its slot is; programs past the last chunk exit.
* **by group** (decode): axis 0 is the group itself and the program walks that group's chunks
  (usually one): :func:`group_extent`, independent loads.

:func:`chunk_rows` turns a chunk into row indices with one gather from ``row_order`` (``BLOCK_M``
loads): no launch scans the segments any more. The rows after the last segment (the trailing group)
are ``group_start[num_lora] + p``, computed from the call's token count, so ``row_order`` needs only
entries for the segments' rows. Every gathered row index is bounded by the group's place in
``row_order`` and by the call's token count, so metadata that lies cannot make a kernel touch memory
outside its tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import tiling
from .tiling import group_block, next_pow2

__all__ = ["GroupMeta", "derive", "meta_for", "new_meta"]


@dataclass
class GroupMeta:
    """Grouping of one batch, in buffers that outlive it (see the module docstring)."""

    group_rows: torch.Tensor  # int32, >= num_lora entries
    group_start: torch.Tensor  # int32, >= num_lora + 1 entries
    row_order: torch.Tensor  # int32, num_lora x stride entries

    def stride(self, num_lora: int) -> int:
        """Entries of ``row_order`` per slot for a batch of ``num_lora`` slots: the most rows a group can hold.

        It depends only on the buffer's size, so a graph captured over these buffers and a later derivation
        into them agree on it."""
        return int(self.row_order.numel()) // max(num_lora, 1)


def row_order_size(num_lora: int, rows: int) -> int:
    """Entries of ``row_order`` for ``num_lora`` slots of up to ``rows`` rows each."""
    return max(num_lora, 1) * max(rows, 1)


def new_meta(num_lora: int, capacity: int, device) -> GroupMeta:
    """Fresh buffers for ``num_lora`` slots and ``capacity`` covered rows."""
    i32 = dict(dtype=torch.int32, device=device)
    return GroupMeta(torch.empty(num_lora + 1, **i32), torch.empty(num_lora + 1, **i32),
                     torch.zeros(row_order_size(num_lora, capacity), **i32))


def meta_for(batch_info, meta: GroupMeta | None, num_lora: int, rows: int, device) -> GroupMeta:
    """The grouping a launch over ``rows`` rows reads: ``meta`` when given (it must cover ``rows``),
    else derived here from ``batch_info`` into fresh buffers."""
    if meta is None:
        return derive(batch_info, new_meta(num_lora, rows, device))
    if meta.stride(num_lora) < rows:
        raise ValueError(
            f"the batch's grouping holds {meta.stride(num_lora)} rows but x has {rows}: derive it for at least {rows}"
        )
    return meta


def derive_blocks(bs: int, num_lora: int) -> tuple[int, int, int]:
    """(L_BLOCK, SEG_BLOCK, ROW_BLOCK) of :func:`_derive_kernel`: a slots x segments compare and a
    segments x rows scatter tile, each kept to about 4096 elements."""
    l_block = group_block(num_lora + 1)
    seg = max(16, min(next_pow2(max(bs, 1)), max(16, 4096 // l_block)))
    return l_block, seg, max(16, 4096 // seg)


def derive(batch_info, meta: GroupMeta) -> GroupMeta:
    """Write ``batch_info``'s grouping into ``meta``'s buffers: one launch on the current stream."""
    num_lora = batch_info.num_lora
    if meta.group_rows.numel() < num_lora or meta.group_start.numel() < num_lora + 1:
        raise ValueError(f"group buffers hold {meta.group_rows.numel()} slots, the batch has {num_lora}")
    l_block, seg_block, row_block = derive_blocks(batch_info.bs, num_lora)
    # one program, launched as a programmatic dependent of the kernel before it (waiting for it before reading
    # anything): its launch overlaps that kernel's end
    _derive_kernel[(1,)](
        batch_info.seg_lens, batch_info.seg_indptr, batch_info.weight_indices,
        meta.group_rows, meta.group_start, meta.row_order,
        batch_info.bs, num_lora, meta.stride(num_lora),
        L_BLOCK=l_block, SEG_BLOCK=seg_block, ROW_BLOCK=row_block,
        num_warps=4,
        **tiling.pdl_launch(tiling.PDL_ANY, batch_info.seg_lens.device),
    )
    return meta


@triton.jit(do_not_specialize=["bs", "num_lora", "stride"])
def _derive_kernel(
    seg_lens,
    seg_indptr,
    weight_indices,
    group_rows,
    group_start,
    row_order,
    bs,
    num_lora,
    stride,
    L_BLOCK: tl.constexpr,
    SEG_BLOCK: tl.constexpr,
    ROW_BLOCK: tl.constexpr,
    PDL: tl.constexpr = 0,
):
    """One program: group sizes and starts, then every covered row scattered to its group's place."""
    if PDL:  # tiling.PDL_ANY
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    gids = tl.arange(0, L_BLOCK)
    rows = tl.zeros([L_BLOCK], dtype=tl.int32)
    for s0 in range(0, bs, SEG_BLOCK):
        offs = s0 + tl.arange(0, SEG_BLOCK)
        m = offs < bs
        ln = tl.load(seg_lens + offs, mask=m, other=0)
        wi = tl.load(weight_indices + offs, mask=m, other=-1)
        rows += tl.sum(tl.where(wi[None, :] == gids[:, None], ln[None, :], 0), axis=1)
    rows = tl.where(gids < num_lora, rows, 0)
    starts = tl.cumsum(rows, 0) - rows  # starts[num_lora] = rows covered by the segments
    tl.store(group_rows + gids, rows, mask=gids < num_lora)
    tl.store(group_start + gids, starts, mask=gids <= num_lora)

    fill = tl.zeros([L_BLOCK], dtype=tl.int32)  # rows of each group placed so far
    for s0 in range(0, bs, SEG_BLOCK):
        offs = s0 + tl.arange(0, SEG_BLOCK)
        m = offs < bs
        ln = tl.load(seg_lens + offs, mask=m, other=0)
        wi = tl.load(weight_indices + offs, mask=m, other=-1)
        first = tl.load(seg_indptr + offs, mask=m, other=0)
        hit = (wi[None, :] == gids[:, None]) & (gids < num_lora)[:, None]
        lens = tl.where(hit, ln[None, :], 0)
        before = tl.cumsum(lens, 1) - lens  # rows of the same slot earlier in this block
        dest = tl.sum(tl.where(hit, fill[:, None] + before, 0), axis=0)  # each segment's first place in its group
        fill += tl.sum(lens, axis=1)
        ln = tl.where(tl.sum(hit.to(tl.int32), axis=0) > 0, ln, 0)  # a slot out of range: no rows
        base = tl.where(ln > 0, wi, 0).to(tl.int64) * stride  # the group's place in row_order
        longest = tl.max(ln, 0)
        for k0 in range(0, longest, ROW_BLOCK):
            k = k0 + tl.arange(0, ROW_BLOCK)
            dst = dest[:, None] + k[None, :]
            ok = (k[None, :] < ln[:, None]) & (dst < stride)
            tl.store(row_order + base[:, None] + dst, first[:, None] + k[None, :], mask=ok)


@triton.jit
def find_chunk(
    pid_m,
    group_rows,
    group_start,
    lora_ranks,
    num_tokens,
    num_lora,
    stride,
    BLOCK_M: tl.constexpr,
    L_BLOCK: tl.constexpr,
    WITH_IDLE: tl.constexpr,
):
    """(group, chunk, rows in group, the group's first place in ``row_order``, rank of group, number of
    chunks) for chunk slot ``pid_m``; ``stride``: :meth:`GroupMeta.stride`.

    ``WITH_IDLE``: count rank-0 groups and the trailing-row group ``num_lora`` (shrink writes zeros
    there); otherwise only groups of rank > 0 get chunks (expand leaves the other rows untouched).
    """
    gids = tl.arange(0, L_BLOCK)
    sizes = tl.load(group_rows + gids, mask=gids < num_lora, other=0)
    rank = tl.load(lora_ranks + gids, mask=gids < num_lora, other=0)
    if WITH_IDLE:
        covered = tl.load(group_start + num_lora)
        rows = tl.where(gids == num_lora, num_tokens - covered, sizes)
    else:
        covered = 0
        rows = tl.where(rank > 0, sizes, 0)
    chunks = (rows + (BLOCK_M - 1)) // BLOCK_M
    group, chunk, n_rows, first = locate_chunk(pid_m, gids, chunks, tl.cumsum(chunks, 0), rows,
                                               group_places(gids, covered, num_lora, stride))
    r = tl.sum(tl.where(gids == group, rank, 0), axis=0)
    total = tl.sum(chunks, axis=0)
    return group, chunk, n_rows, first, r, total


@triton.jit
def locate_chunk(c, gids, chunks, ends, rows, firsts):
    """(group, chunk within the group, the group's rows, its first place in ``row_order``) of chunk ``c`` of
    the batch, given per group (vectors over ``gids``) its chunk count, their running sum (inclusive), its
    rows and its first place."""
    group = tl.sum((ends <= c).to(tl.int32), axis=0)
    sel = gids == group
    chunk = c - tl.sum(tl.where(sel, ends - chunks, 0), axis=0)
    return group, chunk, tl.sum(tl.where(sel, rows, 0), axis=0), tl.sum(tl.where(sel, firsts, 0), axis=0)


@triton.jit
def group_places(gids, covered, num_lora, stride):
    """Each group's first place in ``row_order`` (the trailing group ``num_lora``: its first row, ``covered``)."""
    return tl.where(gids == num_lora, covered, gids * stride)


@triton.jit
def group_extent(group, group_rows, group_start, num_tokens, num_lora, stride):
    """(rows of ``group``, its first place in ``row_order``); for ``group == num_lora``, the trailing rows
    (their first place is the number of rows the segments cover). Two independent loads."""
    n = tl.load(group_rows + group, mask=group < num_lora, other=0)
    covered = tl.load(group_start + num_lora)
    return tl.where(group == num_lora, num_tokens - covered, n), group_places(group, covered, num_lora, stride)


@triton.jit
def chunk_rows(group, chunk, n_rows, first, row_order, num_tokens, num_lora, stride, BLOCK_M: tl.constexpr):
    """Row indices (int64) of chunk ``chunk`` of ``group``, whose rows start at place ``first`` of
    ``row_order``, and the mask of the ones that exist.

    The gather's mask does not depend on ``n_rows`` (places past the group's rows hold stale entries,
    masked afterwards), so it can be issued before the group's size has arrived."""
    pos = chunk * BLOCK_M + tl.arange(0, BLOCK_M)
    idx = first + pos
    trailing = (pos * 0 + group) == num_lora  # the trailing group: the rows after the segments
    ordered = (pos * 0 + group) < num_lora
    row = tl.load(row_order + idx, mask=ordered & (pos < stride), other=0)
    row = tl.where(trailing, idx, row)
    ok = (pos < n_rows) & (trailing | (pos < stride)) & (row >= 0) & (row < num_tokens)
    return row.to(tl.int64), ok
