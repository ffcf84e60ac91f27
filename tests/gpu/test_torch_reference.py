"""The "torch" reference on a GPU decode batch: no host synchronisation in an op call (CUDA's sync
debug mode raises on one), and as many kernel launches for 256 one-token segments as for 64 (a loop
over segments launched kernels per segment and took 4-145 ms a call)."""

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
def test_decode_call_is_sync_free(op, tokens, rng):
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


def _kernels_per_call(backend, resolved, inputs) -> int:
    """CUDA kernels one op call launches (profiled; counted, not timed)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        C.call_op(backend, resolved, inputs)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


@pytest.mark.parametrize("op", ["shrink3", "expand", "qkv", "gate_up"])
def test_decode_launches_do_not_grow_with_segments(op, rng):
    resolved = OPS[op].resolve(LLAMA3_8B)
    counts = {}
    for tokens in (64, 256):
        # every slot used by both batches: the reference runs one matmul per used slot
        comp = C.Composition((1,) * tokens, tuple(i % 8 for i in range(tokens)), (64,) * 8, (1.0,) * 8, 64, tokens)
        backend = TorchLoRABackend("torch", C.batch_info(comp, DEV))
        t = C.make_inputs(resolved, comp, "bfloat16", DEV, seed=int(rng.integers(2**31)))
        C.call_op(backend, resolved, {k: v.clone() for k, v in t.items()})  # warm-up
        counts[tokens] = _kernels_per_call(backend, resolved, t)
    assert 0 < counts[64] == counts[256], f"{op}: kernels per call by one-token segments {counts}"
