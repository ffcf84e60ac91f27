"""Tuned plans on the GPU: a plan from this device's table is the one launched, ``python -m lora tune``
measures and writes a table the backend then uses, and results stay bitwise the same run to run.

The table goes to a temporary directory (``KERNELSTACK_TUNE_DIR``): the user's real table is not touched.
"""

from __future__ import annotations

import pytest
import torch

from .conftest import backend_or_skip, needs_cuda

pytestmark = needs_cuda
DEV = "cuda"


@pytest.fixture
def tune_dir(tmp_path, monkeypatch):
    from lora.triton import tiling

    monkeypatch.setenv(tiling.TUNE_DIR_ENV, str(tmp_path))
    monkeypatch.delenv("LORA_TRITON_NO_TUNED", raising=False)
    tiling.reload_tables()
    yield tmp_path
    tiling.reload_tables()


def _case(spec: str):
    from lora import LoRABatchInfo
    from lora.compare.cases import parse_shape_spec

    case = parse_shape_spec(spec)
    comp = case.composition(0)
    bi = LoRABatchInfo.from_segments(comp.seg_lens, comp.weight_indices, comp.lora_ranks, comp.scalings, device=DEV)
    return case, comp, bi


def _spy(monkeypatch):
    """Record every plan the launchers get from tiling (what they launch with)."""
    from lora.triton import tiling

    seen = []
    for name in ("plan_shrink", "plan_expand"):
        real = getattr(tiling, name)

        def spy(*args, _real=real, **kwargs):
            plan = _real(*args, **kwargs)
            seen.append(plan)
            return plan

        monkeypatch.setattr(tiling, name, spy)
    return seen


def test_a_plan_from_this_devices_table_is_the_one_launched(tune_dir, monkeypatch):
    from lora import testing as I
    from lora.compare.cases import OPS
    from lora.triton import tiling

    case, comp, bi = _case("hidden=512,q=512,kv=128,inter=1024,r=16,segs=decode:64")
    op = OPS["gate_up"].resolve(case.shape)
    name, sms = tiling.device_info(DEV)
    skey = tiling.shrink_key(comp.tokens, op.k, 2 * comp.max_r, comp.num_lora)
    ekey = tiling.expand_key(comp.tokens, comp.max_r, op.n, op.max_slice, 2, comp.num_lora)
    # plans the heuristic would not pick (split-K 4 with 32-deep steps; 32-wide column tiles, 2 per program)
    shrink = tiling.ShrinkPlan(16, 16, 1, 32, 4, 4, 2, group_grid=True)
    expand = tiling.ExpandPlan(16, 32, 2, 4, 2, group_grid=True)
    assert shrink != tiling.heuristic_shrink(comp.tokens, op.k, 2 * comp.max_r, comp.num_lora, sms)
    assert expand != tiling.heuristic_expand(comp.tokens, comp.max_r, op.max_slice, comp.num_lora, 2, sms)
    tiling.write_table(tiling.user_table_path(name), {"name": name}, {skey: shrink, ekey: expand})
    tiling.reload_tables()
    seen = _spy(monkeypatch)

    backend = backend_or_skip("triton", bi)
    t = I.make_inputs(op, comp, torch.bfloat16, DEV, seed=3)
    ref = I.oracle(op, comp, t)
    out = I.call_op(backend, op, t)
    torch.cuda.synchronize()
    assert shrink in seen and expand in seen and set(seen) <= {shrink, expand}, f"launched with {seen}"
    c = I.check(out, ref, "bfloat16", expect_dtype=torch.bfloat16, base=t["base"])
    assert c.ok, c.detail
    assert [tb.origin for tb in tiling.tables_for(name)][0] == "user"


@pytest.mark.parametrize("segs, geometry", [("prefill:4096/8", "long"), ("mixed:16/256", "short")])
def test_a_prefill_batch_launches_its_segment_geometrys_plan(tune_dir, monkeypatch, segs, geometry):
    """Long prompts and short segments of one token bucket launch the plans the table keeps for their geometry."""
    from lora import testing as I
    from lora.compare.cases import OPS
    from lora.triton import tiling

    case, comp, bi = _case(f"hidden=512,q=512,kv=128,inter=1024,r=16,segs={segs}")
    op = OPS["shrink2"].resolve(case.shape)
    assert tiling.segment_class(comp.tokens, comp.num_lora, bi.bs) == geometry
    key = tiling.shrink_key(comp.tokens, op.k, 2 * comp.max_r, comp.num_lora)
    mine = tiling.ShrinkPlan(32, 32, 1, 32, 2, 4, 2)  # not the heuristic's (64-row chunks, no split)
    other = tiling.ShrinkPlan(128, 32, 1, 64, 1, 4, 3)
    other_geometry = {"long": "short", "short": "long"}[geometry]
    tiling.write_table(tiling.user_table_path(tiling.device_info(DEV)[0]), {"name": tiling.device_info(DEV)[0]},
                       {f"{key}:seg{geometry}": mine, f"{key}:seg{other_geometry}": other})
    tiling.reload_tables()
    seen = _spy(monkeypatch)
    backend = backend_or_skip("triton", bi)
    t = I.make_inputs(op, comp, torch.bfloat16, DEV, seed=5)
    out = I.call_op(backend, op, t)
    torch.cuda.synchronize()
    assert seen == [mine], f"launched with {seen}"
    c = I.check(out, I.oracle(op, comp, t), "bfloat16", expect_dtype=torch.bfloat16)
    assert c.ok, c.detail


