"""The LoRA contract as code: formulas, batches, poisoned inputs, tolerances and ``check_backend``.

Public in the way ``numpy.testing`` is: our test suites, ``python -m lora compare`` and the
benchmarks use it, and so can the author of a new backend::

    from lora.testing import check_backend
    report = check_backend("mine")          # a registered name, or the class itself
    print(report)                           # per op and batch composition: what is wrong, which rows, which slice
    report.assert_ok()

What is here:

* :class:`Composition`, a batch described on the host, and generators of the batches that break
  kernels: uneven, zero-length segments, rank-0 slots (and ranks below ``max_r``), slots shared by
  several segments in any order, rows after the last segment, decode and empty batches.
* Poisoned inputs: every element a backend must not read is NaN -- rows no adapter works on, the
  stale tails of the weight buffers past a slot's real rank, expand-input columns past ``stack*r``
  -- and so is every ``base_output`` row that must stay untouched. A backend that reads poison gets
  NaN where a value belongs; one that writes where it must not turns NaN into a number.
  :func:`make_inputs` draws them in torch on the device under test (Llama-sized sets in
  milliseconds); :func:`activations`, :func:`shrink_weights`, ... draw them in numpy for
  frameworks without torch (the JAX tests).
* The float64 oracle (:func:`ref_shrink`, :func:`ref_expand`, :func:`ref_stacked`,
  :func:`oracle`), evaluated on the inputs *after* rounding to the dtype under test, so the only
  error measured is the backend's own. It takes numpy arrays or torch tensors (on any device).
* :data:`TOLERANCE` (``||out - ref|| / ||ref||`` by dtype) and :func:`compare` / :func:`check`,
  which name the rows and the slice where an output is wrong.

Importing this module imports neither torch nor numpy; each is imported where it is used.
"""

from __future__ import annotations

import os
import time
import traceback
import zlib
from dataclasses import dataclass, field

__all__ = [
    "DTYPE_NAMES",
    "OPS",
    "TOLERANCE",
    "BackendReport",
    "Check",
    "CheckResult",
    "Composition",
    "ResolvedOp",
    "activations",
    "base_output",
    "batch_info",
    "call_op",
    "check",
    "check_backend",
    "compare",
    "contract_op",
    "decode_composition",
    "dtype_name",
    "dtype_skip_reason",
    "expand_input",
    "expand_weights",
    "make_inputs",
    "oracle",
    "random_composition",
    "rank0_composition",
    "ref_expand",
    "ref_shrink",
    "ref_stacked",
    "run_op",
    "shared_slot_composition",
    "shrink_weights",
    "standard_compositions",
    "trailing_rows_composition",
    "uneven_composition",
    "work_composition",
    "zero_length_composition",
]

#: Allowed ``||out - ref|| / ||ref||`` by dtype, over the elements the oracle has a value for.
TOLERANCE = {"float32": 1e-3, "float16": 3e-3, "bfloat16": 1.5e-2}
DTYPE_NAMES = tuple(TOLERANCE)
_ALIASES = {"fp32": "float32", "f32": "float32", "float": "float32", "fp16": "float16", "f16": "float16",
            "half": "float16", "bf16": "bfloat16"}


def dtype_name(name) -> str:
    """Canonical name (``float32`` / ``float16`` / ``bfloat16``) of ``bf16``, ``torch.float16``, ...

    Raises ValueError for anything else.
    """
    key = str(name).strip().lower().rsplit(".", 1)[-1]
    key = _ALIASES.get(key, key)
    if key not in TOLERANCE:
        raise ValueError(f"unknown dtype {name!r}; use one of float32, float16, bfloat16 (or fp32, fp16, bf16)")
    return key


def __getattr__(name: str):
    if name == "DTYPES":  # torch dtypes by name, built on first use so that importing this module needs no torch
        import torch

        value = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lora.testing' has no attribute {name!r}")


def dtype_skip_reason(backend_name: str, dtype: str, device) -> str | None:
    """Why ``backend_name`` is not checked in ``dtype`` on ``device`` (a known limit of the tool, not the kernel)."""
    if backend_name == "triton" and str(device).startswith("cpu") and dtype_name(dtype) == "bfloat16":
        return "Triton's CPU interpreter computes bf16 dots wrongly; bf16 is checked on the GPU"
    return None


