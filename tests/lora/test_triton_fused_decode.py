"""QKV / gate-up of decode-sized batches in one launch (lora/triton/fused_decode.py), on the interpreter
(fp16 / fp32; Triton's CPU interpreter gets bf16 dots wrong) or a GPU: checked against the float64
oracle on poisoned inputs, the same bits run to run, counters left at zero, new metadata in the same
tensors, and when the backend takes this path (the plan decision)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import lora

STATUS = {s.name: s for s in lora.available_backends()}
if not STATUS["triton"].available:
    pytest.skip(f"triton backend cannot run here: {STATUS['triton'].reason}", allow_module_level=True)

from lora import LoRABatchInfo  # noqa: E402
from lora import testing as I  # noqa: E402
from lora.compare.cases import OPS, parse_shape_spec  # noqa: E402
from lora.triton import fused_decode, tiling  # noqa: E402
from lora.triton.scratch import scratch_for  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# Odd widths, GQA (q != kv, slice bounds not multiples of 16), a rank-0 slot, ranks below max_r, an empty
# segment, and a slot with more rows (a 20-token segment) than a 16-row block: two chunks for that group.
SPEC = "hidden=72,q=40,kv=24,inter=88,r=16,ranks=16+0+5+16+9,segs=lens:1+1+20+0+1+3+1+1+1+2"
# Slice bounds on 16-element boundaries and ranks multiple of 8 on the slots with work: the vector branch.
ALIGNED = "hidden=72,q=64,kv=32,inter=48,r=16,ranks=16+0+8+16+8,segs=lens:1+1+20+0+1+3+1+1+1+2"
PLANS = [
    tiling.FusedPlan(16, 32, 3, 16, 2),  # split-K 3 over 3 K steps of 32 (the last one ragged)
    tiling.FusedPlan(16, 16, 1, 32, 1),  # no split, one column block per item
    tiling.FusedPlan(32, 64, 2, 16, 4, num_stages=1),
]


def _setup(spec=SPEC, seed=0):
    case = parse_shape_spec(spec)
    comp = case.composition(seed)
    bi = LoRABatchInfo.from_segments(comp.seg_lens, comp.weight_indices, comp.lora_ranks, comp.scalings, device=DEV)
    return case, comp, bi


def _run(backend, op, t, plan):
    """One call on a copy of ``t`` under ``plan`` (or a tuple of plans of different kinds)."""
    u = {k: v.clone() for k, v in t.items()}
    with tiling.forced_plan(*(plan if isinstance(plan, tuple) else (plan,))):
        return I.call_op(backend, op, u), u


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("op_name", ["qkv", "gate_up"])
@pytest.mark.parametrize("plan", PLANS, ids=str)
@pytest.mark.parametrize("spec", [SPEC, ALIGNED], ids=["ragged", "aligned"])
def test_one_launch_matches_the_oracle(spec, op_name, dtype, plan, monkeypatch):
    case, comp, bi = _setup(spec)
    assert max(sum(n for n, w in zip(comp.seg_lens, comp.weight_indices) if w == g) for g in range(5)) > 16
    op = OPS[op_name].resolve(case.shape)
    backend = lora.get_backend_from_name("triton")("triton", bi)
    calls = []
    real = fused_decode.lora_fused_decode
    monkeypatch.setattr("lora.triton.backend.lora_fused_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    t = I.make_inputs(op, comp, I.DTYPES[dtype], DEV, seed=11)
    ref = I.oracle(op, comp, t)
    out, u = _run(backend, op, t, plan)
    assert calls == [1], "the backend took the one-launch path"
    c = I.check(out, ref, dtype, expect_dtype=I.DTYPES[dtype], base=u["base"])
    assert c.ok, c.detail
    assert not scratch_for(DEV).counters.any(), "every counter is left at zero"


def test_same_bits_run_to_run():
    case, comp, bi = _setup()
    op = OPS["qkv"].resolve(case.shape)
    backend = lora.get_backend_from_name("triton")("triton", bi)
    t = I.make_inputs(op, comp, torch.float16, DEV, seed=3)
    first, _ = _run(backend, op, t, PLANS[0])
    again, _ = _run(backend, op, t, PLANS[0])
    assert torch.equal(first.view(torch.int16), again.view(torch.int16))


def test_new_metadata_in_the_same_tensors():
    """What a CUDA-graph replay does: same tensors and shapes, new values copied in."""
    case, comp, bi = _setup()
    other = parse_shape_spec(SPEC.replace("ranks=16+0+5+16+9", "ranks=3+16+0+8+16")).composition(7)
    assert other.tokens == comp.tokens and other.bs == comp.bs
    op = OPS["gate_up"].resolve(case.shape)
    backend = lora.get_backend_from_name("triton")("triton", bi)
    for c in (comp, other):
        fresh = LoRABatchInfo.from_segments(c.seg_lens, c.weight_indices, c.lora_ranks, c.scalings, device=DEV)
        for field in ("seg_lens", "seg_indptr", "weight_indices", "lora_ranks", "scalings"):
            getattr(bi, field).copy_(getattr(fresh, field))
        t = I.make_inputs(op, c, torch.float32, DEV, seed=5)
        out, u = _run(backend, op, t, PLANS[0])
        chk = I.check(out, I.oracle(op, c, t), "float32", expect_dtype=torch.float32, base=u["base"])
        assert chk.ok, f"{c}: {chk.detail}"


# ---- when the backend takes this path ----------------------------------------------------------------


@pytest.fixture
def tables(tmp_path, monkeypatch):
    monkeypatch.setenv(tiling.TUNE_DIR_ENV, str(tmp_path / "user"))
    monkeypatch.setattr(tiling, "TABLES_DIR", tmp_path / "shipped")
    tiling.reload_tables()
    yield
    tiling.reload_tables()


def _decision(comp, op):
    return tiling.plan_fused(comp.tokens, op.k, op.stack, comp.max_r, op.n, op.max_slice, comp.num_lora, comp.bs,
                             torch.float16, DEV)


def test_two_launches_keep_pdl_unless_a_table_measured_it_slower(tables, monkeypatch):
    """tiling.pair_pdl: on a PDL device, a decode pair is shrink + dependent expand unless this device's table
    holds two launches without PDL for the shape (or a forced plan says so); prefill pairs never use PDL; and
    the backend then launches both plainly."""
    case, comp, bi = _setup()
    op = OPS["gate_up"].resolve(case.shape)
    args = (comp.tokens, op.k, op.stack, comp.max_r, op.n, op.max_slice, comp.num_lora, comp.bs, DEV)
    assert not tiling.pair_pdl(*args) or DEV == "cuda", "no PDL on the CPU interpreter"
    monkeypatch.setattr(tiling, "pdl_supported", lambda device: True)  # what a Hopper GPU says
    tiling.reload_tables()
    assert tiling.pair_pdl(*args), "not measured on this device: PDL"
    key = tiling.fused_key(comp.tokens, op.k, op.stack, comp.max_r, op.n, op.max_slice, comp.num_lora)
    name = tiling.device_info(DEV)[0]
    tiling.write_table(tiling.user_table_path(name), {"name": name},
                       {key: tiling.FusedPlan(16, 16, 1, 32, 1, fuse=False, pdl=False)})
    tiling.reload_tables()
    assert not tiling.pair_pdl(*args), "measured faster without PDL"
    assert tiling.read_table(tiling.user_table_path(name)).plans[key].pdl is False, "the flag round-trips"
    with tiling.forced_plan(tiling.FusedPlan(16, 16, 1, 32, 1, fuse=False)):
        assert tiling.pair_pdl(*args), "a forced plan wins over the table (the tuner's candidates)"
    assert not tiling.pair_pdl(8192, *args[1:7], 8, DEV), "prefill-sized: no PDL"

    from lora.triton import backend as tb

    monkeypatch.setattr(tiling, "pdl_launch", lambda mode, device: {})  # the interpreter launches plainly
    calls = []
    real_shrink, real_expand = tb.lora_shrink, tb.lora_expand
    monkeypatch.setattr(tb, "lora_shrink", lambda *a, **k: calls.append(k.get("pdl_trigger"))
                        or real_shrink(*a, **{**k, "pdl_trigger": False}))
    monkeypatch.setattr(tb, "lora_expand", lambda *a, **k: calls.append(k.get("pdl")) or real_expand(*a, **{**k, "pdl": 0}))
    backend = lora.get_backend_from_name("triton")("triton", bi)
    t = I.make_inputs(op, comp, torch.float16, DEV, seed=1)
    ref = I.oracle(op, comp, t)
    out = I.call_op(backend, op, t)
    assert I.check(out, ref, "float16", expect_dtype=torch.float16, base=t["base"]).ok
    assert calls == [False, tiling.PDL_OFF], "the table's choice: both launches plain"


def test_two_launches_unless_a_table_chose_one(tables):
    case, comp, _ = _setup()
    op = OPS["qkv"].resolve(case.shape)
    assert _decision(comp, op) is None, "not measured on this device: shrink then expand"
    key = tiling.fused_key(comp.tokens, op.k, op.stack, comp.max_r, op.n, op.max_slice, comp.num_lora)
    name = tiling.device_info(DEV)[0]
    tiling.write_table(tiling.user_table_path(name), {"name": name}, {key: PLANS[1]})
    tiling.reload_tables()
    assert _decision(comp, op) == PLANS[1]
    tiling.write_table(tiling.user_table_path(name), {"name": name}, {key: tiling.FusedPlan(16, 16, 1, 32, 1, fuse=False)})
    tiling.reload_tables()
    assert _decision(comp, op) is None, "measured slower: two launches"
    with tiling.forced_plan(tiling.FusedPlan(16, 16, 1, 32, 1, fuse=False)):
        assert _decision(comp, op) is None


def test_never_for_prefill_sized_batches(tables):
    case, comp, _ = _setup("hidden=72,q=40,kv=24,inter=88,r=16,adapters=2,segs=prefill:512/2")
    op = OPS["gate_up"].resolve(case.shape)
    key = tiling.fused_key(comp.tokens, op.k, op.stack, comp.max_r, op.n, op.max_slice, comp.num_lora)
    name = tiling.device_info(DEV)[0]
    tiling.write_table(tiling.user_table_path(name), {"name": name}, {key: PLANS[1]})
    tiling.reload_tables()
    assert _decision(comp, op) is None


def test_heuristic_fused_plan_is_valid_for_llama_decode():
    for s in (1, 16, 64, 256, 512):
        for stack, width in ((3, 4096), (2, 14336)):
            for r in (8, 16, 64, 128):
                p = tiling.heuristic_fused(s, 4096, stack, r, width, 8, 132)
                assert 8 * stack * p.split_k <= 2 * 132 and p.block_m >= 16
                assert tiling.fused_smem(tiling.fit_fused(p, r, 4, 232_448), r, 4) <= 232_448


# ---- two launches, the expand summing the shrink's split-K partials (FusedPlan.partials) -------------------


def _pair(split: int, partials: bool = True) -> tiling.FusedPlan:
    return tiling.FusedPlan(16, 16, split, 32, 1, fuse=False, partials=partials)


# The shrink's own tiles (its K split is the pair's: these say 5, the pair 3 or 4). K = 72.
SHRINK_TILES = [
    tiling.ShrinkPlan(16, 16, 1, 32, 5, group_grid=True),  # 3 K steps of 32 (the last ragged), one a split
    tiling.ShrinkPlan(16, 32, 2, 16, 5, group_grid=True),  # two column sub-tiles, a group over two chunks; 5 K
                                                           # steps in 4 splits of 2: the last split is empty
]


def _spy_expand(monkeypatch):
    from lora.triton import backend as tb

    seen = []
    real = tb.lora_expand
    monkeypatch.setattr(tb, "lora_expand", lambda *a, **k: seen.append(k.get("x_splits", 1)) or real(*a, **k))
    return seen


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("op_name", ["qkv", "gate_up"])
@pytest.mark.parametrize("shrink, split", list(zip(SHRINK_TILES, [3, 4])),
                         ids=["one-sub-tile-split3", "two-sub-tiles-split4"])
@pytest.mark.parametrize("expand", [None, tiling.ExpandPlan(16, 32, 2, group_grid=False),
                                    tiling.ExpandPlan(16, 32, 1, group_grid=True, acc_base=True)],
                         ids=["decode", "prefill", "acc-base"])
@pytest.mark.parametrize("spec", [SPEC, ALIGNED], ids=["ragged", "aligned"])
def test_partials_pair_matches_the_oracle_and_the_plain_pair_bit_for_bit(spec, expand, shrink, split, op_name, dtype,
                                                                         monkeypatch):
    """The shrink, split as the pair's plan says, leaves each split's float32 sums and the expand adds them
    in split order: the result is the oracle's, and the same bits as the pair whose shrink (split the same
    way) sums them itself. The partials scratch is poisoned first: the expand reads only what this shrink
    wrote (no column at or past stack * rank, no row of a rank-0 slot or after the segments)."""
    case, comp, bi = _setup(spec)
    op = OPS[op_name].resolve(case.shape)
    backend = lora.get_backend_from_name("triton")("triton", bi)
    t = I.make_inputs(op, comp, I.DTYPES[dtype], DEV, seed=13)
    ref = I.oracle(op, comp, t)
    seen = _spy_expand(monkeypatch)
    scratch_for(DEV).named("partials", split * comp.tokens * op.stack * comp.max_r, torch.float32).fill_(float("nan"))
    extra = () if expand is None else (expand,)
    out, u = _run(backend, op, t, (_pair(split), shrink, *extra))
    assert seen == [split], "the expand summed the shrink's partials, split as the pair says"
    c = I.check(out, ref, dtype, expect_dtype=I.DTYPES[dtype], base=u["base"])
    assert c.ok, c.detail
    plain, _ = _run(backend, op, t, (_pair(split, partials=False), replace(shrink, split_k=split), *extra))
    assert seen == [split, 1]
    assert torch.equal(out.view(torch.uint8), plain.view(torch.uint8)), "the same bits as the shrink's own finish"


def test_partials_need_the_decode_layout(monkeypatch):
    """A prefill-layout shrink plan has no per-group splits to leave: the plain pair runs. A decode plan
    without split-K is split as the pair says."""
    case, comp, bi = _setup()
    op = OPS["gate_up"].resolve(case.shape)
    backend = lora.get_backend_from_name("triton")("triton", bi)
    t = I.make_inputs(op, comp, torch.float32, DEV, seed=2)
    seen = _spy_expand(monkeypatch)
    for shrink in (tiling.ShrinkPlan(16, 16, 1, 32, 2), tiling.ShrinkPlan(16, 16, 1, 32, 1, group_grid=True)):
        out, u = _run(backend, op, t, (_pair(2), shrink))
        assert I.check(out, I.oracle(op, comp, t), "float32", expect_dtype=torch.float32, base=u["base"]).ok
    assert seen == [1, 2]
    from lora.triton.shrink import lora_shrink

    with pytest.raises(ValueError, match="split-K"):
        lora_shrink(t["x"], t["a"], op.stack, bi, plan=tiling.ShrinkPlan(16, 16, 1, 32, 1, group_grid=True),
                    partials=torch.empty(10_000, device=DEV))
    with pytest.raises(ValueError, match="split_k >= 2"):
        _pair(1)


def test_partials_pair_only_where_a_table_chose_it(tables):
    """tiling.pair_partials: a decode pair sums partials in the expand (with the entry's split) only where this
    device's table (or a forced plan) says so; never for prefill-sized batches; the entry round-trips through
    the table file."""
    case, comp, _ = _setup()
    op = OPS["qkv"].resolve(case.shape)
    args = (comp.tokens, op.k, op.stack, comp.max_r, op.n, op.max_slice, comp.num_lora, comp.bs, DEV)
    assert tiling.pair_partials(*args) == 0, "not measured on this device"
    key = tiling.fused_key(comp.tokens, op.k, op.stack, comp.max_r, op.n, op.max_slice, comp.num_lora)
    name = tiling.device_info(DEV)[0]
    tiling.write_table(tiling.user_table_path(name), {"name": name}, {key: _pair(4)})
    tiling.reload_tables()
    assert tiling.pair_partials(*args) == 4
    assert _decision(comp, op) is None, "two launches"
    assert tiling.read_table(tiling.user_table_path(name)).plans[key] == _pair(4), "the entry round-trips"
    with tiling.forced_plan(_pair(2, partials=False)):
        assert tiling.pair_partials(*args) == 0, "a forced plan wins over the table (the tuner's candidates)"
    with tiling.forced_plan(_pair(2)):
        assert tiling.pair_partials(*args) == 2
        assert tiling.pair_partials(8192, *args[1:7], 8, DEV) == 0, "prefill-sized: never"
