"""The pallas backend's decode launches overlapped by programmatic dependent launch (PDL; lora.pallas.tiling.pdl_modes).

A chain of ops where each reads what the op before it wrote (expand -> shrink of its output -> expand of that ->
QKV -> gate-up of that), in one CUDA graph replayed back to back with PDL on: the same bits as the chain run
eagerly with plain launches (``Tuning(pdl=False)``). A dependent that read before its ``griddepcontrol.wait``, or a
kernel that let its dependent launch before its own wait, shows up as stale or partial rows. The kernels the chain
runs are checked to be the PDL ones (the plans' modes), so the test cannot pass by running plain launches twice."""

from __future__ import annotations

import pytest
import torch

from .conftest import backend_or_skip, needs_cuda

pytestmark = needs_cuda
DEV = "cuda"


@pytest.mark.parametrize("tokens, r", [(64, 16), (256, 64), (100, 16)])
def test_chained_ops_read_what_the_op_before_wrote(tokens, r):
    from lora import LoRABatchInfo
    from lora.compare.cases import parse_shape_spec
    from lora.pallas import plan as P
    from lora.pallas import tiling as T

    comp = parse_shape_spec(f"r={r},segs=decode:{tokens}").composition(0)
    bi = LoRABatchInfo.from_segments(comp.seg_lens, comp.weight_indices, comp.lora_ranks, comp.scalings, device=DEV)
    cls = type(backend_or_skip("pallas", bi))
    with_pdl, plain = cls("pallas", bi, tuning=T.Tuning(pdl=True)), cls("pallas", bi, tuning=T.Tuning(pdl=False))
    g = torch.Generator(device=DEV).manual_seed(11)
    s, h, n, inter, lora = comp.tokens, 4096, 1024, 2048, comp.num_lora

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=DEV, generator=g) * scale).to(torch.bfloat16)

    h0, y0, q0, u0 = rand(s, r), rand(s, h), rand(s, n + 2 * 256), rand(s, 2 * inter)
    b1, a2, b2 = rand(lora, h, r, scale=r**-0.5), rand(lora, r, h, scale=h**-0.5), rand(lora, h, r, scale=r**-0.5)
    a3, b3 = rand(lora, 3 * r, h, scale=h**-0.5), rand(lora, n + 2 * 256, r, scale=r**-0.5)
    a4, b4 = rand(lora, 2 * r, n + 512, scale=(n + 512) ** -0.5), rand(lora, 2 * inter, r, scale=r**-0.5)
    offsets = torch.tensor([0, n, n + 256, n + 512], dtype=torch.int32, device=DEV)

    def chain(backend, y, q, u):
        backend.run_lora_b_sgemm(h0, b1, base_output=y)  # y += expand(h0): writes y
        h1 = backend.run_lora_a_sgemm(y, a2)  # reads y
        backend.run_lora_b_sgemm(h1, b2, base_output=y)  # reads h1, y; writes y
        backend.run_qkv_lora(y, a3, b3, offsets, n, base_output=q)  # reads y; writes q
        backend.run_gate_up_lora(q, a4, b4, base_output=u)  # reads q; writes u
        return y, q, u

    bpad = T.padded_tokens(s)
    sp = P.plan_shrink(bpad, h, r, 1, lora, "bfloat16", tail=True, result=True, tuning=with_pdl.tuning)
    ep = P.plan_expand(bpad, h, r, 1, lora, "bfloat16", "bfloat16", "bfloat16", internal=False, tail=True,
                       tuning=with_pdl.tuning)
    assert (sp.cfg.pdl, sp.sum.pdl, ep.cfgs[0].pdl) == (T.PDL_WAIT, T.PDL_DEPENDENT, T.PDL_DEPENDENT)
    off = P.plan_shrink(bpad, h, r, 1, lora, "bfloat16", tail=True, result=True, tuning=plain.tuning)
    assert (off.cfg.pdl, off.sum.pdl) == (T.PDL_OFF, T.PDL_OFF)

    want = chain(plain, y0.clone(), q0.clone(), u0.clone())
    again = chain(plain, y0.clone(), q0.clone(), u0.clone())
    assert all(torch.equal(a, b) for a, b in zip(want, again)), "plain launches: the same bits run to run"
    eager = chain(with_pdl, y0.clone(), q0.clone(), u0.clone())
    assert all(torch.equal(a, b) for a, b in zip(want, eager)), "eager PDL launches: the bits of plain ones"

    y, q, u = y0.clone(), q0.clone(), u0.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        chain(with_pdl, y, q, u)  # warm-up off the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain(with_pdl, y, q, u)
    for i in range(10):
        y.copy_(y0)
        q.copy_(q0)
        u.copy_(u0)
        graph.replay()
        torch.cuda.synchronize()
        for name, got, exp in zip("yqu", (y, q, u), want):
            assert torch.equal(got, exp), f"replay {i}: {name} differs from the plain chain"
