"""Named, documented shape sets for ``python -m lora compare``, and the minimum-bytes model.

A **case** is one layer shape (:class:`LayerShape`), one adapter setup (rank, number of loaded
slots) and one batch **composition** (how the tokens are cut into segments and which slot each
segment uses). Every case runs the nine **ops** of :data:`OPS` -- the four public LoRA ops at the
widths a transformer layer calls them with, and the multi-slice expand kernel alone (the
``expand`` primitive a backend supplies, called directly: issue 3 sets a decode target for it):

=============  =====================  =================================================================
op             public call            widths (Llama-3-8B)
=============  =====================  =================================================================
shrink1        run_lora_a_sgemm, 1    x (s, 4096) -> (s, r)          o_proj A
shrink2        run_lora_a_sgemm, 2    x (s, 4096) -> (s, 2r)         gate-up A
shrink3        run_lora_a_sgemm, 3    x (s, 4096) -> (s, 3r)         QKV A
shrink_down    run_lora_a_sgemm, 1    x (s, 14336) -> (s, r)         down A
expand         run_lora_b_sgemm       (s, r) -> base (s, 4096) +=    o_proj / down B, fused add
expand_qkv     expand (primitive)     (s, 3r) -> base (s, 6144) +=   QKV's expand kernel alone, 3 slices
expand_gate_up expand (primitive)     (s, 2r) -> base (s, 28672) +=  gate-up's expand kernel alone, 2 slices
qkv            run_qkv_lora           (s, 4096) -> base (s, 6144) += shrink 3 + expand 3 slices (GQA)
gate_up        run_gate_up_lora       (s, 4096) -> base (s, 28672) += shrink 2 + expand 2 slices
=============  =====================  =================================================================

Minimum bytes (:func:`min_bytes`), the model the speed targets are stated in: x read once (only
the rows some adapter works on, only the real-rank columns for an expand input), each *used*
adapter's weights read once (only its real-rank part), the output written once, and
``base_output`` read and written once when the add is fused (only the rows that get work). The
intermediate of a fused shrink+expand op (qkv, gate_up) costs nothing in this model.

Everything here is plain Python (no torch), so kernel code and benchmarks may import it freely::

    from lora.compare.cases import CASES, OPS, min_bytes
    case = CASES["llama3-8b-r64-prefill-8k"]
    comp = case.composition(seed=0)
    nbytes = min_bytes(OPS["qkv"].resolve(case.shape), comp, itemsize=2)
"""

from __future__ import annotations

import fnmatch
import random
import zlib
from dataclasses import dataclass, field, replace
from typing import Callable

from lora.testing import Composition, ResolvedOp

__all__ = [
    "CASES",
    "CPU_DEFAULT_CASES",
    "CPU_DEFAULT_OPS",
    "Case",
    "Composition",
    "GPU_DEFAULT_CASES",
    "LLAMA3_8B",
    "LayerShape",
    "OPS",
    "OpSpec",
    "ResolvedOp",
    "TINY",
    "case_seed",
    "compositions",
    "decode",
    "explicit",
    "min_bytes",
    "min_bytes_of",
    "mixed",
    "parse_shape_spec",
    "prefill",
    "select_cases",
    "target_us",
]


# ---- compositions --------------------------------------------------------------------------------


# Composition (a batch described on the host) is the contract's, in lora.testing; re-exported here.


# A composition generator: (rng, num_lora, max_r, ranks) -> (seg_lens, weight_indices, trailing_rows).
SegmentGen = Callable[[random.Random, int], tuple[list[int], list[int], int]]


def decode(n: int) -> SegmentGen:
    """``n`` segments of one token each (n sequences decoding), slots drawn at random."""

    def gen(rng: random.Random, num_lora: int):
        return [1] * n, [rng.randrange(num_lora) for _ in range(n)], 0

    gen.__doc__ = f"decode-{n}: {n} segments of 1 token, slots drawn at random"
    return gen


