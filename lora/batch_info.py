"""Batch metadata of one multi-LoRA segment GEMM call.

A batch of ``s`` tokens is cut into ``bs`` contiguous segments; segment ``i`` covers rows
``[seg_indptr[i], seg_indptr[i+1])`` and uses adapter slot ``weight_indices[i]``. Each slot ``w``
has a real rank ``lora_ranks[w]`` (0 = no adapter loaded) and a scaling ``scalings[w]`` (alpha / r).

Every tensor lives on the device of the activations, so kernels read it without a host
synchronisation and a CUDA graph can be replayed after new values are copied into the same tensors.

For CUDA graphs an engine keeps one batch info of fixed shapes for the graph's lifetime:
:meth:`LoRABatchInfo.empty` makes it (``max_segments`` segments, all of length 0), and
:meth:`LoRABatchInfo.update_` writes each new batch into the same tensors (fewer segments are padded
with empty ones), so the pointers a captured graph holds stay valid.
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

    @classmethod
    def empty(cls, max_segments: int, num_lora: int, device: torch.device | str = "cpu") -> "LoRABatchInfo":
        """A batch info of ``max_segments`` empty segments (slot 0) over ``num_lora`` rank-0 slots.

        Its tensors are the persistent ones a CUDA graph captures: fill them with :meth:`update_`
        (before capture and before every replay), never replace them.
        """
        for name, v in (("max_segments", max_segments), ("num_lora", num_lora)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        dev = torch.device(device)
        i32 = dict(dtype=torch.int32, device=dev)
        return cls(
            bs=max_segments,
            seg_lens=torch.zeros(max_segments, **i32),
            seg_indptr=torch.zeros(max_segments + 1, **i32),
            max_len=0,
            weight_indices=torch.zeros(max_segments, **i32),
            lora_ranks=torch.zeros(num_lora, **i32),
            scalings=torch.ones(num_lora, dtype=torch.float32, device=dev),
        )

    def update_(
        self,
        seg_lens: Sequence[int] | torch.Tensor,
        weight_indices: Sequence[int] | torch.Tensor,
        lora_ranks: Sequence[int] | torch.Tensor | None = None,
        scalings: Sequence[float] | torch.Tensor | None = None,
    ) -> "LoRABatchInfo":
        """Write a new batch into this batch info's tensors in place (no tensor is replaced); returns self.

        ``seg_lens`` / ``weight_indices`` may hold fewer than ``bs`` segments: the rest become empty
        segments of slot 0. ``lora_ranks`` / ``scalings`` (one per slot) are left as they are when None.
        ``seg_indptr`` is recomputed on the device. Host values (lists, CPU tensors) are checked like
        :meth:`from_segments` checks them and copied without a device synchronisation; values already
        on the device are copied device-to-device and trusted (nothing is read back), so this can run
        on the stream right before a graph replay. ``max_len`` is updated when the lengths are host values
(kernels never read it). Every host value is checked before anything is written.
        """
        n = int(seg_lens.shape[0]) if isinstance(seg_lens, torch.Tensor) else len(seg_lens)
        nw = int(weight_indices.shape[0]) if isinstance(weight_indices, torch.Tensor) else len(weight_indices)
        if nw != n:
            raise ValueError(f"weight_indices has {nw} entries but seg_lens has {n}: one slot per segment")
        if n > self.bs:
            raise ValueError(f"{n} segments do not fit this batch info's {self.bs} (made for bs={self.bs})")
        # check every host value first, then write: a rejected update leaves the batch info as it was
        writes = [
            ("seg_lens", self.seg_lens[:n], self._checked("seg_lens", seg_lens, int, n)),
            ("weight_indices", self.weight_indices[:n], self._checked("weight_indices", weight_indices, int, n)),
        ]
        if lora_ranks is not None:
            writes.append(("lora_ranks", self.lora_ranks, self._checked("lora_ranks", lora_ranks, int, self.num_lora)))
        if scalings is not None:
            writes.append(("scalings", self.scalings, self._checked("scalings", scalings, float, self.num_lora)))
        lens = writes[0][2]
        if isinstance(lens, list) and sum(lens) >= 2**31:
            raise ValueError(f"{sum(lens)} tokens do not fit the int32 seg_indptr")
        slots = writes[1][2]
        bad = [w for w in slots if not 0 <= w < self.num_lora] if isinstance(slots, list) else []
        if bad:
            raise ValueError(f"weight_indices {bad} out of range [0, {self.num_lora}) (num_lora = len(lora_ranks))")
        for _, dst, values in writes:
            if isinstance(values, torch.Tensor):
                dst.copy_(values, non_blocking=True)
            else:
                src = torch.tensor(values, dtype=dst.dtype)
                dst.copy_(src.pin_memory() if dst.device.type == "cuda" else src, non_blocking=True)
        self.seg_lens[n:].zero_()
        self.weight_indices[n:].zero_()
        self.seg_indptr[:1].zero_()
        torch.cumsum(self.seg_lens, 0, dtype=torch.int32, out=self.seg_indptr[1:])
        if isinstance(lens, list):
            self.max_len = max(lens, default=0)
        return self

    @staticmethod
    def _checked(name: str, values, kind, expect: int):
        """A device tensor as it is (trusted, shape checked), else a checked host list of ``expect`` values."""
        if isinstance(values, torch.Tensor) and values.device.type != "cpu":
            if tuple(values.shape) != (expect,):
                raise ValueError(f"{name} has shape {tuple(values.shape)}, expected ({expect},)")
            return values
        host = _as_host_list(name, values, kind)
        if len(host) != expect:
            raise ValueError(f"{name} has {len(host)} entries, expected {expect}")
        if name in ("seg_lens", "lora_ranks") and any(v < 0 for v in host):
            raise ValueError(f"{name} must be >= 0, got {host}")
        if name == "scalings" and any(not torch.isfinite(torch.tensor(v)) for v in host):
            raise ValueError(f"scalings must be finite, got {host}")
        return host

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
