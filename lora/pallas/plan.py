"""One launch plan per op shape, and the one sequence of steps that runs it (no jax, no torch here).

A plan is derived from shapes only (token bucket, K, N, max_r, stack, slots, dtypes) and the
caller's :class:`~lora.pallas.tiling.Tuning`; it is memoised, so a call computes nothing twice:
kernel configurations, padding, the float32 split, the expand's shared-memory fit (checked before
the shrink of a fused op launches). The functions :func:`run_shrink`, :func:`run_expand` and
:func:`run_fused` are the order of the steps, written once; an *executor* supplies the primitives:

=======================  =======================================================================
``pad(t, shape, role,``  t zero-padded at the end of each dim to ``shape`` (t itself if equal);
``zero)``                ``zero=False``: the padding may hold anything (the torch executor skips
                         the fill where every kernel that reads the padding masks it)
``split_f32(t, role)``   (hi, lo) bfloat16 parts of a float32 tensor, ``hi + lo ~= t``
``add(a, b)``            a + b (the torch executor adds in place into a)
``aligned(t, role)``     t with a 16-byte aligned base address (TMA); JAX arrays always are
``tail(x)``              the (64, cols) view of x's last 64 rows (only used with ``cfg.tail``)
``shrink_block``,        launch a kernel of :mod:`~lora.pallas.shrink_kernel` /
``shrink_split``,        :mod:`~lora.pallas.expand_kernel` with the batch's device arrays
``expand``               (a shrink's ``slot``: 0 for the first product, 1 for those added to it;
                         ``shrink_block(..., dest)``: into the torch executor's result tensor)
``add_parts(cfg,``       launch :func:`~lora.pallas.shrink_kernel.add_parts` on a split shrink's
``batch, p, slot,``      partial tiles, rows < the batch's row count (into ``dest`` when given: the
``dest)``                torch executor's result tensor)
``arange``, ``where``..  the array namespace :mod:`lora.pallas.meta` is written against
``writeback(t, base)``   the padded result back into the caller's base
=======================  =======================================================================

:mod:`lora.pallas.api` (JAX, functional) and :mod:`lora.pallas.backend` (torch, in place, zero-copy
on the current stream) are those executors. ``role`` names what a copy holds ("shrink.x", "expand.b",
...) and ``slot`` which shrink result it is: the torch executor keeps each in a persistent buffer of
the current stream (:mod:`lora.triton.scratch`), so an op call allocates nothing after warm-up; the
JAX executor ignores both.

float32 activations
    are computed as three products of bfloat16 parts on the bf16 tensor cores, ``hi*hi + hi*lo +
    lo*hi`` (``x = hi + lo + e`` with ``|e| <= 2**-17 |x|``), accumulated in float32: about 16
    significant bits per operand, not float32's 24 (``lo*lo`` and ``e`` are dropped). On a
    K=4096 dot product of unit-variance x and A ~ N(0, 1/K) (outputs ~1): max absolute error 1.7e-5,
    median relative error 4.4e-6, against 1.6e-6 / 3.7e-7 for a float32 dot product and 1e-2 /
    2.3e-3 for one bfloat16 product (``tests/pallas`` checks the band on the kernels themselves). So:
    well inside the contract's float32 tolerance (1e-3 relative), about 10x short of float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .tiling import (
    BM,
    DEFAULT_TUNING,
    K_MULTIPLE,
    N_MULTIPLE,
    R_MULTIPLE,
    PartsConfig,
    ShrinkConfig,
    Tuning,
    expand_config,
    parts_config,
    round_up,
    shift_pad,
    shrink_config,
    x_columns,
)

__all__ = ["ShrinkPlan", "ExpandPlan", "plan_shrink", "plan_expand", "run_shrink", "run_expand", "run_fused"]

OP_DTYPES = ("bfloat16", "float16")
DTYPES = OP_DTYPES + ("float32",)

#: (x part, weight part) of each product: 0 = the operand itself (or its bfloat16 hi part), 1 = lo.
F32_SHRINK_PARTS = ((0, 0), (0, 1), (1, 0))
#: (B part, x part) of each expand product for float32 weights (x's lo part is taken in-kernel).
F32_EXPAND_PARTS = ((0, 0), (1, 0), (0, 1))


@dataclass(frozen=True)
class ShrinkPlan:
    """x (rows, K) @ A (L, stack*max_r, K)^T -> (bpad, cfg.out_cols) in x's dtype, rows >= s unspecified."""

    cfg: ShrinkConfig
    kp: int  # K padded (multiple of 64)
    rp: int  # max_r padded (multiple of 16)
    min_rows: int  # x is padded (copied) to this many rows when it has fewer
    parts: tuple  # ((x part, A part), ...): one launch each, results added
    #: split (or K-split) shrinks: the sum of the partial tiles into the output, (bpad,
    #: cfg.out_cols) in x's dtype; None without partial tiles
    sum: PartsConfig | None = None

    @property
    def na(self) -> int:
        return self.cfg.na

    def writes_into(self, rows: int) -> bool:
        """Whether the output can be written straight into a caller's tensor of ``rows`` rows (and
        cfg.out_cols columns, 16-byte aligned): the block variant and the partial-tile sum write
        rows < s only (the boxes are clamped to the real rows when there are at least 64); the
        float32 path adds three products."""
        if len(self.parts) > 1 or rows < self.min_rows:
            return False
        return rows == self.cfg.bpad or self.cfg.tail

    @property
    def kernels(self) -> list:
        """(kind, configuration) of each distinct kernel the plan launches (what to lower ahead)."""
        return [("shrink", self.cfg)] + ([("parts", self.sum)] if self.sum is not None else [])


