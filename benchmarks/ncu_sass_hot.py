"""Where a kernel's warps wait, from Nsight Compute's per-instruction source page (SASS, CSV, gzipped).

    ncu -i REPORT --page source --csv --print-source sass | gzip > src.csv.gz
    python benchmarks/ncu_sass_hot.py src.csv.gz [--top 40] [--context 2]

Prints the totals (instructions executed per warp, stall samples by reason), then the instructions with
the most samples, each with the instructions just before it (a wait stalls on what an earlier instruction
started), so the hot spots of a kernel can be read without the Nsight GUI.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
from collections import Counter


def read_rows(path: str) -> list[dict]:
    with gzip.open(path, "rt", newline="") as f:
        lines = [ln for ln in f if not ln.startswith('"Kernel Name"')]
    return list(csv.DictReader(lines))


def num(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("src")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--context", type=int, default=2)
    args = p.parse_args(argv)
    rows = read_rows(args.src)
    if not rows:
        print(f"{args.src}: no instruction rows", file=sys.stderr)
        return 1
    samples = [num(r.get("Warp Stall Sampling (All Samples)")) for r in rows]
    total = sum(samples) or 1.0
    reasons = Counter()
    for r in rows:
        for k, v in r.items():
            if k and k.startswith("stall_") and "(Not Issued)" not in k:
                reasons[k] += num(v)
    executed = sum(num(r.get("Instructions Executed")) for r in rows)
    print(f"{len(rows)} instructions in the binary, {executed:.0f} warp-instructions executed, {total:.0f} samples")
    print("stall reasons: " + ", ".join(f"{k[6:]} {100 * v / total:.1f}%" for k, v in reasons.most_common(8)))
    order = sorted(range(len(rows)), key=lambda i: -samples[i])[: args.top]
    for i in sorted(order):
        top = max(((k[6:], num(v)) for k, v in rows[i].items() if k and k.startswith("stall_") and "(Not" not in k),
                  key=lambda kv: kv[1])
        print(f"--- {100 * samples[i] / total:5.1f}%  ({top[0]})")
        for j in range(max(0, i - args.context), i + 1):
            mark = ">" if j == i else " "
            print(f"{mark} {j:5d} x{num(rows[j].get('Instructions Executed')):>8.0f}  {rows[j]['Source'].strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
