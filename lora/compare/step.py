"""The decode step: every LoRA op of N transformer layers on one batch, as a serving engine runs it.

``python -m lora compare --step`` runs, for each step case and backend, the four LoRA modules of each
layer -- QKV (``run_qkv_lora``), o (``run_lora_a_sgemm`` then ``run_lora_b_sgemm``), gate-up
(``run_gate_up_lora``) and down (shrink then expand) -- with one batch info set once for the step.
Default (GPU): Llama-3-8B widths, 32 layers, 64 and 256 decode tokens, 8 adapters of rank 16 / 64.

On CUDA the whole step is captured as **one CUDA graph** and its replays are timed: that is the time
a serving engine sees (per-op "alone" replays mostly time the launch). Two graphs per backend:

* ``once``: ``backend.prepare(bi)`` then the step's op calls -- the metadata derived once per step
  (inside the graph, so its cost is counted);
* ``per_call``: ``backend.prepare_per_call = True`` -- every op call derives the metadata again, what
  each call paid before metadata became per batch. Same run, same inputs: the difference is the cost
  of per-call derivation.

Reported per step and per layer, next to the step's minimum bytes (:func:`min_bytes_of` of each
module as a fused shrink+expand, summed over modules and layers) as GB/s and a fraction of the
device's copy bandwidth. The eager step (CUDA events around the Python loop) is reported too.

Before timing, one eager step is checked against a float64 evaluation of the contract for the first
and the last layer, on poisoned inputs (NaN wherever a backend must not read, and in ``base_output``
rows that must stay untouched). On the CPU (``step-tiny-decode-8``, two layers) only that
correctness path runs, plus one wall-clock step each way.
"""

from __future__ import annotations

import fnmatch
import json
import math
import random
import time
from dataclasses import dataclass, field

import torch

from lora import testing as T

from .cases import LLAMA3_8B, TINY, LayerShape, case_seed, min_bytes_of

__all__ = ["modules", "STEP_CASES", "StepCase", "run_steps", "step_min_bytes"]


@dataclass(frozen=True)
class Module:
    """One LoRA module of a layer: shrink over ``k`` columns, expand into ``offsets`` (``stack`` slices)."""

    name: str
    k: int
    offsets: tuple[int, ...]
    fused_call: bool  # run_qkv_lora / run_gate_up_lora (else run_lora_a_sgemm + run_lora_b_sgemm)

    @property
    def stack(self) -> int:
        return len(self.offsets) - 1

    @property
    def n(self) -> int:
        return self.offsets[-1]


def modules(shape: LayerShape) -> list[Module]:
    """qkv, o, gate_up, down at ``shape``'s widths."""
    h, q, kv, i = shape.hidden, shape.q, shape.kv, shape.inter
    return [
        Module("qkv", h, (0, q, q + kv, q + 2 * kv), True),
        Module("o", q, (0, h), False),
        Module("gate_up", h, (0, i, 2 * i), True),
        Module("down", i, (0, h), False),
    ]


@dataclass(frozen=True)
class StepCase:
    name: str
    description: str
    shape: LayerShape
    layers: int
    tokens: int
    max_r: int
    ranks: tuple[int, ...]

    def composition(self, seed: int):
        """Decode: ``tokens`` one-token segments, slots drawn with ``seed``."""
        from .cases import Composition

        rng = random.Random(case_seed(seed, self.name, "composition"))
        slots = tuple(rng.randrange(len(self.ranks)) for _ in range(self.tokens))
        scalings = tuple(round(rng.uniform(0.25, 2.0), 4) for _ in self.ranks)
        return Composition((1,) * self.tokens, slots, self.ranks, scalings, self.max_r, self.tokens)

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "shape": self.shape.to_dict(),
                "layers": self.layers, "tokens": self.tokens, "max_r": self.max_r, "ranks": list(self.ranks),
                "modules": [m.name for m in modules(self.shape)]}


def _llama_steps() -> list[StepCase]:
    out = []
    for r in (16, 64):
        for tokens in (64, 256):
            out.append(StepCase(f"step-llama3-8b-r{r}-decode-{tokens}",
                                f"Llama-3-8B decode step: 32 layers x (qkv, o, gate_up, down), {tokens} tokens, "
                                f"8 adapters of rank {r}", LLAMA3_8B, 32, tokens, r, (r,) * 8))
    return out


