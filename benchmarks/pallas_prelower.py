"""Lower the pallas kernels a GPU run will launch, ahead of it, on any machine with jax (no GPU needed).

Lowering a Mosaic GPU kernel (JAX tracing and the Mosaic passes) takes seconds per configuration and a
minute or more for the persistent expand kernels; the GPU machine then only compiles. The modules land in
the lowered-kernel cache (:func:`lora.pallas.interop.cache_dir`, ``$KERNELSTACK_PALLAS_CACHE_DIR``), which
the GPU run reads when it is pointed at the same directory. Only plain Python and jax are imported here:
the configurations are the torch executor's plans (``tail=True``) for the cases' compositions, bf16.

    JAX_PLATFORMS=cpu KERNELSTACK_PALLAS_CACHE_DIR=.pallas-cache .venv-jax/bin/python \\
        benchmarks/pallas_prelower.py --cases 'llama3-8b-r16-prefill-8k' --ops shrink1,qkv
"""

from __future__ import annotations

import argparse
import sys
import time


def configs(case, op_name: str, dtype: str = "bfloat16", tuning=None) -> list:
    """(kind, cfg) of every kernel the pallas torch executor launches for ``op_name`` on ``case``
    (with ``tuning``, a :class:`lora.pallas.tiling.Tuning`, as ``pallas:<name>`` backends run)."""
    from lora.compare import cases as CS
    from lora.pallas import plan as P
    from lora.pallas.tiling import DEFAULT_TUNING, padded_tokens

    tuning = tuning or DEFAULT_TUNING

    comp = case.composition(0)
    op = CS.OPS[op_name].resolve(case.shape)
    bpad, L, r = padded_tokens(comp.tokens), len(comp.lora_ranks), comp.max_r
    out = []

    def shrink(result):
        out.extend(P.plan_shrink(bpad, op.k, r, op.stack, L, dtype, tail=True, result=result, tuning=tuning).kernels)

    def expand(internal):
        out.extend(P.plan_expand(bpad, op.n, r, op.stack, L, dtype, dtype, dtype, internal=internal, tail=True,
                                 tuning=tuning).kernels)

    if op.kind == "shrink":
        shrink(True)
    elif op.kind == "expand":
        expand(False)
    else:
        shrink(False)
        expand(True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cases", required=True, help="comma-separated case names or globs (lora.compare.cases); '' for none")
    p.add_argument("--shape", action="append", default=[], metavar="SPEC",
                   help="a case from a shape spec, as `python -m lora compare --shape` (repeatable)")
    p.add_argument("--ops", required=True)
    p.add_argument("--tunings", default="", help="comma-separated pallas_tunings.TUNINGS names (the defaults too)")
    args = p.parse_args(argv)
    from pallas_tunings import TUNINGS

    from lora.compare import cases as CS
    from lora.pallas import interop
    from lora.pallas.tiling import Tuning

    tunings = [None] + [Tuning(**TUNINGS[name]) for name in args.tunings.split(",") if name]

    print(f"cache: {interop.cache_dir()}", flush=True)
    seen = {}
    cases = (CS.select_cases(args.cases.split(",")) if args.cases else []) + [CS.parse_shape_spec(s) for s in args.shape]
    for case in cases:
        for op in args.ops.split(","):
            for tuning in tunings:
                try:
                    kcs = configs(case, op, tuning=tuning)
                except ValueError as e:  # a Tuning that does not fit this shape (the backend raises the same)
                    print(f"skipped {case.name} {op} {tuning}: {e}", flush=True)
                    continue
                for kc in kcs:
                    seen.setdefault(kc, f"{case.name} {op}")
    t0 = time.perf_counter()
    for (kind, cfg), where in seen.items():
        t = time.perf_counter()
        before = interop.stats()["lowered"]
        interop.lower(kind, cfg)
        how = "lowered" if interop.stats()["lowered"] > before else "cached"
        print(f"[{time.perf_counter() - t0:6.1f}s] {how} {kind:7s} {time.perf_counter() - t:5.1f}s  ({where})", flush=True)
    print(f"{len(seen)} configurations: {interop.stats()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
