"""The kernels' int32 metadata, derived from a batch's segments: written once, run by both executors.

:func:`build` is written against a small array namespace (``xp``: ``arange``, ``full``, ``take``,
``where``, ``minimum``, ``clip``, ``searchsorted``, ``any``, ``sum``, ``cumsum``, ``sort``,
``concat``, ``reshape``, and ``const(key, fn)``: ``fn()``, which an executor may keep and return again for
the same ``key``, as the torch executor does for the arrays that depend on the layout only),
which the JAX executor (:mod:`lora.pallas.api`) implements with ``jax.numpy`` and the torch
executor (:mod:`lora.pallas.backend`) with torch ops, so the layout in :mod:`lora.pallas.tiling`
is derived by one piece of code. Everything it does is a device op on the batch's tensors: no host
read, so the torch executor runs it inside a CUDA-graph capture (``prepare``) and a replay
re-derives it from the values the engine copied into the batch info.

It depends on the batch only (segments, slots, ranks) and on ``groups``, the number of 64-row
groups the buffer holds: never on the token count of an op call.
"""

from __future__ import annotations

from .tiling import BM, BOX_SPAN, CHUNK, SHIFTS, SPLIT_MAX_BLOCKS, UNIT_SIZES, MetaLayout

#: Rows the chunk table covers (decode-sized batches).
GATHER_ROWS = SPLIT_MAX_BLOCKS * BM

__all__ = ["build", "rows_covered"]


def rows_covered(groups: int) -> int:
    """Row slots the records of ``groups`` groups are made from (the last record's copies reach
    ``BOX_SPAN + SHIFTS - 1`` rows past its group)."""
    return groups * BM + BOX_SPAN + SHIFTS


def build(xp, seg_indptr, weight_indices, lora_ranks, *, bs: int, num_lora: int, groups: int, units: bool = True):
    """(MetaLayout(num_lora).length(64 * groups),) int32 metadata of a batch of ``bs`` segments.

    ``units=False``: the block shrink's extra units are left 0, for a caller whose kernels cannot read them
    (the block shrink runs on batches of more than ``split_max_blocks`` blocks only); the rest is the same."""
    lay = MetaLayout(num_lora)
    n = max(rows_covered(groups), GATHER_ROWS)
    rows = xp.const(("arange", n), lambda: xp.arange(n))
    if bs == 0 or num_lora == 0:
        row_slot = xp.full((n,), -1)
    else:
        # 1 + each row's segment (seg_indptr[0] = 0: never 0; bs + 1 for rows after the last segment). The
        # whole seg_indptr, not a slice: inductor's searchsorted reads a sliced sequence from its storage's start.
        seg1 = xp.searchsorted(seg_indptr, rows)
        # each segment's slot (-1 for a rank-0 slot) between two -1: index 0 (never read) and the rows after the
        # last segment
        seg_slot = xp.where(xp.take(lora_ranks, weight_indices) > 0, weight_indices, -1)
        minus1 = xp.const(("-1",), lambda: xp.full((1,), -1))
        row_slot = xp.take(xp.concat([minus1, seg_slot, minus1], 0), seg1)
    # SHIFTS copies of BOX_SPAN row slots per group: copy k of group g starts at row 64g + k.
    def shifted_rows():
        g = xp.reshape(xp.arange(groups), (groups, 1, 1))
        k = xp.reshape(xp.arange(SHIFTS), (1, SHIFTS, 1))
        t = xp.reshape(xp.arange(BOX_SPAN), (1, 1, BOX_SPAN))
        return g * BM + k + t

    shifted = xp.reshape(xp.take(row_slot, xp.const(("shifted", groups), shifted_rows)), (groups, SHIFTS * BOX_SPAN))
    # The adapters of each group's own 64 rows, ascending, then the absent ones (never read).
    own = xp.reshape(row_slot[: groups * BM], (groups, BM, 1))
    ids = xp.const(("ids", num_lora), lambda: xp.reshape(xp.arange(num_lora), (1, 1, num_lora)))
    present = xp.any(own == ids, 1)  # (groups, num_lora)
    count = xp.sum(present, 1)
    ids2 = xp.reshape(ids, (1, num_lora))
    order = xp.sort(xp.where(present, ids2, xp.const(("ids+L", num_lora), lambda: ids2 + num_lora)), 1)
    if num_lora:
        order = order % num_lora
    extra = [_extra_units(xp, count, u, groups) for u in UNIT_SIZES] if units else []
    width = lay.head - 1 - num_lora - 3 * len(extra)
    pad = xp.const(("pad", groups, width), lambda: xp.full((groups, width), 0))
    record = xp.concat([xp.reshape(count, (groups, 1)), order, *extra, pad, shifted], 1)
    chunks = _chunk_table(xp, row_slot[:GATHER_ROWS], lay)
    return xp.concat([xp.reshape(chunks, (lay.start,)), xp.reshape(record, (groups * lay.record,))], 0)


