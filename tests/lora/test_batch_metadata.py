"""Metadata once per batch, persistent buffers, graph-safety rules and engine interop (CPU-checkable part).

The GPU side (a real capture and replay, memory stats, two streams) is in ``tests/gpu/test_graph_safety.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import lora
from lora.registry import BUILT_IN
from lora import LoRABatchInfo

from lora import testing as C
from lora.testing import batch_info


def to_torch(a, dtype: torch.dtype, device) -> torch.Tensor:
    return torch.from_numpy(a).to(device=device, dtype=dtype)


def to_f64(t: torch.Tensor):
    return t.detach().to("cpu", torch.float64).numpy()

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Our backends' per-batch metadata contract; an installed third-party backend is checked by check_backend.
STATUS = {s.name: s for s in lora.available_backends() if s.origin == BUILT_IN}
backends = pytest.mark.parametrize("name", sorted(STATUS))


def make(name, bi=None):
    if not STATUS[name].available:
        pytest.skip(f"backend {name!r} cannot run here: {STATUS[name].reason}")
    return lora.get_backend_from_name(name)(name, bi)


def triton_or_skip():
    if not STATUS["triton"].available:
        pytest.skip(f"triton cannot run here: {STATUS['triton'].reason}")


# ---- LoRABatchInfo.empty / update_ ------------------------------------------------------------------


def _ptrs(bi: LoRABatchInfo) -> list[int]:
    return [getattr(bi, f).data_ptr() for f in ("seg_lens", "seg_indptr", "weight_indices", "lora_ranks", "scalings")]


def test_update_writes_in_place_and_pads_with_empty_segments():
    bi = LoRABatchInfo.empty(max_segments=5, num_lora=3)
    assert bi.bs == 5 and bi.num_lora == 3 and bi.seg_indptr.tolist() == [0] * 6
    before = _ptrs(bi)
    bi.update_([3, 0, 4], [2, 0, 2], [8, 0, 4], [0.5, 1.0, 2.0])
    assert _ptrs(bi) == before, "update_ must write into the same tensors"
    assert bi.seg_lens.tolist() == [3, 0, 4, 0, 0]
    assert bi.seg_indptr.tolist() == [0, 3, 3, 7, 7, 7]
    assert bi.weight_indices.tolist() == [2, 0, 2, 0, 0]
    assert bi.lora_ranks.tolist() == [8, 0, 4] and bi.scalings.tolist() == [0.5, 1.0, 2.0]
    assert bi.max_len == 4
    # ranks / scalings untouched when omitted; device-side (here: tensor) lengths accepted
    bi.update_(torch.tensor([1, 1], dtype=torch.int32), torch.tensor([1, 0], dtype=torch.int32))
    assert bi.seg_indptr.tolist() == [0, 1, 2, 2, 2, 2] and bi.lora_ranks.tolist() == [8, 0, 4]
    assert _ptrs(bi) == before


@pytest.mark.parametrize(
    "args, exc, words",
    [
        (([1] * 6, [0] * 6), ValueError, "6 segments do not fit this batch info's 5"),
        (([1, 1], [0]), ValueError, "weight_indices has 1 entries but seg_lens has 2"),
        (([1], [3]), ValueError, r"weight_indices \[3\] out of range \[0, 3\)"),
        (([-1], [0]), ValueError, "seg_lens must be >= 0"),
        (([1], [0], [1, 2]), ValueError, "lora_ranks has 2 entries, expected 3"),
        (([1], [0], None, [1.0, float("inf"), 1.0]), ValueError, "scalings must be finite"),
        (([1, 1], [0, 0], [4, -1, 4]), ValueError, "lora_ranks must be >= 0"),
    ],
)
def test_update_rejects(args, exc, words):
    bi = LoRABatchInfo.empty(5, 3).update_([2, 1], [1, 2], [4, 4, 4], [1.0, 2.0, 3.0])
    before = {f: getattr(bi, f).clone() for f in ("seg_lens", "seg_indptr", "weight_indices", "lora_ranks", "scalings")}
    with pytest.raises(exc, match=words):
        bi.update_(*args)
    for f, t in before.items():
        assert torch.equal(getattr(bi, f), t), f"a rejected update changed {f}"


# ---- reserve: sized once, never reallocated, capacity errors before any launch -----------------------


def _buffer_ptrs(backend) -> dict[str, int]:
    return {k: v.data_ptr() for k, v in backend._buffers.items()}


@backends
def test_reserved_buffers_stay_put_and_capacity_is_enforced(name, rng):
    backend = make(name)
    backend.reserve(max_tokens=200, max_segments=6)
    bi = LoRABatchInfo.empty(6, 4, device=DEVICE)
    seen = None
    for trial in range(3):
        comp = C.random_composition(rng, max_tokens=30, max_segments=6, num_lora=4, max_r=8)
        assert comp.tokens <= 200
        bi.update_(comp.seg_lens, comp.weight_indices, comp.lora_ranks, comp.scalings)
        backend.set_batch_info(bi)
        check = _qkv_check(backend, _padded(comp, 6), rng)
        assert check.ok, f"trial {trial} {comp}: {check.detail}"
        ptrs = _buffer_ptrs(backend)
        assert seen is None or ptrs == seen, "reserved buffers were reallocated"
        seen = ptrs
    with pytest.raises(ValueError, match="7 segments but backend .* reserved max_segments=6"):
        backend.set_batch_info(LoRABatchInfo.from_segments([1] * 7, [0] * 7, [4] * 4, [1.0] * 4, device=DEVICE))
    x = torch.randn(201, 24, device=DEVICE)
    with pytest.raises(ValueError, match="x has 201 rows but backend .* reserved max_tokens=200"):
        backend.run_lora_a_sgemm(x, torch.randn(4, 8, 24, device=DEVICE))


def _qkv_check(backend, comp: C.Composition, rng, k: int = 24, q: int = 16, kv: int = 8):
    """run_qkv_lora on fresh poisoned float32 inputs with the backend's current batch info, vs the oracle."""
    t = lambda a: to_torch(a, torch.float32, DEVICE)  # noqa: E731
    offsets = [0, q, q + kv, q + 2 * kv]
    x, a, b = t(C.activations(rng, comp, k)), t(C.shrink_weights(rng, comp, 3, k)), t(C.expand_weights(rng, comp, offsets[-1]))
    base = t(C.base_output(rng, comp, offsets[-1]))
    ref = C.ref_stacked(comp, to_f64(x), to_f64(a), to_f64(b), offsets, to_f64(base))
    out = backend.run_qkv_lora(x, a, b, torch.tensor(offsets, dtype=torch.int32, device=DEVICE), q, base_output=base)
    return C.compare(to_f64(out), ref, "float32")


