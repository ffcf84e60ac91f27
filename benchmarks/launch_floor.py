"""Issue 17 (decode): what the simplest kernels cost inside a CUDA graph, against the issue's decode bound.

The issue asks each decode op's device time inside a graph (``cuda-graph-batched``: one call among many
in one graph) to be at most ``2 us + min bytes / (0.8 x copy bandwidth)``. This script times, the same
way and with the same input rotation as ``python -m lora compare``, kernels that do less than any LoRA
op can:

* ``empty``: one program that does nothing (the graph's per-kernel floor);
* ``read``: ``P`` programs that each sum a contiguous piece of a buffer of ``B`` bytes (one streaming
  pass, no dependent load) and store one float;
* ``read+ticket``: the same, then the split-K finish a deterministic decode shrink needs: each program
  stores its partial, takes a ticket from a counter, and the last one reads every partial back and
  stores their sum (two dependent round trips after the stream).

Session 24 (no device that session; for the next one): the ``read`` kernels above stream their piece in
1,024-element steps, one round trip each, so they are not a floor for reading. These issue every load of a
program at once:

* ``one-pass xP``: each of P programs loads its whole piece (a power of two of elements) in one ``tl.load``;
* ``one-pass+ticket xP``: the same, then the split-K finish;
* ``chain xP``: the shape of a decode kernel without split-K: a program loads an index (the metadata), then
  its whole piece at the place that index gives (a dependent load), then stores: two round trips;
* ``tma xP``: each program loads its piece as one 2-D block through a host-built tensor descriptor (TMA on
  Hopper), if this Triton has them.

With ``--pallas`` (issue 16's decode rows), Mosaic GPU kernels launched the way the pallas backend
launches its own (``lora.pallas.interop``: lowered here, one ctypes call on torch's stream):

* ``pallas empty``: one CTA of one warpgroup that does nothing;
* ``pallas empty 200KB``: the same with 200 KB of shared memory and 16 barriers allocated (as the decode
  kernels' CTAs have);
* ``pallas tma xP``: P CTAs, each a dependent chain of one TMA load of a 64 x 128 bf16 tile, its wait, and
  a TMA store of it (the shortest round trip a decode kernel's first load and last store make).

    PYTHONPATH=. python benchmarks/launch_floor.py --json $OUT/launch_floor.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import triton
import triton.language as tl

from lora.compare import timing as TM


@triton.jit
def _empty(out_ptr):
    pass


@triton.jit
def _piece_sum(src, pid, n_per, BLOCK: tl.constexpr):
    """The sum of program pid's piece of src (n_per elements), read in one streaming pass."""
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(0, n_per, BLOCK):
        offs = pid * n_per + i + tl.arange(0, BLOCK)
        acc += tl.load(src + offs).to(tl.float32)
    return tl.sum(acc, 0)


