"""Tensor-parallel LoRA on N GPUs: LoRA time per layer and the all-reduce's share (NCCL, one process a GPU).

One Llama-3-8B layer's four LoRA modules through :class:`lora.parallel.TensorParallelLoRA`: QKV and
gate-up column-parallel (no collective), o and down row-parallel (one all-reduce of the (s, r)
shrink result each), bf16, 8 adapters of rank ``--rank``, for decode-64 (64 one-token segments)
and prefill-8k (8 segments of 1024). Per (backend, tp, batch) it reports, as device time per layer
replayed from a CUDA graph (eager time too, and eager only where capture fails):

* ``layer_us``     all four modules, o / down in ``reduce="all_reduce"`` mode;
* ``fold_us``      the same with ``reduce="fold"`` (no LoRA collective; same kernels);
* ``allreduce_us`` the two all-reduces alone, on tensors of the same size;
* ``share``        allreduce_us / layer_us (and ``layer_us - fold_us``, the collective's cost in place);

and checks every module's tp result against the torch reference backend on the full weights, run
eagerly and replayed from a CUDA graph captured per rank (``rel_err``, ``rel_err_graph``).

    python benchmarks/tp_bench.py --tp 1,2                  # tp 1 and tp 2 (needs 2 GPUs), triton
    python benchmarks/tp_bench.py --tp 2 --backends triton,pallas --rank 16
    python benchmarks/tp_bench.py --smoke                   # CPU + gloo, tiny shapes: checks the script

NVLink multicast stays off: NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and
NVSHMEM_DISABLE_NVLS=1 are set here, before torch loads, and every rank process inherits them.
Results: ``$OUT/tp_bench.json`` (``$OUT`` defaults to ``./.out``) and a table on stdout.
"""

from __future__ import annotations

import os

MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(MULTICAST_OFF)  # forced, not defaulted: the machine's NVLink multicast must stay off
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the pallas backend's jax shares the GPU

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from datetime import timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

# Llama-3-8B: hidden 4096, 32 query heads and 8 kv heads of 128, MLP 14336.
FULL = dict(hidden=4096, q_heads=32, kv_heads=8, head_dim=128, inter=14336)
TINY = dict(hidden=64, q_heads=4, kv_heads=2, head_dim=8, inter=96)
BATCHES = {"decode-64": ([1] * 64, 64), "prefill-8k": ([1024] * 8, 8192)}
TINY_BATCHES = {"decode-64": ([1] * 16, 16), "prefill-8k": ([24] * 4, 96)}
NUM_LORA = 8


# ---- one rank ---------------------------------------------------------------------------------------


def _layer_inputs(shape, tokens, max_r, tp, rank, dev, dtype, seed):
    """Full weights (same on every rank: same seed) and this rank's shards of them."""
    from lora.parallel import sharding as S

    g = torch.Generator(device=dev).manual_seed(seed)
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=g, device=dev) * scale).to(dtype)  # noqa: E731
    h, inter = shape["hidden"], shape["inter"]
    q = shape["q_heads"] * shape["head_dim"]
    n_qkv = q + 2 * shape["kv_heads"] * shape["head_dim"]
    full = {
        "x": rnd(tokens, h), "x_down": rnd(tokens, inter),
        "qkv_a": rnd(NUM_LORA, 3 * max_r, h, scale=h**-0.5), "qkv_b": rnd(NUM_LORA, n_qkv, max_r, scale=max_r**-0.5),
        "o_a": rnd(NUM_LORA, max_r, h, scale=h**-0.5), "o_b": rnd(NUM_LORA, h, max_r, scale=max_r**-0.5),
        "gu_a": rnd(NUM_LORA, 2 * max_r, h, scale=h**-0.5), "gu_b": rnd(NUM_LORA, 2 * inter, max_r, scale=max_r**-0.5),
        "down_a": rnd(NUM_LORA, max_r, inter, scale=inter**-0.5), "down_b": rnd(NUM_LORA, h, max_r, scale=max_r**-0.5),
        "qkv_base": rnd(tokens, n_qkv), "gu_base": rnd(tokens, 2 * inter), "o_base": rnd(tokens, h),
    }
    sh = {
        "qkv": S.qkv_shard(shape["q_heads"], shape["kv_heads"], shape["head_dim"], tp, rank),
        "gu": S.gate_up_shard(2 * inter, tp, rank),
        "o": S.row_shard(h, tp, rank),
        "down": S.row_shard(inter, tp, rank),
    }
    local = {
        "x": full["x"], "qkv_a": full["qkv_a"], "qkv_b": sh["qkv"].take(full["qkv_b"], 1),
        "qkv_base": sh["qkv"].take(full["qkv_base"], 1),
        "gu_a": full["gu_a"], "gu_b": sh["gu"].take(full["gu_b"], 1), "gu_base": sh["gu"].take(full["gu_base"], 1),
        "o_x": sh["o"].take(full["x"], 1), "o_a": sh["o"].take(full["o_a"], 2), "o_b": full["o_b"],
        "down_x": sh["down"].take(full["x_down"], 1), "down_a": sh["down"].take(full["down_a"], 2),
        "down_b": full["down_b"], "o_base": full["o_base"].clone(), "down_base": full["o_base"].clone(),
    }
    return full, local, sh


