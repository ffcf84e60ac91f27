"""One op of a compare case, run for Nsight Compute: warmed up, then called once between cudaProfilerStart/Stop.

    ncu --clock-control none --profile-from-start off --section SpeedOfLight ... \
        python benchmarks/ncu_probe.py llama3-8b-r64-prefill-8k shrink3 \
        --plan 'ShrinkPlan(block_m=64, block_n=64, n_sub=3, block_k=64, split_k=1, num_warps=4, num_stages=3, stream_k=2)'

``--plan`` forces a triton launch plan (:func:`lora.triton.tiling.forced_plan`) for the profiled call; without
it the call uses the plan the backend picks (tables, then heuristic). The result is checked against the
float64 oracle before the profiled call, so a profile of a wrong kernel is never read.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch

import lora
from lora import testing as T
from lora.compare import cases as CS
from lora.triton import tiling

from plan_probe import check_call, parse_plan  # noqa: E402  (benchmarks/: the script's directory)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("case", help="a compare case name, or a --shape spec (key=value,...) as compare takes")
    p.add_argument("op")
    p.add_argument("--backend", default="triton")
    p.add_argument("--tuning", default="", help="pallas: a pallas_tunings.TUNINGS name (the backend's Tuning)")
    p.add_argument("--plan", action="append", default=[], help="a tiling plan expression, e.g. ExpandPlan(...)")
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    case = CS.parse_shape_spec(args.case) if "=" in args.case else CS.select_cases([args.case])[0]
    comp = case.composition(0)
    op = CS.OPS[args.op].resolve(case.shape)
    plans = [parse_plan(src) for src in args.plan]
    kw = {}
    if args.tuning:
        from lora.pallas.tiling import Tuning
        from pallas_tunings import TUNINGS  # noqa: E402  (benchmarks/: the script's directory)

        kw["tuning"] = Tuning(**TUNINGS[args.tuning])
    be = lora.get_backend_from_name(args.backend)(args.backend, T.batch_info(comp, dev), **kw)
    pristine = T.make_inputs(op, comp, torch.bfloat16, dev, CS.case_seed(0, case.name, op.name))
    ref = T.oracle(op, comp, {k: v.clone() for k, v in pristine.items()})
    with tiling.forced_plan(*plans) if plans else contextlib.nullcontext():
        chk = check_call(be, op, pristine, ref)
        print(f"{case.name} {args.op} {args.plan}: check {'ok' if chk.ok else 'FAILED'} rel {chk.rel_error:.2e}",
              flush=True)
        if not chk.ok:
            return 1
        t = {k: v.clone() for k, v in pristine.items()}
        for _ in range(3):
            T.call_op(be, op, t)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        T.call_op(be, op, t)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
