"""The LoRA contract, run over every registered backend against the float64 oracle.

A backend that cannot run here is skipped with its reason (``lora.available_backends()``).
"""

from __future__ import annotations

import os

import pytest
import torch

import lora

from . import contract as C
from .torch_cases import OPS, run_op

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STATUS = {s.name: s for s in lora.available_backends()}


def backend_or_skip(name: str, dtype_name: str):
    status = STATUS[name]
    if not status.available:
        pytest.skip(f"backend {name!r} cannot run here: {status.reason}")
    if name == "triton" and dtype_name == "bfloat16" and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("Triton's CPU interpreter computes bf16 dots wrongly; bf16 is checked in tests/gpu")
    return lora.get_backend_from_name(name)(name)


DTYPE_NAMES = ["float32", "float16", "bfloat16"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype_name", DTYPE_NAMES)
@pytest.mark.parametrize("name", sorted(STATUS))
def test_op_matches_oracle(name, dtype_name, op, rng):
    backend = backend_or_skip(name, dtype_name)
    for trial in range(3):  # several fresh compositions and shapes per test
        comp = C.random_composition(rng)
        k, n = int(rng.integers(5, 70)), int(rng.integers(3, 60))
        kv = int(rng.integers(2, n + 1)) if op == "qkv" else None  # GQA: kv != q in general
        check, _ = run_op(backend, op, comp, rng, dtype_name, DEVICE, k=k, n=n, kv=kv)
        assert check.ok, f"{name} {op} {dtype_name} trial {trial} K={k} N={n} kv={kv} {comp}: {check.detail}"


@pytest.mark.parametrize("name", sorted(STATUS))
def test_decode_and_single_segment_extremes(name, rng):
    """One token per segment over many slots; one segment covering every row; an empty batch."""
    backend = backend_or_skip(name, "float32")
    comp = C.decode_composition(rng, tokens=17, num_lora=5, max_r=8)
    for op in ("shrink3", "qkv", "gate_up"):
        check, _ = run_op(backend, op, comp, rng, "float32", DEVICE, k=33, n=24, kv=8)
        assert check.ok, f"decode {op}: {check.detail}"
    one = C.Composition([40], [0], [16], [1.5], 16, 40)
    check, _ = run_op(backend, "qkv", one, rng, "float32", DEVICE, k=64, n=32, kv=16)
    assert check.ok, f"single segment qkv: {check.detail}"
    empty = C.Composition([], [], [4], [1.0], 4, 0)
    for op in ("shrink1", "expand", "gate_up"):
        check, out = run_op(backend, op, empty, rng, "float32", DEVICE, k=8, n=8)
        assert check.ok and out.shape[0] == 0, f"empty batch {op}: {check.detail}"


@pytest.mark.parametrize("name", sorted(STATUS))
def test_zero_rank_everywhere_leaves_base_untouched(name, rng):
    backend = backend_or_skip(name, "float16")
    comp = C.Composition([3, 0, 5], [0, 1, 1], [0, 0], [1.0, 2.0], 8, 9)
    check, _ = run_op(backend, "qkv", comp, rng, "float16", DEVICE, k=16, n=16, kv=8)
    assert check.ok, check.detail
    check, out = run_op(backend, "shrink2", comp, rng, "float16", DEVICE, k=16, n=16)
    assert check.ok and not out.any(), "shrink of rank-0 slots must be all zeros"
