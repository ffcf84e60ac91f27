"""Benchmark and tune the "triton" LoRA backend on the GPU (issue 3's speed targets).

    python benchmarks/tune_triton.py bench --out DIR            # every Llama-3-8B case x op, + torch reference
    python benchmarks/tune_triton.py tune --out DIR [--regime prefill|decode] [--kind shrink|expand]
    python benchmarks/tune_triton.py merge DIR/tuned_*.json     # fold tuning results into lora/triton/tuned.json

Cases are ``lora.compare.cases`` (the official benchmark's): Llama-3-8B widths (K=4096, q=4096,
kv=1024, gate/up 14336, down K=14336), 8 adapters of rank 16 and 64, compositions decode-64,
decode-256, prefill-8k and mixed (32 segments of 1..512 tokens), bf16. Minimum bytes and targets
come from the same module (``min_bytes``, ``target_us``); the copy bandwidth is measured in the run.

Timing (CUDA events, median): every call is captured in CUDA graphs over several input sets whose
bytes exceed the 50 MB L2 several times, so weights are not found in L2 from the previous call.

* ``graph``: one graph per input set, an event pair around each replay: a call replayed alone from a
  graph (the decode targets: <= 6 us + min bytes at 75% for one kernel, 8 us for qkv / gate-up).
* ``batched``: all sets' calls in one graph, replay time / calls: a call among many, back to back.

Prefill/mixed targets use ``batched`` (launch gaps do not matter at these sizes); decode uses ``graph``.
Results: ``DIR/bench.json`` and ``DIR/bench.csv`` (with the command line and versions), a table last.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lora import LoRABatchInfo, get_backend_from_name  # noqa: E402
from lora.compare.cases import CASES, LLAMA3_8B, OPS, min_bytes, target_us  # noqa: E402
from lora.triton import tiling  # noqa: E402
from lora.triton.expand import lora_expand  # noqa: E402
from lora.triton.shrink import lora_shrink  # noqa: E402

DEV = "cuda"
DTYPE = torch.bfloat16
L2_BYTES = 50 * 2**20
BENCH_OPS = ["shrink1", "shrink2", "shrink3", "shrink_down", "expand", "expand_qkv", "expand_gate_up", "qkv", "gate_up"]
LLAMA_CASES = [name for name in CASES if name.startswith("llama3-8b-")]


# ---- measurement ------------------------------------------------------------------------------------


def copy_bandwidth(nbytes: int = 2 * 2**30, reps: int = 20) -> float:
    """Device-to-device copy, bytes read + written per second, in GB/s (median of ``reps``)."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=DEV).normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e-3)
    del src, dst
    return 2 * nbytes / statistics.median(times) / 1e9


def _capture(fn) -> torch.cuda.CUDAGraph:
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def time_graphs(fns, reps: int = 200) -> dict:
    """``graph``: each fn in its own graph, event pair per replay; ``batched``: all in one graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in fns:
            f()  # compile, allocate scratch outside the capture
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graphs = [_capture(f) for f in fns]
    for g in graphs:
        g.replay()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for i, (a, b) in enumerate(events):
        a.record()
        graphs[i % len(graphs)].replay()
        b.record()
    torch.cuda.synchronize()
    alone = sorted(a.elapsed_time(b) * 1e3 for a, b in events)
    rounds = max(1, 16 // len(fns))
    big = torch.cuda.CUDAGraph()
    with torch.cuda.graph(big):
        for _ in range(rounds):
            for f in fns:
                f()
    big.replay()
    torch.cuda.synchronize()
    n_batched = max(3, min(50, reps // 10))
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n_batched):
        big.replay()
    b.record()
    torch.cuda.synchronize()
    batched = a.elapsed_time(b) * 1e3 / (n_batched * rounds * len(fns))
    del graphs, big
    return {"graph_us": statistics.median(alone), "graph_p20_us": alone[len(alone) // 5],
            "graph_p80_us": alone[4 * len(alone) // 5], "batched_us": batched}


def time_eager(fn, reps: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times)


# ---- inputs -----------------------------------------------------------------------------------------


def batch_info(comp) -> LoRABatchInfo:
    return LoRABatchInfo.from_segments(comp.seg_lens, comp.weight_indices, comp.lora_ranks, comp.scalings, device=DEV)


def make_set(op, comp, seed: int) -> dict:
    """Random bf16 inputs of one call (no poison: these are for timing and a cross-check)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *shape, scale=1.0: (torch.randn(*shape, generator=g, device=DEV) * scale).to(DTYPE)  # noqa: E731
    s, L, max_r = comp.tokens, comp.num_lora, comp.max_r
    t = {}
    if op.kind in ("shrink", "fused"):
        t["x"] = r(s, op.k)
        t["a"] = r(L, op.stack * max_r, op.k, scale=op.k**-0.5)
    else:
        t["x"] = r(s, op.stack * max_r)
    if op.kind in ("expand", "fused"):
        t["b"] = r(L, op.n, max_r, scale=max_r**-0.5)
        t["base"] = r(s, op.n)
    if op.offsets:
        t["offsets"] = torch.tensor(op.offsets, dtype=torch.int32, device=DEV)
    return t