# ---- compositions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Composition:
    """A batch described on the host: exactly what ``LoRABatchInfo.from_segments`` takes, plus sizes.

    ``tokens`` (rows of x) may exceed ``sum(seg_lens)``: rows after the last segment have no work.
    The sequences may be tuples or lists (kept as given).
    """

    seg_lens: tuple[int, ...]
    weight_indices: tuple[int, ...]
    lora_ranks: tuple[int, ...]
    scalings: tuple[float, ...]
    max_r: int
    tokens: int

    def __post_init__(self):
        if len(self.seg_lens) != len(self.weight_indices):
            raise ValueError("one weight index per segment")
        if len(self.lora_ranks) != len(self.scalings):
            raise ValueError("one scaling per slot")
        if self.tokens < sum(self.seg_lens):
            raise ValueError(f"tokens={self.tokens} < sum(seg_lens)={sum(self.seg_lens)}")
        if any(r > self.max_r or r < 0 for r in self.lora_ranks):
            raise ValueError(f"ranks {self.lora_ranks} outside [0, max_r={self.max_r}]")
        if any(not 0 <= w < len(self.lora_ranks) for w in self.weight_indices):
            raise ValueError(f"weight_indices {self.weight_indices} outside [0, {len(self.lora_ranks)})")

    @property
    def bs(self) -> int:
        return len(self.seg_lens)

    @property
    def num_lora(self) -> int:
        return len(self.lora_ranks)

    @property
    def seg_indptr(self) -> list[int]:
        out = [0]
        for n in self.seg_lens:
            out.append(out[-1] + n)
        return out

    def segments(self):
        """(start, end, slot, rank, scaling) of every segment, work or not."""
        ptr = self.seg_indptr
        for i, w in enumerate(self.weight_indices):
            yield ptr[i], ptr[i + 1], w, self.lora_ranks[w], self.scalings[w]

    def work(self) -> list[tuple[int, int, int, int, float]]:
        """The segments that have work: at least one row and a slot of rank > 0."""
        return [s for s in self.segments() if s[1] > s[0] and s[3] > 0]

    def used_slots(self) -> list[int]:
        """Slots some segment with work uses, each once, in first-use order."""
        seen: dict[int, None] = {}
        for _, _, w, _, _ in self.work():
            seen.setdefault(w, None)
        return list(seen)

    def work_rows(self) -> int:
        return sum(end - start for start, end, *_ in self.work())

    def row_ranks(self) -> list[int]:
        """The real rank each row is worked on with (0 for rows no adapter touches)."""
        ranks = [0] * self.tokens
        for start, end, _, r, _ in self.work():
            ranks[start:end] = [r] * (end - start)
        return ranks

    def idle_rows(self) -> list[bool]:
        """True for the rows no adapter touches (shrink writes zeros there, expand leaves them alone)."""
        return [r == 0 for r in self.row_ranks()]

    def summary(self) -> str:
        lens = self.seg_lens
        return (
            f"{self.tokens} tokens in {self.bs} segments (len {min(lens, default=0)}..{max(lens, default=0)}), "
            f"{self.num_lora} slots, ranks {sorted(set(self.lora_ranks))}, {len(self.used_slots())} used"
        )

    def to_dict(self) -> dict:
        return {
            "seg_lens": list(self.seg_lens),
            "weight_indices": list(self.weight_indices),
            "lora_ranks": list(self.lora_ranks),
            "scalings": list(self.scalings),
            "max_r": self.max_r,
            "tokens": self.tokens,
        }


def _rng(rng):
    """A numpy Generator from a Generator or an int seed."""
    import numpy as np

    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _scalings(rng, num_lora: int) -> list[float]:
    return [round(float(v), 4) for v in rng.uniform(0.25, 2.0, size=num_lora)]


