"""Scratch of the triton kernels, one set per stream: split-K partial tiles and per-tile counters, and
the fused ops' intermediate (so that no op call allocates on the device after warm-up). The pallas torch
executor keeps its copies and partials here too (:meth:`Scratch.named`; this module imports only torch).

Counters start at zero and every launch leaves them at zero (the last program of a tile resets its
counter), so no memset is launched per call.

Two rules make the scratch safe where the old per-device buffer was not:

* **One scratch per (device, stream).** Launches on one stream run in order, so they may share a
  workspace; launches on two streams may run at the same time (vLLM's dual stream, SGLang's
  overlap), so each stream gets its own. Inside a CUDA-graph capture the current stream is the
  capture stream (or a stream forked from it), so concurrent branches of one graph get their own
  scratch too.
* **A buffer a graph has captured is never freed.** Once a launch was captured, the buffers it used
  are marked captured; a later call that needs more gets new buffers, and the captured ones stay
  alive (kept in ``retired``) for as long as the process, because a graph replay writes to them. The
  extra memory is bounded by the doubling growth (at most the final size once more). Graphs replayed
  concurrently on different streams must have been captured on different streams.

A buffer first made inside a capture is zeroed by a memset node of that graph (which runs at each
replay); eager calls zero its counters once before first using it.
"""

from __future__ import annotations

import torch

_SCRATCH: dict[tuple[torch.device, int], "Scratch"] = {}


class Scratch:
    """Named persistent buffers of one (device, stream): the split-K workspace and counters, and the
    intermediate of the fused ops (shrink output fed to the expand)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.retired: list[torch.Tensor] = []  # buffers graphs captured, kept alive
        self._bufs: dict[str, torch.Tensor] = {}
        self._captured: set[int] = set()  # ids of the buffers some capture used
        self._zero_before_eager_use: set[str] = set()  # zeroed buffers made inside a capture

    @property
    def workspace(self) -> torch.Tensor:
        return self._bufs.get("workspace", torch.empty(0, dtype=torch.float32, device=self.device))

    @property
    def counters(self) -> torch.Tensor:
        return self._bufs.get("counters", torch.zeros(0, dtype=torch.int32, device=self.device))

    @property
    def captured(self) -> bool:
        """Some current buffer is held by a captured graph (it will be retired, never freed)."""
        return any(id(t) in self._captured for t in self._bufs.values())

    def split_k(self, tiles: int, elems_per_tile: int, capturing: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(workspace of ``tiles * elems_per_tile`` floats, ``tiles`` counters that are zero).

        ``capturing``: whether the launch is being captured in a CUDA graph (default: ask CUDA).
        """
        capturing = self._capturing() if capturing is None else capturing
        ws = self._get("workspace", tiles * elems_per_tile, torch.float32, False, capturing)
        return ws, self._get("counters", tiles, torch.int32, True, capturing)

    def intermediate(self, numel: int, dtype: torch.dtype, capturing: bool | None = None) -> torch.Tensor:
        """A flat buffer of at least ``numel`` elements of ``dtype`` (contents undefined)."""
        capturing = self._capturing() if capturing is None else capturing
        return self._get(f"intermediate:{dtype}", numel, dtype, False, capturing)

    def named(self, name: str, numel: int, dtype: torch.dtype, capturing: bool | None = None) -> torch.Tensor:
        """A flat buffer ``name`` of at least ``numel`` elements of ``dtype`` (contents undefined): scratch
        of other executors (the pallas torch executor), under the same rules."""
        capturing = self._capturing() if capturing is None else capturing
        return self._get(f"{name}:{dtype}", numel, dtype, False, capturing)

    def _capturing(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()

    def _get(self, name: str, numel: int, dtype: torch.dtype, zero: bool, capturing: bool) -> torch.Tensor:
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel:
            old = 0
            if buf is not None:
                old = buf.numel()
                if id(buf) in self._captured:
                    self.retired.append(buf)  # a graph still writes here: never hand it back to the allocator
            make = torch.zeros if zero else torch.empty
            buf = self._bufs[name] = make(max(numel, 2 * old, 1), dtype=dtype, device=self.device)
            if zero and capturing:
                self._zero_before_eager_use.add(name)  # its zero-fill is a node of the graph only
        if capturing:
            self._captured.add(id(buf))
        elif name in self._zero_before_eager_use:
            buf.zero_()
            self._zero_before_eager_use.discard(name)
        return buf


def scratch_for(device: torch.device, stream: int | None = None) -> Scratch:
    """The scratch of ``device`` for ``stream`` (a raw stream handle; default: the current stream)."""
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if stream is None:
            stream = torch.cuda.current_stream(device).cuda_stream
    key = (device, stream or 0)
    s = _SCRATCH.get(key)
    if s is None:
        s = _SCRATCH[key] = Scratch(device)
    return s
