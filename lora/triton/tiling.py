"""Launch planning: tile sizes chosen from tensor shapes, never from metadata values.

A plan depends on the token count ``s``, widths (K, N, max_r, slice width), the number of adapter
slots, the number of segments, the dtype and the device; never on ``max_len`` or the values of
``seg_lens`` / ranks, so a call captured in a CUDA graph stays valid when new metadata is copied in.

Lookup order, per shape bucket: the user's tuned table for this device (written by ``python -m lora
tune`` to the user's cache directory), the table shipped for this device (``tables/``), the heuristic
below. A prefill-sized bucket is also keyed by its segments' geometry (a few long prompts or many short
segments: :func:`segment_class`), each table's entry for that geometry first. Tables are keyed by the
device name torch reports (see "tuned tables" below).

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

These defaults come from the tuning runs recorded in ``benchmarks/`` (H100); a tuned table
overrides them per shape.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch

from ..user_cache import user_cache_dir

#: Above this many rows per adapter a batch is planned as prefill (large row tiles).
PREFILL_ROWS_PER_GROUP = 128


def decode_sized(s: int, num_lora: int) -> bool:
    """Fewer rows per adapter slot than a prefill tile: planned as decode (adapter-group grids)."""
    return math.ceil(s / max(num_lora, 1)) < PREFILL_ROWS_PER_GROUP


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
    # > 0: stream-K (prefill): this many programs per multiprocessor share the (tile, K step) iterations
    # equally, so a batch whose tile count is just over a multiple of the grid runs no near-empty second wave
    stream_k: int = 0
    # Tiles loaded by the tensor memory accelerator (prefill layout; Hopper and later, 16-bit inputs: see
    # :func:`tma_supported`): the weight tiles always, the x tile where the chunk's rows are consecutive
    # tokens (else gathered by pointers); the column groups of a chunk are neighbouring programs
    tma: bool = False

    def __post_init__(self):
        for f in ("block_m", "block_n", "block_k"):
            v = getattr(self, f)
            if not (_is_pow2(v) and v >= 16):
                raise ValueError(f"ShrinkPlan.{f}={v} must be a power of two >= 16")
        if not 1 <= self.n_sub <= 4:
            raise ValueError(f"ShrinkPlan.n_sub={self.n_sub} must be 1..4")
        if self.split_k < 1:
            raise ValueError(f"ShrinkPlan.split_k={self.split_k} must be >= 1")
        if not 0 <= self.stream_k <= 4:
            raise ValueError(f"ShrinkPlan.stream_k={self.stream_k} must be 0..4")
        if self.stream_k and (self.split_k != 1 or self.group_grid):
            raise ValueError("ShrinkPlan.stream_k needs split_k=1 and the prefill layout (group_grid=False)")
        if self.tma and (self.stream_k or self.group_grid):
            raise ValueError("ShrinkPlan.tma needs the prefill layout without stream-K (group_grid=False, stream_k=0)")


@dataclass(frozen=True)
class ExpandPlan:
    block_m: int
    block_n: int
    n_iters: int  # column blocks walked by one program
    num_warps: int = 4
    num_stages: int = 2
    group_grid: bool = False  # grid axis 0 = adapter group (decode) instead of chunk slots (prefill)
    # base_output is the dot's accumulator (x scaled in float32 and rounded to the operand dtype before the
    # product) instead of being added to the scaled product after it: no change of layout for the sum. Not
    # used for fp16 x (scaled first, it could leave fp16's range)
    acc_base: bool = False

    def __post_init__(self):
        for f in ("block_m", "block_n"):
            v = getattr(self, f)
            if not (_is_pow2(v) and v >= 16):
                raise ValueError(f"ExpandPlan.{f}={v} must be a power of two >= 16")
        if self.n_iters < 1:
            raise ValueError(f"ExpandPlan.n_iters={self.n_iters} must be >= 1")


@dataclass(frozen=True)
class FusedPlan:
    """QKV / gate-up of a decode-sized batch as one launch (:mod:`.fused_decode`); ``fuse=False`` records
    that two launches (shrink, then expand) were measured faster for this shape."""

    block_m: int
    block_k: int
    split_k: int
    block_n: int
    n_iters: int
    num_warps: int = 4
    num_stages: int = 2
    fuse: bool = True
    # two launches (fuse=False): the expand is the shrink's programmatic dependent on decode batches (see
    # pdl_chain); measured per shape, since it is slower on some (the H200's rank-16 256-token gate-up: 17%)
    pdl: bool = True
    # two launches (fuse=False): the shrink, split ``split_k`` ways in K (its other tiles from its own plan),
    # leaves its float32 partials for the expand to sum, in split order, as it loads x (no ticket, no last
    # program reading the partials back in the shrink: ~1 us of a decode shrink, session 15); the same bits
    # as the shrink's own finish. The expand reads ``split_k`` times the x bytes: the split is the trade-off.
    partials: bool = False

    def __post_init__(self):
        for f in ("block_m", "block_k", "block_n"):
            v = getattr(self, f)
            if not (_is_pow2(v) and v >= 16):
                raise ValueError(f"FusedPlan.{f}={v} must be a power of two >= 16")
        if not 1 <= self.split_k <= 64:
            raise ValueError(f"FusedPlan.split_k={self.split_k} must be 1..64")
        if self.n_iters < 1:
            raise ValueError(f"FusedPlan.n_iters={self.n_iters} must be >= 1")
        if self.partials and (self.fuse or self.split_k < 2):
            raise ValueError("FusedPlan.partials is a way to run two launches: it needs fuse=False and split_k >= 2")


# ---- programmatic dependent launch -------------------------------------------------------------------


@lru_cache(maxsize=None)
def _pdl_supported(device_type: str, index: int | None) -> bool:
    if device_type != "cuda" or os.environ.get("LORA_TRITON_NO_PDL") == "1":
        return False
    import triton.language as tl

    if not hasattr(getattr(getattr(tl, "extra", None), "cuda", None), "gdc_wait"):
        return False
    major, _ = torch.cuda.get_device_capability(index if index is not None else torch.cuda.current_device())
    return major >= 9


def pdl_supported(device) -> bool:
    """Whether kernels on ``device`` can be launched as programmatic dependents (Hopper and later, a
    Triton with ``gdc_wait``; never on the CPU interpreter). ``LORA_TRITON_NO_PDL=1`` turns it off."""
    device = torch.device(device)
    return _pdl_supported(device.type, device.index)


@lru_cache(maxsize=None)
def _tma_capable(device_type: str, index: int | None) -> bool:
    if device_type != "cuda":
        return device_type == "cpu"  # Triton's interpreter models tensor descriptors
    major, _ = torch.cuda.get_device_capability(index if index is not None else torch.cuda.current_device())
    return major >= 9


def tma_capable(device) -> bool:
    """Whether ``device`` has the tensor memory accelerator (Hopper and later; the CPU interpreter models it)."""
    device = torch.device(device)
    return _tma_capable(device.type, device.index)


def tma_supported(x: torch.Tensor, weights: torch.Tensor) -> bool:
    """Whether a shrink of ``x (s, K)`` by ``weights (num_lora, n, K)`` can load its tiles through tensor
    descriptors (:attr:`ShrinkPlan.tma`): a device with the tensor memory accelerator (Hopper and later; the CPU
    interpreter), 16-bit inputs, rows contiguous in K, 16-byte aligned bases and row strides, and the weight
    slots stacked without gaps (one 2-D descriptor of ``num_lora * n`` rows). A plan with ``tma`` on an input
    that fails this runs its pointer form, same tiles."""
    if x.dtype not in (torch.bfloat16, torch.float16) or weights.dtype != x.dtype:
        return False
    if x.stride(1) != 1 or weights.stride(2) != 1 or weights.stride(0) != weights.shape[1] * weights.stride(1):
        return False
    size = x.element_size()
    if any(v % 16 for v in (x.data_ptr(), weights.data_ptr(), x.stride(0) * size, weights.stride(1) * size)):
        return False
    return tma_capable(x.device)


#: How a kernel launched as a programmatic dependent treats the kernel before it on the stream (the expand's and
#: the metadata kernel's ``PDL`` constexpr). A program lets the next kernel launch (``gdc_launch_dependents``)
#: right after its own ``gdc_wait`` returns; a dependent waits (``gdc_wait``) for this grid before it touches
#: what this grid writes.
PDL_OFF = 0  # a plain launch
PDL_ANY = 1  # the predecessor may be any kernel: wait for it before the first memory access
PDL_SHRINK = 2  # the predecessor is this op's shrink, which writes only x: B and base_output tiles load first


def pdl_launch(mode: int, device) -> dict:
    """Launch keywords for PDL mode ``mode`` (:data:`PDL_ANY`, :data:`PDL_SHRINK`; falsy: plain) where the
    device supports programmatic dependent launch, else a plain launch."""
    return {"PDL": int(mode), "launch_pdl": True} if mode and pdl_supported(device) else {}


def pdl_chain(s: int, num_lora: int, device) -> bool:
    """Whether a decode-sized op's launches overlap by PDL: every shrink is launched plainly and lets the next
    kernel launch at its start (``lora_shrink(pdl_trigger=True)``); every expand is a programmatic dependent
    of the kernel before it (:data:`PDL_SHRINK` after its own shrink, else :data:`PDL_ANY`: it waits before its
    first memory access). Measured on the H200 (benchmarks/results/h200, session 9), the Llama-3-8B decode step
    against PDL between a fused op's shrink and expand only: 0.6-7% faster on all four cases; making the shrinks
    dependents too was 6-7% slower on the rank-16 64-token step. Prefill batches launch plainly (several waves of
    programs; PDL was 5-14% slower there). ``LORA_TRITON_NO_PDL=1`` turns PDL off."""
    return decode_sized(s, num_lora) and pdl_supported(device)


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


# ---- tuned tables -----------------------------------------------------------------------------------
#
# A table holds measured plans for one device, keyed by shape bucket (``shrink_key`` / ``expand_key``);
# a prefill-sized bucket's key may carry its segment geometry (``...:seglong`` / ``...:segshort``, see
# ``segment_class``), which each table is asked for before the key without it.
# Where a plan comes from, first hit wins, per key:
#   1. the user's table for this device: ``<user_table_dir()>/<device slug>.json``, written by
#      ``python -m lora tune`` (``$KERNELSTACK_TUNE_DIR``, else ``$XDG_CACHE_HOME/kernelstack/lora-triton``,
#      else ``~/.cache/kernelstack/lora-triton``; ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows);
#   2. the table shipped in the package for this device (``tables/*.json`` beside this file);
#   3. the heuristic.
# ``LORA_TRITON_NO_TUNED=1`` skips both tables. The environment and the files are read once per process,
# when a plan is first needed (``reload_tables()`` reads them again); a file that cannot be used is reported by a :class:`TunedTableWarning` naming it
# and the reason, and planning goes on without it.

TABLES_DIR = Path(__file__).with_name("tables")
TABLE_FORMAT = "kernelstack.lora.triton.plans/1"
TUNE_DIR_ENV = "KERNELSTACK_TUNE_DIR"
_KEY = re.compile(r"^(shrink|expand|fused):[a-z0-9:]+$")


class TunedTableWarning(UserWarning):
    """A tuned-plan table could not be used (unreadable, not JSON, wrong format, invalid plan)."""


class TableError(ValueError):
    """Raised by :func:`read_table` for a file that is not a usable table; the message names the file."""


@dataclass(frozen=True)
class PlanTable:
    """One device's measured plans, as read from ``path``; ``origin`` is "user" or "shipped"."""

    path: str
    origin: str
    device: str
    capability: str | None
    plans: dict  # key -> ShrinkPlan | ExpandPlan
    meta: dict

    def describe(self) -> str:
        return f"{self.origin} table {self.path} ({len(self.plans)} plans)"