def random_composition(
    rng,
    *,
    max_tokens: int = 48,
    max_segments: int = 6,
    num_lora: int | None = None,
    max_r: int | None = None,
    trailing_rows: bool = True,
) -> Composition:
    """A bit of everything: uneven and zero-length segments, a rank-0 slot, a rank below max_r, shared slots."""
    rng = _rng(rng)
    num_lora = num_lora or int(rng.integers(1, 5))
    max_r = max_r or int(rng.choice([4, 8, 16]))
    ranks = [int(rng.integers(0, max_r + 1)) for _ in range(num_lora)]
    if num_lora > 1:
        ranks[int(rng.integers(num_lora))] = 0  # a slot with no adapter
    ranks[int(rng.integers(num_lora))] = max_r  # a slot at full rank
    if num_lora > 2:
        ranks[int(rng.integers(num_lora))] = max(1, max_r // 2 - 1)  # an odd-size rank below max_r
    bs = int(rng.integers(1, max_segments + 1))
    lens = [int(v) for v in rng.integers(0, max(2, 2 * max_tokens // bs), size=bs)]
    if bs > 1:
        lens[int(rng.integers(bs))] = 0  # a zero-length segment
    slots = [int(v) for v in rng.integers(0, num_lora, size=bs)]  # shared and out of order
    extra = int(rng.integers(0, 3)) if trailing_rows else 0
    return Composition(lens, slots, ranks, _scalings(rng, num_lora), max_r, sum(lens) + extra)


def decode_composition(rng, tokens: int, num_lora: int, max_r: int) -> Composition:
    """One token per segment (``tokens`` sequences decoding), slots drawn at random, all at full rank."""
    rng = _rng(rng)
    slots = [int(v) for v in rng.integers(0, num_lora, size=tokens)]
    return Composition([1] * tokens, slots, [max_r] * num_lora, _scalings(rng, num_lora), max_r, tokens)


def uneven_composition(rng, max_r: int = 16) -> Composition:
    """Segments of very different lengths (1 token next to tens), each slot at its own rank."""
    rng = _rng(rng)
    lens = [1, int(rng.integers(30, 61)), int(rng.integers(2, 9)), int(rng.integers(13, 26))]
    ranks = [max_r, max_r // 2 + 1, 3]
    return Composition(lens, [0, 1, 2, 0], ranks, _scalings(rng, 3), max_r, sum(lens))


def zero_length_composition(rng, max_r: int = 8) -> Composition:
    """Zero-length segments first, between others and last (their slots must not leak onto neighbours)."""
    rng = _rng(rng)
    a, b = int(rng.integers(3, 20)), int(rng.integers(3, 20))
    lens = [0, a, 0, 0, b, 0]
    return Composition(lens, [1, 0, 1, 2, 2, 0], [max_r, 5, max_r - 1], _scalings(rng, 3), max_r, a + b)


def rank0_composition(rng, max_r: int = 8) -> Composition:
    """A used slot of rank 0 between worked segments, and a rank below max_r: stale weight tails are poison."""
    rng = _rng(rng)
    lens = [int(v) for v in rng.integers(2, 12, size=4)]
    return Composition(lens, [0, 1, 2, 1], [max_r, 0, 3], _scalings(rng, 3), max_r, sum(lens))


def shared_slot_composition(rng, max_r: int = 8) -> Composition:
    """Many segments over two slots, interleaved and out of order (rows of one slot are not contiguous)."""
    rng = _rng(rng)
    lens = [int(v) for v in rng.integers(1, 9, size=7)]
    return Composition(lens, [1, 0, 1, 1, 0, 1, 0], [max_r, max_r - 3], _scalings(rng, 2), max_r, sum(lens))


def trailing_rows_composition(rng, max_r: int = 8) -> Composition:
    """Rows of x after the last segment: zeros out of a shrink, untouched by an expand."""
    rng = _rng(rng)
    lens = [int(v) for v in rng.integers(2, 10, size=2)]
    return Composition(lens, [1, 0], [max_r, max_r], _scalings(rng, 2), max_r, sum(lens) + 3)


def work_composition(rng) -> Composition:
    """A :func:`random_composition` (at most 24 tokens, 5 segments, 2 to 4 slots) with at least 4 rows of
    work and a non-empty segment on a rank-0 slot: the tensor-parallel tests' batches (a case without
    either could not catch a layout or masking error)."""
    rng = _rng(rng)
    while True:
        comp = random_composition(rng, max_tokens=24, max_segments=5, num_lora=int(rng.integers(2, 5)))
        rank0_rows = any(end > start and r == 0 for start, end, _, r, _ in comp.segments())
        if comp.idle_rows().count(False) >= 4 and rank0_rows:
            return comp


def standard_compositions(rng) -> dict[str, Composition]:
    """The batches ``check_backend`` runs every op on, by name."""
    rng = _rng(rng)
    return {
        "uneven": uneven_composition(rng),
        "zero-length": zero_length_composition(rng),
        "rank-0": rank0_composition(rng),
        "shared-slot": shared_slot_composition(rng),
        "trailing-rows": trailing_rows_composition(rng),
        "decode": decode_composition(rng, tokens=9, num_lora=3, max_r=8),
        "random": random_composition(rng),
        "empty": Composition([], [], [4], [1.0], 4, 0),
    }


# ---- ops -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedOp:
    """One op at concrete widths: ``kind`` is shrink / expand / fused (shrink then expand).

    ``offsets`` are the output slice offsets of an expand or fused op (``(0, N)`` for plain expand);
    ``fused_add=False`` calls an expand / fused op with ``base_output=None``.
    """

    name: str
    kind: str  # "shrink" | "expand" | "fused"
    k: int  # input width (shrink, fused); 0 for expand
    offsets: tuple[int, ...]  # output slice offsets (expand, fused); () for shrink
    stack: int
    fused_add: bool = True

    @property
    def n(self) -> int:
        """Output width of an expand / fused op (offsets[-1]); 0 for a shrink (its width is stack*max_r)."""
        return self.offsets[-1] if self.offsets else 0

    @property
    def max_slice(self) -> int:
        return max((b - a for a, b in zip(self.offsets, self.offsets[1:])), default=0)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "k": self.k, "n": self.n, "stack": self.stack,
                "offsets": list(self.offsets)}


#: The public calls ``check_backend`` makes: shrink with 1-3 stacked adapters, expand into a
#: ``base_output`` and into a fresh output, QKV (GQA widths), gate-up.
OPS = ("shrink1", "shrink2", "shrink3", "expand", "expand_nobase", "qkv", "gate_up")


def contract_op(name: str, k: int, n: int, kv: int | None = None) -> ResolvedOp:
    """The op ``name`` of :data:`OPS` at input width ``k``, output width ``n`` (QKV: q = n, kv)."""
    if name in ("shrink1", "shrink2", "shrink3"):
        return ResolvedOp(name, "shrink", k, (), int(name[-1]))
    if name in ("expand", "expand_nobase"):
        return ResolvedOp(name, "expand", 0, (0, n), 1, fused_add=name == "expand")
    if name == "qkv":
        kv = kv or max(1, n // 4)
        return ResolvedOp(name, "fused", k, (0, n, n + kv, n + 2 * kv), 3)
    if name == "gate_up":
        return ResolvedOp(name, "fused", k, (0, n, 2 * n), 2)
    raise ValueError(f"unknown op {name!r}; ops: {', '.join(OPS)}")


# ---- poisoned inputs -----------------------------------------------------------------------------


def _masks(comp: Composition, stack: int) -> dict:
    """Where each input is poison (True), as numpy bool arrays that broadcast against the input."""
    import numpy as np

    slot_ranks = np.asarray(comp.lora_ranks, dtype=np.int64)
    row_ranks = np.asarray(comp.row_ranks(), dtype=np.int64)
    cols = np.arange(stack * comp.max_r)
    return {
        "x": (row_ranks == 0)[:, None],  # (tokens, 1): rows no adapter touches
        "x_expand": cols[None, :] >= stack * row_ranks[:, None],  # (tokens, stack*max_r)
        "a": (cols[None, :] >= stack * slot_ranks[:, None])[:, :, None],  # (L, stack*max_r, 1)
        "b": (np.arange(comp.max_r)[None, :] >= slot_ranks[:, None])[:, None, :],  # (L, 1, max_r)
        "base": (row_ranks == 0)[:, None],  # (tokens, 1): rows that must stay untouched
    }


def _poison(t, mask):
    """NaN into ``t`` (numpy array or torch tensor) wherever ``mask`` (broadcast) is True; returns ``t``."""
    import numpy as np

    if isinstance(t, np.ndarray):
        t[np.broadcast_to(mask, t.shape)] = np.nan
    else:
        import torch

        t.masked_fill_(torch.from_numpy(np.ascontiguousarray(mask)).to(t.device), float("nan"))
    return t


def _normal(rng, shape, scale=1.0):
    import numpy as np

    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)


def activations(rng, comp: Composition, k: int):
    """(tokens, K) float32 numpy; rows no adapter touches are NaN (a backend must skip them)."""
    return _poison(_normal(rng, (comp.tokens, k)), _masks(comp, 1)["x"])


def shrink_weights(rng, comp: Composition, stack: int, k: int):
    """(num_lora, stack*max_r, K) float32 numpy; rows >= stack*r of each slot are NaN (stale tails)."""
    a = _normal(rng, (comp.num_lora, stack * comp.max_r, k), k**-0.5)
    return _poison(a, _masks(comp, stack)["a"])


def expand_weights(rng, comp: Composition, n: int):
    """(num_lora, N, max_r) float32 numpy; columns >= r of each slot are NaN (stale tails)."""
    b = _normal(rng, (comp.num_lora, n, comp.max_r), comp.max_r**-0.5)
    return _poison(b, _masks(comp, 1)["b"])


def expand_input(rng, comp: Composition, stack: int):
    """(tokens, stack*max_r) float32 numpy as a shrink leaves it, NaN wherever expand must not read."""
    return _poison(_normal(rng, (comp.tokens, stack * comp.max_r)), _masks(comp, stack)["x_expand"])


def base_output(rng, comp: Composition, n: int):
    """(tokens, N) float32 numpy, the rows that must stay untouched NaN."""
    return _poison(_normal(rng, (comp.tokens, n)), _masks(comp, 1)["base"])


def make_inputs(op: ResolvedOp, comp: Composition, dtype, device, seed: int) -> dict:
    """Random, poisoned torch tensors for one call of ``op``, rounded to ``dtype`` on ``device``.

    Keys: ``x`` always; ``a`` (shrink, fused); ``b`` (expand, fused) and ``base`` (when
    ``op.fused_add``); ``offsets`` (int32, when the op has 3 slices or is a multi-slice expand).
    Drawn in float32 on ``device`` from a generator seeded with ``seed``.
    """
    import torch

    device = torch.device(device)
    dtype = getattr(torch, dtype_name(dtype)) if not isinstance(dtype, torch.dtype) else dtype
    gen = torch.Generator(device=device).manual_seed(seed)
    f32 = dict(dtype=torch.float32, device=device, generator=gen)
    masks = _masks(comp, op.stack)
    out = {}
    if op.kind in ("shrink", "fused"):
        out["x"] = _poison(torch.randn(comp.tokens, op.k, **f32), masks["x"])
        a = torch.randn(comp.num_lora, op.stack * comp.max_r, op.k, **f32) / op.k**0.5
        out["a"] = _poison(a, masks["a"])
    else:
        out["x"] = _poison(torch.randn(comp.tokens, op.stack * comp.max_r, **f32), masks["x_expand"])
    if op.kind in ("expand", "fused"):
        b = torch.randn(comp.num_lora, op.n, comp.max_r, **f32) / comp.max_r**0.5
        out["b"] = _poison(b, masks["b"])
        if op.fused_add:
            out["base"] = _poison(torch.randn(comp.tokens, op.n, **f32), masks["base"])
    out = {key: v.to(dtype) for key, v in out.items()}
    if (op.kind == "fused" and op.stack == 3) or (op.kind == "expand" and op.stack > 1):
        out["offsets"] = torch.tensor(op.offsets, dtype=torch.int32, device=device)
    return out


def batch_info(comp: Composition, device="cpu"):
    """The ``LoRABatchInfo`` of ``comp`` on ``device``."""
    from .batch_info import LoRABatchInfo

    return LoRABatchInfo.from_segments(comp.seg_lens, comp.weight_indices, comp.lora_ranks, comp.scalings,
                                       device=device)


def call_op(backend, op: ResolvedOp, t: dict):
    """Call the public op ``op`` stands for on the tensors ``t`` (``base`` is added into in place)."""
    base = t.get("base")
    if op.kind == "shrink":
        return backend.run_lora_a_sgemm(t["x"], t["a"], stack_num=op.stack)
    if op.kind == "expand" and op.stack == 1:
        return backend.run_lora_b_sgemm(t["x"], t["b"], base_output=base)
    if op.kind == "expand":  # the primitive alone (no public op has 2-3 slices without the shrink)
        backend._before_launch(t["x"])  # what a public op does first: metadata sized for x's rows
        return backend.expand(t["x"], t["b"], t["offsets"], op.max_slice, base)
    if op.stack == 3:
        return backend.run_qkv_lora(t["x"], t["a"], t["b"], t["offsets"], op.max_slice, base_output=base)
    if op.stack == 2:
        return backend.run_gate_up_lora(t["x"], t["a"], t["b"], base_output=base)
    raise ValueError(f"no public op for {op}")


# ---- the oracle (float64) ------------------------------------------------------------------------


def _is_torch(a) -> bool:
    return type(a).__module__.startswith("torch")


def _f64(a):
    """A float64 copy: a torch tensor stays on its device; anything else (numpy, JAX) becomes numpy."""
    if _is_torch(a):
        import torch

        return a.detach().to(torch.float64, copy=True)
    import numpy as np

    return np.asarray(a).astype(np.float64)


def _zeros64(like, rows: int, cols: int):
    if _is_torch(like):
        import torch

        return torch.zeros((rows, cols), dtype=torch.float64, device=like.device)
    import numpy as np

    return np.zeros((rows, cols))


def ref_shrink(comp: Composition, x, a, stack: int):
    """Columns ``[0, stack*r)`` of a worked segment's rows: ``x @ a[w, :stack*r].T``; zeros elsewhere."""
    x, a = _f64(x), _f64(a)
    out = _zeros64(x, x.shape[0], a.shape[1])
    for start, end, w, r, _ in comp.work():
        out[start:end, : stack * r] = x[start:end] @ a[w, : stack * r].T
    return out


def ref_expand(comp: Composition, x, b, offsets, base):
    """``base`` (None: zeros) + for each slice j, ``scaling * x[:, j*r:(j+1)*r] @ b[w, off_j:off_j+1, :r].T``."""
    x, b = _f64(x), _f64(b)
    out = _zeros64(x, x.shape[0], b.shape[1]) if base is None else _f64(base)
    offsets = [int(v) for v in offsets]
    for start, end, w, r, scaling in comp.work():
        for j, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
            out[start:end, lo:hi] += scaling * (x[start:end, j * r : (j + 1) * r] @ b[w, lo:hi, :r].T)
    return out


def ref_stacked(comp: Composition, x, a, b, offsets, base):
    """QKV / gate-up: shrink with ``stack = len(offsets) - 1``, then expand over those slices."""
    return ref_expand(comp, ref_shrink(comp, x, a, len(offsets) - 1), b, offsets, base)


def oracle(op: ResolvedOp, comp: Composition, t: dict):
    """The contract's result for ``op`` on the (rounded, poisoned) inputs ``t``, float64, NaN where untouched.

    The float64 intermediate of a fused op holds only real-rank columns of worked rows, so no NaN.
    """
    if op.kind == "shrink":
        return ref_shrink(comp, t["x"], t["a"], op.stack)
    if op.kind == "expand":
        return ref_expand(comp, t["x"], t["b"], op.offsets, t.get("base"))
    return ref_stacked(comp, t["x"], t["a"], t["b"], op.offsets, t.get("base"))


# ---- the check -----------------------------------------------------------------------------------


@dataclass
class Check:
    """The verdict on one output: relative error, pass/fail, one line, and where it is wrong."""

    rel_error: float
    ok: bool
    detail: str = ""
    #: One line per wrong region: which rows (segment, slot, rank) and which slice / columns.
    problems: list[str] = field(default_factory=list)


def _norm(v) -> float:
    return float((v * v).sum()) ** 0.5


def _first_index(mask) -> list[int]:
    if _is_torch(mask):
        import torch

        return torch.nonzero(mask)[0].tolist()
    import numpy as np

    return np.argwhere(mask)[0].tolist()


def _regions(comp: Composition, op: ResolvedOp | None, ncols: int):
    """(label, rows, cols, must) of every region the contract says something different about."""
    out = []
    # rows without work: a shrink (or an expand into a fresh output) writes zeros, an add leaves them alone
    must = "as before" if op is None else "zeros" if op.kind == "shrink" or not op.fused_add else "untouched"
    if op is None or op.kind == "shrink":
        stack, slices = (op.stack if op is not None else 1), None
    else:
        stack, slices = op.stack, list(zip(op.offsets, op.offsets[1:]))
    for i, (start, end, w, r, _) in enumerate(comp.segments()):
        if end == start:
            continue
        who = f"rows {start}..{end - 1} (segment {i}, slot {w}, rank {r})"
        if r == 0 or op is None:  # without the op, the slices are unknown: the segment's whole rows
            out.append((who, slice(start, end), slice(0, ncols), must if r == 0 else "values"))
            continue
        if slices is None:
            for j in range(stack):
                out.append((f"{who}, slice {j} (columns {j * r}..{(j + 1) * r - 1})",
                            slice(start, end), slice(j * r, (j + 1) * r), "values"))
            if stack * r < ncols:
                out.append((f"{who}, columns {stack * r}..{ncols - 1} (past stack*rank)",
                            slice(start, end), slice(stack * r, ncols), "zeros"))
        else:
            for j, (lo, hi) in enumerate(slices):
                out.append((f"{who}, slice {j} (columns {lo}..{hi - 1})", slice(start, end), slice(lo, hi), "values"))
    covered = comp.seg_indptr[-1]
    if covered < comp.tokens:
        out.append((f"rows {covered}..{comp.tokens - 1} (after the last segment)",
                    slice(covered, comp.tokens), slice(0, ncols), must))
    return out


def _diagnose(out, ref, comp: Composition, op: ResolvedOp | None, tol: float, limit: int = 8) -> list[str]:
    """One line per region of the output that is wrong (NaN pattern or relative error above ``tol``)."""
    found = []
    for label, rows, cols, must in _regions(comp, op, ref.shape[1]):
        o, rf = out[rows, cols], ref[rows, cols]
        if o.shape[0] == 0 or o.shape[1] == 0:
            continue
        o_nan, r_nan = o != o, rf != rf
        read = int((o_nan & ~r_nan).sum())  # NaN where a value belongs
        wrote = int((~o_nan & r_nan).sum())  # a value where the row must stay untouched
        keep = ~o_nan & ~r_nan
        diff, scale = _norm((o - rf)[keep]), _norm(rf[keep])
        rel = diff / scale if scale > 0 else diff
        what = []
        if read:
            what.append(f"{read} NaN where {'zeros' if must == 'zeros' else 'values'} belong (poison read)")
        if wrote:
            what.append(f"{wrote} elements written where base_output must stay untouched")
        if rel > tol:
            what.append(f"rel error {rel:.3g} > {tol:g}" + (" (must be zeros)" if must == "zeros" else ""))
        if what:
            found.append((bool(read or wrote), rel, f"{label}: {'; '.join(what)}"))
    found.sort(key=lambda f: (not f[0], -f[1]))
    lines = [f[2] for f in found[:limit]]
    if len(found) > limit:
        lines.append(f"... and {len(found) - limit} more wrong regions")
    return lines


def compare(out, ref, dtype, *, comp: Composition | None = None, op: ResolvedOp | None = None) -> Check:
    """Relative error over the finite part of ``ref``; NaN must sit exactly where ``ref`` has NaN.

    ``out`` and ``ref`` are numpy arrays or torch tensors (any dtype; compared in float64). With
    ``comp`` (and ``op``), a failing check lists the wrong regions in ``problems``.
    """
    tol = TOLERANCE[dtype_name(dtype)]
    out = _f64(out)
    if _is_torch(ref) != _is_torch(out):  # one kind for both, on ref's side
        if _is_torch(ref):
            import torch

            out = torch.from_numpy(out).to(ref.device)
        else:
            out = out.cpu().numpy()
    if tuple(out.shape) != tuple(ref.shape):
        return Check(float("inf"), False, f"output shape {tuple(out.shape)} != expected {tuple(ref.shape)}")
    out_nan, ref_nan = out != out, ref != ref
    bad = out_nan != ref_nan
    nbad = int(bad.sum())
    inf = int(((out == float("inf")) | (out == float("-inf"))).sum())
    keep = ~out_nan & ~ref_nan
    diff, scale = _norm((out - ref)[keep]), _norm(ref[keep])
    rel = diff / scale if scale > 0 else diff
    if nbad:
        first = _first_index(bad)
        what = ("NaN where a value belongs (poison read or element unwritten)" if bool(out_nan[tuple(first)])
                else "a value where the row must stay untouched (poison overwritten)")
        result = Check(float("inf"), False, f"{nbad} elements differ in NaN-ness, first at {first}: {what}")
    elif inf:
        result = Check(float("inf"), False, f"{inf} inf in output")
    else:
        result = Check(rel, rel <= tol, f"rel error {rel:.3g} vs tolerance {tol:g}")
    if not result.ok and comp is not None and len(ref.shape) == 2:
        result.problems = _diagnose(out, ref, comp, op, tol)
    return result


def check(out, ref, dtype, *, expect_dtype=None, base=None, comp: Composition | None = None,
          op: ResolvedOp | None = None) -> Check:
    """:func:`compare` for a public op's torch output, after its type, dtype and in-place contract."""
    if not _is_torch(out) or not hasattr(out, "dtype"):
        return Check(float("inf"), False, f"returned {type(out).__name__}, not a tensor")
    if tuple(out.shape) != tuple(ref.shape):
        return Check(float("inf"), False, f"output shape {tuple(out.shape)} != expected {tuple(ref.shape)}")
    if expect_dtype is not None and out.dtype != expect_dtype:
        return Check(float("inf"), False, f"output dtype {out.dtype}, expected the activation dtype {expect_dtype}")
    if base is not None and out.data_ptr() != base.data_ptr():
        return Check(float("inf"), False, "did not add into base_output in place and return it")
    return compare(out, ref, dtype, comp=comp, op=op)


def run_op(backend, op: ResolvedOp, comp: Composition, dtype, *, device="cpu", seed: int = 0):
    """Set ``comp``'s batch info, call ``op`` on fresh poisoned inputs, check against the oracle.

    Returns ``(Check, output)``.
    """
    import torch

    dtype = dtype_name(dtype)
    backend.set_batch_info(batch_info(comp, device))
    t = make_inputs(op, comp, dtype, device, seed)
    ref = oracle(op, comp, t)
    out = call_op(backend, op, t)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return check(out, ref, dtype, expect_dtype=t["x"].dtype, base=t.get("base"), comp=comp, op=op), out


# ---- check_backend -------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """One (op, composition, dtype) of a :func:`check_backend` run."""

    op: str
    composition: str
    dtype: str
    status: str  # "pass" | "fail" | "error" | "skipped"
    rel_error: float | None = None
    detail: str = ""
    problems: list[str] = field(default_factory=list)


@dataclass
class BackendReport:
    """What :func:`check_backend` found; ``str(report)`` explains every failure."""

    backend: str
    device: str
    seed: int
    widths: dict
    compositions: dict[str, Composition]
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status in ("fail", "error")]

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "error": 0, "skipped": 0}
        for r in self.results:
            out[r.status] += 1
        return out

    def __str__(self) -> str:
        c = self.counts()
        widths = ", ".join(f"{k}={v}" for k, v in self.widths.items())
        lines = [
            f"check_backend({self.backend!r}) on {self.device}, {widths}, seed={self.seed}: "
            f"{len(self.results)} checks, {c['pass']} passed, {c['fail']} failed, {c['error']} errors, "
            f"{c['skipped']} skipped" + ("" if self.ok else f"  (replay: check_backend({self.backend!r}, seed={self.seed}))")
        ]
        skips = sorted({r.detail for r in self.results if r.status == "skipped"})
        lines += [f"  skipped: {s}" for s in skips]
        shown = set()
        for r in self.failures:
            lines.append(f"  {r.status.upper()} {r.op} on {r.composition!r} [{r.dtype}]: {r.detail}")
            lines += [f"      {p}" for p in r.problems]
            shown.add(r.composition)
        for name in sorted(shown):
            comp = self.compositions[name]
            lines.append(f"  composition {name!r}: {comp.summary()}; {comp.to_dict()}")
        return "\n".join(lines)

    def assert_ok(self) -> None:
        """Raise AssertionError with the report when anything failed."""
        if not self.ok:
            raise AssertionError(str(self))


def _seed(base: int, *parts) -> int:
    return (base + zlib.crc32(":".join(str(p) for p in parts).encode())) % 2**31


def _backend_class(backend):
    from .backend import BaseLoRABackend
    from .registry import BackendUnavailableError, get_backend_from_name, registered_name

    if isinstance(backend, str):
        name, cls = backend, get_backend_from_name(backend)
    elif isinstance(backend, type) and issubclass(backend, BaseLoRABackend):
        name, cls = registered_name(backend) or backend.__name__, backend
    else:
        raise TypeError(f"backend must be a registered name or a BaseLoRABackend subclass, got {backend!r}")
    reason = cls.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"LoRA backend {name!r} cannot run here: {reason}")
    return name, cls


def check_backend(
    backend,
    *,
    device=None,
    dtypes=None,
    ops=None,
    compositions: dict[str, Composition] | None = None,
    seed: int | None = None,
    k: int | None = None,
    n: int | None = None,
    kv: int | None = None,
) -> BackendReport:
    """Run every op of :data:`OPS` on every composition and dtype; report what is wrong, where.

    ``backend``: a registered name (``lora.available_backends()``) or a ``BaseLoRABackend`` subclass.
    ``device``: default CUDA when available, else the CPU. ``dtypes``: default float32, float16,
    bfloat16. ``compositions``: default :func:`standard_compositions`. ``k``, ``n``, ``kv``: input
    width, output width and QKV's kv width (default: small odd widths drawn from ``seed``).
    ``seed``: default fresh; the report prints it, so a failure can be replayed.

    Raises ``BackendUnavailableError`` when the backend cannot run here (with the registry's reason).
    Exceptions raised by the backend are reported per op (status ``error``), not raised.
    """
    import numpy as np
    import torch

    name, cls = _backend_class(backend)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    seed = int(seed) if seed is not None else time.time_ns() % 2**31
    rng = np.random.default_rng(seed)
    comps = dict(compositions) if compositions is not None else standard_compositions(rng)
    k = k or int(rng.integers(20, 80)) | 1
    n = n or int(rng.integers(16, 72)) | 1
    kv = kv or int(rng.integers(4, n))
    dtypes = [dtype_name(d) for d in (dtypes or DTYPE_NAMES)]
    ops = list(ops or OPS)
    instance = cls(name)
    results = []
    for comp_name, comp in comps.items():
        for op_name in ops:
            op = contract_op(op_name, k, n, kv)
            for dtype in dtypes:
                res = CheckResult(op_name, comp_name, dtype, "error")
                skip = dtype_skip_reason(name, dtype, device)
                if skip:
                    res.status, res.detail = "skipped", skip
                    results.append(res)
                    continue
                try:
                    chk, _ = run_op(instance, op, comp, dtype, device=device, seed=_seed(seed, comp_name, op_name, dtype))
                except Exception as exc:  # a crash is reported with the frame it came from
                    frame = traceback.extract_tb(exc.__traceback__)[-1]
                    res.detail = f"{type(exc).__name__}: {exc} (at {os.path.basename(frame.filename)}:{frame.lineno})"
                else:
                    res.status = "pass" if chk.ok else "fail"
                    res.rel_error, res.detail, res.problems = chk.rel_error, chk.detail, chk.problems
                results.append(res)
    return BackendReport(name, str(device), seed, {"K": k, "N": n, "kv": kv}, comps, results)
