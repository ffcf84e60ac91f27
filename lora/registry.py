"""Name-keyed registry of LoRA backends, imported lazily.

``register_backend("name", "package.module:Class", extra="x")`` records where a backend lives; its
module is imported the first time the name is asked for, so ``import lora`` needs no optional
dependency. ``register_backend("name")`` also works as a class decorator for backends defined in
user code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from .backend import BaseLoRABackend

__all__ = [
    "BackendStatus",
    "BackendUnavailableError",
    "UnknownBackendError",
    "available_backends",
    "get_backend_from_name",
    "register_backend",
]


class UnknownBackendError(KeyError):
    """No backend is registered under that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class BackendUnavailableError(ImportError):
    """The backend's optional dependency is missing; the message names the extra to install."""


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str | None  # why it cannot run here; None when it can
    description: str


@dataclass
class _Entry:
    target: str | type[BaseLoRABackend]
    extra: str | None
    cls: type[BaseLoRABackend] | None = None


_REGISTRY: dict[str, _Entry] = {}


def register_backend(name: str, target: str | type[BaseLoRABackend] | None = None, *, extra: str | None = None):
    """Register a backend under ``name``.

    ``target`` is ``"module:Class"`` (imported on first use) or a class. Without a target, returns a
    class decorator. ``extra`` names the ``kernelstack[...]`` extra that brings its dependencies.
    Registering a taken name replaces the entry (so tests and users can override a backend).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backend name must be a non-empty string, got {name!r}")

    def add(t):
        if isinstance(t, str):
            if ":" not in t:
                raise ValueError(f"target must look like 'package.module:Class', got {t!r}")
        elif not (isinstance(t, type) and issubclass(t, BaseLoRABackend)):
            raise TypeError(f"backend {name!r} must be a BaseLoRABackend subclass, got {t!r}")
        _REGISTRY[name] = _Entry(target=t, extra=extra, cls=None if isinstance(t, str) else t)
        return t

    if target is None:
        return add
    add(target)
    return None


def unregister_backend(name: str) -> None:
    """Remove ``name`` (no error if absent)."""
    _REGISTRY.pop(name, None)


def _known() -> str:
    return ", ".join(sorted(_REGISTRY)) or "(none)"


def get_backend_from_name(name: str) -> type[BaseLoRABackend]:
    """The backend class registered as ``name``; build it as ``cls(name, batch_info)``.

    Raises UnknownBackendError (listing the known names) or BackendUnavailableError (naming the
    extra to install) when its module cannot be imported.
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise UnknownBackendError(f"unknown LoRA backend {name!r}; known backends: {_known()}")
    if entry.cls is None:
        module_name, _, attr = entry.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)
            hint = f"pip install 'kernelstack[{entry.extra}]'" if entry.extra else "check your installation"
            raise BackendUnavailableError(
                f"LoRA backend {name!r} needs {missing!r}, which is not installed: {hint}"
            ) from exc
        entry.cls = getattr(module, attr)
    return entry.cls


def available_backends() -> list[BackendStatus]:
    """Every registered backend, whether it can run here, and if not, why."""
    out = []
    for name in sorted(_REGISTRY):
        try:
            cls = get_backend_from_name(name)
        except BackendUnavailableError as exc:
            out.append(BackendStatus(name, False, str(exc), ""))
            continue
        reason = cls.unavailable_reason()
        out.append(BackendStatus(name, reason is None, reason, cls.description))
    return out


register_backend("torch", "lora.torch_backend:TorchLoRABackend")
register_backend("triton", "lora.triton.backend:TritonLoRABackend", extra="triton")
register_backend("pallas", "lora.pallas.backend:PallasLoRABackend", extra="pallas")