@dataclass(frozen=True)
class ExpandPlan:
    """base (rows, N) += expand of x (rows, stack*max_r or the shrink's float32 output)."""

    cfgs: tuple  # one ExpandConfig per launch
    b_parts: tuple  # which part of B each launch uses (0: B or its hi part, 1: lo)
    np_: int  # N padded (multiple of 64)
    rp: int
    x_cols: int  # columns x is padded to
    min_rows: int
    noop: bool  # max_r == 0: nothing to add

    @property
    def stack(self) -> int:
        return self.cfgs[0].stack if self.cfgs else 1

    @property
    def kernels(self) -> list:
        """(kind, configuration) of each distinct kernel the plan launches (what to lower ahead)."""
        return list(dict.fromkeys(("expand", c) for c in self.cfgs))


def _check_dtype(name: str, dtype: str, allowed=DTYPES) -> None:
    if dtype not in allowed:
        raise TypeError(f"{name} has dtype {dtype}; supported: {', '.join(allowed)}")


def _op_dtype(dtype: str) -> str:
    return "bfloat16" if dtype == "float32" else dtype


@lru_cache(maxsize=4096)
def plan_shrink(bpad: int, k: int, max_r: int, stack: int, num_lora: int, dtype: str, *, tail: bool,
                result: bool = False, tuning: Tuning = DEFAULT_TUNING) -> ShrinkPlan:
    """The shrink of x (<= bpad rows, K) with A (num_lora, stack*max_r, K) (max_r >= 1), in x's dtype.

    ``tail``: x keeps its real rows (torch); else x is padded to ``bpad`` rows (JAX). ``result``:
    the op's own result, (bpad, stack*max_r padded to 16); else a fused op's expand input, with
    room for the expand's x windows. Either way the kernels round the float32 sums once to x's
    dtype: the expand rounds its x operand to the weights' dtype anyway (session 10: a float32
    expand input cost the rank-16 QKV expand its 256-column tiles, 85 against 66 us on the H200)."""
    _check_dtype("x", dtype)
    if max_r < 1:
        raise ValueError(f"a shrink needs max_r >= 1, got {max_r}")
    kp, rp = round_up(k, K_MULTIPLE), round_up(max_r, R_MULTIPLE)
    cfg = shrink_config(bpad, kp, stack * rp, num_lora, stack, _op_dtype(dtype), tail=tail, out_dtype=dtype,
                        result=result, tuning=tuning)
    parts = F32_SHRINK_PARTS if dtype == "float32" else ((0, 0),)
    total = parts_config(cfg, cfg.out_cols, dtype, tuning) if (cfg.split or cfg.ksplit > 1) else None
    return ShrinkPlan(cfg, kp, rp, BM if tail else bpad, parts, total)


@lru_cache(maxsize=4096)
def plan_expand(bpad: int, n: int, max_r: int, stack: int, num_lora: int, x_dtype: str, w_dtype: str,
                base_dtype: str, *, internal: bool, tail: bool, tuning: Tuning = DEFAULT_TUNING) -> ExpandPlan:
    """base (<= bpad rows, N) += expand of x over B (num_lora, N, max_r) in ``stack`` slices.

    ``internal``: x is a shrink output of :func:`run_shrink` (bpad rows, slices at j*r)."""
    _check_dtype("x", x_dtype)
    _check_dtype("weights", w_dtype)
    _check_dtype("base_output", base_dtype)
    min_rows = BM if tail else bpad
    if max_r == 0:
        return ExpandPlan((), (), n, 0, 0, min_rows, True)
    np_, rp = round_up(n, N_MULTIPLE), round_up(max_r, R_MULTIPLE)
    # Slice j of a row starts at column j*r, r a device value: its window may start off a 16-byte
    # boundary, which the kernel then shifts in shared memory (no repack of x, no rank read).
    x_shift = stack > 1
    if x_shift or x_dtype == "float32":
        x_cols = x_columns(stack * rp + (shift_pad(rp) if x_shift else 0), 4 if x_dtype == "float32" else 2)
    else:  # one slice at column 0: windows of kr columns (rows of a multiple of 32 bytes), no copy of x
        x_cols = rp
    x_tail = tail and not internal  # the shrink output has bpad rows
    width = stack * max_r
    if x_tail and x_shift and x_dtype != "float32" and width * 2 % 16 == 0 and width >= rp + shift_pad(rp):
        # The torch caller's stacked x as it is (no padded copy): its rows are 16-byte multiples (a
        # TMA requirement), and the windows that run past its last column read zeros (a TMA load's
        # out-of-bounds fill), columns the kernel masks anyway. (The JAX executor pads: interpret
        # mode has no out-of-bounds fill.)
        x_cols = width
    op = _op_dtype(w_dtype)
    b_parts, x_parts = ((0, 1, 0), (0, 0, 1)) if w_dtype == "float32" else ((0,), (0,))

    def configs(x_cols):
        return tuple(
            expand_config(bpad, np_, x_cols, rp, num_lora, stack, x_dtype, op, base_dtype, x_part=xp, tail=x_tail,
                          x_shift=x_shift, tuning=tuning)
            for xp in x_parts
        )

    cfgs = configs(x_cols)
    if cfgs[0].gather and not tail and not internal:
        # The JAX executor pads x so that every gathered row copy lies inside it (interpret mode has
        # no out-of-bounds fill; the torch executor's tensors rely on TMA's zero fill instead).
        reach = (stack - 1) * rp + cfgs[0].gather_cols
        if x_cols < reach:
            x_cols = reach
            cfgs = configs(x_cols)
    return ExpandPlan(cfgs, b_parts, np_, rp, x_cols, min_rows, False)


