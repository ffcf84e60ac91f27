"""The kernels' int32 metadata, derived from a batch's segments: written once, run by both executors.

:func:`build` is written against a small array namespace (``xp``: ``arange``, ``full``, ``take``,
``where``, ``minimum``, ``searchsorted``, ``any``, ``sum``, ``sort``, ``concat``, ``reshape``),
which the JAX executor (:mod:`lora.pallas.api`) implements with ``jax.numpy`` and the torch
executor (:mod:`lora.pallas.backend`) with torch ops, so the layout in :mod:`lora.pallas.tiling`
is derived by one piece of code. Everything it does is a device op on the batch's tensors: no host
read, so the torch executor runs it inside a CUDA-graph capture (``prepare``) and a replay
re-derives it from the values the engine copied into the batch info.

It depends on the batch only (segments, slots, ranks) and on ``groups``, the number of 64-row
groups the buffer holds: never on the token count of an op call.
"""

from __future__ import annotations

from .tiling import BM, BOX_SPAN, SHIFTS, MetaLayout

__all__ = ["build", "rows_covered"]


def rows_covered(groups: int) -> int:
    """Row slots the records of ``groups`` groups are made from (the last record's copies reach
    ``BOX_SPAN + SHIFTS - 1`` rows past its group)."""
    return groups * BM + BOX_SPAN + SHIFTS


def build(xp, seg_indptr, weight_indices, lora_ranks, *, bs: int, num_lora: int, groups: int):
    """(groups * MetaLayout(num_lora).record,) int32 metadata of a batch of ``bs`` segments."""
    lay = MetaLayout(num_lora)
    n = rows_covered(groups)
    rows = xp.arange(n)
    if bs == 0 or num_lora == 0:
        row_slot = xp.full((n,), -1)
    else:
        seg = xp.searchsorted(seg_indptr[1:], rows)  # = bs for rows after the last segment
        slot = xp.take(weight_indices, xp.minimum(seg, bs - 1))
        valid = (seg < bs) & (xp.take(lora_ranks, slot) > 0)
        row_slot = xp.where(valid, slot, -1)
    # SHIFTS copies of BOX_SPAN row slots per group: copy k of group g starts at row 64g + k.
    g = xp.reshape(xp.arange(groups), (groups, 1, 1))
    k = xp.reshape(xp.arange(SHIFTS), (1, SHIFTS, 1))
    t = xp.reshape(xp.arange(BOX_SPAN), (1, 1, BOX_SPAN))
    shifted = xp.reshape(xp.take(row_slot, g * BM + k + t), (groups, SHIFTS * BOX_SPAN))
    # The adapters of each group's own 64 rows, ascending, then the absent ones (never read).
    own = xp.reshape(row_slot[: groups * BM], (groups, BM, 1))
    ids = xp.reshape(xp.arange(num_lora), (1, 1, num_lora))
    present = xp.any(own == ids, 1)  # (groups, num_lora)
    count = xp.sum(present, 1)
    ids2 = xp.reshape(ids, (1, num_lora))
    order = xp.sort(xp.where(present, ids2, ids2 + num_lora), 1)
    if num_lora:
        order = order % num_lora
    pad = xp.full((groups, lay.head - 1 - num_lora), 0)
    record = xp.concat([xp.reshape(count, (groups, 1)), order, pad, shifted], 1)
    return xp.reshape(record, (groups * lay.record,))
