"""The JAX-native functional API: jax arrays in, jax arrays out, jit-able inside a JAX model.

    import jax.numpy as jnp
    from lora import pallas as lp

    batch = lp.make_batch(seg_indptr, weight_indices, lora_ranks, scalings, num_tokens=x.shape[0])
    qkv = lp.qkv_lora(x, qkv_a, qkv_b, batch, q=4096, kv=1024, base=qkv_base)

Shapes are static under jit, as usual in JAX: a kernel is compiled per (num_tokens rounded up to
64, K, N, ranks, dtype). Pad the token dimension to a few sizes of your own (e.g.
:func:`lora.pallas.tiling.padded_tokens`) to bound compilations; segment contents and the number of
real tokens in them are run-time values. ``seg_indptr``/``weight_indices`` have a static length
too: pad them with zero-length segments (:func:`pad_segments`).

Every op follows the contract of :class:`lora.BaseLoRABackend` (float32 accumulation, rank masking,
rank-0 slots and rows outside segments untouched). float32 activations are computed as three
bfloat16 products (hi*hi + hi*lo + lo*hi), which keeps float32-level accuracy on bf16 tensor cores.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import expand_kernel as E
from . import shrink_kernel as S
from .common import interpret_mode_active
from .tiling import (
    BM,
    MetaLayout,
    K_MULTIPLE,
    N_MULTIPLE,
    R_MULTIPLE,
    aligned_dim,
    expand_config,
    round_up,
    shrink_config,
    x_columns,
)

__all__ = [
    "Batch",
    "make_batch",
    "pad_segments",
    "shrink",
    "expand",
    "qkv_lora",
    "gate_up_lora",
]

_OP_DTYPES = (jnp.bfloat16, jnp.float16)


class Batch(NamedTuple):
    """Device metadata of one batch (a pytree: pass it through jit)."""

    meta: jax.Array  # int32, see lora.pallas.tiling
    lora_ranks: jax.Array  # (L,) int32
    scalings: jax.Array  # (L,) float32
    num_tokens: int  # rows of x (static)


# NamedTuple fields are all pytree leaves; num_tokens must stay static, so register explicitly.
jax.tree_util.register_pytree_node(
    Batch,
    lambda b: ((b.meta, b.lora_ranks, b.scalings), b.num_tokens),
    lambda num_tokens, leaves: Batch(*leaves, num_tokens),
)


def pad_segments(seg_lens, weight_indices, length: int):
    """Pad (seg_lens, weight_indices) with zero-length segments to a static ``length``."""
    seg_lens = jnp.asarray(seg_lens, jnp.int32)
    weight_indices = jnp.asarray(weight_indices, jnp.int32)
    extra = length - seg_lens.shape[0]
    if extra < 0:
        raise ValueError(f"{seg_lens.shape[0]} segments do not fit length {length}")
    return jnp.pad(seg_lens, (0, extra)), jnp.pad(weight_indices, (0, extra))


def build_meta(seg_indptr, weight_indices, lora_ranks, *, num_tokens: int, bpad: int):
    """The int32 metadata array (layout in :mod:`lora.pallas.tiling`) from segment arrays (jnp)."""
    L = lora_ranks.shape[0]
    nb = bpad // BM
    bs = weight_indices.shape[0]
    rows = jnp.arange(bpad, dtype=jnp.int32)
    if bs == 0:
        row_slot = jnp.full((bpad,), -1, jnp.int32)
    else:
        seg = jnp.minimum(jnp.searchsorted(seg_indptr[1:], rows, side="right"), bs - 1)
        slot = weight_indices[seg].astype(jnp.int32)
        valid = (rows < seg_indptr[bs]) & (rows < num_tokens) & (lora_ranks[slot] > 0)
        row_slot = jnp.where(valid, slot, -1)
    lay = MetaLayout(bpad, L)
    tail0 = max(num_tokens - BM, 0) if num_tokens >= BM else 0
    boxes = jnp.concatenate([row_slot, row_slot[tail0 : tail0 + BM]]).reshape(nb + 1, BM)
    # Block b's adapters: those of its aligned rows, plus (last partial block) those of its clamped box.
    tail_block = min((num_tokens - 1) // BM, nb - 1) if num_tokens > 0 else 0
    owner = jnp.arange(nb + 1).at[nb].set(tail_block)
    present = jnp.zeros((nb, L + 1), jnp.int32)
    present = present.at[owner[:, None], jnp.where(boxes < 0, L, boxes)].set(1)[:, :L]
    count = present.sum(axis=1).astype(jnp.int32)
    order = jnp.argsort(-present, axis=1, stable=True).astype(jnp.int32)
    head = jnp.array([num_tokens], jnp.int32)
    pad = jnp.zeros((lay.boxes - (1 + nb + nb * L),), jnp.int32)
    return jnp.concatenate([head, count, order.reshape(-1), pad, boxes.reshape(-1)])


def make_batch(seg_indptr, weight_indices, lora_ranks, scalings, *, num_tokens: int) -> Batch:
    """Batch metadata for activations with ``num_tokens`` rows (jit-able; num_tokens static).

    ``seg_indptr`` (bs+1,) int32, ``weight_indices`` (bs,) int32, ``lora_ranks`` (L,) int32 and
    ``scalings`` (L,) float32 as in :class:`lora.LoRABatchInfo`.
    """
    seg_indptr = jnp.asarray(seg_indptr, jnp.int32)
    weight_indices = jnp.asarray(weight_indices, jnp.int32)
    lora_ranks = jnp.asarray(lora_ranks, jnp.int32)
    scalings = jnp.asarray(scalings, jnp.float32)
    bpad = round_up(max(num_tokens, 1), BM)
    meta = build_meta(seg_indptr, weight_indices, lora_ranks, num_tokens=num_tokens, bpad=bpad)
    return Batch(meta, lora_ranks, scalings, num_tokens)


# ---- helpers ------------------------------------------------------------------------------------


def _pad_to(a, shape):
    pads = [(0, t - s) for s, t in zip(a.shape, shape)]
    if all(p == (0, 0) for p in pads):
        return a
    return jnp.pad(a, pads)


def _split_f32(a):
    """float32 -> (hi, lo) bfloat16 with hi + lo == a to ~2**-16 relative."""
    hi = a.astype(jnp.bfloat16)
    lo = (a - hi.astype(jnp.float32)).astype(jnp.bfloat16)
    return hi, lo


def _check_batch(batch: Batch, x):
    if not isinstance(batch, Batch):
        raise TypeError(f"batch must be a lora.pallas.Batch (make_batch), got {type(batch).__name__}")
    if x.shape[0] != batch.num_tokens:
        raise ValueError(f"x has {x.shape[0]} rows but the batch was built for num_tokens={batch.num_tokens}")


def _shrink32(x, a, batch: Batch, stack: int):
    """float32 (bpad, NA_padded) shrink of operand-dtype x (bpad rows) and a (padded)."""
    bpad, k = x.shape
    L, na, _ = a.shape
    cfg = shrink_config(bpad, k, na, L, stack, jnp.dtype(x.dtype).name, tail=False, interpret=interpret_mode_active())
    if not cfg.split:
        return S.shrink_block(batch.meta, batch.lora_ranks, x, None, a, cfg=cfg)
    ws = jnp.zeros((bpad, cfg.na_out), jnp.float32)
    out = S.shrink_split(batch.meta, batch.lora_ranks, x, None, a, ws, cfg=cfg)
    if cfg.interpret:
        out = S.finish_split_partials(out, batch.meta[0], bpad=bpad, tail=False, na_out=cfg.na_out)
    return out


def _prepare_shrink(x, a, stack):
    """Pad x (rows to 64, K) and a (K, max_r) to kernel-friendly shapes."""
    t, k = x.shape
    L, sr, k2 = a.shape
    if k2 != k:
        raise ValueError(f"A has K={k2} but x has {k} columns")
    if sr % stack:
        raise ValueError(f"A has {sr} rows, not a multiple of stack={stack}")
    max_r = sr // stack
    kp, rp = aligned_dim(k, K_MULTIPLE), aligned_dim(max_r, R_MULTIPLE)
    bpad = round_up(max(t, 1), BM)
    x = _pad_to(x, (bpad, kp))
    if rp != max_r:  # keep each slot's packing [A_1; ...; A_stack] at the top, pad below
        a = jnp.pad(a, ((0, 0), (0, stack * (rp - max_r)), (0, 0)))
    a = _pad_to(a, (L, stack * rp, kp))
    return x, a, max_r, rp


def _shrink_any(x, a, batch, stack):
    """float32 (bpad, stack*rp) shrink for any activation dtype (f32 via three bf16 products)."""
    x, a, max_r, rp = _prepare_shrink(x, a, stack)
    if x.dtype == jnp.float32:
        (xh, xl), (ah, al) = _split_f32(x), _split_f32(a)
        out = _shrink32(xh, ah, batch, stack) + _shrink32(xh, al, batch, stack) + _shrink32(xl, ah, batch, stack)
    elif x.dtype in _OP_DTYPES:
        out = _shrink32(x, a, batch, stack)
    else:
        raise TypeError(f"unsupported activation dtype {x.dtype}; use float16, bfloat16 or float32")
    return out, max_r, rp


def _expand_into(x32, b, batch, offsets, base, *, x_max_r: int):
    """base (t, N) += expand of x32 (bpad, stack*x_max_r) over b (L, N, max_r); returns new base."""
    t, n = base.shape
    L, n2, max_r = b.shape
    stack = len(offsets) - 1
    if n2 != n:
        raise ValueError(f"B has {n2} output rows but base has {n} columns")
    np_, rp = aligned_dim(n, N_MULTIPLE), aligned_dim(max_r, R_MULTIPLE)
    bpad = round_up(max(t, 1), BM)
    if x_max_r != max_r and x_max_r != rp:
        raise ValueError(f"x has max_r={x_max_r} but B has max_r={max_r}")
    # Slice j of a slot sits at columns [j*r, (j+1)*r) whatever max_r is; extra columns are masked.
    na = x_columns(max(stack * rp, x32.shape[1]), jnp.dtype(x32.dtype).itemsize)
    x32 = _pad_to(x32, (bpad, na))
    x_stride = 0
    if stack > 1:
        # Slice j of a slot starts at column j*r; a TMA copy must start 16-byte aligned, which an
        # odd rank breaks. Ranks are traced values here, so always move slices to j*rp.
        x32 = repack_slices(x32, batch.meta, batch.lora_ranks, stack=stack, stride=rp, bpad=bpad)
        x_stride = rp
    b = _pad_to(b, (L, np_, rp))
    base_p = _pad_to(base, (bpad, np_))
    offs = jnp.asarray(offsets, jnp.int32)

    def run(xv, bv, part, base_v):
        cfg = expand_config(
            bpad, np_, na, rp, L, stack, jnp.dtype(xv.dtype).name, jnp.dtype(bv.dtype).name,
            jnp.dtype(base_v.dtype).name, x_part=part, tail=False, x_stride=x_stride,
        )
        return E.expand(batch.meta, batch.lora_ranks, batch.scalings, offs, xv, None, bv, base_v, cfg=cfg)

    if b.dtype == jnp.float32:
        bh, bl = _split_f32(b)
        base_p = run(x32, bh, 0, base_p)
        base_p = run(x32, bl, 0, base_p)
        base_p = run(x32, bh, 1, base_p)
    elif b.dtype in _OP_DTYPES:
        base_p = run(x32, b, 0, base_p)
    else:
        raise TypeError(f"unsupported weight dtype {b.dtype}")
    return base_p[:t, :n]


def repack_slices(x, meta, lora_ranks, *, stack: int, stride: int, bpad: int):
    """(bpad, *) rows with slice j of the row's slot at columns [j*r, (j+1)*r) -> at [j*stride, ...).

    Columns past a slice's rank are zero. The result has ``x_columns(stack*stride)`` columns.
    """
    lay = MetaLayout(bpad, lora_ranks.shape[0])
    row_slot = meta[lay.boxes : lay.boxes + bpad]
    r_row = jnp.where(row_slot >= 0, lora_ranks[jnp.maximum(row_slot, 0)], 0)
    c = jnp.arange(stack * stride, dtype=jnp.int32)
    j, t = c // stride, c % stride
    src = jnp.clip(j[None, :] * r_row[:, None] + t[None, :], 0, x.shape[1] - 1)
    vals = jnp.take_along_axis(x, src, axis=1)
    out = jnp.where(t[None, :] < r_row[:, None], vals, jnp.zeros((), x.dtype))
    return _pad_to(out, (bpad, x_columns(stack * stride, jnp.dtype(x.dtype).itemsize)))


# ---- the public ops -----------------------------------------------------------------------------


def shrink(x, a, batch: Batch, *, stack: int = 1):
    """x (T, K), a (L, stack*max_r, K) -> (T, stack*max_r) in x's dtype (float32 accumulation)."""
    _check_batch(batch, x)
    out, max_r, _ = _shrink_any(x, a, batch, stack)
    # A slot's columns are [0, stack*r), independent of max_r: padding max_r only appends zeros.
    return out[: x.shape[0], : stack * max_r].astype(x.dtype)


