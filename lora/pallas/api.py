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
rank-0 slots and rows outside segments untouched). The steps of each op are those of
:mod:`lora.pallas.plan` (shared with the torch backend); this module is their JAX executor.
float32 activations are computed as three bfloat16 products (hi*hi + hi*lo + lo*hi): about 16
significant bits per operand, not float32's 24 (max absolute error ~2e-5 on outputs ~1 at K=4096,
about 10x a float32 dot product's; numbers in :mod:`lora.pallas.plan`). ``tuning`` (:class:`lora.pallas.tiling.Tuning`) overrides the kernel
configurations the plan picks.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import expand_kernel as E
from . import meta as M
from . import plan as P
from . import shrink_kernel as S
from .common import interpret_mode_active
from .tiling import BM, DEFAULT_TUNING, Tuning, round_up

__all__ = [
    "Batch",
    "make_batch",
    "pad_segments",
    "build_meta",
    "Tuning",
    "shrink",
    "expand",
    "qkv_lora",
    "gate_up_lora",
]


class Batch(NamedTuple):
    """Device metadata of one batch (a pytree: pass it through jit)."""

    meta: jax.Array  # int32, layout in lora.pallas.tiling
    nrows: jax.Array  # (1,) int32: num_tokens
    lora_ranks: jax.Array  # (L,) int32
    scalings: jax.Array  # (L,) float32
    num_tokens: int  # rows of x (static)