# ---- the steps, written once ---------------------------------------------------------------------


def run_shrink(ex, plan: ShrinkPlan, batch, x, a, *, dest=None):
    """The (bpad, cfg.out_cols) shrink output in x's dtype; rows < s hold the result (zeros without
    an adapter). ``dest``: a torch tensor the output is written into (no copy after the kernels),
    where :meth:`ShrinkPlan.writes_into` allows it."""
    cfg = plan.cfg
    sum_cfg = plan.sum
    dest = dest if len(plan.parts) == 1 else None
    s = x.shape[0]
    rows = max(s, plan.min_rows)
    x = ex.aligned(ex.pad(x, (rows, plan.kp), "shrink.x"), "shrink.x")
    a = ex.aligned(ex.pad(a, (a.shape[0], cfg.stack * plan.rp, plan.kp), "shrink.a"), "shrink.a")
    if len(plan.parts) > 1:
        xs, as_ = ex.split_f32(x, "shrink.x"), ex.split_f32(a, "shrink.a")
    else:
        xs, as_ = (x,), (a,)
    out = None
    for xi, ai in plan.parts:
        o = _shrink_once(ex, cfg, sum_cfg, batch, xs[xi], as_[ai], 0 if out is None else 1, dest)
        out = o if out is None else ex.add(out, o)
    return out


def _shrink_once(ex, cfg: ShrinkConfig, sum_cfg, batch, x, a, slot: int = 0, dest=None):
    x_tail = ex.tail(x) if cfg.tail else None
    if not cfg.split:
        if cfg.ksplit == 1:
            return ex.shrink_block(cfg, batch, x, x_tail, a, slot, dest)
        parts = ex.shrink_block(cfg, batch, x, x_tail, a, slot)
    else:
        parts = ex.shrink_split(cfg, batch, x, x_tail, a, slot)
    # (bpad, sum_cfg.out_cols) from the partial tiles (nb, tiles, 64, na_out): added in index order by
    # one kernel (the same bits every run), rows < s, each block's at its rows (a partial last
    # block's tiles hold its clamped box: the kernel reads its rows there)
    return ex.add_parts(sum_cfg, batch, parts, slot, dest)


def run_expand(ex, plan: ExpandPlan, batch, x, b, offsets, base):
    """base with the LoRA update of x over B added (the torch executor: base itself, in place)."""
    if plan.noop or base.shape[0] == 0:
        return base
    cfg0 = plan.cfgs[0]
    b = ex.aligned(ex.pad(b, (b.shape[0], plan.np_, plan.rp), "expand.b"), "expand.b")
    rows = max(x.shape[0], plan.min_rows)
    # x's padding is never used: every expand masks x columns >= the rank and rows of other slots
    # (jnp.where, so NaN padding too) before its product, except where x is the wgmma operand as it
    # is (the persistent kernel's full-rank windows), which lie in x's own columns and rows
    x = ex.aligned(ex.pad(x, (rows, max(x.shape[1], plan.x_cols)), "expand.x", zero=False), "expand.x")
    target = ex.aligned(ex.pad(base, (max(base.shape[0], plan.min_rows), plan.np_), "expand.base"), "expand.base")
    bs = ex.split_f32(b, "expand.b") if len(plan.b_parts) > 1 else (b,)
    x_tail = ex.tail(x) if cfg0.tail else None
    for cfg, bi in zip(plan.cfgs, plan.b_parts):
        target = ex.expand(cfg, batch, offsets, x, x_tail, bs[bi], target)
    return ex.writeback(target, base)


def run_fused(ex, shrink: ShrinkPlan, expand: ExpandPlan, batch, x, a, b, offsets, base):
    """QKV / gate-up: the shrink output (x's dtype) feeds the expand directly."""
    if expand.noop or x.shape[0] == 0:
        return base
    return run_expand(ex, expand, batch, run_shrink(ex, shrink, batch, x, a), b, offsets, base)

