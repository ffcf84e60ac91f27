"""lora.testing itself: the poison, the oracle, the compositions, and check_backend's diagnoses.

A contract check that cannot fail proves nothing, so each way a kernel goes wrong here has a
deliberately broken backend, and the report must name the op, the composition, the rows and the slice.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from lora import testing as T
from lora.registry import BackendUnavailableError, UnknownBackendError, register_backend, unregister_backend
from lora.torch_backend import TorchLoRABackend


def test_import_needs_neither_torch_nor_numpy():
    code = ("import sys, lora.testing, lora.compare.cases; "
            "print([m for m in ('torch', 'numpy', 'jax', 'triton') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_dtype_names():
    assert [T.dtype_name(d) for d in ("bf16", "FP16", "float32", torch.bfloat16, "half")] == [
        "bfloat16", "float16", "float32", "bfloat16", "float16"]
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        T.dtype_name("int8")
    assert T.DTYPES["float16"] is torch.float16 and T.TOLERANCE == {"float32": 1e-3, "float16": 3e-3, "bfloat16": 1.5e-2}


def test_standard_compositions_have_what_their_names_say(rng):
    comps = T.standard_compositions(rng)
    assert any(n == 0 for n in comps["zero-length"].seg_lens[1:-1]) and comps["zero-length"].seg_lens[0] == 0
    r0 = comps["rank-0"]
    assert any(r0.lora_ranks[w] == 0 and n > 0 for n, w in zip(r0.seg_lens, r0.weight_indices))
    assert any(0 < r < r0.max_r for r in r0.lora_ranks)
    shared = comps["shared-slot"]
    assert len(set(shared.weight_indices)) < shared.bs and list(shared.weight_indices) != sorted(shared.weight_indices)
    lens = comps["uneven"].seg_lens
    assert min(lens) == 1 and max(lens) >= 30
    assert comps["trailing-rows"].tokens > sum(comps["trailing-rows"].seg_lens)
    assert comps["empty"].tokens == 0
    assert T.standard_compositions(5) == T.standard_compositions(5), "a seed gives the same batches"


@pytest.mark.parametrize("op", T.OPS)
def test_torch_inputs_are_poisoned_where_a_backend_must_not_read(op, rng):
    comp = T.Composition([3, 0, 4, 2], [2, 0, 1, 0], [4, 0, 2], [1.0, 1.0, 1.0], 4, 11)
    resolved = T.contract_op(op, 7, 6, 3)
    t = T.make_inputs(resolved, comp, "float32", "cpu", seed=0)
    idle = torch.tensor(comp.idle_rows())
    assert idle.tolist() == [False] * 3 + [True] * 4 + [False] * 2 + [True] * 2  # slot 1 has rank 0
    if "a" in t:
        assert torch.isnan(t["x"]).all(1).equal(idle) and not torch.isnan(t["x"][~idle]).any()
        stack = resolved.stack
        for w, r in enumerate(comp.lora_ranks):
            assert torch.isnan(t["a"][w, stack * r :]).all() and not torch.isnan(t["a"][w, : stack * r]).any()
    else:  # an expand input: only the real-rank columns of worked rows are numbers
        row_ranks = comp.row_ranks()
        for i, r in enumerate(row_ranks):
            assert not torch.isnan(t["x"][i, :r]).any() and torch.isnan(t["x"][i, r:]).all()
    if "b" in t:
        for w, r in enumerate(comp.lora_ranks):
            assert torch.isnan(t["b"][w, :, r:]).all() and not torch.isnan(t["b"][w, :, :r]).any()
    if "base" in t:
        assert torch.isnan(t["base"]).all(1).equal(idle)
    assert ("base" in t) == (op != "expand_nobase" and not op.startswith("shrink"))


def test_numpy_and_torch_oracles_agree(rng):
    comp = T.random_composition(rng, num_lora=3, max_r=8)
    x, a = T.activations(rng, comp, 12), T.shrink_weights(rng, comp, 3, 12)
    b, base = T.expand_weights(rng, comp, 10), T.base_output(rng, comp, 10)
    offsets = [0, 4, 7, 10]
    ref_np = T.ref_stacked(comp, x, a, b, offsets, base)
    ref_t = T.ref_stacked(comp, *(torch.from_numpy(v) for v in (x, a, b)), offsets, torch.from_numpy(base))
    assert isinstance(ref_np, np.ndarray) and ref_t.dtype == torch.float64
    np.testing.assert_allclose(ref_np, ref_t.numpy(), rtol=1e-12, atol=1e-12)  # NaN in the same places
    assert T.compare(ref_t.float(), ref_np, "float32").ok and T.compare(ref_np, ref_t, "float32").ok


def test_oracle_by_hand():
    """One segment of rank 1, scaling 2: the formulas, not just self-consistency."""
    comp = T.Composition([2], [0], [1], [2.0], 2, 3)
    x = np.array([[1.0, 2.0], [3.0, 4.0], [np.nan, np.nan]])
    a = np.array([[[1.0, 1.0], [np.nan, np.nan]]])  # A = [1, 1], tail row poisoned
    np.testing.assert_array_equal(T.ref_shrink(comp, x, a, 1), [[3.0, 0.0], [7.0, 0.0], [0.0, 0.0]])
    b = np.array([[[10.0, np.nan], [1.0, np.nan]]])  # B (N=2, max_r=2), column 1 poisoned
    base = np.array([[1.0, 1.0], [1.0, 1.0], [np.nan, np.nan]])
    out = T.ref_expand(comp, np.array([[3.0, np.nan], [7.0, np.nan], [np.nan, np.nan]]), b, [0, 2], base)
    np.testing.assert_array_equal(out[:2], [[61.0, 7.0], [141.0, 15.0]])
    assert np.isnan(out[2]).all()


# ---- broken backends and what the report says ------------------------------------------------------


class StaleTails(TorchLoRABackend):
    """Reads B up to max_r instead of the slot's rank (the stale tail of a smaller adapter)."""

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        saved = self._groups
        self._groups = [dataclasses.replace(g, rank=weights.shape[2]) for g in saved]
        try:
            return super().expand(x, weights, output_offset, max_slice_width, base_output)
        finally:
            self._groups = saved


