"""Issue 16 (decode step): what a backend's once-per-batch metadata costs on the GPU.

For each backend and decode batch (64 and 256 one-token segments, 8 adapters of rank 16), ``prepare`` alone
is captured in CUDA graphs and timed (one call among many in one graph, as ``lora compare`` headlines decode),
and its kernels are counted under torch.profiler (eager). The decode step (``lora compare --step``) runs
``prepare`` once per step inside its graph, so this is part of every step's time.

    PYTHONPATH=. python benchmarks/prepare_cost.py [--backends triton,pallas] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import lora  # noqa: E402
from lora import testing as T  # noqa: E402
from lora.compare import timing as TM  # noqa: E402


def kernels(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="triton,pallas")
    p.add_argument("--json")
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    rng = np.random.default_rng(0)
    rows = []
    for tokens in (64, 256):
        comp = T.decode_composition(rng, tokens, 8, 16)
        bi = T.batch_info(comp, dev)
        for name in args.backends.split(","):
            be = lora.get_backend_from_name(name)(name, bi)
            fn = lambda be=be, bi=bi: be.prepare(bi)  # noqa: E731
            _, together = TM.time_cuda_graph([fn], dev, TM.Budget(20, 200, 20, 2000))
            row = {"backend": name, "tokens": tokens, "prepare_us": together.median_us, "kernels": kernels(fn)}
            rows.append(row)
            print(f"{name:8s} decode-{tokens:<4d} prepare {row['prepare_us']:8.1f} us  {row['kernels']} kernels", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows, "command": " ".join(sys.argv)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
