"""An example third-party LoRA backend: the two primitives, written as simply as torch allows.

A backend subclasses ``lora.BaseLoRABackend`` and implements ``shrink`` and ``expand``; the base
class validates every public call and composes the four public ops (shrink, expand, QKV, gate-up)
from them. Registered through the entry point in this package's ``pyproject.toml``; checked with
``lora.testing.check_backend("example")``.
"""

from __future__ import annotations

import torch

from lora import BaseLoRABackend

__all__ = ["ExampleLoRABackend"]


class ExampleLoRABackend(BaseLoRABackend):
    description = "example plugin (tests/lora/plugin_example): a loop over segments in plain torch"

    def _segments(self):
        """(start, end, slot, rank) of every segment with work: rows, and a slot of rank > 0."""
        bi = self.batch_info
        ptr, slots, ranks = bi.seg_indptr.tolist(), bi.weight_indices.tolist(), bi.lora_ranks.tolist()
        for i, w in enumerate(slots):
            if ptr[i + 1] > ptr[i] and ranks[w] > 0:
                yield ptr[i], ptr[i + 1], w, ranks[w]

    def shrink(self, x, weights, stack_num):
        # x (s, K) -> (s, stack_num*max_r): columns [0, stack_num*r) of a segment's rows, zeros elsewhere
        out = torch.zeros((x.shape[0], weights.shape[1]), dtype=x.dtype, device=x.device)
        for start, end, w, r in self._segments():
            a = weights[w, : stack_num * r].float()
            out[start:end, : stack_num * r] = (x[start:end].float() @ a.T).to(x.dtype)
        return out

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        # base_output[:, off[j]:off[j+1]] += scaling * x[:, j*r:(j+1)*r] @ weights[w, off[j]:off[j+1], :r].T
        offsets = output_offset.tolist()
        scalings = self.batch_info.scalings.tolist()
        for start, end, w, r in self._segments():
            acc = base_output[start:end].float()
            for j, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
                xj = x[start:end, j * r : (j + 1) * r].float()
                acc[:, lo:hi] += scalings[w] * (xj @ weights[w, lo:hi, :r].float().T)
            base_output[start:end] = acc.to(base_output.dtype)
        return base_output
