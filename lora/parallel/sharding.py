"""Which part of a full adapter each tensor-parallel rank holds, the way the base layer is sharded.

A :class:`Shard` names the columns of a layer's *full* dimension that one rank holds, in the order
it holds them: one range per stacked slice. The same object cuts the adapter weights, the base
output and the activations, so the LoRA layout cannot drift from the base layer's:

=================  ===========================  ====================================================
layer              shard of                     rank ``i`` of ``tp`` holds
=================  ===========================  ====================================================
column (up-proj)   output N (B rows, base)      ``[i*N/tp, (i+1)*N/tp)``
gate-up            output 2n                    gate ``[i*n/tp, ...)`` then up ``[n + i*n/tp, ...)``
QKV (GQA)          output q + 2*kv              its query heads, then its kv head(s) of K and of V
row (o, down)      input K (A columns, x)       ``[i*K/tp, (i+1)*K/tp)``
=================  ===========================  ====================================================

Column-parallel layers keep all of A (shrink runs locally on the replicated x); row-parallel layers
keep all of B (expand runs on the full output). Dimensions must split evenly (as the base layers'
do): an uneven split is a ValueError naming the dimension.

GQA with fewer kv heads than ranks: when ``tp`` is a multiple of ``kv_heads`` each kv head is
*replicated* on ``tp // kv_heads`` consecutive ranks (rank ``i`` holds kv head
``i // (tp // kv_heads)``), as the base QKV layer of vLLM and SGLang replicates it; the query heads
of rank ``i`` are then exactly those that attend to that kv head when ``q_heads`` is a multiple of
``kv_heads``. When neither ``kv_heads % tp`` nor ``tp % kv_heads`` is 0 there is no even layout and
:func:`qkv_shard` raises ValueError.

Everything here is slicing on host-known sizes: it works on torch tensors, numpy arrays and jax
arrays alike (:meth:`Shard.take`), and imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Shard",
    "column_shard",
    "gate_up_shard",
    "qkv_shard",
    "row_shard",
    "shard_major",
]


@dataclass(frozen=True)
class Shard:
    """The ranges of a full dimension one rank holds, one per stacked slice, in local order.

    ``output_offset`` (the local slice boundaries, e.g. the per-shard GQA offsets of QKV) and
    ``max_slice_width`` are what the local op call takes.
    """

    rank: int
    tp: int
    full: int  # size of the full dimension
    ranges: tuple[tuple[int, int], ...]

    @property
    def width(self) -> int:
        return sum(hi - lo for lo, hi in self.ranges)

    @property
    def output_offset(self) -> tuple[int, ...]:
        offs = [0]
        for lo, hi in self.ranges:
            offs.append(offs[-1] + hi - lo)
        return tuple(offs)

    @property
    def max_slice_width(self) -> int:
        return max(hi - lo for lo, hi in self.ranges)

    def take(self, t, axis: int = -1):
        """This rank's part of full tensor ``t`` along ``axis`` (a contiguous copy)."""
        axis = axis % _ndim(t)
        if t.shape[axis] != self.full:
            raise ValueError(
                f"the tensor has {t.shape[axis]} elements along axis {axis} but this shard cuts a dimension of "
                f"{self.full}"
            )
        lead = (slice(None),) * axis
        return _concat([t[lead + (slice(lo, hi),)] for lo, hi in self.ranges], axis)


