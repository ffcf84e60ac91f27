"""Multi-LoRA segment-GEMM kernels behind one name-keyed registry.

    from lora import LoRABatchInfo, get_backend_from_name
    backend = get_backend_from_name("triton")("triton", batch_info)
    out = backend.run_qkv_lora(x, qkv_a, qkv_b, output_offset, max_qkv_out_dim, base_output=base)

Names load lazily, so ``import lora`` (and the JAX-only ``lora.pallas`` API) import no torch until
a torch-facing name is used.
"""

from __future__ import annotations

import importlib

__all__ = [
    "LoRABatchInfo",
    "BaseLoRABackend",
    "get_backend_from_name",
    "register_backend",
    "available_backends",
    "BackendUnavailableError",
]

_WHERE = {
    "LoRABatchInfo": "lora.batch_info",
    "BaseLoRABackend": "lora.backend",
    "get_backend_from_name": "lora.registry",
    "register_backend": "lora.registry",
    "available_backends": "lora.registry",
    "BackendUnavailableError": "lora.registry",
}


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'lora' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
