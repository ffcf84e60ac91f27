"""The two-launch decode QKV / gate-up with the expand launched as the shrink's programmatic dependent
(PDL, Hopper and later): the same bits as without PDL, the same bits run to run, and the same bits from
a CUDA graph replayed back to back (the expand reads the shrink's output only after ``gdc_wait``; a
missing wait shows up as stale or partial rows)."""

from __future__ import annotations

import pytest
import torch

from .conftest import backend_or_skip, needs_cuda

pytestmark = needs_cuda
DEV = "cuda"


def _case(segs: str, r: int):
    from lora import LoRABatchInfo
    from lora.compare.cases import parse_shape_spec

    case = parse_shape_spec(f"r={r},segs={segs}")
    comp = case.composition(0)
    bi = LoRABatchInfo.from_segments(comp.seg_lens, comp.weight_indices, comp.lora_ranks, comp.scalings, device=DEV)
    return case, comp, bi


def _two_launches(backend, op, t, pdl: bool):
    """shrink then expand into t's base, with or without PDL (what TritonLoRABackend.shrink_expand does)."""
    from lora.triton.expand import lora_expand
    from lora.triton.shrink import lora_shrink

    s, n = t["x"].shape[0], t["a"].shape[1]
    xa = torch.empty((s, n), dtype=t["x"].dtype, device=DEV)
    lora_shrink(t["x"], t["a"], op.stack, backend.batch_info, out=xa, meta=backend.meta, pdl_trigger=pdl)
    return lora_expand(xa, t["b"], t["offsets"], op.max_slice, t["base"], backend.batch_info,
                       meta=backend.meta, pdl=pdl)


@pytest.mark.parametrize("segs", ["decode:64", "decode:256"])
@pytest.mark.parametrize("op_name, r", [("qkv", 16), ("gate_up", 16), ("qkv", 64), ("gate_up", 64)])
def test_pdl_same_bits_eager_and_graph(op_name, r, segs):
    from lora import testing as I
    from lora.compare.cases import OPS
    from lora.triton import tiling

    if not tiling.pdl_supported(DEV):
        pytest.skip("no programmatic dependent launch on this GPU (Hopper or later) or Triton (gdc_wait)")
    case, comp, bi = _case(segs, r)
    assert tiling.decode_sized(comp.tokens, comp.num_lora), "a decode batch takes the PDL path"
    op = OPS[op_name].resolve(case.shape)
    backend = backend_or_skip("triton", bi)
    t = I.make_inputs(op, comp, torch.bfloat16, DEV, seed=3)
    ref = I.oracle(op, comp, t)
    # a device tensor made before any capture (a host-to-device copy cannot be captured)
    t.setdefault("offsets", torch.tensor(op.offsets, dtype=torch.int32, device=DEV))
    u = {k: v.clone() for k, v in t.items()}
    via_backend = I.call_op(backend, op, u)  # the backend's own path (PDL), adding into u["base"] in place
    chk = I.check(via_backend, ref, "bfloat16", expect_dtype=torch.bfloat16, base=u["base"])
    assert chk.ok, chk.detail
    plain = _two_launches(backend, op, {k: v.clone() for k, v in t.items()}, pdl=False)
    for _ in range(3):
        assert torch.equal(_two_launches(backend, op, {k: v.clone() for k, v in t.items()}, pdl=True), plain)
    assert torch.equal(via_backend, plain)

    # graph: 20 back-to-back pairs, each on its own copy of the inputs, replayed 5 times
    copies = [{k: v.clone() for k, v in t.items()} for _ in range(20)]
    base0 = t["base"].clone()
    g = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for c in copies:  # warm-up (compiles) off the capture
            _two_launches(backend, op, c, pdl=True)
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(g):
        for c in copies:
            _two_launches(backend, op, c, pdl=True)
    for _ in range(5):
        for c in copies:
            c["base"].copy_(base0)
        g.replay()
        torch.cuda.synchronize()
        for c in copies:
            assert torch.equal(c["base"], plain)
