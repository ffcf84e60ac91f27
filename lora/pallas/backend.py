"""The torch-facing "pallas" backend: Pallas Mosaic GPU kernels on torch tensors (Hopper only).

    backend = lora.get_backend_from_name("pallas")("pallas", batch_info)
    out = backend.run_qkv_lora(x, qkv_a, qkv_b, output_offset, max_qkv_out_dim, base_output=base)

* Zero-copy and in place: kernels read and write the caller's tensors through their device
  pointers (:mod:`lora.pallas.interop`); ``base_output`` is updated in place and returned.
* Stream-correct: every kernel launches on ``torch.cuda.current_stream()``, so it is ordered after
  the producers of its inputs and before later consumers like any torch op. Temporaries are torch
  allocations made on that stream.
* Compilation is keyed on static shapes only; the token count is bucketed
  (:func:`lora.pallas.tiling.padded_tokens`: 64, 128, 256, ... powers of two) and the real count
  travels in device metadata, so a new batch composition never recompiles.
* Metadata (per-row adapter slot, adapters present per 64-row block) is built on the device with a
  few torch ops once per batch and token count, then reused by every layer's ops; it is rebuilt
  when ``set_batch_info`` is called or a batch-info tensor is modified in place.
* The fused ops (QKV, gate-up) keep the shrink output in float32 between the two kernels.
* Decode-sized batches (<= 256 tokens) shrink with a split-K kernel over (block, adapter, K split)
  that adds float32 partials with TMA reduce-add into a zeroed buffer.
* float32 activations are computed as three bf16 products (hi*hi + hi*lo + lo*hi): float32-level
  accuracy on bf16 tensor cores; slow, correct.
* Shapes the TMA engine cannot address directly (K or N not a multiple of 64, max_r not a multiple
  of 16, a pointer not 16-byte aligned, fewer than 64 tokens) run on padded copies: correct, with
  the extra copies; real model shapes (and >= 64 tokens) never take that path.
* Sharing the GPU with JAX: ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is set (if unset) before jax
  is imported here, so a JAX runtime in the same process does not preallocate 75% of the GPU.
  This backend itself never starts JAX's CUDA client (kernels are compiled by the CUDA plugin).

* CUDA graphs: every launch is a plain kernel launch on the current stream, so a call can be
  captured and replayed with new batch metadata copied into the same batch-info tensors. Inside a
  capture the metadata is built once per capture (keyed by CUDA's capture id) and shared by the
  capture's later calls on the same batch info.

Not available on non-Hopper GPUs or without jax >= 0.11.2 and its CUDA plugin:
``unavailable_reason`` says which.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .. import validation as V
from ..backend import BaseLoRABackend
from . import tiling as T

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


def _import_jax():
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax  # noqa: F401


_DTYPE_NAME = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """TMA needs 16-byte aligned base pointers: copy the rare tensor that is not."""
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _split_f32(t: torch.Tensor):
    hi = t.to(torch.bfloat16)
    lo = (t - hi.float()).to(torch.bfloat16)
    return hi, lo


class PallasLoRABackend(BaseLoRABackend):
    description = "JAX Pallas on Mosaic GPU (Hopper): TMA + wgmma kernels, launched on torch's stream, zero-copy"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _jax_problem() or _cuda_problem()

    def __init__(self, name: str, batch_info=None):
        self._meta_cache: dict = {}
        self._capture_meta: dict = {}
        self._offset_cache: dict = {}
        self._rank_cache: dict = {}
        super().__init__(name, batch_info)

    def set_batch_info(self, batch_info) -> None:
        super().set_batch_info(batch_info)
        self._meta_cache.clear()
        self._capture_meta = {}

    # ---- metadata ------------------------------------------------------------------------------

    def _meta(self, s: int, bpad: int, num_lora: int, device) -> torch.Tensor:
        bi = self.batch_info
        fields = (bi.seg_indptr, bi.weight_indices, bi.lora_ranks)
        key = (s, bpad, num_lora) + tuple((t.data_ptr(), t._version) for t in fields)
        if torch.cuda.is_current_stream_capturing():
            # Built inside the graph, so a replay after new values are copied into the batch-info
            # tensors rebuilds it from them: once per capture (a model's graph runs every layer's
            # ops on one batch), reused by the later ops of the same capture, never by another one.
            capture = capture_id(torch.cuda.current_stream(device).cuda_stream)
            if capture is None:
                return build_meta_torch(bi, s, bpad, num_lora, device)
            if self._capture_meta.get("id") != capture:
                self._capture_meta = {"id": capture}
            meta = self._capture_meta.get(key)
            if meta is None:
                meta = self._capture_meta[key] = build_meta_torch(bi, s, bpad, num_lora, device)
            return meta
        self._capture_meta = {}  # an eager call: no capture is in progress any more
        meta = self._meta_cache.get(key)
        if meta is None:
            if len(self._meta_cache) > 16:
                self._meta_cache.clear()
            meta = self._meta_cache[key] = build_meta_torch(bi, s, bpad, num_lora, device)
        return meta

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

    # ---- kernels -------------------------------------------------------------------------------

    def _kernel(self, kind: str, cfg, specs_fn):
        key = (kind, cfg)
        k = _KERNELS.get(key)
        if k is None:
            from .interop import MosaicKernel

            fn, specs = specs_fn()
            k = _KERNELS[key] = MosaicKernel(fn, specs, name=f"{kind}{cfg}")
            k._compile()  # now, not at a first launch that may sit inside a CUDA-graph capture
        return k

    @staticmethod
    def _check_cuda(x: torch.Tensor) -> None:
        if x.device.type != "cuda":
            raise ValueError(f"the pallas backend runs on CUDA tensors; x is on {x.device}")

    def _shrink32(self, x: torch.Tensor, a: torch.Tensor, stack: int):
        """float32 (bpad, stack*rp) shrink; returns (out, rp). Rows >= s are not meaningful."""
        s, k = x.shape
        num_lora, sr, _ = a.shape
        max_r = sr // stack
        kp, rp = T.aligned_dim(k, T.K_MULTIPLE), T.aligned_dim(max_r, T.R_MULTIPLE)
        if kp != k:
            x = F.pad(x, (0, kp - k))
        if kp != k or rp != max_r:
            a_p = a.new_zeros((num_lora, stack * rp, kp))
            a_p[:, :sr, :k] = a
            a = a_p
        bpad = T.padded_tokens(s)
        meta = self._meta(s, bpad, num_lora, x.device)
        if s < T.BM:  # the kernel reads 64-row boxes: give it 64 rows
            x_p = x.new_zeros((T.BM, kp))
            x_p[:s] = x
            x = x_p
        x, a = _aligned(x), _aligned(a)
        if x.dtype == torch.float32:
            (xh, xl), (ah, al) = _split_f32(x), _split_f32(a)
            out = self._shrink_launch(xh, ah, stack, meta, s, bpad)
            out += self._shrink_launch(xh, al, stack, meta, s, bpad)
            out += self._shrink_launch(xl, ah, stack, meta, s, bpad)
            return out, rp
        return self._shrink_launch(x, a, stack, meta, s, bpad), rp

    def _shrink_launch(self, x, a, stack, meta, s, bpad):
        import jax.numpy as jnp

        from . import shrink_kernel as SK

        num_lora, na, kp = a.shape
        dt = _DTYPE_NAME[x.dtype]
        cfg = T.shrink_config(bpad, kp, na, num_lora, stack, dt, tail=True)
        ranks = self.batch_info.lora_ranks
        x_tail = x[x.shape[0] - T.BM :]

        def specs():
            _import_jax()
            import jax

            sds = jax.ShapeDtypeStruct
            jdt = jnp.dtype(dt)
            base = [
                sds(meta.shape, jnp.int32),
                sds((num_lora,), jnp.int32),
                sds((bpad, kp), jdt),
                sds((T.BM, kp), jdt),
                sds((num_lora, na, kp), jdt),
            ]
            if cfg.split:
                return (lambda *a_: SK.shrink_split(*a_, cfg=cfg)), base + [sds((bpad, cfg.na_out), jnp.float32)]
            return (lambda *a_: SK.shrink_block(*a_, cfg=cfg)), base

        kern = self._kernel("shrink", cfg, specs)
        stream = torch.cuda.current_stream(x.device).cuda_stream
        ins = [_ptr(meta), _ptr(ranks), _ptr(x), _ptr(x_tail), _ptr(a)]
        if cfg.split:
            out = torch.zeros((bpad, cfg.na_out), dtype=torch.float32, device=x.device)
            kern.launch(ins + [_ptr(out)], [None], stream)
        else:
            out = torch.empty((bpad, cfg.na_out), dtype=torch.float32, device=x.device)
            kern.launch(ins, [_ptr(out)], stream)
        return out

    def _ranks_multiple_of(self, q: int) -> bool:
        """Whether every slot's rank is a multiple of q (read once per batch-info ranks version).

        Never while a CUDA graph is being captured (no host read there): the caller then takes the
        layout that works for any rank.
        """
        ranks = self.batch_info.lora_ranks
        if torch.cuda.is_current_stream_capturing():
            return False
        key = (ranks.data_ptr(), ranks._version, q)
        ok = self._rank_cache.get(key)
        if ok is None:
            if len(self._rank_cache) > 16:
                self._rank_cache.clear()
            ok = self._rank_cache[key] = all(int(r) % q == 0 for r in ranks.tolist())
        return ok

    def _repack(self, x: torch.Tensor, meta: torch.Tensor, stack: int, stride: int, bpad: int) -> torch.Tensor:
        """Move slice j of each row's slot from columns j*r to j*stride (torch ops, any rank)."""
        bi = self.batch_info
        lay = T.MetaLayout(bpad, bi.lora_ranks.shape[0])
        rows = x.shape[0]
        row_slot = meta[lay.boxes : lay.boxes + rows].long()
        r_row = torch.where(row_slot >= 0, bi.lora_ranks[row_slot.clamp(min=0)], 0).long()
        c = torch.arange(stack * stride, device=x.device)
        j, t = c // stride, c % stride
        src = (j[None, :] * r_row[:, None] + t[None, :]).clamp_(0, x.shape[1] - 1)
        out = torch.gather(x, 1, src)
        out = torch.where(t[None, :] < r_row[:, None], out, torch.zeros((), dtype=x.dtype, device=x.device))
        cols = T.x_columns(stack * stride, x.element_size())
        return F.pad(out, (0, cols - out.shape[1])) if cols != out.shape[1] else out

    def _expand(self, x: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor, base: torch.Tensor, *, internal: bool):
        """base (s, N) += LoRA update of x over b, in place. ``internal``: x is a float32
        (bpad, stack*rp) shrink output of this backend (else the caller's (s, stack*max_r))."""
        s, n = base.shape
        if s == 0:
            return base
        num_lora, _, max_r = b.shape
        stack = offsets.shape[0] - 1
        np_, rp = T.aligned_dim(n, T.N_MULTIPLE), T.aligned_dim(max_r, T.R_MULTIPLE)
        bpad = T.padded_tokens(s)
        meta = self._meta(s, bpad, num_lora, base.device)
        if np_ != n or rp != max_r:
            b_p = b.new_zeros((num_lora, np_, rp))
            b_p[:, :n, :max_r] = b
            b = b_p
        if not internal:
            # Slot columns start at j*r: padding appends zero columns. The expand windows read
            # 128-byte row pieces, so the width is rounded up to 128 bytes.
            cols = T.x_columns(stack * rp, x.element_size())
            if x.shape[1] != cols:
                x = F.pad(x, (0, cols - x.shape[1]))
            if s < T.BM:
                x_p = x.new_zeros((T.BM, x.shape[1]))
                x_p[:s] = x
                x = x_p
        x_stride = 0
        if stack > 1 and b.dtype != torch.float32 and not torch.cuda.is_current_stream_capturing():
            # A capture always takes the repacked layout (it cannot read the ranks): build that
            # kernel now, so that a capture never has to lower or compile one.
            self._expand_launch(None, b, offsets, base, meta, s, bpad, 0, internal, rp, prepare_only=x)
        if stack > 1 and not self._ranks_multiple_of(T.slice_alignment(x.element_size())):
            # Slice j starts at column j*r; TMA needs 16-byte aligned starts: move slices to j*rp.
            x = self._repack(x, meta, stack, rp, bpad)
            x_stride = rp
        target = base if np_ == n else F.pad(base, (0, np_ - n))
        target_a = _aligned(target)
        x, b = _aligned(x), _aligned(b)
        if b.dtype == torch.float32:
            bh, bl = _split_f32(b)
            self._expand_launch(x, bh, offsets, target_a, meta, s, bpad, 0, internal, x_stride)
            self._expand_launch(x, bl, offsets, target_a, meta, s, bpad, 0, internal, x_stride)
            self._expand_launch(x, bh, offsets, target_a, meta, s, bpad, 1, internal, x_stride)
        else:
            self._expand_launch(x, b, offsets, target_a, meta, s, bpad, 0, internal, x_stride)
        if target_a is not base:
            base.copy_(target_a[:, :n])
        return base

    def _expand_launch(self, x, b, offsets, base, meta, s, bpad, part, internal, x_stride, prepare_only=None):
        import jax.numpy as jnp

        from . import expand_kernel as EK

        num_lora, np_, rp = b.shape
        stack = offsets.shape[0] - 1
        if prepare_only is not None:  # build the kernel for the repacked layout of this x, no launch
            na = T.x_columns(stack * x_stride, prepare_only.element_size())
            xdt = _DTYPE_NAME[prepare_only.dtype]
        else:
            na = x.shape[1]
            xdt = _DTYPE_NAME[x.dtype]
        cfg = T.expand_config(
            bpad, np_, na, rp, num_lora, stack, xdt, _DTYPE_NAME[b.dtype],
            _DTYPE_NAME[base.dtype], x_part=part, tail=not internal, x_stride=x_stride,
        )
        bi = self.batch_info

        def specs():
            _import_jax()
            import jax

            sds = jax.ShapeDtypeStruct
            xs = [sds((bpad, na), jnp.dtype(cfg.x_dtype))]
            if cfg.tail:
                xs.append(sds((T.BM, na), jnp.dtype(cfg.x_dtype)))
            args = [
                sds(meta.shape, jnp.int32),
                sds((num_lora,), jnp.int32),
                sds((num_lora,), jnp.float32),
                sds((stack + 1,), jnp.int32),
                *xs,
                sds((num_lora, np_, rp), jnp.dtype(cfg.op_dtype)),
                sds((bpad, np_), jnp.dtype(cfg.base_dtype)),
            ]
            if cfg.tail:
                fn = lambda m, r, sc, o, x_, xt, b_, base_: EK.expand(m, r, sc, o, x_, xt, b_, base_, cfg=cfg)  # noqa: E731
            else:
                fn = lambda m, r, sc, o, x_, b_, base_: EK.expand(m, r, sc, o, x_, None, b_, base_, cfg=cfg)  # noqa: E731
            return fn, args

        kern = self._kernel("expand", cfg, specs)
        if prepare_only is not None:
            return
        stream = torch.cuda.current_stream(base.device).cuda_stream
        ins = [_ptr(meta), _ptr(bi.lora_ranks), _ptr(bi.scalings), _ptr(offsets), _ptr(x)]
        if cfg.tail:
            ins.append(_ptr(x[x.shape[0] - T.BM :]))
        ins += [_ptr(b), _ptr(base)]
        kern.launch(ins, [None], stream)

    # ---- the contract's primitives (used by the plain public ops) -------------------------------

    def shrink(self, x, weights, stack_num):
        self._check_cuda(x)
        s = x.shape[0]
        out = torch.empty((s, weights.shape[1]), dtype=x.dtype, device=x.device)
        if s == 0:
            return out
        out32, _ = self._shrink32(x, weights, stack_num)
        out.copy_(out32[:s, : weights.shape[1]])
        return out

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        self._check_cuda(x)
        return self._expand(x, weights, self._offsets_i32(output_offset), base_output, internal=False)

    # ---- fused ops: the float32 shrink output feeds expand directly ----------------------------

    def shrink_expand(self, x, a, b, output_offset, max_slice_width, base_output, stack_num):
        self._check_cuda(x)
        if x.shape[0] == 0:
            return base_output
        # The expand's tiles must fit in shared memory (ranks up to 128 with three slices): say so
        # before the shrink launches.
        num_lora, n, max_r = b.shape
        rp = T.aligned_dim(max_r, T.R_MULTIPLE)
        op = "bfloat16" if b.dtype == torch.float32 else _DTYPE_NAME[b.dtype]  # float32 runs as bf16 parts
        T.expand_config(T.padded_tokens(x.shape[0]), T.aligned_dim(n, T.N_MULTIPLE), T.x_columns(stack_num * rp, 4), rp,
                        num_lora, stack_num, "float32", op, _DTYPE_NAME[base_output.dtype], tail=False)
        xa, _ = self._shrink32(x, a, stack_num)
        return self._expand(xa, b, self._offsets_i32(output_offset), base_output, internal=True)


