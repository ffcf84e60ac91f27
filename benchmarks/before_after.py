"""Before / after table of issue 17's rows from two ``python -m lora compare --json`` runs of the triton backend.

    python benchmarks/before_after.py BEFORE.json AFTER.json > table.md

Times are copied from the JSON files (never typed): for each row the headline (the JSON's ``time_method``; runs
before session 4 headlined decode by one call replayed alone from a CUDA graph) and the device time of one call among
many in one graph (``batched``). The "issue" column quotes the issue's table (ours then / best peer, us,
measured by the issue's author with the peers' Dec-2025 kernels, one call inside one CUDA graph); it is the
reference the rows are judged against, not a measurement of these runs.
"""

from __future__ import annotations

import json
import sys

# (case, op, what the issue calls it, ours then, best peer): issue 17's table, quoted
ROWS = [
    ("llama3-8b-r16-decode-64", "expand", "expand (r -> 4096, fused add)", 4.6, 4.1),
    ("llama3-8b-r16-decode-64", "expand_qkv", "qkv expand (3 slices)", 6.7, 6.0),
    ("llama3-8b-r16-decode-64", "expand_gate_up", "gate_up expand (2 x 14336)", 16.9, 10.8),
    ("llama3-8b-r16-decode-64", "gate_up", "gate_up (shrink + expand)", 23.5, 22.7),
    ("llama3-8b-r16-prefill-8k", "shrink1", "shrink (4096 -> 16)", 23.0, 22.3),
    ("llama3-8b-r16-mixed", "shrink1", "shrink", 23.3, 22.3),
]


def _load(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    out = {}
    for r in data["results"]:
        if r.get("backend") == "triton":
            batched = (r.get("timings") or {}).get("cuda-graph-batched") or {}
            out[(r["case"], r["op"])] = (r.get("time_us"), batched.get("median_us"), r.get("status"))
    return out


def _f(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    before, after = _load(argv[0]), _load(argv[1])
    print(f"before: `{argv[0]}`, after: `{argv[1]}` (us; headline / batched)\n")
    print("| case | op | issue: ours then / best peer | before | after | after batched <= peer |")
    print("|---|---|---:|---:|---:|:---:|")
    for case, op, label, then, peer in ROWS:
        b = before.get((case, op), (None, None, "missing"))
        a = after.get((case, op), (None, None, "missing"))
        ok = "-" if a[1] is None else ("yes" if a[1] <= peer else "no")  # the figures: calls inside one graph
        print(f"| {case.removeprefix('llama3-8b-')} | {op} ({label}) | {then} / {peer} | {_f(b[0])} / {_f(b[1])} "
              f"| {_f(a[0])} / {_f(a[1])} | {ok} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
