"""Issue 16: the pallas backend's rows before / after, from two ``python -m lora compare --json`` runs
with ``--backends triton,pallas`` (a partial run is fine: the rows it has are compared).

    python benchmarks/pallas_before_after.py BEFORE.json AFTER.json > table.md

Every number is read from the JSON files: pallas's headline time and % of copy bandwidth in each run,
triton's time in the AFTER run, and their ratio (the issue's targets: >= 80% of copy, <= 1.15x triton
on prefill / mixed).
"""

from __future__ import annotations

import json
import sys


def _rows(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    return {(r["case"], r["op"], r["backend"]): r for r in data["results"] if r.get("time_us")}, data


def main(argv: list[str]) -> int:
    before, _ = _rows(argv[0])
    after, meta = _rows(argv[1])
    print(f"pallas before: `{argv[0]}`; after: `{argv[1]}` ({meta.get('device', {}).get('name', '?')}, "
          f"copy {meta.get('copy_bandwidth', {}).get('gbps', 0):.0f} GB/s)\n")
    print("| case | op | pallas before us (% copy) | pallas after us (% copy) | triton after us | after / triton |")
    print("|---|---|---:|---:|---:|---:|")
    for (case, op, backend), r in after.items():
        if backend != "pallas":
            continue
        b, t = before.get((case, op, "pallas")), after.get((case, op, "triton"))
        bs = f"{b['time_us']:.1f} ({100 * b['fraction_of_copy']:.0f}%)" if b else "-"
        ts = f"{t['time_us']:.1f}" if t else "-"
        ratio = f"{r['time_us'] / t['time_us']:.2f}" if t else "-"
        print(f"| {case} | {op} | {bs} | {r['time_us']:.1f} ({100 * r['fraction_of_copy']:.0f}%) | {ts} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
