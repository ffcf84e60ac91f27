"""Tuned plan tables of the Triton backend and ``python -m lora tune`` (CPU: Triton's interpreter).

Where a plan comes from, per shape bucket: the user's table for this device > the table shipped for it
> the heuristic; a table that cannot be used is reported (TunedTableWarning naming the file and why)
and skipped. On the CPU the device is called "cpu", so tables written for "cpu" exercise the same path
a GPU's do.
"""

from __future__ import annotations


import dataclasses
import json
import warnings

import pytest
import torch

import lora

STATUS = {s.name: s for s in lora.available_backends()}
if not STATUS["triton"].available:
    pytest.skip(f"triton backend cannot run here: {STATUS['triton'].reason}", allow_module_level=True)

from lora.__main__ import main as lora_main  # noqa: E402
from lora.triton import tiling  # noqa: E402
from lora.triton import tune  # noqa: E402

if torch.cuda.is_available():
    pytest.skip("table handling is tested for the CPU device name; tests/gpu covers the GPU", allow_module_level=True)

DEV = "cpu"
# Three shrink buckets: K1 in both tables, K2 only in the user's, K3 only in the shipped one; K4 in none.
S, K, N, L = 40, 72, 24, 3
K1 = tiling.shrink_key(S, K, N, L)
K2 = tiling.shrink_key(S, K, 2 * N, L)
K3 = tiling.shrink_key(S, K, 3 * N, L)
USER = tiling.ShrinkPlan(16, 16, 2, 32, 2, 4, 2)
USER2 = tiling.ShrinkPlan(32, 16, 3, 16, 1, 4, 2)
SHIPPED = tiling.ShrinkPlan(64, 32, 1, 64, 4, 4, 3)
SHIPPED3 = tiling.ShrinkPlan(16, 32, 3, 64, 1, 4, 3)


def plan(n_out: int = N) -> tiling.ShrinkPlan:
    return tiling.plan_shrink(S, K, n_out, L, 5, torch.float16, DEV)


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """An empty user table directory and an empty shipped-table directory; caches forgotten around."""
    user, shipped = tmp_path / "user", tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setenv(tiling.TUNE_DIR_ENV, str(user))
    monkeypatch.delenv("LORA_TRITON_NO_TUNED", raising=False)
    monkeypatch.setattr(tiling, "TABLES_DIR", shipped)
    tiling.reload_tables()
    yield user, shipped
    tiling.reload_tables()


def _ship(shipped_dir, plans, device="cpu"):
    return tiling.write_table(shipped_dir / f"{tiling.device_slug(device)}.json", {"name": device}, plans)


def _user(plans, device="cpu"):
    return tiling.write_table(tiling.user_table_path(device), {"name": device, "capability": None}, plans)


# ---- files ---------------------------------------------------------------------------------------------


def test_written_and_read_back(dirs):
    expand = tiling.ExpandPlan(32, 64, 2, 4, 1, group_grid=True)
    ekey = tiling.expand_key(64, 16, 4096, 4096, 1, 8)
    path = _user({K1: USER, ekey: expand}, device="NVIDIA H200")
    assert path == dirs[0] / "nvidia-h200.json"
    table = tiling.read_table(path)
    assert table.device == "NVIDIA H200" and table.origin == "user"
    assert table.plans == {K1: USER, ekey: expand}
    assert json.loads(path.read_text())["format"] == tiling.TABLE_FORMAT
    assert not list(dirs[0].glob(".*.tmp")), "written through a temporary file, then renamed"