def n_sets(op, comp) -> int:
    """Input sets to rotate over: together at least three times the L2 (2..16 sets)."""
    s, L, max_r = comp.tokens, comp.num_lora, comp.max_r
    elems = 0
    if op.kind in ("shrink", "fused"):
        elems += s * op.k + L * op.stack * max_r * op.k
    else:
        elems += s * op.stack * max_r
    if op.kind in ("expand", "fused"):
        elems += L * op.n * max_r + s * op.n
    return max(2, min(16, math.ceil(3 * L2_BYTES / max(2 * elems, 1))))


def call(backend, op, t):
    """The public op (or the expand primitive for expand_qkv / expand_gate_up)."""
    if op.name.startswith("shrink"):
        return lambda: backend.run_lora_a_sgemm(t["x"], t["a"], stack_num=op.stack)
    if op.name == "expand":
        return lambda: backend.run_lora_b_sgemm(t["x"], t["b"], base_output=t["base"])
    if op.name in ("expand_qkv", "expand_gate_up"):
        return lambda: backend.expand(t["x"], t["b"], t["offsets"], op.max_slice, t["base"])
    if op.name == "qkv":
        return lambda: backend.run_qkv_lora(t["x"], t["a"], t["b"], t["offsets"], op.max_slice, base_output=t["base"])
    if op.name == "gate_up":
        return lambda: backend.run_gate_up_lora(t["x"], t["a"], t["b"], base_output=t["base"])
    raise ValueError(op.name)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30)).item()


# ---- bench ------------------------------------------------------------------------------------------


def bench(args) -> None:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = environment()
    meta["copy_gbps"] = copy = copy_bandwidth()
    print(f"{meta['device']}: copy bandwidth {copy:.0f} GB/s (read + write)", flush=True)
    rows = []
    cases = [c for c in LLAMA_CASES if any(p in c for p in args.cases)] if args.cases else LLAMA_CASES
    ops = args.ops or BENCH_OPS
    for case_name in cases:
        case = CASES[case_name]
        comp = case.composition(seed=0)
        bi = batch_info(comp)
        tri = get_backend_from_name("triton")("triton", bi)
        ref = get_backend_from_name("torch")("torch", bi)
        for op_name in ops:
            op = OPS[op_name].resolve(LLAMA3_8B)
            sets = [make_set(op, comp, seed=i) for i in range(n_sets(op, comp))]
            # correctness: the triton result against the torch reference on set 0 (fresh copies of base)
            chk = {k: (v.clone() if k == "base" else v) for k, v in sets[0].items()}
            got = call(tri, op, chk)()
            chk_ref = {k: (v.clone() if k == "base" else v) for k, v in sets[0].items()}
            want = call(ref, op, chk_ref)()
            err = rel_err(got, want)
            times = time_graphs([call(tri, op, t) for t in sets], reps=args.reps)
            torch_us = time_eager(call(ref, op, sets[0]), reps=3) if not args.no_torch else float("nan")
            nbytes = min_bytes(op, comp, itemsize=2)
            t_us = times["graph_us"] if case.decode else times["batched_us"]
            target = target_us(op, case.decode, nbytes, copy)
            gbps = nbytes / (t_us * 1e3)
            row = dict(case=case_name, op=op_name, decode=case.decode, tokens=comp.tokens, segments=comp.bs,
                       min_bytes=nbytes, us=t_us, gbps=gbps, pct_copy=100 * gbps / copy, target_us=target,
                       meets=t_us <= target, rel_err_vs_torch=err, torch_us=torch_us,
                       speedup_vs_torch=torch_us / t_us, **times, plans=plans_of(op, comp))
            rows.append(row)
            with open(out_dir / "bench.partial.json", "w") as f:
                json.dump({"meta": meta, "rows": rows}, f, indent=1)
            print(f"{case_name:28s} {op_name:15s} {t_us:9.2f} us {gbps:7.0f} GB/s {row['pct_copy']:5.1f}% "
                  f"target {target:8.2f} {'OK ' if row['meets'] else 'MISS'} err {err:.1e} "
                  f"(graph {times['graph_us']:.2f} batched {times['batched_us']:.2f} torch {torch_us:.0f})", flush=True)
            del sets, chk, chk_ref, got, want
            torch.cuda.empty_cache()
    meta["command"] = " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    with open(out_dir / "bench.json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    keys = ["case", "op", "decode", "tokens", "segments", "min_bytes", "us", "gbps", "pct_copy", "target_us", "meets",
            "graph_us", "batched_us", "torch_us", "speedup_vs_torch", "rel_err_vs_torch"]
    with open(out_dir / "bench.csv", "w", newline="") as f:
        f.write(f"# {meta['command']} | {meta['device']} | torch {meta['torch']} triton {meta['triton']} | copy {copy:.0f} GB/s\n")
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print_table(rows, copy)


