"""Markdown tables of ``python -m lora compare --json`` results (numbers copied from the JSON, never typed).

    python benchmarks/compare_report.py benchmarks/results/h100/compare_run2_partial.json > benchmarks/results/h100/compare_run2.md

Per case and op, for every backend: the check, the headline time (the JSON's ``time_method``: one call among many
in one graph; runs before session 4 headlined decode cases by one call replayed alone), its % of the measured copy bandwidth for the op's
minimum bytes, the issue's target, and the three timings behind it: eager (CUDA events around each call,
host launch cost included), graph alone (median and 20th percentile) and graph batched (device time of a call
among many). ``launch share`` = 1 - batched / alone: the part of a call replayed alone that is not the
kernels' own device time (graph launch, host scheduling).
"""

from __future__ import annotations

import json
import sys


def _t(r: dict, key: str, field: str = "median_us"):
    v = r.get("timings", {}).get(key)
    return v.get(field) if isinstance(v, dict) else None


def _f(v, spec: str = ".1f") -> str:
    return "" if v is None else format(v, spec)


def report(paths: list[str]) -> str:
    out = []
    for path in paths:
        d = json.load(open(path))
        dev = d.get("device", {})
        bw = d.get("copy_bandwidth", {}).get("gbps")
        out.append(f"## `{d.get('command', '?')}`{' (cut off: partial)' if d.get('partial') else ''}\n")
        out.append(f"{dev.get('name', '?')}, copy bandwidth {_f(bw, '.0f')} GB/s (read + write); "
                   f"versions: {json.dumps(d.get('versions', {}))}\n")
        results = d["results"]
        cases = list(dict.fromkeys(r["case"] for r in results))
        met = [r for r in results if r.get("meets_target")]
        timed = [r for r in results if r.get("target_us") is not None and r["backend"] != "torch"]
        out.append(f"{len(met)}/{len(timed)} kernel-backend calls meet their targets; "
                   f"{sum(r['status'] == 'pass' for r in results)}/{len(results)} results pass the check.\n")
        for case in cases:
            out.append(f"\n### {case}\n")
            out.append("| op | backend | check | rel err | us | timed by | % copy | target us | met | eager us "
                       "| alone us (p20) | batched us | launch share |")
            out.append("|---|---|---|---:|---:|---|---:|---:|:-:|---:|---:|---:|---:|")
            for r in results:
                if r["case"] != case:
                    continue
                alone, batched = _t(r, "cuda-graph"), _t(r, "cuda-graph-batched")
                share = (1 - batched / alone) if alone and batched else None
                frac = r.get("fraction_of_copy")
                out.append("| " + " | ".join([
                    r["op"], r["backend"], r["status"], _f(r.get("rel_error"), ".1e"), _f(r.get("time_us")),
                    {"cuda-graph": "graph alone", "cuda-graph-batched": "graph batched",
                     "cuda-events": "events"}.get(r.get("time_method"), r.get("time_method") or ""),
                    _f(None if frac is None else 100 * frac),
                    _f(r.get("target_us")),
                    "" if r.get("meets_target") is None else ("yes" if r["meets_target"] else "no"),
                    _f(_t(r, "cuda-events")),
                    "" if alone is None else f"{alone:.1f} ({_t(r, 'cuda-graph', 'p20_us'):.1f})",
                    _f(batched),
                    "" if share is None else f"{100 * share:.0f}%",
                ]) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(report(sys.argv[1:]))
