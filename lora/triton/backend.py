"""The "triton" backend: the two primitives as Triton kernels (see shrink.py and expand.py).

Public ops come from :class:`~lora.backend.BaseLoRABackend` (validation, then shrink -> expand).

``prepare`` (run by ``set_batch_info``) derives the batch's grouping by adapter once, with one
kernel launch, into three persistent int32 buffers (:class:`~lora.triton.grouping.GroupMeta`: rows
per slot, the covered row count, the covered rows grouped by slot); every shrink and expand
launch of the batch reads them instead of scanning the segments. The launch reads only shapes on the
host and the buffers never move once reserved (or captured), so a CUDA graph captured once replays
correctly after the engine writes a new batch into the same batch-info tensors and calls
``set_batch_info`` again (or captures ``prepare`` at the head of the graph): see
:mod:`lora.backend`. The split-K scratch is per stream and never freed under a graph
(:mod:`.scratch`).
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
import triton  # noqa: F401  (a missing triton makes the registry report the "triton" extra)

from ..backend import BaseLoRABackend
from . import tiling
from .expand import lora_expand
from .fused_decode import lora_fused_decode
from .grouping import GroupMeta, derive, row_order_size
from .scratch import scratch_for
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

    meta: GroupMeta | None = None

    def prepare(self, batch_info) -> None:
        tokens, _ = self.capacity(batch_info)
        dev, slots = batch_info.device, batch_info.num_lora + 1
        self.meta = derive(batch_info, GroupMeta(
            self.buffer("group_rows", slots, torch.int32, dev),
            self.buffer("group_start", slots, torch.int32, dev),
            self.buffer("row_order", row_order_size(batch_info.num_lora, tokens), torch.int32, dev),
        ))

    def shrink(self, x: torch.Tensor, weights: torch.Tensor, stack_num: int) -> torch.Tensor:
        chain = tiling.pdl_chain(x.shape[0], weights.shape[0], x.device)
        return lora_shrink(x, weights, stack_num, self.batch_info, meta=self.meta, pdl_trigger=chain)

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        pdl = tiling.PDL_ANY if tiling.pdl_chain(x.shape[0], weights.shape[0], x.device) else tiling.PDL_OFF
        return lora_expand(x, weights, output_offset, max_slice_width, base_output, self.batch_info, meta=self.meta,
                           pdl=pdl)

    def shrink_expand(self, x, a, b, output_offset, max_slice_width, base_output, stack_num):
        # Decode-sized QKV / gate-up: one launch where this device's plan table chose it (fused_decode.py).
        plan = tiling.plan_fused(x.shape[0], x.shape[1], stack_num, a.shape[1] // stack_num, b.shape[1], max_slice_width,
                                 a.shape[0], self.batch_info.bs, x.dtype, x.device)
        if plan is not None:
            return lora_fused_decode(x, a, b, output_offset, max_slice_width, base_output, self.batch_info, stack_num,
                                     plan, meta=self.meta)
        # The intermediate lives in this stream's scratch: no allocation per call.
        s, n = x.shape[0], a.shape[1]
        shape = (s, x.shape[1], stack_num, a.shape[1] // stack_num, b.shape[1], max_slice_width, a.shape[0],
                 self.batch_info.bs, x.device)
        # Decode-sized batches (Hopper+, tiling.pdl_chain): the expand is the shrink's programmatic dependent. It
        # loads its first B and base_output tiles while the shrink finishes and reads xa once the shrink's grid
        # is complete (measured on the H200: qkv 10.5 -> 8.1 us at 64 tokens).
        # Where the device's table measured the pair faster without PDL (tiling.pair_pdl), both launch plainly.
        pair = tiling.pair_pdl(*shape)
        pdl = tiling.PDL_SHRINK if pair else tiling.PDL_OFF
        # Where the table chose it (tiling.pair_partials), the shrink, split that many ways in K, leaves its
        # float32 partials in scratch and the expand sums them: no split-K finish in the shrink.
        splits = tiling.pair_partials(*shape)
        plan = tiling.plan_shrink(s, x.shape[1], n, a.shape[0], self.batch_info.bs, x.dtype, x.device) if splits else None
        if plan is not None and plan.group_grid:  # the decode layout, split as the pair's entry says
            plan = replace(plan, split_k=splits)
            parts = scratch_for(x.device).named("partials", splits * s * n, torch.float32)
            parts = lora_shrink(x, a, stack_num, self.batch_info, plan=plan, meta=self.meta, pdl_trigger=pair,
                                partials=parts)
            return lora_expand(parts, b, output_offset, max_slice_width, base_output, self.batch_info, meta=self.meta,
                               pdl=pdl, x_splits=splits)
        xa = scratch_for(x.device).intermediate(s * n, x.dtype)[: s * n].view(s, n)
        lora_shrink(x, a, stack_num, self.batch_info, out=xa, meta=self.meta, pdl_trigger=pair)
        return lora_expand(xa, b, output_offset, max_slice_width, base_output, self.batch_info, meta=self.meta, pdl=pdl)
