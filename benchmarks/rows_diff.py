"""Every (case, op) row of one backend in two ``python -m lora compare --json`` runs, side by side.

    python benchmarks/rows_diff.py BEFORE.json AFTER.json [BACKEND] > table.md

Times are copied from the files (the headline ``time_us`` of each result, never typed); rows that did not pass
in either run are marked. The last line counts the rows that got faster or slower by more than 2%.
"""

from __future__ import annotations

import json
import sys


def _rows(path: str, backend: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    return {(r["case"], r["op"]): r for r in data["results"] if r["backend"] == backend}


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    backend = argv[2] if len(argv) == 3 else "triton"
    before, after = _rows(argv[0], backend), _rows(argv[1], backend)
    print("| case | op | before us | after us | after / before |\n|---|---|---:|---:|---:|")
    faster = slower = 0
    for key in sorted(before.keys() & after.keys()):
        b, a = before[key], after[key]
        if b["status"] != "pass" or a["status"] != "pass" or not b.get("time_us") or not a.get("time_us"):
            print(f"| {key[0]} | {key[1]} | {b['status']} | {a['status']} | |")
            continue
        ratio = a["time_us"] / b["time_us"]
        faster += ratio < 0.98
        slower += ratio > 1.02
        print(f"| {key[0]} | {key[1]} | {b['time_us']:.2f} | {a['time_us']:.2f} | {ratio:.3f} |")
    print(f"\n{backend}: {len(before.keys() & after.keys())} rows in both runs; {faster} faster and {slower} slower by "
          f"more than 2%")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
