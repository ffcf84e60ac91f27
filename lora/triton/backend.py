"""The "triton" backend: the two primitives as Triton kernels (see shrink.py and expand.py).

Public ops come from :class:`~lora.backend.BaseLoRABackend` (validation, then shrink -> expand).
Every launch reads only shapes on the host; the batch metadata stays on the device, so each op can
be captured in a CUDA graph and replayed after new metadata is copied into the same tensors.
"""

from __future__ import annotations

import os

import torch
import triton  # noqa: F401  (a missing triton makes the registry report the "triton" extra)

from ..backend import BaseLoRABackend
from . import tiling
from .expand import lora_expand
from .fused_decode import lora_fused_decode
from .shrink import lora_shrink

__all__ = ["TritonLoRABackend"]


class TritonLoRABackend(BaseLoRABackend):
    description = "Triton kernels grouped by adapter (split-K shrink, multi-slice fused expand); CUDA or TRITON_INTERPRET=1"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if os.environ.get("TRITON_INTERPRET") == "1":
            return None
        if torch.cuda.is_available():
            return None
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on Triton's CPU interpreter)"

    def shrink(self, x: torch.Tensor, weights: torch.Tensor, stack_num: int) -> torch.Tensor:
        return lora_shrink(x, weights, stack_num, self.batch_info)

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        return lora_expand(x, weights, output_offset, max_slice_width, base_output, self.batch_info)

    def shrink_expand(self, x, a, b, output_offset, max_slice_width, base_output, stack_num):
        # Decode-sized QKV / gate-up: one launch where this device's plan table chose it (lora/triton/fused_decode.py).
        plan = tiling.plan_fused(x.shape[0], x.shape[1], stack_num, a.shape[1] // stack_num, b.shape[1], max_slice_width,
                                 a.shape[0], self.batch_info.bs, x.dtype, x.device)
        if plan is None:
            return super().shrink_expand(x, a, b, output_offset, max_slice_width, base_output, stack_num)
        return lora_fused_decode(x, a, b, output_offset, max_slice_width, base_output, self.batch_info, stack_num, plan)
