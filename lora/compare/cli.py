"""``python -m lora compare`` (also ``lora-compare``) and ``python -m lora list``.

Checks every selected backend against a float64 evaluation of the LoRA contract on poisoned inputs,
times it, and reports achieved bandwidth as a fraction of the device's measured copy bandwidth::

    python -m lora compare                                  # the default cases for this machine
    python -m lora compare --case 'llama3-8b-r64-*' --backends torch,triton --json out.json --plot out.png
    python -m lora compare --shape hidden=4096,r=64,segs=prefill:8192/8 --dtype bf16
    python -m lora compare --step --backends triton,pallas  # the decode step: 32 layers as one CUDA graph
    python -m lora list                                     # backends (and why not), cases, ops, plan tables

Exit status: 0 when every result is right, 1 when any backend gives a wrong result or raises
(each printed with its seed and a command that replays it), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import sys
import time
import traceback

__all__ = ["main"]

_PROG = "python -m lora"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{_PROG} compare",
        description="Check LoRA backends against a float64 oracle on poisoned inputs, time them, report GB/s "
        "as a fraction of the device's copy bandwidth. `python -m lora list` shows backends, cases and ops.",
    )
    p.add_argument("--backends", help="comma-separated backend names (default: every backend that can run here)")
    p.add_argument("--case", action="append", default=[], metavar="NAME",
                   help="a named case or shell glob, repeatable (default: the GPU or CPU default set)")
    p.add_argument("--shape", action="append", default=[], metavar="SPEC",
                   help="a custom case: key=value,... with keys hidden (k), q, kv, inter, r, ranks (a+b+..), adapters, "
                   "segs (decode:N | prefill:TOTAL/SEGS | mixed:SEGS/MAXLEN | lens:A+B+..), name; repeatable")
    p.add_argument("--ops", help="comma-separated ops (default: all on CUDA; on the CPU all but the expand_* "
                   "primitives): " + ", ".join(_op_names()))
    p.add_argument("--dtype", help="comma-separated: bfloat16/bf16, float16/fp16, float32/fp32 "
                   "(default: bf16 on CUDA; fp16,fp32 on the CPU, where Triton's interpreter gets bf16 dots wrong)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="base seed of compositions and inputs (default 0)")
    p.add_argument("--json", metavar="PATH", help="write every figure, the device and library versions as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG chart of each backend's fraction of copy bandwidth")
    p.add_argument("--quick", action="store_true", help="shorter timing (fewer repetitions, smaller copy probe)")
    p.add_argument("--step", action="store_true",
                   help="run the decode-step cases instead (every LoRA op of N layers as one CUDA graph; --case picks "
                   "among step cases: " + ", ".join(_step_names()) + ")")
    p.add_argument("--layers", type=int, metavar="N", help="layers of a --step case (default: the case's, 32 for Llama)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _step_names() -> list[str]:
    from .step import STEP_CASES

    return list(STEP_CASES)


def _op_names() -> list[str]:
    from .cases import OPS

    return list(OPS)


# ---- list ----------------------------------------------------------------------------------------


def _list() -> int:
    from lora import available_backends

    from .cases import CASES, CPU_DEFAULT_CASES, GPU_DEFAULT_CASES, OPS

    print("backends:")
    for s in available_backends():
        state = "available" if s.available else f"unavailable: {s.reason}"
        origin = "" if s.origin == "kernelstack" else f"  [from {s.origin}]"
        print(f"  {s.name:8s} {state}{'  -- ' + s.description if s.description else ''}{origin}")
    print("cases (* = GPU default, + = CPU default):")
    for name, case in CASES.items():
        mark = "*" if name in GPU_DEFAULT_CASES else ("+" if name in CPU_DEFAULT_CASES else " ")
        print(f"  {mark} {name:26s} {case.description}")
    print("ops:")
    for op in OPS.values():
        print(f"  {op.name:12s} {op.call:36s} {op.doc}")
    from .step import CPU_DEFAULT_STEPS, GPU_DEFAULT_STEPS, STEP_CASES

    print("step cases (compare --step; * = GPU default, + = CPU default):")
    for name, case in STEP_CASES.items():
        mark = "*" if name in GPU_DEFAULT_STEPS else ("+" if name in CPU_DEFAULT_STEPS else " ")
        print(f"  {mark} {name:28s} {case.description}")
    if any(s.name == "triton" for s in available_backends()):
        import torch

        from lora.triton import tiling  # plain Python + torch: does not import triton

        for line in tiling.describe_plan_sources(torch.device("cuda") if torch.cuda.is_available() else None):
            print(line)
    return 0


# ---- compare -------------------------------------------------------------------------------------


class _UsageError(Exception):
    pass


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("kernelstack", "torch", "triton", "jax", "jaxlib", "numpy", "rich", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    import torch

    out["torch_cuda"] = torch.version.cuda
    return out


def _device_info(device) -> dict:
    import torch

    from .timing import l2_bytes

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "index": device.index if device.index is not None else torch.cuda.current_device(),
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "memory_bytes": props.total_memory,
            "l2_bytes": l2_bytes(device),
        }
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"type": "cpu", "name": name, "cores": os.cpu_count(), "threads": torch.get_num_threads()}


def _resolve_device(spec: str | None):
    import torch

    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise _UsageError(f"bad --device {spec!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _UsageError(f"--device {spec}: CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise _UsageError(f"--device must be cpu or cuda[:N], got {spec!r}")
    return device


def _select_backends(spec: str | None, out) -> tuple[list[str], list[dict]]:
    """(names to run, registry rows for the JSON); prints why each unselected-but-known one cannot run."""
    from lora import available_backends

    statuses = available_backends()
    known = {s.name: s for s in statuses}
    if spec:
        wanted = [n.strip() for n in spec.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise _UsageError(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(known)}")
    else:
        wanted = [s.name for s in statuses]
    chosen = []
    for name in wanted:
        s = known[name]
        if s.available:
            chosen.append(name)
        else:
            print(f"backend {name}: cannot run here: {s.reason}", file=out)
    # the reference first, so the others can be compared with its time
    chosen.sort(key=lambda n: (n != "torch", wanted.index(n)))
    rows = [
        {"name": s.name, "available": s.available, "reason": s.reason, "description": s.description, "origin": s.origin,
         "selected": s.name in chosen}
        for s in statuses
    ]
    return chosen, rows


def _skip_reason(backend: str, dtype: str, device) -> str | None:
    from lora.testing import dtype_skip_reason

    return dtype_skip_reason(backend, dtype, device)


def _is_host_syncing(cls) -> bool:
    from lora.torch_backend import TorchLoRABackend

    return issubclass(cls, TorchLoRABackend)


def _replay_command(case, args, backend: str, dtype: str, op: str, is_shape: str | None) -> str:
    parts = ["--shape", is_shape] if is_shape else ["--case", case.name]
    parts += ["--ops", op, "--dtype", dtype, "--backends", backend, "--seed", str(args.seed)]
    if args.device:
        parts += ["--device", args.device]
    return f"{_PROG} compare " + " ".join(shlex.quote(p) for p in parts)


def _run_one(backend_name, cls, batch_info, op, comp, case, dtype, device, check_set, ref, timing_sets,
             budget, mbytes, copy_gbps, seed):
    """Check then time one backend on one (case, op, dtype); returns a Result."""
    import torch

    from lora import testing as I
    from .report import Result
    from .cases import target_us
    from .timing import time_calls, time_cuda_graph

    res = Result(case.name, op.name, dtype, backend_name, "error", seed, tolerance=I.TOLERANCE[dtype], min_bytes=mbytes)
    skip = _skip_reason(backend_name, dtype, device)
    if skip:
        res.status, res.detail = "skipped", skip
        return res
    try:
        backend = cls(backend_name, batch_info)
        t = {k: v.clone() for k, v in check_set.items()}
        t0 = time.perf_counter()
        out = I.call_op(backend, op, t)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        first_us = (time.perf_counter() - t0) * 1e6
        c = I.check(out, ref, dtype, expect_dtype=I.DTYPES[dtype], base=t.get("base"), comp=comp, op=op)
        res.rel_error, res.detail = c.rel_error, "; ".join([c.detail, *c.problems[:3]])
        res.status = "pass" if c.ok else "fail"
        del out, t
    except NotImplementedError as exc:
        res.status, res.detail = "unsupported", f"NotImplementedError: {exc}"
        return res
    except Exception as exc:  # a crash is a failure too, reported with its last frames
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        res.detail = f"{type(exc).__name__}: {exc} (at {os.path.basename(tb.filename)}:{tb.lineno})"
        return res

    try:
        fns = [lambda s=s: I.call_op(backend, op, s) for s in timing_sets]
        eager = time_calls(fns, device, budget, first_us=first_us)
        res.timings[eager.method] = eager.to_dict()
        headline = eager
        if device.type == "cuda":
            # The headline is device time, not the host's launch cost: one call among many in one graph
            # (back to back, inputs rotating past L2), what issues 16/17 state every target in ("device
            # time inside a graph"); a call replayed alone from its own graph adds the graph launch (a few
            # us, the same for every backend and plan) and stays in `timings`, as does the eager figure.
            if _is_host_syncing(cls):
                res.timings["cuda-graph"] = {"error": "host-synchronising reference: cannot be captured"}
            else:
                try:
                    single, together = time_cuda_graph(fns, device, budget, batched=True)
                    res.timings[single.method] = single.to_dict()
                    if together is not None:
                        res.timings[together.method] = together.to_dict()
                    headline = together if together is not None else single
                except Exception as exc:  # not capturable: keep the eager figure
                    torch.cuda.synchronize(device)
                    res.timings["cuda-graph"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        res.time_us, res.time_method = headline.median_us, headline.method
        if mbytes and res.time_us:
            res.gbps = mbytes / (res.time_us * 1e-6) / 1e9
            res.fraction_of_copy = res.gbps / copy_gbps if copy_gbps else None
            if device.type == "cuda" and copy_gbps:
                res.target_us = target_us(op, case.decode, mbytes, copy_gbps)
                res.meets_target = res.time_us <= res.target_us
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        res.timings["error"] = f"{type(exc).__name__}: {exc} (at {os.path.basename(tb.filename)}:{tb.lineno})"
        res.status, res.detail = "error", f"checked ({res.detail}) but timing raised {res.timings['error']}"
    return res


def _compare(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    args.argv = argv
    args.started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    out = sys.stdout
    try:
        import torch  # noqa: F401  (before deciding on the interpreter)

        device = _resolve_device(args.device)
        if device.type != "cuda":
            # Triton must see this before it is first imported (the registry imports it lazily).
            os.environ.setdefault("TRITON_INTERPRET", "1")
        return _compare_on(args, device, out)
    except _UsageError as exc:
        print(f"{_PROG} compare: error: {exc}", file=sys.stderr)
        return 2


def _compare_on(args, device, out) -> int:
    import torch

    from lora import LoRABatchInfo, get_backend_from_name

    from lora import testing as I
    from .cases import CASES, CPU_DEFAULT_CASES, CPU_DEFAULT_OPS, GPU_DEFAULT_CASES, OPS, case_seed, min_bytes, parse_shape_spec, select_cases
    from .report import Progress, Result, print_tables, write_json, write_plot
    from .timing import Budget, copy_bandwidth, rotation_sets

    t_start = time.perf_counter()
    cuda = device.type == "cuda"
    if args.step:
        return _steps(args, device, out)
    # -- what to run
    try:
        shape_cases = [(parse_shape_spec(s), s) for s in args.shape]
        if args.case:
            cases = [(c, None) for c in select_cases(args.case)]
        elif shape_cases:
            cases = []
        else:
            cases = [(CASES[n], None) for n in (GPU_DEFAULT_CASES if cuda else CPU_DEFAULT_CASES)]
        cases += shape_cases
        ops = [o.strip() for o in args.ops.split(",")] if args.ops else (list(OPS) if cuda else CPU_DEFAULT_OPS)
        bad = [o for o in ops if o not in OPS]
        if bad:
            raise _UsageError(f"unknown op(s) {', '.join(bad)}; ops: {', '.join(OPS)}")
        dtypes = [I.dtype_name(d) for d in args.dtype.split(",")] if args.dtype else (
            ["bfloat16"] if cuda else ["float16", "float32"])
    except (KeyError, ValueError) as exc:
        raise _UsageError(str(exc).strip("'\"")) from None
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise _UsageError("--plot needs matplotlib: pip install 'kernelstack[compare]'") from None
    backends, backend_rows = _select_backends(args.backends, out)
    if not backends:
        raise _UsageError("no selected backend can run here")
    classes = {name: get_backend_from_name(name) for name in backends}

    print(f"{_PROG} compare: {len(cases)} case(s) x {len(ops)} op(s) x {', '.join(dtypes)} on {device}; "
          f"backends: {', '.join(backends)}", file=out)
    if not cuda:
        print("CPU correctness run: Triton runs on its interpreter (TRITON_INTERPRET=1); times are wall clock "
              "and do not describe GPU speed.", file=out)
    out.flush()

    command = " ".join([_PROG, "compare", *map(shlex.quote, args.argv)])
    device_info = _device_info(device)
    copy_bw = copy_bandwidth(device, quick=args.quick)
    budget = Budget.for_run(device, args.quick)
    ref_budget = Budget(5.0, 50.0, 3, 50)  # the torch reference on a GPU: a few calls of milliseconds each
    results: list[Result] = []
    case_rows = []
    progress = Progress(len(cases) * len(ops) * len(dtypes) * len(backends), enabled=not args.no_progress)
    with progress.running():
        for case, spec in cases:
            comp = case.composition(args.seed)
            batch_info = LoRABatchInfo.from_segments(comp.seg_lens, comp.weight_indices, comp.lora_ranks,
                                                     comp.scalings, device=device)
            resolved = [OPS[o].resolve(case.shape) for o in ops]
            case_rows.append({
                **case.to_dict(), "spec": spec, "composition": comp.to_dict(), "composition_summary": comp.summary(),
                "ops": [r.to_dict() for r in resolved],
            })
            for op in resolved:
                for dtype in dtypes:
                    seed = case_seed(args.seed, case.name, op.name, dtype)
                    tdtype = I.DTYPES[dtype]
                    check_set = I.make_inputs(op, comp, tdtype, device, seed)
                    ref = I.oracle(op, comp, check_set)
                    n_sets = rotation_sets(sum(t.numel() * t.element_size() for t in check_set.values()), device)
                    # separate sets: timed calls add into their base_output, which must not reach a later check
                    timing_sets = [I.make_inputs(op, comp, tdtype, device, seed + 1 + i) for i in range(n_sets)]
                    mbytes = min_bytes(op, comp, torch.finfo(tdtype).bits // 8)
                    group = []
                    for name in backends:
                        progress.step(f"{case.name} {op.name} {dtype} {name}")
                        # The host-synchronising reference is 10-1000x slower than a kernel: cache effects do
                        # not matter to it, and rotating it over every set would cost minutes per case.
                        slow = _is_host_syncing(classes[name]) and cuda
                        group.append(_run_one(name, classes[name], batch_info, op, comp, case, dtype, device,
                                              check_set, ref, timing_sets[:2] if slow else timing_sets,
                                              ref_budget if slow else budget, mbytes, copy_bw["gbps"], seed))
                        progress.advance(group[-1])
                    ref_time = next((r.time_us for r in group if r.backend == "torch" and r.time_us), None)
                    for r in group:
                        if ref_time and r.time_us:
                            r.speedup_vs_torch = ref_time / r.time_us
                    results.extend(group)
                    del check_set, ref, timing_sets
                    if cuda:
                        torch.cuda.empty_cache()
            if args.json:  # what is done so far, in case the run is cut off (rewritten at the end)
                write_json(args.json, {"partial": True, "command": command, "device": device_info,
                                       "copy_bandwidth": copy_bw}, case_rows, results)

    counted = [r for r in results if r.status in ("pass", "fail")]
    summary = {
        "checked": len(counted),
        "passed": sum(r.status == "pass" for r in results),
        "failed": sum(r.status == "fail" for r in results),
        "errors": sum(r.status == "error" for r in results),
        "skipped": sum(r.status in ("skipped", "unsupported") for r in results),
    }
    summary["ok"] = summary["failed"] == 0 and summary["errors"] == 0
    meta = {
        "command": command,
        "started_at": args.started_at,
        "elapsed_s": None,
        "seed": args.seed,
        "quick": args.quick,
        "correctness_only": not cuda,
        "note": ("CPU correctness run: times are wall clock on the CPU (Triton's interpreter) and do not describe GPU speed"
                 if not cuda else "times: median after warm-up over input sets rotated beyond L2. Headline (time_us): "
                 "one call among many in one graph (cuda-graph-batched: device time inside a graph, every case), "
                 "where the backend can be captured, else CUDA events around each "
                 "eager call; every measurement is under timings"),
        "device": device_info,
        "copy_bandwidth": copy_bw,
        "versions": _versions(),
        "environment": {"TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET")},
        "backends": backend_rows,
        "dtypes": dtypes,
        "ops": {o: {"call": OPS[o].call, "doc": OPS[o].doc} for o in ops},
        "tolerances": {d: I.TOLERANCE[d] for d in dtypes},
        "min_bytes_model": "x read once (worked rows; real-rank columns of an expand input), each used adapter's "
        "real-rank weights once, the output written once (a shrink's whole output), base_output read and written "
        "once for the rows that get work when the add is fused",
        "summary": summary,
    }
    print_tables(meta, case_rows, results, file=out)
    failed = [r for r in results if r.failed]
    specs = {c.name: s for c, s in cases}
    by_name = {c.name: c for c, _ in cases}
    for r in failed:
        cmd = _replay_command(by_name[r.case], args, r.backend, r.dtype, r.op, specs.get(r.case))
        print(f"FAILED {r.backend} on case {r.case}, op {r.op}, {r.dtype}: {r.detail} "
              f"[seed={r.seed}, run seed={args.seed}] replay: {cmd}", file=out)
    meta["elapsed_s"] = round(time.perf_counter() - t_start, 3)
    if args.json:
        write_json(args.json, meta, case_rows, results)
        print(f"wrote {args.json}", file=out)
    if args.plot:
        write_plot(args.plot, meta, case_rows, results)
        print(f"wrote {args.plot}", file=out)
    print(f"{'FAILED' if failed else 'OK'} in {meta['elapsed_s']:.1f} s", file=out)
    return 1 if failed else 0


def _steps(args, device, out) -> int:
    """``compare --step``: the decode-step cases (lora.compare.step)."""
    from lora import get_backend_from_name

    from lora import testing as I

    from .step import run_steps, select_steps

    if args.shape or args.ops or args.plot:
        raise _UsageError("--step takes --case (step cases), --layers, --backends, --dtype, --seed, --json, --quick")
    if args.layers is not None and args.layers < 1:
        raise _UsageError(f"--layers must be >= 1, got {args.layers}")
    try:
        if args.case:
            select_steps(args.case)
        dtypes = [I.dtype_name(d) for d in args.dtype.split(",")] if args.dtype else (
            ["bfloat16"] if device.type == "cuda" else ["float32"])
    except (KeyError, ValueError) as exc:
        raise _UsageError(str(exc).strip("'\"")) from None
    backends, backend_rows = _select_backends(args.backends, out)
    if device.type == "cuda" and "torch" in backends:
        backends.remove("torch")  # the host-synchronising reference cannot be captured; the oracle checks instead
        print("backend torch: not run in --step on CUDA (host-synchronising, cannot be captured)", file=out)
    if not backends:
        raise _UsageError("no selected backend can run the decode step here")
    classes = {name: get_backend_from_name(name) for name in backends}
    print(f"{_PROG} compare --step on {device}; backends: {', '.join(backends)}; {', '.join(dtypes)}", file=out)
    meta = {
        "command": " ".join([_PROG, "compare", *map(shlex.quote, args.argv)]),
        "started_at": args.started_at,
        "seed": args.seed,
        "device": _device_info(device),
        "versions": _versions(),
        "backends": backend_rows,
        "tolerances": {d: I.TOLERANCE[d] for d in dtypes},
    }
    return run_steps(args, device, out, backends=backends, classes=classes,
                     dtypes={d: I.DTYPES[d] for d in dtypes}, meta=meta)


# ---- entry point ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m lora [list | compare [options]]``; ``lora-compare [options]`` is ``compare``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "list":
        if len(argv) > 1:
            print(f"{_PROG} list takes no arguments", file=sys.stderr)
            return 2
        return _list()
    if argv and argv[0] == "compare":
        argv = argv[1:]
    return _compare(argv)