def token_bucket(s: int) -> int:
    """Token counts share a tuned entry by power of two; everything above 4096 is one bucket."""
    return min(next_pow2(s), 8192)


#: Prefill-sized batches whose segments average at least this many tokens are "long" (a few long
#: prompts), the others "short" (many short ones, as in mixed prefill and decode).
LONG_SEGMENT = 512
SEGMENT_CLASSES = ("long", "short")


def segment_class(s: int, num_lora: int, bs: int) -> str | None:
    """The segment geometry a prefill-sized batch is planned for: "long" (``s >= LONG_SEGMENT * bs``) or "short";
    None for decode-sized batches (their plans are per adapter group, not per row chunk).

    Row chunks never span two segments, so the rows a chunk wastes at a segment's end depend on the
    segments' length. On the H100 (session 34), on 8 prompts of 1k tokens, the rank-64 gate-up shrink's
    fastest plan took 29.2 us against 33.3 for the plan it shared with 32 segments of 1..512 tokens, on
    which that faster plan was slower. ``bs`` counts every segment the batch info holds, the empty ones a
    CUDA graph pads with too."""
    if decode_sized(s, num_lora):
        return None
    return "long" if s >= LONG_SEGMENT * max(bs, 1) else "short"


def with_segments(key: str, segments: str | None) -> str:
    """A bucket's key for one segment geometry (``key`` itself for None); :func:`general_key` undoes it."""
    return key if segments is None else f"{key}:seg{segments}"