def prefill(total: int, segments: int) -> SegmentGen:
    """``segments`` segments of uneven length (at least 1) summing to ``total`` tokens."""

    def gen(rng: random.Random, num_lora: int):
        cuts = sorted(rng.sample(range(1, total), segments - 1)) if segments > 1 else []
        lens = [b - a for a, b in zip([0, *cuts], [*cuts, total])]
        return lens, [rng.randrange(num_lora) for _ in lens], 0

    gen.__doc__ = f"prefill: {segments} uneven segments summing to {total} tokens"
    return gen


def mixed(segments: int, max_len: int) -> SegmentGen:
    """``segments`` segments of 1..``max_len`` tokens each (uniform), slots drawn at random."""

    def gen(rng: random.Random, num_lora: int):
        lens = [rng.randint(1, max_len) for _ in range(segments)]
        return lens, [rng.randrange(num_lora) for _ in lens], 0

    gen.__doc__ = f"mixed: {segments} segments of 1..{max_len} tokens"
    return gen


def explicit(seg_lens: list[int], weight_indices: list[int] | None = None, trailing_rows: int = 0) -> SegmentGen:
    """Fixed segment lengths (zeros allowed); slots given or drawn at random; rows after the last segment."""

    def gen(rng: random.Random, num_lora: int):
        slots = list(weight_indices) if weight_indices is not None else [rng.randrange(num_lora) for _ in seg_lens]
        return list(seg_lens), slots, trailing_rows

    gen.__doc__ = f"explicit segments {list(seg_lens)} (+{trailing_rows} rows without work)"
    return gen


def compositions() -> dict[str, SegmentGen]:
    """The named compositions of the GPU default (see the module docstring)."""
    return {
        "decode-64": decode(64),
        "decode-256": decode(256),
        "prefill-8k": prefill(8192, 8),
        "mixed": mixed(32, 512),
    }


# ---- layer shapes and ops ------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerShape:
    """Widths of one transformer layer: hidden K, QKV outputs (GQA), MLP intermediate."""

    name: str
    hidden: int  # K of o_proj / QKV / gate-up, N of o_proj and down
    q: int
    kv: int
    inter: int  # n of gate and of up; K of down

    def to_dict(self) -> dict:
        return {"name": self.name, "hidden": self.hidden, "q": self.q, "kv": self.kv, "inter": self.inter}


#: Llama-3-8B: hidden 4096, 32 query heads and 8 KV heads of 128, MLP 14336.
LLAMA3_8B = LayerShape("llama3-8b", hidden=4096, q=4096, kv=1024, inter=14336)
#: Small odd widths for the CPU correctness run (non-powers of two, GQA q != kv).
TINY = LayerShape("tiny", hidden=72, q=72, kv=24, inter=88)


@dataclass(frozen=True)
class OpSpec:
    """An op named independently of the layer: ``resolve(shape)`` gives its widths."""

    name: str
    call: str  # the public method it times
    doc: str
    _resolve: Callable[[LayerShape], ResolvedOp] = field(repr=False, compare=False)

    def resolve(self, shape: LayerShape) -> ResolvedOp:
        return self._resolve(shape)


OPS: dict[str, OpSpec] = {
    op.name: op
    for op in [
        OpSpec("shrink1", "run_lora_a_sgemm(stack_num=1)", "x (s, hidden) -> (s, r): o_proj A",
               lambda s: ResolvedOp("shrink1", "shrink", s.hidden, (), 1)),
        OpSpec("shrink2", "run_lora_a_sgemm(stack_num=2)", "x (s, hidden) -> (s, 2r): gate-up A",
               lambda s: ResolvedOp("shrink2", "shrink", s.hidden, (), 2)),
        OpSpec("shrink3", "run_lora_a_sgemm(stack_num=3)", "x (s, hidden) -> (s, 3r): QKV A",
               lambda s: ResolvedOp("shrink3", "shrink", s.hidden, (), 3)),
        OpSpec("shrink_down", "run_lora_a_sgemm(stack_num=1)", "x (s, inter) -> (s, r): down A",
               lambda s: ResolvedOp("shrink_down", "shrink", s.inter, (), 1)),
        OpSpec("expand", "run_lora_b_sgemm(base_output=...)", "(s, r) -> base (s, hidden) += : o_proj/down B",
               lambda s: ResolvedOp("expand", "expand", 0, (0, s.hidden), 1)),
        OpSpec("expand_qkv", "expand primitive, 3 slices", "(s, 3r) -> base (s, q+2kv) += : QKV's expand kernel alone",
               lambda s: ResolvedOp("expand_qkv", "expand", 0, (0, s.q, s.q + s.kv, s.q + 2 * s.kv), 3)),
        OpSpec("expand_gate_up", "expand primitive, 2 slices", "(s, 2r) -> base (s, 2*inter) += : gate-up's expand alone",
               lambda s: ResolvedOp("expand_gate_up", "expand", 0, (0, s.inter, 2 * s.inter), 2)),
        OpSpec("qkv", "run_qkv_lora(base_output=...)", "(s, hidden) -> base (s, q+2kv) += : shrink 3 + expand",
               lambda s: ResolvedOp("qkv", "fused", s.hidden, (0, s.q, s.q + s.kv, s.q + 2 * s.kv), 3)),
        OpSpec("gate_up", "run_gate_up_lora(base_output=...)", "(s, hidden) -> base (s, 2*inter) += : shrink 2 + expand",
               lambda s: ResolvedOp("gate_up", "fused", s.hidden, (0, s.inter, 2 * s.inter), 2)),
    ]
}


