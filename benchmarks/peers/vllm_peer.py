"""vLLM 0.33.0's Triton LoRA kernels as the kernelstack backend ``peer-vllm``.

The adapter calls vLLM's public launch functions ``lora_shrink`` (``lora_shrink_op.py``) and
``lora_expand`` (``lora_expand_op.py``), the ``torch.ops.vllm`` custom ops, with the metadata of
``LoRAKernelMeta`` (``lora_kernel_metadata.py``), exactly as ``PunicaWrapperGPU``
(``vllm/lora/punica_wrapper/punica_gpu.py``) does: ``add_shrink`` / ``add_expand`` /
``add_lora_linear`` with ``specialize_active_lora=False`` (vLLM's default: the grid's third axis is
``max_loras + 1``), ``scale=1.0`` in the shrink, ``add_inputs=True`` and ``offset_start=0`` in the
expand, and vLLM's own kernel configs (``get_lora_op_configs``: its defaults, or the tuned JSON of
``VLLM_TUNED_CONFIG_FOLDER`` when set, as in vLLM). It adds no kernel and changes no vLLM code.

Per op
------
* ``shrink`` (shrink1/2/3, shrink_down): not offered (``unsupported``). vLLM's shrink result is the
  float32 ``(stack, s, max_r)`` buffer its expand reads (``add_lora_linear``); kernelstack's is
  ``(s, stack*max_r)`` in the activation dtype. The copy between them would be the adapter's work
  inside the timed call, so vLLM's shrink is timed only inside the fused rows (qkv, gate_up).
* ``expand`` (expand, expand_qkv, expand_gate_up): ``lora_expand`` straight into ``base_output``
  (in place, ``add_inputs=True``); the input is read in place, as a strided
  ``(stack, s, max_r)`` view of kernelstack's ``(s, stack*max_r)`` tensor (the kernel takes its
  strides): no copy. The input keeps the activation dtype (vLLM's ``add_lora_linear`` would pass its
  float32 buffer; the primitive's contract hands the activation dtype).
* ``shrink_expand`` (qkv, gate_up): ``add_lora_linear``: ``lora_shrink`` into a float32
  ``(stack, s, max_r)`` buffer, then ``lora_expand`` of that buffer into ``base_output``. Nothing else.

Once per batch (``prepare``), no host synchronisation, capturable
----------------------------------------------------------------
``LoRAKernelMeta.prepare_tensors`` synchronises (``torch.unique``, a host ``if``), so the adapter
derives the same tensors on the device into persistent buffers and wraps them in a
``LoRAKernelMeta`` whose ``meta_args`` each call uses: the per-token lora id (the slot of the
token's segment, ``-1`` for tokens of rank-0 slots and rows after the last segment: vLLM's "no LoRA"),
the token order stably sorted by lora id, tokens per id and their start offsets. Two differences in
form, none in what the kernels compute: the id list is not compacted (it is always
``[-1, 0, 1, ..., max_loras-1]``; an id with no tokens has count 0 and its programs return at once,
as vLLM's ``-1`` padding entries do; the grid is ``max_loras + 1`` either way), and
``no_lora_flag_cpu`` stays False (knowing it needs a host sync; with no LoRA tokens every program
returns at once, and the shrink still zeroes its output).

Cached (made once, eagerly, outside the timed calls)
----------------------------------------------------
* The weights in vLLM's stacked layout, as vLLM builds them when it loads an adapter: per slice
  ``j`` a contiguous ``(max_loras, max_r, K)`` A (rows ``[j*r, (j+1)*r)`` of kernelstack's packed A,
  zero past the slot's rank) and a contiguous ``(max_loras, n_j, max_r)`` B **with the slot's scaling
  folded in** (vLLM folds ``alpha/r`` into B at load; its expand has no scaling) and zero past the
  slot's rank. Keyed by the weight tensor (data_ptr, shape, strides, dtype, ``_version``, kept only
  while that tensor lives) and the batch info's ranks / scalings tensors (data_ptr, ``_version``);
  made on first use, which must be eager (a first use inside a CUDA-graph capture raises).
* Host copies of the output offsets (``peer_common.HostOffsets``), and the float32 intermediate
  buffer (persistent, from ``self.buffer``).
* vLLM keeps a module-level pointer table of the weights it was called with
  (``utils._LORA_A_PTR_DICT`` / ``_LORA_B_PTR_DICT``, keyed by data_ptr only: vLLM's weights live
  for the process). When the adapter makes a weight copy it drops any entry of that table for the
  copy's fresh addresses (a stale entry of a freed tensor), and when the backend is collected it
  drops its own entries (which would otherwise keep its copies alive). The table's contents are
  vLLM's; only stale keys are removed.

Where vLLM's semantics differ from kernelstack's (rows reported as wrong, not hidden)
-------------------------------------------------------------------------------------
vLLM has no per-slot rank: every slot is ``max_r`` wide, zero-padded. So

* an expand reads all ``max_r`` columns of each slice of its input (times the zero-padded B): for a
  slot of rank ``r < max_r`` it reads columns ``[r, max_r)``, which kernelstack's contract leaves
  unspecified (the compare poisons them with NaN): ``expand`` / ``expand_qkv`` / ``expand_gate_up``
  fail on such rows (in vLLM those columns are the zeros its shrink wrote);
* the stacked intermediate (shrink2/3, expand_qkv/gate_up) places slice ``j`` at columns
  ``[j*max_r, j*max_r + r)``, kernelstack at ``[j*r, (j+1)*r)``: identical when ``r == max_r``,
  different for a slot of smaller rank.

With every slot at ``r == max_r`` (or rank 0) all nine ops match the oracle; with smaller ranks,
shrink1, shrink_down, qkv and gate_up still do. vLLM's ``lora_shrink`` / ``lora_expand`` take
float16 / bfloat16 weights only (they assert it): float32 raises NotImplementedError (the compare
reports "unsupported").

Importing vLLM's kernels
------------------------
Only ``vllm/lora/ops`` and ``vllm/triton_utils`` are unpacked (``fetch.sh``). Their imports need a
few other vLLM modules; each that does not import is replaced, in ``sys.modules`` only, by a
minimal stub that behaves as vLLM's module does for these kernels (never shadowing a real one):
``vllm.envs`` (the six variables the kernels read, parsed as vLLM parses them), ``vllm.logger``
(``init_logger`` with ``*_once``), ``vllm.platforms`` (``current_platform`` from torch: CUDA / ROCm /
CPU, device capability, dispatch key; ``vllm_version_matches_substr`` against 0.33.0),
``vllm.utils.math_utils``, ``vllm.utils.torch_utils`` (vLLM's ``direct_register_custom_op``, which
registers ``torch.ops.vllm.lora_shrink`` / ``lora_expand`` as vLLM does, and ``async_tensor_h2d``),
and, for the fused-MoE modules the package ``__init__`` imports but these ops never call,
``vllm.distributed`` and ``vllm.utils.mem_utils`` (functions that raise). Under Triton's CPU
interpreter with no GPU driver, vLLM's ``triton_utils`` would disable Triton (it wants exactly one
active driver); there, and only during that import, ``CUDA_VISIBLE_DEVICES`` is set empty, which
vLLM's own check takes as "device not visible yet" and keeps Triton.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import types
import weakref

import torch

from lora.backend import BaseLoRABackend
from lora.registry import register_backend

from peer_common import HostOffsets, capturing, missing_module, package, stand_in

VLLM_VERSION = "0.33.0"
_SHRINK = "vllm.lora.ops.triton_ops.lora_shrink_op"
_EXPAND = "vllm.lora.ops.triton_ops.lora_expand_op"
_META = "vllm.lora.ops.triton_ops.lora_kernel_metadata"
_UTILS = "vllm.lora.ops.triton_ops.utils"

# ---- minimal stubs of the vLLM modules the kernels import (only where the real one does not import) ----


def _stub_envs() -> types.ModuleType:
    m = types.ModuleType("vllm.envs", "peer-vllm stub: the variables vLLM's LoRA Triton ops read, as vllm/envs.py")
    env = {
        "VLLM_BATCH_INVARIANT": lambda: bool(int(os.getenv("VLLM_BATCH_INVARIANT", "0"))),
        "VLLM_TUNED_CONFIG_FOLDER": lambda: os.getenv("VLLM_TUNED_CONFIG_FOLDER", None),
        "VLLM_LORA_ENABLE_DUAL_STREAM": lambda: bool(int(os.getenv("VLLM_LORA_ENABLE_DUAL_STREAM", "0"))),
        "VLLM_LORA_DISABLE_PDL": lambda: bool(int(os.getenv("VLLM_LORA_DISABLE_PDL", "0"))),
        "VLLM_TRITON_USE_TD": lambda: {"1": True, "0": False}.get(os.getenv("VLLM_TRITON_USE_TD", "").strip()),
        "VLLM_TRITON_FORCE_FIRST_CONFIG": lambda: (
            os.environ.get("VLLM_TRITON_FORCE_FIRST_CONFIG", "0").strip().lower() in ("1", "true")
        ),
    }
    m.environment_variables = env

    def __getattr__(name: str):  # lazily, like vllm.envs
        if name in env:
            return env[name]()
        raise AttributeError(f"module 'vllm.envs' (peer-vllm stub) has no attribute {name!r}")

    m.__getattr__ = __getattr__
    return m


def _stub_logger() -> types.ModuleType:
    m = types.ModuleType("vllm.logger", "peer-vllm stub: init_logger with vLLM's *_once methods")
    seen: set = set()

    def _once(level: str):
        def log_once(self, msg, *args, **kwargs):
            key = (level, msg, args)
            if key not in seen:
                seen.add(key)
                getattr(self, level)(msg, *args)

        return log_once

    def init_logger(name: str) -> logging.Logger:
        logger = logging.getLogger(name)
        for level in ("debug", "info", "warning"):
            setattr(logger, f"{level}_once", types.MethodType(_once(level), logger))
        return logger

    m.init_logger = init_logger
    return m


def _stub_platforms() -> types.ModuleType:
    m = types.ModuleType("vllm.platforms", "peer-vllm stub: current_platform from torch (CUDA, ROCm or CPU)")

    class _Platform:
        def __init__(self):
            gpu = torch.cuda.is_available()
            self._kind = ("rocm" if torch.version.hip else "cuda") if gpu else "cpu"
            self.device_type = "cuda" if gpu else "cpu"
            self.dispatch_key = "CUDA" if gpu else "CPU"

        def __repr__(self):
            return f"<peer-vllm stub platform: {self._kind}>"

        def is_cuda(self) -> bool:
            return self._kind == "cuda"

        def is_rocm(self) -> bool:
            return self._kind == "rocm"

        def is_cuda_alike(self) -> bool:
            return self._kind in ("cuda", "rocm")

        def is_cpu(self) -> bool:
            return self._kind == "cpu"

        def is_xpu(self) -> bool:
            return False

        def is_tpu(self) -> bool:
            return False

        def get_device_capability(self, device_id: int = 0):
            if not self.is_cuda_alike():
                return None
            return tuple(torch.cuda.get_device_capability(device_id))

        def has_device_capability(self, capability, device_id: int = 0) -> bool:
            cur = self.get_device_capability(device_id)
            if cur is None:
                return False
            if isinstance(capability, tuple):
                return cur >= tuple(capability)
            return cur[0] * 10 + cur[1] >= capability

        def is_device_capability(self, capability, device_id: int = 0) -> bool:
            cur = self.get_device_capability(device_id)
            if cur is None:
                return False
            if isinstance(capability, tuple):
                return cur == tuple(capability)
            return cur[0] * 10 + cur[1] == capability

        def num_compute_units(self, device_id: int = 0) -> int:
            return torch.cuda.get_device_properties(device_id).multi_processor_count

    def vllm_version_matches_substr(substr: str) -> bool:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("vllm")
        except PackageNotFoundError:  # the unpacked sources are not an installed distribution
            v = VLLM_VERSION
        return substr in v

    m.current_platform = _Platform()
    m.vllm_version_matches_substr = vllm_version_matches_substr
    return m


def _stub_math_utils() -> types.ModuleType:
    m = types.ModuleType("vllm.utils.math_utils", "peer-vllm stub: vllm/utils/math_utils.py's helpers")
    m.cdiv = lambda a, b: -(a // -b)
    m.next_power_of_2 = lambda n: 1 if n < 1 else 1 << (n - 1).bit_length()
    m.prev_power_of_2 = lambda n: 0 if n < 1 else 1 << (n.bit_length() - 1)
    m.round_up = lambda x, y: ((x + y - 1) // y) * y
    m.round_down = lambda x, y: (x // y) * y
    return m


def _stub_torch_utils() -> types.ModuleType:
    from torch.library import Library, infer_schema

    m = types.ModuleType("vllm.utils.torch_utils", "peer-vllm stub: direct_register_custom_op, async_tensor_h2d")
    m.vllm_lib = Library("vllm", "FRAGMENT")  # noqa: kept alive by the module, as in vLLM
    m.PIN_MEMORY = torch.cuda.is_available()

    def direct_register_custom_op(op_name, op_func, mutates_args=None, fake_impl=None, target_lib=None,
                                  dispatch_key=None, tags=()):
        if mutates_args is None:
            mutates_args = []
        if dispatch_key is None:
            from vllm.platforms import current_platform

            dispatch_key = current_platform.dispatch_key
        schema_str = infer_schema(op_func, mutates_args=mutates_args)
        my_lib = target_lib or m.vllm_lib
        my_lib.define(op_name + schema_str, tags=tags)
        my_lib.impl(op_name, op_func, dispatch_key=dispatch_key)
        if fake_impl is not None:
            my_lib._register_fake(op_name, fake_impl)

    def async_tensor_h2d(data, device=None, dtype=None, out=None):
        if dtype is None and out is not None:
            dtype = out.dtype
        if isinstance(data, torch.Tensor):
            t = data
            if m.PIN_MEMORY and not t.is_pinned():
                t = torch.empty(t.shape, dtype=dtype or t.dtype, device="cpu", pin_memory=True).copy_(t)
        else:
            t = torch.tensor(data, dtype=dtype, pin_memory=m.PIN_MEMORY, device="cpu")
        if out is not None:
            return out.copy_(t, non_blocking=True)
        return t.to(device=device, dtype=dtype, non_blocking=True)

    m.direct_register_custom_op = direct_register_custom_op
    m.async_tensor_h2d = async_tensor_h2d
    m.is_pin_memory_available = lambda: m.PIN_MEMORY
    return m


def _not_here(qualname: str):
    def fn(*args, **kwargs):
        raise NotImplementedError(f"{qualname}: a peer-vllm stub (fused-MoE LoRA ops only, not lora_shrink/expand)")

    fn.__name__ = qualname.rpartition(".")[2]
    return fn


def _stub_distributed() -> types.ModuleType:
    m = types.ModuleType("vllm.distributed", "peer-vllm stub: names the fused-MoE LoRA modules import")
    m.tensor_model_parallel_all_gather = _not_here("vllm.distributed.tensor_model_parallel_all_gather")
    m.tensor_model_parallel_all_reduce = _not_here("vllm.distributed.tensor_model_parallel_all_reduce")
    return m


def _stub_mem_utils() -> types.ModuleType:
    m = types.ModuleType("vllm.utils.mem_utils", "peer-vllm stub: names the fused-MoE LoRA modules import")
    m.get_max_shared_memory_bytes = _not_here("vllm.utils.mem_utils.get_max_shared_memory_bytes")
    return m


_STUBS = (
    ("vllm.envs", _stub_envs),
    ("vllm.logger", _stub_logger),
    ("vllm.platforms", _stub_platforms),
    ("vllm.utils", lambda: package("vllm.utils", "the parent of the vllm.utils stubs")),
    ("vllm.utils.math_utils", _stub_math_utils),
    ("vllm.utils.torch_utils", _stub_torch_utils),
    ("vllm.utils.mem_utils", _stub_mem_utils),
    ("vllm.distributed", _stub_distributed),
)


def _install_stubs() -> None:
    """Each module of _STUBS that does not import (and only those) becomes its stub in sys.modules."""
    importlib.import_module("vllm")  # the peer sources (a namespace package) or an installed vLLM
    for name, make in _STUBS:
        stand_in(name, make)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


@contextlib.contextmanager
def _triton_check_env():
    """Under Triton's interpreter on a host with no GPU driver, keep vLLM's triton_utils from disabling Triton."""
    if (not _interpreting() or "vllm.triton_utils.importing" in sys.modules
            or "CUDA_VISIBLE_DEVICES" in os.environ):
        yield
        return
    try:
        from triton.backends import backends

        active = [n for n, b in backends.items() if n != "cpu" and b.driver and b.driver.is_active()]
    except Exception:
        active = None
    if active != []:
        yield
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # vLLM's check: "devices not visible yet" allows 0 drivers
    try:
        yield
    finally:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)


_OPS: types.SimpleNamespace | None = None


def _vllm() -> types.SimpleNamespace:
    """vLLM's launch functions, metadata class and pointer tables (imported once)."""
    global _OPS
    if _OPS is None:
        with _triton_check_env():
            _install_stubs()
            shrink_mod = importlib.import_module(_SHRINK)
            expand_mod = importlib.import_module(_EXPAND)
            meta_mod = importlib.import_module(_META)
            utils = importlib.import_module(_UTILS)
            triton_utils = importlib.import_module("vllm.triton_utils")
        _OPS = types.SimpleNamespace(lora_shrink=shrink_mod.lora_shrink, lora_expand=expand_mod.lora_expand,
                                     LoRAKernelMeta=meta_mod.LoRAKernelMeta, utils=utils,
                                     has_triton=triton_utils.HAS_TRITON)
    return _OPS


