"""Tiling, token buckets and the per-batch metadata the Pallas kernels read.

Nothing here imports jax or torch: these are the static decisions (shapes, block sizes, which kernel
variant) that key compilation, plus the layout of the one int32 metadata array every kernel reads.

Row blocks
    Tokens are cut into blocks of ``BM = 64`` rows (one wgmma M tile). A block's rows may belong to
    several segments and adapters; a kernel runs one matmul per *adapter present in the block* (not
    per segment) and merges the results with a per-row slot mask, so decode rows of one adapter are
    packed into one tile instead of one 64-row tile each.

Token buckets (what keys compilation)
    A kernel is compiled for ``padded_tokens(s)`` rows: the next power of two >= s, at least 64
    (64, 128, 256, ..., 2**20), then multiples of 2**20. The real row count ``s`` is a runtime value
    inside the metadata, so a new batch composition or a new ``s`` inside the same bucket never
    recompiles. Torch tensors keep their real ``s`` rows: no kernel ever touches a row >= s (the last,
    partial block is computed on the box of rows ``[s-64, s)`` read through a second view of the
    same memory, and stores are row-exact), so nothing is copied to pad them.

Metadata (int32, ``MetaLayout(Bpad, L).length`` entries, built once per batch and ``s``):
    ``[0]``                   s, the real number of rows
    ``[COUNT + b]``           number of adapters present in block b (its aligned rows and its box)
    ``[SLOTS + b*L + i]``     the i-th adapter present in block b (ascending), i < count
    ``[BOXES + 64*b + t]``    adapter slot of row 64b+t, or -1 (rank-0 slot, no segment, row >= s)
    ``[BOXES + 64*nb + t]``   adapter slot of row s-64+t (the clamped box of a partial last block)
    ``BOXES`` is a multiple of 16: each 64-row box is read by one TMA copy, whose start in the
    innermost dimension must be 16-byte aligned (an unaligned one is an illegal instruction).

A block's *box* is the 64 rows its tile is computed on: ``[64b, 64b+64)``, except the last block
when ``s`` is not a multiple of 64, whose box is ``[s-64, s)`` (or ``[0, 64)`` when s < 64).
"""

from __future__ import annotations

from dataclasses import dataclass

BM = 64  # rows per block (wgmma M)
MAX_TOKEN_BUCKET = 1 << 20

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


