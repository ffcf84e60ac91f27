"""Issue 17's speed targets, checked on a ``python -m lora compare`` JSON (numbers read from the JSON, never typed).

    python benchmarks/issue17_targets.py benchmarks/results/h200/s9c5_compare.json
    python benchmarks/issue17_targets.py AFTER.json --before BEFORE.json [--backend triton]

The issue's targets, as it states them (the compare's own "target us" column is issue 3's, a looser one):

* prefill / mixed: every op at >= 85% of the measured copy bandwidth for its minimum bytes;
* decode: every op's device time inside a graph (the compare's ``cuda-graph-batched`` headline)
  <= 2 us + minimum bytes / (0.8 x copy bandwidth).

Prints a markdown table (one row per case and op, with the before time when given) and the counts met.
"""

from __future__ import annotations

import argparse
import json


def bound_us(row: dict, copy_gbps: float, decode: bool) -> float:
    per_us = copy_gbps * 1e3  # bytes per microsecond
    return 2.0 + row["min_bytes"] / (0.8 * per_us) if decode else row["min_bytes"] / (0.85 * per_us)


def rows_of(path: str, backend: str) -> tuple[dict, dict, float]:
    data = json.load(open(path))
    decode = {c["name"]: bool(c["decode"]) for c in data["cases"]}
    rows = {(r["case"], r["op"]): r for r in data["results"] if r["backend"] == backend and r.get("time_us")}
    return rows, decode, data["copy_bandwidth"]["gbps"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("after", help="compare JSON")
    p.add_argument("--before", help="an earlier compare JSON: its times in a column")
    p.add_argument("--backend", default="triton")
    args = p.parse_args(argv)
    rows, decode, gbps = rows_of(args.after, args.backend)
    before = rows_of(args.before, args.backend)[0] if args.before else {}
    print(f"`{args.after}` ({args.backend}; copy bandwidth {gbps:,.0f} GB/s)" +
          (f", before: `{args.before}`" if args.before else "") + "\n")
    print("| case | op | " + ("before us | " if before else "") + "us | issue 17 bound us | % copy | met |")
    print("|---|---|" + ("---:|" if before else "") + "---:|---:|---:|:---:|")
    met = {True: [0, 0], False: [0, 0]}
    for (case, op), r in rows.items():
        dec = decode[case]
        b = bound_us(r, gbps, dec)
        ok = r["time_us"] <= b
        met[dec][0] += ok
        met[dec][1] += 1
        prev = before.get((case, op))
        cells = [case.replace("llama3-8b-", ""), op]
        if before:
            cells.append(f"{prev['time_us']:.2f}" if prev else "")
        cells += [f"{r['time_us']:.2f}", f"{b:.2f}", f"{100 * r['fraction_of_copy']:.0f}", "yes" if ok else "no"]
        print("| " + " | ".join(cells) + " |")
    print(f"\nprefill / mixed rows at >= 85% of copy: {met[False][0]} of {met[False][1]}; "
          f"decode rows within 2 us + min bytes at 80% of copy: {met[True][0]} of {met[True][1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