def shrink_key(s: int, k: int, n_out: int, num_lora: int, segments: str | None = None) -> str:
    """The table key of a shrink; with ``segments`` (:func:`segment_class`) the key of that segment
    geometry, looked up before the key without it."""
    return with_segments(f"shrink:s{token_bucket(s)}:k{k}:n{n_out}:l{next_pow2(num_lora)}", segments)


def expand_key(s: int, max_r: int, n_total: int, max_slice: int, stack: int, num_lora: int,
               segments: str | None = None) -> str:
    """As :func:`shrink_key`, for an expand."""
    key = f"expand:s{token_bucket(s)}:r{max_r}:n{n_total}:w{max_slice}:st{stack}:l{next_pow2(num_lora)}"
    return with_segments(key, segments)


def general_key(key: str) -> str:
    """``key`` without its segment geometry (the entry a table falls back on)."""
    return key.split(":seg", 1)[0]


def fused_key(s: int, k: int, stack: int, max_r: int, n_total: int, max_slice: int, num_lora: int) -> str:
    return f"fused:s{token_bucket(s)}:k{k}:r{max_r}:n{n_total}:w{max_slice}:st{stack}:l{next_pow2(num_lora)}"


def device_slug(name: str) -> str:
    """File name stem of a device's table: "NVIDIA H200" -> "nvidia-h200"."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "device"


def _user_dir(tune_dir: str | None, xdg: str | None, home: str | None) -> Path:
    if tune_dir:
        return Path(tune_dir).expanduser()
    return user_cache_dir("lora-triton", xdg, home)


def _read_env_state() -> tuple | None:
    env = os.environ
    if env.get("LORA_TRITON_NO_TUNED") == "1":
        return None
    return (env.get(TUNE_DIR_ENV), env.get("XDG_CACHE_HOME"), env.get("HOME"), TABLES_DIR, _GENERATION[0])


_GENERATION = [0]  # bumped by reload_tables()
_STATE: list = []  # [the state] once read


def _env_state() -> tuple | None:
    """What decides which tables are read (None: tables disabled), read from the environment once
    (``reload_tables()`` reads it again); part of the plan cache key."""
    if not _STATE:
        _STATE.append(_read_env_state())
    return _STATE[0]


def user_table_dir() -> Path:
    """Where ``python -m lora tune`` writes and the backend reads this user's tables."""
    env = os.environ
    return _user_dir(env.get(TUNE_DIR_ENV), env.get("XDG_CACHE_HOME"), env.get("HOME"))


