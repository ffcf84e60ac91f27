"""Multi-LoRA under tensor parallelism: the LoRA ops of a sharded layer, on torch.distributed and on JAX.

* :mod:`lora.parallel.sharding` -- which part of a full adapter each rank holds (column, gate-up,
  QKV with GQA offsets per shard, row), for torch, numpy and jax arrays alike.
* :mod:`lora.parallel.torch_tp` -- :class:`TensorParallelLoRA`: the ops of one rank around any
  registered backend and a ``torch.distributed`` process group.
* :mod:`lora.parallel.jax_tp` -- the same layouts with ``jax.sharding`` / ``shard_map`` over a
  device mesh, calling the :mod:`lora.pallas` JAX API.
* :mod:`lora.parallel.cost` -- bytes and on-paper time of the collective per layer.

Names load lazily: importing this package imports neither torch nor jax.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "Shard": "lora.parallel.sharding",
    "column_shard": "lora.parallel.sharding",
    "row_shard": "lora.parallel.sharding",
    "gate_up_shard": "lora.parallel.sharding",
    "qkv_shard": "lora.parallel.sharding",
    "shard_major": "lora.parallel.sharding",
    "TensorParallelLoRA": "lora.parallel.torch_tp",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'lora.parallel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