class Unscaled(TorchLoRABackend):
    """Forgets the per-slot scaling."""

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        saved = self.batch_info.scalings
        self.batch_info.scalings = torch.ones_like(saved)
        try:
            return super().expand(x, weights, output_offset, max_slice_width, base_output)
        finally:
            self.batch_info.scalings = saved


class WritesIdleRows(TorchLoRABackend):
    """Adds zeros to every row, so rows that must stay untouched are rewritten."""

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        out = super().expand(x, weights, output_offset, max_slice_width, base_output)
        out[torch.isnan(out)] = 0.0
        return out


class DropsLastSegment(TorchLoRABackend):
    def prepare(self, batch_info):
        super().prepare(batch_info)
        last = batch_info.seg_indptr[-2].item()
        self._groups = [dataclasses.replace(g, rows=g.rows[g.rows < last]) for g in self._groups]


class SwapsSlices(TorchLoRABackend):
    """Uses the x columns of slice 2 for slice 1 (and 1 for 2)."""

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        if output_offset.shape[0] == 4:
            x = x.clone()
            for g in self._groups:
                r = g.rank
                x[g.rows, r : 3 * r] = torch.cat([x[g.rows, 2 * r : 3 * r], x[g.rows, r : 2 * r]], dim=1)
        return super().expand(x, weights, output_offset, max_slice_width, base_output)


class NotInPlace(TorchLoRABackend):
    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        return super().expand(x, weights, output_offset, max_slice_width, base_output.clone())


class WrongDtype(TorchLoRABackend):
    def shrink(self, x, weights, stack_num):
        return super().shrink(x, weights, stack_num).float()


class Crashes(TorchLoRABackend):
    def shrink(self, x, weights, stack_num):
        raise RuntimeError("kernel fault")


