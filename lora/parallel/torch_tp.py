"""The LoRA ops of a tensor-parallel layer on ``torch.distributed``, around any registered backend.

:class:`TensorParallelLoRA` wraps one backend instance (any name in the registry: it calls the
backend's public ops, so their validation runs and the backend's two primitives do the work) and a
process group (NCCL on GPUs, gloo on CPUs). Each rank holds its part of the adapters as cut by
:mod:`lora.parallel.sharding`.

Column-parallel layers (QKV, gate-up, up-projections; x replicated, output dimension sharded):
each rank keeps all of A and its shard of B; shrink runs locally on the full x (the same ``(s,
stack*max_r)`` result on every rank) and expand writes the rank's local output shard. **No
collective.**

Row-parallel layers (o, down; x sharded on K, output full): each rank shrinks its slice of K with
its slice of A into a partial ``(s, stack*max_r)``, then

* ``reduce="all_reduce"`` (default): **one all-reduce (sum) of that partial** over the group
  (``s * stack * max_r`` elements of the activation dtype, or float32 with
  ``reduce_dtype=torch.float32``; a ring all-reduce moves ``2 (tp-1)/tp`` times that per rank),
  then expand with the full B into the **full output** -- the base layer's output *after* its own
  all-reduce, identical on every rank, so every rank adds the same update.
* ``reduce="fold"``: **no LoRA collective.** Expand the partial into the rank's *partial* base
  output, *before* the base layer's own all-reduce, or its reduce-scatter when the engine runs
  sequence parallelism. Expand is linear in its input, so the base layer's collective sums the
  LoRA update too. Same expand work per rank as ``all_reduce`` (the full N on all s rows); one
  collective fewer per layer -- at decode sizes that collective is pure latency.

Where the work and the bytes go (per row-parallel module, ``s`` tokens, rank ``r``, ``tp`` ranks):
the shrink reads ``K/tp`` columns of x and A on each rank; the all-reduce moves ``2 (tp-1)/tp * s*r``
elements per rank (``r / N`` of the base layer's own all-reduce of ``(s, N)``; at decode sizes a few
KiB, so its time is the collective's latency); the expand is *replicated*: every rank reads all of B
and writes all ``s x N`` outputs, as the single-device op does. The reduce-scatter form that would
split that expand by tokens (reduce-scatter the shrink result over rows, expand only the local rows
into a sequence-parallel base output) needs the batch's segments cut at the rank's row range, a
per-rank batch info, and is not provided: an engine that reduce-scatters its base output uses
``reduce="fold"``, which puts the update into that reduce-scatter at no extra collective.
:mod:`lora.parallel.cost` gives the on-paper figures, ``benchmarks/tp_bench.py`` measures them.

Precision: the primitives round the partial to the activation dtype (float32 accumulation inside
each rank), and the sum of ``tp`` partials is then rounded by the collective (NCCL reduces bf16 /
fp16 hop by hop in that dtype). Against the single-device op this adds up to ``tp`` roundings of
each element of an ``r``-wide vector (relative error ~ ``tp * 2**-9`` in bf16 at worst, typically
``sqrt(tp)`` times that), inside the bf16 / fp16 tolerances; ``reduce_dtype=torch.float32`` makes
the collective itself sum in float32 (2x its bytes for 16-bit activations).

Everything is capturable in a CUDA graph when the backend's ops are: the all-reduce is in place on
the shrink output, and the per-shard offsets are device tensors made once.
"""

from __future__ import annotations

import torch

from .. import validation as V
from ..backend import BaseLoRABackend
from ..batch_info import LoRABatchInfo
from .sharding import Shard

__all__ = ["TensorParallelLoRA", "REDUCE_MODES"]

REDUCE_MODES = ("all_reduce", "fold")


