"""BaseLoRABackend: the public LoRA ops, their validation, and their composition from two primitives.

A backend supplies

* ``shrink(x, weights, stack_num)``: x (s, K) -> (s, stack_num*max_r); the rows of a segment with slot w
  and rank r get ``x @ weights[w, :stack_num*r].T`` in columns ``[0, stack_num*r)`` and zeros after.
* ``expand(x, weights, output_offset, max_slice_width, base_output)``: for slice j of
  ``stack = len(output_offset) - 1``, ``base_output[:, off[j]:off[j+1]] += scaling[w] *
  x[:, j*r:(j+1)*r] @ weights[w, off[j]:off[j+1], :r].T`` in place; returns ``base_output``.
* optionally ``prepare(batch_info)``: whatever its kernels derive from the batch metadata (adapter
  grouping, row permutations, tile maps), computed once per batch on the device.

Both primitives see inputs that :mod:`lora.validation` already accepted, accumulate in float32 and
write the activation dtype. Rows of rank-0 slots, zero-length segments and rows after the last
segment are zero (shrink) or untouched (expand). Plain expand is one slice ``[0, N]``, QKV three
slices with the caller's (GQA) offsets, gate-up two slices ``[0, n, 2n]``. QKV and gate-up, once
validated, run ``shrink_expand`` (shrink, then expand); a backend that keeps the intermediate in its
own layout overrides that, so the validation in the public ops always runs first.

Interop (what SGLang / vLLM pass): weight buffers with ``max_r == 0`` are accepted by every op (a
shrink returns an ``(s, 0)`` tensor, an expand and the fused ops leave ``base_output`` as it is);
``stack_num`` may be 1..4 (4: SGLang's GDN ``in_proj_qkvz``); batch-info tensors must be int32
(ranks too) and float32 (scalings): other dtypes raise TypeError saying which dtype to pass.

**Per batch, not per call.** An engine builds one batch info per forward pass and calls the ops of
every LoRA module of every layer with it. :meth:`BaseLoRABackend.set_batch_info` checks it, stores it
and calls :meth:`~BaseLoRABackend.prepare`, which derives everything the kernels need into
persistent buffers owned by the backend (:meth:`~BaseLoRABackend.buffer`). An op call then only
validates and launches: it derives nothing and allocates nothing on the device after warm-up, apart
from the outputs the caller did not pass.

**CUDA graphs.** ::

    bi = LoRABatchInfo.empty(max_segments=256, num_lora=8, device="cuda")   # the graph's batch info
    backend.reserve(max_tokens=8192, max_segments=256)   # persistent buffers, sized once
    bi.update_(seg_lens, weight_indices, ranks, scalings); backend.set_batch_info(bi)   # warm-up batch
    ... run the step once eagerly (compiles, sizes scratch) ...
    with torch.cuda.graph(g):
        backend.prepare(bi)          # optional: derive inside the graph (see below)
        ... the step's LoRA ops ...
    # every step:
    bi.update_(new_lens, new_slots, ...)   # in place: the graph's pointers stay valid
    backend.set_batch_info(bi)             # re-derives into the same buffers (skip if prepare is captured)
    g.replay()

``prepare`` runs **outside** the graph by default (``set_batch_info`` before each replay: an eager
launch or a few, on the current stream, ordered before the replay). It is also capturable: it reads
only device values, launches on the current stream, never synchronises, and once the buffers exist
never allocates, so an engine may capture ``backend.prepare(bi)`` at the head of its graph, and a
replay then re-derives from whatever ``bi.update_`` wrote. Both are tested (``tests/gpu``).

After :meth:`~BaseLoRABackend.reserve` the buffers are never reallocated: a batch with more
segments than reserved (``set_batch_info``) or more rows than reserved (an op's ``x``) raises
ValueError before any launch. Without ``reserve`` the buffers grow as batches need (eager use) until
an op is first captured in a CUDA graph; from then on they are pinned as if reserved, because a
live graph holds their addresses. Reserve for the largest batch the engine will run, eagerly or in a
graph (the buffers hold a few int32 per token and per segment).

``prepare_per_call = True`` (an attribute) makes every op call run ``prepare`` first: what each call
paid before metadata was derived once per batch. ``python -m lora compare --step`` times both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from . import validation as V
from .batch_info import LoRABatchInfo

__all__ = ["BaseLoRABackend", "Reservation"]


@dataclass(frozen=True)
class Reservation:
    """Capacity of a backend's persistent metadata buffers, fixed by :meth:`BaseLoRABackend.reserve`."""

    max_tokens: int
    max_segments: int
    device: torch.device | None


def _versions(bi: LoRABatchInfo) -> tuple[int, ...]:
    """In-place write counters of the batch info's tensors (host-side, free to read)."""
    return tuple(t._version for t in (bi.seg_lens, bi.seg_indptr, bi.weight_indices, bi.lora_ranks, bi.scalings))


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