def user_table_path(device_name: str) -> Path:
    return user_table_dir() / f"{device_slug(device_name)}.json"


def _plan_from_dict(key: str, d) -> "ShrinkPlan | ExpandPlan":
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"bad key {key!r} (expected shrink:..., expand:... or fused:...)")
    if not isinstance(d, dict):
        raise ValueError(f"plan of {key} is not an object")
    cls = {"shrink": ShrinkPlan, "expand": ExpandPlan, "fused": FusedPlan}[key.split(":", 1)[0]]
    for f, v in d.items():
        flag = f in ("group_grid", "fuse", "pdl", "acc_base", "partials", "tma")
        if f in cls.__dataclass_fields__ and type(v) is not (bool if flag else int):
            raise ValueError(f"plan of {key}: {f}={v!r} must be {'true/false' if flag else 'an integer'}")
    try:
        return cls(**d)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"plan of {key}: {exc}") from None


def read_table(path, origin: str = "user") -> PlanTable:
    """Read and validate one table file; raises :class:`TableError` saying what is wrong with it."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise TableError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TableError(f"{path}: not valid JSON: {exc}") from None
    try:
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"format is {got!r}, expected {TABLE_FORMAT!r}")
        dev = data.get("device")
        if not isinstance(dev, dict) or not isinstance(dev.get("name"), str) or not dev["name"]:
            raise ValueError('"device" must be an object with a "name"')
        raw = data.get("plans")
        if not isinstance(raw, dict):
            raise ValueError('"plans" must be an object of key -> plan')
        plans = {key: _plan_from_dict(key, d) for key, d in raw.items()}
    except ValueError as exc:
        raise TableError(f"{path}: {exc}") from None
    meta = {k: v for k, v in data.items() if k not in ("format", "device", "plans")}
    return PlanTable(path, origin, dev["name"], dev.get("capability"), plans, meta)


def table_document(device: dict, plans: dict, meta: dict | None = None) -> dict:
    """The JSON document of a table: ``device`` ({"name", "capability", ...}), ``plans`` (key -> plan)."""
    out = {"format": TABLE_FORMAT, "device": dict(device)}
    out["plans"] = {k: (asdict(p) if not isinstance(p, dict) else dict(p)) for k, p in sorted(plans.items())}
    for k in out["plans"]:
        _plan_from_dict(k, out["plans"][k])
    out.update(meta or {})
    return out


def write_table(path, device: dict, plans: dict, meta: dict | None = None) -> Path:
    """Write a table atomically (a reader never sees half a file); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(table_document(device, plans, meta), indent=1) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _warn(msg: str) -> None:
    warnings.warn(msg, TunedTableWarning, stacklevel=3)


