"""On-paper cost of the LoRA collective of one tensor-parallel transformer layer.

Per layer, the column-parallel LoRA modules (QKV, gate-up) need no collective; the two
row-parallel ones (o, down) each all-reduce one ``(tokens, max_r)`` shrink result in
``reduce="all_reduce"`` mode, and nothing in ``reduce="fold"`` mode (the base layer's own all-reduce
carries the update). A ring all-reduce of ``B`` bytes over ``tp`` ranks sends and receives
``2 (tp-1)/tp * B`` per rank; at a bus bandwidth ``busbw`` (NCCL's convention) it takes
``2 (tp-1)/tp * B / busbw`` plus a fixed latency. Both figures are assumptions, stated with every
result (``python -m lora.parallel.cost``); ``benchmarks/tp_bench.py`` measures them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = ["ModelShape", "LLAMA3_8B", "LLAMA3_70B", "LayerCollective", "layer_collectives", "ring_allreduce_s"]

#: NVLink4 (H100 / H200): 18 links x 25 GB/s per direction = 450 GB/s per direction per GPU.
NVLINK4_BUSBW = 450e9
#: An assumed NCCL all-reduce latency for messages of a few KiB to a MiB on 8 NVLink GPUs (LL / LL128
#: protocols, NVLS off); measured per machine by benchmarks/tp_bench.py.
ASSUMED_LATENCY_S = 10e-6


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    inter: int
    layers: int


LLAMA3_8B = ModelShape("llama3-8b", hidden=4096, q_heads=32, kv_heads=8, head_dim=128, inter=14336, layers=32)
LLAMA3_70B = ModelShape("llama3-70b", hidden=8192, q_heads=64, kv_heads=8, head_dim=128, inter=28672, layers=80)


@dataclass(frozen=True)
class LayerCollective:
    module: str
    elements: int  # of the all-reduced tensor
    nbytes: int
    bus_bytes_per_rank: float  # 2 (tp-1)/tp * nbytes
    bandwidth_s: float
    latency_s: float

    @property
    def seconds(self) -> float:
        return self.bandwidth_s + self.latency_s


def ring_allreduce_s(nbytes: float, tp: int, busbw: float = NVLINK4_BUSBW) -> float:
    """Bandwidth time of a ring all-reduce of ``nbytes`` over ``tp`` ranks at bus bandwidth ``busbw``."""
    return 0.0 if tp == 1 else 2 * (tp - 1) / tp * nbytes / busbw


def layer_collectives(tokens: int, max_r: int, tp: int, *, itemsize: int = 2, busbw: float = NVLINK4_BUSBW,
                      latency_s: float = ASSUMED_LATENCY_S, include_base: bool = False,
                      model: ModelShape = LLAMA3_70B) -> list[LayerCollective]:
    """The all-reduces of one layer's LoRA (o, down) in ``all_reduce`` mode; with ``include_base``
    also the base layer's own two all-reduces of (tokens, hidden), for scale."""
    out = []
    mods = [("lora o", tokens * max_r), ("lora down", tokens * max_r)]
    if include_base:
        mods += [("base o", tokens * model.hidden), ("base down", tokens * model.hidden)]
    for name, elems in mods:
        nbytes = elems * itemsize
        bus = 0.0 if tp == 1 else 2 * (tp - 1) / tp * nbytes
        out.append(LayerCollective(name, elems, nbytes, bus, ring_allreduce_s(nbytes, tp, busbw),
                                   latency_s if tp > 1 else 0.0))
    return out


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tp", type=int, default=8)
    p.add_argument("--model", choices=["llama3-8b", "llama3-70b"], default="llama3-70b")
    p.add_argument("--busbw-gbs", type=float, default=NVLINK4_BUSBW / 1e9)
    p.add_argument("--latency-us", type=float, default=ASSUMED_LATENCY_S * 1e6)
    args = p.parse_args(argv)
    model = LLAMA3_70B if args.model == "llama3-70b" else LLAMA3_8B
    print(f"{model.name} at tp {args.tp}, bf16; ring all-reduce at busbw {args.busbw_gbs:g} GB/s + "
          f"{args.latency_us:g} us latency (assumed)")
    print(f"{'batch':<12}{'r':>4}  {'module':<10}{'bytes':>11}{'bus/rank':>11}{'bw us':>9}{'total us':>10}")
    for label, tokens in (("decode-64", 64), ("prefill-8k", 8192)):
        for r in (16, 64):
            rows = layer_collectives(tokens, r, args.tp, busbw=args.busbw_gbs * 1e9, latency_s=args.latency_us * 1e-6,
                                     include_base=True, model=model)
            for c in rows:
                print(f"{label:<12}{r:>4}  {c.module:<10}{_fmt_bytes(c.nbytes):>11}"
                      f"{_fmt_bytes(c.bus_bytes_per_rank):>11}"
                      f"{c.bandwidth_s * 1e6:>9.2f}{c.seconds * 1e6:>10.2f}")
            lora = rows[:2]
            per_layer = sum(c.seconds for c in lora)
            print(f"{'':<16}LoRA per layer: {_fmt_bytes(sum(c.nbytes for c in lora))}, {per_layer * 1e6:.1f} us; "
                  f"x{model.layers} layers: {per_layer * model.layers * 1e3:.2f} ms ('fold' mode: 0)")


if __name__ == "__main__":
    main()
