"""SGLang 0.5.23's ``triton_v2`` dense LoRA runner as the kernelstack backend ``peer-sglang-v2``.

What SGLang runs (``srt/lora/backend/triton_v2_backend.py``): once per batch the backend expands the
requests' adapter slots into a per-token slot map (``_compute_token_lora_mapping``: -1 for rank-0 slots
and padding) and binds it to a ``DenseLoraRunner`` (``begin_batch``); every LoRA layer then asks the
runner for a plan (``plan_for(kind, max_rank, in_features, out_features, num_tokens=...)``, the first
matching row of ``configs/<arch>.plans.json``: sm90 on H100/H200, ``default`` elsewhere) and runs
``runner.apply(x, base_fn, plan, a=A, b=B, offsets=...)``: routing (tokens sorted by slot, cached per
forward and block size), the shrink into a bridge, the expand into the base output, with the plan's
overlap of the LoRA work against the base GEMM. This adapter drives the runner the same way:

* ``prepare``: the slot map into a persistent buffer with SGLang's ``_compute_token_lora_mapping``
  (on CUDA: the buffer is first filled with -1, then SGLang's Triton kernel writes the segments' rows,
  so rows after the last segment stay -1; no host sync. On the CPU, SGLang's torch path with the live
  token count read on the host), the ranks / scalings copied into persistent buffers, then
  ``runner.begin_batch(..., graph_mode=True)`` (phase DECODE when every segment has <= 1 token, else
  PREFILL) so the workspace keeps graph-safe storage. If ``base_backend`` does not import, an
  equivalent torch computation is used instead (``SGLangV2PeerBackend.mapping_source`` says which).
* ``shrink``: ``runner.run_a`` with the plan for a LINEAR layer of this rank, ``in_features = K`` and
  -- a shrink alone has no output width -- ``out_features = K`` (planned as a square layer). SGLang
  never exposes the shrink alone: its result is the runner's bridge. Where the plan's bridge is split-K
  or per-slot planes (decode plans), which only its expand finishes, there is no shrink result in
  SGLang, and the op says so (``unsupported``) rather than timing a torch finish; the fused rows time
  those plans. Where rows lack a full-rank adapter (never on the Llama-3-8B cases) the columns SGLang
  leaves unwritten are zeroed with torch for the check.
* ``expand``: ``runner.run_b`` on a plain ``Bridge(x)`` with the host offsets (``HostOffsets``), the
  plan for ``out_features = offsets[-1]`` and -- unknown for an expand alone -- ``in_features`` the same.
* ``shrink_expand`` (qkv, gate_up): ``runner.apply(x, lambda: base_output, plan, a=a, b=b,
  offsets=...)`` with the real K and N, i.e. exactly the engine's fused call. The base GEMM is not
  part of what is timed, so ``base_fn`` only returns ``base_output``. Overlap plans then do what the
  engine does around an empty base GEMM: ``a`` runs the shrink on SGLang's side stream (event record /
  wait, no extra kernel), ``ab_delta`` zeroes a delta, runs shrink + expand into it on the side stream
  and adds it into the base output (the engine's extra kernels, not ours). What overlap saves in the
  engine (LoRA hidden under the base GEMM) cannot show here.

Harness differences (documented, none changes a result):

* Workspace streams: SGLang's ``LoraWorkspace`` keys scratch and routes by the caller's CUDA stream and
  refuses to allocate inside a capture; SGLang warms up on the stream it captures on. ``lora compare``
  warms up on a side stream and captures on torch's capture stream, so the runner gets a workspace
  subclass whose stream key is one constant (scratch and cached routes shared across streams; the
  harness runs one op at a time, ordered by SGLang's own events).
* Routing metadata for aligned routes of 513 (769 with <= 4 adapters) to 16383 rows goes through
  ``_align_block_size_jit`` -> ``sglang.kernels.ops.moe.moe_align`` (a CUDA source compiled at run time
  through tvm-ffi / nvcc), which is not in the unpacked subtrees. When it does not import, a stub fills
  the same buffers from SGLang's own pure-torch fallback ``_align_block_size_torch`` (run eagerly):
  the same route (sentinel bucket last instead of first: the kernels skip it either way), a different
  cost. Per-op timings never include routing (the route is built on the op's first call after
  ``prepare`` and cached, as the engine builds it once per forward); ``--step`` graph_once timings do.
* CPU runs only (Triton's interpreter): SGLang's expand refuses non-CUDA devices in
  ``lora_b.slice_geometry``; on a CPU batch the runner's ``slice_geometry`` is wrapped so that a CPU
  device gets the same geometry tables (SGLang's formula); CUDA devices call SGLang's function unchanged.
* Routes are cached per ``prepare`` (``begin_batch`` resets them); ``prepare_per_call`` rebuilds them
  on every call.

Modules outside the unpacked subtrees are stood in for by ``sglang_stubs.py`` (only where the real
module does not import; its docstring lists them).
"""