_KERNELS: dict = {}
_LIBCUDA = None


def capture_id(stream: int) -> int | None:
    """CUDA's unique id of the graph capture in progress on ``stream`` (driver API), or None when
    none is active or the driver cannot say (then the caller builds per call: correct, slower)."""
    global _LIBCUDA
    import ctypes

    try:
        if _LIBCUDA is None:
            _LIBCUDA = ctypes.CDLL("libcuda.so.1")
            # the original entry point: (stream, status*, id*); later versions only add out-params
            _LIBCUDA.cuStreamGetCaptureInfo.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
                                                        ctypes.POINTER(ctypes.c_ulonglong)]
        status, cid = ctypes.c_int(0), ctypes.c_ulonglong(0)
        rc = _LIBCUDA.cuStreamGetCaptureInfo(ctypes.c_void_p(stream), ctypes.byref(status), ctypes.byref(cid))
    except (OSError, AttributeError):
        return None
    active = 1  # CU_STREAM_CAPTURE_STATUS_ACTIVE
    return cid.value if rc == 0 and status.value == active else None


def build_meta_torch(bi, s: int, bpad: int, num_lora: int, device) -> torch.Tensor:
    """The kernels' int32 metadata (layout in :mod:`lora.pallas.tiling`), built with torch ops.

    About 18 small kernels, no host reads or host-to-device copies (so it can be captured in a CUDA
    graph); the shape-only parts come from :func:`_meta_constants`.
    """
    nb = bpad // T.BM
    rows, in_s, slot_ids, head, pad = _meta_constants(s, bpad, num_lora, torch.device(device))
    if bi.bs == 0:
        row_slot = torch.full((bpad,), -1, dtype=torch.int32, device=device)
    else:
        seg = torch.searchsorted(bi.seg_indptr[1:], rows, right=True)  # bs for rows after the last segment
        slot = bi.weight_indices[seg.clamp(max=bi.bs - 1)]
        valid = (seg < bi.bs) & in_s & (bi.lora_ranks > 0)[slot]
        row_slot = torch.where(valid, slot, -1)
    tail0 = max(s - T.BM, 0) if s >= T.BM else 0
    boxes = torch.cat([row_slot, row_slot[tail0 : tail0 + T.BM]]).view(nb + 1, T.BM)
    # Block b's adapters: those of its aligned rows, plus (last partial block) those of its clamped box.
    present = (boxes[:, :, None] == slot_ids).any(dim=1)  # (nb + 1, L)
    tail_block = min((s - 1) // T.BM, nb - 1) if s > 0 else 0
    present[tail_block : tail_block + 1] |= present[nb:]
    present = present[:nb]
    count = present.sum(dim=1, dtype=torch.int32)
    # present slots ascending, then the absent ones (never read: the kernels stop at count)
    order = torch.sort(torch.where(present, slot_ids, slot_ids + num_lora), dim=1).values.remainder_(num_lora)
    return torch.cat([head, count, order.reshape(-1), pad, boxes.reshape(-1)])


_CONSTANTS: dict = {}


def _meta_constants(s: int, bpad: int, num_lora: int, device: torch.device):
    """(row ids, rows < s, slot ids, [s], zero padding): kept once made outside a CUDA-graph capture
    (inside one, kernels only run at replay, so they are made there and not kept)."""
    key = (s, bpad, num_lora, device)
    c = _CONSTANTS.get(key)
    if c is not None:
        return c
    lay = T.MetaLayout(bpad, num_lora)
    nb = bpad // T.BM
    rows = torch.arange(bpad, dtype=torch.int32, device=device)
    c = (
        rows,
        rows < s,
        torch.arange(num_lora, dtype=torch.int32, device=device),
        torch.full((1,), s, dtype=torch.int32, device=device),
        torch.zeros((lay.boxes - (1 + nb + nb * num_lora),), dtype=torch.int32, device=device),
    )
    if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        if len(_CONSTANTS) > 64:
            _CONSTANTS.clear()
        _CONSTANTS[key] = c
    return c
