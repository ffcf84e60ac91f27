"""What every peer adapter needs: stand-ins for the modules the peers import but fetch.sh does not unpack,
host copies of the output offsets, the capture check, and a clear unavailable reason."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Callable

import torch


def stand_in(name: str, make: Callable[[], types.ModuleType]) -> types.ModuleType:
    """``name`` as it imports; else ``make()`` put into ``sys.modules`` in its place (a missing parent stood in
    for by an empty package), so a real module is never shadowed."""
    if name in sys.modules:
        return sys.modules[name]
    try:
        return importlib.import_module(name)
    except Exception:
        pass
    parent, _, child = name.rpartition(".")
    parent_mod = stand_in(parent, lambda: package(parent, "an empty package")) if parent else None
    mod = sys.modules[name] = make()
    if parent_mod is not None:
        setattr(parent_mod, child, mod)
    return mod


def package(name: str, doc: str, **attrs) -> types.ModuleType:
    """A stand-in package ``name`` holding ``attrs`` (a package, so stood-in submodules import beneath it)."""
    mod = types.ModuleType(name, f"kernelstack stand-in for {name}: {doc} (benchmarks/peers)")
    mod.__path__ = []
    mod.__dict__.update(attrs)
    return mod


def capturing(device: torch.device) -> bool:
    """Whether the current stream of ``device`` is capturing a CUDA graph."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


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
            if capturing(offsets.device):
                raise RuntimeError("output offsets first seen inside a CUDA-graph capture: call the op eagerly first")
            got = self._seen[key] = tuple(int(v) for v in offsets.tolist())
        return got
