"""The contract at Llama-3-8B widths on the GPU, bf16/fp16/fp32, over every GPU-capable backend.

K=4096 (shrink, QKV, gate-up), K=14336 (down shrink), N=4096 (expand), q=4096 / kv=1024 (QKV),
n=14336 (gate-up); ranks 8, 16, 64 and 128; 1, 8 and 64 adapter slots; decode, prefill, mixed and
many-segment batches with rank-0 slots, ranks below max_r, zero-length segments, shared slots and
rows after the last segment. Inputs are poisoned (NaN) wherever a backend must not read or write.
"""

from __future__ import annotations

import pytest

from lora import testing as C
from lora.compare.cases import LLAMA3_8B
from lora.compare.cases import OPS as WIDTHS

from .conftest import backend_or_skip, gpu_backends, needs_cuda

pytestmark = needs_cuda
OPS = ("shrink1", "shrink2", "shrink3", "shrink_down", "expand", "expand_qkv", "expand_gate_up", "qkv", "gate_up")


def _case(name: str, rng) -> C.Composition:
    if name == "r8-1slot-prefill":
        return C.Composition([700], [0], [8], [0.5], 8, 705)
    if name == "r16-8slots-decode64":
        ranks = [16, 16, 16, 0, 16, 9, 16, 16]
        return C.Composition([1] * 64, [int(v) for v in rng.integers(0, 8, 64)], ranks, [0.5] * 8, 16, 64)
    if name == "r64-8slots-mixed":
        ranks = [64, 64, 37, 64, 64, 64, 0, 64]
        lens = [int(v) for v in rng.integers(0, 200, 12)]
        lens[5] = 0
        slots = [int(v) for v in rng.integers(0, 8, 12)]
        return C.Composition(lens, slots, ranks, [float(v) for v in rng.uniform(0.25, 2, 8)], 64, sum(lens) + 3)
    if name == "r128-64slots-decode256":
        ranks = [int(v) for v in rng.choice([0, 8, 64, 100, 128], 64)]
        ranks[0] = 128
        slots = [int(v) for v in rng.integers(0, 64, 256)]
        return C.Composition([1] * 256, slots, ranks, [float(v) for v in rng.uniform(0.25, 2, 64)], 128, 256)
    if name == "r16-64slots-40segs":
        ranks = [int(v) for v in rng.choice([0, 4, 16], 64)]
        ranks[7] = 16
        lens = [int(v) for v in rng.integers(0, 60, 40)]
        slots = [int(v) for v in rng.integers(0, 64, 40)]
        return C.Composition(lens, slots, ranks, [1.0] * 64, 16, sum(lens))
    raise KeyError(name)


CASES = ["r8-1slot-prefill", "r16-8slots-decode64", "r64-8slots-mixed", "r128-64slots-decode256", "r16-64slots-40segs"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("name", gpu_backends())
def test_real_shapes(name, dtype_name, case, op, rng):
    backend = backend_or_skip(name)
    comp = _case(case, rng)
    resolved = WIDTHS[op].resolve(LLAMA3_8B)
    check, _ = C.run_op(backend, resolved, comp, dtype_name, device="cuda", seed=int(rng.integers(2**31)))
    assert check.ok, f"{name} {op} {dtype_name} {case} {comp.summary()}: {check.detail} {check.problems}"
