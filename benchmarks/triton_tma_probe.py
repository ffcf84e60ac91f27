"""Issue 17: how fast can a Triton kernel run the rank-64 prefill shrinks' dense shapes on the H200?

Triton's rank-64 shrinks on one 8448-row segment take 23.0 / 33.3 / 45.8 us (N = 64 / 128 / 192, K = 4096;
session 20, call 2), where pallas's block shrink takes 21.2 / 23.5 / 32.8 and jax's warp-specialized matmul
with 128-row tiles over half of K 18.9 / 20.5 / 22.7 (session 20, call 4). Session 20's model: these shapes
are bound by the bytes each SM reads into shared memory (x once, the weights once per row tile), at about
60-75 GB/s an SM. Triton's shrink loads its tiles with pointer loads (cp.async, a thread per fragment);
Hopper's TMA (tensor descriptors) moves a tile with one instruction, and Triton can warp-specialize a
descriptor loop (a producer warp group issuing the TMA loads). This probe measures what those buy on the
dense shape x (M, K) @ W.T (K, N), before any of it is built into the LoRA shrink (whose row tiles would
then have to lie inside one segment: TMA reads contiguous rows).

Variants of one kernel (a tile = BM rows x all N columns x 1/SPLIT of K; SPLIT > 1 adds float32 partials
with atomics into a float32 output zeroed first, both inside the timing; the real kernel would sum them
deterministically instead: these rows bound what a K split can give):

* ``ptr``: pointer loads, a program per tile (Triton's shrink today, less its metadata);
* ``desc``: tensor-descriptor (TMA) loads, a program per tile;
* ``desc_ws``: the same with the K loop warp-specialized;
* ``pdesc`` / ``pdesc_ws``: descriptor loads, persistent (a program per SM walking the tiles), the tile
  loop flattened, without / with warp specialization.

Each configuration is checked against a float32 matmul and timed as ``python -m lora compare`` headlines
prefill (one call among many in one CUDA graph, input sets rotated past L2); the Triton LoRA shrink on
the same rows as one segment is timed the same way as the baseline. A configuration that does not
compile (shared memory, a warp-specialization limit) is recorded with its error.

    PYTHONPATH=. python benchmarks/triton_tma_probe.py --json $OUT/triton_tma.json
    PYTHONPATH=. python benchmarks/triton_tma_probe.py --check-cpu     # every variant on Triton's interpreter
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
import traceback

if "--check-cpu" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

#: (M, K, N): one 8448-row segment (the mixed batch's rows) at rank 64: shrink1/2/3 and the down projection
SHAPES = [(8448, 4096, 64), (8448, 4096, 128), (8448, 4096, 192), (8448, 14336, 64)]
VARIANTS = ["ptr", "desc", "desc_ws", "pdesc", "pdesc_ws"]
SMEM_LIMIT = 227 * 1024


@triton.jit
def _dense_shrink(x_ptr, w_ptr, x_desc, w_desc, out_ptr, M, K, N, stride_x, stride_w, stride_o,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr, STAGES: tl.constexpr,
                  DESC: tl.constexpr, PERSISTENT: tl.constexpr, WS_TILES: tl.constexpr, WS_K: tl.constexpr,
                  NUM_PROGS: tl.constexpr):
    k_steps = tl.cdiv(tl.cdiv(K, BK), SPLIT)  # K steps per split
    tiles = tl.cdiv(M, BM) * SPLIT
    first = tl.program_id(0)
    step = NUM_PROGS if PERSISTENT else tiles
    rn = tl.arange(0, BN)
    for tile in tl.range(first, tiles, step, flatten=PERSISTENT, warp_specialize=WS_TILES):
        m0 = (tile // SPLIT) * BM
        k_first = (tile % SPLIT) * k_steps
        acc = tl.zeros((BM, BN), tl.float32)
        for kk in tl.range(k_first, k_first + k_steps, num_stages=STAGES, warp_specialize=WS_K):
            if DESC:
                a = x_desc.load([m0, kk * BK])
                b = w_desc.load([0, kk * BK])
            else:
                rm = m0 + tl.arange(0, BM)
                rk = kk * BK + tl.arange(0, BK)
                a = tl.load(x_ptr + rm[:, None] * stride_x + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K),
                            other=0.0)
                b = tl.load(w_ptr + rn[:, None] * stride_w + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K),
                            other=0.0)
            acc = tl.dot(a, b.T, acc)
        rm = m0 + tl.arange(0, BM)
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        ptrs = out_ptr + rm[:, None] * stride_o + rn[None, :]
        if SPLIT == 1:
            tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.atomic_add(ptrs, acc, mask=mask, sem="relaxed")


def configs(n: int):
    """(variant, BM, warps, BK, stages, SPLIT) that fit shared memory: 64-row tiles over all of K (132 tiles
    for 8448 rows) and 128-row tiles over half of K each (the same count, half the weight bytes a row)."""
    bn = triton.next_power_of_2(n)
    for variant, (bm, warps, split), (bk, stages) in itertools.product(
            VARIANTS, [(64, 4, 1), (128, 8, 2)], [(64, 4), (128, 3)]):
        if stages * (bm + bn) * bk * 2 <= SMEM_LIMIT:
            yield variant, bm, warps, bk, stages, split


def launcher(x, w, cfg, num_sms):
    """A zero-argument call running one configuration on (x, w), and its output."""
    variant, bm, warps, bk, stages, split = cfg
    m, k = x.shape
    n = w.shape[0]
    bn = triton.next_power_of_2(n)
    out = torch.empty(m, n, device=x.device, dtype=x.dtype if split == 1 else torch.float32)
    desc = variant != "ptr"
    persistent = variant.startswith("p")
    ws = variant.endswith("_ws")
    xd = TensorDescriptor.from_tensor(x, [bm, bk]) if desc else None
    wd = TensorDescriptor.from_tensor(w, [bn, bk]) if desc else None
    tiles = triton.cdiv(m, bm) * split
    progs = min(tiles, num_sms) if persistent else tiles

    def call():
        if split > 1:
            out.zero_()
        _dense_shrink[(progs,)](x, w, xd, wd, out, m, k, n, x.stride(0), w.stride(0), out.stride(0),
                                BM=bm, BN=bn, BK=bk, SPLIT=split, STAGES=stages, DESC=desc, PERSISTENT=persistent,
                                WS_TILES=ws and persistent, WS_K=ws and not persistent, NUM_PROGS=progs,
                                num_warps=warps)
    return call, out


def rel_err(out, ref) -> float:
    return float((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6))


def check_cpu() -> int:
    """Every variant on a small shape in Triton's interpreter (float16: its bf16 dot is wrong)."""
    torch.manual_seed(0)
    bad = 0
    for m, k, n in [(200, 512, 48), (130, 384, 128)]:
        x = torch.randn(m, k, dtype=torch.float16)
        w = torch.randn(n, k, dtype=torch.float16)
        ref = x.float() @ w.float().T
        for cfg in configs(n):
            if cfg[3] * cfg[4] > k:  # shrink the sweep: one K depth per variant and tile is enough here
                continue
            call, out = launcher(x, w, cfg, num_sms=3)
            call()
            err = rel_err(out, ref)
            ok = err <= 3e-3
            bad += not ok
            print(f"{'ok ' if ok else 'BAD'} m={m} k={k} n={n} {cfg} rel err {err:.1e}")
    print("all variants match" if not bad else f"{bad} configurations do not match")
    return 1 if bad else 0


