"""Device-side work assignment shared by the shrink and expand kernels.

Both kernels tile the batch **by adapter**: the rows of every segment that uses slot ``w`` form one
group, cut into chunks of ``BLOCK_M`` rows, so a chunk reads its adapter's weights once however the
segments are ordered or interleaved (decode: 256 one-token segments over 8 slots become 8 groups of
about 32 rows instead of 256 tiles of one row). Shrink adds one more group, index ``num_lora``: the
rows after the last segment, which it fills with zeros.

The launch grid reserves ``cdiv(tokens, BLOCK_M) + groups`` chunk slots along axis 0, an upper
bound that depends only on shapes (each group adds at most one partial chunk); the kernel itself
reads the segment metadata, finds which group and chunk its ``program_id(0)`` is, and exits if it is
past the last chunk. Nothing is read on the host, so one CUDA-graph capture replays correctly after
new ``seg_lens`` / ``seg_indptr`` / ``weight_indices`` / ``lora_ranks`` are copied into the same tensors.

Segments are scanned ``SEG_BLOCK`` at a time, so the registers used do not grow with the batch.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def find_chunk(
    pid_m,
    seg_lens,
    seg_indptr,
    weight_indices,
    lora_ranks,
    num_tokens,
    num_lora,
    bs,
    BLOCK_M: tl.constexpr,
    L_BLOCK: tl.constexpr,
    SEG_BLOCK: tl.constexpr,
    WITH_IDLE: tl.constexpr,
):
    """(group, chunk, rows in group, rank of group, number of chunks) for chunk slot ``pid_m``.

    ``WITH_IDLE``: count rank-0 groups and the trailing-row group ``num_lora`` (shrink writes zeros
    there); otherwise only groups of rank > 0 get chunks (expand leaves the other rows untouched).
    """
    gids = tl.arange(0, L_BLOCK)
    rows = tl.zeros([L_BLOCK], dtype=tl.int32)
    for s0 in range(0, bs, SEG_BLOCK):
        offs = s0 + tl.arange(0, SEG_BLOCK)
        m = offs < bs
        ln = tl.load(seg_lens + offs, mask=m, other=0)
        wi = tl.load(weight_indices + offs, mask=m, other=-1)
        hit = wi[None, :] == gids[:, None]
        rows += tl.sum(tl.where(hit, ln[None, :], 0), axis=1)
    rank = tl.load(lora_ranks + gids, mask=gids < num_lora, other=0)
    if WITH_IDLE:
        covered = tl.load(seg_indptr + bs)
        rows = tl.where(gids == num_lora, num_tokens - covered, rows)
    else:
        rows = tl.where(rank > 0, rows, 0)
    chunks = (rows + (BLOCK_M - 1)) // BLOCK_M
    ends = tl.cumsum(chunks, 0)
    group = tl.sum((ends <= pid_m).to(tl.int32), axis=0)
    sel = gids == group
    chunk = pid_m - tl.sum(tl.where(sel, ends - chunks, 0), axis=0)
    n_rows = tl.sum(tl.where(sel, rows, 0), axis=0)
    r = tl.sum(tl.where(sel, rank, 0), axis=0)
    total = tl.sum(chunks, axis=0)
    return group, chunk, n_rows, r, total


@triton.jit
def chunk_rows(
    group,
    chunk,
    n_rows,
    seg_lens,
    seg_indptr,
    weight_indices,
    num_lora,
    bs,
    BLOCK_M: tl.constexpr,
    SEG_BLOCK: tl.constexpr,
):
    """Row indices (int64) of chunk ``chunk`` of ``group`` and the mask of the ones that exist.

    Rows of a group are numbered in segment order; position ``p`` lies in the segment whose running
    count of the group's rows brackets it.
    """
    pos = chunk * BLOCK_M + tl.arange(0, BLOCK_M)
    row = tl.zeros([BLOCK_M], dtype=tl.int32)
    before = group * 0  # rows of this group in earlier segment blocks (an int32 scalar)
    for s0 in range(0, bs, SEG_BLOCK):
        offs = s0 + tl.arange(0, SEG_BLOCK)
        m = offs < bs
        wi = tl.load(weight_indices + offs, mask=m, other=-1)
        ln = tl.load(seg_lens + offs, mask=m, other=0)
        start = tl.load(seg_indptr + offs, mask=m, other=0)
        ln = tl.where(wi == group, ln, 0)
        hi = tl.cumsum(ln, 0) + before
        lo = hi - ln
        inside = (pos[:, None] >= lo[None, :]) & (pos[:, None] < hi[None, :])
        row += tl.sum(tl.where(inside, start[None, :] - lo[None, :] + pos[:, None], 0), axis=1)
        before += tl.sum(ln, axis=0)
    covered = tl.load(seg_indptr + bs)
    row = tl.where(group == num_lora, covered + pos, row)  # the trailing-row group (shrink only)
    return row.to(tl.int64), pos < n_rows