def _drop_lut_keys(utils, keys: list) -> None:
    """Remove this backend's entries from vLLM's pointer tables (they hold its weight copies alive)."""
    for table, key in keys:
        getattr(utils, table).pop(key, None)
    keys.clear()


@register_backend("peer-vllm")
class VLLMPeerBackend(BaseLoRABackend):
    """vLLM 0.33.0's ``lora_shrink`` / ``lora_expand`` behind the kernelstack backend interface."""

    description = "vLLM 0.33.0 lora_shrink / lora_expand (Triton), as PunicaWrapperGPU calls them"

    #: vLLM's LoRAConfig.specialize_active_lora default: the grid covers max_loras + 1 ids.
    specialize_active_lora = False

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            with _triton_check_env():
                _install_stubs()
                reason = missing_module(_SHRINK, _EXPAND, _META)
            if reason is not None:
                return reason
            ops = _vllm()
        except Exception as exc:
            return f"vLLM's LoRA ops do not import ({type(exc).__name__}: {exc}); run `bash benchmarks/peers/fetch.sh`"
        if not ops.has_triton:
            return "vllm.triton_utils disabled Triton (it wants exactly one active GPU driver)"
        return None

    def __init__(self, name: str, batch_info=None):
        super().__init__(name, None)  # raises BackendUnavailableError first when vLLM cannot run
        self._ops = _vllm()
        self._host_offsets = HostOffsets()
        self._a_cache: dict[tuple, tuple] = {}
        self._b_cache: dict[tuple, tuple] = {}
        self._lut_keys: list = []
        self._cpu_meta: dict[int, tuple] = {}
        self._meta = None
        weakref.finalize(self, _drop_lut_keys, self._ops.utils, self._lut_keys)
        if batch_info is not None:
            self.set_batch_info(batch_info)

    # ---- per batch: LoRAKernelMeta's tensors, on the device, without a host sync ----------------

    def prepare(self, batch_info) -> None:
        tokens, _ = self.capacity(batch_info)
        n_lora, bs, dev = batch_info.num_lora, batch_info.bs, batch_info.device
        i32 = torch.int32
        mapping = self.buffer("token_lora_mapping", tokens, i32, dev)[:tokens]
        order = self.buffer("token_indices_sorted_by_lora_ids", tokens, i32, dev)[:tokens]
        ids = self.buffer("lora_ids", n_lora + 2, i32, dev)[: n_lora + 2]  # [-1, 0, .., L-1] + bound L
        start = self.buffer("lora_token_start_loc", n_lora + 2, i32, dev)[: n_lora + 2]
        counts = self.buffer("num_tokens_per_lora", n_lora + 1, i32, dev)[: n_lora + 1]
        seg = self.buffer("token_segment", tokens, i32, dev)[:tokens]
        key = self.buffer("sort_key", tokens, i32, dev)[:tokens]
        sorted_key = self.buffer("sorted_key", tokens, i32, dev)[:tokens]
        sorted_idx = self.buffer("sorted_index", tokens, torch.int64, dev)[:tokens]

        torch.arange(-1, n_lora + 1, dtype=i32, device=dev, out=ids)
        if bs == 0:
            mapping.fill_(-1)
            key.fill_(n_lora)
        else:
            torch.arange(tokens, dtype=i32, device=dev, out=key)
            # the segment of each row (bs: after the last segment); zero-length segments never match
            torch.searchsorted(batch_info.seg_indptr[1:], key, right=True, out_int32=True, out=seg)
            torch.clamp(seg, max=bs - 1, out=mapping)
            torch.index_select(batch_info.weight_indices, 0, mapping, out=key)  # slot of the row
            torch.index_select(batch_info.lora_ranks, 0, key, out=mapping)  # its rank
            in_seg = seg < bs
            lora = in_seg & (mapping > 0)
            # vLLM's token_lora_mapping: the slot, or -1 (no LoRA) for rank-0 slots and rows after the segments
            mapping.copy_(key).masked_fill_(~lora, -1)
            # rows after the last segment sort after every id, so the ids' token ranges lie in [0, rows)
            key.copy_(mapping).masked_fill_(~in_seg, n_lora)
        torch.sort(key, stable=True, out=(sorted_key, sorted_idx))
        order.copy_(sorted_idx)
        torch.searchsorted(sorted_key, ids, out_int32=True, out=start)  # rows with an id below each bound
        torch.sub(start[1:], start[:-1], out=counts)

        cpu = self._cpu_meta.get(n_lora)
        if cpu is None:  # LoRAKernelMeta's CPU flags: no_lora False, num_active max_loras + 1 (not specialised)
            cpu = self._cpu_meta[n_lora] = (torch.tensor([False]), torch.tensor([n_lora + 1], dtype=i32),
                                            torch.tensor([n_lora + 1], dtype=i32))
        self._meta = self._ops.LoRAKernelMeta(
            token_lora_mapping=mapping,
            token_indices_sorted_by_lora_ids=order,
            active_lora_ids=ids[: n_lora + 1],
            num_tokens_per_lora=counts,
            lora_token_start_loc=start,
            no_lora_flag_cpu=cpu[0],
            num_active_loras_cpu=cpu[1],
            default_num_active_loras_cpu=cpu[2],
            captured_lora_counts=[n_lora + 1],
        )

    # ---- the ops ------------------------------------------------------------------------------

    def shrink(self, x: torch.Tensor, weights: torch.Tensor, stack_num: int) -> torch.Tensor:
        # vLLM's shrink result is its float32 (stack, s, max_r) buffer, which its expand reads; kernelstack's
        # shrink returns (s, stack*max_r) in x's dtype. The copy between them would be adapter work inside
        # the timed call, so the shrink alone is not offered: the fused rows (qkv, gate_up) time vLLM's shrink.
        raise NotImplementedError(
            f"vLLM {VLLM_VERSION}'s lora_shrink writes a float32 (stack, s, max_r) buffer for its expand; "
            "no shrink result in kernelstack's layout without a copy (the fused qkv / gate_up rows time it)")

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        self._check_dtype(x)
        offsets = self._host_offsets(output_offset)
        stack, s, max_r = len(offsets) - 1, x.shape[0], weights.shape[2]
        if s == 0:
            return base_output
        # (stack, s, max_r) view of (s, stack*max_r): lora_expand takes the input's strides
        xin = x.unsqueeze(0) if stack == 1 else x.unflatten(1, (stack, max_r)).permute(1, 0, 2)
        self._add_expand(base_output, xin, self._lora_b(weights, offsets))
        return base_output

    def shrink_expand(self, x, a, b, output_offset, max_slice_width, base_output, stack_num):
        # PunicaWrapperGPU.add_lora_linear: shrink into a float32 buffer, expand it into the output
        self._check_dtype(x)
        offsets = self._host_offsets(output_offset)
        s, max_r = x.shape[0], a.shape[1] // stack_num
        if s == 0:
            return base_output
        lora_a, lora_b = self._lora_a(a, stack_num), self._lora_b(b, offsets)
        buf = self._intermediate(stack_num, s, max_r, x.device)
        self._add_shrink(buf, x, lora_a)
        self._add_expand(base_output, buf, lora_b)
        return base_output

    # ---- vLLM's calls (PunicaWrapperGPU.add_shrink / add_expand) ----------------------------------

    def _add_shrink(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: list) -> None:
        self._ops.lora_shrink(x, lora_a_stacked, y, *self._meta.meta_args(x.size(0), self.specialize_active_lora),
                              1.0)

    def _add_expand(self, y: torch.Tensor, x: torch.Tensor, lora_b_stacked: list) -> None:
        self._ops.lora_expand(x, lora_b_stacked, y, *self._meta.meta_args(x.size(1), self.specialize_active_lora),
                              offset_start=0, add_inputs=True)

    # ---- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _check_dtype(x: torch.Tensor) -> None:
        if x.dtype not in (torch.float16, torch.bfloat16):
            raise NotImplementedError(
                f"vLLM {VLLM_VERSION}'s lora_shrink / lora_expand take float16 / bfloat16 activations and "
                f"weights only (they assert it); got {x.dtype}"
            )

    def _intermediate(self, stack: int, s: int, max_r: int, device) -> torch.Tensor:
        """The float32 (stack, s, max_r) buffer vLLM's add_lora_linear shrinks into (persistent here)."""
        tokens = max(self.capacity(self.batch_info)[0], s)
        buf = self.buffer(f"intermediate_{stack}x{max_r}", tokens * stack * max_r, torch.float32, device)
        return buf[: stack * s * max_r].view(stack, s, max_r)

    def _batch_key(self, *tensors) -> tuple:
        return tuple((t.data_ptr(), t._version) for t in tensors)

    @staticmethod
    def _weight_key(w: torch.Tensor) -> tuple:
        return (w.data_ptr(), tuple(w.shape), w.stride(), w.dtype, w._version)

    @staticmethod
    def _cached(cache: dict, key: tuple):
        hit = cache.get(key)
        if hit is not None and hit[0]() is not None:  # the weight tensor still lives: same memory
            return hit[1]
        return None

    def _remember(self, cache: dict, key: tuple, weights: torch.Tensor, slices: list, table: str) -> list:
        for k in [k for k, (ref, _) in cache.items() if ref() is None]:
            del cache[k]
        cache[key] = (weakref.ref(weights), slices)
        lut_key = tuple(t.data_ptr() for t in slices)
        getattr(self._ops.utils, table).pop(lut_key, None)  # an entry for these fresh addresses is stale
        self._lut_keys.append((table, lut_key))
        return slices

    def _no_capture(self, what: str, device) -> None:
        if capturing(device):
            raise RuntimeError(
                f"peer-vllm: {what} first seen inside a CUDA-graph capture; call the op eagerly first "
                "(the adapter lays the weights out as vLLM stores them once, outside the timed calls)"
            )

    def _lora_a(self, weights: torch.Tensor, stack: int) -> list:
        """Per slice a contiguous (L, max_r, K) A, zero past each slot's rank: vLLM's lora_a_stacked."""
        bi = self.batch_info
        key = (self._weight_key(weights), stack, self._batch_key(bi.lora_ranks))
        got = self._cached(self._a_cache, key)
        if got is not None:
            return got
        self._no_capture("a LoRA A weight", weights.device)
        n_lora, rows, _ = weights.shape
        max_r, dev = rows // stack, weights.device
        with torch.no_grad():
            r = bi.lora_ranks.to(torch.int64)[None, :, None]  # (1, L, 1)
            i = torch.arange(max_r, device=dev)[None, None, :]
            j = torch.arange(stack, device=dev)[:, None, None]
            valid = i < r  # (1, L, max_r)
            src = torch.where(valid, j * r + i, 0)  # (stack, L, max_r): row j*r + i of the packed A
            slot = torch.arange(n_lora, device=dev)[None, :, None]
            stacked = weights[slot, src].masked_fill(~valid[..., None], 0).contiguous()  # (stack, L, max_r, K)
        return self._remember(self._a_cache, key, weights, [stacked[k] for k in range(stack)], "_LORA_A_PTR_DICT")

    def _lora_b(self, weights: torch.Tensor, offsets: tuple[int, ...]) -> list:
        """Per slice a contiguous (L, n_j, max_r) B times the slot's scaling, zero past its rank (lora_b_stacked)."""
        bi = self.batch_info
        key = (self._weight_key(weights), offsets, self._batch_key(bi.lora_ranks, bi.scalings))
        got = self._cached(self._b_cache, key)
        if got is not None:
            return got
        self._no_capture("a LoRA B weight", weights.device)
        max_r, dev = weights.shape[2], weights.device
        with torch.no_grad():
            valid = torch.arange(max_r, device=dev)[None, None, :] < bi.lora_ranks.to(torch.int64)[:, None, None]
            scaled = (weights.float() * bi.scalings.float()[:, None, None]).to(weights.dtype)
            scaled = scaled.masked_fill(~valid, 0)
            slices = [scaled[:, lo:hi].contiguous() for lo, hi in zip(offsets, offsets[1:])]
        return self._remember(self._b_cache, key, weights, slices, "_LORA_B_PTR_DICT")