def plans_of(op, comp) -> dict:
    s, L, max_r = comp.tokens, comp.num_lora, comp.max_r
    out = {}
    if op.kind in ("shrink", "fused"):
        out["shrink"] = asdict(tiling.plan_shrink(s, op.k, op.stack * max_r, L, comp.bs, DTYPE, DEV))
    if op.kind in ("expand", "fused"):
        out["expand"] = asdict(tiling.plan_expand(s, max_r, op.n, op.max_slice, op.stack, L, comp.bs, DTYPE, DEV))
    return out


def print_table(rows, copy):
    print(f"\n{'case':28s} {'op':15s} {'us':>9s} {'GB/s':>7s} {'%copy':>6s} {'target':>8s}  ok")
    for r in rows:
        print(f"{r['case']:28s} {r['op']:15s} {r['us']:9.2f} {r['gbps']:7.0f} {r['pct_copy']:6.1f} {r['target_us']:8.2f}  "
              f"{'yes' if r['meets'] else 'NO'}")
    met = sum(r["meets"] for r in rows)
    print(f"{met}/{len(rows)} meet the target (copy bandwidth {copy:.0f} GB/s)")


def environment() -> dict:
    import triton

    return {"device": torch.cuda.get_device_name(), "sms": torch.cuda.get_device_properties(0).multi_processor_count,
            "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


# ---- tune -------------------------------------------------------------------------------------------


def shrink_candidates(s, k, n_out, num_lora, sms, compact=False):
    g = math.ceil(s / num_lora)
    out = []
    if g >= tiling.PREFILL_ROWS_PER_GROUP and compact:
        h = tiling.heuristic_shrink(s, k, n_out, num_lora, sms)
        for bk, stages in ((128, 3), (64, 4), (64, 3), (32, 4)):
            for split in (1, 2):
                out.append(tiling.ShrinkPlan(h.block_m, h.block_n, h.n_sub, bk, split, h.num_warps, stages))
        n_sub = min(4, math.ceil(n_out / 64))
        for stages in (3, 4):
            out.append(tiling.ShrinkPlan(128, min(64, max(16, tiling.next_pow2(n_out))), n_sub, 64, 1, 8, stages))
    elif g >= tiling.PREFILL_ROWS_PER_GROUP:
        for bm, warps in ((128, 8), (64, 4)):
            for bn in (64, 128):
                if bn > 64 and n_out % 128:  # 128-wide sub-tiles only where they do not pad
                    continue
                bn_eff = min(bn, max(16, tiling.next_pow2(n_out)))
                n_sub = min(4, math.ceil(n_out / bn_eff))
                for bk, stages in ((32, 4), (64, 3), (64, 4), (128, 3)):
                    if (bm + n_sub * bn_eff) * bk * 2 * stages > 200_000:
                        continue
                    for split in (1, 2):
                        out.append(tiling.ShrinkPlan(bm, bn_eff, n_sub, bk, split, warps, stages))
    else:
        bm = tiling.heuristic_shrink(s, k, n_out, num_lora, sms).block_m
        for bn in (16, 32):
            if bn > max(16, tiling.next_pow2(n_out)):
                continue
            for bk in (64, 128, 256):
                for split in (4, 8, 16):
                    if split * bk * 2 > k:
                        continue
                    out.append(tiling.ShrinkPlan(bm, bn, 1, bk, split, 4, 3 if bk == 256 else 4, group_grid=True))
    return list(dict.fromkeys(out))


def expand_candidates(s, max_r, n_total, max_slice, stack, num_lora, sms, compact=False):
    g = math.ceil(s / num_lora)
    out = []
    if g >= tiling.PREFILL_ROWS_PER_GROUP and compact:
        for bm in (32, 64, 128):
            for bn in (64, 128, 256):
                if bm * bn > 128 * 128:
                    continue
                for iters in (4, 16):
                    out.append(tiling.ExpandPlan(bm, bn, iters, 4, 2))
    elif g >= tiling.PREFILL_ROWS_PER_GROUP:
        for bm in (32, 64, 128):
            for bn in (64, 128, 256):
                if bm * bn > 128 * 128:
                    continue
                for iters in (4, 8, 16):
                    out.append(tiling.ExpandPlan(bm, bn, iters, 4 if bm * bn <= 8192 else 8, 2))
        for iters in (2, 4):
            out.append(tiling.ExpandPlan(64, 128, iters, 4, 2, group_grid=True))
    else:
        bm = tiling.heuristic_expand(s, max_r, max_slice, num_lora, stack, sms).block_m
        for bn in (32, 64, 128):
            for iters in (1, 2, 4, 8):
                out.append(tiling.ExpandPlan(bm, bn, iters, 4, 2 if iters > 1 else 1, group_grid=True))
    return list(dict.fromkeys(out))


def tune_shapes(regimes, kinds, case_filter=None):
    """Distinct primitive shapes -> every (case, op) of the Llama cases that plans with that key."""
    shapes: dict[str, list[tuple[str, str]]] = {}
    for case_name in LLAMA_CASES:
        case = CASES[case_name]
        if ("decode" if case.decode else "prefill") not in regimes:
            continue
        if case_filter and not any(f in case_name for f in case_filter):
            continue
        comp = case.composition(seed=0)
        for op_name in ("shrink1", "shrink2", "shrink3", "shrink_down", "expand", "expand_qkv", "expand_gate_up"):
            op = OPS[op_name].resolve(LLAMA3_8B)
            if op.kind not in kinds:
                continue
            if op.kind == "shrink":
                key = tiling.shrink_key(comp.tokens, op.k, op.stack * comp.max_r, comp.num_lora)
            else:
                key = tiling.expand_key(comp.tokens, comp.max_r, op.n, op.max_slice, op.stack, comp.num_lora)
            shapes.setdefault(key, []).append((case_name, op_name))
    return shapes


def _precompile(job):
    """Worker: launch each plan once on tiny inputs of the same dtypes/strides to fill Triton's cache."""
    kind, shape, plans = job
    torch.cuda.set_device(0)
    for plan in plans:
        try:
            if kind == "shrink":
                k, n_out, stack = shape
                x = torch.zeros(64, k, dtype=DTYPE, device=DEV)
                a = torch.zeros(2, n_out, k, dtype=DTYPE, device=DEV)
                bi = LoRABatchInfo.from_segments([3, 60], [0, 1], [n_out // stack] * 2, [1.0, 1.0], device=DEV)
                lora_shrink(x, a, stack, bi, plan=plan)
            else:
                max_r, offsets, stack = shape
                x = torch.zeros(64, stack * max_r, dtype=DTYPE, device=DEV)
                b = torch.zeros(2, offsets[-1], max_r, dtype=DTYPE, device=DEV)
                base = torch.zeros(64, offsets[-1], dtype=DTYPE, device=DEV)
                bi = LoRABatchInfo.from_segments([3, 60], [0, 1], [max_r] * 2, [1.0, 1.0], device=DEV)
                off = torch.tensor(offsets, dtype=torch.int32, device=DEV)
                lora_expand(x, b, off, max(q - p for p, q in zip(offsets, offsets[1:])), base, bi, plan=plan)
        except Exception as exc:  # a plan that does not compile (shared memory, registers) is skipped later
            print(f"precompile {kind} {plan}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    torch.cuda.synchronize()
    return len(plans)


def tune(args) -> None:
    """Time candidate plans per shape key on every case that shares the key; keep the plan with the
    smallest mean slowdown against each case's fastest (a plan good for one lucky batch geometry and
    bad for another loses to one that is good for both), checked against the torch reference."""
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    device = torch.cuda.get_device_name()
    shapes = tune_shapes(args.regime, args.kind, args.cases)
    work = []
    for key, members in shapes.items():
        case_name, op_name = members[0]
        comp = CASES[case_name].composition(seed=0)
        op = OPS[op_name].resolve(LLAMA3_8B)
        if op.kind == "shrink":
            cands = shrink_candidates(comp.tokens, op.k, op.stack * comp.max_r, comp.num_lora, sms, args.compact)
            cands.append(tiling.heuristic_shrink(comp.tokens, op.k, op.stack * comp.max_r, comp.num_lora, sms))
            shape = (op.k, op.stack * comp.max_r, op.stack)
        else:
            cands = expand_candidates(comp.tokens, comp.max_r, op.n, op.max_slice, op.stack, comp.num_lora, sms, args.compact)
            cands.append(tiling.heuristic_expand(comp.tokens, comp.max_r, op.max_slice, comp.num_lora, op.stack, sms))
            shape = (comp.max_r, op.offsets, op.stack)
        cands = list(dict.fromkeys(cands))[: args.max_candidates]
        work.append((key, members, op, cands, shape))
    work.sort(key=lambda w: CASES[w[1][0][0]].decode)  # prefill shapes first: the budget may stop the run
    total = sum(len(w[3]) * len(w[1]) for w in work)
    print(f"tuning {len(work)} shapes, {total} timed (plan, case) pairs on {device}", flush=True)

    t0 = time.time()
    jobs = []
    for key, _, op, cands, shape in work:
        for i in range(0, len(cands), 4):
            jobs.append((op.kind, shape, cands[i : i + 4]))
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers) as pool:
        pool.map(_precompile, jobs, chunksize=1)
    print(f"precompiled in {time.time() - t0:.0f} s", flush=True)

    results, best = [], {}
    for key, members, op, cands, _ in work:
        if time.time() - t0 > args.budget_s:
            print(f"time budget of {args.budget_s:.0f} s spent: {key} and later shapes not tuned", flush=True)
            break
        per_case = []
        for case_name, op_name in members:
            case = CASES[case_name]
            comp = case.composition(seed=0)
            bi = batch_info(comp)
            sets = [make_set(op, comp, seed=i) for i in range(n_sets(op, comp))]
            offs = torch.tensor(op.offsets or [0], dtype=torch.int32, device=DEV)
            times = {}
            for plan in cands:
                if op.kind == "shrink":
                    fns = [(lambda t=t, plan=plan: lora_shrink(t["x"], t["a"], op.stack, bi, plan=plan)) for t in sets]
                else:
                    fns = [(lambda t=t, plan=plan: lora_expand(t["x"], t["b"], offs, op.max_slice, t["base"], bi, plan=plan))
                           for t in sets]
                try:
                    tm = time_graphs(fns, reps=args.reps)
                except Exception as exc:
                    print(f"  {key} {plan}: failed {type(exc).__name__}: {str(exc)[:160]}", flush=True)
                    continue
                times[plan] = (tm["graph_us"] if case.decode else tm["batched_us"], tm)
            # which plans give this case the torch reference's result (a wrong plan never wins)
            ref_backend = get_backend_from_name("torch")("torch", bi)
            t0_set = sets[0]
            want = (ref_backend.shrink(t0_set["x"], t0_set["a"], op.stack) if op.kind == "shrink"
                    else ref_backend.expand(t0_set["x"], t0_set["b"], offs, op.max_slice, t0_set["base"].clone()))
            wrong = set()
            for plan in sorted(times, key=lambda p: times[p][0])[:3]:
                got = (lora_shrink(t0_set["x"], t0_set["a"], op.stack, bi, plan=plan) if op.kind == "shrink"
                       else lora_expand(t0_set["x"], t0_set["b"], offs, op.max_slice, t0_set["base"].clone(), bi, plan=plan))
                err = rel_err(got, want)
                if not err <= 1.5e-2:
                    print(f"  {key} {case_name} {plan}: WRONG (rel err {err:.2e}), dropped", flush=True)
                    wrong.add(plan)
            nbytes = min_bytes(OPS[op_name].resolve(LLAMA3_8B), comp, itemsize=2)
            per_case.append((case_name, op_name, nbytes, times, wrong))
            del sets
            torch.cuda.empty_cache()
        ok = [p for p in cands if all(p in c[3] and p not in c[4] for c in per_case)]
        if not ok:
            continue
        fastest = [min(c[3][p][0] for p in ok) for c in per_case]
        score = {p: sum(c[3][p][0] / f for c, f in zip(per_case, fastest)) / len(per_case) for p in ok}
        chosen = min(ok, key=lambda p: score[p])
        best[key] = asdict(chosen)
        detail = "; ".join(f"{c[0][10:]} {c[3][chosen][0]:.2f} us ({c[2] / c[3][chosen][0] / 1e3:.0f} GB/s, best {f:.2f})"
                           for c, f in zip(per_case, fastest))
        print(f"{key:44s} {chosen}: {detail}", flush=True)
        results.append({"key": key, "chosen": asdict(chosen), "cases": [
            {"case": c[0], "op": c[1], "min_bytes": c[2], "wrong": [asdict(p) for p in c[4]],
             "candidates": sorted(({"us": t[0], "plan": asdict(p), **t[1]} for p, t in c[3].items()), key=lambda d: d["us"])}
            for c in per_case]})
    tag = "_".join(args.regime + args.kind)
    with open(out_dir / f"tuned_{tag}.json", "w") as f:
        json.dump({"device": device, "command": " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
                   "environment": environment(), "best": best, "results": results}, f, indent=1)
    print(f"tuned {len(best)} shapes in {time.time() - t0:.0f} s -> {out_dir / f'tuned_{tag}.json'}")


def merge(args) -> None:
    """Fold tuning results (their ``best`` plans) into lora/triton/tuned.json, keyed by device name."""
    path = tiling.TUNED_PATH
    table = json.loads(path.read_text()) if path.exists() else {}
    table.setdefault("about", "Written by benchmarks/tune_triton.py merge from tune runs; do not edit by hand.")
    devices = table.setdefault("devices", {})
    sources = table.setdefault("sources", [])
    for src in args.files:
        data = json.loads(Path(src).read_text())
        devices.setdefault(data["device"], {}).update(data["best"])
        sources.append({"file": os.path.basename(src), "command": data["command"], "device": data["device"],
                        "triton": data["environment"]["triton"], "time": data["environment"]["time"]})
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"{path}: {sum(len(v) for v in devices.values())} entries")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--out", required=True)
    b.add_argument("--cases", nargs="*", help="substrings of case names (default: every Llama-3-8B case)")
    b.add_argument("--ops", nargs="*", choices=BENCH_OPS)
    b.add_argument("--reps", type=int, default=200)
    b.add_argument("--no-torch", action="store_true", help="skip timing the torch reference")
    t = sub.add_parser("tune")
    t.add_argument("--out", required=True)
    t.add_argument("--regime", nargs="*", default=["prefill", "decode"], choices=["prefill", "decode"])
    t.add_argument("--kind", nargs="*", default=["shrink", "expand"], choices=["shrink", "expand"])
    t.add_argument("--reps", type=int, default=60)
    t.add_argument("--workers", type=int, default=12)
    t.add_argument("--max-candidates", type=int, default=40)
    t.add_argument("--budget-s", type=float, default=360.0, help="stop starting new shapes after this long")
    t.add_argument("--cases", nargs="*", help="substrings of case names (default: every Llama-3-8B case)")
    t.add_argument("--compact", action="store_true", help="prefill: a short candidate list around the heuristic")
    m = sub.add_parser("merge")
    m.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    {"bench": bench, "tune": tune, "merge": merge}[args.cmd](args)


if __name__ == "__main__":
    main()