# num_tokens must stay static: register the pytree explicitly.
jax.tree_util.register_pytree_node(
    Batch,
    lambda b: ((b.meta, b.nrows, b.lora_ranks, b.scalings), b.num_tokens),
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


def _bpad(num_tokens: int) -> int:
    return round_up(max(num_tokens, 1), BM)


def build_meta(seg_indptr, weight_indices, lora_ranks, *, bpad: int):
    """The int32 metadata (layout in :mod:`lora.pallas.tiling`) of ``bpad // 64`` row groups."""
    return M.build(XP, jnp.asarray(seg_indptr, jnp.int32), jnp.asarray(weight_indices, jnp.int32),
                   jnp.asarray(lora_ranks, jnp.int32), bs=int(weight_indices.shape[0]),
                   num_lora=int(lora_ranks.shape[0]), groups=bpad // BM)


def make_batch(seg_indptr, weight_indices, lora_ranks, scalings, *, num_tokens: int) -> Batch:
    """Batch metadata for activations with ``num_tokens`` rows (jit-able; num_tokens static).

    ``seg_indptr`` (bs+1,) int32, ``weight_indices`` (bs,) int32, ``lora_ranks`` (L,) int32 and
    ``scalings`` (L,) float32 as in :class:`lora.LoRABatchInfo`.
    """
    seg_indptr = jnp.asarray(seg_indptr, jnp.int32)
    weight_indices = jnp.asarray(weight_indices, jnp.int32)
    lora_ranks = jnp.asarray(lora_ranks, jnp.int32)
    scalings = jnp.asarray(scalings, jnp.float32)
    meta = M.build(XP, seg_indptr, weight_indices, lora_ranks, bs=int(weight_indices.shape[0]),
                             num_lora=int(lora_ranks.shape[0]), groups=_bpad(num_tokens) // BM)
    nrows = jnp.full((1,), num_tokens, jnp.int32)
    return Batch(meta, nrows, lora_ranks, scalings, num_tokens)


# ---- the JAX executor of lora.pallas.plan ---------------------------------------------------------


class _JaxExecutor:
    """Array namespace + kernel launches for :mod:`lora.pallas.plan` and :mod:`lora.pallas.meta`."""

    # array namespace (int32 index arithmetic)
    @staticmethod
    def arange(n):
        return jnp.arange(n, dtype=jnp.int32)

    @staticmethod
    def full(shape, v):
        return jnp.full(shape, v, jnp.int32)

    @staticmethod
    def const(key, fn):  # (under jit, XLA folds the constants)
        return fn()

    @staticmethod
    def take(a, idx):
        return a[idx]

    where = staticmethod(jnp.where)
    minimum = staticmethod(jnp.minimum)
    clip = staticmethod(jnp.clip)
    reshape = staticmethod(jnp.reshape)

    @staticmethod
    def searchsorted(a, v):
        return jnp.searchsorted(a, v, side="right").astype(jnp.int32)

    @staticmethod
    def any(a, axis):
        return a.any(axis=axis)

    @staticmethod
    def sum(a, axis):
        return a.sum(axis=axis).astype(jnp.int32)

    @staticmethod
    def cumsum(a):
        return jnp.cumsum(a).astype(jnp.int32)

    @staticmethod
    def sort(a, axis):
        return jnp.sort(a, axis=axis)

    @staticmethod
    def concat(parts, axis):
        return jnp.concatenate(parts, axis=axis)

    @staticmethod
    def take_along_axis(a, idx, axis):
        return jnp.take_along_axis(a, idx, axis=axis)

    @staticmethod
    def pad(a, shape, role=None, zero=True):
        pads = [(0, t - s) for s, t in zip(a.shape, shape)]
        if all(p == (0, 0) for p in pads):
            return a
        return jnp.pad(a, pads)

    # the plan's steps
    @staticmethod
    def split_f32(a, role=None):
        hi = a.astype(jnp.bfloat16)
        lo = (a - hi.astype(jnp.float32)).astype(jnp.bfloat16)
        return hi, lo

    @staticmethod
    def add(a, b):
        return a + b

    @staticmethod
    def aligned(a, role=None):
        return a

    @staticmethod
    def tail(x):  # pragma: no cover - the JAX plans pad x to bpad rows (no tail view)
        raise AssertionError("JAX plans have no tail view")

    @staticmethod
    def shrink_block(cfg, batch, x, x_tail, a, slot=0, dest=None):
        return S.shrink_block(batch.meta, batch.nrows, batch.lora_ranks, x, x_tail, a, cfg=cfg)

    @staticmethod
    def shrink_split(cfg, batch, x, x_tail, a, slot=0):
        return S.shrink_split(batch.meta, batch.nrows, batch.lora_ranks, x, x_tail, a, cfg=cfg)

    @staticmethod
    def add_parts(cfg, batch, parts, slot=0, dest=None):
        return S.add_parts(batch.nrows, parts.reshape(cfg.nb * cfg.tiles, *parts.shape[2:]), cfg=cfg)

    @staticmethod
    def expand(cfg, batch, offsets, x, x_tail, b, base):
        return E.expand(batch.meta, batch.nrows, batch.lora_ranks, batch.scalings, offsets, x, x_tail, b, base, cfg=cfg)

    @staticmethod
    def writeback(target, base):
        return target[: base.shape[0], : base.shape[1]]


XP = _JaxExecutor()


# ---- the public ops -----------------------------------------------------------------------------


def _check_batch(batch: Batch, x):
    if not isinstance(batch, Batch):
        raise TypeError(f"batch must be a lora.pallas.Batch (make_batch), got {type(batch).__name__}")
    if x.shape[0] != batch.num_tokens:
        raise ValueError(f"x has {x.shape[0]} rows but the batch was built for num_tokens={batch.num_tokens}")


def _dtype(name, a) -> str:
    d = jnp.dtype(a.dtype).name
    if d not in P.DTYPES:
        raise TypeError(f"unsupported {name} dtype {d}; use float16, bfloat16 or float32")
    return d


def _tuning(tuning) -> Tuning:
    if tuning is None:
        return DEFAULT_TUNING
    if not isinstance(tuning, Tuning):
        raise TypeError(f"tuning must be a lora.pallas.tiling.Tuning, got {type(tuning).__name__}")
    if tuning.expand_reduce_add and interpret_mode_active():
        raise ValueError("Tuning.expand_reduce_add needs the GPU: interpret mode has no TMA reductions")
    return tuning


def _shrink_plan(x, a, batch: Batch, stack: int, tuning, *, result: bool):
    t, k = x.shape
    L, sr, k2 = a.shape
    if k2 != k:
        raise ValueError(f"A has K={k2} but x has {k} columns")
    if sr % stack:
        raise ValueError(f"A has {sr} rows, not a multiple of stack={stack}")
    if jnp.dtype(a.dtype) != jnp.dtype(x.dtype):
        raise TypeError(f"A has dtype {a.dtype} but x has {x.dtype}; they must match")
    return P.plan_shrink(_bpad(t), k, sr // stack, stack, L, _dtype("x", x), tail=False, result=result,
                         tuning=_tuning(tuning))


def _expand_plan(x_dtype, b, base, batch, stack, tuning, *, internal):
    t, n = base.shape
    L, n2, max_r = b.shape
    if n2 != n:
        raise ValueError(f"B has {n2} output rows but base has {n} columns")
    return P.plan_expand(_bpad(t), n, max_r, stack, L, x_dtype, _dtype("weights", b), _dtype("base", base),
                         internal=internal, tail=False, tuning=_tuning(tuning))


def shrink(x, a, batch: Batch, *, stack: int = 1, tuning: Tuning | None = None):
    """x (T, K), a (L, stack*max_r, K) -> (T, stack*max_r) in x's dtype (float32 accumulation)."""
    _check_batch(batch, x)
    sr = a.shape[1]
    if sr == 0:
        return jnp.zeros((x.shape[0], 0), x.dtype)
    plan = _shrink_plan(x, a, batch, stack, tuning, result=True)
    out = P.run_shrink(XP, plan, batch, x, a)
    # A slot's columns are [0, stack*r), independent of max_r: padding max_r only appends zeros.
    return out[: x.shape[0], :sr]


def expand(x, b, batch: Batch, *, offsets=None, base=None, tuning: Tuning | None = None):
    """x (T, stack*max_r), b (L, N, max_r) -> base + LoRA update (T, N) (zeros when base is None).

    ``offsets``: static slice boundaries ``(0, ..., N)`` (default one slice ``(0, N)``).
    """
    _check_batch(batch, x)
    n = b.shape[1]
    offsets = tuple(int(o) for o in (offsets if offsets is not None else (0, n)))
    if base is None:
        base = jnp.zeros((x.shape[0], n), x.dtype)
    stack = len(offsets) - 1
    if x.shape[1] != stack * b.shape[2]:
        raise ValueError(f"x has {x.shape[1]} columns but B has max_r={b.shape[2]} and {stack} slices")
    plan = _expand_plan(_dtype("x", x), b, base, batch, stack, tuning, internal=False)
    return P.run_expand(XP, plan, batch, x, b, jnp.asarray(offsets, jnp.int32), base)


def _fused(x, a, b, batch, offsets, base, tuning):
    _check_batch(batch, x)
    stack = len(offsets) - 1
    if base is None:
        base = jnp.zeros((x.shape[0], b.shape[1]), x.dtype)
    if a.shape[1] != stack * b.shape[2]:
        raise ValueError(f"A has {a.shape[1]} rows but B has max_r={b.shape[2]} and {stack} slices")
    # the shrink output (x's dtype) is the expand's x; its plan is checked before any launch
    ep = _expand_plan(_dtype("x", x), b, base, batch, stack, tuning, internal=True)
    if ep.noop:
        return base
    sp = _shrink_plan(x, a, batch, stack, tuning, result=False)
    return P.run_fused(XP, sp, ep, batch, x, a, b, jnp.asarray(offsets, jnp.int32), base)


def qkv_lora(x, a, b, batch: Batch, *, q: int, kv: int, base=None, tuning: Tuning | None = None):
    """QKV: a (L, 3*max_r, K), b (L, q+2*kv, max_r); slices [0, q), [q, q+kv), [q+kv, q+2*kv)."""
    return _fused(x, a, b, batch, (0, q, q + kv, q + 2 * kv), base, tuning)


def gate_up_lora(x, a, b, batch: Batch, *, base=None, tuning: Tuning | None = None):
    """Gate-up: a (L, 2*max_r, K), b (L, 2*n, max_r); slices [0, n), [n, 2n)."""
    n2 = b.shape[1]
    return _fused(x, a, b, batch, (0, n2 // 2, n2), base, tuning)
