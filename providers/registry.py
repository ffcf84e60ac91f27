"""Name-keyed registry of provider backends, imported lazily (the shape of ``lora.registry``).

``register_provider("openai", "providers.openai:OpenAI", export="OpenAI")`` records where a
provider lives; its module is imported the first time it is asked for, so ``import providers`` needs
no SDK and no HTTP client. ``export`` names the attribute of the ``providers`` package that resolves
to the class (``providers.OpenAI``). ``register_provider("name")`` also works as a class decorator
for a backend defined in user code.

A third party adds a provider without touching this package through the entry-point group
:data:`ENTRY_POINT_GROUP`::

    # pyproject.toml of the plugin
    [project.entry-points."kernelstack.providers"]
    acme = "acme_provider:AcmeBackend"

Entry points are read once, on the first lookup of a name that is not registered (or on
:func:`available_providers`); a name registered in code wins over an entry point of the same name.
A provider is a :class:`~providers.base.BaseBackend` subclass; an HTTP API provider usually
subclasses :class:`~providers.api_backend.APIBackend` and fills in its hooks in one module.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
from dataclasses import dataclass
from typing import Any

from .sdk_errors import INSTALL_HINT

__all__ = [
    "ENTRY_POINT_GROUP",
    "ProviderInfo",
    "UnknownProviderError",
    "register_provider",
    "unregister_provider",
    "get_provider",
    "available_providers",
    "exported_names",
]

#: The entry-point group a plugin declares its provider in.
ENTRY_POINT_GROUP = "kernelstack.providers"


class UnknownProviderError(KeyError):
    """No provider is registered (or declared by an entry point) under that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class _Entry:
    target: str | type
    export: str | None
    cls: type | None = None


@dataclass(frozen=True)
class ProviderInfo:
    name: str
    target: str  # "module:Class"
    export: str | None  # attribute of the providers package, if any
    available: bool
    reason: str | None  # why it cannot be imported here; None when it can


_REGISTRY: dict[str, _Entry] = {}
_LOCK = threading.Lock()
_entry_points_loaded = False


def register_provider(name: str, target: str | type | None = None, *, export: str | None = None):
    """Register a provider under ``name``; ``target`` is ``"module:Class"`` or a class.

    Without a target, returns a class decorator. Registering a taken name replaces the entry.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"provider name must be a non-empty str, got {name!r}")

    def add(t):
        from .base import BaseBackend

        if isinstance(t, str):
            if ":" not in t:
                raise ValueError(f"target must look like 'package.module:Class', got {t!r}")
        elif not isinstance(t, type):
            raise TypeError(f"provider {name!r} must be a class or 'module:Class', got {t!r}")
        elif not issubclass(t, BaseBackend) and not hasattr(t, "generate"):
            raise TypeError(f"provider {name!r} must be a BaseBackend subclass, got {t!r}")
        with _LOCK:
            _REGISTRY[name] = _Entry(target=t, export=export, cls=None if isinstance(t, str) else t)
        return t

    if target is None:
        return add
    add(target)
    return None


def unregister_provider(name: str) -> None:
    """Remove ``name`` (no error if absent)."""
    with _LOCK:
        _REGISTRY.pop(name, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    try:
        found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # noqa: BLE001 - broken metadata of another distribution must not break lookups
        return
    for ep in found:
        with _LOCK:
            if ep.name not in _REGISTRY:
                _REGISTRY[ep.name] = _Entry(target=ep.value, export=None)


def _import(name: str, entry: _Entry) -> type:
    if entry.cls is None:
        module_name, _, attr = str(entry.target).partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            missing = err.name or ""
            if missing == module_name or missing.startswith(module_name + "."):
                raise  # the provider's own module is missing or broken: not an optional dependency
            raise ImportError(
                f"provider {name!r} needs the optional dependency {missing!r}; install it with: {INSTALL_HINT}",
                name=missing,
            ) from err
        entry.cls = getattr(module, attr)
    return entry.cls


def get_provider(name: str) -> type:
    """The backend class registered (or declared by an entry point) as ``name``."""
    entry = _REGISTRY.get(name)
    if entry is None:
        _load_entry_points()
        entry = _REGISTRY.get(name)
    if entry is None:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise UnknownProviderError(f"unknown provider {name!r}; known providers: {known}")
    return _import(name, entry)


def exported_names() -> dict[str, str]:
    """``{attribute of the providers package: provider name}`` for the registered exports."""
    return {e.export: name for name, e in _REGISTRY.items() if e.export}


def available_providers() -> list[ProviderInfo]:
    """Every registered provider (entry points included), and whether it imports here."""
    _load_entry_points()
    out = []
    for name in sorted(_REGISTRY):
        entry = _REGISTRY[name]
        t = entry.target
        target = t if isinstance(t, str) else f"{t.__module__}:{t.__qualname__}"
        try:
            _import(name, entry)
        except Exception as err:  # noqa: BLE001 - report, do not raise
            out.append(ProviderInfo(name, target, entry.export, False, f"{type(err).__name__}: {err}"))
        else:
            out.append(ProviderInfo(name, target, entry.export, True, None))
    return out


def _builtin(name: str, target: str, export: str) -> Any:
    register_provider(name, target, export=export)


# The providers this package ships.
_builtin("sglang", "providers.runtime_endpoint:RuntimeEndpoint", "RuntimeEndpoint")
_builtin("runtime", "providers.runtime:Runtime", "Runtime")
_builtin("openai", "providers.openai:OpenAI", "OpenAI")
_builtin("azure", "providers.openai:AzureOpenAI", "AzureOpenAI")
_builtin("anthropic", "providers.anthropic:Anthropic", "Anthropic")
_builtin("litellm", "providers.litellm:LiteLLM", "LiteLLM")
_builtin("vertexai", "providers.vertexai:VertexAI", "VertexAI")
