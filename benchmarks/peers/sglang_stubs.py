"""Stand-ins for the SGLang modules the LoRA kernels import but ``fetch.sh`` does not unpack.

Each is installed only when the real module does not import (an SGLang installed here wins), and
holds only what the LoRA code paths the adapters run actually touch:

* ``sglang.srt.utils``: ``cached_triton_kernel`` returns the kernel unchanged (SGLang's own fallback
  off CUDA: Triton's native kernel cache; the same device code, only the host's launch path differs,
  which the graph-batched timing does not see); ``get_device_name`` as SGLang defines it (the CUDA
  device name, which keys the csgmv kernels' tuned configs).
* ``sglang.srt.environ.envs``: the flags the LoRA kernels read, at SGLang's defaults.
* ``sglang.srt.model_executor.forward_batch_info.ForwardBatch``,
  ``sglang.srt.utils.hf_transformers_utils.AutoConfig``: names imported for type hints only.
"""

from __future__ import annotations

import importlib
import sys
import types

import torch


class _Flag:
    def __init__(self, name: str, default):
        self.name, self.default = name, default

    def get(self):
        return self.default

    def is_set(self) -> bool:
        return False


class _Envs:
    """SGLang's ``envs``: only the flags the LoRA kernels read, at their defaults (``sglang/srt/environ.py``)."""

    _DEFAULTS = {
        "SGLANG_ENABLE_LORA_CSGMV_SPLIT_K": False,
        "SGLANG_ENABLE_DETERMINISTIC_INFERENCE": False,
        "SGLANG_USE_CUSTOM_TRITON_KERNEL_CACHE": False,
    }

    def __getattr__(self, name: str) -> _Flag:
        if name not in self._DEFAULTS:
            raise AttributeError(f"the SGLang stub envs has no {name}: add it to benchmarks/peers/sglang_stubs.py")
        return _Flag(name, self._DEFAULTS[name])


def _cached_triton_kernel(key_fn=None):
    return lambda fn: fn


def _get_device_name(device_id: int = 0) -> str:
    return torch.cuda.get_device_name(device_id) if torch.cuda.is_available() else "cpu"


class _Placeholder:
    """A name SGLang imports for type hints only."""


_STUBS = {
    "sglang.srt.utils": {"cached_triton_kernel": _cached_triton_kernel, "get_device_name": _get_device_name},
    "sglang.srt.utils.hf_transformers_utils": {"AutoConfig": _Placeholder},
    "sglang.srt.environ": {"envs": _Envs()},
    "sglang.srt.model_executor": {},
    "sglang.srt.model_executor.forward_batch_info": {"ForwardBatch": _Placeholder},
}


def install() -> None:
    """Put each stand-in into ``sys.modules`` where the real module does not import."""
    for name, attrs in _STUBS.items():
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
            continue
        except Exception:
            pass
        mod = types.ModuleType(name)
        mod.__path__ = []  # a package, so stubbed submodules import beneath it
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, mod)
