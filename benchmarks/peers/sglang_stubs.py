"""Stand-ins for the SGLang modules the LoRA code imports but ``fetch.sh`` does not unpack.

Each is installed only when the real module does not import (an SGLang installed here wins;
``peer_common.stand_in``), and holds only what the LoRA code paths of the adapters touch:

* ``sglang.srt.utils``: ``cached_triton_kernel`` returns the kernel unchanged (SGLang's own fallback
  off CUDA: Triton's native kernel cache; the same device code, only the host's launch path differs,
  which the graph-batched timing does not see); ``get_device_name`` as SGLang defines it (the CUDA
  device name, which keys the csgmv kernels' tuned configs).
* ``sglang.srt.utils.common``: ``empty_device_cache``; ``direct_register_custom_op`` a no-op (the op it
  registers is MoE-only, never called here).
* ``sglang.srt.environ.envs``: the flags the LoRA code reads, from the environment, at SGLang 0.5.23's
  defaults (``sglang/srt/environ.py``).
* ``sglang.kernels.jit.utils.is_arch_support_pdl``: SGLang's check (CUDA, not ROCm, major >= 9).
* ``sglang.kernels.ops.moe.moe_align.moe_align_block_size``: the routing of 513-16383-row aligned routes
  in the triton_v2 runner is a CUDA source compiled at run time (tvm-ffi, nvcc); the stand-in fills
  the same buffers from SGLang's own torch fallback ``_align_block_size_torch`` (see sglang_v2_peer.py).
* ``ForwardBatch``, ``AutoConfig``, ``LoRABatchLayout``: names imported for type hints only.
"""

from __future__ import annotations

import os

import torch

from peer_common import package, stand_in

class _Flag:
    def __init__(self, name: str, default):
        self.name, self.default = name, default

    def is_set(self) -> bool:
        return self.name in os.environ

    def get(self):
        raw = os.environ.get(self.name)
        if raw is None:
            return self.default
        if isinstance(self.default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return raw


class _Envs:
    """SGLang's ``envs``: only the flags the LoRA code reads; another name raises (add it here)."""

    _DEFAULTS = {
        "SGLANG_ENABLE_LORA_CSGMV_SPLIT_K": False,
        "SGLANG_ENABLE_DETERMINISTIC_INFERENCE": False,
        "SGLANG_USE_CUSTOM_TRITON_KERNEL_CACHE": False,
        "SGLANG_LORA_DENSE_CONFIG_DIR": None,
    }

    def __getattr__(self, name: str) -> _Flag:
        if name not in self._DEFAULTS:
            raise AttributeError(f"the SGLang stub envs has no {name}: add it to benchmarks/peers/sglang_stubs.py")
        return _Flag(name, self._DEFAULTS[name])


def _cached_triton_kernel(key_fn=None):
    return lambda fn: fn


def _get_device_name(device_id: int = 0) -> str:
    return torch.cuda.get_device_name(device_id) if torch.cuda.is_available() else "cpu"


def _empty_device_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _direct_register_custom_op(*args, **kwargs) -> None:
    return None


def _is_arch_support_pdl() -> bool:
    if not torch.cuda.is_available() or torch.version.hip is not None:
        return False
    return torch.cuda.get_device_capability()[0] >= 9


def _moe_align_block_size_from_torch_fallback(
    topk_ids, num_experts, block_size, sorted_token_ids, expert_ids, num_tokens_post_pad, cumsum_buffer,
    pad_sorted_token_ids=False, *, write_inactive_prefix_count=False, map_invalid_experts_to_sentinel=False,
    pad_expert_ids=False,
):
    """The CUDA-JIT ``moe_align_block_size`` replaced by SGLang's torch fallback (eager), into the caller's buffers."""
    if write_inactive_prefix_count:
        raise NotImplementedError("the torch fallback of moe_align does not count the inactive prefix")
    from sglang.kernels.ops.lora.moe import virtual_experts as ve

    fn = ve._align_block_size_torch
    fn = getattr(fn, "_torchdynamo_orig_callable", None) or getattr(fn, "__wrapped__", None) or fn
    # The JIT takes num_route_buckets + 1 (+1-offset ids, -1 -> bucket 0); the fallback takes the route
    # buckets and puts the invalid ids in a last sentinel bucket whose blocks are labelled -1.
    s, e, n = fn(topk_ids, block_size, num_experts - 1)
    sorted_token_ids.copy_(s[: sorted_token_ids.numel()])
    expert_ids.copy_(e[: expert_ids.numel()])
    num_tokens_post_pad[:1].copy_(n)


def _hint(name: str) -> type:
    return type(name, (), {"__doc__": "a name SGLang imports for type hints only"})


def install() -> None:
    """Put each stand-in into ``sys.modules`` where the real module does not import (idempotent)."""
    for name, doc, attrs in (
        ("sglang.srt.utils", "cached_triton_kernel, get_device_name",
         {"cached_triton_kernel": _cached_triton_kernel, "get_device_name": _get_device_name}),
        ("sglang.srt.utils.common", "empty_device_cache, direct_register_custom_op",
         {"empty_device_cache": _empty_device_cache, "direct_register_custom_op": _direct_register_custom_op}),
        ("sglang.srt.utils.hf_transformers_utils", "a type hint", {"AutoConfig": _hint("AutoConfig")}),
        ("sglang.srt.environ", "envs", {"envs": _Envs()}),
        ("sglang.srt.model_executor.forward_batch_info", "a type hint", {"ForwardBatch": _hint("ForwardBatch")}),
        ("sglang.srt.runtime_context", "a type hint", {"LoRABatchLayout": _hint("LoRABatchLayout")}),
        ("sglang.kernels.jit.utils", "is_arch_support_pdl", {"is_arch_support_pdl": _is_arch_support_pdl}),
        ("sglang.kernels.ops.moe.moe_align", "moe_align_block_size from SGLang's torch fallback",
         {"moe_align_block_size": _moe_align_block_size_from_torch_fallback}),
    ):
        stand_in(name, lambda name=name, doc=doc, attrs=attrs: package(name, doc, **attrs))