from __future__ import annotations

import torch

from lora.backend import BaseLoRABackend
from lora.registry import register_backend

from peer_common import HostOffsets, capturing, missing_module

__all__ = ["SGLangV2PeerBackend"]

_REQUIRED = (
    "sglang.srt.lora.dense.runner",
    "sglang.srt.lora.dense.plan",
    "sglang.srt.lora.workspace",
    "sglang.srt.lora.utils",
    "sglang.kernels.ops.lora.common.lora_a",
    "sglang.kernels.ops.lora.common.lora_b",
    "sglang.kernels.ops.lora.common.routing",
)


_READY: str | None | bool = False  # False: not tried; None: ok; str: why not


def _load() -> str | None:
    global _READY
    if _READY is False:
        try:
            import sglang_stubs

            sglang_stubs.install()
            _READY = missing_module(*_REQUIRED)
        except Exception as exc:  # noqa: BLE001
            _READY = f"SGLang stubs failed ({type(exc).__name__}: {exc})"
    return _READY


def _workspace_class():
    from sglang.srt.lora.workspace import LoraWorkspace

    class _OneStreamKeyWorkspace(LoraWorkspace):
        """SGLang's workspace with one stream key (see the module docstring: the compare warms up on a
        side stream and captures on torch's capture stream)."""

        def _caller(self, device) -> int:  # noqa: D401  (a staticmethod upstream, called via self)
            return 0

    return _OneStreamKeyWorkspace


