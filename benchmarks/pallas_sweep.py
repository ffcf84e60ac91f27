"""Issue 16: time the pallas backend under kernel-configuration overrides (``lora.pallas.tiling.Tuning``).

Each (case, op, tuning) is checked against the float64 oracle, then timed the way ``python -m lora
compare`` times prefill ops: one call among many in one CUDA graph, inputs rotating past L2. The
defaults and triton are timed in the same run, so the table compares like with like.

    PYTHONPATH=. python benchmarks/pallas_sweep.py --json $OUT/pallas_sweep.json
    PYTHONPATH=. python benchmarks/pallas_sweep.py --cases 'llama3-8b-r16-prefill-8k' --tunings bk128s6

Prints one line per timing (flushed, so a run cut short keeps what it measured) and a summary last.
"""

from __future__ import annotations

import argparse
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
from probe_record import copy_bandwidth, pct_of_copy, write_rows  # noqa: E402  (benchmarks/: the script's directory)

#: name -> (Tuning keyword arguments, the ops it applies to)
SHRINK_OPS = ("shrink1", "shrink3", "shrink_down")
EXPAND_OPS = ("expand", "expand_gate_up")
SWEEP = {
    "default": ({}, SHRINK_OPS + EXPAND_OPS + ("qkv", "gate_up")),
    "bk128": (dict(shrink_block_k=128), SHRINK_OPS),
    "bk128s6": (dict(shrink_block_k=128, shrink_stages=6), SHRINK_OPS),
    "bk128s8": (dict(shrink_block_k=128, shrink_stages=8), SHRINK_OPS),
    "bk64s8": (dict(shrink_block_k=64, shrink_stages=8), SHRINK_OPS),
    "ks2bk128s4": (dict(shrink_ksplit=2, shrink_block_k=128, shrink_stages=4), SHRINK_OPS),
    "ks4bk128s4": (dict(shrink_ksplit=4, shrink_block_k=128, shrink_stages=4), SHRINK_OPS),
    "ks2bk64s6": (dict(shrink_ksplit=2, shrink_block_k=64, shrink_stages=6), SHRINK_OPS),
    "reduceAdd": (dict(expand_reduce_add=True), EXPAND_OPS),
    "bn256": (dict(expand_block_n=256, expand_stages=1), EXPAND_OPS),
    "bn64": (dict(expand_block_n=64, expand_stages=1), EXPAND_OPS),
    "es2": (dict(expand_stages=2), EXPAND_OPS),
    "reduceAddBn256": (dict(expand_reduce_add=True, expand_block_n=256, expand_stages=1), EXPAND_OPS),
    # session 5: the persistent expand (default for prefill) against one CTA per tile, and its knobs
    "grid": (dict(expand_persistent=False), EXPAND_OPS + ("qkv", "gate_up")),
    "ss2": (dict(expand_stream_stages=2), EXPAND_OPS),
    "ss3": (dict(expand_stream_stages=3), EXPAND_OPS),
    "ss6": (dict(expand_stream_stages=6), EXPAND_OPS),
    "pBn256": (dict(expand_block_n=256), EXPAND_OPS),
    "pBn64": (dict(expand_block_n=64), EXPAND_OPS),
}
S5_EXPAND = "default,grid,ss2,ss3,ss6,pBn256,pBn64"  # (call 1 also ran noSwizzle, an option since removed)
DEFAULT_CASES = "llama3-8b-r16-prefill-8k,llama3-8b-r64-prefill-8k"
DEV = torch.device("cuda")
T0 = time.perf_counter()