@lru_cache(maxsize=None)
def _shipped(tables_dir: Path, generation: int) -> dict:
    """{device name: PlanTable} of the tables shipped in the package."""
    out = {}
    for p in sorted(tables_dir.glob("*.json")) if tables_dir.is_dir() else ():
        try:
            t = read_table(p, "shipped")
        except TableError as exc:
            _warn(f"lora.triton: ignoring the shipped tuned table: {exc}")
            continue
        out.setdefault(t.device, t)
    return out


@lru_cache(maxsize=None)
def _tables(state: tuple | None, device_name: str) -> tuple:
    """The tables for ``device_name`` in precedence order (user, shipped), each read once."""
    if state is None:
        return ()
    tune_dir, xdg, home, tables_dir, generation = state
    found = []
    user = _user_dir(tune_dir, xdg, home) / f"{device_slug(device_name)}.json"
    if user.exists():
        try:
            t = read_table(user, "user")
            if t.device != device_name:
                raise TableError(f"{user}: measured on {t.device!r}, not on this device ({device_name!r})")
            found.append(t)
        except TableError as exc:
            _warn(f"lora.triton: ignoring the user's tuned table: {exc}; plans come from the shipped table or "
                  f"the heuristic (run `python -m lora tune` to rewrite it)")
    shipped = _shipped(tables_dir, generation).get(device_name)
    if shipped is not None:
        found.append(shipped)
    return tuple(found)


@lru_cache(maxsize=None)
def _merged(state: tuple | None, device_name: str) -> dict:
    """{key: (plan, PlanTable)}: per key, the first table that has it."""
    out = {}
    for t in reversed(_tables(state, device_name)):
        out.update({k: (p, t) for k, p in t.plans.items()})
    return out


def tables_for(device_name: str) -> tuple:
    """The tables planning reads for ``device_name``, user's first ((): disabled or none)."""
    return _tables(_env_state(), device_name)