@triton.jit
def _read(src, out, n_per, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    tl.store(out + pid, _piece_sum(src, pid, n_per, BLOCK))


@triton.jit
def _read_ticket(src, parts, cnt, out, n_per, P: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    tl.store(parts + pid, _piece_sum(src, pid, n_per, BLOCK))
    ticket = tl.atomic_add(cnt, 1, sem="acq_rel")
    if ticket == P - 1:
        total = tl.sum(tl.load(parts + tl.arange(0, P), volatile=True), 0)
        tl.store(out, total)
        tl.store(cnt, 0)


@triton.jit
def _one_pass(src, out, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    x = tl.load(src + pid * BLOCK + tl.arange(0, BLOCK))
    tl.store(out + pid, tl.sum(x.to(tl.float32), 0))


@triton.jit
def _one_pass_ticket(src, parts, cnt, out, P: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    x = tl.load(src + pid * BLOCK + tl.arange(0, BLOCK))
    tl.store(parts + pid, tl.sum(x.to(tl.float32), 0))
    ticket = tl.atomic_add(cnt, 1, sem="acq_rel")
    if ticket == P - 1:
        tl.store(out, tl.sum(tl.load(parts + tl.arange(0, P), volatile=True), 0))
        tl.store(cnt, 0)


@triton.jit
def _chain(src, index, out, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    at = tl.load(index + pid).to(tl.int64)  # where this program's piece is: known only after a load
    x = tl.load(src + at * BLOCK + tl.arange(0, BLOCK))
    tl.store(out + pid, tl.sum(x.to(tl.float32), 0))


@triton.jit
def _tma_read(desc, out, ROWS: tl.constexpr, COLS: tl.constexpr):
    pid = tl.program_id(0)
    x = desc.load([pid * ROWS, 0])
    tl.store(out + pid, tl.sum(tl.sum(x.to(tl.float32), 1), 0))


def one_pass_kernels(dev, progs: int, per: int):
    """(name, bytes, make) of the one-round-trip reads: ``progs`` programs of ``per`` bf16 elements each."""
    n = progs * per

    def one():
        src = torch.randn(n, device=dev, dtype=torch.bfloat16)
        o = torch.empty(progs, device=dev)
        return lambda: _one_pass[(progs,)](src, o, BLOCK=per)

    def ticket():
        src = torch.randn(n, device=dev, dtype=torch.bfloat16)
        parts = torch.empty(progs, device=dev)
        cnt = torch.zeros(1, device=dev, dtype=torch.int32)
        o = torch.empty(1, device=dev)
        return lambda: _one_pass_ticket[(progs,)](src, parts, cnt, o, P=progs, BLOCK=per)

    def chain():
        src = torch.randn(n, device=dev, dtype=torch.bfloat16)
        index = torch.randperm(progs, device=dev, dtype=torch.int32)
        o = torch.empty(progs, device=dev)
        return lambda: _chain[(progs,)](src, index, o, BLOCK=per)

    def tma():
        from triton.tools.tensor_descriptor import TensorDescriptor

        cols = 128
        src = torch.randn(n // cols, cols, device=dev, dtype=torch.bfloat16)
        desc = TensorDescriptor.from_tensor(src, [per // cols, cols])
        o = torch.empty(progs, device=dev)
        return lambda: _tma_read[(progs,)](desc, o, ROWS=per // cols, COLS=cols)

    return [(f"one-pass x{progs}", 2 * n, one), (f"one-pass+ticket x{progs}", 2 * n, ticket),
            (f"chain x{progs}", 2 * n, chain), (f"tma x{progs}", 2 * n, tma)]


def _pallas_kernels(dev):
    """(name, bytes, make) of the Mosaic GPU floor kernels, each launched through lora.pallas.interop."""
    from lora.pallas import interop

    interop._import_jax()
    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    from lora.pallas import common as C

    sds = jax.ShapeDtypeStruct
    flag = sds((16,), jnp.int32)

    def empty_fn(buf):
        return C.mgpu_call(lambda b_ref, o_ref: None, [buf], out_type=flag, grid=(1,), grid_names=("g",),
                           aliases={0: 0})

    def empty_smem_fn(buf):
        def body(b_ref, o_ref, big, bars):
            del b_ref, o_ref, big, bars

        return C.mgpu_call(body, [buf], out_type=flag, grid=(1,), grid_names=("g",), aliases={0: 0},
                           scratch=[plgpu.SMEM((200 * 1024 // 2,), jnp.bfloat16), plgpu.Barrier(num_barriers=16)])

    def tma_fn(progs):
        def fn(src):
            def body(src_ref, out_ref, tile, bar):
                g = lax.axis_index("g")
                plgpu.copy_gmem_to_smem(src_ref.at[pl.ds(g * 64, 64)], tile, bar.at[0])
                plgpu.barrier_wait(bar.at[0])
                plgpu.copy_smem_to_gmem(tile, out_ref.at[pl.ds(g * 64, 64)])
                plgpu.wait_smem_to_gmem(0)

            return C.mgpu_call(body, [src], out_type=sds((progs * 64, 128), jnp.bfloat16), grid=(progs,),
                               grid_names=("g",), scratch=[plgpu.SMEM((64, 128), jnp.bfloat16, transforms=C.tiled(
                                   jnp.bfloat16, 128)), plgpu.Barrier(num_barriers=1)])

        return fn, [sds((progs * 64, 128), jnp.bfloat16)]

    def compiled(fn, specs):
        asm, aliases = interop.lower_to_mosaic(fn, specs)
        k = interop.MosaicKernel(asm, aliases, len(specs), name="floor")
        k._compile()
        return k

    def launcher(k, ins, outs):
        def go(keep=(ins, outs)):  # (keep: the tensors live as long as the launch that reads their pointers)
            k.launch([t.data_ptr() for t in ins], [None if t is None else t.data_ptr() for t in outs],
                     torch.cuda.current_stream(dev).cuda_stream)

        return go

    k_empty = compiled(empty_fn, [flag])
    k_empty_smem = compiled(empty_smem_fn, [flag])

    def make_empty(k):
        def make():
            buf = torch.zeros(16, device=dev, dtype=torch.int32)
            return launcher(k, [buf], [None])
        return make

    out = [("pallas empty", 0, make_empty(k_empty)), ("pallas empty 200KB", 0, make_empty(k_empty_smem))]
    for progs in (1, 64, 132):
        k = compiled(*tma_fn(progs))

        def make(k=k, progs=progs):
            src = torch.randn(progs * 64, 128, device=dev, dtype=torch.bfloat16)
            dst = torch.empty_like(src)
            return launcher(k, [src], [dst])

        out.append((f"pallas tma x{progs}", 2 * progs * 64 * 128 * 2, make))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    p.add_argument("--pallas", action="store_true", help="also time Mosaic GPU kernels (needs jax)")
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    budget = TM.Budget(warmup_ms=20, rep_ms=200, min_reps=20, max_reps=400)
    copy = TM.copy_bandwidth(dev)["gbps"]
    rows = []

    def run(name, nbytes, make):
        sets = TM.rotation_sets(max(nbytes, 1), dev)
        try:
            fns = [make() for _ in range(sets)]
            _, batched = TM.time_cuda_graph(fns, dev, budget)
        except Exception as exc:  # noqa: BLE001  (a kernel this Triton cannot build: say so, go on)
            rows.append(dict(kernel=name, bytes=nbytes, error=f"{type(exc).__name__}: {exc}"[:300]))
            print(f"{name:28s} {nbytes / 1e6:6.2f} MB  failed: {rows[-1]['error']}", flush=True)
            return
        bound = 2.0 + nbytes / (0.8 * copy * 1e3)
        rows.append(dict(kernel=name, bytes=nbytes, us=batched.median_us, bound_us=bound))
        print(f"{name:28s} {nbytes / 1e6:6.2f} MB  {batched.median_us:6.2f} us  (issue 17 bound {bound:5.2f} us)",
              flush=True)

    def empty():
        o = torch.zeros(1, device=dev)
        return lambda: _empty[(1,)](o)

    run("empty", 0, empty)
    for mb in (0.5, 1.5, 3.0):
        for progs in (64, 128):
            n = int(mb * 1e6 / 2) // (progs * 1024) * (progs * 1024)

            def read(n=n, progs=progs):
                src = torch.randn(n, device=dev, dtype=torch.bfloat16)
                o = torch.empty(progs, device=dev)
                return lambda: _read[(progs,)](src, o, n // progs, BLOCK=1024)

            def ticket(n=n, progs=progs):
                src = torch.randn(n, device=dev, dtype=torch.bfloat16)
                parts = torch.empty(progs, device=dev)
                cnt = torch.zeros(1, device=dev, dtype=torch.int32)
                o = torch.empty(1, device=dev)
                return lambda: _read_ticket[(progs,)](src, parts, cnt, o, n // progs, P=progs, BLOCK=1024)

            run(f"read x{progs}", n * 2, read)
            run(f"read+ticket x{progs}", n * 2, ticket)
    for progs, per in ((128, 2048), (128, 4096), (128, 8192), (64, 8192), (256, 4096)):
        for name, nbytes, make in one_pass_kernels(dev, progs, per):
            run(name, nbytes, make)
    if args.pallas:
        for name, nbytes, make in _pallas_kernels(dev):
            run(name, nbytes, make)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(dev), copy_gbps=copy, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