def time_one(backend, op, comp, case, budget):
    seed = CS.case_seed(0, case.name, op.name)
    one = T.make_inputs(op, comp, torch.bfloat16, DEV, seed)
    nsets = min(TM.rotation_sets(sum(t.numel() * t.element_size() for t in one.values()), DEV), 24)
    sets = [one] + [T.make_inputs(op, comp, torch.bfloat16, DEV, seed + i) for i in range(1, nsets)]
    ref = T.oracle(op, comp, {k: v.clone() for k, v in one.items()})
    base0 = one.get("base")
    out = T.call_op(backend, op, one)
    chk = T.check(out, ref, "bfloat16", expect_dtype=torch.bfloat16, base=base0 if op.kind != "shrink" else None)
    fns = [lambda t=t: T.call_op(backend, op, t) for t in sets]
    _, together = TM.time_cuda_graph(fns, DEV, budget, batched=True)
    nbytes = CS.min_bytes(op, comp, itemsize=2)
    return chk, together.median_us, nbytes


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cases", default=DEFAULT_CASES)
    p.add_argument("--tunings", default=",".join(SWEEP), help=f"names of SWEEP (session 5's expand sweep: {S5_EXPAND})")
    p.add_argument("--json")
    p.add_argument("--budget-s", type=float, default=240.0, help="start no new timing after this many seconds")
    args = p.parse_args(argv)
    from lora.pallas.tiling import Tuning

    copy = copy_bandwidth(DEV)
    budget = TM.Budget(5.0, 25.0, 5, 200)
    rows = []
    for case in CS.select_cases(args.cases.split(",")):
        comp = case.composition(0)
        bi = lora.LoRABatchInfo.from_segments(comp.seg_lens, comp.weight_indices, comp.lora_ranks, comp.scalings,
                                              device=DEV)
        backends = {"triton": lora.get_backend_from_name("triton")("triton", bi)}
        jobs = [("triton", "default", o) for o in SWEEP["default"][1]]
        for tname in args.tunings.split(","):
            kw, ops = SWEEP[tname]
            jobs += [("pallas", tname, o) for o in ops]
        for bname, tname, oname in jobs:
            if time.perf_counter() - T0 > args.budget_s:
                print(f"budget: skipped {case.name} {bname} {tname} {oname}", flush=True)
                continue
            row = {"case": case.name, "backend": bname, "tuning": tname, "op": oname}
            try:
                key = (bname, tname)
                if key not in backends:
                    backends[key] = lora.get_backend_from_name("pallas")("pallas", bi, tuning=Tuning(**SWEEP[tname][0]))
                be = backends[key] if bname == "pallas" else backends["triton"]
                op = CS.OPS[oname].resolve(case.shape)
                chk, us, nbytes = time_one(be, op, comp, case, budget)
                row.update(ok=chk.ok, rel_error=chk.rel_error, us=us, pct_copy=pct_of_copy(nbytes, us, copy))
            except Exception as exc:  # noqa: BLE001
                row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:400], where=traceback.format_exc()[-600:])
            rows.append(row)
            print(f"[{time.perf_counter() - T0:6.1f}s] {case.name:26s} {bname:6s} {tname:14s} {oname:14s} "
                  f"{row.get('us', float('nan')):8.1f} us {row.get('pct_copy', float('nan')):5.1f}% "
                  f"{'ok' if row.get('ok') else 'FAIL ' + row.get('error', '')[:120]}", flush=True)
            torch.cuda.empty_cache()
    if args.json:
        write_rows(args.json, copy, rows)
    print("\nbest pallas tuning per (case, op):")
    best = {}
    for r in rows:
        if r["backend"] == "pallas" and r.get("ok"):
            k = (r["case"], r["op"])
            if k not in best or r["us"] < best[k]["us"]:
                best[k] = r
    tri = {(r["case"], r["op"]): r for r in rows if r["backend"] == "triton" and r.get("ok")}
    dflt = {(r["case"], r["op"]): r for r in rows if r["backend"] == "pallas" and r["tuning"] == "default" and r.get("ok")}
    for k, r in sorted(best.items()):
        t, d = tri.get(k, {}), dflt.get(k, {})
        print(f"{k[0]:26s} {k[1]:14s} best {r['tuning']:14s} {r['us']:8.1f} us {r['pct_copy']:5.1f}%  "
              f"default {d.get('us', float('nan')):8.1f}  triton {t.get('us', float('nan')):8.1f} ({t.get('pct_copy', float('nan')):5.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
