"""The torch-facing "pallas" backend: Pallas Mosaic GPU kernels on torch tensors (Hopper only).

    backend = lora.get_backend_from_name("pallas")("pallas", batch_info)
    out = backend.run_qkv_lora(x, qkv_a, qkv_b, output_offset, max_qkv_out_dim, base_output=base)

* Zero-copy and in place: kernels read and write the caller's tensors through their device
  pointers (:mod:`lora.pallas.interop`); ``base_output`` is updated in place and returned.
* Stream-correct: every kernel launches on ``torch.cuda.current_stream()``, so it is ordered after
  the producers of its inputs and before later consumers like any torch op.
* No allocation per call after warm-up: split-K partial tiles, the shrink's float32 output (the
  fused ops' intermediate), padded / aligned copies and float32 hi/lo parts live in persistent
  buffers of the current stream (:mod:`lora.triton.scratch`: one set per (device, stream), so two
  streams never share one; a buffer a CUDA graph captured is never freed), and the row count the
  kernels read is a view of a table ``prepare`` writes. An op call allocates only the output the
  caller did not pass (a shrink's, or ``base_output=None``).
* Compilation is keyed on static shapes only; the token count is bucketed
  (:func:`lora.pallas.tiling.padded_tokens`: 64, 128, 256, ... powers of two) and the real count
  travels in device metadata, so a new batch composition never recompiles.
* Metadata (per-row adapter slot, adapters present per 64-row block) is derived once per batch,
  in ``prepare`` (called by ``set_batch_info``), into buffers owned by the backend: device ops only,
  no host read, so ``prepare`` can also be captured in a CUDA graph; on CUDA devices the builder
  runs compiled by ``torch.compile`` (:mod:`lora.pallas.fused_meta`: about 12 kernels instead of 62).
  An op call only validates and launches. ``reserve(max_tokens, max_segments)`` sizes the buffers once (CUDA
  graphs); without it they grow with the batches.
* One shape-only plan per call shape (:mod:`lora.pallas.plan`, memoised) says which kernels run
  with which configuration; this module is the torch executor of its steps (the JAX API in
  :mod:`lora.pallas.api` is the other). ``PallasLoRABackend(name, batch_info, tuning=Tuning(...))``
  overrides the kernel configurations (:class:`lora.pallas.tiling.Tuning`).
* The fused ops (QKV, gate-up) keep the shrink output in float32 between the two kernels.
* Decode-sized batches (<= 256 tokens) shrink with a split-K kernel over (block, adapter, K split);
  each CTA stores its own partial tile and one reduction adds them in a fixed order, so results
  are bitwise reproducible run to run.
* float32 activations are computed as three bf16 products (hi*hi + hi*lo + lo*hi): about 16
  significant bits per operand, not float32's 24 (max absolute error ~2e-5 on outputs ~1 at
  K=4096, about 10x a float32 dot product's; numbers in :mod:`lora.pallas.plan`); slow.
* Shapes the TMA engine cannot address directly (K or N not a multiple of 64, max_r not a multiple
  of 16, a pointer not 16-byte aligned, fewer than 64 tokens) run on padded copies: correct, with
  the extra copies; real model shapes (and >= 64 tokens) never take that path.
* Sharing the GPU with JAX: ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is set (if unset) before jax
  is imported here, so a JAX runtime in the same process does not preallocate 75% of the GPU.
  This backend itself never starts JAX's CUDA client (kernels are compiled by the CUDA plugin).

* CUDA graphs: every launch is a plain kernel launch on the current stream and reads the backend's
  persistent metadata buffers, so a call can be captured and replayed after new batch values are
  copied into the batch-info tensors and ``set_batch_info`` (or a captured ``prepare``) re-derives
  the metadata into the same buffers.

Not available on non-Hopper GPUs or without jax >= 0.11.2 and its CUDA plugin:
``unavailable_reason`` says which.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..backend import BaseLoRABackend
from . import plan as P
from . import tiling as T
from ..triton.scratch import scratch_for
from .fused_meta import builder_for

__all__ = ["PallasLoRABackend"]

MIN_JAX = (0, 11, 2)


def _jax_problem() -> str | None:
    try:
        import jax  # noqa: F401
    except ImportError:
        return (
            "jax is not installed: the pallas backend needs jax>=0.11.2 with its CUDA plugin, which needs "
            "Python >= 3.12 (pip install 'kernelstack[pallas]' 'jax[cuda13]')"
        )
    try:
        version = tuple(int(v) for v in jax.__version__.split(".")[:3])
    except ValueError:
        version = (0, 0, 0)
    if version < MIN_JAX:
        return f"jax {jax.__version__} is too old: Mosaic GPU Pallas kernels need jax>=0.11.2"
    try:
        import jax_plugins.xla_cuda13  # type: ignore  # noqa: F401
    except ImportError:
        try:
            import jax_plugins.xla_cuda12  # type: ignore  # noqa: F401
        except ImportError:
            return "jax's CUDA plugin is not installed (pip install 'jax[cuda13]'): it compiles the Mosaic GPU kernels"
    return None


def _cuda_problem() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device: the Mosaic GPU kernels need an NVIDIA Hopper GPU (sm_90); on CPU they run only in JAX interpret mode (tests/pallas)"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) != (9, 0):
        name = torch.cuda.get_device_name()
        return f"{name} is sm_{major}{minor}: the Mosaic GPU kernels here are built for Hopper (sm_90)"
    return None


_DTYPE_NAME = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


class Launch(NamedTuple):
    """The device arrays every kernel of one call reads (the batch's metadata and the row count)."""

    meta: torch.Tensor
    nrows: torch.Tensor
    lora_ranks: torch.Tensor
    scalings: torch.Tensor


class TorchExecutor:
    """The torch executor of :mod:`lora.pallas.plan` (and the array namespace of :mod:`lora.pallas.meta`).

    Kernels run through ``launcher(kind, cfg, inputs, outputs, device)`` (default
    :func:`lora.pallas.interop.launch`: zero-copy, on the current stream); the tests pass a model of
    the kernels to run the rest of the path on the CPU.
    """

    def __init__(self, device, launcher=None):
        self.device = torch.device(device)
        if launcher is None:
            from .interop import launch as launcher
        self.launcher = launcher
        self._consts: dict = {}

    def const(self, key, fn):
        """fn(), kept for ``key``: the metadata's arrays that depend on the layout only are made once, not
        by kernels in every ``prepare`` (each a launch in a captured step). Never kept when made inside a
        CUDA-graph capture: those would live in the graph's memory pool."""
        got = self._consts.get(key)
        if got is None:
            got = fn()
            if not (self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
                self._consts[key] = got
        return got

    # array namespace (int32 index arithmetic on self.device)
    def arange(self, n):
        return torch.arange(n, dtype=torch.int32, device=self.device)

    def full(self, shape, v):
        return torch.full(shape, v, dtype=torch.int32, device=self.device)

    @staticmethod
    def take(a, idx):
        return a[idx]  # (int32 indices as they are: no conversion kernel)

    @staticmethod
    def where(c, a, b):
        return torch.where(c, a, b)

    @staticmethod
    def minimum(a, v):
        return torch.clamp(a, max=v)

    @staticmethod
    def clip(a, lo, hi):
        return torch.clamp(a, lo, hi)

    @staticmethod
    def reshape(a, shape):
        return a.reshape(shape)

    @staticmethod
    def searchsorted(a, v):
        return torch.searchsorted(a, v, right=True, out_int32=True)

    @staticmethod
    def any(a, axis):
        return a.any(dim=axis)

    @staticmethod
    def sum(a, axis):
        return a.sum(dim=axis, dtype=torch.int32)

    @staticmethod
    def cumsum(a):
        return torch.cumsum(a, 0, dtype=torch.int32)

    @staticmethod
    def sort(a, axis):
        return torch.sort(a, dim=axis).values

    @staticmethod
    def concat(parts, axis):
        return torch.cat(parts, dim=axis)

    @staticmethod
    def take_along_axis(a, idx, axis):
        return torch.gather(a, axis, idx.long())

    # the plan's steps: every copy, partial and intermediate lives in a persistent buffer of the
    # current stream (lora.triton.scratch), named by its role: no allocation after warm-up
    def scratch(self, name: str, shape, dtype) -> torch.Tensor:
        """A (shape, dtype) view of this stream's persistent buffer ``pallas.<name>`` (contents undefined).

        Per (device, stream): launches on one stream are ordered, so they share it; two streams never
        do. A buffer a CUDA graph captured is never freed (a later, larger call gets a new one)."""
        numel = 1
        for d in shape:
            numel *= d
        return scratch_for(self.device).named(f"pallas.{name}", numel, dtype)[:numel].view(shape)

    def pad(self, t, shape, role="pad", zero=True):
        shape = tuple(shape)
        if tuple(t.shape) == shape:
            return t
        out = self.scratch(f"{role}.pad", shape, t.dtype)
        if zero:
            out.zero_()
        out[tuple(slice(0, d) for d in t.shape)] = t
        return out

    def split_f32(self, t, role="split"):
        hi = self.scratch(f"{role}.hi", t.shape, torch.bfloat16)
        lo = self.scratch(f"{role}.lo", t.shape, torch.bfloat16)
        rest = self.scratch(f"{role}.rest", t.shape, torch.float32)
        hi.copy_(t)
        rest.copy_(hi)
        torch.sub(t, rest, out=rest)
        lo.copy_(rest)
        return hi, lo

    @staticmethod
    def add(a, b):
        return a.add_(b)

    def aligned(self, t, role="aligned"):
        """TMA needs 16-byte aligned base pointers: copy the rare tensor that is not."""
        if t.data_ptr() % 16 == 0:
            return t
        out = self.scratch(f"{role}.aligned", t.shape, t.dtype)
        out.copy_(t)
        return out

    @staticmethod
    def tail(x):
        return x[x.shape[0] - T.BM :]

    def shrink_block(self, cfg, batch: Launch, x, x_tail, a, slot=0, dest=None):
        if dest is not None:
            out = dest
        elif cfg.ksplit == 1:
            out = self.scratch(f"shrink.out{slot}", (cfg.bpad, cfg.out_cols), getattr(torch, cfg.out_dtype))
        else:
            out = self.scratch("shrink.parts", cfg.parts_shape, torch.float32)
        ins = [batch.meta, batch.nrows, batch.lora_ranks, x] + ([x_tail] if cfg.tail else []) + [a]
        self.launcher("shrink", cfg, ins, [out], self.device)
        return out

    def shrink_split(self, cfg, batch: Launch, x, x_tail, a, slot=0):
        parts = self.scratch("shrink.parts", cfg.parts_shape, torch.float32)
        ins = [batch.meta, batch.nrows, batch.lora_ranks, x] + ([x_tail] if cfg.tail else []) + [a]
        self.launcher("shrink", cfg, ins, [parts], self.device)
        return parts

    def add_parts(self, cfg, batch: Launch, parts, slot=0, dest=None):
        out = dest
        if out is None:
            out = self.scratch(f"shrink.out{slot}", (cfg.bpad, cfg.out_cols), getattr(torch, cfg.out_dtype))
        self.launcher("parts", cfg, [batch.nrows, parts], [out], self.device)
        return out

    def expand(self, cfg, batch: Launch, offsets, x, x_tail, b, base):
        ins = [batch.meta, batch.nrows, batch.lora_ranks, batch.scalings, offsets, x]
        ins += ([x_tail] if cfg.tail else []) + [b, base]
        self.launcher("expand", cfg, ins, [None], self.device)
        return base

    @staticmethod
    def writeback(target, base):
        if target is not base:
            base.copy_(target[: base.shape[0], : base.shape[1]])
        return base


class PallasLoRABackend(BaseLoRABackend):
    description = "JAX Pallas on Mosaic GPU (Hopper): TMA + wgmma kernels, launched on torch's stream, zero-copy"

    #: Kernel launcher (kind, cfg, inputs, outputs, device); None: lora.pallas.interop.launch.
    launcher = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _jax_problem() or _cuda_problem()

    def __init__(self, name: str, batch_info=None, tuning: T.Tuning | None = None):
        if tuning is not None and not isinstance(tuning, T.Tuning):
            raise TypeError(f"tuning must be a lora.pallas.tiling.Tuning, got {type(tuning).__name__}")
        self.tuning = tuning or T.DEFAULT_TUNING
        self._executors: dict = {}
        self._offset_cache: dict = {}
        self._meta: torch.Tensor | None = None
        self._nrows_table: torch.Tensor | None = None
        self._nrows_written: tuple | None = None  # (buffer, length) of the table last written eagerly
        self._groups = 0
        super().__init__(name, batch_info)

    def _executor(self, device) -> TorchExecutor:
        device = torch.device(device)
        ex = self._executors.get(device)
        if ex is None:
            ex = self._executors[device] = TorchExecutor(device, self.launcher)
        return ex

    # ---- metadata, once per batch --------------------------------------------------------------

    def prepare(self, batch_info) -> None:
        """Derive the kernels' metadata (:mod:`lora.pallas.meta`) into the backend's buffers."""
        tokens, _ = self.capacity(batch_info)
        groups = T.padded_tokens(max(tokens, 1)) // T.BM
        num_lora = batch_info.num_lora
        dev = batch_info.device
        # The block shrink (the one kernel that reads the extra units) runs on calls of more than
        # split_max_blocks blocks only, and no call has more blocks than the buffers' groups.
        meta = builder_for(dev)(batch_info.seg_indptr, batch_info.weight_indices, batch_info.lora_ranks,
                                bs=batch_info.bs, num_lora=num_lora, groups=groups,
                                units=groups > self.tuning.split_blocks)
        mbuf = self.buffer("pallas.meta", meta.numel(), torch.int32, dev)
        mbuf[: meta.numel()].copy_(meta)
        # The row count every kernel reads, for any call the buffers hold (s <= groups * 64): entry
        # s * NROWS_STRIDE is s. A persistent buffer, so a captured launch's pointer stays valid;
        # written when it is new (its values never change), again eagerly if that was in a capture.
        n = (groups * T.BM + 1) * self.NROWS_STRIDE
        buf = self.buffer("pallas.nrows", n, torch.int32, dev)
        table = buf[:n]
        done = self._nrows_written
        if done is None or done[0] is not buf or done[1] < n:
            torch.arange(n, dtype=torch.int32, out=table)
            table.div_(self.NROWS_STRIDE, rounding_mode="floor")
            capturing = table.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
            self._nrows_written = None if capturing else (buf, n)
        self._meta, self._groups, self._nrows_table = mbuf, groups, table

    #: int32 entries per row count in the row-count table: each (1,) view starts 16-byte aligned
    NROWS_STRIDE = 4

    def _nrows(self, s: int) -> torch.Tensor:
        """(1,) int32 device tensor holding s: a view of the table ``prepare`` wrote (no allocation)."""
        i = s * self.NROWS_STRIDE
        return self._nrows_table[i : i + 1]

    def _launch_args(self, x: torch.Tensor) -> Launch:
        s = x.shape[0]
        if self._meta is None or self._groups * T.BM < T.padded_tokens(s):
            raise RuntimeError(  # _before_launch prepares for every call's row count: a bug if reached
                f"pallas metadata holds {self._groups * T.BM} rows, the call has {s}"
            )
        bi = self.batch_info
        return Launch(self._meta, self._nrows(s), bi.lora_ranks, bi.scalings)

    def _offsets_i32(self, output_offset: torch.Tensor) -> torch.Tensor:
        if output_offset.dtype == torch.int32:
            return output_offset
        if torch.cuda.is_current_stream_capturing():
            return output_offset.to(torch.int32)
        key = (output_offset.data_ptr(), output_offset._version)
        t = self._offset_cache.get(key)
        if t is None:
            if len(self._offset_cache) > 16:
                self._offset_cache.clear()
            t = self._offset_cache[key] = output_offset.to(torch.int32)
        return t

    @staticmethod
    def _check_device(x: torch.Tensor, launcher) -> None:
        if x.device.type != "cuda" and launcher is None:
            raise ValueError(f"the pallas backend runs on CUDA tensors; x is on {x.device}")

    # ---- the contract's primitives ----------------------------------------------------------------

    def shrink(self, x, weights, stack_num):
        self._check_device(x, self.launcher)
        s, sr = x.shape[0], weights.shape[1]
        out = torch.empty((s, sr), dtype=x.dtype, device=x.device)
        if s == 0 or sr == 0:
            return out.zero_()
        plan = P.plan_shrink(T.padded_tokens(s), x.shape[1], sr // stack_num, stack_num, weights.shape[0],
                             _DTYPE_NAME[x.dtype], tail=True, result=True, tuning=self.tuning)
        # the kernels write straight into `out` when it has the output's columns (a rank that is a
        # multiple of 16) and rows the plan can write into: no copy after them
        direct = sr == plan.cfg.out_cols and out.data_ptr() % 16 == 0 and plan.writes_into(s)
        res = P.run_shrink(self._executor(x.device), plan, self._launch_args(x), x, weights,
                           dest=out if direct else None)
        if res is not out:
            out.copy_(res[:s, :sr])
        return out

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        self._check_device(x, self.launcher)
        plan = self._expand_plan(x.dtype, weights, base_output, output_offset.shape[0] - 1, internal=False)
        if plan.noop or x.shape[0] == 0:
            return base_output
        return P.run_expand(self._executor(x.device), plan, self._launch_args(x), x, weights,
                            self._offsets_i32(output_offset), base_output)

    def _expand_plan(self, x_dtype, b, base, stack, *, internal):
        num_lora, n, max_r = b.shape
        x_name = _DTYPE_NAME[x_dtype]  # (internal: the shrink's output, in x's dtype too)
        return P.plan_expand(T.padded_tokens(base.shape[0]), n, max_r, stack, num_lora, x_name, _DTYPE_NAME[b.dtype],
                             _DTYPE_NAME[base.dtype], internal=internal, tail=True, tuning=self.tuning)

    # ---- fused ops: the shrink output (x's dtype) feeds expand directly -------------------------

    def shrink_expand(self, x, a, b, output_offset, max_slice_width, base_output, stack_num):
        self._check_device(x, self.launcher)
        # The expand's plan (its tiles must fit in shared memory) is made before the shrink launches.
        ep = self._expand_plan(x.dtype, b, base_output, stack_num, internal=True)
        if ep.noop or x.shape[0] == 0:
            return base_output
        sp = P.plan_shrink(T.padded_tokens(x.shape[0]), x.shape[1], a.shape[1] // stack_num, stack_num, a.shape[0],
                           _DTYPE_NAME[x.dtype], tail=True, result=False, tuning=self.tuning)
        return P.run_fused(self._executor(x.device), sp, ep, self._launch_args(x), x, a, b,
                           self._offsets_i32(output_offset), base_output)
