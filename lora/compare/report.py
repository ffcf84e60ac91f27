"""The comparison's output: a terminal table (rich), a progress bar, JSON with every figure, a PNG chart.

rich and matplotlib come with ``pip install 'kernelstack[compare]'``; without rich the table is
plain text and the progress is a line per step, and ``--plot`` needs matplotlib.
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator

__all__ = ["Result", "Progress", "print_tables", "write_json", "write_plot", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1


@dataclass
class Result:
    """One (case, op, dtype, backend): correctness, time and bandwidth."""

    case: str
    op: str
    dtype: str
    backend: str
    status: str  # pass | fail | error | skipped | unsupported
    seed: int  # the inputs' seed (the run's --seed replays all of them)
    rel_error: float | None = None
    tolerance: float | None = None
    detail: str = ""
    min_bytes: int | None = None
    time_us: float | None = None  # the headline time: cuda-graph for decode cases when capturable
    time_method: str | None = None
    gbps: float | None = None  # min_bytes / time_us
    fraction_of_copy: float | None = None  # gbps / the run's copy bandwidth
    speedup_vs_torch: float | None = None
    target_us: float | None = None  # issue 3's speed target for this call (CUDA only)
    meets_target: bool | None = None
    timings: dict = field(default_factory=dict)  # every measurement: method -> figures

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "error")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():  # JSON has no NaN/inf
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d


# ---- progress ------------------------------------------------------------------------------------


class Progress:
    """A progress bar on stderr (rich) when stderr is a terminal; otherwise (``--no-progress``, no rich,
    output to a file) a line per result on stderr, so a long run that is cut off shows how far it got."""

    def __init__(self, total: int, enabled: bool = True, file=None):
        self.total = total
        self._bar = None
        self._task = None
        self._done = 0
        self._file = file if file is not None else sys.stderr
        if not enabled or not getattr(self._file, "isatty", lambda: False)():
            return  # a log, not a terminal: lines, not a bar
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn
        except ImportError:
            return
        console = Console(file=self._file)
        self._bar = RichProgress(
            TextColumn("[bold]compare"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.description}"), console=console, transient=True,
        )

    @contextmanager
    def running(self) -> Iterator["Progress"]:
        if self._bar is None:
            yield self
            return
        with self._bar:
            self._task = self._bar.add_task("", total=self.total)
            yield self

    def step(self, description: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=description)

    def advance(self, result: "Result | None" = None) -> None:
        self._done += 1
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task)
        elif result is not None:
            r = result
            pct = "" if r.fraction_of_copy is None else f", {100 * r.fraction_of_copy:.1f}% of copy"
            t = "" if r.time_us is None else f" {r.time_us:,.2f} us ({r.time_method}{pct})"
            print(f"[{self._done}/{self.total}] {r.case} {r.op} {r.dtype} {r.backend}: {r.status}{t}",
                  file=self._file, flush=True)


# ---- terminal table ------------------------------------------------------------------------------


def _fmt(v, spec: str, missing: str = "-") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return missing
    return format(v, spec)


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _rate(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:,.0f}" if v >= 10 else f"{v:.2g}"


def _row(r: Result) -> list[str]:
    status = {"pass": "ok", "fail": "FAIL", "error": "ERROR"}.get(r.status, r.status)
    err = _fmt(r.rel_error, ".1e", "inf" if r.status == "fail" else "-")
    method = {"cuda-graph": "graph", "cuda-graph-batched": "graph xN", "cuda-events": "events", "wall-clock": "wall"}.get(r.time_method or "", r.time_method or "")
    return [
        r.op, r.backend, r.dtype, status, err,
        _fmt(r.time_us, ",.1f"), method,
        _bytes(r.min_bytes),
        _rate(r.gbps),
        _rate(None if r.fraction_of_copy is None else 100 * r.fraction_of_copy),
        _fmt(r.speedup_vs_torch, ".1f"),
        "-" if r.target_us is None else f"{r.target_us:,.1f} {'met' if r.meets_target else 'missed'}",
    ]


_HEADERS = ["op", "backend", "dtype", "check", "rel err", "time us", "timed by", "min bytes", "GB/s", "% copy", "x torch", "target us"]


def print_tables(meta: dict, cases: list[dict], results: list[Result], file=None) -> None:
    """One table per case, then the run's headline lines."""
    file = file or sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None  # noqa: N806
    by_case: dict[str, list[Result]] = {}
    for r in results:
        by_case.setdefault(r.case, []).append(r)
    console = None
    if Console:
        console = Console(file=file)
        if not console.is_terminal:
            console.width = 150  # a log file or pipe: wide enough that no column wraps
    with_target = any(r.target_us is not None for r in results)
    headers = _HEADERS if with_target else _HEADERS[:-1]
    for case in cases:
        rows = by_case.get(case["name"], [])
        title = f"{case['name']}: {case['composition_summary']}"
        if console:
            table = Table(title=title, title_justify="left", caption=case["description"], caption_justify="left")
            for h in headers:
                table.add_column(h, justify="left" if h in ("op", "backend", "dtype", "check", "timed by") else "right")
            last_op = None
            for r in rows:
                if last_op is not None and r.op != last_op:
                    table.add_section()
                last_op = r.op
                style = "bold red" if r.failed else ("dim" if r.status in ("skipped", "unsupported") else None)
                table.add_row(*_row(r)[: len(headers)], style=style)
            console.print(table)
        else:
            print(title, file=file)
            print("  " + " | ".join(headers), file=file)
            for r in rows:
                print("  " + " | ".join(_row(r)[: len(headers)]), file=file)
    bw = meta["copy_bandwidth"]
    lines = [
        f"device: {meta['device']['name']} ({meta['device']['type']}); copy bandwidth {bw['gbps']:,.0f} GB/s "
        f"(read+write, {bw['method']})",
    ]
    if meta.get("correctness_only"):
        lines.append("CPU correctness run: times are wall clock on the CPU (Triton's interpreter) and do not describe GPU speed.")
    s = meta["summary"]
    lines.append(
        f"{s['passed']} passed, {s['failed']} wrong, {s['errors']} errors, {s['skipped']} skipped"
        f" ({s['checked']} checked against the float64 oracle)"
    )
    if with_target:
        timed = [r for r in results if r.meets_target is not None and r.backend != "torch"]
        if timed:
            lines.append(f"speed targets (issue 3) met by {sum(r.meets_target for r in timed)} of {len(timed)} "
                         "non-reference results")
    for line in lines:
        (console.print(line, highlight=False, markup=False) if console else print(line, file=file))