class TensorParallelLoRA:
    """The four LoRA ops of one tensor-parallel rank; build one per rank and process group.

    ``backend`` is an instance of any registered backend (``get_backend_from_name(name)(name)``);
    ``group`` a ``torch.distributed`` process group (None: the default group).
    """

    def __init__(self, backend: BaseLoRABackend, group=None, *, reduce_dtype: torch.dtype | None = None):
        import torch.distributed as dist

        if not isinstance(backend, BaseLoRABackend):
            raise TypeError(f"backend must be a BaseLoRABackend instance, got {type(backend).__name__}")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call torch.distributed.init_process_group first")
        if reduce_dtype not in (None, torch.float32):
            raise ValueError(f"reduce_dtype must be None (the activation dtype) or torch.float32, got {reduce_dtype}")
        self.backend = backend
        self.group = group
        self.reduce_dtype = reduce_dtype
        self.rank = dist.get_rank(group)
        self.tp = dist.get_world_size(group)
        self._offsets: dict[tuple, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"TensorParallelLoRA(backend={self.backend!r}, rank={self.rank}, tp={self.tp})"

    @property
    def batch_info(self) -> LoRABatchInfo | None:
        return self.backend.batch_info

    def set_batch_info(self, batch_info: LoRABatchInfo) -> None:
        """The whole batch (every rank sees every token): the wrapped backend's set_batch_info."""
        self.backend.set_batch_info(batch_info)

    # ---- column-parallel layers: no collective -----------------------------------------------------

    def run_column_lora(self, x, lora_a, lora_b, shard: Shard, base_output=None):
        """Up-projection: x (s, K) full, lora_a (L, max_r, K) full, lora_b (L, N/tp, max_r) this rank's
        rows; adds into base_output (s, N/tp), this rank's output columns."""
        self._check_shard("shard", shard, 1, "lora_b", lora_b)
        self._check_expand_args(x, lora_a, lora_b, base_output)
        xa = self.backend.run_lora_a_sgemm(x, lora_a, stack_num=1)
        return self.backend.run_lora_b_sgemm(xa, lora_b, base_output=base_output)

    def run_qkv_lora(self, x, qkv_lora_a, qkv_lora_b, shard: Shard, base_output=None):
        """QKV: full x and A (L, 3*max_r, K); qkv_lora_b (L, shard.width, max_r) = this rank's rows of B
        (``shard.take(B, 1)``, :func:`~lora.parallel.sharding.qkv_shard`); the GQA offsets of the shard
        are passed to the backend for the caller."""
        self._check_shard("shard", shard, 3, "qkv_lora_b", qkv_lora_b)
        offsets = self._offset_tensor(shard.output_offset, x.device if isinstance(x, torch.Tensor) else None)
        return self.backend.run_qkv_lora(
            x, qkv_lora_a, qkv_lora_b, offsets, shard.max_slice_width, base_output=base_output
        )

    def run_gate_up_lora(self, x, gate_up_lora_a, gate_up_lora_b, shard: Shard, base_output=None):
        """Gate-up: full x and A (L, 2*max_r, K); gate_up_lora_b (L, 2n/tp, max_r) = this rank's gate rows
        then its up rows (:func:`~lora.parallel.sharding.gate_up_shard`)."""
        self._check_shard("shard", shard, 2, "gate_up_lora_b", gate_up_lora_b)
        return self.backend.run_gate_up_lora(x, gate_up_lora_a, gate_up_lora_b, base_output=base_output)

    # ---- row-parallel layers: one all-reduce of (s, stack*max_r), or none ------------------------

    def run_row_lora_a_sgemm(self, x, lora_a, stack_num: int = 1, shard: Shard | None = None):
        """Shrink of a row-parallel layer: x (s, K/tp) and lora_a (L, stack*max_r, K/tp) this rank's
        columns -> the full (s, stack*max_r) shrink, all-reduced (the same on every rank)."""
        if shard is not None:
            self._check_shard("shard", shard, 1, "lora_a", lora_a, axis=2)
        partial = self.backend.run_lora_a_sgemm(x, lora_a, stack_num=stack_num)
        return self.all_reduce(partial)

    def run_row_lora(self, x, lora_a, lora_b, base_output=None, *, reduce: str = "all_reduce",
                     shard: Shard | None = None):
        """o / down: x (s, K/tp) and lora_a (L, max_r, K/tp) this rank's columns, lora_b (L, N, max_r) full.

        ``reduce="all_reduce"``: base_output (s, N) is the base layer's output after its all-reduce;
        every rank adds the full update. ``reduce="fold"``: base_output is this rank's partial base
        output before the base layer's all-reduce / reduce-scatter, which then sums the update.
        """
        if reduce not in REDUCE_MODES:
            raise ValueError(f"reduce must be one of {REDUCE_MODES}, got {reduce!r}")
        if shard is not None:
            self._check_shard("shard", shard, 1, "lora_a", lora_a, axis=2)
        self._check_expand_args(x, lora_a, lora_b, base_output)  # all of it before the shrink and the collective
        if reduce == "all_reduce":
            xa = self.run_row_lora_a_sgemm(x, lora_a, stack_num=1)
        else:
            xa = self.backend.run_lora_a_sgemm(x, lora_a, stack_num=1)
        return self.backend.run_lora_b_sgemm(xa, lora_b, base_output=base_output)

    def all_reduce(self, partial: torch.Tensor) -> torch.Tensor:
        """Sum ``partial`` over the group (in place when no dtype change); a no-op at tp 1."""
        import torch.distributed as dist

        if self.tp == 1:
            return partial
        if self.reduce_dtype is None or partial.dtype == self.reduce_dtype:
            dist.all_reduce(partial, op=dist.ReduceOp.SUM, group=self.group)
            return partial
        wide = partial.to(self.reduce_dtype)
        dist.all_reduce(wide, op=dist.ReduceOp.SUM, group=self.group)
        return wide.to(partial.dtype)

    # ---- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _check_expand_args(x, lora_a, lora_b, base_output) -> None:
        """What the expand half will check, checked before the shrink half launches (and, in a row
        layer, before the collective every rank must join)."""
        V.check_activation("x", x)
        V.check_like("lora_a", lora_a, "x", x, ndim=3)
        V.check_like("lora_b", lora_b, "x", x, ndim=3)
        if lora_b.shape[0] != lora_a.shape[0]:
            raise ValueError(f"lora_b has {lora_b.shape[0]} adapter slots but lora_a has {lora_a.shape[0]}")
        if lora_b.shape[2] != lora_a.shape[1]:
            raise ValueError(
                f"lora_b has max_r={lora_b.shape[2]} (last dim) but lora_a has {lora_a.shape[1]} rows (max_r)"
            )
        if base_output is not None:
            V.check_like("base_output", base_output, "x", x, ndim=2)
            if tuple(base_output.shape) != (x.shape[0], lora_b.shape[1]):
                raise ValueError(
                    f"base_output has shape {tuple(base_output.shape)}, expected {(x.shape[0], lora_b.shape[1])}"
                )

    def _check_shard(self, name, shard, slices, w_name, w, axis: int = 1) -> None:
        if not isinstance(shard, Shard):
            raise TypeError(f"{name} must be a lora.parallel.Shard (qkv_shard, gate_up_shard, ...), got "
                            f"{type(shard).__name__}")
        if (shard.rank, shard.tp) != (self.rank, self.tp):
            raise ValueError(
                f"{name} is the shard of rank {shard.rank} of tp={shard.tp}, but this process is rank {self.rank} of "
                f"a group of {self.tp}"
            )
        if len(shard.ranges) != slices:
            raise ValueError(f"{name} has {len(shard.ranges)} slices; this op needs {slices}")
        if isinstance(w, torch.Tensor) and w.dim() == 3 and w.shape[axis] != shard.width:
            raise ValueError(
                f"{w_name} has {w.shape[axis]} elements along axis {axis} but this rank's shard is {shard.width} wide "
                f"(cut the full weights with shard.take(w, {axis}))"
            )

    def _offset_tensor(self, values: tuple[int, ...], device) -> torch.Tensor:
        key = (values, device)
        t = self._offsets.get(key)
        if t is None:
            t = self._offsets[key] = torch.tensor(values, dtype=torch.int32, device=device)
        return t
