"""Tuning benchmark of the "pallas" backend (issue 5): correctness + timing on the Llama-3-8B cases.

Reuses ``lora.compare`` (cases, minimum-bytes model, timing with input rotation) and ``lora.testing``
(poisoned inputs, float64 oracle), so its numbers are comparable with ``python -m lora compare``. On
top it reports, per op, the host time of one eager call (what the launcher costs) and, for decode cases, the time
of a call replayed from a CUDA graph.

    PYTHONPATH=. python benchmarks/pallas_bench.py --backends pallas,triton --json out.json
    PYTHONPATH=. python benchmarks/pallas_bench.py --cases 'llama3-8b-r64-*' --ops qkv,gate_up --quick

Prints a table last; ``--json`` writes every figure plus device and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import torch  # noqa: E402

import lora  # noqa: E402
from lora.compare import cases as CS  # noqa: E402
from lora import testing as IN  # noqa: E402
from lora.compare import timing as TM  # noqa: E402

DEFAULT_CASES = [f"llama3-8b-r{r}-{c}" for r in (16, 64) for c in ("prefill-8k", "mixed", "decode-64", "decode-256")]


def host_us_per_call(fn, n=50) -> float:
    """Host (CPU) time of one eager call: the launcher's cost when the GPU keeps up."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cases", default=",".join(DEFAULT_CASES))
    p.add_argument("--ops", default=",".join(CS.OPS))
    p.add_argument("--backends", default="pallas")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--graph", action="store_true", help="also time decode calls replayed from CUDA graphs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    device = torch.device("cuda")
    dtype = getattr(torch, args.dtype)
    budget = TM.Budget(10.0, 40.0, 5, 300) if args.quick else TM.Budget(25.0, 100.0, 10, 2000)
    copy = TM.copy_bandwidth(device, quick=args.quick)
    copy_gbps = copy["gbps"]
    print(f"device {torch.cuda.get_device_name()}  copy bandwidth {copy_gbps:.0f} GB/s", flush=True)
    cases = CS.select_cases(args.cases.split(","))
    ops = [CS.OPS[o] for o in args.ops.split(",")]
    results = []
    for case in cases:
        comp = case.composition(args.seed)
        bi = lora.LoRABatchInfo.from_segments(
            comp.seg_lens, comp.weight_indices, comp.lora_ranks, comp.scalings, device=device
        )
        for name in args.backends.split(","):
            try:
                be = lora.get_backend_from_name(name)(name, bi)
            except Exception as exc:  # noqa: BLE001
                print(f"{name}: cannot build: {exc}")
                continue
            for spec in ops:
                op = spec.resolve(case.shape)
                row = {"case": case.name, "backend": name, "op": op.name, "tokens": comp.tokens}
                try:
                    seed = CS.case_seed(args.seed, case.name, op.name)
                    one = IN.make_inputs(op, comp, dtype, device, seed)
                    nsets = TM.rotation_sets(sum(t.numel() * t.element_size() for t in one.values()), device)
                    sets = [one] + [IN.make_inputs(op, comp, dtype, device, seed + i) for i in range(1, nsets)]
                    ref = IN.oracle(op, comp, {k: v.clone() for k, v in one.items()})
                    base0 = one.get("base")
                    t0 = time.perf_counter()
                    out = IN.call_op(be, op, one)
                    torch.cuda.synchronize()
                    row["first_call_s"] = time.perf_counter() - t0
                    chk = IN.check(out, ref, args.dtype, expect_dtype=dtype, base=base0 if op.kind != "shrink" else None)
                    row.update(rel_error=chk.rel_error, ok=chk.ok, detail=chk.detail)
                    fns = [lambda t=t: IN.call_op(be, op, t) for t in sets]
                    m = TM.time_calls(fns, device, budget)
                    nbytes = CS.min_bytes(op, comp, itemsize=dtype.itemsize)
                    row.update(us=m.median_us, p20=m.p20_us, p80=m.p80_us, sets=nsets, min_bytes=nbytes)
                    row["gbps"] = nbytes / (m.median_us * 1e-6) / 1e9
                    row["pct_copy"] = 100 * row["gbps"] / copy_gbps
                    row["host_us"] = host_us_per_call(fns[0], n=20 if not case.decode else 100)
                    if args.graph and case.decode:
                        try:
                            single, together = TM.time_cuda_graph(fns, device, budget)
                            row["graph_us"] = single.median_us
                            row["graph_batched_us"] = together.median_us if together else None
                        except Exception as exc:  # noqa: BLE001
                            row["graph_error"] = f"{type(exc).__name__}: {exc}"[:200]
                    del sets, fns
                except Exception as exc:  # noqa: BLE001
                    row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:400])
                    traceback.print_exc()
                results.append(row)
                print(json.dumps(row), flush=True)
                torch.cuda.empty_cache()

    meta = {
        "device": torch.cuda.get_device_name(),
        "copy": copy,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join(sys.argv),
    }
    try:
        import jax

        meta["jax"] = jax.__version__
    except ImportError:
        pass
    try:
        from lora.pallas import interop

        meta["pallas_compile"] = interop.stats()
    except Exception:  # noqa: BLE001
        pass
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    print()
    print(f"{'case':32s} {'backend':8s} {'op':15s} {'ok':3s} {'us':>9s} {'GB/s':>7s} {'%copy':>6s} {'host_us':>8s} {'graph_us':>8s}")
    for r in results:
        print(
            f"{r['case']:32s} {r['backend']:8s} {r['op']:15s} {'Y' if r.get('ok') else 'N':3s} "
            f"{r.get('us', float('nan')):9.1f} {r.get('gbps', float('nan')):7.0f} {r.get('pct_copy', float('nan')):6.1f} "
            f"{r.get('host_us', float('nan')):8.1f} {r.get('graph_us') or float('nan'):8.1f}"
            + (f"  ERR {r['error'][:80]}" if "error" in r else "")
            + (f"  {r['detail']}" if not r.get("ok") and "detail" in r else "")
        )
    return 0 if all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