def _padded(comp: C.Composition, bs: int) -> C.Composition:
    """The composition as ``update_`` stores it: padded with empty segments of slot 0."""
    pad = bs - comp.bs
    return C.Composition(list(comp.seg_lens) + [0] * pad, list(comp.weight_indices) + [0] * pad,
                         list(comp.lora_ranks), list(comp.scalings), comp.max_r, comp.tokens)


def test_reserve_rejects_bad_arguments():
    backend = make("torch")
    with pytest.raises(TypeError, match="max_tokens must be an int"):
        backend.reserve(1.5, 4)
    with pytest.raises(ValueError, match="max_segments must be >= 0"):
        backend.reserve(4, -1)


def test_buffers_pinned_by_a_capture_refuse_to_grow(monkeypatch, rng):
    """Without reserve, a capture pins the buffers: a later batch that needs more raises, never reallocates."""
    triton_or_skip()
    backend = make("triton", LoRABatchInfo.from_segments([2, 3], [0, 1], [4, 4], [1.0, 1.0], device=DEVICE))
    x, a = torch.randn(5, 16, device=DEVICE), torch.randn(2, 4, 16, device=DEVICE)
    backend.run_lora_a_sgemm(x, a)  # eager: buffers sized for this batch
    grown = backend._buffers["row_order"].numel()
    monkeypatch.setattr("lora.backend._capturing", lambda device: True)  # as inside torch.cuda.graph
    backend.run_lora_a_sgemm(x, a)
    monkeypatch.setattr("lora.backend._capturing", lambda device: False)
    assert backend.pinned
    ptr = backend._buffers["row_order"].data_ptr()
    big = grown + 50
    words = "metadata buffer 'row_order' .* captured by a CUDA graph"
    with pytest.raises(ValueError, match=words):
        backend.set_batch_info(LoRABatchInfo.from_segments([big], [0], [4, 4], [1.0, 1.0], device=DEVICE))
    with pytest.raises(ValueError, match=words):  # never run on the metadata of the previous batch
        backend.run_lora_a_sgemm(torch.randn(big, 16, device=DEVICE), a)
    assert backend._buffers["row_order"].data_ptr() == ptr
    # a batch with trailing rows beyond the segments: the op call finds the buffers too small
    backend.set_batch_info(LoRABatchInfo.from_segments([2], [0], [4, 4], [1.0, 1.0], device=DEVICE))
    with pytest.raises(ValueError, match=words):
        backend.run_lora_a_sgemm(torch.randn(big, 16, device=DEVICE), a)
    assert backend._buffers["row_order"].data_ptr() == ptr