def shipped_tables() -> dict:
    """{device name: PlanTable} shipped in the package (read once)."""
    state = _env_state()
    return dict(_shipped(TABLES_DIR, _GENERATION[0])) if state is not None else {}


def tuned_plan(key: str, device_name: str):
    """(plan, table) of ``key`` for ``device_name`` from the tables in precedence order, or None."""
    return _merged(_env_state(), device_name).get(key)


def tuned_table(device_name: str) -> dict:
    """{key: plan} for ``device_name``, merged over the tables in precedence order ({} when none)."""
    return {k: p for k, (p, _) in _merged(_env_state(), device_name).items()}


def reload_tables() -> None:
    """Forget what was read (the environment, tables, the plans derived from them): the next plan reads
    ``LORA_TRITON_NO_TUNED``, ``KERNELSTACK_TUNE_DIR`` / ``XDG_CACHE_HOME`` and the table files again."""
    _GENERATION[0] += 1
    _STATE.clear()
    for f in (_shipped, _tables, _merged, _plan_shrink, _plan_expand, _plan_fused, _fused_entry):
        f.cache_clear()


def describe_plan_sources(device) -> list[str]:
    """Lines saying where ``device``'s plans come from (for ``python -m lora list``); ``device`` None:
    no GPU here, so the tables there are and where the user's would be."""
    if device is None:
        shipped = shipped_tables()
        return [
            "triton plans: no CUDA device here",
            f"  shipped tables: {', '.join(f'{n} ({len(t.plans)} plans)' for n, t in sorted(shipped.items())) or 'none'}",
            f"  user tables:    {user_table_dir()} (written by `python -m lora tune` on a GPU)",
        ]
    name, sms = device_info(device)
    lines = [f"triton plans for {name} ({sms} multiprocessors):"]
    if _env_state() is None:
        return lines + ["  tuned tables disabled (LORA_TRITON_NO_TUNED=1): the heuristic for every shape"]
    tables = tables_for(name)
    user_path = user_table_path(name)
    if not any(t.origin == "user" for t in tables):
        why = "unusable (see the warning above)" if user_path.exists() else "none"
        lines.append(f"  user table    {user_path}: {why}")
    for i, t in enumerate(tables):
        use = "in use" if i == 0 else "in use where the tables above have no plan"
        lines.append(f"  {t.origin + ' table':13s} {t.path}: {len(t.plans)} plans, {use}")
    if not any(t.origin == "shipped" for t in tables):
        others = ", ".join(sorted(shipped_tables())) or "none"
        lines.append(f"  shipped table none for this device (shipped for: {others})")
    lines.append(f"  heuristic     {'for shapes no table has' if tables else 'in use for every shape'}")
    return lines



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


_FORCED: dict = {}  # plan type -> the plan every launch of that kind uses (python -m lora tune); see forced_plan


@contextmanager
def forced_plan(*plans):
    """Within the block, every launch of a kind given here (ShrinkPlan, ExpandPlan, FusedPlan) made
    without an explicit plan uses that plan (fitted to shared memory) instead of the tables or the
    heuristic: how the tuner times a candidate through the backend's own launch path. Not thread-safe;
    not for serving."""
    for plan in plans:
        if not isinstance(plan, (ShrinkPlan, ExpandPlan, FusedPlan)):
            raise TypeError(f"plan must be a ShrinkPlan, an ExpandPlan or a FusedPlan, got {type(plan).__name__}")
    saved = dict(_FORCED)
    _FORCED.update({type(p): p for p in plans})
    try:
        yield plans[0] if len(plans) == 1 else plans
    finally:
        _FORCED.clear()
        _FORCED.update(saved)


def plan_shrink(s: int, k: int, n_out: int, num_lora: int, bs: int, dtype, device) -> ShrinkPlan:
    """The launch plan of a shrink: the tuned entry for this device and shape bucket (user table, then
    shipped table), else the heuristic; then fitted to the device's shared memory. Memoised per shape and
    table state (the launch path pays a dict lookup)."""
    if _FORCED and ShrinkPlan in _FORCED:
        return fit_shrink(_FORCED[ShrinkPlan], dtype.itemsize, smem_limit(device))
    device = device if isinstance(device, torch.device) else torch.device(device)
    return _plan_shrink(_STATE[0] if _STATE else _env_state(), s, k, n_out, num_lora, segment_class(s, num_lora, bs),
                        dtype, device)


