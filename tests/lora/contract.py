"""The LoRA contract as numpy: random compositions, poisoned inputs and a float64 oracle.

Numpy only (no torch, no jax), so the torch-facing suite and the JAX-side suite check every backend
against the same formulas. Inputs are drawn in float32; a framework adapter rounds them to the
dtype under test and hands the rounded values back as float64 for the oracle.

Poison: every element a backend must not read is NaN -- the stale tails of the weight buffers
(rows/columns beyond a slot's real rank), the shrink-output columns beyond ``stack*r`` fed to
expand, the rows of segments that have no work, and the ``base_output`` rows that must stay
untouched. A kernel that reads or writes any of them turns up NaN where the oracle has a number, or
a number where the oracle keeps NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lora.compare import cases

#: Relative tolerance (||out - ref|| / ||ref||) by dtype name.
TOLERANCE = {"float32": 1e-3, "float16": 3e-3, "bfloat16": 1.5e-2}


class Composition(cases.Composition):
    """A batch as :class:`lora.compare.cases.Composition` describes it, plus the poison mask."""

    def idle_rows(self) -> np.ndarray:
        """Boolean mask of rows that no adapter touches."""
        idle = np.ones(self.tokens, dtype=bool)
        for start, end, _, r, _ in self.segments():
            if r > 0:
                idle[start:end] = False
        return idle


def random_composition(
    rng: np.random.Generator,
    *,
    max_tokens: int = 48,
    max_segments: int = 6,
    num_lora: int | None = None,
    max_r: int | None = None,
    trailing_rows: bool = True,
) -> Composition:
    """Uneven and zero-length segments, rank-0 slots, ranks below max_r, shared slots, any order."""
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
    scalings = [float(v) for v in rng.uniform(0.25, 2.0, size=num_lora)]
    extra = int(rng.integers(0, 3)) if trailing_rows else 0
    return Composition(lens, slots, ranks, scalings, max_r, sum(lens) + extra)


def decode_composition(rng, tokens: int, num_lora: int, max_r: int) -> Composition:
    """One token per segment, slots drawn at random (all at full rank)."""
    slots = [int(v) for v in rng.integers(0, num_lora, size=tokens)]
    return Composition([1] * tokens, slots, [max_r] * num_lora, [0.5] * num_lora, max_r, tokens)


def _normal(rng, shape, scale=1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---- inputs (float32, poisoned) -------------------------------------------------------------------


def shrink_weights(rng, comp: Composition, stack: int, k: int) -> np.ndarray:
    """(num_lora, stack*max_r, K); rows >= stack*r of each slot are NaN (stale tails)."""
    a = _normal(rng, (len(comp.lora_ranks), stack * comp.max_r, k), 1.0 / np.sqrt(k))
    for w, r in enumerate(comp.lora_ranks):
        a[w, stack * r :] = np.nan
    return a


def expand_weights(rng, comp: Composition, n: int) -> np.ndarray:
    """(num_lora, N, max_r); columns >= r of each slot are NaN (stale tails)."""
    b = _normal(rng, (len(comp.lora_ranks), n, comp.max_r), 1.0 / np.sqrt(comp.max_r))
    for w, r in enumerate(comp.lora_ranks):
        b[w, :, r:] = np.nan
    return b


def activations(rng, comp: Composition, k: int) -> np.ndarray:
    """(s, K) random; rows no adapter touches are NaN (a backend must skip them)."""
    x = _normal(rng, (comp.tokens, k))
    x[comp.idle_rows()] = np.nan
    return x


def expand_input(rng, comp: Composition, stack: int) -> np.ndarray:
    """(s, stack*max_r) as shrink would leave it, with NaN wherever expand must not read."""
    x = np.full((comp.tokens, stack * comp.max_r), np.nan, dtype=np.float32)
    for start, end, _, r, _ in comp.segments():
        if r > 0:
            x[start:end, : stack * r] = _normal(rng, (end - start, stack * r))
    return x


def base_output(rng, comp: Composition, n: int) -> np.ndarray:
    """(s, N) random, with the rows that must stay untouched set to NaN."""
    base = _normal(rng, (comp.tokens, n))
    base[comp.idle_rows()] = np.nan
    return base


# ---- the oracle (float64) -------------------------------------------------------------------------


def ref_shrink(comp: Composition, x, a, stack: int) -> np.ndarray:
    out = np.zeros((x.shape[0], a.shape[1]))
    for start, end, w, r, _ in comp.segments():
        if r > 0:
            out[start:end, : stack * r] = x[start:end] @ a[w, : stack * r].T
    return out


def ref_expand(comp: Composition, x, b, offsets, base) -> np.ndarray:
    """``base`` (float64) + slice-wise scaled x_j @ B_j^T; base None means zeros."""
    out = np.zeros((x.shape[0], b.shape[1])) if base is None else np.array(base, dtype=np.float64)
    for start, end, w, r, scaling in comp.segments():
        if r == 0 or end == start:
            continue
        for j, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
            xj = x[start:end, j * r : (j + 1) * r]
            out[start:end, lo:hi] += scaling * (xj @ b[w, lo:hi, :r].T)
    return out


def ref_stacked(comp: Composition, x, a, b, offsets, base) -> np.ndarray:
    """QKV / gate-up: shrink with stack = len(offsets)-1, then expand over those slices."""
    stack = len(offsets) - 1
    return ref_expand(comp, ref_shrink(comp, x, a, stack), b, offsets, base)


# ---- the check ------------------------------------------------------------------------------------


@dataclass
class Check:
    rel_error: float
    ok: bool
    detail: str = field(default="")


def compare(out: np.ndarray, ref: np.ndarray, dtype_name: str) -> Check:
    """Relative error over the finite part; NaN must sit exactly where the oracle has NaN."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        return Check(float("inf"), False, f"shape {out.shape} != {ref.shape}")
    out_nan, ref_nan = np.isnan(out), np.isnan(ref)
    if (out_nan != ref_nan).any():
        bad = np.argwhere(out_nan != ref_nan)
        return Check(
            float("inf"), False, f"{len(bad)} elements differ in NaN-ness (poison read or written), first at {bad[0].tolist()}"
        )
    if np.isinf(out).any():
        return Check(float("inf"), False, "inf in output")
    diff = np.linalg.norm((out - ref)[~ref_nan])
    scale = np.linalg.norm(ref[~ref_nan])
    rel = float(diff / scale) if scale > 0 else float(diff)
    tol = TOLERANCE[dtype_name]
    return Check(rel, rel <= tol, f"rel error {rel:.3g} vs tolerance {tol:g}")
