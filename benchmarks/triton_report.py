"""Markdown table of a bench result of the removed ``benchmarks/tune_triton.py`` (its JSON stays in results/; numbers copied from the JSON, never typed).

    python benchmarks/triton_report.py benchmarks/results/h100/final_bench.json > benchmarks/results/h100/final_bench.md
    python benchmarks/triton_report.py --summary benchmarks/results/h100/final_bench.json > benchmarks/results/h100/final_summary.md
"""

from __future__ import annotations

import json
import sys


def summary(path: str) -> None:
    """Compact: prefill/mixed as % of copy bandwidth, decode as us (target us)."""
    data = json.load(open(path))
    rows = data["rows"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    ops = list(dict.fromkeys(r["op"] for r in rows))
    cell = {(r["case"], r["op"]): r for r in rows}
    print("| op | " + " | ".join(c.replace("llama3-8b-", "") for c in cases) + " |")
    print("|---|" + "---:|" * len(cases))
    for op in ops:
        out = []
        for c in cases:
            r = cell.get((c, op))
            if r is None:
                out.append("")
            elif r["decode"]:
                out.append(f"{r['us']:.1f} ({r['target_us']:.1f}){'' if r['meets'] else ' x'}")
            else:
                out.append(f"{r['pct_copy']:.0f}%{'' if r['meets'] else ' x'}")
        print(f"| {op} | " + " | ".join(out) + " |")
    print("\nprefill/mixed: % of copy bandwidth for the minimum bytes (target 85%); decode: us replayed alone "
          "from a CUDA graph (target in brackets); x = misses.")


def main(path: str) -> None:
    data = json.load(open(path))
    meta, rows = data["meta"], data["rows"]
    print(f"# `{meta['command']}`\n")
    print(f"{meta['device']} ({meta['sms']} SMs), torch {meta['torch']}, triton {meta['triton']}, "
          f"Python {meta['python']}, {meta['time']}; measured copy bandwidth {meta['copy_gbps']:.0f} GB/s "
          "(device-to-device copy, bytes read + written). bf16, Llama-3-8B widths, 8 adapters.\n")
    print("Time: decode = one call replayed alone from a CUDA graph (median of event pairs); prefill/mixed = "
          "per call among 16 back to back in one graph. Min bytes and targets: `lora.compare.cases`.\n")
    print("| case | op | tokens | min MB | us | GB/s | % copy | target us | meets | graph-alone us | batched us | torch us | err vs torch |")
    print("|---|---|---:|---:|---:|---:|---:|---:|:-:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case'].replace('llama3-8b-', '')} | {r['op']} | {r['tokens']} | {r['min_bytes'] / 1e6:.1f} | "
              f"{r['us']:.2f} | {r['gbps']:.0f} | {r['pct_copy']:.1f} | {r['target_us']:.2f} | "
              f"{'yes' if r['meets'] else 'no'} | {r['graph_us']:.2f} | {r['batched_us']:.2f} | {r['torch_us']:.0f} | "
              f"{r['rel_err_vs_torch']:.1e} |")
    met = sum(r["meets"] for r in rows)
    print(f"\n{met}/{len(rows)} calls meet their target.")


if __name__ == "__main__":
    if sys.argv[1] == "--summary":
        summary(sys.argv[2])
    else:
        main(sys.argv[1])
