"""The LoRA contract (lora.testing), run over every registered backend against the float64 oracle.

A backend that cannot run here is skipped with its reason (``lora.available_backends()``); so is bf16
on Triton's CPU interpreter (``lora.testing.dtype_skip_reason``). Third-party backends installed
through the entry point (the example plugin under ``make test``) are checked like ours.
"""

from __future__ import annotations

import pytest
import torch

import lora
from lora import testing as T

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STATUS = {s.name: s for s in lora.available_backends()}


def backend_or_skip(name: str, dtype_name: str = "float32"):
    status = STATUS[name]
    if not status.available:
        pytest.skip(f"backend {name!r} cannot run here: {status.reason}")
    reason = T.dtype_skip_reason(name, dtype_name, DEVICE)
    if reason:
        pytest.skip(reason)
    return lora.get_backend_from_name(name)(name)


@pytest.mark.parametrize("op", T.OPS)
@pytest.mark.parametrize("dtype_name", T.DTYPE_NAMES)
@pytest.mark.parametrize("name", sorted(STATUS))
def test_op_matches_oracle(name, dtype_name, op, rng):
    backend = backend_or_skip(name, dtype_name)
    for trial in range(3):  # several fresh compositions and shapes per test
        comp = T.random_composition(rng)
        k, n = int(rng.integers(5, 70)), int(rng.integers(3, 60))
        kv = int(rng.integers(2, n + 1))  # GQA: kv != q in general
        resolved = T.contract_op(op, k, n, kv)
        check, _ = T.run_op(backend, resolved, comp, dtype_name, device=DEVICE, seed=int(rng.integers(2**31)))
        assert check.ok, f"{name} {op} {dtype_name} trial {trial} K={k} N={n} kv={kv} {comp}: {check.detail} {check.problems}"


@pytest.mark.parametrize("name", sorted(STATUS))
def test_check_backend_passes(name, rng):
    """Every op on every standard composition (uneven, zero-length, rank-0, shared-slot, ...)."""
    backend_or_skip(name)
    # bf16 on the CPU: the reference only (Triton's interpreter is slow and cannot; pallas does not run there)
    dtypes = list(T.DTYPE_NAMES) if name == "torch" or DEVICE == "cuda" else ["float32", "float16"]
    report = T.check_backend(name, device=DEVICE, dtypes=dtypes, seed=int(rng.integers(2**31)))
    report.assert_ok()
    assert {r.composition for r in report.results} >= {"uneven", "zero-length", "rank-0", "shared-slot", "empty"}


@pytest.mark.parametrize("name", sorted(STATUS))
def test_decode_and_single_segment_extremes(name, rng):
    """One token per segment over many slots; one segment covering every row."""
    backend = backend_or_skip(name)
    comp = T.decode_composition(rng, tokens=17, num_lora=5, max_r=8)
    for op in ("shrink3", "qkv", "gate_up"):
        check, _ = T.run_op(backend, T.contract_op(op, 33, 24, 8), comp, "float32", device=DEVICE, seed=1)
        assert check.ok, f"decode {op}: {check.detail} {check.problems}"
    one = T.Composition([40], [0], [16], [1.5], 16, 40)
    check, _ = T.run_op(backend, T.contract_op("qkv", 64, 32, 16), one, "float32", device=DEVICE, seed=2)
    assert check.ok, f"single segment qkv: {check.detail}"


@pytest.mark.parametrize("name", sorted(STATUS))
def test_empty_batch(name):
    backend = backend_or_skip(name)
    empty = T.Composition([], [], [4], [1.0], 4, 0)
    for op in ("shrink1", "expand", "gate_up"):
        check, out = T.run_op(backend, T.contract_op(op, 8, 8), empty, "float32", device=DEVICE, seed=3)
        assert check.ok and out.shape[0] == 0, f"empty batch {op}: {check.detail}"


@pytest.mark.parametrize("name", sorted(STATUS))
def test_zero_rank_everywhere_leaves_base_untouched(name):
    backend = backend_or_skip(name, "float16")
    comp = T.Composition([3, 0, 5], [0, 1, 1], [0, 0], [1.0, 2.0], 8, 9)
    check, _ = T.run_op(backend, T.contract_op("qkv", 16, 16, 8), comp, "float16", device=DEVICE, seed=4)
    assert check.ok, check.detail
    check, out = T.run_op(backend, T.contract_op("shrink2", 16, 16), comp, "float16", device=DEVICE, seed=5)
    assert check.ok and not out.any(), "shrink of rank-0 slots must be all zeros"
