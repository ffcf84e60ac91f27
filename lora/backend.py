"""BaseLoRABackend: the public LoRA ops, their validation, and their composition from two primitives.

A backend supplies

* ``shrink(x, weights, stack_num)``: x (s, K) -> (s, stack_num*max_r); the rows of a segment with slot w
  and rank r get ``x @ weights[w, :stack_num*r].T`` in columns ``[0, stack_num*r)`` and zeros after.
* ``expand(x, weights, output_offset, max_slice_width, base_output)``: for slice j of
  ``stack = len(output_offset) - 1``, ``base_output[:, off[j]:off[j+1]] += scaling[w] *
  x[:, j*r:(j+1)*r] @ weights[w, off[j]:off[j+1], :r].T`` in place; returns ``base_output``.

Both see inputs that :mod:`lora.validation` already accepted, accumulate in float32 and write the
activation dtype. Rows of rank-0 slots, zero-length segments and rows after the last segment are
zero (shrink) or untouched (expand). Plain expand is one slice ``[0, N]``, QKV three slices with the
caller's (GQA) offsets, gate-up two slices ``[0, n, 2n]``. QKV and gate-up, once validated, run
``shrink_expand`` (shrink, then expand); a backend that keeps the intermediate in its own layout
overrides that, so the validation in the public ops always runs first.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from . import validation as V
from .batch_info import LoRABatchInfo

__all__ = ["BaseLoRABackend"]


class BaseLoRABackend:
    """Base of every LoRA backend; build one as ``get_backend_from_name(name)(name, batch_info)``."""

    #: One line shown by ``python -m lora list``.
    description: ClassVar[str] = ""

    def __init__(self, name: str, batch_info: LoRABatchInfo | None = None):
        reason = type(self).unavailable_reason()
        if reason is not None:  # fail here, with the registry's reason, not at the first op call
            from .registry import BackendUnavailableError

            raise BackendUnavailableError(f"LoRA backend {name!r} cannot run here: {reason}")
        self.name = name
        self.batch_info: LoRABatchInfo | None = None
        self._offset_tensors: dict[tuple, torch.Tensor] = {}
        if batch_info is not None:
            self.set_batch_info(batch_info)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run on this machine, or None when it can."""
        return None

    def set_batch_info(self, batch_info: LoRABatchInfo) -> None:
        if not isinstance(batch_info, LoRABatchInfo):
            raise TypeError(f"batch_info must be a LoRABatchInfo, got {type(batch_info).__name__}")
        self.batch_info = batch_info

    # ---- the two primitives a backend implements -------------------------------------------------

    def shrink(self, x: torch.Tensor, weights: torch.Tensor, stack_num: int) -> torch.Tensor:
        raise NotImplementedError(f"backend {self.name!r} does not implement shrink")

    def expand(
        self,
        x: torch.Tensor,
        weights: torch.Tensor,
        output_offset: torch.Tensor,
        max_slice_width: int,
        base_output: torch.Tensor,
    ) -> torch.Tensor:
        raise NotImplementedError(f"backend {self.name!r} does not implement expand")

    # ---- the public ops --------------------------------------------------------------------------

    def run_lora_a_sgemm(self, x: torch.Tensor, weights: torch.Tensor, stack_num: int = 1) -> torch.Tensor:
        """Shrink: x (s, K), weights (num_lora, stack_num*max_r, K) -> (s, stack_num*max_r).

        Columns ``[0, stack_num*r)`` of a segment's rows hold ``x @ weights[w, :stack_num*r].T``
        (the adapter packed as ``[A_1; ...; A_stack]``, r rows each); later columns are 0.
        """
        self._check_shrink(x, "weights", weights, stack_num)
        return self.shrink(x, weights, stack_num)

    def run_lora_b_sgemm(
        self, x: torch.Tensor, weights: torch.Tensor, base_output: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Expand: x (s, max_r), weights (num_lora, N, max_r) -> (s, N).

        Rows of a segment get ``scalings[w] * x[:, :r] @ weights[w, :, :r].T`` added into
        ``base_output`` in place (and that tensor is returned), or into zeros when it is None.
        """
        V.check_activation("x", x)
        V.check_like("weights", weights, "x", x, ndim=3)
        max_r, n = weights.shape[2], weights.shape[1]
        if x.shape[1] != max_r:
            raise ValueError(f"x has {x.shape[1]} columns but weights (num_lora, N, max_r) has max_r={max_r}")
        V.check_batch_info(self.batch_info, x, weights.shape[0], max_r)
        out = self._output("base_output", base_output, x, n)
        return self.expand(x, weights, self._offsets((0, n), x.device), n, out)

    def run_qkv_lora(
        self,
        x: torch.Tensor,
        qkv_lora_a: torch.Tensor,
        qkv_lora_b: torch.Tensor,
        output_offset: torch.Tensor,
        max_qkv_out_dim: int,
        base_output: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """QKV: A (num_lora, 3*max_r, K), B (num_lora, q+2*kv, max_r), output_offset [0, q, q+kv, q+2*kv].

        Slice j adds ``scalings[w] * (x @ A[w, j*r:(j+1)*r].T) @ B[w, off[j]:off[j+1], :r].T`` into
        output columns ``[off[j], off[j+1])``. ``max_qkv_out_dim`` is the widest slice.
        """
        self._check_shrink(x, "qkv_lora_a", qkv_lora_a, 3)
        self._check_b("qkv_lora_b", qkv_lora_b, "qkv_lora_a", qkv_lora_a, 3, x)
        n = qkv_lora_b.shape[1]
        V.check_offsets(output_offset, n, 3, max_qkv_out_dim, x)
        out = self._output("base_output", base_output, x, n)
        return self.shrink_expand(x, qkv_lora_a, qkv_lora_b, output_offset, max_qkv_out_dim, out, 3)

    def run_gate_up_lora(
        self,
        x: torch.Tensor,
        gate_up_lora_a: torch.Tensor,
        gate_up_lora_b: torch.Tensor,
        base_output: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gate-up: A (num_lora, 2*max_r, K), B (num_lora, 2*n, max_r) -> (s, 2*n).

        Gate uses A rows [0, r) and B rows [0, n); up uses A rows [r, 2r) and B rows [n, 2n).
        """
        self._check_shrink(x, "gate_up_lora_a", gate_up_lora_a, 2)
        self._check_b("gate_up_lora_b", gate_up_lora_b, "gate_up_lora_a", gate_up_lora_a, 2, x)
        two_n = gate_up_lora_b.shape[1]
        if two_n % 2:
            raise ValueError(f"gate_up_lora_b has {two_n} output rows; gate and up need an even number (2*n)")
        out = self._output("base_output", base_output, x, two_n)
        offsets = self._offsets((0, two_n // 2, two_n), x.device)
        return self.shrink_expand(x, gate_up_lora_a, gate_up_lora_b, offsets, two_n // 2, out, 2)

    def shrink_expand(self, x, a, b, output_offset, max_slice_width, base_output, stack_num):
        """The fused ops on validated inputs: ``expand(shrink(x, a, stack_num), b, ...)`` into ``base_output``."""
        return self.expand(self.shrink(x, a, stack_num), b, output_offset, max_slice_width, base_output)

    # ---- helpers ---------------------------------------------------------------------------------

    def _check_shrink(self, x, a_name: str, a: torch.Tensor, stack_num) -> None:
        V.check_stack_num(stack_num)
        V.check_activation("x", x)
        V.check_like(a_name, a, "x", x, ndim=3)
        if a.shape[2] != x.shape[1]:
            raise ValueError(f"{a_name} has K={a.shape[2]} (last dim) but x has {x.shape[1]} columns")
        if a.shape[1] % stack_num or a.shape[1] == 0:
            raise ValueError(
                f"{a_name} has {a.shape[1]} rows, not a positive multiple of stack_num={stack_num} (stack_num*max_r)"
            )
        V.check_batch_info(self.batch_info, x, a.shape[0], a.shape[1] // stack_num)

    @staticmethod
    def _check_b(b_name: str, b, a_name: str, a: torch.Tensor, stack_num: int, x: torch.Tensor) -> None:
        V.check_like(b_name, b, "x", x, ndim=3)
        if b.shape[0] != a.shape[0]:
            raise ValueError(f"{b_name} has {b.shape[0]} adapter slots but {a_name} has {a.shape[0]}")
        if b.shape[2] != a.shape[1] // stack_num:
            raise ValueError(
                f"{b_name} has max_r={b.shape[2]} (last dim) but {a_name} has {a.shape[1]} rows = {stack_num}*max_r"
            )

    @staticmethod
    def _output(name: str, base_output, x: torch.Tensor, n: int) -> torch.Tensor:
        if base_output is None:
            return torch.zeros((x.shape[0], n), dtype=x.dtype, device=x.device)
        V.check_like(name, base_output, "x", x, ndim=2)
        if tuple(base_output.shape) != (x.shape[0], n):
            raise ValueError(f"{name} has shape {tuple(base_output.shape)}, expected {(x.shape[0], n)}")
        return base_output

    def _offsets(self, values: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Slice offsets as a device tensor, made once per (values, device) so replays copy nothing."""
        key = (values, device)
        t = self._offset_tensors.get(key)
        if t is None:
            t = self._offset_tensors[key] = torch.tensor(values, dtype=torch.int32, device=device)
        return t
