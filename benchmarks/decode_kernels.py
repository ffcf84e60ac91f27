"""Issue 16 (decode): where a decode op's time goes, kernel by kernel, for triton and pallas tunings.

For each (case, op, backend[:tuning]) the op is checked against the float64 oracle, timed the way
``python -m lora compare`` headlines decode (one call among many in one CUDA graph), and profiled
eagerly with torch.profiler (CUPTI): every kernel an op call launches, with its device time. The
gap between the graph-batched time and the sum of kernel times is what launches and kernel
boundaries cost inside a graph.

    PYTHONPATH=. python benchmarks/decode_kernels.py --json $OUT/decode_kernels.json
    PYTHONPATH=. python benchmarks/decode_kernels.py --cases llama3-8b-r16-decode-64 --backends pallas,pallas:es4
    PYTHONPATH=. python benchmarks/decode_kernels.py --cases '' --shape 'r=64,segs=prefill:8448/1,name=dense' ...

Backends: ``triton``, ``pallas`` and ``pallas:<name>`` for a :data:`TUNINGS` entry.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import torch  # noqa: E402

import lora  # noqa: E402
from lora import testing as T  # noqa: E402
from lora.compare import cases as CS  # noqa: E402
from lora.compare import timing as TM  # noqa: E402

from pallas_tunings import TUNINGS  # noqa: E402  (benchmarks/: the script's directory)
from probe_record import copy_bandwidth, write_rows  # noqa: E402  (benchmarks/: the script's directory)
OPS = "shrink1,shrink3,shrink_down,expand,expand_qkv,expand_gate_up,qkv,gate_up"
CASES = "llama3-8b-r16-decode-64,llama3-8b-r16-decode-256,llama3-8b-r64-decode-64,llama3-8b-r64-decode-256"
DEV = torch.device("cuda")
T0 = time.perf_counter()


def kernels_of(fn, calls: int = 20) -> list[dict]:
    """The kernels one call of fn launches, in launch order (name, mean device us over ``calls``
    profiled eager calls): by position, since a backend's Mosaic kernels share one name."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    evs = [ev for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA]
    evs.sort(key=lambda ev: ev.time_range.start)
    if not evs or len(evs) % calls:  # (not one sequence per call: fall back to totals by name)
        per = collections.OrderedDict()
        for ev in evs:
            n, tot = per.get(ev.name[:90], (0, 0.0))
            per[ev.name[:90]] = (n + 1, tot + ev.device_time)
        return [{"kernel": k, "per_call": n / calls, "us": tot / n} for k, (n, tot) in per.items()]
    k = len(evs) // calls
    return [{"kernel": evs[i].name[:90], "per_call": 1,
             "us": sum(evs[c * k + i].device_time for c in range(calls)) / calls} for i in range(k)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cases", default=CASES)
    p.add_argument("--shape", action="append", default=[], metavar="SPEC",
                   help="a case from a shape spec, as `python -m lora compare --shape` (repeatable; with --cases '' alone)")
    p.add_argument("--ops", default=OPS)
    p.add_argument("--backends", default="triton,pallas")
    p.add_argument("--json")
    p.add_argument("--budget-s", type=float, default=200.0, help="start no new job after this many seconds")
    p.add_argument("--no-profile", action="store_true")
    args = p.parse_args(argv)
    from lora.pallas.tiling import Tuning

    copy = copy_bandwidth(DEV)
    budget = TM.Budget(5.0, 20.0, 5, 200)
    rows = []
    cases = (CS.select_cases(args.cases.split(",")) if args.cases else []) + [CS.parse_shape_spec(s) for s in args.shape]
    for case in cases:
        comp = case.composition(0)
        bi = T.batch_info(comp, DEV)
        backends = {}
        for oname in args.ops.split(","):
            op = CS.OPS[oname].resolve(case.shape)
            seed = CS.case_seed(0, case.name, op.name)
            sets = [T.make_inputs(op, comp, torch.bfloat16, DEV, seed + i) for i in range(8)]
            pristine = {k: v.clone() for k, v in sets[0].items()}  # (timing adds into the sets' base in place)
            ref = T.oracle(op, comp, {k: v.clone() for k, v in pristine.items()})
            for bname in args.backends.split(","):
                if time.perf_counter() - T0 > args.budget_s:
                    print(f"budget: skipped {case.name} {oname} {bname}", flush=True)
                    continue
                row = {"case": case.name, "op": oname, "backend": bname}
                try:
                    if bname not in backends:
                        kind, _, tname = bname.partition(":")
                        cls = lora.get_backend_from_name(kind)
                        backends[bname] = cls(kind, bi, tuning=Tuning(**TUNINGS[tname])) if tname else cls(kind, bi)
                    be = backends[bname]
                    chk_in = {k: v.clone() for k, v in pristine.items()}
                    out = T.call_op(be, op, chk_in)
                    chk = T.check(out, ref, "bfloat16", expect_dtype=torch.bfloat16,
                                  base=chk_in.get("base") if op.kind != "shrink" else None)
                    fns = [lambda t=t: T.call_op(be, op, t) for t in sets]
                    _, together = TM.time_cuda_graph(fns, DEV, budget, batched=True)
                    row.update(ok=chk.ok, rel_error=chk.rel_error, us=together.median_us)
                    if not args.no_profile:
                        ks = kernels_of(fns[0])
                        row["kernels"] = ks
                        row["kernel_us"] = sum(k["us"] * k["per_call"] for k in ks)
                except Exception as exc:  # noqa: BLE001
                    row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:400], where=traceback.format_exc()[-600:])
                rows.append(row)
                ks = " + ".join(f"{k['us']:.1f}" + (f"x{k['per_call']:.0f}" if k["per_call"] != 1 else "")
                                for k in row.get("kernels", []))
                print(f"[{time.perf_counter() - T0:6.1f}s] {case.name:26s} {oname:14s} {bname:14s} "
                      f"{row.get('us', float('nan')):7.1f} us  kernels {row.get('kernel_us', float('nan')):6.1f} "
                      f"= {ks}  {'ok' if row.get('ok') else 'FAIL ' + row.get('error', '')[:160]}", flush=True)
        del backends
        torch.cuda.empty_cache()
    compile_stats = None
    if "lora.pallas.interop" in sys.modules:  # kernels lowered here / read from the lowered-kernel cache
        compile_stats = sys.modules["lora.pallas.interop"].stats()
        print(f"pallas kernels: {compile_stats}", flush=True)
    if args.json:
        write_rows(args.json, copy, rows, pallas_compile=compile_stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