def _check_int(name: str, v, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")
    return v


def _check_rank(tp, rank) -> None:
    _check_int("tp", tp, 1)
    _check_int("rank", rank, 0)
    if rank >= tp:
        raise ValueError(f"rank must lie in [0, tp={tp}), got {rank}")


def _even(name: str, size: int, tp: int) -> int:
    if size % tp:
        raise ValueError(f"{name}={size} does not split evenly over tp={tp} ranks")
    return size // tp


def column_shard(n: int, tp: int, rank: int) -> Shard:
    """Output columns of a column-parallel layer with one slice (up-projections), or the input K of
    a row-parallel one (:func:`row_shard` is the same cut)."""
    _check_rank(tp, rank)
    w = _even("n", _check_int("n", n, 1), tp)
    return Shard(rank, tp, n, ((rank * w, (rank + 1) * w),))


def row_shard(k: int, tp: int, rank: int) -> Shard:
    """Input columns ``K`` of a row-parallel layer (o, down): cuts x's columns and A's last axis."""
    _check_rank(tp, rank)
    w = _even("k", _check_int("k", k, 1), tp)
    return Shard(rank, tp, k, ((rank * w, (rank + 1) * w),))


def gate_up_shard(two_n: int, tp: int, rank: int) -> Shard:
    """A merged gate-up output ``[gate (n); up (n)]``: this rank's gate columns, then its up columns."""
    _check_rank(tp, rank)
    _check_int("two_n", two_n, 2)
    if two_n % 2:
        raise ValueError(f"two_n={two_n} must be even (gate and up of n columns each)")
    n = two_n // 2
    w = _even("n (= two_n / 2)", n, tp)
    return Shard(rank, tp, two_n, ((rank * w, (rank + 1) * w), (n + rank * w, n + (rank + 1) * w)))


def qkv_shard(q_heads: int, kv_heads: int, head_dim: int, tp: int, rank: int) -> Shard:
    """A QKV output ``[q (q_heads*d); k (kv_heads*d); v (kv_heads*d)]``: this rank's query heads, then
    its kv heads of K and of V (sharded when ``kv_heads % tp == 0``, replicated when
    ``tp % kv_heads == 0``; ValueError otherwise)."""
    _check_rank(tp, rank)
    _check_int("q_heads", q_heads, 1)
    _check_int("kv_heads", kv_heads, 1)
    _check_int("head_dim", head_dim, 1)
    qh = _even("q_heads", q_heads, tp)
    if kv_heads % tp == 0:
        kvh = kv_heads // tp
        first_kv = rank * kvh
    elif tp % kv_heads == 0:
        kvh = 1
        first_kv = rank // (tp // kv_heads)  # replicated on tp // kv_heads consecutive ranks
    else:
        raise ValueError(
            f"kv_heads={kv_heads} can be neither sharded nor replicated over tp={tp} ranks: one of them must divide "
            "the other"
        )
    q, kv, d = q_heads * head_dim, kv_heads * head_dim, head_dim
    ranges = (
        (rank * qh * d, (rank + 1) * qh * d),
        (q + first_kv * d, q + (first_kv + kvh) * d),
        (q + kv + first_kv * d, q + kv + (first_kv + kvh) * d),
    )
    return Shard(rank, tp, q + 2 * kv, ranges)


def shard_major(t, shards, axis: int = -1):
    """Every rank's part of ``t`` along ``axis``, concatenated in rank order.

    The result splits evenly into ``len(shards)`` blocks along ``axis`` (block i is rank i's local
    tensor), which is the layout a ``jax.sharding`` partition of that axis expects. Replicated kv
    heads appear once per rank that holds them.
    """
    shards = list(shards)
    if not shards:
        raise ValueError("shards must name at least one rank")
    if [s.rank for s in shards] != list(range(len(shards))) or any(s.tp != len(shards) for s in shards):
        raise ValueError("shards must be the shards of ranks 0..tp-1 of one layout, in rank order")
    axis = axis % _ndim(t)
    return _concat([s.take(t, axis) for s in shards], axis)


def _ndim(t) -> int:
    return len(t.shape)


def _concat(parts, axis: int):
    """Concatenate with the array's own library (torch, jax or numpy), always returning a copy."""
    mod = type(parts[0]).__module__
    if mod.startswith("torch"):
        import torch

        return torch.cat(parts, dim=axis).contiguous()
    if mod.startswith("jax"):
        import jax.numpy as jnp

        return jnp.concatenate(parts, axis=axis)
    import numpy as np

    return np.ascontiguousarray(np.concatenate(parts, axis=axis))
