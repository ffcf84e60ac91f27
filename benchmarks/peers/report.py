"""Ours against the best peer, row by row, from a ``benchmarks/peers/run.py compare --json`` file.

Usage: python benchmarks/peers/report.py RUN.json [--ours triton]

One row per (case, op): each backend's headline time (us, one call among many in one CUDA graph; a
result that failed its float64 check is marked ``!``), the fastest peer whose result passed, and ours /
that peer (``<= 1.00``: ours at or ahead). The last line counts the rows where ours is ahead. Only rows
where ours passed and at least one peer passed are counted.
"""

from __future__ import annotations

import argparse
import json
import sys


def table(run: dict, ours: str) -> tuple[list[str], int, int]:
    backends = [b for b in run.get("backends", []) if b.get("selected")]
    names = [b["name"] for b in backends] if backends else sorted({r["backend"] for r in run["results"]})
    peers = [n for n in names if n.startswith("peer-")]
    rows: dict[tuple, dict] = {}
    for r in run["results"]:
        rows.setdefault((r["case"], r["op"], r["dtype"]), {})[r["backend"]] = r
    dev = run.get("device", {}).get("name", "?")
    copy = run.get("copy_bandwidth", {}).get("gbps")
    lines = [f"`{run.get('command', '?')}` on {dev}" + (f" (copy {copy:,.0f} GB/s)" if copy else ""), ""]
    lines.append("| case | op | " + " | ".join([ours, *peers]) + " | best peer | ours / best |")
    lines.append("|---|---|" + "---:|" * (len(peers) + 3))
    ahead = counted = 0
    for (case, op, _dtype), by in rows.items():
        cells = []
        for n in [ours, *peers]:
            r = by.get(n)
            if r is None or r.get("time_us") is None:
                cells.append("-" if r is None else r.get("status", "-"))
            else:
                cells.append(f"{r['time_us']:.1f}" + ("" if r["status"] == "pass" else " !"))
        ok = [(by[n]["time_us"], n) for n in peers if n in by and by[n].get("time_us") and by[n]["status"] == "pass"]
        mine = by.get(ours)
        best = min(ok) if ok else None
        ratio = ""
        if best and mine and mine.get("time_us") and mine["status"] == "pass":
            q = mine["time_us"] / best[0]
            ratio = f"{q:.2f}"
            counted += 1
            ahead += q <= 1.0
        lines.append(f"| {case} | {op} | " + " | ".join(cells) + f" | {best[1] if best else '-'} | {ratio} |")
    lines.append("")
    lines.append(f"{ours} at or ahead of the best peer on {ahead} of {counted} rows")
    return lines, ahead, counted


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--ours", default="triton")
    args = p.parse_args(argv)
    with open(args.run) as f:
        run = json.load(f)
    lines, _, _ = table(run, args.ours)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
