"""Name-keyed registry of LoRA backends, imported lazily.

``register_backend("name", "package.module:Class", extra="x")`` records where a backend lives; its
module is imported the first time the name is asked for, so ``import lora`` needs no optional
dependency. ``register_backend("name")`` also works as a class decorator for backends defined in
user code.

Other packages add backends through the entry-point group ``kernelstack.lora_backends`` (see
:data:`ENTRY_POINT_GROUP`): in their ``pyproject.toml``::

    [project.entry-points."kernelstack.lora_backends"]
    mine = "my_package.lora:MyLoRABackend"

They are found the first time the registry is asked for a name or a list, appear in
``available_backends()`` (with the distribution they come from, and why they cannot run when they
cannot) and are built by name like ours. A name taken by a built-in or an explicit
``register_backend`` call wins over an entry point of the same name (with a warning).
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from importlib import metadata

from .backend import BaseLoRABackend

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackendStatus",
    "BackendUnavailableError",
    "UnknownBackendError",
    "available_backends",
    "get_backend_from_name",
    "load_entry_points",
    "register_backend",
    "registered_name",
]

#: The entry-point group third-party packages register LoRA backends in.
ENTRY_POINT_GROUP = "kernelstack.lora_backends"
BUILT_IN = "kernelstack"


class UnknownBackendError(KeyError):
    """No backend is registered under that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class BackendUnavailableError(ImportError):
    """The backend cannot run here: an optional dependency is missing (the message names the extra to
    install), it failed to load, or its ``unavailable_reason()`` says why (no device, ...)."""


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str | None  # why it cannot run here; None when it can
    description: str
    #: Where it comes from: "kernelstack" (built in), or the distribution and version of an entry point.
    origin: str = BUILT_IN


@dataclass
class _Entry:
    target: str | type[BaseLoRABackend]
    extra: str | None
    cls: type[BaseLoRABackend] | None = None
    origin: str = BUILT_IN
    entry_point: bool = False


_REGISTRY: dict[str, _Entry] = {}
_scanned = False


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


def load_entry_points(refresh: bool = False) -> list[str]:
    """Register the backends of group :data:`ENTRY_POINT_GROUP`; returns the names added.

    Runs once by itself (on the first lookup); ``refresh=True`` forgets what earlier scans added
    and scans again (after installing a package in a running process, or in tests).
    """
    global _scanned
    if _scanned and not refresh:
        return []
    if refresh:
        for name in [n for n, e in _REGISTRY.items() if e.entry_point]:
            del _REGISTRY[name]
    _scanned = True
    added = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        origin = f"{dist.name} {dist.version}" if dist is not None else f"entry point {ep.value}"
        if ep.name in _REGISTRY:
            if not _REGISTRY[ep.name].entry_point:
                warnings.warn(f"LoRA backend {ep.name!r} from {origin} ({ENTRY_POINT_GROUP} entry point "
                              f"{ep.value!r}) is ignored: the name is taken by {_REGISTRY[ep.name].origin}",
                              stacklevel=2)
            elif _REGISTRY[ep.name].origin != origin:
                warnings.warn(f"LoRA backend {ep.name!r} from {origin} is ignored: {_REGISTRY[ep.name].origin} "
                              "registers the same name first", stacklevel=2)
            continue  # (the same distribution seen twice on sys.path: the first one wins, as for imports)
        _REGISTRY[ep.name] = _Entry(target=ep.value, extra=None, origin=origin, entry_point=True)
        added.append(ep.name)
    return added


def registered_name(cls: type) -> str | None:
    """The name ``cls`` is registered under (once it has been loaded), or None."""
    return next((name for name, e in _REGISTRY.items() if e.cls is cls), None)


def _load(name: str, entry: _Entry) -> type[BaseLoRABackend]:
    """Import an entry's class; BackendUnavailableError says why it cannot be."""
    module_name, sep, attr = entry.target.partition(":")
    if not sep or not attr:
        raise BackendUnavailableError(
            f"LoRA backend {name!r} from {entry.origin}: target {entry.target!r} must look like 'package.module:Class'"
        )
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        if entry.entry_point:
            hint = f"reinstall or fix {entry.origin}"
        else:
            hint = f"pip install 'kernelstack[{entry.extra}]'" if entry.extra else "check your installation"
        raise BackendUnavailableError(
            f"LoRA backend {name!r} needs {missing!r}, which is not installed: {hint}"
        ) from exc
    except Exception as exc:
        if not entry.entry_point:
            raise
        # a broken plugin must not break the registry for everyone else: it is reported as unavailable
        raise BackendUnavailableError(
            f"LoRA backend {name!r} from {entry.origin} failed to load {entry.target!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(obj, type) and issubclass(obj, BaseLoRABackend)):
        raise BackendUnavailableError(
            f"LoRA backend {name!r} from {entry.origin}: {entry.target!r} is {obj!r}, not a BaseLoRABackend subclass"
        )
    return obj


def _known() -> str:
    return ", ".join(sorted(_REGISTRY)) or "(none)"


def get_backend_from_name(name: str) -> type[BaseLoRABackend]:
    """The backend class registered as ``name``; build it as ``cls(name, batch_info)``.

    Raises UnknownBackendError (listing the known names) or BackendUnavailableError (naming the
    extra to install) when its module cannot be imported.
    """
    load_entry_points()
    entry = _REGISTRY.get(name)
    if entry is None:
        raise UnknownBackendError(f"unknown LoRA backend {name!r}; known backends: {_known()}")
    if entry.cls is None:
        entry.cls = _load(name, entry)
    return entry.cls


def available_backends() -> list[BackendStatus]:
    """Every registered backend (entry points included), whether it can run here, and if not, why.

    The same reason is the message of the ``BackendUnavailableError`` that building it raises.
    """
    load_entry_points()
    out = []
    for name in sorted(_REGISTRY):
        origin = _REGISTRY[name].origin
        try:
            cls = get_backend_from_name(name)
        except BackendUnavailableError as exc:
            out.append(BackendStatus(name, False, str(exc), "", origin))
            continue
        try:
            reason = cls.unavailable_reason()
        except Exception as exc:  # a third-party check that crashes says so instead of hiding every backend
            reason = f"{cls.__name__}.unavailable_reason() raised {type(exc).__name__}: {exc}"
        out.append(BackendStatus(name, reason is None, reason, cls.description, origin))
    return out


register_backend("torch", "lora.torch_backend:TorchLoRABackend")
register_backend("triton", "lora.triton.backend:TritonLoRABackend", extra="triton")
register_backend("pallas", "lora.pallas.backend:PallasLoRABackend", extra="pallas")
