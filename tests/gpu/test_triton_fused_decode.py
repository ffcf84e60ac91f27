"""The one-launch decode QKV / gate-up (lora/triton/fused_decode.py) on the GPU, at Llama-3-8B widths:
right against the float64 oracle (bf16), the same bits run to run, counters back at zero, and CUDA graphs
replayed many times back to back with new metadata copied in and re-derived by ``set_batch_info`` (the
ticket and (group, slice) counters are reset by every launch; a race there shows up as wrong rows or NaN, a lost wake-up as NaN after the
bounded wait)."""

from __future__ import annotations

import pytest
import torch

from .conftest import backend_or_skip, needs_cuda

pytestmark = needs_cuda
DEV = "cuda"


def _setup(segs: str, r: int = 16, seed: int = 0, extra: str = ""):
    from lora import LoRABatchInfo
    from lora.compare.cases import parse_shape_spec

    case = parse_shape_spec(f"{extra}r={r},segs={segs}")
    comp = case.composition(seed)
    bi = LoRABatchInfo.from_segments(comp.seg_lens, comp.weight_indices, comp.lora_ranks, comp.scalings, device=DEV)
    return case, comp, bi


def _plans(comp, op):
    from lora.triton import tiling

    h = tiling.heuristic_fused(comp.tokens, op.k, op.stack, comp.max_r, op.max_slice, comp.num_lora,
                               tiling.device_info(DEV)[1])
    return [h, tiling.FusedPlan(h.block_m, 64, 16, 128, 2), tiling.FusedPlan(16, 256, 1, 64, 1), _partials_pair()]


def _partials_pair():
    """Two launches, the expand summing the split-K shrink's float32 partials (FusedPlan.partials), with
    the shrink plan that gives it 8 splits."""
    from lora.triton import tiling

    return (tiling.FusedPlan(16, 16, 8, 32, 1, fuse=False, partials=True),
            tiling.ShrinkPlan(16, 32, 1, 128, 8, group_grid=True))


def _forced(plan):
    from lora.triton import tiling

    return tiling.forced_plan(*(plan if isinstance(plan, tuple) else (plan,)))


# Llama-3-8B widths (slice bounds on 16-element boundaries: the vector branch), and GQA widths that are
# not (q=4000, kv=1000, inter=14000) with ranks below max_r, a rank-0 slot: the scalar branch.
RAGGED = "q=4000,kv=1000,inter=14000,ranks=16+5+16+0+9+16+16+3,"


@pytest.mark.parametrize("r, extra", [(16, ""), (64, ""), (16, RAGGED)], ids=["r16", "r64", "ragged"])
@pytest.mark.parametrize("segs", ["decode:64", "decode:256", "lens:1+1+40+3+1+0+1+2"])
@pytest.mark.parametrize("op_name", ["qkv", "gate_up"])
def test_right_and_the_same_bits_every_run(op_name, segs, r, extra):
    from lora import testing as I
    from lora.compare.cases import OPS
    from lora.triton.scratch import scratch_for

    case, comp, bi = _setup(segs, r, extra=extra)
    op = OPS[op_name].resolve(case.shape)
    backend = backend_or_skip("triton", bi)
    t = I.make_inputs(op, comp, torch.bfloat16, DEV, seed=1)
    ref = I.oracle(op, comp, t)
    for plan in _plans(comp, op):
        outs = []
        for _ in range(3):
            u = {k: v.clone() for k, v in t.items()}
            with _forced(plan):
                outs.append(I.call_op(backend, op, u))
        torch.cuda.synchronize()
        c = I.check(outs[0], ref, "bfloat16", expect_dtype=torch.bfloat16, base=None)
        assert c.ok, f"{plan}: {c.detail}"
        for o in outs[1:]:
            assert torch.equal(o.view(torch.int16), outs[0].view(torch.int16)), f"{plan}: bits differ run to run"
        assert not scratch_for(DEV).counters.any(), f"{plan}: counters not back at zero"


@pytest.mark.parametrize("pair", [False, True], ids=["one-launch", "partials-pair"])
@pytest.mark.parametrize("op_name", ["qkv", "gate_up"])
def test_graph_replayed_back_to_back_with_new_metadata(op_name, pair):
    """One graph of 32 launches, replayed for 3 batches of the same shapes (lengths, slots, ranks changed)."""
    from lora import LoRABatchInfo
    from lora import testing as I
    from lora.compare.cases import OPS, parse_shape_spec
    from lora.triton.scratch import scratch_for

    case, comp, bi = _setup("decode:128")
    op = OPS[op_name].resolve(case.shape)
    backend = backend_or_skip("triton", bi)
    plan = _partials_pair() if pair else _plans(comp, op)[0]
    t = I.make_inputs(op, comp, torch.bfloat16, DEV, seed=2)
    calls = 32
    bases = [t["base"].clone() for _ in range(calls)]
    with _forced(plan):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            I.call_op(backend, op, {**t, "base": t["base"].clone()})
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(calls):
                I.call_op(backend, op, {**t, "base": bases[i]})
    for seed, spec in enumerate(["r=16,segs=decode:128", "r=16,ranks=16+0+5+16+9+16+12+1,segs=decode:128",
                                 "r=16,ranks=8+8+8+8+0+0+16+16,segs=lens:" + "+".join(["1"] * 124 + ["2", "0", "2", "0"])]):
        c = parse_shape_spec(spec).composition(seed + 10)
        assert c.tokens == comp.tokens and c.bs == comp.bs, "same shapes: new values copied into the same tensors"
        fresh = LoRABatchInfo.from_segments(c.seg_lens, c.weight_indices, c.lora_ranks, c.scalings, device=DEV)
        for field in ("seg_lens", "seg_indptr", "weight_indices", "lora_ranks", "scalings"):
            getattr(bi, field).copy_(getattr(fresh, field))
        backend.set_batch_info(bi)  # re-derive the grouping into the same buffers before the replay (lora.backend)
        new = I.make_inputs(op, c, torch.bfloat16, DEV, seed=20 + seed)
        for key in ("x", "a", "b"):
            t[key].copy_(new[key])
        for b_ in bases:
            b_.copy_(new["base"])
        graph.replay()
        torch.cuda.synchronize()
        ref = I.oracle(op, c, new)
        for i in (0, calls // 2, calls - 1):
            chk = I.check(bases[i], ref, "bfloat16", expect_dtype=torch.bfloat16)
            assert chk.ok, f"batch {seed}, call {i}: {chk.detail}"
        assert not scratch_for(DEV).counters.any()
