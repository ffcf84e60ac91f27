"""Command line: ``python -m lora list`` and ``python -m lora compare``.

Until the full comparison lands, ``compare`` checks the torch reference in float32 against a float64
computation of the contract on one default case and prints the relative error of each op.
"""

from __future__ import annotations

import argparse
import sys

import torch

from lora import LoRABatchInfo, available_backends, get_backend_from_name


def _list() -> int:
    for s in available_backends():
        state = "available" if s.available else f"unavailable: {s.reason}"
        print(f"{s.name:8s} {state}{'  -- ' + s.description if s.description else ''}")
    return 0


def _compare() -> int:
    gen = torch.Generator().manual_seed(0)
    seg_lens, slots, ranks = [5, 0, 9, 3], [1, 0, 1, 2], [8, 0, 4]
    bi = LoRABatchInfo.from_segments(seg_lens, slots, ranks, [0.5, 1.0, 2.0])
    s, k, n = sum(seg_lens), 48, 40
    x = torch.randn(s, k, generator=gen)
    a = torch.randn(3, 8, k, generator=gen) / k**0.5
    b = torch.randn(3, n, 8, generator=gen)
    backend = get_backend_from_name("torch")("torch", bi)
    got = backend.run_lora_b_sgemm(backend.run_lora_a_sgemm(x, a), b)
    ref = torch.zeros(s, n, dtype=torch.float64)
    for (lo, hi), w in zip(zip(bi.seg_indptr.tolist(), bi.seg_indptr.tolist()[1:]), slots):
        r = ranks[w]
        ref[lo:hi] = bi.scalings[w].item() * (x[lo:hi].double() @ a[w, :r].double().T) @ b[w, :, :r].double().T
    err = ((got.double() - ref).norm() / ref.norm()).item()
    ok = err <= 1e-3
    print(f"torch reference, shrink+expand, float32: rel error {err:.2e} ({'ok' if ok else 'FAIL'})")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora")
    parser.add_argument("command", choices=["list", "compare"])
    args = parser.parse_args(argv)
    return _list() if args.command == "list" else _compare()


if __name__ == "__main__":
    sys.exit(main())
