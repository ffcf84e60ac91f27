"""torch <-> Mosaic GPU: run a Pallas kernel on torch tensors, zero-copy, on torch's current stream.

The kernel is traced and lowered by JAX once per static configuration (shapes, dtypes, tiling),
the Mosaic GPU module is pulled out of the lowered StableHLO and compiled for the current CUDA
device by the JAX CUDA plugin's ``MosaicGpuCompile`` (the entry point behind
``plgpu.as_torch_kernel``). A launch is then one ctypes call with the tensors' device pointers in
the XLA calling convention (inputs, then outputs; an in-place output gets its input's pointer) and
the *current* torch stream, so it is ordered against torch's work with no event or sync, and no
JAX runtime, DLPack conversion or jit dispatch sits on the hot path.

Compared with ``plgpu.as_torch_kernel``, this launcher: uses ``torch.cuda.current_stream()``
instead of the legacy default stream, checks shapes/dtypes/contiguity/alignment before launching
(the backend does), never recompiles for a new token count inside a bucket (the compiled kernel
takes the real row count from device metadata), and costs one ctypes call per launch.

Lowering (JAX tracing and the Mosaic passes) takes seconds per configuration, a minute or more for
the persistent expand kernels, and needs no GPU: each lowered module is kept on disk (see
:func:`cache_dir`), keyed by the configuration, the jax version and the source of the kernel
modules, so a later process (or a GPU machine handed a cache lowered elsewhere) only compiles.

JAX memory: lowering needs no JAX device, and the compile happens in the plugin, so JAX's CUDA
client is not initialised by this path; ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is still set (if
unset) before jax is imported by :mod:`lora.pallas.backend`, so that a JAX program sharing the
process does not take 75% of the GPU from torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path

__all__ = ["MosaicKernel", "kernel", "launch", "lower", "cache_dir", "compile_count", "lowering_count",
           "smem_bytes"]

_LOCK = threading.Lock()
_STATS = {"lowered": 0, "cached": 0, "compiled": 0, "lower_s": 0.0, "compile_s": 0.0}

#: Directory of the lowered-kernel cache; set to an empty string to turn the cache off.
CACHE_DIR_ENV = "KERNELSTACK_PALLAS_CACHE_DIR"
#: The modules whose source decides what a configuration lowers to (part of every cache key).
_KERNEL_SOURCES = ("common.py", "shrink_kernel.py", "expand_kernel.py", "tiling.py", "interop.py")
_SOURCE_DIGEST: list = []


def lowering_count() -> int:
    """Kernels lowered by this process (each is one static configuration)."""
    return _STATS["lowered"]


def compile_count() -> int:
    return _STATS["compiled"]


def stats() -> dict:
    return dict(_STATS)


def cache_dir() -> Path | None:
    """Where lowered kernels are kept across processes: ``$KERNELSTACK_PALLAS_CACHE_DIR`` (empty:
    no cache), else the per-user cache directory (:func:`lora.user_cache.user_cache_dir`:
    ``$XDG_CACHE_HOME/kernelstack/lora-pallas``, else ``~/.cache/kernelstack/lora-pallas`` on Linux)."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env is not None:
        return Path(env).expanduser() if env else None
    from ..user_cache import user_cache_dir

    return user_cache_dir("lora-pallas", os.environ.get("XDG_CACHE_HOME"), os.environ.get("HOME"))


