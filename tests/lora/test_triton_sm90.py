"""The Triton kernels compiled for sm_90 (Hopper) on the CPU with this Triton's ptxas: every plan the shipped tables
(H100, H200) hold, the partials pair's two kernels, and the decode shrink plans the tuner reaches last. The interpreter
runs the kernels' semantics; this catches what only the GPU compiler sees (a construct it rejects, more shared
memory than a block may have, spills) before a GPU run does.

The kernels are compiled by ``benchmarks/compile_report.py --jobs`` in a child process without
``TRITON_INTERPRET`` (under it ``@triton.jit`` gives interpreted functions), each with the constexprs a launch
gives it; one child compiles all of them (about a second a kernel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

triton = pytest.importorskip("triton", reason="the triton extra is not installed")
if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
    pytest.skip("this Triton has no bundled ptxas to compile for sm_90", allow_module_level=True)

from lora.triton import tiling, tune  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
#: Shared memory one block may use on sm_90 (227 KB)
SM90_SMEM = 232448
SHIPPED = tiling.shipped_tables()  # device name -> table (both are Hopper GPUs)


def _key_int(key: str, field: str) -> int:
    return int(key.split(f":{field}")[1].split(":")[0])


def _table_jobs() -> dict:
    """``"device key"`` -> job, for every shrink and expand plan of every shipped table."""
    jobs = {}
    for device, table in sorted(SHIPPED.items()):
        for key, plan in sorted(table.plans.items()):
            if key.startswith("shrink:"):
                jobs[f"{device} {key}"] = {"op": "shrink", "stack": 1, "n": _key_int(key, "n"), "plan": asdict(plan)}
            elif key.startswith("expand:"):
                jobs[f"{device} {key}"] = {"op": "expand", "max_r": _key_int(key, "r"), "plan": asdict(plan)}
    return jobs


def _late_decode_plans() -> list:
    """The no-split and 32-split decode shrink plans (after those a default tune times), fitted as the tuner
    fits them; for the QKV shrink of a 64-token, rank-16 batch."""
    cands = tune.shrink_candidates(64, 4096, 48, 8, 132)
    late = [p for p in cands[12:] if p.split_k in (1, 32) or p.num_stages >= 8]
    return sorted({tiling.fit_shrink(p, 2, SM90_SMEM) for p in late}, key=str)


def _other_jobs() -> dict:
    shrink = tiling.ShrinkPlan(16, 16, 1, 128, 8, group_grid=True)
    jobs = {"partials shrink": {"op": "shrink", "stack": 3, "n": 48, "plan": asdict(shrink), "partials": True}}
    for acc_base in (False, True):
        plan = tiling.ExpandPlan(16, 64, 2, group_grid=True, acc_base=acc_base)
        jobs[f"partials expand {acc_base=}"] = {"op": "expand", "max_r": 16, "plan": asdict(plan), "x_splits": 4}
    for plan in _late_decode_plans():
        jobs[f"late {plan}"] = {"op": "shrink", "stack": 3, "n": 48, "plan": asdict(plan)}
    return jobs


@pytest.fixture(scope="module")
def compiled() -> dict:
    jobs = {**_table_jobs(), **_other_jobs()}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_report.py"), "--jobs"],
                         input=json.dumps(list(jobs.values())), capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return dict(zip(jobs, json.loads(run.stdout)))


def _fits(res: dict, what: str) -> None:
    assert "error" not in res, f"{what}: {res.get('error')}"
    assert res["smem"] <= SM90_SMEM, f"{what}: {res['smem']} bytes of shared memory"
    assert not res["local"], f"{what}: spills to local memory ({res['local']} bytes)"


@pytest.mark.parametrize("key", sorted(_table_jobs()))
def test_every_plan_of_the_shipped_tables_compiles_and_fits(compiled, key):
    assert set(SHIPPED) >= {"NVIDIA H200", "NVIDIA H100 80GB HBM3"}
    _fits(compiled[key], f"{key} {_table_jobs()[key]['plan']}")


def test_the_partials_pair_compiles(compiled):
    """The decode shrink storing its splits' sums and the expand adding them up as its dependent (PDL): the
    kernels of ``FusedPlan(fuse=False, partials=True)``, with either expand epilogue."""
    for what in ("partials shrink", "partials expand acc_base=False", "partials expand acc_base=True"):
        _fits(compiled[what], what)


def test_the_decode_shrink_plans_the_tuner_reaches_last_compile_and_fit(compiled):
    late = [k for k in compiled if k.startswith("late ")]
    assert len(late) >= 5, late
    for what in late:
        _fits(compiled[what], what)
        assert compiled[what]["cp_async"] > 0, f"{what}: the K loop is not software-pipelined"
