"""The "torch" reference on a GPU decode batch: no host synchronisation in an op call (CUDA's sync
debug mode raises on one) and milliseconds at most, not the 4-145 ms a loop over segments took."""

from __future__ import annotations

import pytest
import torch

from lora import testing as C
from lora.compare.cases import LLAMA3_8B, OPS
from lora.torch_backend import TorchLoRABackend

from .conftest import needs_cuda

pytestmark = needs_cuda
DEV = "cuda"


@pytest.mark.parametrize("tokens", [64, 256])
@pytest.mark.parametrize("op", ["shrink3", "expand", "qkv", "gate_up"])
def test_decode_call_is_sync_free_and_fast(op, tokens, rng):
    comp = C.decode_composition(rng, tokens, num_lora=8, max_r=64)
    resolved = OPS[op].resolve(LLAMA3_8B)
    backend = TorchLoRABackend("torch", C.batch_info(comp, DEV))  # grouping: once per batch, here
    t = C.make_inputs(resolved, comp, "bfloat16", DEV, seed=int(rng.integers(2**31)))
    ref = C.oracle(resolved, comp, t)
    sets = [{k: v.clone() for k, v in t.items()} for _ in range(13)]
    C.call_op(backend, resolved, sets.pop())  # warm-up: the base class's offsets tensors are made once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outs = [C.call_op(backend, resolved, s) for s in sets]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    check = C.check(outs[0], ref, "bfloat16", expect_dtype=torch.bfloat16, base=sets[0].get("base"), comp=comp, op=resolved)
    assert check.ok, f"{check.detail} {check.problems}"
    times = []
    for s in sets[1:]:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        C.call_op(backend, resolved, s)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    median_ms = sorted(times)[len(times) // 2]
    print(f"torch reference {op} decode-{tokens}: {median_ms:.3f} ms per call")
    assert median_ms < 4.0, f"{op} decode-{tokens}: {median_ms:.2f} ms per call (a loop over segments took 4-145 ms)"
