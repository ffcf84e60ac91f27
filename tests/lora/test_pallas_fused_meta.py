"""The pallas torch executor's compiled metadata builder (:mod:`lora.pallas.fused_meta`) on the CPU.

On CUDA devices ``prepare`` runs :func:`lora.pallas.meta.build` compiled by ``torch.compile``; here the same
builder is compiled for the CPU (inductor's C++ code instead of Triton's) and must give the op-by-op builder's
bits on every batch shape, reuse its compiled code across batch sizes, and fall back to the op-by-op builder
with one warning when compiling fails. The GPU half (Triton kernels, captures) is in ``tests/gpu/test_pallas_gpu.py``.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from lora import testing as C
from lora.pallas import fused_meta as F
from lora.pallas import meta as M
from lora.testing import batch_info


def cpu_builder():
    b = F.FusedBuilder("cpu")
    b.enabled = True  # compiled on the CPU too (off by default there: only CUDA launches are worth fusing)
    return b


def build_args(comp, units):
    bi = batch_info(comp, "cpu")
    groups = max(1, -(-comp.tokens // 64))
    return (bi.seg_indptr, bi.weight_indices, bi.lora_ranks), dict(bs=bi.bs, num_lora=bi.num_lora, groups=groups,
                                                                    units=units)


def test_compiled_builder_gives_the_op_by_op_bits(rng):
    """Decode batches of 1-256 tokens (one 64-row group and several), a rank-0 slot, empty segments, a slot in
    several segments, trailing rows: the compiled builder's metadata equals the op-by-op builder's."""
    b = cpu_builder()
    comps = [C.decode_composition(rng, t, 8, 16) for t in (64, 256, 1, 7, 200, 128, 3)]
    ranks = (16, 16, 0, 16, 8, 16, 16, 16)  # slot 2 rank 0
    scal = (1.0,) * 8
    comps += [
        C.Composition((0, 5, 0, 0, 9, 0, 3), (1, 2, 1, 2, 2, 0, 7), ranks, scal, 16, 17),  # empty segments, rank 0
        C.Composition((3, 1, 70, 2, 5, 1, 8), (1, 0, 1, 1, 0, 1, 0), ranks, scal, 16, 90 + 7),  # shared slots, trailing rows
        C.Composition(tuple([1] * 60), tuple(i % 8 for i in range(60)), ranks, scal, 16, 64),  # every slot, 4 rows after
    ]
    for i, comp in enumerate(comps):
        args, kw = build_args(comp, units=i == 1)  # (each units value compiles its own functions)
        want = M.build(b.ex, *args, **kw)
        for _ in range(F.FusedBuilder.COMPILE_AT):
            got = b(*args, **kw)
        assert torch.equal(got, want), (i, comp.seg_lens, (got != want).nonzero().flatten()[:8].tolist())
    assert b.runs["compiled"] >= len(comps) and b.failure is None


def test_new_segment_counts_reuse_the_compiled_code(rng):
    """Within one token bucket, the second segment count compiles a graph with that length symbolic; later counts
    compile nothing (a serving engine's batch sizes do not cost a compile each)."""
    from torch._dynamo.utils import counters

    b = cpu_builder()

    def build(tokens):
        args, kw = build_args(C.decode_composition(rng, tokens, 8, 16), units=False)
        for _ in range(F.FusedBuilder.COMPILE_AT):
            got = b(*args, **kw)
        assert torch.equal(got, M.build(b.ex, *args, **kw))

    for t in (64, 40):
        build(t)
    graphs = counters["stats"]["unique_graphs"]
    for t in (9, 17, 33, 60, 2):
        build(t)
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_shape_compiles_at_its_second_build(rng):
    b = cpu_builder()
    args, kw = build_args(C.decode_composition(rng, 64, 8, 16), units=False)
    b(*args, **kw)
    assert b.runs == {"compiled": 0, "eager": 1}
    b(*args, **kw)
    b(*args, **kw)
    assert b.runs == {"compiled": 2, "eager": 1}


def test_a_compile_failure_warns_once_and_builds_op_by_op(rng, monkeypatch):
    def broken(fn, **kw):
        def run(*a):
            raise RuntimeError("inductor could not compile\nsecond line")

        return run

    monkeypatch.setattr(F.torch, "compile", broken)
    b = cpu_builder()
    args, kw = build_args(C.decode_composition(rng, 64, 8, 16), units=False)
    want = M.build(b.ex, *args, **kw)
    b(*args, **kw)
    with pytest.warns(RuntimeWarning, match="compiling the metadata builder failed .RuntimeError: inductor could not"):
        got = b(*args, **kw)
    assert torch.equal(got, want) and "RuntimeError: inductor could not compile" in b.failure
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(b(*args, **kw), want)  # no second warning
    assert b.runs == {"compiled": 0, "eager": 3}


def test_a_compiled_result_that_differs_is_caught_at_its_first_run(rng, monkeypatch):
    """Each call shape's first compiled build is checked against the op-by-op builder: a compiled function with other
    bits (as inductor's sliced searchsorted gave on the GPU) warns once, and the device builds op by op after it."""
    compile_ = F.torch.compile

    def off_by_one_from_the_second_shape(fn, **kw):
        real = compile_(fn, **kw)
        calls = []

        def run(*a):
            calls.append(a[0].shape)
            out = real(*a)
            return out + 1 if len(set(calls)) > 1 else out  # right on the first shape, wrong on the next

        return run

    monkeypatch.setattr(F.torch, "compile", off_by_one_from_the_second_shape)
    b = cpu_builder()
    first = build_args(C.decode_composition(rng, 64, 8, 16), units=False)
    for _ in range(F.FusedBuilder.COMPILE_AT + 1):
        b(*first[0], **first[1])
    assert b.runs == {"compiled": 2, "eager": 1} and b.failure is None  # checked once, equal
    args, kw = build_args(C.decode_composition(rng, 40, 8, 16), units=False)  # another segment count
    want = M.build(b.ex, *args, **kw)
    b(*args, **kw)
    with pytest.warns(RuntimeWarning, match="compiled metadata builder's result differs from the op-by-op"):
        got = b(*args, **kw)
    assert torch.equal(got, want) and "differs" in b.failure
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(b(*args, **kw), want)  # op by op now, no second warning
        assert torch.equal(b(*first[0], **first[1]), M.build(b.ex, *first[0], **first[1]))
    assert b.runs == {"compiled": 2, "eager": 5}


def test_compiled_on_cuda_devices_only_and_off_by_environment(monkeypatch):
    monkeypatch.delenv(F.EAGER_ENV, raising=False)
    assert F.FusedBuilder("cuda:0").enabled and not F.FusedBuilder("cpu").enabled
    monkeypatch.setenv(F.EAGER_ENV, "1")
    assert not F.FusedBuilder("cuda:0").enabled


def test_the_backend_prepares_through_the_device_builder(rng, monkeypatch):
    """``prepare`` builds through the process's builder of the batch's device (CPU: op by op)."""
    from lora.pallas.backend import PallasLoRABackend

    # prepare launches no kernel: the backend runs here whether or not jax could
    monkeypatch.setattr(PallasLoRABackend, "unavailable_reason", classmethod(lambda cls: None))
    b = F.builder_for("cpu")
    before = dict(b.runs)
    PallasLoRABackend("pallas", batch_info(C.decode_composition(rng, 64, 8, 16), "cpu"))
    assert b.runs["eager"] == before["eager"] + 1 and F.builder_for(torch.device("cpu")) is b