def _layer(tpl, loc, sh, mode):
    """The four LoRA modules of one layer (outputs accumulate into the persistent base tensors)."""
    tpl.run_qkv_lora(loc["x"], loc["qkv_a"], loc["qkv_b"], sh["qkv"], base_output=loc["qkv_base"])
    tpl.run_row_lora(loc["o_x"], loc["o_a"], loc["o_b"], loc["o_base"], reduce=mode)
    tpl.run_gate_up_lora(loc["x"], loc["gu_a"], loc["gu_b"], sh["gu"], base_output=loc["gu_base"])
    tpl.run_row_lora(loc["down_x"], loc["down_a"], loc["down_b"], loc["down_base"], reduce=mode)


def _rel(out, ref) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def _capture(fn) -> torch.cuda.CUDAGraph:
    """``fn`` run once on a side stream (compiles outside the capture), then captured in a CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def _check(tpl, shape, full, loc, sh, bi, dev, graph: bool):
    """Each module's tp output vs the torch reference backend on the full weights (rel. error), run
    eagerly or captured in a CUDA graph (all four modules, both all-reduces) and replayed once."""
    import lora

    ref = lora.get_backend_from_name("torch")("torch", bi)
    q, kv = shape["q_heads"] * shape["head_dim"], shape["kv_heads"] * shape["head_dim"]
    offs = torch.tensor([0, q, q + kv, q + 2 * kv], dtype=torch.int32, device=dev)
    refs = {
        "qkv": sh["qkv"].take(ref.run_qkv_lora(full["x"], full["qkv_a"], full["qkv_b"], offs, q,
                                               base_output=full["qkv_base"].clone()), 1),
        "gate_up": sh["gu"].take(ref.run_gate_up_lora(full["x"], full["gu_a"], full["gu_b"],
                                                      base_output=full["gu_base"].clone()), 1),
    }
    for name, xfull in (("o", "x"), ("down", "x_down")):
        xa = ref.run_lora_a_sgemm(full[xfull], full[f"{name}_a"])
        refs[name] = ref.run_lora_b_sgemm(xa, full[f"{name}_b"], base_output=full["o_base"].clone())
    init = {"qkv": sh["qkv"].take(full["qkv_base"], 1), "gate_up": sh["gu"].take(full["gu_base"], 1),
            "o": full["o_base"], "down": full["o_base"]}
    bases = {k: v.clone() for k, v in init.items()}

    def compute():
        tpl.run_qkv_lora(loc["x"], loc["qkv_a"], loc["qkv_b"], sh["qkv"], base_output=bases["qkv"])
        tpl.run_gate_up_lora(loc["x"], loc["gu_a"], loc["gu_b"], sh["gu"], base_output=bases["gate_up"])
        tpl.run_row_lora(loc["o_x"], loc["o_a"], loc["o_b"], bases["o"])
        tpl.run_row_lora(loc["down_x"], loc["down_a"], loc["down_b"], bases["down"])

    def reset():
        for k, v in init.items():
            bases[k].copy_(v)

    if graph:
        g = _capture(compute)
        reset()
        g.replay()
        torch.cuda.synchronize()
    else:
        compute()
    return {k: _rel(bases[k], refs[k]) for k in refs}


def _time(fn, iters, dev, graph: bool):
    """Seconds per call: replayed from a CUDA graph (graph=True) or eager; device time via events/clock."""
    import torch.distributed as dist

    if dev.type != "cuda":
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters
    run = fn
    if graph:
        run = _capture(fn).replay
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    dist.barrier()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def _worker(rank, tp, init, args, out_dir):
    import torch.distributed as dist

    import lora
    from lora import LoRABatchInfo
    from lora.parallel import TensorParallelLoRA

    smoke = args["smoke"]
    shape = TINY if smoke else FULL
    if smoke:
        dev, pg_backend = torch.device("cpu"), "gloo"
        torch.set_num_threads(1)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    else:
        dev, pg_backend = torch.device("cuda", rank), "nccl"
        torch.cuda.set_device(dev)
    kw = {"device_id": dev} if dev.type == "cuda" else {}
    dist.init_process_group(pg_backend, init_method=init, rank=rank, world_size=tp,
                            timeout=timedelta(seconds=120), **kw)
    status = {s.name: s for s in lora.available_backends()}
    rows, deadline = [], time.monotonic() + args["budget_s"]
    batches = TINY_BATCHES if smoke else BATCHES
    dtype = torch.float32 if smoke else torch.bfloat16
    for name in args["backends"]:
        if name not in status or not status[name].available:
            rows.append({"backend": name, "tp": tp, "skipped": status[name].reason if name in status else "unknown"})
            continue
        for bname, (lens, tokens) in batches.items():
            row = {"backend": name, "tp": tp, "batch": bname, "lora_rank": args["rank"], "tokens": tokens}
            rows.append(row)
            over = [time.monotonic() > deadline]
            dist.broadcast_object_list(over, src=0)  # rank 0 decides for all: ranks must stay in step
            if over[0]:
                row["skipped"] = f"time budget of {args['budget_s']} s spent"
                continue
            try:
                g = torch.Generator().manual_seed(1)
                slots = torch.randint(0, NUM_LORA, (len(lens),), generator=g).tolist() if bname == "decode-64" \
                    else list(range(len(lens)))
                bi = LoRABatchInfo.from_segments(lens, slots, [args["rank"]] * NUM_LORA, [0.5] * NUM_LORA, device=dev)
                backend = lora.get_backend_from_name(name)(name)
                if hasattr(backend, "reserve"):  # persistent metadata buffers for CUDA graphs (issue 15)
                    backend.reserve(tokens, len(lens), device=dev)
                tpl = TensorParallelLoRA(backend)
                tpl.set_batch_info(bi)
                full, loc, sh = _layer_inputs(shape, tokens, args["rank"], tp, rank, dev, dtype, seed=7)
                if args["check"]:
                    tol = 1e-3 if smoke else 1.5e-2
                    row["rel_err"] = _check(tpl, shape, full, loc, sh, bi, dev, graph=False)
                    row["check_ok"] = all(v <= tol for v in row["rel_err"].values())
                    if dev.type == "cuda" and not args["no_graph"]:
                        try:
                            row["rel_err_graph"] = _check(tpl, shape, full, loc, sh, bi, dev, graph=True)
                            row["check_ok"] &= all(v <= tol for v in row["rel_err_graph"].values())
                        except Exception as exc:
                            row.setdefault("errors", []).append(f"check/graph: {type(exc).__name__}: {exc}"[:400])
                            torch.cuda.synchronize()
                del full
                iters = args["iters"] if bname.startswith("decode") else max(3, args["iters"] // 5)
                partials = [torch.zeros(tokens, args["rank"], dtype=dtype, device=dev) for _ in range(2)]
                fns = {
                    "layer": lambda: _layer(tpl, loc, sh, "all_reduce"),
                    "fold": lambda: _layer(tpl, loc, sh, "fold"),
                    "allreduce": lambda: [tpl.all_reduce(p) for p in partials],
                }
                for mode in ("graph", "eager"):
                    if mode == "graph" and (dev.type != "cuda" or args["no_graph"]):
                        continue
                    for key, fn in fns.items():
                        if key == "allreduce" and tp == 1:
                            continue
                        try:
                            row[f"{key}_us_{mode}"] = _time(fn, iters, dev, graph=mode == "graph") * 1e6
                        except Exception as exc:  # e.g. a backend that cannot be captured: eager still runs
                            row[f"{key}_us_{mode}"] = None
                            row.setdefault("errors", []).append(f"{key}/{mode}: {type(exc).__name__}: {exc}"[:400])
                            if dev.type == "cuda":
                                torch.cuda.synchronize()
            except Exception:
                row["error"] = traceback.format_exc()[-3000:]
    gathered = [None] * tp
    dist.all_gather_object(gathered, rows)
    if rank == 0:
        Path(out_dir, f"tp{tp}.json").write_text(json.dumps(gathered))
    dist.barrier()
    dist.destroy_process_group()


# ---- the parent --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tp, args, out_dir, timeout_s):
    import torch.multiprocessing as mp

    init = f"tcp://127.0.0.1:{_free_port()}"
    ctx = mp.start_processes(_worker, args=(tp, init, args, out_dir), nprocs=tp, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"tp {tp} did not finish within {timeout_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return json.loads(Path(out_dir, f"tp{tp}.json").read_text())


def _merge(per_rank):
    """One row per (backend, batch): times as the slowest rank's (collectives keep ranks in step)."""
    merged = []
    for i, row in enumerate(per_rank[0]):
        m = dict(row)
        for rank_rows in per_rank[1:]:
            other = rank_rows[i]
            for k, v in other.items():
                if k.endswith(("_graph", "_eager")) and isinstance(v, float):
                    m[k] = max(m.get(k) or 0.0, v)
            for key in ("rel_err", "rel_err_graph"):
                if key in other and key in m:
                    m[key] = {k: max(v, other[key][k]) for k, v in m[key].items()}
            if "check_ok" in other:
                m["check_ok"] = m.get("check_ok", True) and other["check_ok"]
            for k in ("error", "errors"):
                if k in other and k not in m:
                    m[k] = other[k]
        for mode in ("graph", "eager"):
            layer, ar = m.get(f"layer_us_{mode}"), m.get(f"allreduce_us_{mode}")
            if layer and ar is not None and m["tp"] > 1:
                m[f"share_{mode}"] = ar / layer
        merged.append(m)
    return merged


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tp", default=None, help="comma-separated tp sizes (default: 1 and every GPU)")
    p.add_argument("--backends", default="triton", help="comma-separated registered backend names")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (max_r) of the 8 adapters")
    p.add_argument("--iters", type=int, default=100, help="timed calls for decode (prefill: a fifth)")
    p.add_argument("--no-check", action="store_true", help="skip the check against the torch reference")
    p.add_argument("--no-graph", action="store_true", help="eager timing only")
    p.add_argument("--budget-s", type=float, default=150, help="per tp size: later configurations are skipped")
    p.add_argument("--smoke", action="store_true", help="CPU + gloo, tiny shapes, float32: checks the script")
    a = p.parse_args(argv)
    ngpu = 0 if a.smoke else torch.cuda.device_count()
    tps = [int(v) for v in a.tp.split(",")] if a.tp else sorted({1, max(ngpu, 1)})
    if not a.smoke and max(tps) > ngpu:
        p.error(f"--tp {max(tps)} needs {max(tps)} GPUs; this machine has {ngpu}")
    out_dir = Path(os.environ.get("OUT", "./.out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    args = {"backends": a.backends.split(","), "rank": a.rank, "iters": a.iters, "check": not a.no_check,
            "no_graph": a.no_graph, "budget_s": a.budget_s, "smoke": a.smoke}
    from lora.parallel import cost

    results = []
    for tp in tps:
        t0 = time.monotonic()
        try:
            rows = _merge(_spawn(tp, args, str(out_dir), timeout_s=a.budget_s + 120))
        except Exception as exc:
            rows = [{"tp": tp, "error": f"{type(exc).__name__}: {exc}"}]
        for r in rows:
            if "tokens" in r and tp > 1:
                paper = cost.layer_collectives(r["tokens"], a.rank, tp, model=cost.LLAMA3_8B)
                r["paper_allreduce_bytes"] = sum(c.nbytes for c in paper)
                r["paper_allreduce_us"] = sum(c.seconds for c in paper) * 1e6
        results += rows
        print(f"tp {tp}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    doc = {
        "command": " ".join([sys.executable, *sys.argv]),
        "env": {k: os.environ.get(k) for k in MULTICAST_OFF},
        "device": torch.cuda.get_device_name(0) if ngpu else "cpu (smoke)",
        "torch": torch.__version__,
        "shape": "tiny" if a.smoke else "llama3-8b",
        "results": results,
    }
    path = out_dir / "tp_bench.json"
    path.write_text(json.dumps(doc, indent=1))
    mode = "eager" if a.smoke or a.no_graph else "graph"
    print(f"LoRA per layer ({mode}, us; slowest rank), {doc['shape']}, rank {a.rank}, 8 adapters -> {path}")
    print(f"{'backend':<8}{'tp':>3} {'batch':<11}{'layer':>11}{'fold':>11}{'allred':>11}{'share':>7}  check")
    for r in results:
        if "error" in r or "skipped" in r:
            print(f"{r.get('backend', '?'):<8}{r['tp']:>3} {r.get('batch', ''):<11} "
                  f"{(r.get('skipped') or r.get('error', '')).strip().splitlines()[-1][:90]}")
            continue
        f = lambda k: f"{r[k]:11.1f}" if r.get(k) is not None else f"{'-':>11}"  # noqa: E731
        share = r.get(f"share_{mode}")
        chk = "" if "check_ok" not in r else ("ok" if r["check_ok"] else "FAIL") + f" {max(r['rel_err'].values()):.1e}"
        print(f"{r['backend']:<8}{r['tp']:>3} {r['batch']:<11}{f(f'layer_us_{mode}')}{f(f'fold_us_{mode}')}"
              f"{f(f'allreduce_us_{mode}')}{(f'{share:7.0%}' if share is not None else '      -')}  {chk}")
    ok = all("error" not in r and r.get("check_ok", True) for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
