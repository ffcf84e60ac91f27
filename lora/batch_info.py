"""Batch metadata of one multi-LoRA segment GEMM call.

A batch of ``s`` tokens is cut into ``bs`` contiguous segments; segment ``i`` covers rows
``[seg_indptr[i], seg_indptr[i+1])`` and uses adapter slot ``weight_indices[i]``. Each slot ``w``
has a real rank ``lora_ranks[w]`` (0 = no adapter loaded) and a scaling ``scalings[w]`` (alpha / r).

Every tensor lives on the device of the activations, so kernels read it without a host
synchronisation and a CUDA graph can be replayed after new values are copied into the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["LoRABatchInfo"]


def _as_host_list(name: str, values, kind) -> list:
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(values.shape)}")
        values = values.tolist()
    elif hasattr(values, "tolist"):  # numpy arrays
        values = values.tolist()
    try:
        out = [kind(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a sequence of {kind.__name__}s: {exc}") from None
    return out


@dataclass
class LoRABatchInfo:
    """Segments of a batch and the adapter slots they use.

    Attributes:
        bs: number of segments.
        seg_lens: (bs,) int32, tokens per segment (0 allowed: the segment does nothing).
        seg_indptr: (bs+1,) int32, ``seg_indptr[0] == 0`` and ``seg_indptr[i+1] = seg_indptr[i] + seg_lens[i]``.
        max_len: largest segment length, a Python int (kernels never size their grid by it).
        weight_indices: (bs,) int32, the adapter slot of each segment; segments may share a slot.
        lora_ranks: (num_lora,) int32, the real rank of each slot, 0 <= r <= max_r of the weight buffers.
        scalings: (num_lora,) float32, alpha / r of each slot.

    Rows of the activations not covered by any segment (beyond ``seg_indptr[-1]``) are treated
    like rows of a rank-0 segment: shrink writes zeros there and expand leaves them untouched.
    """

    bs: int
    seg_lens: torch.Tensor
    seg_indptr: torch.Tensor
    max_len: int
    weight_indices: torch.Tensor
    lora_ranks: torch.Tensor
    scalings: torch.Tensor

    @property
    def num_lora(self) -> int:
        return int(self.lora_ranks.shape[0])

    @property
    def device(self) -> torch.device:
        return self.seg_lens.device

    @classmethod
    def from_segments(
        cls,
        seg_lens: Sequence[int] | torch.Tensor,
        weight_indices: Sequence[int] | torch.Tensor,
        lora_ranks: Sequence[int] | torch.Tensor,
        scalings: Sequence[float] | torch.Tensor,
        device: torch.device | str = "cpu",
    ) -> "LoRABatchInfo":
        """Build batch info from host values, checking them once (values are not re-checked per call).

        Raises ValueError when lengths disagree, a length or rank is negative, a weight index is out
        of ``[0, num_lora)``, or a scaling is not finite.
        """
        lens = _as_host_list("seg_lens", seg_lens, int)
        widx = _as_host_list("weight_indices", weight_indices, int)
        ranks = _as_host_list("lora_ranks", lora_ranks, int)
        scales = _as_host_list("scalings", scalings, float)
        if len(widx) != len(lens):
            raise ValueError(
                f"weight_indices has {len(widx)} entries but seg_lens has {len(lens)}: one slot per segment"
            )
        if len(scales) != len(ranks):
            raise ValueError(f"scalings has {len(scales)} entries but lora_ranks has {len(ranks)}: one per slot")
        if any(n < 0 for n in lens):
            raise ValueError(f"seg_lens must be >= 0, got {lens}")
        if any(r < 0 for r in ranks):
            raise ValueError(f"lora_ranks must be >= 0, got {ranks}")
        bad = [w for w in widx if not 0 <= w < len(ranks)]
        if bad:
            raise ValueError(f"weight_indices {bad} out of range [0, {len(ranks)}) (num_lora = len(lora_ranks))")
        if any(not torch.isfinite(torch.tensor(v)) for v in scales):
            raise ValueError(f"scalings must be finite, got {scales}")
        indptr = [0]
        for n in lens:
            indptr.append(indptr[-1] + n)
        if indptr[-1] >= 2**31:
            raise ValueError(f"{indptr[-1]} tokens do not fit the int32 seg_indptr")
        dev = torch.device(device)
        return cls(
            bs=len(lens),
            seg_lens=torch.tensor(lens, dtype=torch.int32, device=dev),
            seg_indptr=torch.tensor(indptr, dtype=torch.int32, device=dev),
            max_len=max(lens, default=0),
            weight_indices=torch.tensor(widx, dtype=torch.int32, device=dev),
            lora_ranks=torch.tensor(ranks, dtype=torch.int32, device=dev),
            scalings=torch.tensor(scales, dtype=torch.float32, device=dev),
        )

    def to(self, device: torch.device | str) -> "LoRABatchInfo":
        """A copy with every tensor on ``device``."""
        return LoRABatchInfo(
            bs=self.bs,
            seg_lens=self.seg_lens.to(device),
            seg_indptr=self.seg_indptr.to(device),
            max_len=self.max_len,
            weight_indices=self.weight_indices.to(device),
            lora_ranks=self.lora_ranks.to(device),
            scalings=self.scalings.to(device),
        )