#: On a GPU every op runs by default; on the CPU the public ops (the primitives run inside qkv and
#: gate_up), which keeps the interpreted correctness run short.
CPU_DEFAULT_OPS: list[str] = [name for name in OPS if not name.startswith("expand_")]


# ---- minimum bytes -------------------------------------------------------------------------------


def min_bytes_of(
    kind: str,
    *,
    seg_lens,
    weight_indices,
    lora_ranks,
    max_r: int,
    tokens: int | None = None,
    k: int = 0,
    n: int = 0,
    stack: int = 1,
    itemsize: int,
    fused_add: bool = True,
) -> int:
    """Fewest bytes an op must move through device memory (plain values, for kernels and benchmarks).

    ``kind``: ``"shrink"`` (x (tokens, k) -> (tokens, stack*max_r)), ``"expand"`` (x (tokens,
    stack*max_r) -> out (tokens, n) over ``stack`` slices of n in total) or ``"fused"`` (shrink then
    expand, the intermediate free). Counted once each: the rows of x that some adapter works on (for
    an expand input, only the ``stack*r`` real-rank columns), each used slot's real-rank weights
    (A: ``stack*r*k``, B: ``n*r``), and the output: a shrink writes its whole (tokens,
    stack*max_r) output (zeros included); an expand with ``fused_add`` reads and writes the rows that
    get work, without it writes the whole (tokens, n) output.
    """
    tokens = sum(seg_lens) if tokens is None else tokens
    ptr = 0
    work_rows = 0
    x_expand = 0
    used: dict[int, int] = {}
    for length, w in zip(seg_lens, weight_indices):
        r = lora_ranks[w]
        if length > 0 and r > 0:
            work_rows += length
            x_expand += length * stack * r
            used[w] = r
        ptr += length
    a_bytes = sum(stack * r * k for r in used.values())
    b_bytes = sum(n * r for r in used.values())
    out_expand = 2 * work_rows * n if fused_add else tokens * n
    if kind == "shrink":
        elems = work_rows * k + a_bytes + tokens * stack * max_r
    elif kind == "expand":
        elems = x_expand + b_bytes + out_expand
    elif kind == "fused":
        elems = work_rows * k + a_bytes + b_bytes + out_expand
    else:
        raise ValueError(f"kind must be shrink, expand or fused, got {kind!r}")
    return elems * itemsize


def min_bytes(op: ResolvedOp, comp: Composition, itemsize: int, fused_add: bool = True) -> int:
    """:func:`min_bytes_of` for a resolved op on a composition."""
    return min_bytes_of(
        op.kind,
        seg_lens=comp.seg_lens,
        weight_indices=comp.weight_indices,
        lora_ranks=comp.lora_ranks,
        max_r=comp.max_r,
        tokens=comp.tokens,
        k=op.k,
        n=op.n,
        stack=op.stack,
        itemsize=itemsize,
        fused_add=fused_add,
    )


