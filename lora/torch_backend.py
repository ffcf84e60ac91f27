"""The "torch" backend: plain, readable torch, the oracle every other backend is checked against.

It loops over segments on the host (so it synchronises), computes each product in float32 and
rounds once to the activation dtype. Runs wherever torch runs.
"""

from __future__ import annotations

import torch

from .backend import BaseLoRABackend

__all__ = ["TorchLoRABackend"]


class TorchLoRABackend(BaseLoRABackend):
    description = "reference: a float32 loop over segments in plain torch (CPU or GPU)"

    def _segments(self):
        """(rows, slot, rank, scaling) of every segment that has work."""
        bi = self.batch_info
        indptr = bi.seg_indptr.tolist()
        slots = bi.weight_indices.tolist()
        ranks = bi.lora_ranks.tolist()
        scalings = bi.scalings.tolist()
        for i, w in enumerate(slots):
            start, end = indptr[i], indptr[i + 1]
            if end > start and ranks[w] > 0:
                yield slice(start, end), w, ranks[w], scalings[w]

    def shrink(self, x, weights, stack_num):
        out = torch.zeros((x.shape[0], weights.shape[1]), dtype=x.dtype, device=x.device)
        for rows, w, r, _ in self._segments():
            a = weights[w, : stack_num * r].float()
            out[rows, : stack_num * r] = (x[rows].float() @ a.T).to(x.dtype)
        return out

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        offs = output_offset.tolist()
        for rows, w, r, scaling in self._segments():
            for j, (lo, hi) in enumerate(zip(offs, offs[1:])):
                xj = x[rows, j * r : (j + 1) * r].float()
                b = weights[w, lo:hi, :r].float()
                acc = base_output[rows, lo:hi].float() + scaling * (xj @ b.T)
                base_output[rows, lo:hi] = acc.to(base_output.dtype)
        return base_output
