"""Per-device scratch buffers of the split-K shrink: float32 partial tiles and per-tile counters.

Counters start at zero and every launch leaves them at zero (the last program of a tile resets its
counter), so no memset is launched per call. Buffers grow on demand and are reused: calls on one
device are assumed to be ordered on one stream (the way a model layer runs them).

Under CUDA-graph capture a buffer that must grow is not cached: a fresh one is allocated inside the
capture (its zero-fill becomes a memset node of the graph), so eager calls never see a counter array
that only the graph has initialised.
"""

from __future__ import annotations

import torch

_SCRATCH: dict[torch.device, "Scratch"] = {}


class Scratch:
    def __init__(self, device: torch.device):
        self.device = device
        self.workspace = torch.empty(0, dtype=torch.float32, device=device)
        self.counters = torch.zeros(0, dtype=torch.int32, device=device)

    def split_k(self, tiles: int, elems_per_tile: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(workspace of ``tiles * elems_per_tile`` floats, ``tiles`` zeroed counters)."""
        ws_need, cnt_need = tiles * elems_per_tile, tiles
        capturing = self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        ws, cnt = self.workspace, self.counters
        if ws.numel() < ws_need:
            ws = torch.empty(max(ws_need, 2 * ws.numel()), dtype=torch.float32, device=self.device)
            if not capturing:
                self.workspace = ws
        if cnt.numel() < cnt_need:
            cnt = torch.zeros(max(cnt_need, 2 * cnt.numel()), dtype=torch.int32, device=self.device)
            if not capturing:
                self.counters = cnt
        return ws, cnt


def scratch_for(device: torch.device) -> Scratch:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    s = _SCRATCH.get(device)
    if s is None:
        s = _SCRATCH[device] = Scratch(device)
    return s