def expand(x, b, batch: Batch, *, offsets=None, base=None):
    """x (T, stack*max_r), b (L, N, max_r) -> base + LoRA update (T, N) (zeros when base is None).

    ``offsets``: static slice boundaries ``(0, ..., N)`` (default one slice ``(0, N)``).
    """
    _check_batch(batch, x)
    n = b.shape[1]
    offsets = tuple(int(o) for o in (offsets if offsets is not None else (0, n)))
    if base is None:
        base = jnp.zeros((x.shape[0], n), x.dtype)
    stack = len(offsets) - 1
    if x.shape[1] % stack:
        raise ValueError(f"x has {x.shape[1]} columns, not a multiple of {stack} slices")
    return _expand_into(x, b, batch, offsets, base, x_max_r=x.shape[1] // stack)


def _fused(x, a, b, batch, offsets, base):
    _check_batch(batch, x)
    stack = len(offsets) - 1
    xa, max_r, rp = _shrink_any(x, a, batch, stack)
    if base is None:
        base = jnp.zeros((x.shape[0], b.shape[1]), x.dtype)
    return _expand_into(xa, b, batch, offsets, base, x_max_r=rp)


def qkv_lora(x, a, b, batch: Batch, *, q: int, kv: int, base=None):
    """QKV: a (L, 3*max_r, K), b (L, q+2*kv, max_r); slices [0, q), [q, q+kv), [q+kv, q+2*kv)."""
    return _fused(x, a, b, batch, (0, q, q + kv, q + 2 * kv), base)


def gate_up_lora(x, a, b, batch: Batch, *, base=None):
    """Gate-up: a (L, 2*max_r, K), b (L, 2*n, max_r); slices [0, n), [n, 2n)."""
    n2 = b.shape[1]
    return _fused(x, a, b, batch, (0, n2 // 2, n2), base)
