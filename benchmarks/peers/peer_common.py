"""What every peer adapter needs: host copies of the output offsets, and a clear unavailable reason."""

from __future__ import annotations

import importlib

import torch


def missing_module(*modules: str) -> str | None:
    """Why the peer cannot run (a module of it does not import), or None."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or a peer module failing on import
            return f"{name} does not import ({type(exc).__name__}: {exc}); run `bash benchmarks/peers/fetch.sh`"
    return None


class HostOffsets:
    """Host tuples of the output-offset tensors an op is called with (the peers' launchers take Python ints).

    Read with a device synchronisation the first time a tensor is seen (the compare's eager correctness
    call), then from the cache, so graph captures of later calls never synchronise.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple, tuple[int, ...]] = {}

    def __call__(self, offsets: torch.Tensor) -> tuple[int, ...]:
        key = (offsets.data_ptr(), offsets.numel(), offsets._version)
        got = self._seen.get(key)
        if got is None:
            if offsets.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("output offsets first seen inside a CUDA-graph capture: call the op eagerly first")
            got = self._seen[key] = tuple(int(v) for v in offsets.tolist())
        return got
