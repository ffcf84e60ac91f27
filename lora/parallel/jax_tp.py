"""The LoRA ops of a tensor-parallel layer with ``jax.sharding`` / ``shard_map`` over a device mesh.

Same layouts as :mod:`lora.parallel.torch_tp`, for JAX models; the per-device work is the
:mod:`lora.pallas` JAX API (:func:`pallas_ops`, the one place this module touches it), run by
``shard_map`` over the mesh axis ``axis`` (``tp`` devices):

=============  ==========================  =========================  ============================
op             sharded inputs              replicated inputs          collective
=============  ==========================  =========================  ============================
column_lora    b, base on N                x, a, batch                none
gate_up_lora   b, base on 2n (shard-major) x, a, batch                none
qkv_lora       b, base on q+2kv (shard-    x, a, batch                none
               major, per-shard GQA)
row_lora       x on K, a on K              b, base, batch             one ``psum`` of (s, max_r)
=============  ==========================  =========================  ============================

Column-parallel outputs stay sharded on their last axis, in *shard-major* order: device ``i`` of the
axis holds block ``i``, its local ``[q_i; k_i; v_i]`` for QKV or ``[gate_i; up_i]`` for gate-up, the
layout of a TP model's own projection output. Build such arrays (B, base) from full ones with
:func:`lora.parallel.sharding.shard_major` (for a plain column layer it is the identity). The
row-parallel output is replicated: ``base`` is the base layer's output after its own reduction,
and every device adds the same update after the psum of the small shrink result (in the
activation dtype, or ``reduce_dtype=jnp.float32``).

Each function is jitted once per (mesh, axis, shapes) and may be called inside an outer jit.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

from .sharding import qkv_shard

__all__ = ["LocalOps", "pallas_ops", "column_lora", "gate_up_lora", "qkv_lora", "row_lora", "row_shrink"]


class LocalOps(NamedTuple):
    """The single-device ops run on each device's block (signatures of the lora.pallas API)."""

    shrink: Callable  # (x, a, batch, *, stack) -> (s, stack*max_r)
    expand: Callable  # (x, b, batch, *, offsets, base) -> (s, N)
    qkv: Callable  # (x, a, b, batch, *, q, kv, base) -> (s, q+2kv)
    gate_up: Callable  # (x, a, b, batch, *, base) -> (s, 2n)


def pallas_ops() -> LocalOps:
    """The lora.pallas JAX API entry points (imported here only)."""
    from lora import pallas as lp

    return LocalOps(shrink=lp.shrink, expand=lp.expand, qkv=lp.qkv_lora, gate_up=lp.gate_up_lora)


def _tp(mesh, axis: str) -> int:
    names = getattr(mesh, "axis_names", None)
    if names is None:
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis not in names:
        raise ValueError(f"axis {axis!r} is not an axis of the mesh (axes: {tuple(names)})")
    return int(mesh.shape[axis])


