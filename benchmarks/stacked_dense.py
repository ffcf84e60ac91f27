"""Issue 16 / 17 (decode expands): the decode expand as one dense GEMM over the batch's stacked adapters, timed in
cuBLAS as a yardstick.

A decode expand's 64-row block holds rows of many adapters. Written with the adapters stacked along K, slice j of
the expand is one dense GEMM, ``base[:, lo_j:hi_j] += X_j @ B_j``:

* ``X_j`` (tokens, L * r): row t holds ``scaling[w] * x[t, j*r : j*r + rank[w]]`` in columns ``w*r ..`` of its
  own slot w, zeros elsewhere (the block-diagonal layout of x);
* ``B_j`` (L * r, hi_j - lo_j): rows ``w*r + k`` hold ``b[w, lo_j:hi_j, k]`` for k < rank[w], zeros past the rank.

No adapter loop, no row masks in the kernel: one wgmma chain with K = L * r (128 at 8 adapters of rank 16). This
script times ``addmm_`` (cuBLAS) on those operands the way ``python -m lora compare`` headlines decode (one call
among many in one CUDA graph, eight input sets rotating), beside the bytes a LoRA expand must move, so a GPU run
says what the stacked formulation costs before a kernel is built for it (benchmarks/probe_s42_adapters.sh runs
it). It times the GEMMs only: building ``X_j`` (the split shrink's sum kernel could write it) is not included.
:func:`stacked_operands` is checked against the float64 oracle on the CPU (tests/lora/test_stacked_dense.py).

    PYTHONPATH=.:benchmarks python benchmarks/stacked_dense.py --json $OUT/stacked_dense.json
"""

from __future__ import annotations

import argparse
import sys

import torch

CASES = "llama3-8b-r16-decode-64,llama3-8b-r16-decode-256,llama3-8b-r64-decode-64,llama3-8b-r64-decode-256"
OPS = "expand,expand_qkv,expand_gate_up"


def stacked_operands(comp, x: torch.Tensor, b: torch.Tensor, offsets) -> list:
    """[(X_j, B_j, lo_j, hi_j)] for each slice j of an expand of ``comp`` (see the module), in ``x``'s dtype:
    ``x`` (tokens, stack * max_r), ``b`` (L, N, max_r), ``offsets`` the slice boundaries. NaN tails of x and b
    (columns past a slot's rank, rows without work) are never read into the operands."""
    L, R = comp.num_lora, comp.max_r
    t, dev = x.shape[0], x.device
    offsets = [int(v) for v in offsets]
    slot = torch.full((t,), -1, dtype=torch.long)
    for start, end, w, _r, _s in comp.work():
        slot[start:end] = w
    rows = (slot >= 0).nonzero().flatten().to(dev)
    w = slot.to(dev)[rows]
    ranks = torch.tensor(comp.lora_ranks, dtype=torch.long, device=dev)
    scale = torch.tensor(comp.scalings, dtype=torch.float32, device=dev)[w][:, None]
    k = torch.arange(R, device=dev)
    in_rank = k[None, :] < ranks[:, None]  # (L, R) which of a slot's R columns are inside its rank
    zero = torch.zeros((), device=dev)
    out = []
    for j, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
        # the contract's packed layout: slice j of a row of slot w is x[:, j*rank[w] : (j+1)*rank[w]]
        cols = (j * ranks[w][:, None] + k[None, :]).clamp_max(x.shape[1] - 1)
        xs = torch.zeros(t, L, R, dtype=torch.float32, device=dev)
        xs[rows, w] = torch.where(in_rank[w], x[rows].float().gather(1, cols) * scale, zero)
        bj = torch.where(in_rank[:, :, None], b[:, lo:hi, :].float().permute(0, 2, 1), zero)  # (L, R, n)
        out.append((xs.reshape(t, L * R).to(x.dtype), bj.reshape(L * R, hi - lo).contiguous().to(x.dtype), lo, hi))
    return out


def stacked_expand(ops: list, base: torch.Tensor) -> torch.Tensor:
    """``base`` + the stacked GEMMs of :func:`stacked_operands`, in float64 (the check against the oracle)."""
    out = base.double()
    for xj, bj, lo, hi in ops:
        out[:, lo:hi] += xj.double() @ bj.double()
    return out


def stacked_bytes(comp, ops: list) -> int:
    """Bytes the dense GEMMs move at the operands' dtype: X_j and B_j read, base's slice read and written."""
    return sum(xj.numel() * xj.element_size() + bj.numel() * bj.element_size()
               + 2 * xj.shape[0] * (hi - lo) * xj.element_size() for xj, bj, lo, hi in ops)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cases", default=CASES)
    p.add_argument("--ops", default=OPS)
    p.add_argument("--json")
    args = p.parse_args(argv)

    from lora import testing as T
    from lora.compare import cases as CS
    from lora.compare import timing as TM
    from probe_record import copy_bandwidth, pct_of_copy, write_rows  # benchmarks/: the script's directory

    dev = torch.device("cuda")
    copy = copy_bandwidth(dev)
    budget = TM.Budget(5.0, 20.0, 5, 200)
    rows = []
    for case in CS.select_cases(args.cases.split(",")):
        comp = case.composition(0)
        for oname in args.ops.split(","):
            op = CS.OPS[oname].resolve(case.shape)
            seed = CS.case_seed(0, case.name, op.name)
            sets = []
            for i in range(8):
                t = T.make_inputs(op, comp, torch.bfloat16, dev, seed + i)
                offsets = t["offsets"].tolist() if "offsets" in t else [0, op.n]
                sets.append((stacked_operands(comp, t["x"], t["b"], offsets), t["base"]))
                if i == 0:  # the first set against the float64 oracle, on the rows with work
                    ref = T.ref_expand(comp, t["x"], t["b"], offsets, t["base"])
                    got = stacked_expand(sets[0][0], t["base"])
                    worked = ~torch.tensor(comp.idle_rows(), device=dev)
                    err = ((got[worked] - ref[worked]).abs().max() / ref[worked].abs().max()).item()
            ops0 = sets[0][0]

            def call(s):
                ops_, base = s
                for xj, bj, lo, hi in ops_:
                    base[:, lo:hi].addmm_(xj, bj)

            fns = [lambda s=s: call(s) for s in sets]
            _, together = TM.time_cuda_graph(fns, dev, budget, batched=True)
            nbytes = stacked_bytes(comp, ops0)
            row = {"case": case.name, "op": oname, "backend": "cublas-stacked", "us": together.median_us,
                   "bytes": nbytes, "pct_copy": pct_of_copy(nbytes, together.median_us, copy), "K": ops0[0][0].shape[1],
                   "rel_error": err}
            rows.append(row)
            print(f"{case.name:26s} {oname:14s} K={row['K']:4d}  {row['us']:7.2f} us  {nbytes / 1e6:6.2f} MB  "
                  f"{row['pct_copy']:5.1f}% of copy  rel.err {err:.1e}", flush=True)
    if args.json:
        write_rows(args.json, copy, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
