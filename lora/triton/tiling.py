"""Launch planning: tile sizes chosen from tensor shapes, never from metadata values.

A plan depends on the token count ``s``, widths (K, N, max_r, slice width), the number of adapter
slots, the number of segments, the dtype and the device; never on ``max_len`` or the values of
``seg_lens`` / ranks, so a call captured in a CUDA graph stays valid when new metadata is copied in.

Lookup order: the tuned table for this device (``tuned.json`` beside this file, written by
``benchmarks/tune_triton.py``; keyed by the device name torch reports), else the heuristic below.

The heuristic (rows per group ``g = ceil(s / num_lora)``: what one adapter gets when every slot is
in use, the case that sets the cost):

* **shrink, prefill** (``g >= 128``): the whole stacked width in one program, so x is read once.
  Up to 64 columns: 64-row chunks on 4 warps with 128-deep K steps (two or three programs per
  multiprocessor overlap one's loads with another's MMAs); up to 128 columns: one 128-wide tile,
  64-deep K steps, 4 stages; wider (QKV at rank 64): 128-row chunks on 8 warps, ``N_SUB`` sub-tiles
  of 64 (3 x 64, no padding to 256). These were the fastest across prefill *and* mixed batches:
  plans with one program per multiprocessor win on a batch whose ~130 chunks fit 132 SMs in one
  wave and lose 1.5-1.8x on one whose ~136 chunks need a second. Split K for long K with narrow
  outputs (down projection at rank 16) or while the programs fall short of the multiprocessors.
* **shrink, decode** (``g < 128``): reading each adapter's weights once dominates, so one program
  per adapter group (no chunk-slot search) and the grid is spread over the weights: ``BLOCK_M`` =
  the next power of two of ``1.5 g`` (16..64: a typical adapter's rows fit one chunk), narrow
  column tiles (16 or 32) and split-K until there is a program per multiprocessor.
* **expand**: bound by reading and writing ``base_output``. Prefill: 32 x 128 tiles (rank <= 32)
  or 128 x 64 (larger ranks: fewer re-reads of the B tile per row), 4 column blocks per program so
  the per-program metadata work is amortised.
  Decode: one program per adapter group, the same row block as shrink, 64-column tiles and enough
  column blocks per program for about four programs per multiprocessor.

These defaults come from the tuning runs recorded in ``benchmarks/`` (H100); the tuned table
overrides them per shape.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch

TUNED_PATH = Path(__file__).with_name("tuned.json")

#: Above this many rows per adapter a batch is planned as prefill (large row tiles).
PREFILL_ROWS_PER_GROUP = 128


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclass(frozen=True)
class ShrinkPlan:
    block_m: int
    block_n: int
    n_sub: int  # column sub-tiles per program (1..4); a program covers n_sub * block_n columns
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 3
    group_grid: bool = False  # grid axis 0 = adapter group (decode) instead of chunk slots (prefill)

    def __post_init__(self):
        for f in ("block_m", "block_n", "block_k"):
            v = getattr(self, f)
            if not (_is_pow2(v) and v >= 16):
                raise ValueError(f"ShrinkPlan.{f}={v} must be a power of two >= 16")
        if not 1 <= self.n_sub <= 4:
            raise ValueError(f"ShrinkPlan.n_sub={self.n_sub} must be 1..4")
        if self.split_k < 1:
            raise ValueError(f"ShrinkPlan.split_k={self.split_k} must be >= 1")


@dataclass(frozen=True)
class ExpandPlan:
    block_m: int
    block_n: int
    n_iters: int  # column blocks walked by one program
    num_warps: int = 4
    num_stages: int = 2
    group_grid: bool = False  # grid axis 0 = adapter group (decode) instead of chunk slots (prefill)

    def __post_init__(self):
        for f in ("block_m", "block_n"):
            v = getattr(self, f)
            if not (_is_pow2(v) and v >= 16):
                raise ValueError(f"ExpandPlan.{f}={v} must be a power of two >= 16")
        if self.n_iters < 1:
            raise ValueError(f"ExpandPlan.n_iters={self.n_iters} must be >= 1")


# ---- kernel constants derived from shapes -----------------------------------------------------------


def group_block(groups: int) -> int:
    """Vector width holding one entry per adapter group."""
    return max(2, next_pow2(groups))


def seg_block(bs: int) -> int:
    """Segments held at once by the in-kernel metadata scans (all of them up to 1024)."""
    return max(16, min(next_pow2(max(bs, 1)), 1024))


def find_block(bs: int, groups: int) -> int:
    """Segments per step of the chunk-slot search (a groups x segments compare, kept <= 4096)."""
    return max(16, min(next_pow2(max(bs, 1)), 4096 // group_block(groups)))


def rows_by_histogram(block_m: int, seg_block_: int) -> bool:
    """Chunk rows by cumulative histogram when a rows x segments compare would pass 4096 elements."""
    return block_m * seg_block_ > 4096


def rank_block(max_r: int) -> int:
    """K width of the expand dot: the rank buffer rounded up to a power of two (>= 16 for tl.dot)."""
    return max(16, next_pow2(max_r))


def dot_precision(dtype: torch.dtype, device: torch.device) -> str:
    """float32 inputs: three-pass TF32 on a GPU (about float32 accuracy on tensor cores)."""
    if dtype == torch.float32 and torch.device(device).type == "cuda":
        return "tf32x3"
    return "ieee"


@lru_cache(maxsize=None)
def _device_info(device_type: str, index: int | None) -> tuple[str, int, int]:
    if device_type == "cuda":
        props = torch.cuda.get_device_properties(index if index is not None else torch.cuda.current_device())
        smem = getattr(props, "shared_memory_per_block_optin", 0) or 166 * 1024
        return props.name, props.multi_processor_count, int(smem)
    return "cpu", 4, 1 << 30  # Triton's interpreter: keep grids small; no shared-memory limit


def device_info(device) -> tuple[str, int]:
    """(name, multiprocessor count) of ``device``."""
    device = torch.device(device)
    return _device_info(device.type, device.index)[:2]


def smem_limit(device) -> int:
    device = torch.device(device)
    return _device_info(device.type, device.index)[2]


# Shared memory a plan needs, estimated as Triton lays it out: the pipelined operand tiles times the
# stages, with headroom for layout conversions (float32 dots through tf32x3 take about twice).
def shrink_smem(plan: ShrinkPlan, itemsize: int) -> int:
    tiles = (plan.block_m + plan.n_sub * plan.block_n) * plan.block_k * itemsize * plan.num_stages
    return int(tiles * (2.0 if itemsize == 4 else 1.15))


def expand_smem(plan: ExpandPlan, max_r: int, itemsize: int) -> int:
    r = rank_block(max_r)
    tiles = (plan.block_m * r + r * plan.block_n) * itemsize * max(plan.num_stages, 1)
    return int(tiles * (2.0 if itemsize == 4 else 1.15) + plan.block_m * plan.block_n * 4)


def fit_shrink(plan: ShrinkPlan, itemsize: int, limit: int) -> ShrinkPlan:
    """The plan, with fewer stages and then shorter K steps until it fits ``limit`` bytes of shared memory
    (a table tuned for 16-bit inputs, used for float32)."""
    while shrink_smem(plan, itemsize) > limit:
        if plan.num_stages > 2:
            plan = replace(plan, num_stages=plan.num_stages - 1)
        elif plan.block_k > 32:
            plan = replace(plan, block_k=plan.block_k // 2)
        elif plan.block_n > 16:
            plan = replace(plan, block_n=plan.block_n // 2, n_sub=min(4, plan.n_sub * 2))
        else:
            break
    return plan


def fit_expand(plan: ExpandPlan, max_r: int, itemsize: int, limit: int) -> ExpandPlan:
    while expand_smem(plan, max_r, itemsize) > limit:
        if plan.num_stages > 1:
            plan = replace(plan, num_stages=plan.num_stages - 1)
        elif plan.block_n > 16:
            plan = replace(plan, block_n=plan.block_n // 2, n_iters=plan.n_iters * 2)
        elif plan.block_m > 16:
            plan = replace(plan, block_m=plan.block_m // 2)
        else:
            break
    return plan


# ---- tuned table ------------------------------------------------------------------------------------


def token_bucket(s: int) -> int:
    """Token counts share a tuned entry by power of two; everything above 4096 is one bucket."""
    return min(next_pow2(s), 8192)


def shrink_key(s: int, k: int, n_out: int, num_lora: int) -> str:
    return f"shrink:s{token_bucket(s)}:k{k}:n{n_out}:l{next_pow2(num_lora)}"


def expand_key(s: int, max_r: int, n_total: int, max_slice: int, stack: int, num_lora: int) -> str:
    return f"expand:s{token_bucket(s)}:r{max_r}:n{n_total}:w{max_slice}:st{stack}:l{next_pow2(num_lora)}"


@lru_cache(maxsize=None)
def _tuned(path: str) -> dict:
    """The table file, read once per process (a call's launch path must not touch the file system)."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _table_path() -> str | None:
    """The tuned table in use: ``tuned.json``, or None when ``LORA_TRITON_NO_TUNED=1`` disables it."""
    return None if os.environ.get("LORA_TRITON_NO_TUNED") == "1" else str(TUNED_PATH)


def _device_plans(path: str | None, device_name: str) -> dict:
    return _tuned(path).get("devices", {}).get(device_name, {}) if path else {}


def tuned_table(device_name: str) -> dict:
    """{key: plan dict} for ``device_name`` from ``tuned.json`` ({} when absent or disabled)."""
    return _device_plans(_table_path(), device_name)


# ---- plans ------------------------------------------------------------------------------------------


def heuristic_shrink(s: int, k: int, n_out: int, num_lora: int, num_sms: int) -> ShrinkPlan:
    g = math.ceil(s / max(num_lora, 1))
    if g >= PREFILL_ROWS_PER_GROUP:
        # Measured on an H100 over prefill-8k and mixed batches (benchmarks/results/h100): the plan that
        # is fast for both, not the one fastest for one lucky batch geometry. With one program per
        # multiprocessor (deep stages, wide tiles) ~130-140 chunks land on 132 SMs as one wave or as
        # two (the second nearly empty), so wide outputs use tiles that let programs share SMs.
        if n_out <= 64:
            block_m, block_n, n_sub, block_k, warps, stages = 64, max(16, next_pow2(n_out)), 1, 128, 4, 3
        elif n_out <= 128:
            block_m, block_n, n_sub, block_k, warps, stages = 64, 128, 1, 64, 4, 4
        else:
            block_n = 64 if n_out <= 256 else 128
            block_m, n_sub, block_k, warps, stages = 128, min(4, math.ceil(n_out / block_n)), 64, 8, 4
            return ShrinkPlan(block_m, block_n, n_sub, block_k, 1, warps, stages)
        programs = math.ceil(s / block_m) * math.ceil(n_out / (block_n * n_sub))
        split = 2 if k >= 8192 and n_out <= 32 else 1  # long K, narrow output: a second wave hides the tail
        while programs * split < 0.9 * num_sms and split < 4 and math.ceil(k / block_k) // (2 * split) >= 8:
            split *= 2
        return ShrinkPlan(block_m, block_n, n_sub, block_k, split, warps, stages)
    block_m = min(64, max(16, next_pow2(math.ceil(1.5 * g))))
    block_n = 16 if n_out <= 32 else 32
    block_k = 128
    programs = min(num_lora, s) * math.ceil(n_out / block_n)
    split = 1
    while programs * split < num_sms and split < 16 and math.ceil(k / block_k) // (2 * split) >= 1:
        split *= 2
    return ShrinkPlan(block_m, block_n, 1, block_k, split, 4, 4, group_grid=True)


def heuristic_expand(s: int, max_r: int, max_slice: int, num_lora: int, stack: int = 1, num_sms: int = 132) -> ExpandPlan:
    g = math.ceil(s / max(num_lora, 1))
    if g >= PREFILL_ROWS_PER_GROUP:
        # Rank 16: 32 x 128 tiles (more programs in flight); rank 64: 128-row chunks, so each B tile
        # (64 columns x 64 of rank) read from L2 serves twice the rows of base_output.
        return ExpandPlan(32, 128, 4, num_warps=4, num_stages=2) if max_r <= 32 else ExpandPlan(128, 64, 4, 4, 2)
    block_m = min(64, max(16, next_pow2(math.ceil(1.5 * g))))
    block_n = 64
    per_program = max_slice * stack * min(num_lora, s) / (block_n * 4 * num_sms)  # column blocks for ~4 waves
    n_iters = 1 << max(0, min(4, int(math.log2(max(per_program, 1)))))
    return ExpandPlan(block_m, block_n, n_iters, num_warps=4, num_stages=2, group_grid=True)


def plan_shrink(s: int, k: int, n_out: int, num_lora: int, bs: int, dtype, device) -> ShrinkPlan:
    """The launch plan of a shrink: the tuned entry for this device and shape bucket, else the heuristic;
    then fitted to the device's shared memory. Memoised per table (the eager launch path pays a dict lookup)."""
    return _plan_shrink(_table_path(), s, k, n_out, num_lora, dtype, torch.device(device))


def plan_expand(
    s: int, max_r: int, n_total: int, max_slice: int, stack: int, num_lora: int, bs: int, dtype, device
) -> ExpandPlan:
    """As :func:`plan_shrink`, for an expand."""
    return _plan_expand(_table_path(), s, max_r, n_total, max_slice, stack, num_lora, dtype, torch.device(device))


@lru_cache(maxsize=8192)
def _plan_shrink(table: str | None, s: int, k: int, n_out: int, num_lora: int, dtype, device) -> ShrinkPlan:
    name, sms = device_info(device)
    hit = _device_plans(table, name).get(shrink_key(s, k, n_out, num_lora))
    plan = ShrinkPlan(**hit) if hit is not None else heuristic_shrink(s, k, n_out, num_lora, sms)
    return fit_shrink(plan, dtype.itemsize, smem_limit(device))


@lru_cache(maxsize=8192)
def _plan_expand(table: str | None, s: int, max_r: int, n_total: int, max_slice: int, stack: int, num_lora: int, dtype, device) -> ExpandPlan:
    name, sms = device_info(device)
    hit = _device_plans(table, name).get(expand_key(s, max_r, n_total, max_slice, stack, num_lora))
    plan = ExpandPlan(**hit) if hit is not None else heuristic_expand(s, max_r, max_slice, num_lora, stack, sms)
    return fit_expand(plan, max_r, dtype.itemsize, smem_limit(device))