# ---- triton scratch: per stream, never freed once captured ------------------------------------------


def test_scratch_is_per_stream_and_keeps_captured_buffers_alive():
    triton_or_skip()
    from lora.triton.scratch import Scratch, scratch_for

    dev = torch.device("cpu")
    assert scratch_for(dev, stream=11) is not scratch_for(dev, stream=12)
    assert scratch_for(dev, stream=11) is scratch_for(dev, stream=11)
    s = Scratch(dev)
    ws, cnt = s.split_k(4, 16, capturing=True)  # a capture uses these: a graph now holds their addresses
    assert s.captured
    xa = s.intermediate(10, torch.float16, capturing=True)
    ws2, cnt2 = s.split_k(64, 16, capturing=False)  # a larger eager call
    assert ws2.numel() >= 64 * 16 and cnt2.numel() >= 64
    assert any(t is ws for t in s.retired) and any(t is cnt for t in s.retired), "captured buffers must stay alive"
    assert not cnt2.any()
    s.intermediate(100, torch.float16, capturing=False)
    assert any(t is xa for t in s.retired)
    # buffers no capture used are simply replaced
    n_retired = len(s.retired)
    s.split_k(1000, 16, capturing=False)
    assert len(s.retired) == n_retired


def test_counters_made_inside_a_capture_are_zeroed_before_eager_use():
    triton_or_skip()
    from lora.triton.scratch import Scratch

    s = Scratch(torch.device("cpu"))
    _, cnt = s.split_k(8, 4, capturing=True)
    cnt.fill_(3)  # what an eager user would see: the graph's memset node has not run
    _, again = s.split_k(8, 4, capturing=False)
    assert again is cnt and not again.any()


# ---- once per batch, not per call; no allocation after warm-up --------------------------------------


