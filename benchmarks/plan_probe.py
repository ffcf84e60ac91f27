"""Triton launch plans forced one by one on compare cases: checked against the float64 oracle, then timed as
``python -m lora compare`` headlines them (device time of one call among many in one CUDA graph, inputs rotating
past L2). For A/B runs of kernel changes and plans outside the shipped table.

    PYTHONPATH=. python benchmarks/plan_probe.py --json $OUT/probe.json \
        --cases llama3-8b-r64-prefill-8k,llama3-8b-r64-mixed --op shrink3 \
        --plan table --plan 'ShrinkPlan(128, 64, 3, 64, 1, 8, 4, stream_k=1)'

``table`` is the plan the backend picks (tables, then heuristic).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch

import lora
from lora import testing as T
from lora.compare import cases as CS
from lora.compare import timing as TM
from lora.triton import tiling
from probe_record import pct_of_copy, write_rows  # benchmarks/: the script's directory

PLANS = {"ShrinkPlan": tiling.ShrinkPlan, "ExpandPlan": tiling.ExpandPlan, "FusedPlan": tiling.FusedPlan}


def parse_plan(src: str):
    """A plan expression (``ShrinkPlan(...)``, ``ExpandPlan(...)``, ``FusedPlan(...)``); ``table``: None (the
    plan the backend picks)."""
    return None if src == "table" else eval(src, dict(PLANS))  # noqa: S307


def check_call(be, op, pristine: dict, ref):
    """One call of ``op`` on a fresh copy of ``pristine``, checked against the float64 ``ref``."""
    t = {k: v.clone() for k, v in pristine.items()}
    return T.check(T.call_op(be, op, t), ref, "bfloat16", expect_dtype=torch.bfloat16, base=t.get("base"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cases", required=True)
    p.add_argument("--op", required=True, help="comma-separated ops, each timed with every plan")
    p.add_argument("--plan", action="append", required=True, help="'table' or a plan expression")
    p.add_argument("--sets", type=int, default=4)
    p.add_argument("--checks", type=int, default=1, help="check each plan this many times (races show as a few)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    copy = TM.copy_bandwidth(dev, quick=True)["gbps"]
    budget = TM.Budget(10.0, 25.0, 10, 500)
    print(f"{torch.cuda.get_device_name()}  copy {copy:.0f} GB/s", flush=True)
    rows = []
    for case in CS.select_cases(args.cases.split(",")):
        comp = case.composition(0)
        be = lora.get_backend_from_name("triton")("triton", T.batch_info(comp, dev))
        for oname in args.op.split(","):
            op = CS.OPS[oname].resolve(case.shape)
            seed = CS.case_seed(0, case.name, op.name)
            pristine = T.make_inputs(op, comp, torch.bfloat16, dev, seed)
            ref = T.oracle(op, comp, {k: v.clone() for k, v in pristine.items()})
            sets = [T.make_inputs(op, comp, torch.bfloat16, dev, seed + 1 + i) for i in range(args.sets)]
            mbytes = CS.min_bytes(op, comp, 2)
            for src in args.plan:
                plan = parse_plan(src)
                row = {"case": case.name, "op": oname, "plan": src}
                try:
                    with tiling.forced_plan(plan) if plan else contextlib.nullcontext():
                        fails, worst = 0, 0.0
                        for _ in range(args.checks):
                            chk = check_call(be, op, pristine, ref)
                            fails += not chk.ok
                            worst = max(worst, chk.rel_error)
                        fns = [lambda s=s: T.call_op(be, op, s) for s in sets]
                        _, together = TM.time_cuda_graph(fns, dev, budget, batched=True)
                    us = together.median_us
                    row.update(ok=fails == 0, checks=args.checks, failed_checks=fails, rel_error=worst, us=us,
                               pct_copy=pct_of_copy(mbytes, us, copy))
                except Exception as exc:  # noqa: BLE001
                    row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
                rows.append(row)
                print(f"{case.name:26s} {oname:9s} {row.get('us', float('nan')):7.2f} us "
                      f"{row.get('pct_copy', float('nan')):5.1f}% {'ok ' if row['ok'] else 'FAIL'} {src} "
                      f"{'' if args.checks == 1 else str(row.get('failed_checks', '?')) + '/' + str(args.checks) + ' failed '}"
                      f"{row.get('error', '')}", flush=True)
    if args.json:
        write_rows(args.json, copy, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