def _shard_map(f, mesh, in_specs, out_specs):
    import jax

    sm = getattr(jax, "shard_map", None)
    if sm is None:  # pragma: no cover - older jax
        from jax.experimental.shard_map import shard_map as sm

        return sm(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)
    # The kernels are opaque to the varying-manual-axes check; the specs below state the layout.
    return sm(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


@functools.lru_cache(maxsize=256)
def _compiled(kind: str, mesh, axis: str, statics: tuple, has_base: bool, ops: LocalOps):
    """A jitted shard_map of one op (cached: one trace per mesh/axis/static arguments)."""
    import jax
    from jax.sharding import PartitionSpec as P

    rep, col, b_col = P(), P(None, axis), P(None, axis, None)
    if kind == "row":
        (reduce_dtype,) = statics

        def body(x, a, b, batch, base=None):
            part = ops.shrink(x, a, batch, stack=1)
            full = jax.lax.psum(part if reduce_dtype is None else part.astype(reduce_dtype), axis)
            return ops.expand(full.astype(x.dtype), b, batch, base=base)

        specs = (col, P(None, None, axis), rep, rep) + ((rep,) if has_base else ())
        return jax.jit(_shard_map(body, mesh, specs, rep))
    if kind == "row_shrink":
        stack, reduce_dtype = statics

        def body(x, a, batch):
            part = ops.shrink(x, a, batch, stack=stack)
            full = jax.lax.psum(part if reduce_dtype is None else part.astype(reduce_dtype), axis)
            return full.astype(x.dtype)

        return jax.jit(_shard_map(body, mesh, (col, P(None, None, axis), rep), rep))

    if kind == "column":

        def body(x, a, b, batch, base=None):
            return ops.expand(ops.shrink(x, a, batch, stack=1), b, batch, base=base)

    elif kind == "gate_up":

        def body(x, a, b, batch, base=None):
            return ops.gate_up(x, a, b, batch, base=base)

    else:
        q, kv = statics

        def body(x, a, b, batch, base=None):
            return ops.qkv(x, a, b, batch, q=q, kv=kv, base=base)

    specs = (rep, rep, b_col, rep) + ((col,) if has_base else ())
    return jax.jit(_shard_map(body, mesh, specs, col))


def _check_split(name: str, size: int, tp: int, what: str) -> None:
    if size % tp:
        raise ValueError(f"{name} has {size} {what}, which do not split evenly over the mesh axis of {tp} devices")


def _run(kind, mesh, axis, statics, ops, args, base):
    ops = ops or pallas_ops()
    fn = _compiled(kind, mesh, axis, statics, base is not None, ops)
    return fn(*args) if base is None else fn(*args, base)


def column_lora(x, a, b, batch, *, mesh, axis: str = "tp", base=None, ops: LocalOps | None = None):
    """Up-projection: x (s, K) and a (L, max_r, K) replicated; b (L, N, max_r) and base (s, N) sharded on N."""
    _check_split("b", b.shape[1], _tp(mesh, axis), "output rows")
    return _run("column", mesh, axis, (), ops, (x, a, b, batch), base)


def gate_up_lora(x, a, b, batch, *, mesh, axis: str = "tp", base=None, ops: LocalOps | None = None):
    """Gate-up: b (L, 2n, max_r) and base (s, 2n) in shard-major order (``shard_major`` with
    ``gate_up_shard``); device i computes ``[gate_i; up_i]``."""
    tp = _tp(mesh, axis)
    _check_split("b", b.shape[1], 2 * tp, "output rows (gate and up of each device)")
    return _run("gate_up", mesh, axis, (), ops, (x, a, b, batch), base)


def qkv_lora(x, a, b, batch, *, mesh, q_heads: int, kv_heads: int, head_dim: int, axis: str = "tp", base=None,
             ops: LocalOps | None = None):
    """QKV: b (L, tp * shard.width, max_r) and base in shard-major order (``shard_major`` with
    ``qkv_shard``): device i holds its query heads then its (sharded or replicated) kv heads."""
    tp = _tp(mesh, axis)
    shard = qkv_shard(q_heads, kv_heads, head_dim, tp, 0)  # every device has the same local widths
    if b.shape[1] != tp * shard.width:
        raise ValueError(
            f"b has {b.shape[1]} output rows; the shard-major QKV layout of {q_heads} q / {kv_heads} kv heads of "
            f"{head_dim} over {tp} devices has {tp} x {shard.width} (build it with sharding.shard_major)"
        )
    q_local, kv_local = shard.output_offset[1], shard.output_offset[2] - shard.output_offset[1]
    return _run("qkv", mesh, axis, (q_local, kv_local), ops, (x, a, b, batch), base)


def row_lora(x, a, b, batch, *, mesh, axis: str = "tp", base=None, reduce_dtype=None, ops: LocalOps | None = None):
    """o / down: x (s, K) and a (L, max_r, K) sharded on K; b (L, N, max_r), base (s, N) replicated.

    Each device shrinks its K block, one psum over ``axis`` sums the (s, max_r) partials, and every
    device adds the same update into the full ``base``; the result is replicated.
    """
    tp = _tp(mesh, axis)
    _check_split("x", x.shape[1], tp, "columns (K)")
    return _run("row", mesh, axis, (reduce_dtype,), ops, (x, a, b, batch), base)


def row_shrink(x, a, batch, *, mesh, axis: str = "tp", stack: int = 1, reduce_dtype=None,
               ops: LocalOps | None = None):
    """Shrink of a row-parallel layer: x, a sharded on K -> the psum'ed (s, stack*max_r), replicated."""
    tp = _tp(mesh, axis)
    _check_split("x", x.shape[1], tp, "columns (K)")
    ops = ops or pallas_ops()
    return _compiled("row_shrink", mesh, axis, (stack, reduce_dtype), False, ops)(x, a, batch)
