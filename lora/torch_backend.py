"""The "torch" backend: plain, readable torch, the reference every other backend is checked against.

Once per batch (``set_batch_info``) it groups the rows of the batch by adapter slot: the rows of every
slot with work, gathered from all the segments that use it, as one index tensor on the batch's
device (one host read of the metadata per batch). An op call then runs one float32 matmul per used
slot, with no host synchronisation, and rounds once to the activation dtype. Runs
wherever torch runs; what a user on a device without Triton or Mosaic GPU gets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .backend import BaseLoRABackend
from .batch_info import LoRABatchInfo

__all__ = ["TorchLoRABackend"]


@dataclass(frozen=True)
class _SlotRows:
    slot: int
    rank: int
    rows: torch.Tensor  # int64 row indices on the batch's device, in batch order


class TorchLoRABackend(BaseLoRABackend):
    description = "reference: rows grouped by adapter, one float32 matmul per used slot, in plain torch (CPU or GPU)"

    def prepare(self, batch_info: LoRABatchInfo) -> None:
        """Group the batch's rows by slot (slots of rank 0 and empty segments have no rows to work on)."""
        indptr = batch_info.seg_indptr.tolist()
        slots = batch_info.weight_indices.tolist()
        ranks = batch_info.lora_ranks.tolist()
        rows: dict[int, list[torch.Tensor]] = {}
        for i, w in enumerate(slots):
            if indptr[i + 1] > indptr[i] and ranks[w] > 0:
                rows.setdefault(w, []).append(torch.arange(indptr[i], indptr[i + 1]))
        device = batch_info.seg_indptr.device
        self._groups = [_SlotRows(w, ranks[w], torch.cat(parts).to(device)) for w, parts in sorted(rows.items())]

    def shrink(self, x, weights, stack_num):
        out = torch.zeros((x.shape[0], weights.shape[1]), dtype=x.dtype, device=x.device)
        for g in self._groups:
            a = weights[g.slot, : stack_num * g.rank].float()
            out[g.rows, : stack_num * g.rank] = (x[g.rows].float() @ a.T).to(x.dtype)
        return out

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        stack, n = output_offset.shape[0] - 1, base_output.shape[1]
        cols = torch.arange(n, device=x.device)
        # slice j owns the output columns [offset[j], offset[j+1]); found on the device, no host read
        slice_of_col = torch.bucketize(cols, output_offset[1:].long(), right=True)
        in_slice = (slice_of_col == torch.arange(stack, device=x.device)[:, None]).float()  # (stack, N)
        scalings = self.batch_info.scalings
        for g in self._groups:
            r = g.rank
            bt = weights[g.slot, :, :r].float().T  # (r, N): the slot's B up to its real rank
            # One matmul per slot: x's columns [j*r, (j+1)*r) meet B only in slice j's output columns.
            b_stacked = (in_slice[:, None, :] * bt).reshape(stack * r, n)  # (stack*r, N)
            delta = x[g.rows, : stack * r].float() @ b_stacked
            base_output[g.rows] = (base_output[g.rows].float() + scalings[g.slot] * delta).to(base_output.dtype)
        return base_output
