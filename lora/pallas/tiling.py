"""Tiling, token buckets and the layout of the metadata the Pallas kernels read (no jax, no torch).

These are the static decisions (shapes, block sizes, which kernel variant) that key compilation,
plus the layout of the one int32 metadata array every kernel reads.

Row blocks
    Tokens are cut into blocks of ``BM = 64`` rows (one wgmma M tile). A block's rows may belong to
    several segments and adapters; a kernel runs one matmul per *adapter present in the block* (not
    per segment) and merges the results with a per-row slot mask, so decode rows of one adapter are
    packed into one tile instead of one 64-row tile each.

Token buckets (what keys compilation)
    A kernel is compiled for ``padded_tokens(s)`` rows: the next power of two >= s, at least 64
    (64, 128, 256, ..., 2**20), then multiples of 2**20. The real row count ``s`` is a run-time value
    (a one-element int32 array beside the metadata), so a new batch composition or a new ``s`` inside
    the same bucket never recompiles. Torch tensors keep their real ``s`` rows: no kernel touches a
    row >= s (the last, partial block is computed on the box of rows ``[s-64, s)`` read through a
    second view of the same memory, and every store is row-exact), so nothing is copied to pad them.

A block's *box* is the 64 rows its tile is computed on: ``[64b, 64b+64)``, except the last block
when ``s`` is not a multiple of 64, whose box is ``[s-64, s)`` (or ``[0, 64)`` when s < 64). A block
computes (and stores) only its own rows, so it needs only the adapters of its own rows.

Metadata (int32): the *chunk table* of decode-sized batches, then one record of
``MetaLayout(L).record`` entries per 64-row group g, so that no offset depends on how many groups
the buffer holds (one buffer, sized once for the largest batch, serves every token bucket)::

    [CHUNK*c + 0]                chunk c's adapter slot
    [CHUNK*c + 1]                its row count (0: no chunk c), at most 64
    [CHUNK*c + 16 + i]           its i-th row, i < count
    [start + rec*g + 0]          number of adapters present in rows [64g, 64g+64)
    [start + rec*g + 1 + i]      the i-th of them (ascending slot ids), i < count
    [start + rec*g + 1 + L + 3*(u-1) + 0]
                                 (u = 1, 2: adapters per unit) index of group g's first extra unit
    [start + rec*g + 1 + L + 3*(u-1) + 1]
                                 the group extra unit number g belongs to, or -1 (no such unit)
    [start + rec*g + 1 + L + 3*(u-1) + 2]
                                 that unit's first adapter (an index into its group's list)
    [start + rec*g + head + 128*k + t]
                                 adapter slot of row 64g + k + t (t < 128, k < 4), or -1 (rank-0
                                 slot, no segment); four shifted copies of the row slots

*Extra units* (the block shrink): a block whose rows hold more adapters than one K loop serves (u:
one or two) has its adapters cut into units of u, in list order; every unit after its first is an
extra unit, numbered over the groups in order. With ``ShrinkConfig.extra_units`` (outputs up to 128
columns) a CTA of a block with no rows (the bucket's blocks past ``s``) runs the extra unit of its index
past the last block with rows, so that a block where three segments meet costs one K loop, not two (see
:mod:`lora.pallas.shrink_kernel`).

The chunk table groups the rows of the first ``SPLIT_MAX_BLOCKS * 64`` by adapter: each slot's rows
(ascending), cut into chunks of at most 64, the slots in ascending order; ``MetaLayout.chunks``
entries (the most a decode-sized batch can need: its blocks plus one per slot). The gathering decode
expand runs one CTA per (group of column tiles, chunk): one adapter's B tiles and that adapter's rows,
gathered row by row (see :mod:`lora.pallas.expand_kernel`).

A box starting at any row p is then one contiguous, 16-byte aligned run of 64 entries: group
``p // 64``, copy ``k = p % 4``, entries from ``p % 64 - k``. (A TMA copy's start in the innermost
dimension must be 16-byte aligned: an unaligned one is an illegal instruction.) The metadata depends
on the batch info only, never on ``s``: it is derived once per batch (``prepare``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

BM = 64  # rows per block (wgmma M)
MAX_TOKEN_BUCKET = 1 << 20
#: Row slots stored per group and shifted copy (a 64-row box starting anywhere in the group).
BOX_SPAN = 2 * BM
#: Shifted copies of the row slots: TMA starts must be multiples of 4 int32 entries.
SHIFTS = 4

# ---- token buckets -----------------------------------------------------------------------------


def padded_tokens(s: int) -> int:
    """The static row count a batch of ``s`` tokens is compiled for (documented buckets above)."""
    if s < 0:
        raise ValueError(f"token count must be >= 0, got {s}")
    if s <= BM:
        return BM
    if s <= MAX_TOKEN_BUCKET:
        return 1 << (s - 1).bit_length()
    return -(-s // MAX_TOKEN_BUCKET) * MAX_TOKEN_BUCKET


def token_buckets(up_to: int = MAX_TOKEN_BUCKET) -> list[int]:
    """Every bucket up to ``up_to`` (for documentation and warm-up)."""
    out, b = [], BM
    while b <= up_to:
        out.append(b)
        b *= 2
    return out


def num_blocks(bpad: int) -> int:
    return bpad // BM


def box_start(b: int, s: int) -> int:
    """First row of block b's box (host-side mirror of the kernels' rule)."""
    if s < BM:
        return 0
    return min(b * BM, s - BM)


# ---- metadata layout -----------------------------------------------------------------------------


#: Adapters per K loop of the block shrink: one, or two (``ShrinkConfig.pair_stages``); the metadata
#: numbers the extra units of both.
UNIT_SIZES = (1, 2)

#: Entries of one chunk of the chunk table: slot, row count, padding to 16 (a 16-byte aligned TMA
#: start for the rows), then 64 rows.
CHUNK = 16 + BM


@dataclass(frozen=True)
class MetaLayout:
    num_lora: int

    @property
    def chunks(self) -> int:
        """Chunks in the chunk table: a batch of at most SPLIT_MAX_BLOCKS blocks has at most one
        per full block plus one per slot."""
        return SPLIT_MAX_BLOCKS + self.num_lora

    @property
    def start(self) -> int:
        """Offset of group 0's record (after the chunk table)."""
        return self.chunks * CHUNK

    @property
    def head(self) -> int:
        """Entries before a group's row slots: the count, the slot list and the extra units' entries
        (three per unit size), padded to 16."""
        return round_up(1 + self.num_lora + 3 * len(UNIT_SIZES), 16)

    def extra(self, g, unit: int):
        """Offset of group g's three extra-unit entries for units of ``unit`` adapters: its first
        extra unit's number, then which group extra unit number g is of, and its first adapter."""
        return self.group(g) + 1 + self.num_lora + 3 * UNIT_SIZES.index(unit)

    @property
    def record(self) -> int:
        return self.head + SHIFTS * BOX_SPAN

    def chunk(self, c):
        """Offset of chunk c's entry in the chunk table (c may be a traced value)."""
        return c * CHUNK

    def group(self, g):
        """Offset of group g's record (g may be a traced value)."""
        return self.start + g * self.record

    def length(self, bpad: int) -> int:
        """Entries a kernel compiled for ``bpad`` rows reads (a longer buffer is fine)."""
        return self.start + (bpad // BM) * self.record

    def box_offset(self, p: int) -> int:
        """Host mirror of the kernels' rule: where the 64 row slots of the box at row p start."""
        g, m = divmod(p, BM)
        k = m % SHIFTS
        return self.group(g) + self.head + k * BOX_SPAN + (m - k)


# ---- shape requirements and kernel configuration ------------------------------------------------

#: Dims are padded (by copies) up to these multiples when they are not already multiples of them.
#: Real model shapes (K, N multiples of 64, ranks multiples of 16) never pay for it.
K_MULTIPLE = 64
N_MULTIPLE = 64
R_MULTIPLE = 16


def round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def shift_pad(kr: int) -> int:
    """Extra columns of an expand's x window when slices may start at any column (x_shift): a
    start rounded down to 16 bytes is up to 7 columns early; 16 keeps rows 64-byte multiples."""
    return 16


def x_columns(na: int, itemsize: int) -> int:
    """Columns an expand input needs: its TMA windows are tiled in 128-byte row pieces."""
    return round_up(na, 128 // itemsize)


def column_chunk(na: int) -> int:
    """Columns of A per shrink wgmma (at most 256, the widest wgmma N)."""
    return na if na <= 256 else 128


def shrink_out_columns(na: int, stack: int, itemsize: int = 4) -> int:
    """Columns of a shrink output that an expand reads (``itemsize`` bytes an element): NA + 16
    rounded up to 128 bytes, so that expand's x windows (wider than a slice, see
    ``ExpandConfig.kw``) stay in the buffer's rows. Columns >= NA are never written (garbage);
    every reader masks them."""
    return x_columns(na + shift_pad(na // stack), itemsize)


@dataclass(frozen=True)
class ShrinkConfig:
    """Static configuration of one shrink kernel (x (Bpad, K) @ A (L, NA, K)^T -> f32 (Bpad, NA))."""

    bpad: int
    k: int
    na: int  # stack * max_r (padded)
    num_lora: int
    stack: int
    dtype: str  # operand dtype name: bfloat16 | float16
    split: bool  # slot-parallel split-K variant (decode-sized batches) vs one CTA per block
    ksplit: int
    block_k: int
    stages: int
    tail: bool  # x has only s rows (torch): the last partial block reads a second (64, K) view
    #: block variant: stages of the K loop that serves two adapters at once (a second A tile per
    #: stage); 0: one adapter per K loop (the split variant, or when two stages do not fit)
    pair_stages: int = 0
    #: dtype of the output (the activations' dtype: the op's result, or a fused op's expand input);
    #: the partial tiles of a split shrink are float32 whatever it is
    out_dtype: str = "float32"
    #: the output is the op's result, (bpad, na); else an expand's input, (bpad, out_cols) with room
    #: for the expand's x windows
    result: bool = False
    #: block variant: a block's extra K-loop units run on the CTAs of the bucket's blocks without rows
    #: (see shrink_kernel.shrink_block)
    extra_units: bool = False
    #: K-split block variant with two consecutive blocks a CTA, warp-specialized (a producer warpgroup,
    #: one consumer warpgroup per block; each A tile feeds both: half the A bytes a row); see
    #: shrink_kernel.shrink_block
    wide: bool = False
    pdl: int = 0  # PDL_OFF / PDL_DEPENDENT / PDL_WAIT (see pdl_modes)

    @property
    def nb(self) -> int:
        return self.bpad // BM

    @property
    def nk(self) -> int:
        return -(-self.k // self.block_k)

    @property
    def na_out(self) -> int:
        """Columns of the float32 partial tiles."""
        return shrink_out_columns(self.na, self.stack)

    @property
    def out_cols(self) -> int:
        """Columns of the output (the block variant's, or the partial tiles' sum)."""
        return self.na if self.result else shrink_out_columns(self.na, self.stack, _itemsize(self.out_dtype))

    @property
    def parts_shape(self) -> tuple:
        """Partial tiles of a split (or K-split block) shrink: (nb, tiles per block, 64, na_out)."""
        tiles = self.ksplit * (self.num_lora if self.split else 1)
        return (self.nb, tiles, BM, self.na_out)


@dataclass(frozen=True)
class ExpandConfig:
    """Static configuration of one expand kernel (base (Bpad, N) += scale * x_j @ B_j^T, in place)."""

    bpad: int
    n: int
    na: int  # columns of x (stack * max_r)
    max_r: int
    num_lora: int
    stack: int
    x_dtype: str  # float32 (the fused ops' shrink output) | the activation dtype
    op_dtype: str  # dtype of B and of the wgmma operands
    base_dtype: str
    x_part: int  # 0: x rounded to op dtype; 1: the rounding residual (f32 split, see backend)
    block_n: int
    stages: int
    tail: bool
    x_shift: bool = False  # slices start at any column j*r: windows are kw wide and shifted in SMEM
    reduce_add: bool = False  # base += the update tile by TMA reduce-add (no base load; rounds twice)
    ctas: int = 0  # persistent kernel on this many CTAs (0: one CTA per tile), see expand_kernel
    stream_stages: int = 0  # tiles in flight in the persistent kernel's pipeline
    #: one_tile, aligned slices: the adapters' products accumulate in one wgmma accumulator, added
    #: to the base tile once (x rows masked to each adapter, its scale folded into x)
    accumulate: bool = False
    #: decode: one CTA per (group of column tiles, chunk of the chunk table): one adapter's rows
    #: gathered row by row (see expand_kernel); ``stages`` then applies to the unaligned-slices
    #: fallback only
    gather: bool = False
    gather_tiles: int = 1  # column tiles a gathering CTA walks (its x rows gathered once)
    gather_stages: int = 0  # B tiles a gathering CTA has in flight
    #: one CTA per tile, ``accumulate``: a full block's base rows go through a tiled, swizzled tile of their
    #: own (one TMA box each way, vectorized merge loads and stores), beside the row-exact ladder's plain tile
    full_tile: bool = False
    pdl: int = 0  # PDL_OFF / PDL_DEPENDENT / PDL_WAIT (see pdl_modes)

    @property
    def nb(self) -> int:
        return self.bpad // BM

    @property
    def gather_cols(self) -> int:
        """Columns of the gathered x rows in shared memory: kw rounded up to 128 bytes (a TMA
        copy's shared-memory start must be 128-byte aligned, and each row is one copy)."""
        return gather_cols(self.kw, _itemsize(self.x_dtype))

    @property
    def kr(self) -> int:
        """wgmma K of the expand product: max_r rounded up to 16."""
        return round_up(self.max_r, 16)

    @property
    def kw(self) -> int:
        """Columns of an x window: kr, plus shift_pad(kr) when a slice may start off a 16-byte boundary."""
        return self.kr + (shift_pad(self.kr) if self.x_shift else 0)

    @property
    def ntn(self) -> int:
        return -(-self.n // self.block_n)

    @property
    def direct(self) -> bool:
        """x is the wgmma operand as it is (:func:`x_is_operand`)."""
        return x_is_operand(self.x_dtype, self.op_dtype, self.x_part)

    @property
    def smem_bytes(self) -> int:
        """Shared memory of one CTA (:func:`expand_smem_bytes`)."""
        sizes = [_itemsize(d) for d in (self.x_dtype, self.op_dtype, self.base_dtype)]
        return expand_smem_bytes(self.kr, self.stack, *sizes, self.block_n, self.stages, self.x_shift,
                                 self.stream_stages, self.accumulate, self.num_lora,
                                 self.gather_tiles if self.gather else 0, self.direct, self.full_tile,
                                 self.gather_stages)


def x_is_operand(x_dtype: str, op_dtype: str, x_part: int) -> bool:
    """Whether an expand's x is its wgmma operand as it is (no cast, no float32 split): the persistent
    expand's pipeline then fetches its x windows as operands (kr columns, tiled and swizzled)."""
    return x_dtype == op_dtype and x_part == 0


@dataclass(frozen=True)
class PartsConfig:
    """Static configuration of the kernel that adds a split shrink's partial tiles
    ((nb, tiles, 64, in_cols) float32) over ``tiles`` in index order into (bpad, out_cols) of
    ``out_dtype``; columns [0, na) of rows < s are written (the rest of the output is untouched)."""

    nb: int
    tiles: int
    na: int
    in_cols: int
    out_cols: int
    out_dtype: str  # float32 (the fused ops' expand input) | the op dtype (a shrink's result)
    tiles_per_step: int  # partial tiles per pipeline step
    stages: int
    tail: bool = False  # a partial last block's tiles hold its clamped box (ShrinkConfig.tail)
    rows: int = 8  # output rows of one CTA (a divisor of 64)
    cols: int = 16  # output columns of one CTA (a divisor of na)
    pdl: int = 0  # PDL_OFF / PDL_DEPENDENT / PDL_WAIT (see pdl_modes)

    @property
    def bpad(self) -> int:
        return self.nb * BM


#: Output rows and columns of one CTA of a split (decode) shrink's partial-tile sum: 8 x 16 float32,
#: one per thread of its warpgroup, so that even one 64-row block's rank-16 output is spread over 8
#: CTAs (SMs).
PARTS_ROWS = 8
PARTS_COLS = 16
#: Partial tiles per pipeline step of a split shrink's sum (8 KB of float32 per step at most).
PARTS_TILES_PER_STEP = 16
#: A K-split block shrink's sum (prefill) takes a block's 64 rows and up to this many columns a CTA,
#: and pipeline steps of up to PARTS_BLOCK_STEP_BYTES. (Session 18 on the H200: with 8 x 16 pieces,
#: thousands of CTAs that each wait for one small copy, the sum took 7.1 us of the rank-64 down
#: projection of 8412 tokens (call 4); with whole blocks 3.5 us (call 5).)
PARTS_BLOCK_COLS = 64
PARTS_BLOCK_STEP_BYTES = 32 * 1024


def parts_config(cfg: "ShrinkConfig", out_cols: int, out_dtype: str, tuning: "Tuning") -> PartsConfig:
    """The partial-tile sum of a split (or K-split block) shrink ``cfg`` into (bpad, out_cols)."""
    tiles = cfg.parts_shape[1]
    if cfg.split:
        rows, cols, per_step_max = PARTS_ROWS, PARTS_COLS, PARTS_TILES_PER_STEP
    else:
        rows = BM
        widths = (PARTS_BLOCK_COLS, 32, 16)
        cols = cfg.na if cfg.na <= PARTS_BLOCK_COLS else next(c for c in widths if cfg.na % c == 0)
        per_step_max = max(1, PARTS_BLOCK_STEP_BYTES // (rows * cols * 4))
    per_step = max(d for d in range(1, min(tiles, per_step_max) + 1) if tiles % d == 0)
    return PartsConfig(cfg.nb, tiles, cfg.na, cfg.na_out, out_cols, out_dtype, per_step,
                       min(3, tiles // per_step), cfg.tail, rows, cols,
                       pdl_modes(tuning, cfg.split)[1])


#: Shrink uses the slot-parallel split-K variant up to this many row blocks (decode-sized batches).
SPLIT_MAX_BLOCKS = 4
#: The split variant splits K until a CTA has SPLIT_MIN_STEPS K steps, at most SPLIT_MAX_KSPLIT ways
#: and SPLIT_MAX_CTAS CTAs: every split adds a partial tile per adapter that the caller adds up
#: (session 6, call 2 on the H200, rank 16: 8 ways for K=4096 beat 16 at 64 tokens (8.8 vs 9.5 us)
#: and 4 at 256 (10.3 vs 12.1 us); the down projection (K=14336) at 256 tokens 15.8 us at 8 ways
#: against 22.9 at 4, at 64 tokens 12.8 at 16 ways against 14.6 at 8)
SPLIT_MIN_STEPS = 8
SPLIT_MAX_KSPLIT = 16
SPLIT_MAX_CTAS = 256
#: ... and fewer splits where their partial tiles would take more than this (session 37 on the H200, 256
#: tokens, rank 64: QKV-sized shrink 20.1 -> 14.4 us and gate-up-sized 15.5 -> 11.6 at 4 ways (7 and 5 MB of
#: tiles) against 8 (14 and 10 MB); rank 16's 4 MB at 8 ways stays faster than 4: 8.6 against 9.2 us)
SPLIT_PARTS_TARGET = 8 << 20
SMEM_BUDGET = 200 * 1024
#: Shared memory a Mosaic GPU kernel may take on Hopper (227 KB, what Mosaic checks at lowering).
SMEM_LIMIT = 227 * 1024
#: Shared memory of one Hopper SM, of which each resident CTA reserves 1 KB.
SM_SMEM = 228 * 1024
#: SMs of an H100 / H200 (132): the persistent expand runs this many CTAs, or twice as many (two per
#: SM, see expand_config). On a GPU with fewer SMs the extra CTAs wait for a free SM (correct, a
#: little slower); with more, some SMs stay idle.
PERSISTENT_CTAS = 132


def smem_limit(ctas: int) -> int:
    """Shared memory one CTA of a persistent kernel on ``ctas`` CTAs may take: all of them resident
    at once, ceil(ctas / PERSISTENT_CTAS) on each SM."""
    per_sm = -(-ctas // PERSISTENT_CTAS)
    return min(SMEM_LIMIT, SM_SMEM // per_sm - 1024)


def ctas_per_sm(smem_bytes: int) -> int:
    """CTAs of ``smem_bytes`` of shared memory each that an SM holds at once (each reserves 1 KB more)."""
    return SM_SMEM // (smem_bytes + 1024)


@dataclass(frozen=True)
class Tuning:
    """Caller overrides of the kernel configurations the plan picks (None: the heuristic's choice).

    Like the ``config`` argument of jax's ``ragged_dot_mgpu``: pass one to ``PallasLoRABackend(...,
    tuning=...)`` or to the JAX API functions to try other tiles without editing the heuristic.
    An override that does not fit the shape (a split that does not divide the K steps, a stage
    count or tile that does not fit shared memory) raises ValueError when the plan is made, before
    any launch.
    """

    split_max_blocks: int | None = None  # shrink: split-K variant up to this many 64-row blocks
    shrink_block_k: int | None = None  # 64 or 128
    shrink_stages: int | None = None  # 1..8
    shrink_ksplit: int | None = None  # split-K factor of the split variant
    expand_block_n: int | None = None  # 64, 128 or 256
    #: 1..8: adapters' tiles in flight in the one-CTA-per-tile (decode) expand; 8 fetches every tile of an
    #: 8-adapter block in the pipeline's prologue (one round trip), 4 (the default) refetches from step 1
    expand_stages: int | None = None
    #: the persistent expand (one or two CTAs per SM, a pipeline over tiles) for batches of more than
    #: SPLIT_MAX_BLOCKS blocks (True / False: for every batch / none)
    expand_persistent: bool | None = None
    expand_stream_stages: int | None = None  # 2..6: tiles in flight in the persistent expand
    #: CTAs of the persistent expand (None: two per SM where three or more tiles in flight fit each,
    #: else one per SM; see expand_config); more than one per SM only where the tiles in flight of
    #: each fit in the SM's shared memory together (else ValueError)
    expand_ctas: int | None = None
    #: one CTA per tile: every adapter's product in one accumulator, one merge per tile (False: a
    #: merge into the base tile per adapter, the earlier kernel)
    expand_accumulate: bool = True
    #: one CTA per tile, accumulating: full blocks' base rows in a tiled tile of their own (False: every
    #: block's through the row-exact ladder's plain tile, the earlier kernel)
    expand_full_tile: bool = True
    #: decode-sized batches: a CTA per (column tile group, adapter chunk), rows gathered; False: one
    #: CTA per tile running all of the block's adapters (None: the heuristic, see expand_config)
    expand_gather: bool | None = None
    expand_gather_tiles: int | None = None  # 1..16: column tiles per gathering CTA
    expand_gather_stages: int | None = None  # 1..8: B tiles a gathering CTA has in flight (at most its tiles)
    #: Experimental (GPU only: interpret mode has no TMA reductions): the expand adds its update to
    #: base_output with a TMA reduce-add instead of load, add, store. The update is rounded to the
    #: base dtype before the add (two roundings instead of one).
    expand_reduce_add: bool = False
    #: the block shrink runs a block's extra K-loop units on the bucket's idle CTAs (None: where the
    #: accumulators are at most 128 wide)
    shrink_extra_units: bool | None = None
    #: prefill-sized batches: the two-block shrink (``ShrinkConfig.wide``; K split WIDE_KSPLIT ways unless
    #: ``shrink_ksplit`` names a split > 1). Not the default: slower than the block variant on the H200
    #: (benchmarks/results/h200, session 22) (None: off)
    shrink_wide: bool | None = None
    #: programmatic dependent launch between decode-sized launches (Hopper; see :func:`pdl_modes`). None: on,
    #: unless the environment variable ``LORA_PALLAS_NO_PDL`` is ``1`` when the plan is made
    pdl: bool | None = None

    def __post_init__(self):
        flags = ("expand_reduce_add", "expand_accumulate", "expand_full_tile")
        optional_flags = ("expand_persistent", "expand_gather", "shrink_extra_units", "shrink_wide", "pdl")
        for name in flags:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Tuning.{name}={getattr(self, name)!r} must be a bool")
        for name in optional_flags:
            if not (getattr(self, name) is None or isinstance(getattr(self, name), bool)):
                raise ValueError(f"Tuning.{name}={getattr(self, name)!r} must be a bool or None")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in flags + optional_flags:
                continue
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"Tuning.{f.name}={v!r} must be a non-negative int or None")
        if self.shrink_block_k not in (None, 64, 128):
            raise ValueError(f"Tuning.shrink_block_k={self.shrink_block_k} must be 64 or 128")
        if self.expand_block_n not in (None, 64, 128, 256):
            raise ValueError(f"Tuning.expand_block_n={self.expand_block_n} must be 64, 128 or 256")
        for name, lo, hi in (("shrink_stages", 1, 8), ("expand_stages", 1, 8), ("expand_stream_stages", 2, 6),
                             ("expand_gather_tiles", 1, 16), ("expand_gather_stages", 1, 8)):
            v = getattr(self, name)
            if v is not None and not lo <= v <= hi:
                raise ValueError(f"Tuning.{name}={v} must lie in [{lo}, {hi}]")
        if self.expand_ctas is not None and not 1 <= self.expand_ctas <= 8 * PERSISTENT_CTAS:
            raise ValueError(f"Tuning.expand_ctas={self.expand_ctas} must lie in [1, {8 * PERSISTENT_CTAS}]")
        if self.shrink_ksplit is not None and self.shrink_ksplit < 1:
            raise ValueError(f"Tuning.shrink_ksplit={self.shrink_ksplit} must be >= 1")

    @property
    def split_blocks(self) -> int:
        """The most 64-row blocks the shrink's split-K variant runs on (``split_max_blocks``, else
        SPLIT_MAX_BLOCKS); larger batches run the block variant."""
        return SPLIT_MAX_BLOCKS if self.split_max_blocks is None else self.split_max_blocks


DEFAULT_TUNING = Tuning()

#: How a kernel is launched with respect to the kernel before it and the one after it on the stream
#: (programmatic dependent launch, PDL: Hopper and later). PDL_OFF: plainly. PDL_DEPENDENT: as a
#: programmatic dependent of the kernel before it, so its CTAs may start while that kernel runs: they wait for
#: it to complete and its writes to be visible (``griddepcontrol.wait``) before they read what it may write,
#: then let the next kernel launch (``griddepcontrol.launch_dependents``). PDL_WAIT: a dependent that waits
#: the same way but never lets the next kernel launch early (that one launches as this one's CTAs exit). A
#: kernel launched plainly after ours is ordered as usual; one launched as a programmatic dependent of ours must
#: itself wait before reading what ours wrote.
#: Before its wait, a dependent may read what only plainly launched kernels write: the batch metadata (written by
#: ``prepare``'s torch kernels), the slots' ranks and scalings and the adapters' weights. The first dependent after
#: a plain kernel launches once that kernel has completed, and each of ours lets the next launch only after its own
#: wait returned, so no kernel of a chain starts before the plain kernels ahead of the chain have completed. The
#: decode kernels read their metadata (and the gathering expand its row list) before the wait, so those round
#: trips overlap the kernel before (``lora.pallas.common.mgpu_call``'s ``early``); x and base, which the kernel
#: just before may write, only after it (session 43 on the H100, ``benchmarks/results/h100/s43``: the decode step
#: 2.1-4.4% faster on all four cases in each of two calls; bringing the weights into L2 there too, 7-9% slower on
#: the 256-token steps).
PDL_OFF, PDL_DEPENDENT, PDL_WAIT = 0, 1, 2
#: Environment variable that turns PDL off where the Tuning leaves it to the default.
NO_PDL_ENV = "LORA_PALLAS_NO_PDL"


def pdl_modes(tuning: Tuning, decode: bool) -> tuple[int, int, int]:
    """(shrink, partial-tile sum, expand) PDL modes. Decode-sized batches (the split shrink, its sum, the
    one-wave expands): all three are dependents of the kernel before them, so each one's launch and set-up
    overlap the tail of the kernel before; the shrink never lets its sum launch early (``PDL_WAIT``). Larger
    batches and ``Tuning(pdl=False)`` (or ``LORA_PALLAS_NO_PDL=1`` with ``pdl`` None): plain launches.

    Unlike triton's layout (``lora.triton.tiling.pdl_chain``: the shrink launched plainly, letting its expand
    launch at its start), measured on the H100 (session 40, ``benchmarks/results/h100/s40``), the decode step:
    0.6-3.1% faster on all four cases once the shrink stopped letting its sum launch at its start (the sum's
    CTAs, launched early, waited on SMs the shrink's own CTAs could have used), then 1.2-2.8% faster again on
    all four with the shrink a dependent of the kernel before it."""
    on = tuning.pdl if tuning.pdl is not None else os.environ.get(NO_PDL_ENV) != "1"
    if not (on and decode):
        return PDL_OFF, PDL_OFF, PDL_OFF
    return PDL_WAIT, PDL_DEPENDENT, PDL_DEPENDENT


#: Tuning variants ``benchmarks/pallas_gpu_check.py`` times against the defaults (the CPU tests lower
#: their kernels): keyword arguments of :class:`Tuning` by name.
TUNING_TRIALS = {  # the riskier ones last: a kernel fault ends the GPU run's later work
    "bk128": dict(shrink_block_k=128),
    "bk128s6": dict(shrink_block_k=128, shrink_stages=6),
    "st2": dict(shrink_stages=2),
    "bn256": dict(expand_block_n=256, expand_stages=1),
    "ks8": dict(shrink_ksplit=8),
    "noSplit": dict(split_max_blocks=0),
    "blockKs2": dict(shrink_ksplit=2),
    "blockKs4": dict(shrink_ksplit=4),
    "reduceAdd": dict(expand_reduce_add=True),
    "wide": dict(shrink_wide=True),  # the two-block, warp-specialized shrink (session 22 on the H200: slower)
    "es8": dict(expand_gather=False, expand_stages=8),  # every adapter tile of a decode block in flight at once
}


#: Most bytes the split variant's partial tiles may take (nb * L * ksplit tiles of 64 x na float32).
SPLIT_PARTS_LIMIT = 64 << 20


#: The block shrink's extra units (ShrinkConfig.extra_units) for outputs up to this many columns.
EXTRA_UNITS_MAX_COLS = 128


#: The two-block shrink's K split when the caller names none (its CTAs: half the blocks, times this).
WIDE_KSPLIT = 2
#: Stages of a two-block shrink pipeline at most (the producer refills a slot when both consumers
#: release it, so a few deep steps keep its reads in flight).
WIDE_MAX_STAGES = 6


def wide_smem_bytes(na: int, block_k: int, stages: int, pair_stages: int, itemsize: int = 2) -> int:
    """Shared memory of one two-block shrink CTA (see shrink_kernel, ``ShrinkConfig.wide``), each
    buffer rounded up to 1 KB as Mosaic allocates it: two float32 output tiles and row-slot lists,
    the x tiles of both blocks and one A tile per stage (a second A tile per pair stage), and the
    pipelines' barriers."""
    a = scratch_bytes
    cw = column_chunk(na)
    x_tiles = a(2 * max(stages, pair_stages) * BM * block_k * itemsize)
    a_tiles = a((max(stages, pair_stages) + pair_stages) * cw * block_k * itemsize)
    barriers = 8 * (2 + 2 * stages + 2 * pair_stages)
    return a(2 * BM * cw * 4) + a(2 * BM * 4) + x_tiles + a_tiles + barriers


def _wide_plan(k: int, na: int, tuning: Tuning) -> tuple[int, int, int, int]:
    """(block_k, ksplit, stages, pair_stages) of the two-block shrink: 128-deep K steps where three
    stages of pairs fit (else 64), as many stages as fit up to WIDE_MAX_STAGES, pair units (two A tiles a
    step) where two stages of them fit and the two float32 accumulators a consumer thread holds take at
    most 128 registers (outputs of at most 128 columns); K split WIDE_KSPLIT ways unless the caller names
    a split."""
    if tuning.shrink_ksplit == 1:
        raise ValueError("Tuning.shrink_wide=True needs a K split: shrink_ksplit must be > 1 (or None)")

    def stages_for(bk, pairs):
        for n in range(WIDE_MAX_STAGES, 0, -1):
            if wide_smem_bytes(na, bk, n, n if pairs else 0) <= SMEM_LIMIT:
                return n
        return 0

    if tuning.shrink_block_k is not None:
        block_k = tuning.shrink_block_k
    else:
        block_k = 128 if stages_for(128, column_chunk(na) <= 128) >= 3 else 64
    nk = -(-k // block_k)
    ksplit = tuning.shrink_ksplit or WIDE_KSPLIT
    if nk % ksplit:
        raise ValueError(f"Tuning.shrink_ksplit={ksplit} does not divide the {nk} K steps of K={k}")
    steps = nk // ksplit
    pair_stages = min(stages_for(block_k, True), steps) if column_chunk(na) <= 128 else 0
    if pair_stages < 2:
        pair_stages = 0
    stages = pair_stages or min(stages_for(block_k, False), steps)
    if tuning.shrink_stages is not None:
        stages = min(tuning.shrink_stages, steps)
        pair_stages = min(pair_stages, stages)
        need = wide_smem_bytes(na, block_k, stages, pair_stages)
        if need > SMEM_LIMIT:
            raise ValueError(f"Tuning.shrink_stages={tuning.shrink_stages} needs {need} bytes of shared memory "
                             f"in the two-block shrink (limit {SMEM_LIMIT})")
    if stages < 1:
        raise ValueError(f"the two-block shrink of {na} columns does not fit shared memory at block_k={block_k}")
    return block_k, ksplit, stages, pair_stages


def shrink_config(bpad, k, na, num_lora, stack, dtype, *, tail, out_dtype: str = "float32", result: bool = False,
                  tuning: Tuning = DEFAULT_TUNING) -> ShrinkConfig:
    """Decode-sized batches (<= SPLIT_MAX_BLOCKS blocks): the split variant, 64-deep K steps, up to 4
    stages, split-K as SPLIT_MIN_STEPS / SPLIT_MAX_KSPLIT / SPLIT_MAX_CTAS /
    SPLIT_PARTS_TARGET allow. Larger batches: the
    block variant with 128-deep K steps while four stages of them fit SMEM_BUDGET (else 64), as many
    stages as fit (up to 8), and long K (>= 8192: the down projection) split over 2 CTAs per block (4
    for outputs <= 32 wide);
    blocks with two adapters run both in one K loop (``pair_stages`` deep, as many as fit).
    Measured on the H200, Llama-3-8B prefill-8k (``benchmarks/pallas_sweep.py``, session 4): rank 16
    shrink 40.7 -> 27.9 us, down-projection shrink 131.7 -> 73.2 us against 64-deep, 4-stage, unsplit."""
    nb = bpad // BM
    max_blocks = tuning.split_blocks
    split = nb <= max_blocks
    itemsize = 2
    # the block variant's float32 tile (one column chunk); its copy in the output dtype is scoped
    # after the K loops (in their shared memory), so it takes none of theirs
    out_bytes = BM * column_chunk(na) * 4
    if tuning.shrink_block_k is not None:
        block_k = tuning.shrink_block_k
    elif split:
        block_k = 64
    else:
        block_k = 128 if out_bytes + 4 * (BM + na) * 128 * itemsize <= SMEM_BUDGET else 64
        if tuning.shrink_ksplit and -(-k // block_k) % tuning.shrink_ksplit:
            block_k = 64  # the caller's split must divide the K steps
    nk = -(-k // block_k)
    tile_bytes = nb * BM * shrink_out_columns(na, stack) * 4  # a float32 partial tile per block

    def within(ksplit, per_split, limit):
        """The largest split <= ksplit that divides the K steps (every split gets the same number) and keeps
        the partial tiles (written, then read back by the sum; ``per_split`` bytes a split) within ``limit``."""
        while ksplit > 1 and (nk % ksplit or ksplit * per_split > limit):
            ksplit -= 1
        return ksplit

    ksplit = 1
    if tuning.shrink_ksplit is not None:  # also splits the block variant's K loop (partial tiles)
        ksplit = tuning.shrink_ksplit
        if nk % ksplit:
            raise ValueError(f"Tuning.shrink_ksplit={ksplit} does not divide the {nk} K steps of K={k}")
    elif split:
        most = max(1, min(SPLIT_MAX_KSPLIT, nk // SPLIT_MIN_STEPS, SPLIT_MAX_CTAS // max(1, nb * num_lora)))
        ksplit = within(most, num_lora * tile_bytes, SPLIT_PARTS_TARGET)  # a tile per block and slot
    elif k >= 8192:
        ksplit = within(4 if na <= 32 else 2, tile_bytes, SPLIT_PARTS_LIMIT)
    step = (BM + na) * block_k * itemsize
    if tuning.shrink_stages is not None:
        stages = tuning.shrink_stages
        if out_bytes + stages * step > SMEM_LIMIT:
            raise ValueError(f"Tuning.shrink_stages={stages} needs {out_bytes + stages * step} bytes of shared memory (limit {SMEM_LIMIT})")
    elif not split and ksplit > 1 and out_bytes + 4 * step <= smem_limit(2 * PERSISTENT_CTAS):
        # the K-split block variant (the down projection): two CTAs per SM with four stages each, where
        # they fit (session 17, call 3 on the H200: rank-16 down-projection shrink 65.0 -> 61.2 us on
        # prefill-8k, 66.7 -> 62.4 on mixed; rank 64, three stages: 75.0 -> 80.0, so it keeps one)
        stages = 4
    else:
        stages = max(2, min(4 if split else 8, (SMEM_BUDGET - out_bytes) // step))
    stages = min(stages, max(1, nk // ksplit))
    pair_stages = 0
    if not split:  # a block with two adapters (a segment boundary) reads its rows once for both
        fit = (SMEM_LIMIT - out_bytes) // ((BM + 2 * na) * block_k * itemsize)
        pair_stages = min(stages, fit, max(1, nk // ksplit)) if fit >= 2 else 0
    wide = bool(tuning.shrink_wide) and not split
    if wide:  # (the caller's block_k / ksplit / stages apply to it; its shared memory is its own)
        block_k, ksplit, stages, pair_stages = _wide_plan(k, na, tuning)
    # A block of three adapters runs its third on an idle CTA, not in a second K loop of its own (session 14
    # on the H200: two such blocks of 112 cost the rank-16 shrink 23.5 us against 18.9 without them; 20.8 with
    # the extra units); with accumulators 192 wide (rank-64 QKV) the kernel with that path was slower on both
    # batches measured, which have no such block (prefill-8k 42.0 -> 48.1 us, mixed 42.5 -> 48.6; not explained;
    # without it 42.2 / 42.7).
    extra_units = not split and not wide and (na <= EXTRA_UNITS_MAX_COLS if tuning.shrink_extra_units is None
                                              else tuning.shrink_extra_units)
    cfg = ShrinkConfig(bpad, k, na, num_lora, stack, dtype, split, ksplit, block_k, stages, tail, pair_stages,
                       out_dtype, result, extra_units, wide, pdl_modes(tuning, split)[0])
    tiles = nb * cfg.parts_shape[1] if (split or ksplit > 1) else 0
    if tiles * BM * cfg.na_out * 4 > SPLIT_PARTS_LIMIT:
        raise ValueError(
            f"the split shrink of {bpad} rows, {num_lora} slots and ksplit={ksplit} needs more than "
            f"{SPLIT_PARTS_LIMIT >> 20} MB of partial tiles: lower Tuning.split_max_blocks or shrink_ksplit"
        )
    return cfg


def gather_cols(kw: int, x_itemsize: int) -> int:
    """:attr:`ExpandConfig.gather_cols` of an x window ``kw`` columns wide."""
    return round_up(kw, 128 // x_itemsize)


def scratch_bytes(nbytes: int) -> int:
    """Shared memory Mosaic takes for one scratch buffer: its bytes rounded up to 1 KB."""
    return round_up(nbytes, 1024)


def expand_smem_bytes(kr, stack, x_itemsize, op_itemsize, base_itemsize, block_n, stages, x_shift=False,
                      stream_stages=0, accumulate=False, num_lora=0, gather=0, direct=False, full_tile=False,
                      gather_stages=0) -> int:
    """Shared memory of one expand CTA, as Mosaic allocates it: each scratch buffer rounded up to
    1 KB (:func:`scratch_bytes`), and a bound on the barriers (8 bytes each): 40-64 bytes over
    Mosaic's own count (:func:`lora.pallas.interop.smem_bytes`) on the ten persistent, one CTA per
    tile and gathering configurations compared in session 18 (five of them in the CPU tests).

    Always: the int32 table (a box's row slots, a tile's slot list, the ranks, the persistent
    kernel's ring), the operand-dtype x tile, the scalings and (x_shift, gather) the shifted x tile.
    One tile's work (``one_tile``) runs a pipeline over a block's adapters, per stage the x windows
    (``kw`` columns of x) and the B tile: ``stack`` windows on the general path (unaligned slice
    boundaries), one on the aligned path, which (``accumulate``) also holds two operand-dtype x
    tiles; the two paths are scoped apart, so the larger counts.

    * One CTA per tile: a base tile beside that pipeline (two with ``full_tile``: a full block's is tiled).
    * Gathering (``gather`` column tiles): its x rows, row list, two output tiles and ``gather_stages`` B
      tiles in flight, scoped apart from one_tile's base tile and pipeline (its unaligned-slices fallback).
    * Persistent (``stream_stages`` > 0): its pipeline over tiles, each stage an x window (``kr``
      operand-dtype columns when ``direct``: x is the wgmma operand as it is; else ``kw`` of x), a B
      tile, a base tile and the row slots, beside one window and B tile for a block's further
      adapters; then, in the same memory, ``one_tile``'s base tile and its pipeline at ``stages``.
    """
    a = scratch_bytes
    kw = kr + (shift_pad(kr) if x_shift else 0)
    window = BM * kw * x_itemsize
    operand = BM * kr * op_itemsize
    b_tile = block_n * kr * op_itemsize
    base_tile = BM * block_n * base_itemsize
    fixed = a((BM + 2 * num_lora + 4 * RING) * 4) + a(operand) + a(4 * num_lora)
    fixed += a(BM * kr * x_itemsize) if x_shift or gather else 0
    steps = max(stages, stream_stages)
    barriers = 8 * (BM.bit_length() + 8 + 2 * steps + (BM + 1 + gather_stages if gather else 0))
    general = stack * a(stages * window) + a(stages * b_tile)
    aligned = a(stages * window) + a(stages * b_tile) + (a(2 * operand) if accumulate else 0)
    one_tile = max(general, aligned)
    if stream_stages:
        ss = stream_stages
        tiles = (a(ss * (operand if direct else window)) + a(ss * b_tile) + a(ss * base_tile) + a(ss * BM * 4)
                 + a(operand if direct and not x_shift else window) + a(b_tile))
        return fixed + max(tiles, a(base_tile) + one_tile) + barriers
    if gather:
        rows = a(BM * gather_cols(kw, x_itemsize) * x_itemsize) + a(BM * 4) + a(2 * base_tile)
        return fixed + max(a(base_tile) + one_tile, rows + a(gather_stages * b_tile)) + barriers
    return fixed + a(base_tile) * (2 if full_tile else 1) + one_tile + barriers


#: Column tiles a gathering decode-expand CTA walks (half as many below 64 tiles or one block), and
#: its B tiles in flight (session 8 on the H200, call 2: rank-16 64-token gate-up expand 34.5 us
#: at one tile per CTA, 22.8 at two, 16.9 at four, 13.3 at eight; rank-64 256-token 70.8, 74.5, -,
#: 36.8; call 3: rank-64 64-token QKV expand 12.6 us at eight, 8.8 at four)
GATHER_TILES = 8
GATHER_B_STAGES = 4
#: Tiles in flight in the persistent expand's pipeline (fewer when they do not fit).
STREAM_STAGES = 4
#: Entries of the persistent expand's ring of its steps' tiles, block counts and first slots (more
#: than the most stream stages a Tuning may ask for).
RING = 8


def expand_config(
    bpad, n, na, max_r, num_lora, stack, x_dtype, op_dtype, base_dtype, *, x_part=0, tail, x_shift=False,
    tuning: Tuning = DEFAULT_TUNING,
) -> ExpandConfig:
    """Block and pipeline sizes of an expand.

    Decode-sized batches (<= SPLIT_MAX_BLOCKS blocks): one CTA per tile of 128 output columns (64
    for N < 128), four pipeline stages over the block's adapters (two for stacked ranks > 32), whose
    products accumulate in one wgmma accumulator (``accumulate``); or, with several blocks and >= 64
    column tiles, or stacked slices of rank >= 64, the gathering kernel (``gather``: GATHER_TILES
    column tiles a CTA, half as many for the latter). Larger batches: the persistent
    kernel, STREAM_STAGES tiles in flight: on two CTAs per SM where three or more such tiles fit
    each (128 columns wide, else 64), else on one per SM (256 wide where three such tiles fit, else 128),
    one stage for the tiles it runs one by one (partial last block, unaligned slice boundaries).
    One CTA per tile also takes a tiled base tile for full blocks (``full_tile``) where it fits beside the
    rest. Then fewer stages, then (wide ranks) one CTA per tile again, then narrower column tiles, until
    the kernel fits in shared memory. ``tuning`` fixes any of these (ValueError when they do not fit)."""
    nb = bpad // BM
    decode = nb <= SPLIT_MAX_BLOCKS
    persistent = not decode if tuning.expand_persistent is None else tuning.expand_persistent
    persistent = persistent and not tuning.expand_reduce_add
    block_n = tuning.expand_block_n or (128 if n >= 128 else 64)
    # Decode blocks hold many adapters: the next adapters' tiles are in flight while one computes;
    # four stages, two for stacked slices of ranks > 32 (session 6 on the H200, 64 tokens: rank-16
    # expand 6.3 us at four stages, 7.5 at two; rank-64 gate-up expand 28.3 us at two, 33.7 at three;
    # rank-64 expand 9.0 us at four, 13.2 at two)
    kr = round_up(max_r, 16)
    stages = tuning.expand_stages or ((2 if stack > 1 and kr > 32 else 4) if decode else 1)
    stream = (tuning.expand_stream_stages or STREAM_STAGES) if persistent else 0
    sizes = [_itemsize(d) for d in (x_dtype, op_dtype, base_dtype)]
    ntn = -(-n // block_n)
    # The gathering kernel reads each adapter's B tile once per chunk, where one CTA per tile reads
    # it once per row block and runs the block's adapters one after another: it wins where blocks
    # are several and tiles many (gate-up at 256 tokens), and for stacked slices of rank >= 64
    # (whose one-CTA-per-tile pipeline fits only two stages); else it loses to its longer chain of
    # dependent loads (session 8, calls 2-3 on the H200: rank-16 256-token gate-up expand 21.4 us
    # against 30.6, rank-64 64-token QKV expand 8.8 against 13.8; rank-16 64-token expand 7.0 against
    # 5.6, rank-64 64-token gate-up expand 23.0 against 17.9)
    wide = nb > 1 and ntn >= 64
    gather = tuning.expand_gather
    if gather is None:
        gather = wide or (x_shift and kr >= 64 and ntn < 64)
    gather = gather and decode and not persistent and not tuning.expand_reduce_add
    tiles = 0
    if gather:  # the one CTA per tile kernel is only the fallback for unaligned slices
        stages = tuning.expand_stages or 1
        tiles = tuning.expand_gather_tiles or min(GATHER_TILES if wide else GATHER_TILES // 2, ntn)
    accumulate = tuning.expand_accumulate and not persistent and not gather  # (one CTA per tile only)

    direct = x_is_operand(x_dtype, op_dtype, x_part)
    gather_b = tuning.expand_gather_stages or GATHER_B_STAGES

    def gather_stages():
        return min(tiles, gather_b) if gather else 0

    def need(bn=None, ss=None):
        return expand_smem_bytes(kr, stack, *sizes, bn or block_n, stages, x_shift, ss or stream, accumulate, num_lora,
                                 tiles, direct, full_tile(), gather_stages())

    # The tiled tile for full blocks (16 KB at 64 x 128 bf16): dropped first where the kernel does not fit, and
    # where it would leave fewer of the grid's CTAs resident on an SM at once (session 38 on the H100: the decode
    # expands 0.2-0.4 us faster with it, 3-5%; the rank-64 64-token gate-up expand, 224 CTAs, 23.8 -> 33.4 us
    # when it left one CTA an SM instead of two).
    use_full = tuning.expand_full_tile

    def full_tile():
        return use_full and not persistent and not gather and accumulate and not tuning.expand_reduce_add

    ctas = tuning.expand_ctas or PERSISTENT_CTAS
    if persistent and tuning.expand_ctas is None:
        # Two CTAs per SM where each holds three or more tiles in flight, at the widest tile (up to
        # 128) that allows it: while one CTA waits on its step's fetches or runs its epilogue, the
        # other's tiles stream (session 17, call 1 on the H200: rank-16 expand 44.8 -> 42.9 us on
        # prefill-8k, 44.7 -> 39.8 on mixed, QKV expand 66.7 -> 59.0 on mixed, rank-64 expand
        # 63.4 -> 57.9 on mixed; the same 128-wide tiles on one CTA per SM: 48.8 / 50.0).
        two = smem_limit(2 * PERSISTENT_CTAS)
        for bn in [tuning.expand_block_n] if tuning.expand_block_n else [w for w in (128, 64) if w <= max(n, 64)]:
            ss = tuning.expand_stream_stages or next((k for k in range(stream, 2, -1) if need(bn, k) <= two), 0)
            if ss and need(bn, ss) <= two:
                ctas, block_n, stream = 2 * PERSISTENT_CTAS, bn, ss
                break
    persistent_limit = smem_limit(ctas)

    def limit():
        return persistent_limit if persistent else SMEM_LIMIT

    if persistent and ctas == PERSISTENT_CTAS and tuning.expand_block_n is None and n >= 256:
        # A tile's fixed cost (metadata, masks, one wgmma, fences) is paid per tile: 256-wide tiles
        # halve it where three of them fit in flight (ranks up to 32; session 5, call 2 on the H200:
        # rank-16 expand 48.5 -> 40.8 us, gate-up expand 341 -> 272 us; rank 64 slower, 66 -> 77 us).
        block_n = 256
        if need(256, min(stream, 3)) > limit():
            block_n = 128

    # Fewer than three tiles in flight leave the persistent kernel latency-bound (two: 1.45x slower
    # than one CTA per tile, session 5 call 1): wide ranks with stacked slices run one CTA per tile.
    min_stream = 2 if tuning.expand_persistent else 3
    while need() > limit():
        if full_tile():
            use_full = False
        elif tuning.expand_stream_stages is None and stream > min_stream:
            stream -= 1
        elif tuning.expand_stages is None and stages > 1:
            stages -= 1
        elif gather and tiles > 1 and tuning.expand_gather_tiles is None:  # fewer B tiles in flight
            tiles //= 2
        elif persistent and tuning.expand_persistent is None and tuning.expand_ctas is None:
            # wide ranks: one CTA per tile
            persistent, stream = False, 0
            block_n = tuning.expand_block_n or (128 if n >= 128 else 64)
            accumulate = tuning.expand_accumulate and not gather
        elif accumulate:  # wide ranks: a merge per adapter (no second x tile)
            accumulate = False
        elif tuning.expand_block_n is None and block_n > 64:
            block_n //= 2
        else:
            given = tuning.expand_stages or tuning.expand_block_n or tuning.expand_stream_stages or tuning.expand_ctas
            what = "with the Tuning given " if given else ""
            on = f" with {ctas} CTAs" if persistent else ""
            raise ValueError(
                f"an expand of rank {max_r} with {stack} slices needs {need()} bytes of shared memory {what}"
                f"(limit {limit()}{on}): the pallas backend takes ranks up to 128 with three slices (QKV), 192 "
                f"with two (gate-up), 256 with one"
            )
    if gather and tuning.expand_gather_stages is None:
        # Fewer B tiles in flight (down to 2) where that lets an SM hold as many of the grid's working CTAs (a
        # chunk at least per block and per slot) as one wave needs, up to two (the rank-64 256-token gate-up
        # expand: 224 such CTAs of 135 KB at four stages, 103 KB at two).
        wanted = min(-(-(-(-ntn // tiles) * max(nb, num_lora)) // PERSISTENT_CTAS), 2)
        for gather_b in range(GATHER_B_STAGES, 1, -1):  # the most stages that reach it, else GATHER_B_STAGES
            if ctas_per_sm(need()) >= wanted:
                break
        else:
            gather_b = GATHER_B_STAGES
    if full_tile():
        wanted = -(-nb * -(-n // block_n) // PERSISTENT_CTAS)  # CTAs an SM would hold for one wave
        with_full = need()
        use_full = False  # (need() below: the same kernel without the tile)
        use_full = min(wanted, ctas_per_sm(with_full)) >= min(wanted, ctas_per_sm(need()))
    return ExpandConfig(
        bpad, n, na, max_r, num_lora, stack, x_dtype, op_dtype, base_dtype, x_part, block_n, stages, tail, x_shift,
        tuning.expand_reduce_add, ctas if persistent else 0, stream, accumulate=accumulate,
        gather=gather, gather_tiles=max(tiles, 1), full_tile=full_tile(), gather_stages=gather_stages(),
        pdl=pdl_modes(tuning, decode and not persistent)[2],
    )



def _itemsize(dtype_name: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype_name]
