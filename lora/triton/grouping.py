"""Device-side work assignment shared by the shrink and expand kernels.

Both kernels tile the batch **by adapter**: the rows of every segment that uses slot ``w`` form one
group, cut into chunks of ``BLOCK_M`` rows, so a chunk reads its adapter's weights once however the
segments are ordered or interleaved (decode: 256 one-token segments over 8 slots become 8 groups of
about 32 rows instead of 256 tiles of one row). Shrink adds one more group, index ``num_lora``: the
rows after the last segment, which it fills with zeros.

Two ways to hand out the work, both with a grid that depends only on shapes:

* **by chunk** (prefill): axis 0 has ``cdiv(tokens, BLOCK_M) + groups`` chunk slots, an upper bound
  (each group adds at most one partial chunk). :func:`find_chunk` reads the metadata and tells a
  program which group and chunk its slot is; programs past the last chunk exit.
* **by group** (decode): axis 0 is the group itself and the program walks that group's chunks
  (usually one). No slot search, and the grid is as small as the number of adapters.

:func:`chunk_rows` turns a chunk into row indices in ``O(segments + BLOCK_M)`` work: the group's rows
are numbered in segment order, a position ``p`` lies in the segment whose running end is the first
above ``p``; counting ends ``<= p`` is a cumulative histogram over the chunk's window, and each
segment's row offset is then gathered by that count.

Nothing is read on the host, so one CUDA-graph capture replays correctly after new ``seg_lens`` /
``seg_indptr`` / ``weight_indices`` / ``lora_ranks`` are copied into the same tensors. Segments are
scanned ``SEG_BLOCK`` at a time (all at once for up to 1024 segments).
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
def group_size(group, seg_lens, seg_indptr, weight_indices, num_tokens, num_lora, bs, SEG_BLOCK: tl.constexpr):
    """Rows of ``group`` (the trailing rows for ``group == num_lora``)."""
    n = group * 0
    for s0 in range(0, bs, SEG_BLOCK):
        offs = s0 + tl.arange(0, SEG_BLOCK)
        m = offs < bs
        ln = tl.load(seg_lens + offs, mask=m, other=0)
        wi = tl.load(weight_indices + offs, mask=m, other=-1)
        n += tl.sum(tl.where(wi == group, ln, 0), axis=0)
    if group == num_lora:
        n = num_tokens - tl.load(seg_indptr + bs)
    return n


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
    BY_HISTOGRAM: tl.constexpr,
):
    """Row indices (int64) of chunk ``chunk`` of ``group`` and the mask of the ones that exist.

    ``BY_HISTOGRAM``: find each position's segment by a cumulative histogram and a gather
    (``O(SEG_BLOCK + BLOCK_M)``, through shared memory); otherwise by comparing every position with
    every segment (``BLOCK_M x SEG_BLOCK`` in registers, no barriers: cheaper when that is small).
    """
    c0 = chunk * BLOCK_M
    pos = c0 + tl.arange(0, BLOCK_M)
    row = pos * 0
    before = group * 0  # rows of this group in earlier segment blocks (an int32 scalar)
    for s0 in range(0, bs, SEG_BLOCK):
        offs = s0 + tl.arange(0, SEG_BLOCK)
        m = offs < bs
        wi = tl.load(weight_indices + offs, mask=m, other=-1)
        ln = tl.load(seg_lens + offs, mask=m, other=0)
        start = tl.load(seg_indptr + offs, mask=m, other=0)
        ln = tl.where(wi == group, ln, 0)  # other groups' segments become empty
        hi = tl.cumsum(ln, 0) + before  # running end of each segment, in the group's numbering
        lo = hi - ln
        added = tl.sum(ln, axis=0)
        if BY_HISTOGRAM:
            # segments of this block ending at or before p, for every p of the window [c0, c0 + BLOCK_M)
            below = tl.sum((hi <= c0).to(tl.int32), axis=0)
            rel = hi - c0
            inside = (rel >= 1) & (rel < BLOCK_M)
            hist = tl.histogram(tl.where(inside, rel, 2 * BLOCK_M - 1), 2 * BLOCK_M)
            counts = tl.reshape(tl.cumsum(hist, 0), (2, BLOCK_M))
            ended = tl.sum(tl.where(tl.arange(0, 2)[:, None] == 0, counts, 0), axis=0) + below
            seg = tl.minimum(ended, SEG_BLOCK - 1)
            offset = tl.gather(start - lo, seg, 0)  # row of a segment's first row minus its position
            row = tl.where((pos >= before) & (pos < before + added), pos + offset, row)
        else:
            inside = (pos[:, None] >= lo[None, :]) & (pos[:, None] < hi[None, :])
            row += tl.sum(tl.where(inside, start[None, :] - lo[None, :] + pos[:, None], 0), axis=1)
        before += added
    if group == num_lora:  # the trailing-row group (shrink only): rows after the last segment
        row = tl.load(seg_indptr + bs) + pos
    return row.to(tl.int64), pos < n_rows