def _cache_key(kind: str, cfg) -> str:
    import jax

    if not _SOURCE_DIGEST:
        h = hashlib.sha256()
        for name in _KERNEL_SOURCES:
            h.update(name.encode() + b"\0" + (Path(__file__).parent / name).read_bytes())
        _SOURCE_DIGEST.append(h.hexdigest())
    text = "\n".join([jax.__version__, _SOURCE_DIGEST[0], kind, repr(cfg)])
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def _read_cached(path: Path):
    """(asm, aliases) from a cache file, or None when it is missing or unreadable (lowered again)."""
    try:
        data = path.read_bytes()
        head, asm = data.split(b"\n", 1)
        aliases = json.loads(head)["aliases"]
        if not asm or not all(a is None or isinstance(a, int) for a in aliases):
            return None
        return asm, aliases
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cached(path: Path, kind: str, cfg, asm: bytes, aliases) -> None:
    """Written whole under a temporary name, then renamed: a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        head = json.dumps({"aliases": aliases, "kind": kind, "cfg": repr(cfg)}).encode()
        tmp.write_bytes(head + b"\n" + asm)
        os.replace(tmp, path)
    except OSError:  # a read-only or full cache directory: the kernel is still used, just not kept
        pass


def lower(kind: str, cfg, signature=None):
    """(module bytes, aliases) of a kernel configuration: from the disk cache, else lowered (and kept).
    ``signature``: its :func:`kernel_signature`, when the caller has it already."""
    root = cache_dir()
    path = root / f"{kind}-{_cache_key(kind, cfg)}.mlirbc" if root is not None else None
    if path is not None:
        hit = _read_cached(path)
        if hit is not None:
            _STATS["cached"] += 1
            return hit
    fn, specs = signature or kernel_signature(kind, cfg)
    asm, aliases = lower_to_mosaic(fn, specs)
    if path is not None:
        _write_cached(path, kind, cfg, asm, aliases)
    return asm, aliases


@contextlib.contextmanager
def _hopper_target():
    """Lower for sm_90a without asking JAX for a device (which would start its CUDA client)."""
    from jax.experimental.mosaic.gpu import utils as mgpu_utils

    saved = mgpu_utils._infer_arch
    mgpu_utils._infer_arch = lambda: (9, 0)
    try:
        yield
    finally:
        mgpu_utils._infer_arch = saved


def _lower_for_cuda(fn, arg_specs):
    """``fn`` traced and lowered for sm_90a on this machine (no GPU needed)."""
    import jax

    with _hopper_target():
        return jax.jit(fn).trace(*arg_specs).lower(lowering_platforms=("cuda",))


def smem_bytes(kind: str, cfg) -> int:
    """Shared memory Mosaic allocates for one CTA of a kernel configuration: its own count, read from
    the check it makes when lowering (run with a bound of 0 bytes, so that it always reports). The
    check of :func:`lora.pallas.tiling.expand_smem_bytes`; lowers on the CPU, nothing cached."""
    from jax.experimental.mosaic.gpu import core as mgpu_core

    fn, specs = kernel_signature(kind, cfg)
    saved = mgpu_core._SMEM_SIZE_BOUND
    mgpu_core._SMEM_SIZE_BOUND = 0
    try:
        _lower_for_cuda(fn, specs)
    except ValueError as e:
        found = re.search(r"smem_bytes=(\d+)", str(e))
        if found is None:
            raise
        return int(found.group(1))
    finally:
        mgpu_core._SMEM_SIZE_BOUND = saved
    raise RuntimeError(f"Mosaic reported no shared memory for {kind} {cfg}")


def lower_to_mosaic(fn, arg_specs):
    """Trace + lower ``fn`` (one Mosaic GPU kernel call on its arguments) -> (module bytes, aliases).

    ``aliases[i]`` is the input index whose buffer output ``i`` reuses, or None.
    """
    import jax.experimental.mosaic.gpu as mgpu
    from jax._src.lib.mlir import passmanager

    t0 = time.perf_counter()
    module = _lower_for_cuda(fn, arg_specs).compiler_ir()
    with module.context:
        mgpu.dialect.register_inliner_extensions(module.context)
        passmanager.PassManager.parse("builtin.module(inline{default-pipeline=})").run(module.operation)
        call, n_args = _find_single_call(module)
    operands = list(call.operands)
    # The launcher passes the caller's buffers straight through: the kernel's operands must be the
    # function arguments in order (no constants, broadcasts or allocations around the kernel).
    for i, v in enumerate(operands):
        if not (hasattr(v, "arg_number") and v.arg_number == i):
            raise RuntimeError(f"kernel operand {i} is not function argument {i}; cannot launch it directly")
    if len(operands) != n_args:
        raise RuntimeError(f"kernel takes {len(operands)} of the function's {n_args} arguments")
    from jax._src.lib.mlir.dialects import hlo

    aliases = [None] * len(call.results)
    for alias in call.output_operand_aliases or []:
        alias = hlo.OutputOperandAlias(alias)
        (out_index,) = alias.output_tuple_indices or (0,)
        aliases[out_index] = alias.operand_index
    asm = call.attributes["mhlo.backend_config"]["module"].value_bytes
    _STATS["lowered"] += 1
    _STATS["lower_s"] += time.perf_counter() - t0
    return asm, aliases


def _find_single_call(module):
    from jax._src.lib.mlir import ir
    from jax._src.lib.mlir.dialects import func

    mains = [op for op in module.body.operations if isinstance(op, func.FuncOp) and op.name.value == "main"]
    if len(mains) != 1:
        raise RuntimeError("expected one main function in the lowered kernel")
    [block] = mains[0].body.blocks
    calls = []
    for op in block.operations:
        name = op.operation.name
        if name == "stablehlo.custom_call" and ir.StringAttr(op.attributes["call_target_name"]).value == "mosaic_gpu_v2":
            calls.append(op)
        elif name not in ("func.return", "sdy.return"):
            raise RuntimeError(f"unexpected operation around the kernel: {name}")
    if len(calls) != 1:
        raise RuntimeError(f"expected one Mosaic GPU kernel, found {len(calls)}")
    return calls[0], len(block.arguments)


_PLUGIN = None


def _plugin():
    global _PLUGIN
    if _PLUGIN is None:
        try:
            import jax_plugins.xla_cuda13 as cuda_plugin  # type: ignore
        except ImportError:
            import jax_plugins.xla_cuda12 as cuda_plugin  # type: ignore
        lib = ctypes.CDLL(cuda_plugin._get_library_path())
        lib.MosaicGpuCompile.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.MosaicGpuCompile.restype = ctypes.POINTER(ctypes.c_void_p)
        lib.MosaicGpuUnload.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        lib.MosaicGpuUnload.restype = None
        _PLUGIN = lib
    return _PLUGIN


_LAUNCH_T = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p))


class MosaicKernel:
    """One compiled kernel; ``launch(pointers, stream)`` runs it (pointers: inputs then outputs)."""

    def __init__(self, asm: bytes, aliases: list, num_inputs: int, name: str = "kernel"):
        self.name = name
        self.asm, self.aliases = asm, aliases
        self.num_inputs = num_inputs
        self.num_buffers = self.num_inputs + len(self.aliases)
        self._handle = None
        self._fn = None
        self._launch = None

    def _compile(self):
        with _LOCK:
            if self._launch is not None:
                return
            t0 = time.perf_counter()
            lib = _plugin()
            handle = lib.MosaicGpuCompile(ctypes.c_char_p(self.asm), ctypes.c_int(len(self.asm)))
            if not handle:
                raise RuntimeError(f"MosaicGpuCompile failed for {self.name}")
            self._handle = handle
            self._fn = handle[0]
            self._launch = _LAUNCH_T(handle[1])
            _STATS["compiled"] += 1
            _STATS["compile_s"] += time.perf_counter() - t0

    def launch(self, inputs: list[int], outputs: list[int | None], stream: int) -> None:
        """``outputs[i] is None`` for an aliased output (it reuses its input's pointer)."""
        if self._launch is None:
            self._compile()
        ptrs = list(inputs)
        for i, p in enumerate(outputs):
            alias = self.aliases[i]
            ptrs.append(inputs[alias] if p is None and alias is not None else p)
        buf = (ctypes.c_void_p * self.num_buffers)(*ptrs)
        self._launch(self._fn, ctypes.c_void_p(stream), buf)

    def __del__(self):  # pragma: no cover - process teardown
        if getattr(self, "_handle", None) is not None and _PLUGIN is not None:
            try:
                _PLUGIN.MosaicGpuUnload(self._handle)
            except Exception:
                pass


# ---- the kernels of lora.pallas.plan, by configuration ------------------------------------------------

_KERNELS: dict = {}


def _import_jax():
    """Import jax for lowering. The torch path needs no JAX device: it lowers with
    ``lowering_platforms=("cuda",)`` and compiles in the CUDA plugin. So, unless this process has
    started JAX's backends already or names its platforms (``JAX_PLATFORMS`` / ``jax_platforms``),
    JAX is kept to its CPU backend: its GPU client, once started by lowering, runs threads whose
    calls (when Python's garbage collector frees JAX objects inside a CUDA-graph capture) invalidate
    captures made in torch's default (global) capture mode (session 7, ``benchmarks/capture_probe.py``
    on the H200: 4 of 300 captures with a collection inside, none in thread-local mode)."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    from jax._src import xla_bridge

    if not (xla_bridge.backends_are_initialized() or os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms):
        jax.config.update("jax_platforms", "cpu")


def kernel_signature(kind: str, cfg):
    """(fn, arg specs) of a kernel configuration: its arguments follow from the configuration alone
    (inputs in the order the executors pass them, then the aliased workspace if any)."""
    _import_jax()
    import jax
    import jax.numpy as jnp

    from . import expand_kernel as EK
    from . import shrink_kernel as SK
    from .tiling import BM, MetaLayout

    sds = jax.ShapeDtypeStruct
    if kind == "parts":
        fn = lambda nrows, parts: SK.add_parts(nrows, parts, cfg=cfg)  # noqa: E731
        return fn, [sds((1,), jnp.int32), sds((cfg.nb * cfg.tiles, BM, cfg.in_cols), jnp.float32)]
    L = cfg.num_lora
    head = [sds((MetaLayout(L).length(cfg.bpad),), jnp.int32), sds((1,), jnp.int32), sds((L,), jnp.int32)]
    if kind == "shrink":
        dt = jnp.dtype(cfg.dtype)
        specs = head + [sds((cfg.bpad, cfg.k), dt)]
        specs += [sds((BM, cfg.k), dt)] if cfg.tail else []
        specs += [sds((L, cfg.na, cfg.k), dt)]
        body = SK.shrink_split if cfg.split else SK.shrink_block
        tail_at = 4
    elif kind == "expand":
        xdt = jnp.dtype(cfg.x_dtype)
        specs = head + [sds((L,), jnp.float32), sds((cfg.stack + 1,), jnp.int32), sds((cfg.bpad, cfg.na), xdt)]
        specs += [sds((BM, cfg.na), xdt)] if cfg.tail else []
        specs += [sds((L, cfg.n, cfg.max_r), jnp.dtype(cfg.op_dtype)), sds((cfg.bpad, cfg.n), jnp.dtype(cfg.base_dtype))]
        body = EK.expand
        tail_at = 6
    else:
        raise ValueError(f"unknown kernel kind {kind!r}")

    def fn(*args):
        args = list(args)
        if not cfg.tail:
            args.insert(tail_at, None)
        return body(*args, cfg=cfg)

    return fn, specs


def kernel(kind: str, cfg) -> MosaicKernel:
    """The compiled kernel of a configuration (lowered and compiled once per process)."""
    key = (kind, cfg)
    k = _KERNELS.get(key)
    if k is None:
        signature = kernel_signature(kind, cfg)
        asm, aliases = lower(kind, cfg, signature)
        k = MosaicKernel(asm, aliases, len(signature[1]), name=f"{kind}{cfg}")
        k._compile()  # now, not at a first launch that may sit inside a CUDA-graph capture
        _KERNELS[key] = k
    return k


def launch(kind: str, cfg, inputs, outputs, device) -> None:
    """Run a kernel on torch tensors, on torch's current stream: ``inputs`` in signature order,
    ``outputs`` a tensor per output (None: the aliased workspace/base, written in place)."""
    import torch

    k = kernel(kind, cfg)
    stream = torch.cuda.current_stream(device).cuda_stream
    k.launch([t.data_ptr() for t in inputs], [None if t is None else t.data_ptr() for t in outputs], stream)