def plan_expand(
    s: int, max_r: int, n_total: int, max_slice: int, stack: int, num_lora: int, bs: int, dtype, device
) -> ExpandPlan:
    """As :func:`plan_shrink`, for an expand."""
    if _FORCED and ExpandPlan in _FORCED:
        return fit_expand(_FORCED[ExpandPlan], max_r, dtype.itemsize, smem_limit(device))
    device = device if isinstance(device, torch.device) else torch.device(device)
    return _plan_expand(_STATE[0] if _STATE else _env_state(), s, max_r, n_total, max_slice, stack, num_lora,
                        segment_class(s, num_lora, bs), dtype, device)


def _table_plan(state, name: str, key: str):
    """The plan of ``key`` from the first table (user's, then shipped) that has it or, failing its segment
    geometry, its general key; None when no table has either."""
    for t in _tables(state, name):
        for k in dict.fromkeys((key, general_key(key))):
            if k in t.plans:
                return t.plans[k]
    return None


@lru_cache(maxsize=8192)
def _plan_shrink(state, s: int, k: int, n_out: int, num_lora: int, segments, dtype, device) -> ShrinkPlan:
    name, sms = device_info(device)
    plan = _table_plan(state, name, shrink_key(s, k, n_out, num_lora, segments))
    if plan is None:
        plan = heuristic_shrink(s, k, n_out, num_lora, sms)
    return fit_shrink(plan, dtype.itemsize, smem_limit(device))


@lru_cache(maxsize=8192)
def _plan_expand(state, s: int, max_r: int, n_total: int, max_slice: int, stack: int, num_lora: int, segments, dtype,
                 device) -> ExpandPlan:
    name, sms = device_info(device)
    plan = _table_plan(state, name, expand_key(s, max_r, n_total, max_slice, stack, num_lora, segments))
    if plan is None:
        plan = heuristic_expand(s, max_r, max_slice, num_lora, stack, sms)
    return fit_expand(plan, max_r, dtype.itemsize, smem_limit(device))


def fused_eligible(s: int, stack: int, num_lora: int, bs: int) -> bool:
    """Decode-sized batches of QKV / gate-up: the decode layout (one program per adapter group)."""
    return stack in (2, 3) and math.ceil(s / max(num_lora, 1)) < PREFILL_ROWS_PER_GROUP and bs <= 4096


def heuristic_fused(s: int, k: int, stack: int, max_r: int, max_slice: int, num_lora: int, num_sms: int) -> FusedPlan:
    """The tuner's first fused candidate: the decode shrink's row block, split-K until the shrink items
    fill about the multiprocessors, the decode expand's column tiles."""
    e = heuristic_expand(s, max_r, max_slice, num_lora, stack, num_sms)
    block_m = e.block_m
    block_k = 128
    split = 1
    while num_lora * stack * split * 2 <= num_sms and split < 16 and math.ceil(k / block_k) // (2 * split) >= 1:
        split *= 2
    # 64 x 64 float32 tiles (rank 64, 64-row blocks) spill on 4 warps (sm_90: 255 registers + stack)
    warps = 8 if block_m * rank_block(max_r) >= 4096 else 4
    return FusedPlan(block_m, block_k, split, e.block_n, e.n_iters, warps, 2)


def fused_smem(plan: FusedPlan, max_r: int, itemsize: int) -> int:
    r = rank_block(max_r)
    shrink = (plan.block_m + r) * plan.block_k * itemsize * plan.num_stages
    expand = (plan.block_m * r + r * plan.block_n) * itemsize * max(plan.num_stages, 1) + plan.block_m * plan.block_n * 4
    return int(max(shrink, expand) * (2.0 if itemsize == 4 else 1.15))