def test_tune_writes_a_table_for_this_device_that_the_backend_uses(tune_dir, monkeypatch, capsys):
    from lora.__main__ import main
    from lora.triton import tiling

    argv = ["tune", "--shape", "hidden=512,q=512,kv=128,inter=1024", "--ranks", "16", "--regimes", "decode,prefill",
            "--decode-tokens", "64", "--prefill-tokens", "2048", "--ops", "shrink2,expand_gate_up,gate_up",
            "--max-candidates", "3", "--workers", "2", "--budget-s", "120", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    name = torch.cuda.get_device_name()
    path = tiling.user_table_path(name)
    assert f"-> {path}" in out, out
    table = tiling.read_table(path)
    assert table.device == name and table.meta["written_by"]["complete"] is True, out
    assert len(table.plans) == 5, out  # 2 primitives x 2 token buckets, and one launch or two for decode gate_up
    for key, rec in table.meta["measured"].items():
        if key.startswith("fused:"):
            continue  # its first candidate is two launches, not a heuristic plan
        for case in rec["cases"].values():
            assert case["heuristic_us"] is not None and case["plans_timed"] >= 2, (key, case)
            assert 0 < case["us"] <= case["heuristic_us"], "one batch per bucket: the fastest plan wins"
    # the backend plans these buckets from the table
    _, comp, bi = _case("hidden=512,q=512,kv=128,inter=1024,r=16,segs=decode:64")
    skey = tiling.shrink_key(comp.tokens, 512, 32, comp.num_lora)
    assert tiling.plan_shrink(comp.tokens, 512, 32, comp.num_lora, bi.bs, torch.bfloat16, DEV) == table.plans[skey]
    assert tiling.tuned_plan(skey, name)[1].origin == "user"
    fkey = tiling.fused_key(comp.tokens, 512, 2, 16, 2048, 1024, comp.num_lora)
    fused = table.plans[fkey]
    assert tiling.plan_fused(comp.tokens, 512, 2, 16, 2048, 1024, comp.num_lora, bi.bs, torch.bfloat16, DEV) == (
        fused if fused.fuse else None)


@pytest.mark.parametrize("op_name, segs", [("gate_up", "decode:64"), ("qkv", "decode:256"), ("shrink1", "prefill:4096/8")])
def test_bitwise_the_same_run_to_run(op_name, segs):
    """Split-K and stream-K partials are summed in a fixed order: the same inputs give the same bits every time."""
    from lora import testing as I
    from lora.compare.cases import OPS
    from lora.triton import tiling

    case, comp, bi = _case(f"r=16,segs={segs}")
    op = OPS[op_name].resolve(case.shape)
    backend = backend_or_skip("triton", bi)
    t = I.make_inputs(op, comp, torch.bfloat16, DEV, seed=5)
    plans = [None]
    if op.kind != "expand":  # also under a deep split-K plan of the same layout as the heuristic's
        h = tiling.plan_shrink(comp.tokens, op.k, op.stack * comp.max_r, comp.num_lora, bi.bs, torch.bfloat16, DEV)
        plans.append(tiling.ShrinkPlan(h.block_m, h.block_n, h.n_sub, 64, 8, h.num_warps, 2, h.group_grid))
        if not h.group_grid:  # stream-K: tiles cut between programs, partials summed by the last to arrive
            plans.append(tiling.ShrinkPlan(h.block_m, h.block_n, h.n_sub, 64, 1, h.num_warps, 2, stream_k=1))
    for plan in plans:
        outs = []
        for _ in range(3):
            u = {k: v.clone() for k, v in t.items()}
            if plan is None:
                outs.append(I.call_op(backend, op, u))
            else:
                with tiling.forced_plan(plan):
                    outs.append(I.call_op(backend, op, u))
        torch.cuda.synchronize()
        for o in outs[1:]:
            assert torch.equal(o.view(torch.int16), outs[0].view(torch.int16)), f"{op_name} under {plan}: bits differ"