def lora_shrink_call(x, w):
    """Triton's LoRA shrink on the same rows as one segment of one adapter (the baseline)."""
    import lora

    n, _ = w.shape
    stack = n // 64
    bi = lora.LoRABatchInfo.from_segments([x.shape[0]], [0], [64], [1.0], device=x.device)
    backend = lora.get_backend_from_name("triton")("triton", bi)
    a = w.unsqueeze(0).contiguous()
    return lambda: backend.run_lora_a_sgemm(x, a, stack_num=stack)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--check-cpu", action="store_true", help="run every variant in Triton's interpreter, time nothing")
    p.add_argument("--budget-s", type=float, default=400, help="start no new configuration after this many seconds")
    p.add_argument("--shapes", default=",".join(f"{m}x{k}x{n}" for m, k, n in SHAPES), help="MxKxN,...")
    args = p.parse_args()
    if args.check_cpu:
        return check_cpu()

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from probe_record import pct_of_copy, write_rows

    from lora.compare import timing as TM

    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    copy = TM.copy_bandwidth(dev)["gbps"]
    budget = TM.Budget(warmup_ms=10, rep_ms=40)
    rows = []
    t0 = time.perf_counter()
    for spec in args.shapes.split(","):
        m, k, n = (int(v) for v in spec.split("x"))
        nbytes = (m * k + n * k + m * n) * 2
        sets = TM.rotation_sets(nbytes, dev)
        xs = [torch.randn(m, k, device=dev, dtype=torch.bfloat16) for _ in range(sets)]
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k ** 0.5
        ref = xs[0].float() @ w.float().T

        def timed(name, calls, out_of_first):
            _, batched = TM.time_cuda_graph(calls, dev, budget)
            us = batched.median_us
            err = rel_err(out_of_first(), ref)
            row = {"shape": spec, "config": name, "us": round(us, 2), "pct_copy": round(pct_of_copy(nbytes, us, copy), 1),
                   "rel_err": err, "ok": err <= 1.5e-2}
            rows.append(row)
            print(f"{spec:>16} {name:<34} {us:8.2f} us {row['pct_copy']:5.1f}% copy  err {err:.1e}"
                  f"{'' if row['ok'] else '  MISMATCH'}  [{time.perf_counter() - t0:.0f}s]", flush=True)

        if n % 64 == 0:
            try:
                made = [lora_shrink_call(x, w) for x in xs]
                timed("lora-triton-one-segment", made, made[0])
            except Exception as err:  # noqa: BLE001 - a probe records what fails and goes on
                rows.append({"shape": spec, "config": "lora-triton", "error": f"{type(err).__name__}: {err}"[:300]})
        for cfg in configs(n):
            name = "{}_m{}w{}_k{}s{}_split{}".format(*cfg)
            if time.perf_counter() - t0 > args.budget_s:
                rows.append({"shape": spec, "config": name, "error": "not run: the time budget was spent"})
                continue
            try:
                made = [launcher(x, w, cfg, sms) for x in xs]

                def first_out(made=made):
                    made[0][0]()
                    torch.cuda.synchronize()
                    return made[0][1]
                timed(name, [c for c, _ in made], first_out)
            except Exception as err:  # noqa: BLE001
                msg = f"{type(err).__name__}: {err}".splitlines()[0][:300]
                rows.append({"shape": spec, "config": name, "error": msg})
                print(f"{spec:>16} {name:<34} failed: {msg}", flush=True)
                if os.environ.get("PROBE_TRACEBACK"):
                    traceback.print_exc()
    if args.json:
        write_rows(args.json, copy, rows, sms=sms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