@dataclass(frozen=True)
class MetaLayout:
    bpad: int
    num_lora: int

    @property
    def nb(self) -> int:
        return self.bpad // BM

    @property
    def count(self) -> int:
        return 1

    @property
    def slots(self) -> int:
        return 1 + self.nb

    @property
    def boxes(self) -> int:
        return -(-(1 + self.nb + self.nb * self.num_lora) // 16) * 16

    @property
    def length(self) -> int:
        return self.boxes + (self.nb + 1) * BM


# ---- shape requirements and kernel configuration ------------------------------------------------

#: Dims are padded (by copies) up to these multiples when they are not already multiples of them.
#: Real model shapes (K, N multiples of 64, ranks multiples of 16) never pay for it.
K_MULTIPLE = 64
N_MULTIPLE = 64
R_MULTIPLE = 16


def round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def x_columns(na: int, itemsize: int) -> int:
    """Columns an expand input needs: its TMA windows are tiled in 128-byte row pieces."""
    return round_up(na, 128 // itemsize)


def aligned_dim(v: int, m: int) -> int:
    return v if v % m == 0 else round_up(max(v, 1), m)


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
    interpret: bool  # CPU interpret mode: the split variant writes per-CTA partials (no TMA reduce)

    @property
    def nb(self) -> int:
        return self.bpad // BM

    @property
    def nk(self) -> int:
        return -(-self.k // self.block_k)

    @property
    def na_out(self) -> int:
        """Columns of the float32 output buffer: NA rounded up to 32 (128 bytes), so that expand's
        x windows (TMA boxes of up to 128 bytes per row and more) tile the buffer's rows. Columns
        >= NA are never written (garbage); every reader masks them."""
        return x_columns(self.na, 4)


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
    x_stride: int = 0  # 0: slice j of a slot starts at column j*r (packed); else at j*x_stride

    @property
    def nb(self) -> int:
        return self.bpad // BM

    @property
    def kr(self) -> int:
        """wgmma K of the expand product: max_r rounded up to 16."""
        return round_up(self.max_r, 16)

    @property
    def ntn(self) -> int:
        return -(-self.n // self.block_n)


#: Shrink uses the slot-parallel split-K variant up to this many row blocks (decode-sized batches).
SPLIT_MAX_BLOCKS = 4
#: Target number of CTAs of the split variant (132 SMs on an H100).
SPLIT_TARGET_CTAS = 128
SMEM_BUDGET = 200 * 1024


def shrink_config(bpad, k, na, num_lora, stack, dtype, *, tail, interpret=False) -> ShrinkConfig:
    nb = bpad // BM
    block_k = 64
    nk = -(-k // block_k)
    split = nb <= SPLIT_MAX_BLOCKS
    ksplit = 1
    if split:
        ksplit = max(1, min(nk // 2 or 1, SPLIT_TARGET_CTAS // max(1, nb * num_lora)))
        while nk % ksplit:  # every split gets the same number of k-steps
            ksplit -= 1
    itemsize = 2
    step = (BM + na) * block_k * itemsize
    out_bytes = BM * na * 4
    stages = max(2, min(4, (SMEM_BUDGET - out_bytes) // step))
    stages = min(stages, max(1, nk // ksplit))
    return ShrinkConfig(bpad, k, na, num_lora, stack, dtype, split, ksplit, block_k, stages, tail, interpret)


#: Shared memory a Mosaic GPU kernel may take on Hopper (227 KB, what Mosaic checks at lowering).
SMEM_LIMIT = 227 * 1024


def expand_smem_bytes(kr, stack, x_itemsize, op_itemsize, base_itemsize, block_n, stages) -> int:
    """Shared memory of one expand CTA, as Mosaic allocates it.

    Fixed: the row-slot vector, the block's base tile, the operand-dtype x tile and the barriers.
    Pipelined, per stage: the x windows and the B tile. Both paths of the kernel (one window for
    slice-aligned column tiles, ``stack`` windows otherwise) are scoped separately, so the larger,
    the general one, is what counts.
    """
    fixed = BM * 4 + BM * block_n * base_itemsize + BM * kr * op_itemsize + 8 * 16
    per_stage = stack * BM * kr * x_itemsize + block_n * kr * op_itemsize
    return fixed + stages * per_stage


def expand_config(
    bpad, n, na, max_r, num_lora, stack, x_dtype, op_dtype, base_dtype, *, x_part=0, tail, x_stride=0
) -> ExpandConfig:
    """Block and pipeline sizes of an expand: 128 output columns (64 for N < 128); two pipeline
    stages for decode-sized batches, one for prefill; then fewer stages, then narrower column tiles,
    until the kernel fits in shared memory (wide ranks with three slices need it)."""
    nb = bpad // BM
    block_n = 128 if n >= 128 else 64
    # Prefill blocks hold one or two adapters: one stage keeps the SMEM small (more CTAs per SM).
    # Decode blocks hold many: two stages prefetch the next adapter's tiles.
    stages = 2 if nb <= SPLIT_MAX_BLOCKS else 1
    kr = round_up(max_r, 16)
    sizes = [_itemsize(d) for d in (x_dtype, op_dtype, base_dtype)]
    while expand_smem_bytes(kr, stack, *sizes, block_n, stages) > SMEM_LIMIT:
        if stages > 1:
            stages -= 1
        elif block_n > 64:
            block_n //= 2
        else:
            raise ValueError(
                f"an expand of rank {max_r} with {stack} slices needs "
                f"{expand_smem_bytes(kr, stack, *sizes, block_n, stages)} bytes of shared memory "
                f"(limit {SMEM_LIMIT}): the pallas backend takes ranks up to 128 with three slices, 256 with two"
            )
    return ExpandConfig(
        bpad, n, na, max_r, num_lora, stack, x_dtype, op_dtype, base_dtype, x_part, block_n, stages, tail, x_stride
    )


def _itemsize(dtype_name: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype_name]


def slice_alignment(itemsize: int) -> int:
    """Packed slices (slice j at column j*r) need r to be a multiple of this for TMA (16 bytes)."""
    return 16 // itemsize