def fit_fused(plan: FusedPlan, max_r: int, itemsize: int, limit: int) -> FusedPlan:
    while fused_smem(plan, max_r, itemsize) > limit:
        if plan.num_stages > 1:
            plan = replace(plan, num_stages=plan.num_stages - 1)
        elif plan.block_k > 32:
            plan = replace(plan, block_k=plan.block_k // 2)
        elif plan.block_n > 16:
            plan = replace(plan, block_n=plan.block_n // 2, n_iters=plan.n_iters * 2)
        else:
            break
    return plan


def plan_fused(
    s: int, k: int, stack: int, max_r: int, n_total: int, max_slice: int, num_lora: int, bs: int, dtype, device
) -> "FusedPlan | None":
    """The one-launch plan of a QKV / gate-up call, or None to run shrink then expand. One launch only
    where this device's table chose it (measured faster by ``python -m lora tune``) or inside
    :func:`forced_plan`; never for prefill-sized batches."""
    if _FORCED and FusedPlan in _FORCED:
        plan = _FORCED[FusedPlan]
        return fit_fused(plan, max_r, dtype.itemsize, smem_limit(device)) if plan.fuse else None
    device = device if isinstance(device, torch.device) else torch.device(device)
    return _plan_fused(_STATE[0] if _STATE else _env_state(), s, k, stack, max_r, n_total, max_slice, num_lora,
                       bs, dtype, device)


@lru_cache(maxsize=8192)
def _plan_fused(state, s, k, stack, max_r, n_total, max_slice, num_lora, bs, dtype, device) -> "FusedPlan | None":
    hit = _fused_entry(state, s, k, stack, max_r, n_total, max_slice, num_lora, bs, device)
    if hit is None or not hit.fuse:
        return None
    return fit_fused(hit, max_r, dtype.itemsize, smem_limit(device))


@lru_cache(maxsize=8192)
def _fused_entry(state, s, k, stack, max_r, n_total, max_slice, num_lora, bs, device) -> "FusedPlan | None":
    """This device's table entry for a decode-sized QKV / gate-up (one launch or two), if any. Memoised."""
    if not fused_eligible(s, stack, num_lora, bs):
        return None
    return _table_plan(state, device_info(device)[0], fused_key(s, k, stack, max_r, n_total, max_slice, num_lora))


def _pair_entry(s, k, stack, max_r, n_total, max_slice, num_lora, bs, device) -> "FusedPlan | None":
    """The table entry of a QKV / gate-up pair run as two launches (for :func:`pair_pdl` and
    :func:`pair_partials`; :func:`forced_plan` is theirs to check)."""
    device = device if isinstance(device, torch.device) else torch.device(device)
    return _fused_entry(_STATE[0] if _STATE else _env_state(), s, k, stack, max_r, n_total, max_slice, num_lora, bs,
                        device)


def pair_pdl(s: int, k: int, stack: int, max_r: int, n_total: int, max_slice: int, num_lora: int, bs: int,
             device) -> bool:
    """For a QKV / gate-up run as two launches: whether the expand is the shrink's programmatic dependent. Where
    :func:`pdl_chain` holds, unless this device's table (or :func:`forced_plan`) recorded two launches without
    it (``FusedPlan(fuse=False, pdl=False)``, measured faster by ``python -m lora tune``). Memoised."""
    if not pdl_chain(s, num_lora, device):
        return False
    if _FORCED and FusedPlan in _FORCED:
        return _FORCED[FusedPlan].pdl
    hit = _pair_entry(s, k, stack, max_r, n_total, max_slice, num_lora, bs, device)
    return hit is None or hit.fuse or hit.pdl


def pair_partials(s: int, k: int, stack: int, max_r: int, n_total: int, max_slice: int, num_lora: int, bs: int,
                  device) -> int:
    """For a QKV / gate-up run as two launches: the K split of a shrink whose partials the expand sums
    (``FusedPlan(fuse=False, partials=True, split_k=...)`` in this device's table, or :func:`forced_plan`),
    or 0 for the plain pair; decode-sized batches only. Memoised."""
    if _FORCED and FusedPlan in _FORCED:
        hit = _FORCED[FusedPlan] if fused_eligible(s, stack, num_lora, bs) else None
    else:
        hit = _pair_entry(s, k, stack, max_r, n_total, max_slice, num_lora, bs, device)
    return hit.split_k if hit is not None and not hit.fuse and hit.partials else 0