# ---- JSON ----------------------------------------------------------------------------------------


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str, meta: dict, cases: list[dict], results: list[Result]) -> None:
    doc = {"schema_version": SCHEMA_VERSION, **meta, "cases": cases, "results": [r.to_dict() for r in results]}
    with open(path, "w") as f:
        json.dump(_clean(doc), f, indent=1)
        f.write("\n")


# ---- chart ---------------------------------------------------------------------------------------


def write_plot(path: str, meta: dict, cases: list[dict], results: list[Result]) -> None:
    """Bars of each backend's fraction of copy bandwidth per op, one panel per case (two columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["name"] for c in cases] or ["(none)"]
    series = sorted({(r.backend, r.dtype) for r in results}, key=lambda s: (s[0] != "torch", s))
    ops = list(dict.fromkeys(r.op for r in results))
    ncols = 2 if len(names) >= 4 else 1
    nrows = math.ceil(len(names) / ncols)
    panel_w = max(6.0, 0.45 * len(ops) * max(1, len(series)) + 2)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_w * ncols, 2.7 * nrows + 1.2), squeeze=False,
                             layout="constrained")
    flat = list(axes.flat)
    width = 0.8 / max(1, len(series))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    many_dtypes = len({d for _, d in series}) > 1
    top = 0.0 if meta.get("correctness_only") else 1.0
    index = {(r.case, r.op, r.backend, r.dtype): r for r in results}
    for ax, case in zip(flat, names):
        for si, (backend, dtype) in enumerate(series):
            xs, ys, fails = [], [], []
            for oi, op in enumerate(ops):
                r = index.get((case, op, backend, dtype))
                if r is None or r.fraction_of_copy is None:
                    continue
                xs.append(oi + (si - (len(series) - 1) / 2) * width)
                ys.append(r.fraction_of_copy)
                fails.append(r.failed)
                top = max(top, r.fraction_of_copy)
            bars = ax.bar(xs, ys, width, label=f"{backend} {dtype}" if many_dtypes else backend,
                          color=colors[si % len(colors)])
            for bar, y, failed in zip(bars, ys, fails):
                if failed:
                    bar.set_hatch("xx")
                    bar.set_edgecolor("red")
                if len(series) <= 4:
                    ax.annotate(f"{100 * y:.0f}" if y >= 0.01 else f"{100 * y:.1g}", (bar.get_x() + bar.get_width() / 2, y),
                                ha="center", va="bottom", fontsize=6)
        if not meta.get("correctness_only"):
            ax.axhline(0.85, color="grey", ls="--", lw=0.8)
            ax.axhline(0.75, color="grey", ls=":", lw=0.8)
        ax.set_title(case, fontsize=9, loc="left")
        ax.set_xticks(range(len(ops)))
        ax.set_xticklabels(ops, fontsize=7)
        ax.set_ylabel("of copy BW", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in flat[len(names):]:
        ax.set_visible(False)
    for ax in flat:
        ax.set_ylim(0, (top or 1.0) * 1.1)
    flat[0].legend(fontsize=7, ncol=max(1, len(series)), loc="upper left")
    bw = meta["copy_bandwidth"]["gbps"]
    title = (f"minimum bytes / time as a fraction of copy bandwidth ({bw:,.0f} GB/s), "
             f"{meta['device']['name']}, {', '.join(meta.get('dtypes', []))}")
    if meta.get("correctness_only"):
        title += "\nCPU correctness run: times do not describe GPU speed"
    else:
        title += "\ndashed: 85% (prefill/mixed target); dotted: 75%; labels in %; hatched red: wrong result"
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