def _report(cls, ops, comps=("uneven", "rank-0"), dtypes=("float32",), seed=7):
    comps = {k: v for k, v in T.standard_compositions(seed).items() if k in comps}
    return T.check_backend(cls, dtypes=list(dtypes), ops=ops, compositions=comps, seed=seed, device="cpu")


def _failure(report, op, comp):
    return next(r for r in report.failures if r.op == op and r.composition == comp)


def test_stale_weight_tails_are_found_with_rows_and_slice():
    report = _report(StaleTails, ["expand", "qkv", "shrink1"])
    assert not report.ok and {r.op for r in report.failures} == {"expand", "qkv"}
    comp = report.compositions["rank-0"]
    start, end = comp.seg_indptr[2], comp.seg_indptr[3]  # segment 2 uses slot 2 of rank 3 < max_r
    fail = _failure(report, "qkv", "rank-0")
    assert "NaN-ness" in fail.detail
    assert any(p.startswith(f"rows {start}..{end - 1} (segment 2, slot 2, rank 3), slice 1") and "poison read" in p
               for p in fail.problems), fail.problems
    text = str(report)
    assert "FAIL qkv on 'rank-0' [float32]" in text and "composition 'rank-0'" in text and "seed=7" in text
    with pytest.raises(AssertionError, match="slice 2"):
        report.assert_ok()


def test_a_wrong_scaling_is_found():
    fail = _failure(_report(Unscaled, ["gate_up"]), "gate_up", "uneven")
    assert fail.status == "fail" and fail.rel_error > 0.05 and "rel error" in fail.detail
    assert any("slice 1" in p and "rel error" in p for p in fail.problems)


def test_writing_rows_that_must_stay_untouched_is_found():
    fail = _failure(_report(WritesIdleRows, ["expand"]), "expand", "rank-0")
    assert "poison overwritten" in fail.detail
    assert any("rank 0)" in p and "written where base_output must stay untouched" in p for p in fail.problems)


def test_a_dropped_segment_is_named():
    report = _report(DropsLastSegment, ["shrink2", "gate_up"], comps=("uneven",))
    comp = report.compositions["uneven"]
    last = f"rows {comp.seg_indptr[-2]}..{comp.tokens - 1} (segment {comp.bs - 1}"
    for op in ("shrink2", "gate_up"):
        assert all(p.startswith(last) for p in _failure(report, op, "uneven").problems)


def test_swapped_slices_are_named():
    fail = _failure(_report(SwapsSlices, ["qkv", "gate_up"], comps=("uneven",)), "qkv", "uneven")
    assert {p.split(", slice ")[1][0] for p in fail.problems} == {"1", "2"}, fail.problems


def test_in_place_dtype_and_crashes_are_reported():
    assert "in place" in _failure(_report(NotInPlace, ["expand"]), "expand", "uneven").detail
    assert "dtype torch.float32" in _failure(_report(WrongDtype, ["shrink1"], dtypes=("float16",)), "shrink1", "uneven").detail
    crash = _failure(_report(Crashes, ["shrink3"]), "shrink3", "uneven")
    assert crash.status == "error" and "RuntimeError: kernel fault (at test_testing.py:" in crash.detail


def test_check_backend_refuses_what_it_cannot_run():
    with pytest.raises(UnknownBackendError):
        T.check_backend("no-such-backend")
    with pytest.raises(TypeError, match="registered name or a BaseLoRABackend subclass"):
        T.check_backend(42)

    class Elsewhere(TorchLoRABackend):
        @classmethod
        def unavailable_reason(cls):
            return "needs a machine that is not this one"

    register_backend("elsewhere", Elsewhere)
    try:
        with pytest.raises(BackendUnavailableError, match="needs a machine that is not this one"):
            T.check_backend("elsewhere")
    finally:
        unregister_backend("elsewhere")


def test_report_replays_with_its_seed():
    a = T.check_backend("torch", dtypes=["float32"], ops=["qkv"], device="cpu")
    b = T.check_backend("torch", dtypes=["float32"], ops=["qkv"], device="cpu", seed=a.seed)
    assert a.ok and a.widths == b.widths and a.compositions == b.compositions
    assert [r.rel_error for r in a.results] == [r.rel_error for r in b.results]
