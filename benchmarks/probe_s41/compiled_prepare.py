"""Session 41 trial (issue 16): the pallas torch executor's metadata builder compiled by ``torch.compile``.

The one builder (:func:`lora.pallas.meta.build`) runs 40 torch ops a decode batch, each a kernel in a captured
decode step (H100: 114-119 us a batch, about 3.5 us of each of 32 layers). XLA fuses the same builder for the JAX
executor; here inductor fuses it for the torch executor. This script patches ``lora.pallas.meta.build`` (CUDA
torch executors only) with a compiled copy, checks it bitwise against the eager builder on random batches, then runs
one of:

    PYTHONPATH=. python benchmarks/probe_s41/compiled_prepare.py check
    PYTHONPATH=. python benchmarks/probe_s41/compiled_prepare.py prepare [prepare_cost.py args]
    PYTHONPATH=. python benchmarks/probe_s41/compiled_prepare.py step [lora compare args]

The record of calls 1-4 of ``benchmarks/results/h100/s41``. Since then the torch executor compiles the builder
itself (``lora/pallas/fused_meta.py``): measure that with ``benchmarks/probe_s41_fused.sh``, not with this patch.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lora.pallas import backend as B  # noqa: E402
from lora.pallas import meta as M  # noqa: E402

torch._dynamo.config.recompile_limit = 256  # dynamic=False: one graph per batch shape
torch._dynamo.config.accumulated_recompile_limit = 4096
_eager = M.build
_compiled: dict = {}
COMPILE_S = []


class _Xp(B.TorchExecutor):
    """The torch namespace with nothing kept between calls (inductor folds the layout-only arrays)."""

    def const(self, key, fn):
        return fn()


def build(xp, seg_indptr, weight_indices, lora_ranks, **kw):
    if not isinstance(xp, B.TorchExecutor) or xp.device.type != "cuda":
        return _eager(xp, seg_indptr, weight_indices, lora_ranks, **kw)
    f = _compiled.get(xp.device)
    if f is None:
        nx = _Xp(xp.device, launcher=lambda *a, **k: None)

        def f(s, w, r, bs, num_lora, groups, units):
            return _eager(nx, s, w, r, bs=bs, num_lora=num_lora, groups=groups, units=units)

        f = _compiled[xp.device] = torch.compile(f, fullgraph=True, dynamic=False)
    t0 = time.perf_counter()
    out = f(seg_indptr, weight_indices, lora_ranks, kw["bs"], kw["num_lora"], kw["groups"], kw.get("units", True))
    COMPILE_S.append(time.perf_counter() - t0)
    return out


def check(n: int = 12) -> None:
    from lora import testing as T

    dev = torch.device("cuda")
    rng = np.random.default_rng(1)
    ex = B.TorchExecutor(dev, launcher=lambda *a, **k: None)
    bad = 0
    for i in range(n):
        tokens = int(rng.choice([1, 7, 64, 200, 256]))
        comp = T.decode_composition(rng, tokens, 8, int(rng.choice([16, 64])))
        bi = T.batch_info(comp, dev)
        groups = max(1, -(-tokens // 64))
        kw = dict(bs=bi.bs, num_lora=bi.num_lora, groups=groups, units=bool(i % 2))
        a = _eager(ex, bi.seg_indptr, bi.weight_indices, bi.lora_ranks, **kw)
        b = build(ex, bi.seg_indptr, bi.weight_indices, bi.lora_ranks, **kw)
        if not torch.equal(a, b):
            bad += 1
            if bad <= 3:
                d = (a != b).nonzero().flatten().tolist() if a.shape == b.shape else []
                print(f"batch {i} {kw} tokens={tokens}: shapes {tuple(a.shape)} {tuple(b.shape)} dtypes {a.dtype} "
                      f"{b.dtype}; {len(d)} entries differ, first {d[:8]}: eager {a[d[:8]].tolist()} compiled "
                      f"{b[d[:8]].tolist()}", flush=True)
    print(f"compiled builder: {n - bad} of {n} random decode batches bitwise equal to the eager builder; "
          f"calls took {min(COMPILE_S):.4f}-{max(COMPILE_S):.1f} s (first ones compile)", flush=True)
    if bad:
        raise SystemExit(1)


def main() -> int:
    mode, rest = sys.argv[1], sys.argv[2:]
    check()
    M.build = build
    if mode == "check":
        return 0
    if mode == "prepare":
        import prepare_cost

        return prepare_cost.main(rest)
    if mode == "step":
        from lora.__main__ import main as lora_main

        return lora_main(["compare", "--step", *rest])
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main())