def test_user_dir_follows_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv(tiling.TUNE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tiling.user_table_dir() == tmp_path / "xdg" / "kernelstack" / "lora-triton"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tiling.user_table_dir() == tmp_path / "home" / ".cache" / "kernelstack" / "lora-triton"
    monkeypatch.setenv(tiling.TUNE_DIR_ENV, str(tmp_path / "mine"))
    assert tiling.user_table_dir() == tmp_path / "mine"


# ---- precedence ----------------------------------------------------------------------------------------


def test_user_over_shipped_over_heuristic(dirs):
    heuristic = tiling.heuristic_shrink(S, K, 3 * N, L, 4)
    assert plan() != USER and plan(2 * N) != USER2, "before any table: the heuristic"
    _ship(dirs[1], {K1: SHIPPED, K3: SHIPPED3})
    tiling.reload_tables()
    assert plan() == SHIPPED and plan(3 * N) == SHIPPED3
    _user({K1: USER, K2: USER2})
    tiling.reload_tables()
    assert plan() == USER, "the user's table wins"
    assert plan(2 * N) == USER2
    assert plan(3 * N) == SHIPPED3, "a bucket the user's table lacks comes from the shipped one"
    assert tiling.plan_shrink(S, K, 4 * N, L, 5, torch.float16, DEV) == tiling.heuristic_shrink(S, K, 4 * N, L, 4)
    assert heuristic != SHIPPED3
    assert [t.origin for t in tiling.tables_for("cpu")] == ["user", "shipped"]
    assert tiling.tuned_plan(K3, "cpu")[1].origin == "shipped"


def test_disabled_by_environment(dirs, monkeypatch):
    _ship(dirs[1], {K1: SHIPPED})
    _user({K2: USER2})
    tiling.reload_tables()
    assert plan() == SHIPPED and plan(2 * N) == USER2
    monkeypatch.setenv("LORA_TRITON_NO_TUNED", "1")
    assert plan() == SHIPPED, "the environment is read once (not on the launch path) ..."
    tiling.reload_tables()
    assert plan() == tiling.heuristic_shrink(S, K, N, L, 4), "... and again by reload_tables()"
    assert plan(2 * N) == tiling.heuristic_shrink(S, K, 2 * N, L, 4)


def test_prefill_plans_by_segment_geometry(dirs):
    """A prefill-sized batch is planned for its segments' geometry: each table's entry for "long" segments
    (a mean of at least 512 tokens) or "short" ones first, then the bucket's entry without a geometry; the
    user's table still wins over the shipped one; decode-sized batches have no geometry."""
    s, k, n, lora_slots = 4096, 72, 24, 8
    assert tiling.segment_class(s, lora_slots, 8) == "long" and tiling.segment_class(s, lora_slots, 9) == "short"
    assert tiling.segment_class(1016, lora_slots, 1) is None, "decode-sized: planned per adapter group"
    general = tiling.shrink_key(s, k, n, lora_slots)
    long_key = tiling.shrink_key(s, k, n, lora_slots, "long")
    assert long_key == general + ":seglong" and tiling.general_key(long_key) == general

    def planned(bs, kind="shrink"):
        if kind == "shrink":
            return tiling.plan_shrink(s, k, n, lora_slots, bs, torch.float16, DEV)
        return tiling.plan_expand(s, 16, 96, 64, 2, lora_slots, bs, torch.float16, DEV)

    _ship(dirs[1], {general: SHIPPED, long_key: SHIPPED3})
    tiling.reload_tables()
    assert planned(8) == SHIPPED3, "8 segments of 512 tokens: the long-segment plan"
    assert planned(32) == SHIPPED, "32 segments (a CUDA graph's padding counts): the bucket's plan"
    _user({general: USER})
    tiling.reload_tables()
    assert planned(8) == USER and planned(32) == USER, "the user's table before the shipped one, whatever the key"
    short = tiling.ExpandPlan(64, 64, 2, 4, 2)
    _user({tiling.expand_key(s, 16, 96, 64, 2, lora_slots, "short"): short})
    tiling.reload_tables()
    assert planned(32, "expand") == short
    assert planned(8, "expand") == tiling.heuristic_expand(s, 16, 64, lora_slots, 2, 4), "no entry for long"


def test_other_devices_tables_are_not_used(dirs):
    _ship(dirs[1], {K1: SHIPPED}, device="NVIDIA H200")
    _user({K1: USER}, device="NVIDIA H100 80GB HBM3")
    tiling.reload_tables()
    assert plan() == tiling.heuristic_shrink(S, K, N, L, 4)
    assert set(tiling.shipped_tables()) == {"NVIDIA H200"}


def test_read_once_until_reload(dirs):
    """The launch path never touches the file system: a table changed on disk is seen after reload_tables()."""
    path = _user({K1: USER})
    tiling.reload_tables()
    assert plan() == USER
    tiling.write_table(path, {"name": "cpu"}, {K1: USER2})
    assert plan() == USER
    tiling.reload_tables()
    assert plan() == USER2


def test_forced_plan_overrides_everything_inside_the_block(dirs):
    _user({K1: USER})
    tiling.reload_tables()
    with tiling.forced_plan(SHIPPED):
        assert plan() == SHIPPED
        assert tiling.plan_expand(S, 8, 40, 20, 2, L, 5, torch.float16, DEV) == tiling.plan_expand(
            S, 8, 40, 20, 2, L, 5, torch.float16, DEV), "a forced shrink plan leaves expands alone"
    assert plan() == USER
    with pytest.raises(TypeError, match="ShrinkPlan, an ExpandPlan or a FusedPlan"):
        with tiling.forced_plan({"block_m": 16}):
            pass


# ---- unusable files: a warning naming the file, then the next source -----------------------------------

BAD_FILES = {
    "not-json": "{ this is not json",
    "wrong-format": json.dumps({"format": "something/9", "device": {"name": "cpu"}, "plans": {}}),
    "no-device": json.dumps({"format": tiling.TABLE_FORMAT, "plans": {}}),
    "bad-key": json.dumps({"format": tiling.TABLE_FORMAT, "device": {"name": "cpu"}, "plans": {"gemm:x": {}}}),
    "bad-plan": json.dumps({"format": tiling.TABLE_FORMAT, "device": {"name": "cpu"},
                            "plans": {K1: {"block_m": 48, "block_n": 16, "n_sub": 1, "block_k": 16, "split_k": 1}}}),
    "unknown-field": json.dumps({"format": tiling.TABLE_FORMAT, "device": {"name": "cpu"},
                                 "plans": {K1: {**dataclasses.asdict(USER), "speed": "fast"}}}),
    "float-field": json.dumps({"format": tiling.TABLE_FORMAT, "device": {"name": "cpu"},
                               "plans": {K1: {**dataclasses.asdict(USER), "block_m": 16.0}}}),
    "other-device": json.dumps({"format": tiling.TABLE_FORMAT, "device": {"name": "NVIDIA H200"}, "plans": {}}),
    "int-flag": json.dumps({"format": tiling.TABLE_FORMAT, "device": {"name": "cpu"},
                            "plans": {K1: dataclasses.asdict(USER),
                                      "expand:s64:r16:n64:w64:st1:l2": {
                                          **dataclasses.asdict(tiling.ExpandPlan(16, 16, 1)), "acc_base": 1}}}),
}
REASONS = {"not-json": "not valid JSON", "wrong-format": "format is 'something/9'", "no-device": '"device"',
           "bad-key": "bad key 'gemm:x'", "bad-plan": "power of two", "unknown-field": "speed",
           "float-field": "must be an integer", "other-device": "measured on 'NVIDIA H200'",
           "int-flag": "acc_base=1 must be true/false"}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_unusable_user_table_warns_and_falls_back(dirs, kind):
    _ship(dirs[1], {K1: SHIPPED})
    path = tiling.user_table_path("cpu")
    path.parent.mkdir(parents=True)
    path.write_text(BAD_FILES[kind])
    tiling.reload_tables()
    with pytest.warns(tiling.TunedTableWarning) as record:
        got = plan()
    assert got == SHIPPED, "falls back to the shipped table"
    msg = str(record[0].message)
    assert str(path) in msg and REASONS[kind] in msg, msg
    assert "python -m lora tune" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plan() == SHIPPED, "warned once, not on every launch"


def test_unusable_shipped_table_warns_and_falls_back_to_the_heuristic(dirs):
    (dirs[1] / "cpu.json").write_text("[]")
    tiling.reload_tables()
    with pytest.warns(tiling.TunedTableWarning, match="cpu.json: format is 'list'"):
        assert plan() == tiling.heuristic_shrink(S, K, N, L, 4)


def test_read_table_errors_name_the_file(tmp_path):
    with pytest.raises(tiling.TableError, match="missing.json: cannot be read"):
        tiling.read_table(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="power of two"):
        tiling.write_table(tmp_path / "t.json", {"name": "cpu"}, {K1: {"block_m": 3, "block_n": 16, "n_sub": 1,
                                                                        "block_k": 16, "split_k": 1}})
    assert not (tmp_path / "t.json").exists(), "an invalid table is not written"


# ---- python -m lora list -------------------------------------------------------------------------------


def test_list_says_which_table_is_in_use(dirs, capsys, monkeypatch):
    lines = tiling.describe_plan_sources(torch.device("cpu"))
    assert any("user table" in ln and "none" in ln for ln in lines)
    assert "in use for every shape" in lines[-1]
    _ship(dirs[1], {K1: SHIPPED, K3: SHIPPED3})
    path = _user({K1: USER})
    tiling.reload_tables()
    text = "\n".join(tiling.describe_plan_sources(torch.device("cpu")))
    assert f"user table    {path}: 1 plans, in use" in text
    assert f"shipped table {dirs[1] / 'cpu.json'}: 2 plans, in use where the tables above have no plan" in text
    assert "heuristic     for shapes no table has" in text
    monkeypatch.setenv("LORA_TRITON_NO_TUNED", "1")
    tiling.reload_tables()
    assert "disabled" in tiling.describe_plan_sources(torch.device("cpu"))[1]
    monkeypatch.delenv("LORA_TRITON_NO_TUNED")
    tiling.reload_tables()
    assert lora_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "triton plans: no CUDA device here" in out and str(dirs[0]) in out


# ---- python -m lora tune (on the interpreter) ----------------------------------------------------------

TINY_RUN = ["--device", "cpu", "--model", "tiny", "--ranks", "8", "--regimes", "decode", "--decode-tokens", "8",
            "--ops", "shrink1", "--max-candidates", "2", "--no-progress"]


def test_tune_writes_a_table_the_backend_then_uses(dirs, capsys):
    assert lora_main(["tune", *TINY_RUN, "--budget-s", "120"]) == 0
    out = capsys.readouterr().out
    path = tiling.user_table_path("cpu")
    assert f"-> {path}" in out and "[1/1] shrink:s8:k72:n8:l8:" in out
    table = tiling.read_table(path)
    key = "shrink:s8:k72:n8:l8"
    assert list(table.plans) == [key] and table.meta["written_by"]["complete"] is True
    cases = table.meta["measured"][key]["cases"]
    assert list(cases) == ["tiny-r8-decode-8"] and cases["tiny-r8-decode-8"]["plans_timed"] == 2
    # the backend now plans this bucket from the table (the tuner re-read it)
    assert tiling.plan_shrink(8, 72, 8, 8, 8, torch.float16, DEV) == table.plans[key]
    assert tiling.tuned_plan(key, "cpu")[1].origin == "user"


def test_tune_decides_one_launch_or_two_for_decode_qkv(dirs, capsys):
    argv = [a if a != "shrink1" else "shrink3,expand_qkv,qkv" for a in TINY_RUN]
    assert lora_main(["tune", *argv, "--budget-s", "300"]) == 0
    out = capsys.readouterr().out
    table = tiling.read_table(tiling.user_table_path("cpu"))
    key = "fused:s8:k72:r8:n120:w72:st3:l8"
    assert set(table.plans) == {"shrink:s8:k72:n24:l8", "expand:s8:r8:n120:w72:st3:l8", key}, out
    assert out.index("[3/3] " + key) > 0, "decided last, against this run's primitive plans"
    chosen = table.plans[key]
    got = tiling.plan_fused(8, 72, 3, 8, 120, 72, 8, 8, torch.float16, DEV)
    assert got == (chosen if chosen.fuse else None)
    assert table.meta["measured"][key]["cases"]["tiny-r8-decode-8"]["plans_timed"] == 2


def test_tune_keeps_other_entries_and_writes_to_out(dirs, tmp_path, capsys):
    out_dir = tmp_path / "tables"
    out_dir.mkdir()
    first_run = {"command": "python -m lora tune --ops shrink3", "complete": True}
    tiling.write_table(out_dir / "cpu.json", {"name": "cpu"}, {K3: SHIPPED3},
                       {"measured": {K3: {"cases": {}}}, "written_by": first_run})
    assert lora_main(["tune", *TINY_RUN, "--budget-s", "120", "--out", str(out_dir)]) == 0
    table = tiling.read_table(out_dir / "cpu.json")
    assert set(table.plans) == {K3, "shrink:s8:k72:n8:l8"}, "buckets not in this run are kept"
    assert set(table.meta["measured"]) == {K3, "shrink:s8:k72:n8:l8"}, "... with their measurements"
    assert table.meta["earlier_runs"] == [first_run], "... and the run that wrote them"
    assert "--ops shrink1" in table.meta["written_by"]["command"]
    assert not tiling.user_table_path("cpu").exists(), "--out: the user's table is left alone"
    assert lora_main(["tune", *TINY_RUN, "--budget-s", "120", "--out", str(out_dir / "x.json"), "--fresh"]) == 0
    assert set(tiling.read_table(out_dir / "x.json").plans) == {"shrink:s8:k72:n8:l8"}


def test_tune_out_of_budget_still_writes_what_it_has(dirs, capsys):
    assert lora_main(["tune", *TINY_RUN, "--budget-s", "0.000001"]) == 0
    out = capsys.readouterr().out
    assert "budget spent, not tuned" in out and "tuned 0 of 1 buckets" in out
    table = tiling.read_table(tiling.user_table_path("cpu"))
    assert table.plans == {} and table.meta["written_by"]["complete"] is False
    assert table.meta["written_by"]["not_tuned"] == ["shrink:s8:k72:n8:l8"]


def test_tune_dry_run_lists_buckets_and_candidates(capsys):
    assert lora_main(["tune", "--dry-run", "--device", "cpu", "--ranks", "16,64", "--max-candidates", "5"]) == 0
    out = capsys.readouterr().out
    # Llama-3-8B: 7 primitives x 2 ranks x 4 buckets (tokens 64, 256, and 8192 for prefill's long segments and
    # for mixed's short ones), then one launch or two for qkv and gate_up x 2 ranks x the 2 decode buckets
    assert out.count("plans on") == 56 + 8
    assert out.index("fused:s64:k4096:r16:n6144:w4096:st3:l8") > out.index("expand:s8192:r64:n28672:w14336:st2:l8:segshort")
    assert "shrink:s8192:k4096:n16:l8:seglong: 5 plans on llama3-8b-r16-prefill-8k/shrink1\n" in out
    assert "shrink:s8192:k4096:n16:l8:segshort: 5 plans on llama3-8b-r16-mixed/shrink1\n" in out


@pytest.mark.parametrize("argv, message", [
    (["--model", "gpt-9"], "unknown --model 'gpt-9'"),
    (["--shape", "hidden=0"], "widths must be positive"),
    (["--shape", "heads=8"], "bad --shape item 'heads=8'"),
    (["--ranks", "16,x"], "--ranks must be comma-separated integers"),
    (["--regimes", "decode,train"], "--regimes: unknown train"),
    (["--ops", "qkv,shrink9"], "--ops: unknown shrink9"),
    (["--dtype", "fp32"], "tune with a 16-bit dtype"),
    (["--dtype", "bf16"], "interpreter computes bf16 dots wrongly"),
    (["--budget-s", "0"], "--budget-s must be positive"),
    (["--device", "tpu"], "--device"),
])
def test_tune_bad_arguments(argv, message, capsys):
    device = [] if "--device" in argv else ["--device", "cpu"]
    assert lora_main(["tune", *device, *argv]) == 2
    assert message in capsys.readouterr().err


def test_tune_needs_a_gpu_unless_told_cpu(capsys):
    assert lora_main(["tune"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_candidates_start_with_the_heuristic_and_fit_shared_memory():
    from lora.compare.cases import LLAMA3_8B

    cases = tune.tune_cases(LLAMA3_8B, [16, 64], 8, ["decode", "prefill", "mixed"], [64, 256], 8192)
    buckets = tune.buckets_for(cases, list(tune.PRIMITIVES))
    assert len(buckets) == 56
    for b in buckets:
        tc, op_name = b.members[0]
        comp = tc.case().composition(0)
        cands = tune.candidates_for(b, torch.device("cpu"), torch.bfloat16, 14)
        assert 2 <= len(cands) <= 14 and len(set(cands)) == len(cands)
        if b.kind == "shrink":
            n_out = int(b.key.split(":n")[1].split(":")[0])
            assert cands[0] == tiling.heuristic_shrink(comp.tokens, int(b.key.split(":k")[1].split(":")[0]), n_out, 8, 4)
            if not cands[0].group_grid:
                # prefill: the stacked width in one program (x read once), or split evenly between 2-4 column
                # groups of at least 32 columns (session 31)
                for p in cands:
                    width = p.block_n * p.n_sub
                    assert width >= n_out or (n_out % width == 0 and n_out // width in (2, 3, 4) and width >= 32), p
                # each plan that can load through tensor descriptors is followed by its twin that does (session 32)
                assert any(p.tma for p in cands), cands
                for i, p in enumerate(cands):
                    if p.tma:
                        assert i > 0 and cands[i - 1] == dataclasses.replace(p, tma=False), (i, cands)
        assert all(p.group_grid == cands[0].group_grid for p in cands), "decode and prefill layouts do not mix"


def test_prefill_and_mixed_are_tuned_apart_and_a_bucket_s_plan_seeds_both(dirs, capsys):
    """prefill-8k (8 prompts of 1k tokens) and mixed (32 segments of 1..512) share a token bucket but not a
    segment geometry: each is a bucket of its own, seeded with a table's plan for the bucket without a
    geometry; once a table has both geometries the entry without one is dropped."""
    from lora.compare.cases import LLAMA3_8B

    cases = tune.tune_cases(LLAMA3_8B, [64], 8, ["prefill", "mixed"], [64], 8192)
    keys = [b.key for b in tune.buckets_for(cases, ["shrink2"])]
    general = tiling.shrink_key(8192, 4096, 128, 8)
    assert keys == [general + ":seglong", general + ":segshort"]
    seed = tiling.ShrinkPlan(64, 32, 4, 64, 1, 4, 2)
    _ship(dirs[1], {general: seed}, device="NVIDIA H100 80GB HBM3")
    tiling.reload_tables()
    for b in tune.buckets_for(cases, ["shrink2"]):
        assert seed in tune.candidates_for(b, torch.device("cpu"), torch.bfloat16, 6)[:6], b.key
    plans, measured = {general: seed, "shrink:s64:k8:n8:l8": seed}, {general: {}, "shrink:s64:k8:n8:l8": {}}
    plans[keys[0]] = measured[keys[0]] = 1
    tune.drop_superseded(plans, measured, keys[0])
    assert general in plans and general in measured, "the short geometry still plans with it"
    plans[keys[1]] = measured[keys[1]] = 2
    tune.drop_superseded(plans, measured, keys[1])
    assert set(plans) == set(measured) == {keys[0], keys[1], "shrink:s64:k8:n8:l8"}


def test_no_descriptor_twins_where_the_device_has_no_tma(monkeypatch):
    """On a GPU without the tensor memory accelerator a descriptor plan runs as its pointer twin: the tuner
    times each tile once (a table's descriptor plan becomes its pointer twin), not twice."""
    from lora.compare.cases import LLAMA3_8B

    cases = tune.tune_cases(LLAMA3_8B, [64], 8, ["prefill"], [64], 8192)
    bucket = next(b for b in tune.buckets_for(cases, ["shrink3"]))
    with_tma = tune.candidates_for(bucket, torch.device("cpu"), torch.bfloat16, 40)
    monkeypatch.setattr(tiling, "tma_capable", lambda device: False)
    without = tune.candidates_for(bucket, torch.device("cpu"), torch.bfloat16, 40)
    assert any(p.tma for p in with_tma) and not any(p.tma for p in without)
    assert len(set(without)) == len(without) == 40
    assert without[:20] == list(dict.fromkeys(dataclasses.replace(p, tma=False) for p in with_tma))[:20]


@pytest.mark.parametrize("s, k, n_out", [(64, 4096, 16), (64, 14336, 64), (256, 4096, 192)])
def test_decode_shrink_candidates_end_with_plans_without_a_ticket(s, k, n_out):
    """The decode shrinks' candidates include plans with no split-K finish (one program per group and column
    block, a deep pipeline) and one K step per program, after the plans a default run (12) times."""
    cands = tune.shrink_candidates(s, k, n_out, 8, 132)
    assert cands[0].group_grid and cands[0].split_k > 1
    first = next(i for i, p in enumerate(cands) if p.split_k == 1 or p.num_stages >= 6)
    assert first >= 12, "a default run times the plans it timed before"
    late = cands[first:]
    assert {p.num_warps for p in late if p.split_k == 1 and p.num_stages >= 8} == {4, 8}
    assert any(p.split_k == 32 and p.block_k == 128 for p in late)
    assert all(p.group_grid and p.block_m == cands[0].block_m for p in late)
    assert len(set(cands)) == len(cands)


def test_candidates_include_the_plans_tables_have(dirs):
    """A table's plan for the bucket (this device's or another's) is timed right after the heuristic's."""
    from lora.compare.cases import TINY

    cases = tune.tune_cases(TINY, [8], 8, ["decode"], [8], 8192)
    bucket = next(b for b in tune.buckets_for(cases, ["shrink2"]))
    seed = tiling.ShrinkPlan(16, 32, 1, 16, 2, 4, 2, group_grid=True)
    _ship(dirs[1], {bucket.key: seed}, device="NVIDIA H200")
    tiling.reload_tables()
    cands = tune.candidates_for(bucket, torch.device("cpu"), torch.float16, 5)
    assert cands[1] == seed, cands
    fused = next(b for b in tune.buckets_for(cases, ["gate_up"]))
    cands = tune.candidates_for(fused, torch.device("cpu"), torch.float16, 7)
    assert [p.fuse for p in cands] == [False, True, False, False, True, True, True], \
        "two launches, one, two without PDL, two summing the partials of a 2-way split (K = 72: no 4 or 8), ..."
    assert [(p.pdl, p.partials, p.split_k) for p in cands if not p.fuse] == [(True, False, 1), (False, False, 1),
                                                                            (True, True, 2)]
    wide = tune.fused_candidates(64, 4096, 3, 16, 4096, 8, 132)
    assert [p.split_k for p in wide[3:6] if p.partials] == [2, 4, 8]


def test_tune_times_every_batch_on_the_plans_any_batch_timed(dirs, capsys, monkeypatch):
    """A bucket with two batches whose first batch saw only one compiled plan (workers still starting, as in
    the first bucket of a GPU run): the plans the second batch timed are timed on the first too, and the
    choice is made among all of them (it was made among the one plan both had timed)."""
    from lora.triton import tune

    class LateCompiler:
        pool = True  # "workers exist": what they compiled decides what is timed

        def __init__(self, workers):
            self.calls = 0

        def submit(self, *a, **k):
            pass

        def wait(self, key, tc, op_name, deadline):
            self.calls += 1
            plans = _bucket_candidates[0]
            if self.calls == 1:  # the first batch: only the heuristic's plan in time
                return {plans[0]: None, "__error__": "not finished in time"}
            return {p: None for p in plans}

        def close(self):
            pass

    _bucket_candidates = []
    real = tune.candidates_for
    monkeypatch.setattr(tune, "candidates_for", lambda *a, **k: _bucket_candidates.append(real(*a, **k)) or _bucket_candidates[-1])
    monkeypatch.setattr(tune, "_Compiler", LateCompiler)
    argv = [a if a != "8" or i != TINY_RUN.index("--decode-tokens") + 1 else "7,8" for i, a in enumerate(TINY_RUN)]
    argv = [a if a != "2" else "3" for a in argv]  # three candidates
    assert lora_main(["tune", *argv, "--budget-s", "120"]) == 0
    table = tiling.read_table(tiling.user_table_path("cpu"))
    cases = table.meta["measured"]["shrink:s8:k72:n8:l8"]["cases"]
    assert sorted(cases) == ["tiny-r8-decode-7", "tiny-r8-decode-8"], capsys.readouterr().out
    assert [c["plans_timed"] for c in cases.values()] == [3, 3]


def test_tuning_a_pairs_primitive_tunes_the_pair(dirs, capsys):
    """QKV / gate-up run their shrink and expand under this run's plans: tuning one of them re-tunes the pair
    (decode batches only; the pair's decision is made after the primitives, against their new plans)."""
    assert tune.with_pairs(["shrink3", "expand"]) == (["shrink3", "expand", "qkv"], ["qkv"])
    assert tune.with_pairs(["expand_gate_up", "shrink1"]) == (["expand_gate_up", "shrink1", "gate_up"], ["gate_up"])
    assert tune.with_pairs(["shrink1", "shrink_down", "expand"]) == (["shrink1", "shrink_down", "expand"], [])
    assert tune.with_pairs(["shrink2", "gate_up"]) == (["shrink2", "gate_up"], [])
    assert lora_main(["tune", "--model", "tiny", "--ranks", "8", "--regimes", "decode", "--decode-tokens", "8",
                      "--ops", "shrink2", "--device", "cpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "also tuning gate_up" in out
    kinds = [line.split(":")[0].strip() for line in out.splitlines() if "plans on" in line]
    assert kinds == ["shrink", "fused"], out
    assert lora_main(["tune", "--model", "tiny", "--ranks", "8", "--regimes", "prefill", "--ops", "shrink2",
                      "--device", "cpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "also tuning" not in out and "fused" not in out, "prefill has no pair to tune"