def _extra_units(xp, count, unit: int, groups: int):
    """(groups, 3): per group g, the number of its first extra unit of ``unit`` adapters (every unit of
    a group after its first, numbered over the groups in order), then which group extra unit number g
    is of (-1: there are fewer) and that unit's first adapter (layout in :mod:`.tiling`)."""
    extra = xp.where(count > unit, (count + unit - 1) // unit - 1, 0)
    ends = xp.cumsum(extra)
    first = ends - extra
    j = xp.arange(groups)
    owner = xp.minimum(xp.searchsorted(ends, j), groups - 1)  # the groups whose units all come before j
    valid = j < ends[groups - 1]  # (the total)
    adapter = unit * (1 + j - xp.take(first, owner))
    col = lambda v: xp.reshape(v, (groups, 1))  # noqa: E731
    return xp.concat([col(first), col(xp.where(valid, owner, -1)), col(xp.where(valid, adapter, 0))], 1)


def _chunk_table(xp, row_slot, lay: MetaLayout):
    """(lay.chunks, CHUNK) chunk table of the first GATHER_ROWS rows (layout in :mod:`.tiling`):
    each slot's rows in ascending order, cut into chunks of at most 64; unused chunks count 0 rows.
    (Written with few array ops: the torch executor launches a kernel or more for each.)"""
    L, nc = lay.num_lora, lay.chunks
    n = GATHER_ROWS
    if L == 0:
        return xp.full((nc, CHUNK), 0)
    key = row_slot % (L + 1)  # the slot; rows without an adapter (-1) get L and sort last
    ranked = xp.sort(key * n + xp.const(("arange", n), lambda: xp.arange(n)), 0)  # by slot, then row
    ordered = ranked % n  # row indices, by slot then row
    # starts[w]: rows of slots < w (w = 0..L), from the sorted slots; cnt[w]: rows of slot w
    starts = xp.searchsorted(ranked // n, xp.const(("ids-1", L), lambda: xp.arange(L + 1) - 1))
    cnt = starts[1:] - starts[:L]
    nch = (cnt + BM - 1) // BM  # chunks per slot
    ch_end = xp.cumsum(nch)  # chunk index after slot w's last
    c = xp.const(("chunks", nc), lambda: xp.arange(nc))
    # the slot chunk c belongs to (an unused chunk: the last slot, with i past its chunks: 0 rows)
    w = xp.minimum(xp.searchsorted(ch_end, c), L - 1)
    i64 = (c - xp.take(ch_end - nch, w)) * BM  # chunk c is slot w's i-th: its first row's rank in the slot
    rows = xp.clip(xp.take(cnt, w) - i64, 0, BM)
    first = xp.reshape(xp.take(starts, w) + i64, (nc, 1))
    members = xp.take(ordered, xp.clip(first + xp.const(("row", BM), lambda: xp.reshape(xp.arange(BM), (1, BM))), 0,
                                       n - 1))
    zeros = xp.const(("pad", nc, CHUNK - BM - 2), lambda: xp.full((nc, CHUNK - BM - 2), 0))
    head = xp.concat([xp.reshape(w, (nc, 1)), xp.reshape(rows, (nc, 1)), zeros], 1)
    return xp.concat([head, members], 1)
