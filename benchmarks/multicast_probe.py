"""Is a rank-64 shrink bound by re-reading its weights from L2? A probe with jax's own Hopper matmul.

The rank-64 prefill shrinks (x: s x K, weights: N x K with N = 64 / 128 / 192) reach 42-57% of copy
bandwidth with either backend. Their DRAM bytes are x's; but every 64- or 128-row tile of x streams the
whole weight matrix through shared memory as well (from L2: 1.5 MB for the QKV shrink, three times the
0.5 MB of a 64-row x tile). The suspicion: the SMs' reads from L2, not DRAM, bound these kernels.

The test: jax's ``pallas/ops/gpu/hopper_matmul_mgpu.py`` (warp-specialized TMA pipeline into wgmma,
persistent over the SMs) on the dense shape ``x (M, K) @ W.T (K, N)``, with and without a cluster of two
CTAs along M that multicast each weight tile (one L2 read feeds both CTAs' shared memory). If L2 reads
bound the shrink, the cluster variant is markedly faster at the same tiles; if not, about the same.

    XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/multicast_probe.py --json $OUT/multicast.json

CPU-only check of every configuration's Mosaic lowering (no GPU): ``--lower-only`` (``JAX_PLATFORMS=cpu``).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax.experimental.pallas import mosaic_gpu as plgpu

try:
    import absl.testing  # noqa: F401 - jax's test_util (imported, unused, by the kernel module) needs it
except ImportError:
    import types

    sys.modules.setdefault("jax._src.test_util", types.ModuleType("jax._src.test_util"))
from jax.experimental.pallas.ops.gpu import hopper_matmul_mgpu as hm  # noqa: E402

SMS = 132
COPY_GBS = 4150.0  # the H200's measured copy bandwidth (benchmarks/results/h200)
D = hm.MatmulDimension

#: (K, N) of the prefill shrinks of a Llama-3-8B layer at rank 64
SHAPES = [(4096, 192), (4096, 128), (4096, 64), (14336, 64)]


def configs(n: int):
    """(name, TuningConfig): a CTA of 128 rows (two warpgroups along M, each 64 x N), with and without
    the cluster of two along M; a CTA of 64 rows (two warpgroups along N) likewise, where each half of N
    is whole 64-column tiles of W's shared-memory layout (the kernel slices W there: N = 128, not 64 or 192)."""
    out = []
    for tk, steps in ((64, 4), (64, 5), (128, 2), (128, 3)):
        for cl in (None, D.M):
            tag = "c1" if cl is None else "c2"
            out.append((f"m128_n{n}_k{tk}_s{steps}_{tag}", hm.TuningConfig(
                tile_m=64, tile_n=n, tile_k=tk, max_concurrent_steps=steps, epi_tile_m=64, epi_tile_n=None,
                grid_minor_dim=D.M, grid_tile_width=1, wg_dimension=D.M, cluster_dimension=cl)))
            if n % 128 == 0:
                out.append((f"m64_n{n}_k{tk}_s{steps}_{tag}", hm.TuningConfig(
                    tile_m=64, tile_n=n // 2, tile_k=tk, max_concurrent_steps=steps, epi_tile_m=64,
                    epi_tile_n=None, grid_minor_dim=D.M, grid_tile_width=1, wg_dimension=D.N,
                    cluster_dimension=cl)))
    return out


def matmul_fn(m: int, n: int, cfg):
    cluster = 1 + (cfg.cluster_dimension is not None)
    params = plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup)
    k = plgpu.kernel(
        functools.partial(hm.kernel, config=cfg),
        out_type=jax.ShapeDtypeStruct((m, n), jnp.bfloat16),
        grid=(SMS // cluster,), grid_names=("cluster_grid",),
        cluster=(cluster,), cluster_names=("cluster",),
        num_threads=3, thread_name="wg", compiler_params=params)
    return lambda a, b: k(a, b, None)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--m", default="8448,16896", help="row counts: 132 x 64 and 132 x 128 (one tile per SM)")
    p.add_argument("--json")
    p.add_argument("--lower-only", action="store_true")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--shapes", help="K x N pairs, e.g. 2048x192,2048x128 (default: the rank-64 shrinks)")
    p.add_argument("--clusters", default="1,2", help="cluster sizes to time (1: none, 2: along M)")
    args = p.parse_args()
    rows = []
    shapes = [tuple(map(int, kn.split("x"))) for kn in args.shapes.split(",")] if args.shapes else SHAPES
    clusters = {"1": None, "2": D.M}
    want = [clusters[c] for c in args.clusters.split(",")]
    for m, (kdim, n) in ((m, s) for m in map(int, args.m.split(",")) for s in shapes):
        sds = (jax.ShapeDtypeStruct((m, kdim), jnp.bfloat16), jax.ShapeDtypeStruct((kdim, n), jnp.bfloat16))
        min_bytes = 2 * (m * kdim + kdim * n + m * n)
        floor_us = min_bytes / (COPY_GBS * 1e3)
        if not args.lower_only:
            ka, kb = jax.random.split(jax.random.key(kdim + n))
            a = jax.random.normal(ka, (m, kdim), jnp.bfloat16)
            b = (jax.random.normal(kb, (kdim, n), jnp.float32) / kdim ** 0.5).astype(jnp.bfloat16)
            ref = jnp.dot(a, b, preferred_element_type=jnp.float32)
        for name, cfg in configs(n):
            if cfg.cluster_dimension not in want:
                continue
            row = {"k": kdim, "n": n, "m": m, "config": name, "floor_us": round(floor_us, 2)}
            t0 = time.perf_counter()
            try:
                f = jax.jit(matmul_fn(m, n, cfg))
                if args.lower_only:
                    from lora.pallas.interop import _hopper_target

                    with _hopper_target():
                        f.trace(*sds).lower(lowering_platforms=("cuda",))
                    row["lowered"] = True
                else:
                    out, times = hm.profiler.measure(f, iterations=args.iters)(a, b)
                    err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref)))
                    us = statistics.median(times) * 1e3
                    row.update(us=round(us, 2), pct_copy=round(100 * floor_us / us, 1), rel_err=err)
            except Exception as e:  # noqa: BLE001 - a probe: record and go on
                row["error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            row["s"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(jax.devices()[0]), "copy_gbs_assumed": COPY_GBS, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