STEP_CASES: dict[str, StepCase] = {c.name: c for c in [
    *_llama_steps(),
    StepCase("step-tiny-decode-8", "tiny layer x 2 layers, 8 decode tokens, ranks 8/0/5/8 (CPU correctness)",
             TINY, 2, 8, 8, (8, 0, 5, 8)),
]}
GPU_DEFAULT_STEPS = [n for n in STEP_CASES if n.startswith("step-llama3-8b-")]
CPU_DEFAULT_STEPS = ["step-tiny-decode-8"]


def select_steps(patterns: list[str]) -> list[StepCase]:
    chosen = []
    for pat in patterns:
        hits = [n for n in STEP_CASES if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise KeyError(f"no step case matches {pat!r}; step cases: {', '.join(STEP_CASES)}")
        chosen += [h for h in hits if h not in chosen]
    return [STEP_CASES[n] for n in STEP_CASES if n in chosen]


def step_min_bytes(case: StepCase, comp, itemsize: int, layers: int | None = None) -> int:
    """Fewest bytes one step moves: each module as a fused shrink+expand (intermediate free), x layers."""
    per_layer = sum(
        min_bytes_of("fused", seg_lens=comp.seg_lens, weight_indices=comp.weight_indices, lora_ranks=comp.lora_ranks,
                     max_r=comp.max_r, tokens=comp.tokens, k=m.k, n=m.n, stack=m.stack, itemsize=itemsize)
        for m in modules(case.shape)
    )
    return per_layer * (case.layers if layers is None else layers)


# ---- inputs, the step, the check --------------------------------------------------------------------


def _layer_inputs(case: StepCase, comp, dtype, device, gen) -> dict:
    """Poisoned weights, activations and base outputs of one layer (float32 draws rounded to dtype)."""
    nan = float("nan")
    ranks = torch.tensor(comp.lora_ranks, device=device)
    idle = torch.ones(comp.tokens, dtype=torch.bool, device=device)
    for start, end, *_ in comp.work():
        idle[start:end] = False
    out = {}
    for m in modules(case.shape):
        a = torch.randn(comp.num_lora, m.stack * comp.max_r, m.k, generator=gen, device=device) / m.k**0.5
        a[torch.arange(a.shape[1], device=device)[None, :] >= m.stack * ranks[:, None]] = nan
        b = torch.randn(comp.num_lora, m.n, comp.max_r, generator=gen, device=device) / comp.max_r**0.5
        b.masked_fill_(torch.arange(comp.max_r, device=device)[None, None, :] >= ranks[:, None, None], nan)
        x = torch.randn(comp.tokens, m.k, generator=gen, device=device)
        x[idle] = nan
        base = torch.randn(comp.tokens, m.n, generator=gen, device=device)
        base[idle] = nan
        out[m.name] = {"a": a.to(dtype), "b": b.to(dtype), "x": x.to(dtype), "base": base.to(dtype),
                       "off": torch.tensor(m.offsets, dtype=torch.int32, device=device)}
    return out


def run_step(backend, case: StepCase, layers: list[dict]) -> None:
    """Every LoRA op of the step, in layer order (what the graph captures)."""
    mods = modules(case.shape)
    for layer in layers:
        for m in mods:
            t = layer[m.name]
            if m.name == "qkv":
                backend.run_qkv_lora(t["x"], t["a"], t["b"], t["off"], max(m.offsets[1], m.offsets[2] - m.offsets[1]),
                                     base_output=t["base"])
            elif m.name == "gate_up":
                backend.run_gate_up_lora(t["x"], t["a"], t["b"], base_output=t["base"])
            else:
                backend.run_lora_b_sgemm(backend.run_lora_a_sgemm(t["x"], t["a"]), t["b"], base_output=t["base"])


# ---- timing one backend -----------------------------------------------------------------------------


@dataclass
class StepResult:
    case: str
    backend: str
    dtype: str
    status: str = "error"
    detail: str = ""
    rel_error: float | None = None
    layers: int = 0
    op_calls: int = 0
    min_bytes: int = 0
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _time_graph(fn, device, budget) -> dict:
    from .timing import time_calls

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()  # warm-up off the capture stream (compiles; sizes scratch on this stream)
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize(device)
    m = time_calls([graph.replay], device, budget)
    del graph
    return m.to_dict()


def _one(name: str, cls, case: StepCase, comp, dtype_name: str, dtype, device, layers, copy_gbps, budget,
         seed: int, graphs: bool | None = None) -> StepResult:
    """Check one eager step, then time it: as CUDA graphs (``graphs``, default on CUDA), else wall clock."""
    from lora import LoRABatchInfo

    from .timing import time_calls

    res = StepResult(case.name, name, dtype_name, layers=len(layers), op_calls=6 * len(layers),
                     min_bytes=step_min_bytes(case, comp, torch.finfo(dtype).bits // 8, len(layers)))
    try:
        bi = LoRABatchInfo.from_segments(comp.seg_lens, comp.weight_indices, comp.lora_ranks, comp.scalings,
                                         device=device)
        backend = cls(name)
        backend.reserve(max_tokens=comp.tokens, max_segments=comp.bs)
        backend.set_batch_info(bi)
        checked = sorted({0, len(layers) - 1})
        starts = {(i, m.name): layers[i][m.name]["base"].clone() for i in checked for m in modules(case.shape)}
        t0 = time.perf_counter()
        run_step(backend, case, layers)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        first_us = (time.perf_counter() - t0) * 1e6
        worst, bad = 0.0, []
        for i in checked:
            for m in modules(case.shape):
                t = layers[i][m.name]
                ref = T.ref_stacked(comp, t["x"], t["a"], t["b"], m.offsets, starts[(i, m.name)])
                c = T.compare(t["base"], ref, dtype_name, comp=comp)
                worst = max(worst, c.rel_error)
                if not c.ok:
                    bad.append(f"layer {i} {m.name}: {c.detail}")
        res.rel_error = worst
        res.status = "fail" if bad else "pass"
        res.detail = "; ".join(bad) or f"layers {checked} checked, worst rel error {worst:.3g}"
        del starts
    except Exception as exc:  # noqa: BLE001  a crash is a result too
        res.detail = f"{type(exc).__name__}: {exc}"
        return res

    def record(key: str, m: dict):
        us = m["median_us"]
        m["per_layer_us"] = us / len(layers)
        if res.min_bytes and us:
            m["gbps"] = res.min_bytes / (us * 1e-6) / 1e9
            m["fraction_of_copy"] = m["gbps"] / copy_gbps if copy_gbps else None
        res.timings[key] = m

    try:
        if not (device.type == "cuda" if graphs is None else graphs):
            record("eager_once", {"method": "wall-clock", "median_us": first_us, "reps": 1})
            backend.prepare_per_call = True
            t0 = time.perf_counter()
            run_step(backend, case, layers)
            record("eager_per_call", {"method": "wall-clock", "median_us": (time.perf_counter() - t0) * 1e6, "reps": 1})
            backend.prepare_per_call = False
            return res
        if getattr(cls, "host_synchronising", False) or name == "torch":
            res.timings["graph"] = {"error": "host-synchronising reference: cannot be captured"}
            return res

        def once():
            backend.prepare(bi)
            run_step(backend, case, layers)

        record("graph_once", _time_graph(once, device, budget))
        backend.prepare_per_call = True
        try:
            record("graph_per_call", _time_graph(lambda: run_step(backend, case, layers), device, budget))
        finally:
            backend.prepare_per_call = False
        m = time_calls([once], device, budget)
        record("eager_once", m.to_dict())
        a, b = res.timings["graph_once"]["median_us"], res.timings["graph_per_call"]["median_us"]
        res.timings["per_call_over_once"] = b / a if a else None
    except Exception as exc:  # noqa: BLE001
        res.timings["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        res.status, res.detail = "error", f"checked ({res.detail}) but timing raised {res.timings['error']}"
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return res


# ---- the command ------------------------------------------------------------------------------------


def run_steps(args, device, out, *, backends: list[str], classes: dict, dtypes: dict, meta: dict) -> int:
    """``compare --step``: check and time the selected step cases; print a table; write JSON if asked.

    ``dtypes``: {name: torch dtype} to run; each is checked with ``lora.testing.TOLERANCE``.
    """
    from .timing import Budget, copy_bandwidth

    cuda = device.type == "cuda"
    cases = select_steps(args.case) if args.case else [STEP_CASES[n] for n in (GPU_DEFAULT_STEPS if cuda else CPU_DEFAULT_STEPS)]
    copy_bw = copy_bandwidth(device, quick=args.quick)
    budget = Budget(10.0, 40.0 if args.quick else 150.0, 5, 200) if cuda else Budget(0.0, 0.0, 1, 1)
    results: list[StepResult] = []
    rows = []
    t_start = time.perf_counter()
    for case in cases:
        if args.layers:
            case = StepCase(case.name, case.description, case.shape, args.layers, case.tokens, case.max_r, case.ranks)
        comp = case.composition(args.seed)
        rows.append({**case.to_dict(), "composition": comp.to_dict()})
        for dtype_name, dtype in dtypes.items():
            gen = torch.Generator(device=device).manual_seed(case_seed(args.seed, case.name, dtype_name))
            layers = [_layer_inputs(case, comp, dtype, device, gen) for _ in range(case.layers)]
            # each backend is checked from the same starting base outputs (written back in place)
            saved = {(i, k): layers[i][k]["base"].clone() for i in {0, len(layers) - 1} for k in layers[i]}
            for name in backends:
                if T.dtype_skip_reason(name, dtype_name, device):
                    continue  # e.g. bf16 on Triton's CPU interpreter, whose bf16 dots are wrong
                for (i, k), base in saved.items():
                    layers[i][k]["base"].copy_(base)
                r = _one(name, classes[name], case, comp, dtype_name, dtype, device, layers, copy_bw["gbps"], budget,
                         args.seed)
                results.append(r)
                print(_line(r), file=out)
                out.flush()
            del layers, saved
            if cuda:
                torch.cuda.empty_cache()
        if args.json:
            _write(args.json, meta, copy_bw, rows, results, partial=True)
    elapsed = time.perf_counter() - t_start
    failed = [r for r in results if r.status != "pass"]
    print(f"decode step: {len(results)} result(s), {len(failed)} not passing, {elapsed:.1f} s; copy bandwidth "
          f"{copy_bw['gbps']:.0f} GB/s", file=out)
    if args.json:
        _write(args.json, {**meta, "elapsed_s": round(elapsed, 3)}, copy_bw, rows, results, partial=False)
        print(f"wrote {args.json}", file=out)
    return 1 if failed else 0


def _line(r: StepResult) -> str:
    t = r.timings
    parts = [f"{r.case:28s} {r.backend:7s} {r.dtype:8s} {r.status:5s}"]
    for key in ("graph_once", "graph_per_call", "eager_once", "eager_per_call"):
        m = t.get(key)
        if isinstance(m, dict) and "median_us" in m:
            frac = m.get("fraction_of_copy")
            parts.append(f"{key} {m['median_us']:9.1f} us/step {m['per_layer_us']:7.2f} us/layer"
                         + (f" {100 * frac:5.1f}% copy" if frac else ""))
    if t.get("per_call_over_once"):
        parts.append(f"per-call/once {t['per_call_over_once']:.2f}x")
    if r.status != "pass" or "error" in t:
        parts.append(r.detail)
    return " | ".join(parts)


def _write(path: str, meta: dict, copy_bw: dict, cases: list, results: list[StepResult], partial: bool) -> None:
    doc = {"kind": "decode-step", "partial": partial, **meta, "copy_bandwidth": copy_bw,
           "min_bytes_model": "per module a fused shrink+expand (intermediate free): x rows with work read once, "
           "each used adapter's real-rank A and B once, base_output rows with work read and written once; "
           "summed over qkv, o, gate_up, down and the layers",
           "timings_note": "graph_once: one CUDA graph of backend.prepare(bi) + every op of the step; graph_per_call: "
           "the same step with prepare_per_call=True (metadata derived in every op call, the old cost); "
           "eager_once: the Python loop with CUDA events; per_layer_us = step / layers",
           "cases": cases, "results": [r.to_dict() for r in results]}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=str)
        f.write("\n")