class _Allocations(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts tensor-creating ops outside Triton's interpreter (whose launches copy arguments around)."""

    FACTORIES = ("empty", "zeros", "ones", "full", "new_empty", "new_zeros", "empty_strided", "empty_like",
                 "zeros_like", "clone", "_to_copy", "arange", "cumsum", "index_select")

    def __init__(self):
        super().__init__()
        self.made: list[str] = []
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.paused and name.split(".")[0] in self.FACTORIES:
            self.made.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def allocations(monkeypatch):
    mode = _Allocations()
    if os.environ.get("TRITON_INTERPRET") == "1":
        from triton.runtime import interpreter

        call = interpreter.GridExecutor.__call__

        def paused(self, *a, **k):
            mode.paused += 1
            try:
                return call(self, *a, **k)
            finally:
                mode.paused -= 1

        monkeypatch.setattr(interpreter.GridExecutor, "__call__", paused)
    return mode


def _layer(rng, comp, device, dtype=torch.float16):
    k, q, kv, n = 32, 24, 8, 40
    t = lambda a: to_torch(a, dtype, device)  # noqa: E731
    return dict(
        x=t(C.activations(rng, comp, k)),
        qkv_a=t(C.shrink_weights(rng, comp, 3, k)), qkv_b=t(C.expand_weights(rng, comp, q + 2 * kv)),
        qkv_base=t(C.base_output(rng, comp, q + 2 * kv)),
        off=torch.tensor([0, q, q + kv, q + 2 * kv], dtype=torch.int32, device=device), q=q,
        gu_a=t(C.shrink_weights(rng, comp, 2, k)), gu_b=t(C.expand_weights(rng, comp, 2 * n)),
        gu_base=t(C.base_output(rng, comp, 2 * n)),
        o_a=t(C.shrink_weights(rng, comp, 1, k)), o_b=t(C.expand_weights(rng, comp, k)),
        o_base=t(C.base_output(rng, comp, k)),
    )


def _step(backend, L):
    backend.run_qkv_lora(L["x"], L["qkv_a"], L["qkv_b"], L["off"], L["q"], base_output=L["qkv_base"])
    xa = backend.run_lora_a_sgemm(L["x"], L["o_a"])
    backend.run_lora_b_sgemm(xa, L["o_b"], base_output=L["o_base"])
    backend.run_gate_up_lora(L["x"], L["gu_a"], L["gu_b"], base_output=L["gu_base"])


@backends
def test_metadata_derived_once_per_batch_and_ops_allocate_only_their_outputs(name, rng, allocations, monkeypatch):
    backend = make(name)
    if name == "triton" and os.environ.get("TRITON_INTERPRET") != "1" and DEVICE == "cpu":
        pytest.skip("needs the interpreter on CPU")
    comp = C.Composition([3, 0, 4, 2], [1, 0, 1, 2], [8, 0, 5], [0.5, 1.0, 2.0], 8, 10)
    calls = []
    prepare = type(backend).prepare
    monkeypatch.setattr(type(backend), "prepare", lambda self, bi: (calls.append(bi), prepare(self, bi))[1])
    backend.set_batch_info(batch_info(comp, DEVICE))
    assert len(calls) == 1
    layer = _layer(rng, comp, DEVICE)
    _step(backend, layer)  # warm-up: compiles, sizes scratch
    assert len(calls) == 1, "an op call re-derived the batch metadata"
    if name == "torch":
        return  # the reference allocates per segment on the host; nothing more to check
    with allocations:
        for _ in range(2):
            _step(backend, layer)
    assert len(calls) == 1
    # The only allocation: run_lora_a_sgemm's output, which the caller does not pass (once per step).
    assert allocations.made.count("empty") <= 2 and set(allocations.made) <= {"empty"}, allocations.made
    backend.prepare_per_call = True  # the old cost, for comparisons: one derivation per op call
    _step(backend, layer)
    assert len(calls) == 1 + 4


def test_triton_derive_matches_a_host_grouping(rng):
    triton_or_skip()
    from lora.triton.grouping import derive, new_meta

    for trial in range(4):
        comp = C.random_composition(rng, max_tokens=60, max_segments=9)
        bi = batch_info(comp, DEVICE)
        meta = derive(bi, new_meta(comp.num_lora, comp.tokens + 3, DEVICE))
        rows = {w: [] for w in range(comp.num_lora)}
        for start, end, w, _, _ in comp.segments():
            rows[w].extend(range(start, end))
        want_rows = [len(rows[w]) for w in range(comp.num_lora)]
        assert meta.group_rows[: comp.num_lora].tolist() == want_rows, comp
        starts = np.concatenate([[0], np.cumsum(want_rows)]).tolist()
        assert meta.group_start[: comp.num_lora + 1].tolist() == starts, comp
        stride = meta.stride(comp.num_lora)
        assert stride >= comp.tokens + 3
        for w in range(comp.num_lora):  # slot w's rows at its fixed place, in segment order
            assert meta.row_order[w * stride: w * stride + len(rows[w])].tolist() == rows[w], (comp, w)


# ---- interop: max_r = 0, stack_num 4, dtype messages ------------------------------------------------


@backends
def test_max_r_zero_buffers_are_accepted(name):
    backend = make(name, LoRABatchInfo.from_segments([2, 3], [0, 1], [0, 0], [1.0, 1.0], device=DEVICE))
    x = torch.randn(6, 16, device=DEVICE, dtype=torch.float16)
    out = backend.run_lora_a_sgemm(x, torch.empty(2, 0, 16, device=DEVICE, dtype=torch.float16))
    assert tuple(out.shape) == (6, 0) and out.dtype == x.dtype
    base = torch.randn(6, 12, device=DEVICE, dtype=torch.float16)
    keep = base.clone()
    assert backend.run_lora_b_sgemm(out, torch.empty(2, 12, 0, device=DEVICE, dtype=torch.float16), base_output=base) is base
    off = torch.tensor([0, 4, 8, 12], dtype=torch.int32, device=DEVICE)
    empty_a = lambda s: torch.empty(2, 0, 16, device=DEVICE, dtype=torch.float16)  # noqa: E731
    assert backend.run_qkv_lora(x, empty_a(3), torch.empty(2, 12, 0, device=DEVICE, dtype=torch.float16), off, 4,
                                base_output=base) is base
    assert backend.run_gate_up_lora(x, empty_a(2), torch.empty(2, 12, 0, device=DEVICE, dtype=torch.float16),
                                    base_output=base) is base
    assert torch.equal(base, keep)
    fresh = backend.run_lora_b_sgemm(out, torch.empty(2, 12, 0, device=DEVICE, dtype=torch.float16))
    assert tuple(fresh.shape) == (6, 12) and not fresh.any()


@backends
def test_stack_num_4_shrink_matches_oracle(name, rng):
    backend = make(name)
    for _ in range(2):
        comp = C.random_composition(rng)
        backend.set_batch_info(batch_info(comp, DEVICE))
        x = to_torch(C.activations(rng, comp, 20), torch.float32, DEVICE)
        a = to_torch(C.shrink_weights(rng, comp, 4, 20), torch.float32, DEVICE)
        out = backend.run_lora_a_sgemm(x, a, stack_num=4)
        check = C.compare(to_f64(out), C.ref_shrink(comp, to_f64(x), to_f64(a), 4), "float32")
        assert check.ok, f"{comp}: {check.detail}"
        # the 4-slice expand (in_proj_qkvz's q, k, v, z) through the primitives, on validated-shaped inputs
        offsets = [0, 12, 20, 28, 40]
        b = to_torch(C.expand_weights(rng, comp, offsets[-1]), torch.float32, DEVICE)
        base = to_torch(C.base_output(rng, comp, offsets[-1]), torch.float32, DEVICE)
        ref = C.ref_stacked(comp, to_f64(x), to_f64(a), to_f64(b), offsets, to_f64(base))
        off_t = torch.tensor(offsets, dtype=torch.int32, device=DEVICE)
        got = lora.BaseLoRABackend.shrink_expand(backend, x, a, b, off_t, 12, base, 4)  # the two primitives
        check = C.compare(to_f64(got), ref, "float32")
        assert check.ok, f"4-slice shrink_expand {comp}: {check.detail}"


@backends
@pytest.mark.parametrize(
    "field, bad, words",
    [
        ("lora_ranks", torch.int64, r"batch_info.lora_ranks has dtype torch.int64, expected torch.int32: .*lora_ranks.to\(torch.int32\)"),
        ("scalings", torch.float16, r"batch_info.scalings has dtype torch.float16, expected torch.float32: .*scalings.float\(\)"),
    ],
)
def test_batch_info_dtypes_raise_type_error_saying_what_to_pass(name, field, bad, words):
    backend = make(name)
    bi = LoRABatchInfo.from_segments([2, 3], [0, 1], [4, 4], [1.0, 1.0], device=DEVICE)
    wrong = LoRABatchInfo(**{**bi.__dict__, field: getattr(bi, field).to(bad)})
    backend.set_batch_info(wrong)  # stored, not prepared: the kernels cannot read it
    with pytest.raises(TypeError, match=words):
        backend.run_lora_a_sgemm(torch.randn(5, 8, device=DEVICE), torch.randn(2, 4, 8, device=DEVICE))
