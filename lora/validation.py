"""Checks shared by every backend, run before any kernel launch.

They read shapes, dtypes, devices and strides only, so they never synchronise with the device.
Values of metadata tensors (ranks, offsets) are checked too when those tensors live on the CPU,
where reading them is free; on an accelerator they were checked when built
(:meth:`LoRABatchInfo.from_segments`) and are trusted afterwards, so that a call stays capturable
in a CUDA graph.
"""

from __future__ import annotations

import torch

from .batch_info import LoRABatchInfo

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Stacked shrink widths: 1 (o/down), 2 (gate-up), 3 (QKV), 4 (SGLang's GDN ``in_proj_qkvz``).
MAX_STACK = 4


def check_activation(name: str, t, *, ndim: int = 2) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in ACTIVATION_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; supported: float16, bfloat16, float32")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (got strides {t.stride()}); call .contiguous() first")


def check_like(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor, *, ndim: int) -> None:
    """``t`` is a contiguous floating tensor with the dtype and device of ``ref``."""
    check_activation(name, t, ndim=ndim)
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; they must match")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; they must share a device")


def check_stack_num(stack_num) -> int:
    if isinstance(stack_num, bool) or not isinstance(stack_num, int):
        raise TypeError(f"stack_num must be an int, got {type(stack_num).__name__}")
    if not 1 <= stack_num <= MAX_STACK:
        raise ValueError(f"stack_num must be 1, 2, 3 or 4, got {stack_num}")
    return stack_num


_WHY_DTYPE = {
    "seg_lens": "the kernels read 32-bit segment lengths; pass seg_lens.to(torch.int32)",
    "seg_indptr": "the kernels read 32-bit row offsets; pass seg_indptr.to(torch.int32)",
    "weight_indices": "the kernels read 32-bit slot indices; pass weight_indices.to(torch.int32)",
    "lora_ranks": "the kernels read 32-bit ranks (SGLang keeps int64 ranks); pass lora_ranks.to(torch.int32)",
    "scalings": "scalings are applied in float32 whatever the activation dtype; pass scalings.float()",
}
_HINT = " (LoRABatchInfo.from_segments converts host values; update_ writes into existing tensors)"


def check_batch_info_fields(bi: LoRABatchInfo) -> str | None:
    """Why the kernels cannot read ``bi`` (shapes of its own fields, dtypes, one device), or None.

    Reads shapes, dtypes and devices only. The weights-dependent checks are in :func:`check_batch_info`.
    """
    expected = {
        "seg_lens": ((bi.bs,), torch.int32),
        "seg_indptr": ((bi.bs + 1,), torch.int32),
        "weight_indices": ((bi.bs,), torch.int32),
        "lora_ranks": (None, torch.int32),
        "scalings": (None, torch.float32),
    }
    device = None
    for field, (shape, dtype) in expected.items():
        t = getattr(bi, field)
        if not isinstance(t, torch.Tensor):
            return f"batch_info.{field} must be a torch.Tensor, got {type(t).__name__}"
        if t.dim() != 1 or (shape is not None and tuple(t.shape) != shape):
            return f"batch_info.{field} has shape {tuple(t.shape)}, expected {shape or '(num_lora,)'}"
        if t.dtype != dtype:
            return f"batch_info.{field} has dtype {t.dtype}, expected {dtype}: {_WHY_DTYPE[field]}{_HINT}"
        if device is None:
            device = t.device
        elif t.device != device:
            return f"batch_info.{field} is on {t.device} but batch_info.seg_lens is on {device}"
    if bi.scalings.shape != bi.lora_ranks.shape:
        return f"batch_info.scalings has shape {tuple(bi.scalings.shape)} but lora_ranks has {tuple(bi.lora_ranks.shape)}"
    return None


def check_batch_info(bi: LoRABatchInfo | None, x: torch.Tensor, num_lora: int, max_r: int) -> LoRABatchInfo:
    """Metadata shapes/dtypes/devices agree with ``x`` and the weights (``num_lora`` slots of ``max_r``)."""
    if bi is None:
        raise RuntimeError("no batch info: call set_batch_info(LoRABatchInfo...) before running an op")
    expected = {
        "seg_lens": ((bi.bs,), torch.int32),
        "seg_indptr": ((bi.bs + 1,), torch.int32),
        "weight_indices": ((bi.bs,), torch.int32),
        "lora_ranks": ((num_lora,), torch.int32),
        "scalings": ((num_lora,), torch.float32),
    }
    for field, (shape, dtype) in expected.items():
        t = getattr(bi, field)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"batch_info.{field} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            hint = " (one per adapter slot of the weights)" if field in ("lora_ranks", "scalings") else ""
            raise ValueError(f"batch_info.{field} has shape {tuple(t.shape)}, expected {shape}{hint}")
        if t.dtype != dtype:
            raise TypeError(f"batch_info.{field} has dtype {t.dtype}, expected {dtype}: {_WHY_DTYPE[field]}{_HINT}")
        if t.device != x.device:
            raise ValueError(f"batch_info.{field} is on {t.device} but x is on {x.device}")
    if bi.lora_ranks.device.type == "cpu" and num_lora:
        ranks = bi.lora_ranks.tolist()  # (no tensor made: an op call allocates nothing it does not return)
        if max(ranks) > max_r or min(ranks) < 0:
            raise ValueError(
                f"batch_info.lora_ranks {bi.lora_ranks.tolist()} must lie in [0, max_r={max_r}] of the weights"
            )
    if bi.seg_indptr.device.type == "cpu" and bi.bs:
        covered = int(bi.seg_indptr[-1])
        if covered > x.shape[0]:
            raise ValueError(f"batch_info segments cover {covered} tokens but x has {x.shape[0]} rows")
    return bi


def check_offsets(output_offset, base_n: int, stack_num: int, max_slice_width: int, x: torch.Tensor) -> None:
    """``output_offset`` is a (stack_num+1,) integer tensor on x's device; values checked on CPU."""
    if not isinstance(output_offset, torch.Tensor):
        raise TypeError(f"output_offset must be a torch.Tensor, got {type(output_offset).__name__}")
    if output_offset.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"output_offset must be int32 or int64, got {output_offset.dtype}")
    if tuple(output_offset.shape) != (stack_num + 1,):
        raise ValueError(f"output_offset must have shape ({stack_num + 1},), got {tuple(output_offset.shape)}")
    if output_offset.device != x.device:
        raise ValueError(f"output_offset is on {output_offset.device} but x is on {x.device}")
    if isinstance(max_slice_width, bool) or not isinstance(max_slice_width, int):
        raise TypeError(f"max_qkv_out_dim must be an int, got {type(max_slice_width).__name__}")
    if not 0 < max_slice_width <= base_n:
        raise ValueError(f"max_qkv_out_dim={max_slice_width} must lie in (0, {base_n}] (rows of the B weights)")
    if output_offset.device.type == "cpu":
        offs = output_offset.tolist()
        widths = [b - a for a, b in zip(offs, offs[1:])]
        if offs[0] != 0 or offs[-1] != base_n or any(w <= 0 for w in widths):
            raise ValueError(
                f"output_offset {offs} must rise strictly from 0 to {base_n} (rows of the B weights)"
            )
        if max(widths) > max_slice_width:
            raise ValueError(f"output_offset {offs} has a slice wider than max_qkv_out_dim={max_slice_width}")