def _cpu_slice_geometry_shim() -> None:
    """CPU correctness runs only: SGLang's ``slice_geometry`` refuses non-CUDA devices (its expand is
    CUDA-only). Wrap the name the runner calls so that a CPU device gets the same ``SliceGeometry``,
    built with SGLang's formula (``lora_b._build_geometry``, minus its CUDA device / capture guards);
    CUDA devices go to SGLang's function unchanged. Installed on the first CPU batch, never on a GPU run."""
    import triton
    from sglang.kernels.ops.lora.common import lora_b
    from sglang.srt.lora.dense import runner as runner_mod

    original = lora_b.slice_geometry
    if getattr(runner_mod.slice_geometry, "_kernelstack_cpu_shim", False):
        return

    def slice_geometry(offsets, block_size_n, device, out_offsets=None):
        if torch.device(device).type == "cuda":
            return original(offsets, block_size_n, device, out_offsets)
        rows, columns = lora_b._geometry_inputs(offsets, block_size_n, out_offsets)
        key = (rows, columns, block_size_n, torch.device(device))
        geometry = _CPU_GEOMETRY.get(key)
        if geometry is None:
            widths = [hi - lo for lo, hi in zip(rows, rows[1:])]
            uniform = widths[0] if len(set(widths)) == 1 else 0
            stride = columns[1] if len(columns) > 1 else uniform
            regular = stride > 0 and all(c == s * stride for s, c in enumerate(columns))
            head = -(-len(rows) // 4) * 4
            table = torch.tensor(list(rows) + [0] * (head - len(rows)) + list(columns), dtype=torch.int32,
                                 device=device)
            geometry = _CPU_GEOMETRY[key] = lora_b.SliceGeometry(
                slice_offsets=table[: len(rows)], out_offsets=table[head:], num_slices=len(widths),
                num_column_tiles=sum(triton.cdiv(w, block_size_n) for w in widths), uniform_width=uniform,
                out_stride=stride if regular else 0, full_tiles=all(w % block_size_n == 0 for w in widths),
                block_size_n=block_size_n)
        return geometry

    slice_geometry._kernelstack_cpu_shim = True
    runner_mod.slice_geometry = slice_geometry


_CPU_GEOMETRY: dict = {}


def _token_mapping_fn():
    try:
        from sglang.srt.lora.backend.base_backend import _compute_token_lora_mapping

        return _compute_token_lora_mapping
    except Exception:  # noqa: BLE001
        return None


# ---- the backend ---------------------------------------------------------------------------------------


@register_backend("peer-sglang-v2")
class SGLangV2PeerBackend(BaseLoRABackend):
    description = "SGLang 0.5.23 triton_v2 dense runner (its sm90/default plans)"

    #: "sglang" (its _compute_token_lora_mapping) or "torch" (equivalent torch code), once prepared.
    mapping_source: str | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _load()

    def __init__(self, name, batch_info=None):
        self._runner = None
        self._runner_key = None
        self._host_offsets = HostOffsets()
        self._map_fn = None
        super().__init__(name, batch_info)

    # -- per batch

    def _runner_for(self, device: torch.device, num_lora: int):
        key = (device, num_lora)
        if self._runner_key != key:
            from sglang.srt.lora.dense.runner import DenseLoraRunner

            if device.type != "cuda":
                _cpu_slice_geometry_shim()
            self._runner = DenseLoraRunner(_workspace_class()(), max_loras=num_lora, device=device)
            self._runner_key = key
            self._map_fn = _token_mapping_fn()
            self.mapping_source = "sglang" if self._map_fn is not None else "torch"
        return self._runner

    def prepare(self, batch_info) -> None:
        from sglang.srt.lora.utils import Phase

        bi = batch_info
        dev = bi.device
        runner = self._runner_for(dev, bi.num_lora)
        cap, _ = self.capacity(bi)
        cap = max(cap, 1)
        slots = self.buffer("token_slots", cap, torch.int32, dev)[:cap]
        ranks = self.buffer("lora_ranks", bi.num_lora, torch.int32, dev)[: bi.num_lora]
        scalings = self.buffer("scalings", bi.num_lora, torch.float32, dev)[: bi.num_lora]
        ranks.copy_(bi.lora_ranks)
        scalings.copy_(bi.scalings)
        covered = min(cap, bi.bs * bi.max_len)  # >= the batch's tokens; the rows SGLang's kernel can reach
        if bi.bs == 0 or covered == 0:
            slots.fill_(-1)
        elif self._map_fn is not None and dev.type == "cuda":
            slots.fill_(-1)  # rows after the last segment (SGLang's kernel writes the segments' rows only)
            self._map_fn(covered, bi.seg_indptr, ranks, bi.weight_indices, slots[:covered], max_len=bi.max_len)
        elif self._map_fn is not None:  # CPU: SGLang's torch path needs the live token count (free on the host)
            live = min(int(bi.seg_indptr[-1]), cap)
            self._map_fn(live, bi.seg_indptr, ranks, bi.weight_indices, slots, max_len=bi.max_len)
        else:  # equivalent torch computation (base_backend did not import)
            pos = torch.arange(cap, device=dev, dtype=torch.int32)
            seg = torch.searchsorted(bi.seg_indptr, pos, right=True) - 1
            seg.clamp_(0, bi.bs - 1)
            slot = bi.weight_indices.index_select(0, seg)
            live = (pos < bi.seg_indptr[-1]) & (ranks.index_select(0, slot) > 0)
            torch.where(live, slot, torch.full_like(slot, -1), out=slots)
        # Each row's rank (0 without an adapter): the shrink op's column mask.
        idx = self.buffer("slot_index", cap, torch.int32, dev)[:cap]
        has = self.buffer("has_adapter", cap, torch.bool, dev)[:cap]
        tok_rank = self.buffer("token_ranks", cap, torch.int32, dev)[:cap]
        torch.clamp(slots, min=0, out=idx)
        torch.index_select(ranks, 0, idx, out=tok_rank)
        torch.ge(slots, 0, out=has)
        tok_rank.mul_(has)
        self._slots, self._tok_rank = slots, tok_rank
        self._full_rank = {}
        prefill = bi.max_len > 1
        runner.begin_batch(
            token_slots=slots,
            lora_ranks=ranks,
            scalings=scalings,
            num_tokens=0,  # set from each op's x by plan_for (set_num_tokens), as in the engine
            phase=Phase.PREFILL if prefill else Phase.DECODE,
            graph_mode=True,
            is_prefill_graph=prefill,
        )

    def _plan(self, max_rank: int, in_features: int, out_features: int, num_tokens: int):
        from sglang.srt.lora.dense.plan import DenseLoraKind

        return self._runner.plan_for(DenseLoraKind.LINEAR, max_rank, in_features, out_features,
                                     num_tokens=num_tokens)

    # -- the ops

    def shrink(self, x, weights, stack_num):
        runner = self._runner
        s, k = x.shape
        width = weights.shape[1]
        plan = self._plan(width // stack_num, k, k, s)
        bridge = runner.run_a(x, weights, stack=stack_num, plan=plan)
        if bridge.slot_planes or bridge.planes > 1:
            # the plan's shrink leaves per-slot or split-K planes for its expand to finish: no shrink result
            # exists in SGLang for this shape; finishing it here would time torch, not SGLang
            raise NotImplementedError(
                f"SGLang's triton_v2 plan for this shrink ({plan.a_family.value}, "
                f"{'slot planes' if bridge.slot_planes else f'{bridge.planes} split-K planes'}) has no shrink "
                "result alone; its expand finishes it (the fused qkv / gate_up rows time that)")
        t = bridge.tensor
        if not self._all_rows_full_rank(s, width // stack_num):
            # rows without an adapter and columns past stack*r are left unwritten by SGLang: zeroed here
            # (never on the Llama-3-8B cases, whose rows all have a full-rank adapter)
            cols = torch.arange(width, device=x.device, dtype=torch.int32)
            mask = cols[None, :] < (self._tok_rank[:s, None] * stack_num)
            t = torch.where(mask, t, torch.zeros((), dtype=t.dtype, device=x.device))
        return t

    def _all_rows_full_rank(self, s: int, max_r: int) -> bool:
        """Whether rows [0, s) all have an adapter of rank max_r (read once per batch and shape, eagerly;
        inside a capture an unknown answer is no)."""
        key = (s, max_r)
        got = self._full_rank.get(key)
        if got is None:
            if capturing(self._tok_rank.device):
                return False
            got = self._full_rank[key] = bool((self._tok_rank[:s] == max_r).all())
        return got

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        from sglang.srt.lora.dense.runner import Bridge

        offsets = self._host_offsets(output_offset)
        plan = self._plan(weights.shape[2], offsets[-1], offsets[-1], x.shape[0])
        self._runner.run_b(Bridge(x), weights, base_output, offsets=offsets, plan=plan, add_inplace=True)
        return base_output

    def shrink_expand(self, x, a, b, output_offset, max_slice_width, base_output, stack_num):
        offsets = self._host_offsets(output_offset)
        if len(offsets) - 1 != stack_num:
            raise ValueError(f"{len(offsets) - 1} output slices for stack_num={stack_num}")
        plan = self._plan(b.shape[2], a.shape[2], offsets[-1], x.shape[0])
        out = self._runner.apply(x, lambda: base_output, plan, a=a, b=b, offsets=offsets)
        return out
