"""Issue 16: the pallas backend's sporadic CUDA-graph capture failures ("operation failed due to a previous error
during capture", cudaErrorStreamCaptureInvalidated), seen once or twice per compare / step run on the H200.

Captures one op call into a fresh CUDA graph many times (the compare's recipe: warm-up on a side stream, capture
on torch's capture stream) and counts failed captures, in torch's default (global) capture mode and in
thread-local mode, with and without a garbage collection inside the capture. A failure only in global mode means
another thread made a call that is unsafe during a capture (global mode fails every capture in the process on it).
It also reports whether JAX initialised a device backend in this process and how many threads the process has.

    PYTHONPATH=. python benchmarks/capture_probe.py --case llama3-8b-r64-decode-256 --op qkv --json $OUT/capture.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import torch  # noqa: E402

import lora  # noqa: E402
from lora import testing as T  # noqa: E402
from lora.compare import cases as CS  # noqa: E402


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--case", default="llama3-8b-r64-decode-256")
    p.add_argument("--op", default="qkv")
    p.add_argument("--backend", default="pallas")
    p.add_argument("--captures", type=int, default=100)
    p.add_argument("--modes", default="global,global+gc,thread_local,thread_local+gc")
    p.add_argument("--json")
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    out = {"case": args.case, "op": args.op, "backend": args.backend, "threads_start": threads()}
    (case,) = CS.select_cases([args.case])
    comp = case.composition(0)
    bi = T.batch_info(comp, dev)
    be = lora.get_backend_from_name(args.backend)(args.backend, bi)
    op = CS.OPS[args.op].resolve(case.shape)
    t = T.make_inputs(op, comp, torch.bfloat16, dev, 1)
    T.call_op(be, op, t)
    torch.cuda.synchronize()
    out["threads_after_first_call"] = threads()
    try:
        from jax._src import xla_bridge

        out["jax_backends_initialised"] = bool(xla_bridge.backends_are_initialized())
        if out["jax_backends_initialised"]:
            out["jax_backends"] = sorted(xla_bridge.backends())
    except Exception as e:  # noqa: BLE001
        out["jax_backends_initialised"] = repr(e)
    results = {}
    for key in args.modes.split(","):
        mode, collect = key.split("+")[0], key.endswith("+gc")
        fails, errors = 0, []
        t0 = time.perf_counter()
        for i in range(args.captures):
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                T.call_op(be, op, t)
            torch.cuda.current_stream(dev).wait_stream(side)
            torch.cuda.synchronize(dev)
            g = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(g, capture_error_mode=mode):
                    T.call_op(be, op, t)
                    if collect:
                        gc.collect()
                g.replay()
                torch.cuda.synchronize(dev)
            except Exception as e:  # noqa: BLE001
                fails += 1
                if len(errors) < 3:
                    errors.append(f"capture {i}: {type(e).__name__}: {str(e)[:300]}")
                torch.cuda.synchronize(dev)
            del g
        results[key] = {"captures": args.captures, "failed": fails, "errors": errors,
                        "seconds": round(time.perf_counter() - t0, 1)}
        print(key, results[key], flush=True)
    out["results"] = results
    out["threads_end"] = threads()
    print(json.dumps({k: v for k, v in out.items() if k != "results"}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