class BaseLoRABackend:
    """Base of every LoRA backend; build one as ``get_backend_from_name(name)(name, batch_info)``."""

    #: One line shown by ``python -m lora list``.
    description: ClassVar[str] = ""

    #: Run ``prepare`` in every op call (the per-call cost metadata had before; for comparisons only).
    prepare_per_call: bool = False

    def __init__(self, name: str, batch_info: LoRABatchInfo | None = None):
        reason = type(self).unavailable_reason()
        if reason is not None:  # fail here, with the registry's reason, not at the first op call
            from .registry import BackendUnavailableError

            raise BackendUnavailableError(f"LoRA backend {name!r} cannot run here: {reason}")
        self.name = name
        self.batch_info: LoRABatchInfo | None = None
        self.reservation: Reservation | None = None
        self._offset_tensors: dict[tuple, torch.Tensor] = {}
        self._buffers: dict[str, torch.Tensor] = {}
        self._captured = False  # an op or prepare ran inside a CUDA-graph capture: buffers are pinned
        self._batch_problem: str | None = None
        self._tokens_seen = 0  # most rows an op has been called with (sizes eager buffers)
        self._prepared_tokens = 0  # rows the last prepare sized its buffers for
        self._versions: tuple[int, ...] = ()  # batch-info tensor versions the last prepare saw
        if batch_info is not None:
            self.set_batch_info(batch_info)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run on this machine, or None when it can."""
        return None

    # ---- per-batch metadata --------------------------------------------------------------------

    def reserve(self, max_tokens: int, max_segments: int, device=None) -> None:
        """Size this backend's persistent metadata buffers once (CUDA graphs).

        Afterwards ``set_batch_info`` re-derives into the same buffers, never reallocates them, and
        raises ValueError (before any launch) when a batch exceeds the reserved capacity: more than
        ``max_segments`` segments, or an op's ``x`` with more than ``max_tokens`` rows. ``device``:
        where the buffers live (default: the device of the batch info). Without ``reserve`` the
        buffers grow as needed (eager use) until an op is first captured in a graph.
        Raises ValueError after a capture has used buffers of another size (reserve before capturing).
        """
        for arg, v in (("max_tokens", max_tokens), ("max_segments", max_segments)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{arg} must be an int, got {type(v).__name__}")
            if v < 0:
                raise ValueError(f"{arg} must be >= 0, got {v}")
        dev = None if device is None else torch.device(device)
        if dev is not None and dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if self._captured and self._buffers:
            raise ValueError(
                f"backend {self.name!r}: its metadata buffers are already captured in a CUDA graph; "
                "call reserve() before the first capture"
            )
        self._buffers.clear()
        self.reservation = Reservation(max_tokens, max_segments, dev)
        if self.batch_info is not None:
            self.set_batch_info(self.batch_info)

    @property
    def pinned(self) -> bool:
        """True once the buffers may not be reallocated: after ``reserve`` or once an op was captured."""
        return self.reservation is not None or self._captured

    def set_batch_info(self, batch_info: LoRABatchInfo) -> None:
        """Type check, store, then ``self.prepare(batch_info)``.

        A batch info whose tensors the kernels cannot read (wrong dtype, shape or device) is stored
        without preparing, and the next op call raises the TypeError / ValueError that says what to
        pass. A batch with more segments than reserved raises ValueError here.
        """
        if not isinstance(batch_info, LoRABatchInfo):
            raise TypeError(f"batch_info must be a LoRABatchInfo, got {type(batch_info).__name__}")
        problem = V.check_batch_info_fields(batch_info)
        res = self.reservation
        if problem is None and res is not None:
            if batch_info.bs > res.max_segments:
                raise ValueError(
                    f"batch_info has {batch_info.bs} segments but backend {self.name!r} reserved "
                    f"max_segments={res.max_segments}: reserve() for the largest batch"
                )
            if res.device is not None and batch_info.device != res.device:
                raise ValueError(f"batch_info is on {batch_info.device} but backend {self.name!r} reserved {res.device}")
        self.batch_info = batch_info
        self._batch_problem = problem
        if problem is None:
            self._prepare(batch_info)

    def _prepare(self, batch_info: LoRABatchInfo) -> None:
        self._prepared_tokens = self.capacity(batch_info)[0]
        try:
            self.prepare(batch_info)
        except Exception as exc:  # never run ops on metadata of another batch
            self._batch_problem = f"{type(exc).__name__} while preparing this batch: {exc}"
            raise
        self._versions = _versions(batch_info)

    def prepare(self, batch_info: LoRABatchInfo) -> None:
        """Hook (base: no-op): derive what this backend's kernels need from ``batch_info``, once per batch.

        Runs on the batch's device with no host synchronisation and, once its buffers exist, no device
        allocation, so it can be captured inside a CUDA graph and replayed after the engine copies new
        values into ``batch_info``'s tensors in place. Size buffers with :meth:`capacity` and get them
        from :meth:`buffer`. ``batch_info`` has passed :func:`lora.validation.check_batch_info_fields`.
        """

    def capacity(self, batch_info: LoRABatchInfo) -> tuple[int, int]:
        """(tokens, segments) to size per-batch buffers for: the reservation, else this batch's segments
        and the most rows an op has been called with (eager use; :meth:`buffer` grows)."""
        if self.reservation is not None:
            return self.reservation.max_tokens, self.reservation.max_segments
        return max(self._tokens_seen, min(batch_info.bs * max(batch_info.max_len, 1), 1 << 20)), batch_info.bs

    def buffer(self, name: str, numel: int, dtype: torch.dtype, device) -> torch.Tensor:
        """A persistent 1-D buffer of at least ``numel`` elements, kept across batches.

        Reused while large enough; grown while not :attr:`pinned`; when pinned, a buffer that would have
        to grow raises ValueError (never replaced under a live graph). A buffer made for the first time
        is allocated (also when pinned: nothing holds its address yet).
        """
        device = torch.device(device)
        buf = self._buffers.get(name)
        if buf is not None and buf.numel() >= numel and buf.dtype == dtype and buf.device == device:
            return buf
        if buf is not None and self.pinned:
            why = "reserved with reserve()" if self.reservation is not None else "captured by a CUDA graph"
            raise ValueError(
                f"backend {self.name!r}: metadata buffer {name!r} holds {buf.numel()} {buf.dtype} on {buf.device} "
                f"and is {why}; this batch needs {numel} {dtype} on {device}. Call reserve(max_tokens, "
                "max_segments) for the largest batch before capturing"
            )
        # zeroed once: a kernel may read places of a buffer that this batch did not write (masked afterwards)
        buf = self._buffers[name] = torch.zeros(max(numel, 1), dtype=dtype, device=device)
        return buf

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
        if weights.shape[1] == 0:  # max_r == 0: nothing loaded (SGLang returns (s, 0) too)
            return x.new_empty((x.shape[0], 0))
        self._before_launch(x)
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
        self._check_batch_info(x, weights.shape[0], max_r)
        out = self._output("base_output", base_output, x, n)
        if max_r == 0 or n == 0:
            return out
        self._before_launch(x)
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
        if qkv_lora_b.shape[2] == 0:
            return out
        self._before_launch(x)
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
        if gate_up_lora_b.shape[2] == 0 or two_n == 0:
            return out
        offsets = self._offsets((0, two_n // 2, two_n), x.device)
        self._before_launch(x)
        return self.shrink_expand(x, gate_up_lora_a, gate_up_lora_b, offsets, two_n // 2, out, 2)

    def shrink_expand(self, x, a, b, output_offset, max_slice_width, base_output, stack_num):
        """The fused ops on validated inputs: ``expand(shrink(x, a, stack_num), b, ...)`` into ``base_output``."""
        return self.expand(self.shrink(x, a, stack_num), b, output_offset, max_slice_width, base_output)

    # ---- helpers ---------------------------------------------------------------------------------

    def _before_launch(self, x: torch.Tensor) -> None:
        """Capacity, capture and per-call checks of a validated call that will launch kernels."""
        res = self.reservation
        if res is not None and x.shape[0] > res.max_tokens:
            raise ValueError(
                f"x has {x.shape[0]} rows but backend {self.name!r} reserved max_tokens={res.max_tokens}: "
                "reserve() for the largest batch"
            )
        capturing = _capturing(x.device)
        if capturing:
            self._captured = True  # a live graph now holds the buffers' addresses
        bi = self.batch_info
        if x.shape[0] > self._prepared_tokens:
            # Eager use: a batch with more rows than the buffers were sized for (warm-up; once pinned,
            # buffer() raises instead of growing).
            self._tokens_seen = max(self._tokens_seen, x.shape[0])
            self._prepare(bi)
        elif self.prepare_per_call:
            self.prepare(bi)
        elif not capturing and _versions(bi) != self._versions:
            # The batch info's tensors were written in place since the last prepare (an eager caller
            # that skipped set_batch_info): derive again rather than run on stale metadata. Inside a
            # capture deriving is the engine's call (set_batch_info before replay, or prepare captured).
            self._prepare(bi)

    def _check_batch_info(self, x, num_lora: int, max_r: int) -> None:
        V.check_batch_info(self.batch_info, x, num_lora, max_r)
        if self._batch_problem is not None:  # a problem check_batch_info does not see (e.g. two devices)
            raise ValueError(self._batch_problem)

    def _check_shrink(self, x, a_name: str, a: torch.Tensor, stack_num) -> None:
        V.check_stack_num(stack_num)
        V.check_activation("x", x)
        V.check_like(a_name, a, "x", x, ndim=3)
        if a.shape[2] != x.shape[1]:
            raise ValueError(f"{a_name} has K={a.shape[2]} (last dim) but x has {x.shape[1]} columns")
        if a.shape[1] % stack_num:
            raise ValueError(
                f"{a_name} has {a.shape[1]} rows, not a multiple of stack_num={stack_num} (stack_num*max_r)"
            )
        self._check_batch_info(x, a.shape[0], a.shape[1] // stack_num)

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