def target_us(op: ResolvedOp, decode: bool, nbytes: int, copy_gbps: float) -> float:
    """The speed target of issue 3 for one call, in microseconds.

    Prefill / mixed: the minimum bytes at 85% of the measured copy bandwidth. Decode (replayed from a
    CUDA graph): 6 us + the minimum bytes at 75% for a single-kernel op (a shrink, an expand), 8 us +
    the same for a fused shrink+expand op (qkv, gate_up).
    """
    bytes_per_us = copy_gbps * 1e3  # GB/s -> bytes/us
    if decode:
        return (8.0 if op.kind == "fused" else 6.0) + nbytes / (0.75 * bytes_per_us)
    return nbytes / (0.85 * bytes_per_us)


# ---- cases ---------------------------------------------------------------------------------------


def case_seed(base_seed: int, *parts) -> int:
    """A 32-bit seed from the run's base seed and names (stable across runs and machines)."""
    return (base_seed + zlib.crc32(":".join(str(p) for p in parts).encode())) % 2**32


@dataclass(frozen=True)
class Case:
    """One named benchmark/correctness case.

    ``ranks`` gives the real rank of each loaded slot (``len(ranks)`` slots, buffers of ``max_r``);
    ``segments`` draws the composition from a seeded generator.
    """

    name: str
    description: str
    shape: LayerShape
    max_r: int
    ranks: tuple[int, ...]
    segments: SegmentGen = field(repr=False, compare=False)
    #: Decode-like: every call is tiny, so on CUDA it is also timed as a CUDA-graph replay.
    decode: bool = False

    def composition(self, seed: int) -> Composition:
        """The composition drawn with ``seed`` (the same seed gives the same batch)."""
        rng = random.Random(case_seed(seed, self.name, "composition"))
        lens, slots, trailing = self.segments(rng, len(self.ranks))
        scalings = tuple(round(rng.uniform(0.25, 2.0), 4) for _ in self.ranks)
        return Composition(
            seg_lens=tuple(lens),
            weight_indices=tuple(slots),
            lora_ranks=tuple(self.ranks),
            scalings=scalings,
            max_r=self.max_r,
            tokens=sum(lens) + trailing,
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "shape": self.shape.to_dict(),
            "max_r": self.max_r,
            "ranks": list(self.ranks),
            "num_lora": len(self.ranks),
            "decode": self.decode,
        }


def _llama_cases() -> list[Case]:
    out = []
    for rank in (16, 64):
        for comp_name, gen in compositions().items():
            out.append(
                Case(
                    name=f"llama3-8b-r{rank}-{comp_name}",
                    description=f"Llama-3-8B layer, 8 adapters of rank {rank}, {gen.__doc__}",
                    shape=LLAMA3_8B,
                    max_r=rank,
                    ranks=(rank,) * 8,
                    segments=gen,
                    decode=comp_name.startswith("decode"),
                )
            )
    return out


def _tiny_cases() -> list[Case]:
    # Edge cases on purpose: a rank-0 slot, ranks below max_r (odd), zero-length segments, rows after
    # the last segment, shared slots in any order. Inputs are poisoned (NaN) wherever a backend must not
    # read or write, so a kernel that touches them fails here.
    ranks = (8, 0, 5, 8)
    return [
        Case("tiny-decode-8", "tiny layer (K=72, q=72, kv=24, inter=88), ranks 8/0/5/8, " + decode(8).__doc__,
             TINY, 8, ranks, decode(8), decode=True),
        Case("tiny-prefill", "tiny layer, ranks 8/0/5/8, segments 37, 0, 21, 9 + 2 idle rows, slots 2, 0, 3, 1",
             TINY, 8, ranks, explicit([37, 0, 21, 9], [2, 0, 3, 1], trailing_rows=2)),
        Case("tiny-mixed", "tiny layer, ranks 8/0/5/8 of max_r 8, " + mixed(6, 24).__doc__ + " (slots shared)",
             TINY, 8, ranks, mixed(6, 24)),
    ]


CASES: dict[str, Case] = {c.name: c for c in [*_llama_cases(), *_tiny_cases()]}

