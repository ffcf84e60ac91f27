"""Pallas (Mosaic GPU) LoRA kernels: a JAX-native functional API, and the torch-facing "pallas" backend.

JAX users call the functions re-exported here (jax arrays in and out, jit-able)::

    from lora import pallas as lp
    batch = lp.make_batch(seg_indptr, weight_indices, lora_ranks, scalings, num_tokens=x.shape[0])
    out = lp.qkv_lora(x, qkv_a, qkv_b, batch, q=4096, kv=1024, base=base)

Torch users select the backend by name (``lora.get_backend_from_name("pallas")``), implemented in
:mod:`lora.pallas.backend`. Both run the same shape-only plans (:mod:`lora.pallas.plan`); pass
``tuning=Tuning(...)`` to either to override the kernel configurations the plans pick. Importing this package imports neither jax nor torch; the API functions
load jax on first use.
"""

from __future__ import annotations

import importlib

_API = ("Batch", "Tuning", "make_batch", "pad_segments", "build_meta", "shrink", "expand", "qkv_lora", "gate_up_lora")

__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module("lora.pallas.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lora.pallas' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
