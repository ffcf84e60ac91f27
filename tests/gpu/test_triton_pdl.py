"""Decode-sized launches overlapped by programmatic dependent launch (PDL, Hopper and later; tiling.pdl_chain).

The two-launch QKV / gate-up (the expand a dependent of the shrink, loading its first tiles early): the same
bits as without PDL, run to run, and from a CUDA graph replayed back to back (the expand reads the shrink's
output only after ``gdc_wait``; a missing wait shows up as stale or partial rows). And a chain of ops where
each reads what the op before it wrote, in one graph: every expand waits for the kernel before it."""

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
    from lora.triton import tiling
    from lora.triton.expand import lora_expand
    from lora.triton.shrink import lora_shrink

    s, n = t["x"].shape[0], t["a"].shape[1]
    xa = torch.empty((s, n), dtype=t["x"].dtype, device=DEV)
    lora_shrink(t["x"], t["a"], op.stack, backend.batch_info, out=xa, meta=backend.meta, pdl_trigger=pdl)
    return lora_expand(xa, t["b"], t["offsets"], op.max_slice, t["base"], backend.batch_info,
                       meta=backend.meta, pdl=tiling.PDL_SHRINK if pdl else tiling.PDL_OFF)


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


@pytest.mark.parametrize("r", [16, 64])
def test_chained_ops_read_what_the_op_before_wrote(r, monkeypatch):
    """expand -> shrink of its output -> expand of that -> qkv of that, in one graph with every expand a PDL
    dependent of the kernel before it: the same bits as the chain run eagerly with plain launches."""
    from lora.triton import backend as tb
    from lora.triton import tiling

    if not tiling.pdl_supported(DEV):
        pytest.skip("no programmatic dependent launch on this GPU (Hopper or later) or Triton (gdc_wait)")
    case, comp, bi = _case("decode:64", r)
    backend = backend_or_skip("triton", bi)
    g = torch.Generator(device=DEV).manual_seed(7)
    s, h, n = comp.tokens, 4096, 1024
    lora = comp.num_lora

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=DEV, generator=g) * scale).to(torch.bfloat16)

    h0, y0, q0 = rand(s, r), rand(s, h), rand(s, n + 2 * 256)
    b1, a2, b2 = rand(lora, h, r, scale=r**-0.5), rand(lora, r, h, scale=h**-0.5), rand(lora, h, r, scale=r**-0.5)
    a3, b3 = rand(lora, 3 * r, h, scale=h**-0.5), rand(lora, n + 2 * 256, r, scale=r**-0.5)
    offsets = torch.tensor([0, n, n + 256, n + 512], dtype=torch.int32, device=DEV)

    def chain(y, q):
        backend.run_lora_b_sgemm(h0, b1, base_output=y)  # y += expand(h0): writes y
        h1 = backend.run_lora_a_sgemm(y, a2)  # reads y
        backend.run_lora_b_sgemm(h1, b2, base_output=y)  # reads h1, y; writes y
        backend.run_qkv_lora(y, a3, b3, offsets, n, base_output=q)  # reads y; writes q
        return y, q

    with monkeypatch.context() as m:
        m.setattr(tb.tiling, "pdl_chain", lambda *a: False)
        want = chain(y0.clone(), q0.clone())
        assert torch.equal(want[0], chain(y0.clone(), q0.clone())[0]), "plain launches: the same bits run to run"
    y, q = y0.clone(), q0.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        chain(y, q)  # warm-up off the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain(y, q)
    for _ in range(10):
        y.copy_(y0)
        q.copy_(q0)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, want[0]) and torch.equal(q, want[1])