#: What ``compare`` runs with no --case on a CUDA device.
GPU_DEFAULT_CASES: list[str] = [c for c in CASES if c.startswith("llama3-8b-")]
#: What it runs with no --case on the CPU: a correctness run (Triton's interpreter is slow, times mean nothing).
CPU_DEFAULT_CASES: list[str] = [c for c in CASES if c.startswith("tiny-")]


def select_cases(patterns: list[str]) -> list[Case]:
    """Cases whose names match any of ``patterns`` (exact names or shell globs), in registry order."""
    chosen = []
    for pat in patterns:
        hits = [name for name in CASES if fnmatch.fnmatchcase(name, pat)]
        if not hits:
            raise KeyError(f"no case matches {pat!r}; known cases: {', '.join(CASES)}")
        chosen.extend(h for h in hits if h not in chosen)
    return [CASES[n] for n in CASES if n in chosen]


# ---- --shape spec --------------------------------------------------------------------------------

_SHAPE_KEYS = {"hidden", "k", "q", "kv", "inter", "r", "ranks", "adapters", "segs", "name"}


def parse_shape_spec(spec: str) -> Case:
    """A case from ``key=value`` pairs separated by commas; unset keys take Llama-3-8B's values.

    Keys: ``hidden`` (alias ``k``), ``q``, ``kv``, ``inter``: layer widths; ``r``: max rank (default 16);
    ``ranks``: real rank per slot, ``+``-separated (default: ``adapters`` slots of rank r);
    ``adapters``: loaded slots (default 8); ``segs``: the composition, one of ``decode:N``,
    ``prefill:TOTAL/SEGMENTS``, ``mixed:SEGMENTS/MAXLEN`` or ``lens:L1+L2+...`` (default decode:64);
    ``name``: the case's name. Example: ``--shape hidden=4096,q=4096,kv=1024,r=64,segs=prefill:8192/8``.
    """
    kv: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in _SHAPE_KEYS:
            raise ValueError(f"bad --shape item {part!r}: expected key=value with key in {sorted(_SHAPE_KEYS)}")
        kv["hidden" if key == "k" else key] = value.strip()
    try:
        base = LLAMA3_8B
        shape = replace(
            base,
            name="custom",
            hidden=int(kv.get("hidden", base.hidden)),
            q=int(kv.get("q", base.q)),
            kv=int(kv.get("kv", base.kv)),
            inter=int(kv.get("inter", base.inter)),
        )
        adapters = int(kv.get("adapters", 8))
        if "ranks" in kv:
            ranks = tuple(int(v) for v in kv["ranks"].split("+"))
            max_r = int(kv.get("r", max(ranks)))
        else:
            max_r = int(kv.get("r", 16))
            ranks = (max_r,) * adapters
        kind, _, arg = kv.get("segs", "decode:64").partition(":")
        if kind == "decode":
            gen, is_decode = decode(int(arg)), True
        elif kind == "prefill":
            total, _, segs = arg.partition("/")
            gen, is_decode = prefill(int(total), int(segs or 1)), False
        elif kind == "mixed":
            segs, _, top = arg.partition("/")
            gen, is_decode = mixed(int(segs), int(top or 512)), False
        elif kind == "lens":
            gen, is_decode = explicit([int(v) for v in arg.split("+")]), False
        else:
            raise ValueError(f"segs must be decode:N, prefill:TOTAL/SEGS, mixed:SEGS/MAXLEN or lens:A+B+..., got {kind!r}")
    except ValueError as exc:
        raise ValueError(f"bad --shape {spec!r}: {exc}") from None
    if min(shape.hidden, shape.q, shape.kv, shape.inter, max_r) <= 0 or not ranks or any(r < 0 or r > max_r for r in ranks):
        raise ValueError(f"bad --shape {spec!r}: widths and r must be positive, ranks in [0, r]")
    name = kv.get("name") or f"custom-h{shape.hidden}-q{shape.q}-kv{shape.kv}-i{shape.inter}-r{max_r}-{kind}{arg.replace('/', 'x').replace('+', '_')}"
    desc = f"custom: hidden={shape.hidden}, q={shape.q}, kv={shape.kv}, inter={shape.inter}, ranks {list(ranks)}, {gen.__doc__}"
    return Case(name, desc, shape, max_r, ranks, gen, decode=is_decode)
