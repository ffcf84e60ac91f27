"""The pallas backend's device metadata built with torch ops (CPU torch here; the kernels that read
it run on the GPU suite), against a plain-Python model of the layout in :mod:`lora.pallas.tiling`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lora import LoRABatchInfo
from lora.pallas import tiling as T
from lora.pallas.backend import build_meta_torch


def model_meta(lens, slots, ranks, s, bpad):
    L, nb, BM = len(ranks), bpad // T.BM, T.BM
    row_slot = [-1] * bpad
    r0 = 0
    for n, w in zip(lens, slots):
        for r in range(r0, r0 + n):
            if r < s and ranks[w] > 0:
                row_slot[r] = w
        r0 += n
    tail0 = max(s - BM, 0)
    boxes = row_slot + row_slot[tail0 : tail0 + BM]
    present = [set(v for v in row_slot[b * BM : (b + 1) * BM] if v >= 0) for b in range(nb)]
    if s > 0:
        present[min((s - 1) // BM, nb - 1)] |= set(v for v in boxes[nb * BM :] if v >= 0)
    lay = T.MetaLayout(bpad, L)
    meta = [0] * lay.length
    meta[0] = s
    for b in range(nb):
        meta[lay.count + b] = len(present[b])
        order = sorted(present[b]) + sorted(set(range(L)) - present[b])
        meta[lay.slots + b * L : lay.slots + (b + 1) * L] = order
    meta[lay.boxes :] = boxes
    return meta


CASES = [
    ([70, 0, 10, 50], [2, 1, 0, 2], [0, 16, 16], 133),  # empty segment, rank-0 slot, trailing rows
    ([1] * 64, [i % 8 for i in range(64)], [16] * 8, 64),  # decode
    ([3, 5], [1, 0], [4, 0], 20),  # fewer than 64 rows, rank-0 slot
    ([], [], [8, 8], 40),  # no segments
    ([300, 700, 24], [3, 0, 3], [16, 9, 0, 64], 1100),  # prefill, partial last block
    ([64, 64], [0, 1], [8, 8], 128),  # exact blocks
    ([100, 30], [0, 1], [8, 8], 130),  # the last block's clamped box (rows 66..129) adds slot 0
]


@pytest.mark.parametrize("lens,slots,ranks,s", CASES)
def test_meta_matches_the_layout(lens, slots, ranks, s):
    bi = LoRABatchInfo.from_segments(lens, slots, ranks, [1.0] * len(ranks), device="cpu")
    bpad = T.padded_tokens(s)
    got = build_meta_torch(bi, s, bpad, len(ranks), "cpu")
    assert got.dtype == torch.int32 and got.shape == (T.MetaLayout(bpad, len(ranks)).length,)
    assert np.array_equal(got.numpy(), np.asarray(model_meta(lens, slots, ranks, s, bpad), np.int32))
    # built twice (the second from cached shape-only parts): the same
    assert torch.equal(build_meta_torch(bi, s, bpad, len(ranks), "cpu"), got)
