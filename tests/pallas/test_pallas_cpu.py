"""The Pallas (Mosaic GPU) kernels on a CPU-only machine (the torch-free .venv-jax).

* The LoRA contract (lora.testing: poisoned inputs, float64 oracle) through the JAX API,
  with the kernels run in Mosaic GPU interpret mode.
* The full Mosaic lowering for CUDA of every kernel configuration the tiling can pick (interpret
  mode models neither TMA reductions nor TMA alignment).
* Token buckets, the metadata layout, and no recompilation for a new composition.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.experimental.pallas import mosaic_gpu as plgpu  # noqa: E402

from lora import pallas as lp  # noqa: E402
from lora.pallas import api as PA, common, tiling as T  # noqa: E402
from lora import testing as C  # noqa: E402

DT = {"bfloat16": jnp.bfloat16, "float16": jnp.float16, "float32": jnp.float32}
K, N, KV = 64, 64, 32  # fixed widths: each op compiles once per dtype
sds = jax.ShapeDtypeStruct


def f64(a):
    return np.asarray(jnp.asarray(a, jnp.float32), np.float64)


def batch_of(comp: C.Composition):
    return lp.make_batch(comp.seg_indptr, comp.weight_indices, comp.lora_ranks, comp.scalings, num_tokens=comp.tokens)


def run_op(op, comp, rng, dtype_name, tuning=None):
    t = lambda a: jnp.asarray(a, DT[dtype_name])  # noqa: E731
    batch = batch_of(comp)
    if op.startswith("shrink"):
        stack = int(op[-1])
        x, a = t(C.activations(rng, comp, K)), t(C.shrink_weights(rng, comp, stack, K))
        return lp.shrink(x, a, batch, stack=stack), C.ref_shrink(comp, f64(x), f64(a), stack)
    if op == "expand":
        x, b = t(C.expand_input(rng, comp, 1)), t(C.expand_weights(rng, comp, N))
        base = t(C.base_output(rng, comp, N))
        return lp.expand(x, b, batch, base=base, tuning=tuning), C.ref_expand(comp, f64(x), f64(b), [0, N], f64(base))
    if op == "qkv":
        offs = [0, N, N + KV, N + 2 * KV]
        x, a = t(C.activations(rng, comp, K)), t(C.shrink_weights(rng, comp, 3, K))
        b, base = t(C.expand_weights(rng, comp, offs[-1])), t(C.base_output(rng, comp, offs[-1]))
        out = lp.qkv_lora(x, a, b, batch, q=N, kv=KV, base=base, tuning=tuning)
        return out, C.ref_stacked(comp, f64(x), f64(a), f64(b), offs, f64(base))
    assert op == "gate_up"
    x, a = t(C.activations(rng, comp, K)), t(C.shrink_weights(rng, comp, 2, K))
    b, base = t(C.expand_weights(rng, comp, 2 * N)), t(C.base_output(rng, comp, 2 * N))
    out = lp.gate_up_lora(x, a, b, batch, base=base, tuning=tuning)
    return out, C.ref_stacked(comp, f64(x), f64(a), f64(b), [0, N, 2 * N], f64(base))


@pytest.fixture
def interpret():
    with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
        yield


# ---- the contract in interpret mode ------------------------------------------------------------


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("op", ["shrink1", "shrink3", "expand", "qkv", "gate_up"])
def test_contract_interpret(op, dtype_name, rng, interpret):
    """Decode-sized batches: the split-K shrink; uneven/zero-length segments, rank-0 and odd ranks."""
    comp = C.random_composition(rng)
    out, ref = run_op(op, comp, rng, dtype_name)
    check = C.compare(f64(out), ref, dtype_name, comp=comp, op=C.contract_op(op, K, N, KV))
    assert check.ok, f"{op} {dtype_name} {comp}: {check.detail} {check.problems}"


@pytest.mark.parametrize("op", ["shrink2", "qkv", "expand", "gate_up"])
def test_block_variant_interpret(op, rng, interpret):
    """More than 4 row blocks: the block shrink (one CTA per block, adapters merged per row) and the
    persistent expand (its pipeline over single-adapter tiles, multi-adapter tiles run one by one,
    a partial last block; qkv's slice at 96 is not a multiple of the 64-wide tiles: every tile one
    by one)."""
    # the last two: full blocks of one adapter, of full rank (16: x used as the wgmma operand as
    # it is) and of a lower one (12: masked)
    lens = [int(v) for v in rng.integers(0, 90, 6)] + [200, 150]
    slots = [int(v) for v in rng.integers(0, 4, 6)] + [0, 3]
    comp = C.Composition(lens, slots, [16, 0, 7, 12], [0.5, 1.0, 2.0, 1.5], 16, sum(lens) + 3)
    assert comp.tokens > 4 * T.BM
    # gate_up's slice boundary (64) is a multiple of 64-wide tiles: the pipeline's stacked path
    tuning = T.Tuning(expand_block_n=64) if op == "gate_up" else None
    out, ref = run_op(op, comp, rng, "bfloat16", tuning)
    check = C.compare(f64(out), ref, "bfloat16")
    assert check.ok, f"{op} {comp}: {check.detail}"


@pytest.fixture
def two_ctas(monkeypatch):
    """The persistent expand on two CTAs: the two of one SM (plans made meanwhile are dropped afterwards)."""
    from lora.pallas import plan as P

    monkeypatch.setattr(T, "PERSISTENT_CTAS", 1)
    P.plan_expand.cache_clear()
    yield
    P.plan_expand.cache_clear()


@pytest.mark.parametrize("op", ["expand", "gate_up", "qkv"])
def test_persistent_expand_walks_many_tiles_per_cta_interpret(op, rng, interpret, two_ctas):
    """Two CTAs walk every tile, one a step more than the other: each takes more steps than the ring
    of its steps' block counts and first slots has entries (so the ring's entries are reused), over
    blocks of one adapter, blocks where segments meet and blocks with no adapter (rank 0, rows past
    the segments); qkv's slice boundary at 96 is not a multiple of its 64-wide tiles: the steps skip
    every tile and one_tile runs them after the pipeline. Ranks 16 and 8 start their gate-up slices on
    16-byte boundaries (the pipeline's x window is the wgmma operand, masked for rank 8), rank 7 does
    not (the step fetches the wider window and shifts it)."""
    lens = [300, 5, 70, 0, 400, 200, 129]
    slots = [0, 1, 2, 3, 1, 2, 0]
    comp = C.Composition(lens, slots, [16, 8, 0, 7], [0.5, 1.0, 2.0, 1.5], 16, sum(lens) + 70)
    tuning = T.Tuning(expand_block_n=64) if op == "gate_up" else None
    cfg = T.expand_config(T.padded_tokens(comp.tokens), 2 * N if op == "gate_up" else N, 16, 16, 4, 1,
                          "bfloat16", "bfloat16", "bfloat16", tail=False, tuning=tuning or T.DEFAULT_TUNING)
    assert cfg.ctas == 2 and (comp.tokens // T.BM) * cfg.ntn // 2 > T.RING
    out, ref = run_op(op, comp, rng, "bfloat16", tuning)
    check = C.compare(f64(out), ref, "bfloat16")
    assert check.ok, f"{op} {comp}: {check.detail}"


def test_persistent_expand_runs_cross_column_tiles_interpret(rng, interpret, two_ctas):
    """Three 64-wide column tiles over two CTAs: each CTA's run of tiles (column tile major) crosses
    from one column tile to the next (CTA 1 also starts mid-column), so the ring's tiles, each made
    from the one before, wrap from the last row block to the next column tile's first."""
    lens = [300, 5, 70, 0, 400, 200, 129]
    slots = [0, 1, 2, 3, 1, 2, 0]
    comp = C.Composition(lens, slots, [16, 8, 0, 7], [0.5, 1.0, 2.0, 1.5], 16, sum(lens) + 70)
    n = 3 * 64
    tuning = T.Tuning(expand_block_n=64)
    cfg = T.expand_config(T.padded_tokens(comp.tokens), n, 16, 16, 4, 1, "bfloat16", "bfloat16", "bfloat16",
                          tail=False, tuning=tuning)
    nfull = comp.tokens // T.BM
    assert cfg.ctas == 2 and cfg.ntn == 3 and (nfull * 3 // 2) % nfull and nfull * 3 // 2 > T.RING
    x, b = C.expand_input(rng, comp, 1), C.expand_weights(rng, comp, n)
    base = C.base_output(rng, comp, n)
    t = lambda a: jnp.asarray(a, jnp.bfloat16)  # noqa: E731
    out = lp.expand(t(x), t(b), batch_of(comp), base=t(base), tuning=tuning)
    ref = C.ref_expand(comp, f64(t(x)), f64(t(b)), [0, n], f64(t(base)))
    check = C.compare(f64(out), ref, "bfloat16")
    assert check.ok, check.detail


@pytest.mark.parametrize("op", ["expand", "gate_up"])
def test_persistent_expand_blocks_of_four_adapters_interpret(op, rng, interpret, two_ctas):
    """Decode-like rows in a prefill bucket: one-token segments cycling over four slots fill blocks 1-6
    of a bucket of 8, so each of their steps adds four adapters whose rows interleave (block 0 has one
    adapter, block 7 is partial). Gate-up's second slice starts at column r: the further adapters of
    rank 16 start on a tile there (their x fetched as the wgmma operand), ranks 8 and 12 do not (the
    shifted window); in the first slice every start is on a tile, ranks 8 and 12 below it (the operand
    masked in place)."""
    lens = [64] + [1] * 384 + [20]
    slots = [0] + [k % 4 for k in range(384)] + [2]
    comp = C.Composition(lens, slots, [16, 8, 16, 12], [0.5, 1.0, 2.0, 1.5], 16, sum(lens))
    assert T.padded_tokens(comp.tokens) == 512
    tuning = T.Tuning(expand_block_n=64) if op == "gate_up" else None
    out, ref = run_op(op, comp, rng, "bfloat16", tuning)
    check = C.compare(f64(out), ref, "bfloat16")
    assert check.ok, f"{op}: {check.detail}"


@pytest.mark.parametrize("op", ["shrink1", "shrink3"])
def test_block_shrink_with_five_adapters_in_a_block_interpret(op, rng, interpret):
    """Five short segments of five adapters meet in the first block: the block shrink serves them two
    per K loop, the last alone (ranks 16, 12, 7, 16, 9: masked columns per adapter); the partial last
    block's box overlaps the block before."""
    from lora.pallas import plan as P

    comp = C.Composition([10, 12, 20, 9, 5, 300], [0, 1, 2, 3, 4, 0], [16, 12, 7, 16, 9], [0.5, 1.0, 2.0, 1.5, 0.75],
                         16, 359)
    sp = P.plan_shrink(T.padded_tokens(comp.tokens), K, 16, int(op[-1]), 5, "bfloat16", tail=False, result=True)
    assert not sp.cfg.split and sp.cfg.pair_stages >= 1
    out, ref = run_op(op, comp, rng, "bfloat16")
    check = C.compare(f64(out), ref, "bfloat16")
    assert check.ok, f"{op}: {check.detail}"


class _TailViewExecutor(PA._JaxExecutor):
    """The JAX executor with the torch executor's row handling: x keeps its s rows, the partial last
    block reads the view of x's last 64 rows (plans made with ``tail=True``)."""

    @staticmethod
    def tail(x):
        return x[x.shape[0] - T.BM :]


# Five slots, a bucket of 512 rows with two CTAs of blocks without rows. Adapters per block: (a) three,
# five, then one (378 rows); (b) slot 4 of rank 0: none (a block of slot 4's rows), one, one, one, two,
# and the partial last block three of its own and slot 4's rows (and the block before's in its box; 345 rows).
EXTRA_UNIT_COMPS = {
    "a": ([20, 20, 24, 10, 12, 20, 9, 13, 250], [0, 1, 2, 3, 4, 0, 1, 2, 3], None),
    "b": ([64, 236, 30, 5, 5, 5], [4, 0, 1, 2, 3, 4], 4),
}


@pytest.mark.parametrize("comp_name", sorted(EXTRA_UNIT_COMPS))
@pytest.mark.parametrize("stack,r,tuning", [(1, 16, T.DEFAULT_TUNING), (3, 16, T.DEFAULT_TUNING),
                                            (3, 64, T.Tuning(shrink_block_k=128, shrink_extra_units=True)),
                                            (2, 16, T.Tuning(shrink_ksplit=2))])
def test_block_shrink_runs_extra_units_on_idle_ctas_interpret(comp_name, stack, r, tuning, rng, interpret):
    """Blocks whose adapters make more than one K loop's unit (two adapters, or one where two do not fit:
    rank 64 x 3 slices) give their extra units to the CTAs of the bucket's blocks without rows, as many as
    there are; each CTA stores only its adapters' rows. Two adapters a unit: (a) the first block's extra unit
    and the second's first run elsewhere, the second's last on its own CTA; (b) the partial last block's
    extra unit runs elsewhere, and a block of a rank-0 slot's rows (no adapter: its CTA writes zeros). One
    adapter a unit (192 columns: the extra units asked for): (a) the first block's two; (b) the partial last
    block's first, its other on its own CTA. With
    the tail view of x (the torch executor's layout) and with the K loop split in two (partial tiles); tiles of
    16, 48 and 192 columns (rows staged 128-byte aligned for the row stores: 64, 192 and 192 wide)."""
    from lora.pallas import plan as P

    lens, slots, zero_slot = EXTRA_UNIT_COMPS[comp_name]
    ranks = [0 if w == zero_slot else rank for w, rank in enumerate([r, r * 3 // 4, r // 2 - 1, r, r // 2 + 1])]
    comp = C.Composition(lens, slots, ranks, [0.5, 1.0, 2.0, 1.5, 0.75], r, sum(lens))
    bpad = T.padded_tokens(comp.tokens)
    sp = P.plan_shrink(bpad, 256, r, stack, 5, "bfloat16", tail=True, result=True, tuning=tuning)
    assert not sp.cfg.split and sp.cfg.ksplit == (tuning.shrink_ksplit or 1) and sp.cfg.extra_units
    assert (sp.cfg.pair_stages > 0) == (r == 16)  # two adapters per K loop, or one (192 columns x 128-deep)
    t = lambda v: jnp.asarray(v, jnp.bfloat16)  # noqa: E731
    x, a = t(C.activations(rng, comp, 256)), t(C.shrink_weights(rng, comp, stack, 256))
    a = jnp.pad(a, ((0, 0), (0, sp.cfg.stack * sp.rp - a.shape[1]), (0, 0)))
    out = P.run_shrink(_TailViewExecutor(), sp, batch_of(comp), x, a)[: comp.tokens, : stack * r]
    check = C.compare(f64(out), C.ref_shrink(comp, f64(x), f64(a[:, : stack * r]), stack), "bfloat16")
    assert check.ok, f"{comp_name} stack={stack} r={r} {tuning}: {check.detail}"


# Five slots (slot 4 of rank 0), 256-deep K, buckets of 512 rows: four CTAs of two blocks each.
# (a) 360 rows: segments across the blocks' edge within a CTA (its second block skips that adapter), a
# boundary inside a second block (an adapter of its own), slot 0 in two segments (runs twice), and the
# partial last block as a CTA's second (its clamped box reaches into the first's rows).
# (b) 300 rows: a block of slot 4's rows (no adapter), a block of five adapters (units of two and one),
# slot 0 again in two segments, and the partial last block as a CTA's first (the second has no rows).
# (c) 356 rows: a boundary inside the first CTA's second block, whose list holds the edge slot after a
# lower one (skipped from the middle of the list), and a second CTA whose first block holds two adapters
# (one pair unit) and whose second block holds only the edge slot (no unit of its own).
WIDE_COMPS = {
    "a": ([100, 50, 70, 40, 100], [0, 1, 0, 2, 3]),
    "b": ([64, 10, 10, 10, 150, 56], [4, 0, 1, 2, 3, 0]),
    "c": ([96, 64, 96, 40, 60], [2, 0, 1, 3, 0]),
}


@pytest.mark.parametrize("comp_name", sorted(WIDE_COMPS))
@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("stack,r,tuning", [(1, 64, T.Tuning(shrink_wide=True, shrink_block_k=64)),
                                            (3, 16, T.Tuning(shrink_wide=True, shrink_block_k=64)),
                                            (2, 64, T.Tuning(shrink_wide=True)),
                                            (3, 64, T.Tuning(shrink_wide=True, shrink_ksplit=4))])
def test_wide_block_shrink_interpret(comp_name, tail, stack, r, tuning, rng, interpret):
    """The two-block, warp-specialized shrink (``ShrinkConfig.wide``) against the float64 oracle: 64, 48
    and 128 columns with two adapters a unit (two accumulators a consumer), 192 columns one adapter a unit
    and a four-way K split (one K step a CTA); with the tail view of x (the torch executor) and padded x
    (the JAX path). Fails with the edge adapter skipped from the wrong place of the second block's list,
    a consumer reading the other's x tile, or any list or box mistaken."""
    from lora.pallas import plan as P

    lens, slots = WIDE_COMPS[comp_name]
    ranks = [r, r * 3 // 4, r // 2 - 1, r, 0]
    comp = C.Composition(lens, slots, ranks, [0.5, 1.0, 2.0, 1.5, 0.75], r, sum(lens))
    bpad = T.padded_tokens(comp.tokens)
    sp = P.plan_shrink(bpad, 256, r, stack, 5, "bfloat16", tail=tail, result=True, tuning=tuning)
    assert sp.cfg.wide and sp.cfg.ksplit == (tuning.shrink_ksplit or T.WIDE_KSPLIT) and not sp.cfg.extra_units
    assert (sp.cfg.pair_stages > 0) == (stack * r <= 128)
    t = lambda v: jnp.asarray(v, jnp.bfloat16)  # noqa: E731
    x, a = t(C.activations(rng, comp, 256)), t(C.shrink_weights(rng, comp, stack, 256))
    a = jnp.pad(a, ((0, 0), (0, sp.cfg.stack * sp.rp - a.shape[1]), (0, 0)))
    if tail:
        out = P.run_shrink(_TailViewExecutor(), sp, batch_of(comp), x, a)
    else:
        out = lp.shrink(x, a[:, : stack * r], batch_of(comp), stack=stack, tuning=tuning)
    out = out[: comp.tokens, : stack * r]
    check = C.compare(f64(out), C.ref_shrink(comp, f64(x), f64(a[:, : stack * r]), stack), "bfloat16")
    assert check.ok, f"{comp_name} tail={tail} stack={stack} r={r}: {check.detail}"


@pytest.mark.parametrize("op", ["qkv", "gate_up"])
def test_fused_ops_with_the_wide_shrink_interpret(op, rng, interpret):
    """The fused ops under Tuning(shrink_wide=True): the two-block shrink's partial tiles summed into the
    expand's float32 input (not the op's result, as in the tests above), then the expand."""
    comp = C.Composition(*WIDE_COMPS["a"], [16, 12, 7, 16, 0], [0.5, 1.0, 2.0, 1.5, 0.75], 16, 360)
    t = lambda v: jnp.asarray(v, jnp.bfloat16)  # noqa: E731
    tuning = T.Tuning(shrink_wide=True, shrink_block_k=64)
    kdim = 256
    if op == "qkv":
        offs = [0, N, N + KV, N + 2 * KV]
        x, a = t(C.activations(rng, comp, kdim)), t(C.shrink_weights(rng, comp, 3, kdim))
        b, base = t(C.expand_weights(rng, comp, offs[-1])), t(C.base_output(rng, comp, offs[-1]))
        out = lp.qkv_lora(x, a, b, batch_of(comp), q=N, kv=KV, base=base, tuning=tuning)
    else:
        offs = [0, N, 2 * N]
        x, a = t(C.activations(rng, comp, kdim)), t(C.shrink_weights(rng, comp, 2, kdim))
        b, base = t(C.expand_weights(rng, comp, 2 * N)), t(C.base_output(rng, comp, 2 * N))
        out = lp.gate_up_lora(x, a, b, batch_of(comp), base=base, tuning=tuning)
    check = C.compare(f64(out), C.ref_stacked(comp, f64(x), f64(a), f64(b), offs, f64(base)), "bfloat16")
    assert check.ok, f"{op}: {check.detail}"


@pytest.mark.parametrize("r,stack,k,knobs", [(64, 1, 14336, {}), (64, 2, 4096, {}), (64, 3, 4096, dict(shrink_ksplit=4)),
                                             (16, 3, 4096, {}), (16, 1, 4096, dict(shrink_block_k=64, shrink_stages=7))])
def test_wide_shared_memory_is_mosaics_count(r, stack, k, knobs):
    """The shared memory the plan counts for a two-block shrink CTA (what picks its block_k and stages)
    is Mosaic's own count, and within its limit; also where a caller's stages outnumber the pair stages
    (the last case: 7 and 6)."""
    from lora.pallas import interop
    from lora.pallas import plan as P

    cfg = P.plan_shrink(8192, k, r, stack, 8, "bfloat16", tail=True, result=True,
                        tuning=T.Tuning(shrink_wide=True, **knobs)).cfg
    counted = T.wide_smem_bytes(cfg.na, cfg.block_k, cfg.stages, cfg.pair_stages)
    assert counted == interop.smem_bytes("shrink", cfg) and counted <= T.SMEM_LIMIT, cfg


def test_warpgroup_kernels_refuse_too_few_interpret_threads(monkeypatch):
    """Interpret mode runs a CTA's warpgroups as concurrent XLA computations: where JAX's CPU client
    runs fewer at once (two cores, one CPU device), a two-block shrink would wait forever; it raises
    before it starts instead."""
    from lora.pallas import common

    monkeypatch.setattr(common.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(common.jax, "devices", lambda *a: [object()])
    with pytest.raises(RuntimeError, match="jax_num_cpu_devices"):
        common.check_interpret_threads(3)
    common.check_interpret_threads(2)


def test_wide_plan():
    """The two-block shrink is asked for, never the default (slower than the block variant on the H200); it needs a K
    split, applies to prefill-sized batches only, and fits shared memory (the lowering tests check the
    count against Mosaic's)."""
    from lora.pallas import plan as P

    wide = T.Tuning(shrink_wide=True)
    assert not P.plan_shrink(8192, 14336, 64, 1, 8, "bfloat16", tail=True).cfg.wide
    cfg = P.plan_shrink(8192, 14336, 64, 1, 8, "bfloat16", tail=True, tuning=wide).cfg
    assert cfg.wide and cfg.ksplit == T.WIDE_KSPLIT and cfg.pair_stages >= 2
    assert T.wide_smem_bytes(cfg.na, cfg.block_k, cfg.stages, cfg.pair_stages) <= T.SMEM_LIMIT
    assert not P.plan_shrink(128, 4096, 64, 1, 8, "bfloat16", tail=True, tuning=wide).cfg.wide  # decode-sized
    with pytest.raises(ValueError, match="K split"):
        P.plan_shrink(8192, 4096, 64, 1, 8, "bfloat16", tail=True, tuning=T.Tuning(shrink_wide=True, shrink_ksplit=1))
    assert P.plan_shrink(8192, 4096, 64, 3, 8, "bfloat16", tail=True, tuning=wide).cfg.pair_stages == 0  # 192 columns


def test_block_variant_with_k_split_interpret(rng, interpret):
    """Tuning(shrink_ksplit=2) on a prefill-sized batch: two CTAs per block over K, partial tiles
    added by the plan's finish step (the JAX path pads x, so blocks are aligned)."""
    comp = C.Composition([200, 130], [0, 2], [16, 0, 7], [0.5, 1.0, 2.0], 16, 333)
    t = lambda v: jnp.asarray(v, jnp.bfloat16)  # noqa: E731
    x, a = t(C.activations(rng, comp, 128)), t(C.shrink_weights(rng, comp, 2, 128))
    out = lp.shrink(x, a, batch_of(comp), stack=2, tuning=T.Tuning(shrink_ksplit=2))
    check = C.compare(f64(out), C.ref_shrink(comp, f64(x), f64(a), 2), "bfloat16")
    assert check.ok, check.detail


def test_decode_composition_interpret(rng, interpret):
    comp = C.decode_composition(rng, 17, 5, 16)
    out, ref = run_op("qkv", comp, rng, "bfloat16")
    assert C.compare(f64(out), ref, "bfloat16").ok


@pytest.mark.parametrize("op,dtype_name,tiles", [("expand", "bfloat16", 1), ("expand", "float32", 1),
                                                  ("gate_up", "bfloat16", 2), ("qkv", "bfloat16", 2),
                                                  ("qkv", "float16", 1)])
def test_decode_gather_interpret(op, dtype_name, tiles, rng, interpret):
    """The gathering decode expand (forced: the heuristic picks it for wider shapes than these),
    on uneven segments with rank-0 and odd ranks: two column tiles per CTA make gate-up's group
    cross its slice boundary (x gathered again for the second tile), and qkv's unaligned slices
    run the per-tile fallback over the group's tiles; float32 weights add three products."""
    comp = C.random_composition(rng)
    tuning = T.Tuning(expand_gather=True, expand_gather_tiles=tiles)
    out, ref = run_op(op, comp, rng, dtype_name, tuning)
    check = C.compare(f64(out), ref, dtype_name, comp=comp, op=C.contract_op(op, K, N, KV))
    assert check.ok, f"{op} {dtype_name} {comp}: {check.detail}"


@pytest.mark.parametrize("op,stages", [("expand", 8), ("expand", 6), ("gate_up", 8), ("qkv", 5)])
def test_decode_expand_deep_stages_interpret(op, stages, rng, interpret):
    """The one-CTA-per-tile decode expand with up to eight adapters' tiles in flight
    (Tuning(expand_stages=...), session 27): a 64-row block holding eight adapters (ranks 16, odd, 0),
    so with 8 stages every tile comes in the pipeline's prologue, with 5-6 some are fetched in the
    loop; a second, partial block with fewer adapters than stages."""
    lens = [9, 7, 8, 1, 12, 6, 11, 10, 20, 3]
    slots = [0, 1, 2, 3, 4, 5, 6, 7, 1, 6]
    comp = C.Composition(lens, slots, [16, 12, 16, 0, 7, 16, 16, 4], [0.5, 1.0, 2.0, 1.5, 0.25, 1.0, 3.0, 0.75],
                         16, sum(lens) + 5)
    tuning = T.Tuning(expand_gather=False, expand_stages=stages)
    n = 2 * N if op == "gate_up" else N
    cfg = T.expand_config(T.padded_tokens(comp.tokens), n, 16, 16, 8, 1, "bfloat16", "bfloat16", "bfloat16",
                          tail=True, tuning=tuning)
    assert cfg.stages == stages and not cfg.gather and cfg.ctas == 0 and cfg.full_tile  # (block 0 is full)
    out, ref = run_op(op, comp, rng, "bfloat16", tuning)
    check = C.compare(f64(out), ref, "bfloat16")
    assert check.ok, f"{op} stages={stages}: {check.detail}"


def test_full_block_tile_only_where_the_grid_stays_resident():
    """The one-CTA-per-tile expand takes a tiled base tile for full blocks where all of its grid's CTAs stay
    resident at once with it: not for the rank-64 64-token gate-up expand (224 CTAs of 125 KB would leave one
    an SM instead of two: 1.4x slower on the H100, session 38), and never at the cost of the plan's stages."""
    def cfg(tokens, n, r, stack, tuning=T.DEFAULT_TUNING, x="bfloat16"):
        return T.expand_config(T.padded_tokens(tokens), n, r * stack, r, 8, stack, x, "bfloat16", "bfloat16", tail=True,
                               x_shift=stack > 1, tuning=tuning)

    assert cfg(64, 4096, 16, 1).full_tile and cfg(64, 4096, 64, 1).full_tile and cfg(256, 6144, 16, 3).full_tile
    assert cfg(256, 6144, 16, 3, x="float32").full_tile  # 192 CTAs, one an SM either way
    assert cfg(64, 28672, 16, 2).full_tile  # 224 CTAs of 88 KB: two an SM either way
    assert not cfg(64, 28672, 16, 2, x="float32").full_tile  # (float32 x windows: 121 KB would be one an SM)
    gate_up = cfg(64, 28672, 64, 2)
    assert not gate_up.gather and gate_up.ctas == 0 and not gate_up.full_tile
    assert 2 * gate_up.smem_bytes <= T.SM_SMEM
    assert not cfg(64, 4096, 16, 1, T.Tuning(expand_full_tile=False)).full_tile
    assert not cfg(8192, 4096, 16, 1).full_tile and not cfg(256, 28672, 16, 2).full_tile  # persistent, gathering


def test_decode_launches_overlap_by_pdl(monkeypatch):
    """Decode-sized batches: the split shrink, its partial-tile sum and the expands are programmatic dependents
    (they wait before they read x, the weights or base), and the shrink never lets its sum launch early; larger
    batches, Tuning(pdl=False) and LORA_PALLAS_NO_PDL=1 (with pdl left None) launch plainly. The lowered kernels
    carry exactly those instructions, and only a dependent the launch attribute (Mosaic's uses_pdl)."""
    from lora.pallas import interop, plan as P

    monkeypatch.delenv(T.NO_PDL_ENV, raising=False)
    on = (T.PDL_WAIT, T.PDL_DEPENDENT, T.PDL_DEPENDENT)
    assert T.pdl_modes(T.Tuning(), True) == on and T.pdl_modes(T.Tuning(), False) == (T.PDL_OFF,) * 3
    assert T.pdl_modes(T.Tuning(pdl=False), True) == (T.PDL_OFF,) * 3
    monkeypatch.setenv(T.NO_PDL_ENV, "1")
    assert T.pdl_modes(T.Tuning(), True) == (T.PDL_OFF,) * 3 and T.pdl_modes(T.Tuning(pdl=True), True) == on
    monkeypatch.delenv(T.NO_PDL_ENV)
    with pytest.raises(ValueError, match="pdl"):
        T.Tuning(pdl="all")

    sp = P.plan_shrink(64, 4096, 16, 3, 8, "bfloat16", tail=True, tuning=T.Tuning(pdl=True))
    ep = P.plan_expand(64, 4096, 16, 1, 8, "bfloat16", "bfloat16", "bfloat16", internal=False, tail=True,
                       tuning=T.Tuning(pdl=True))
    assert (sp.cfg.pdl, sp.sum.pdl, ep.cfgs[0].pdl) == on
    big = P.plan_shrink(8192, 14336, 16, 1, 8, "bfloat16", tail=True, tuning=T.Tuning(pdl=True))
    assert big.cfg.pdl == big.sum.pdl == T.PDL_OFF
    assert P.plan_expand(8192, 4096, 16, 1, 8, "bfloat16", "bfloat16", "bfloat16", internal=False, tail=True,
                         tuning=T.Tuning(pdl=True)).cfgs[0].pdl == T.PDL_OFF
    off = P.plan_shrink(64, 4096, 16, 3, 8, "bfloat16", tail=True, tuning=T.Tuning(pdl=False))

    def marks(kind, cfg):
        asm, _ = interop.lower_to_mosaic(*interop.kernel_signature(kind, cfg))
        return b"griddepcontrol.wait" in asm, b"griddepcontrol.launch_dependents" in asm, b"uses_pdl" in asm

    assert marks("shrink", sp.cfg) == (True, False, True)
    assert marks("parts", sp.sum) == (True, True, True)
    assert marks("expand", ep.cfgs[0]) == (True, True, True)
    assert marks("parts", off.sum) == (False, False, False)


def _mosaic_text(kind, cfg) -> str:
    """One kernel's lowered Mosaic GPU module as MLIR text."""
    from jax._src.interpreters import mlir
    from jax._src.lib import mosaic_gpu_dialect
    from jax._src.lib.mlir import ir

    from lora.pallas import interop

    asm, _ = interop.lower_to_mosaic(*interop.kernel_signature(kind, cfg))
    ctx = mlir.make_ir_context()
    mosaic_gpu_dialect.register_dialect(ctx)
    ctx.allow_unregistered_dialects = True
    with ctx:
        return str(ir.Module.parse(asm))


def _reads_before_wait(text: str, k: int = 1) -> tuple[int, int]:
    """(global scalar loads, TMA loads) in the text before the k-th griddepcontrol.wait."""
    i = -1
    for _ in range(k):
        i = text.index("griddepcontrol.wait", i + 1)
    head = text[:i]
    loads = sum(1 for line in head.splitlines() if '"stable_mosaic_gpu.memref.load"' in line and "workgroup" not in line)
    return loads, head.count('"stable_mosaic_gpu.nvvm.cp.async.bulk.tensor.shared.cluster.global"')


def test_decode_kernels_read_their_metadata_before_the_pdl_wait():
    """A decode kernel launched as a programmatic dependent reads its metadata (scalar loads: the row count,
    the block's adapters, ranks, scalings, slice offsets; the split shrink's row slots and the gathering
    expand's row list by one TMA copy each) before griddepcontrol.wait, so those round trips overlap the
    kernel before; x, A / B and base (TMA) only after it (tiling.PDL_OFF says why that order is safe)."""
    from lora.pallas import plan as P

    tu = T.Tuning(pdl=True)
    sp = P.plan_shrink(64, 4096, 16, 3, 8, "bfloat16", tail=True, tuning=tu)
    grid = P.plan_expand(64, 4096, 16, 1, 8, "bfloat16", "bfloat16", "bfloat16", internal=False, tail=True,
                         tuning=tu).cfgs[0]
    gather = P.plan_expand(256, 2 * 14336, 16, 2, 8, "bfloat16", "bfloat16", "bfloat16", internal=False, tail=True,
                           tuning=tu).cfgs[0]
    assert gather.gather and not grid.gather and not grid.ctas
    loads, tma = _reads_before_wait(_mosaic_text("shrink", sp.cfg))
    assert loads >= 3 and tma == 1  # row count, block count, slot; the row slots
    assert _reads_before_wait(_mosaic_text("parts", sp.sum)) == (1, 0)  # the row count
    loads, tma = _reads_before_wait(_mosaic_text("expand", grid))
    assert loads >= 8 + 2 and tma == 0  # the block's slots, count, row count, ranks and scalings, offsets
    # The gathering expand waits on three paths: a chunk without rows, a chunk's rows (after its record, rank,
    # scale and row list), slice boundaries off the tiles.
    text = _mosaic_text("expand", gather)
    assert text.count("griddepcontrol.wait") == 3
    loads, tma = _reads_before_wait(text, 2)
    assert loads >= 4 and tma == 1


def test_gathering_expand_takes_fewer_b_tiles_where_two_ctas_then_share_an_sm():
    """The gathering decode expand keeps four B tiles in flight, two where that lets two of its working CTAs
    share an SM: the rank-64 256-token gate-up expand (224 of them; session 38 on the H100, 37.2 -> 30.7 us).
    Not where one wave needs one CTA an SM (rank-64 QKV) or two fit anyway (rank-16 gate-up)."""
    def cfg(tokens, n, r, stack, tuning=T.DEFAULT_TUNING):
        return T.expand_config(T.padded_tokens(tokens), n, r * stack, r, 8, stack, "bfloat16", "bfloat16", "bfloat16",
                               tail=True, x_shift=True, tuning=tuning)

    gate_up = cfg(256, 28672, 64, 2)
    assert gate_up.gather and gate_up.gather_stages == 2 and T.SM_SMEM // (gate_up.smem_bytes + 1024) == 2
    four = cfg(256, 28672, 64, 2, T.Tuning(expand_gather_stages=4))
    assert four.gather_stages == 4 and T.SM_SMEM // (four.smem_bytes + 1024) == 1
    assert cfg(256, 28672, 16, 2).gather_stages == 4 and cfg(256, 6144, 64, 3).gather_stages == 4
    assert cfg(64, 6144, 64, 3).gather_stages == 4
    assert cfg(256, 6144, 64, 3, T.Tuning(expand_gather_stages=8)).gather_stages == 4  # (at most its tiles)
    assert cfg(64, 4096, 16, 1).gather_stages == 0  # one CTA per tile
    with pytest.raises(ValueError, match="expand_gather_stages"):
        T.Tuning(expand_gather_stages=9)


@pytest.mark.parametrize("op", ["expand", "gate_up"])
def test_decode_gather_chunks_of_one_slot_interpret(op, rng, interpret):
    """A decode-sized batch (four blocks, the last partial) where one slot holds 200 rows in two
    segments around another slot's: its rows are gathered in chunks of 64, 64, 64 and 8, the last
    crossing into the partial block; the other slot's 30 rows are one chunk."""
    comp = C.Composition([120, 30, 80, 1], [1, 0, 1, 2], [16, 12, 0], [0.5, 2.0, 1.0], 16, 233)
    tuning = T.Tuning(expand_gather=True, expand_gather_tiles=2)
    out, ref = run_op(op, comp, rng, "bfloat16", tuning)
    check = C.compare(f64(out), ref, "bfloat16")
    assert check.ok, f"{op}: {check.detail}"


@pytest.mark.parametrize("op", ["qkv", "expand_qkv"])
def test_stacked_slices_of_wide_ranks_interpret(op, rng, interpret):
    """Stacked slices of max_r 32 (a window wider than the slice, not a multiple of it): full-rank
    and 16-byte aligned slice starts take the 16-byte moves, the others (rank 13, and rank 20 in
    bf16 x) the one-element shift; rank 0 adds nothing."""
    comp = C.Composition([9, 30, 5, 20], [0, 1, 2, 3], [32, 20, 0, 13], [0.5, 1.0, 2.0, 1.5], 32, 70)
    t = lambda v: jnp.asarray(v, jnp.bfloat16)  # noqa: E731
    batch = batch_of(comp)
    offs = [0, N, N + KV, N + 2 * KV]
    b, base = t(C.expand_weights(rng, comp, offs[-1])), t(C.base_output(rng, comp, offs[-1]))
    if op == "qkv":
        x, a = t(C.activations(rng, comp, K)), t(C.shrink_weights(rng, comp, 3, K))
        out = lp.qkv_lora(x, a, b, batch, q=N, kv=KV, base=base)
        ref = C.ref_stacked(comp, f64(x), f64(a), f64(b), offs, f64(base))
    else:
        x = t(C.expand_input(rng, comp, 3))
        out = lp.expand(x, b, batch, offsets=offs, base=base)
        ref = C.ref_expand(comp, f64(x), f64(b), offs, f64(base))
    check = C.compare(f64(out), ref, "bfloat16")
    assert check.ok, check.detail


def test_jit_and_no_recompile_for_new_compositions(rng, interpret):
    """Under jit, a new composition (same shapes, padded segment arrays) reuses the kernels. (The first
    interpret-mode run in a process makes jax import modules that register a jit-keyed config option, so
    every jitted function retraces once after it, whatever it runs: the count starts after that run.)"""
    seg_slots = 8

    @jax.jit
    def f(x, a, b, base, lens, slots, ranks, scalings):
        indptr = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(lens)]).astype(jnp.int32)
        batch = lp.make_batch(indptr, slots, ranks, scalings, num_tokens=x.shape[0])
        return lp.gate_up_lora(x, a, b, batch, base=base)

    counts = []
    for trial in range(4):
        comp = C.random_composition(rng, num_lora=3, max_r=16, max_tokens=40, trailing_rows=False)
        while sum(comp.seg_lens) > 60 or len(comp.seg_lens) > seg_slots:  # fixed shapes: x has 60 rows
            comp = C.random_composition(rng, num_lora=3, max_r=16, max_tokens=40, trailing_rows=False)
        comp = C.Composition(comp.seg_lens, comp.weight_indices, comp.lora_ranks, comp.scalings, 16, 60)
        lens, slots = lp.pad_segments(comp.seg_lens, comp.weight_indices, seg_slots)
        t = lambda a: jnp.asarray(a, jnp.bfloat16)  # noqa: E731
        x, a = t(C.activations(rng, comp, K)), t(C.shrink_weights(rng, comp, 2, K))
        b, base = t(C.expand_weights(rng, comp, 2 * N)), t(C.base_output(rng, comp, 2 * N))
        out = f(x, a, b, base, lens, slots, jnp.asarray(comp.lora_ranks, jnp.int32), jnp.asarray(comp.scalings, jnp.float32))
        ref = C.ref_stacked(comp, f64(x), f64(a), f64(b), [0, N, 2 * N], f64(base))
        assert C.compare(f64(out), ref, "bfloat16").ok
        counts.append(dict(common.TRACE_COUNT))
    assert counts[1] == counts[2] == counts[3], f"kernels traced again for a new composition: {counts}"


# ---- the Mosaic lowering of every configuration the plan can pick --------------------------------


def lower(kind, cfg):
    from lora.pallas import interop

    fn, specs = interop.kernel_signature(kind, cfg)
    with interop._hopper_target():
        jax.jit(fn).trace(*specs).lower(lowering_platforms=("cuda",))


def shrink_configs(seen, sp):
    """A shrink plan's kernels: the shrink, and the sums of its partial tiles (split shrinks)."""
    for kc in sp.kernels:
        seen.setdefault(kc, None)


def plan_configs():
    """Every kernel configuration the plans pick for the shapes that matter: decode and prefill
    buckets, Llama-3-8B widths, ranks 16..128 (192 with two slices), the three dtypes, the torch
    (tail view) and JAX (padded) executors, and the odd shapes that take the padded path."""
    from lora.pallas import plan as P

    seen = {}
    L = 8
    for tokens in (64, 256, 8192):
        for dtype in ("bfloat16", "float16", "float32"):
            for tail in (True, False):
                for r, stack, n in ((16, 1, 4096), (16, 3, 6144), (64, 3, 6144), (16, 2, 28672), (64, 2, 28672),
                                    (128, 3, 6144), (192, 2, 28672), (256, 1, 4096)):
                    if dtype != "bfloat16" and (r > 16 or tokens == 256):
                        continue  # float16 / float32 plans differ from bf16 ones in dtype only
                    for result in (True, False):  # the op's result; a fused op's expand input
                        shrink_configs(seen, P.plan_shrink(tokens, 4096, r, stack, L, dtype, tail=tail, result=result))
                    for internal in (True, False):
                        if internal and stack == 1 or not internal and stack > 1:
                            continue
                        ep = P.plan_expand(tokens, n, r, stack, L, dtype, dtype, dtype, internal=internal, tail=tail)
                        for cfg in ep.cfgs:
                            seen.setdefault(("expand", cfg), None)
    # the Tuning variants benchmarks/pallas_gpu_check.py times (torch path, bf16, r16)
    for kw in T.TUNING_TRIALS.values():
        t = T.Tuning(**kw)
        for tokens in (64, 8192):
            if (kw.get("shrink_ksplit") == 8 or kw.get("expand_stages", 0) > 4) and tokens > 256:
                continue  # (decode knobs: their prefill plans are persistent expands, a minute each to lower)
            shrink_configs(seen, P.plan_shrink(tokens, 4096, 16, 3, L, "bfloat16", tail=True, tuning=t))
            for cfg in P.plan_expand(tokens, 6144, 16, 3, L, "bfloat16", "bfloat16", "bfloat16", internal=True, tail=True,
                                     tuning=t).cfgs:
                seen.setdefault(("expand", cfg), None)
            for cfg in P.plan_expand(tokens, 4096, 16, 1, L, "bfloat16", "bfloat16", "bfloat16", internal=False, tail=True,
                                     tuning=t).cfgs:
                seen.setdefault(("expand", cfg), None)
    # the plain stacked expands (the caller's packed x; torch: as it is, windows past its last column)
    for tokens in (64, 256, 8192):
        for tail in (True, False):
            for r, stack, n in ((16, 3, 6144), (64, 3, 6144), (16, 2, 28672), (12, 3, 6144)):
                if tokens == 8192 and (r != 16 or not tail):  # (persistent kernels: a minute each to lower)
                    continue
                for cfg in P.plan_expand(tokens, n, r, stack, L, "bfloat16", "bfloat16", "bfloat16", internal=False,
                                         tail=tail).cfgs:
                    seen.setdefault(("expand", cfg), None)
    # the K-split block shrinks (the down projection; QKV-sized ones split by a Tuning) and their sums
    # of whole blocks (64 rows, 16 / 32 / 48 / 64 columns a CTA)
    for r in (16, 64):
        shrink_configs(seen, P.plan_shrink(8192, 14336, r, 1, L, "bfloat16", tail=True, result=True))
    for stack in (2, 3):
        shrink_configs(seen, P.plan_shrink(8192, 4096, 16, stack, L, "bfloat16", tail=True, result=True,
                                           tuning=T.Tuning(shrink_ksplit=2)))
    # the two-block shrink (a Tuning, not a default): the Llama-3-8B prefill shrinks at ranks 16 and 64,
    # an op's result and a fused op's expand input
    for r, stack, k in ((16, 3, 4096), (16, 1, 14336), (64, 1, 4096), (64, 2, 4096), (64, 3, 4096), (64, 1, 14336)):
        for result in (True, False):
            shrink_configs(seen, P.plan_shrink(8192, k, r, stack, L, "bfloat16", tail=True, result=result,
                                               tuning=T.Tuning(shrink_wide=True)))
    # odd widths (padded copies): K=200, N=72, rank 7
    shrink_configs(seen, P.plan_shrink(64, 200, 7, 2, 3, "bfloat16", tail=True))
    for cfg in P.plan_expand(64, 72, 7, 2, 3, "bfloat16", "bfloat16", "bfloat16", internal=True, tail=True).cfgs:
        seen.setdefault(("expand", cfg), None)
    return list(seen)


PLAN_CONFIGS = plan_configs()


@pytest.mark.parametrize("kind,cfg", PLAN_CONFIGS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(PLAN_CONFIGS)])
def test_every_planned_kernel_lowers_for_cuda(kind, cfg):
    lower(kind, cfg)


# ---- tiling and metadata -------------------------------------------------------------------------


def test_expand_config_fits_shared_memory():
    for r, stacks in ((16, (1, 2, 3)), (64, (1, 2, 3)), (128, (1, 2, 3)), (192, (1, 2)), (256, (1,))):
        for stack in stacks:
            for bpad in (64, 8192):
                cfg = T.expand_config(bpad, 4096, stack * r, r, 8, stack, "float32", "bfloat16", "bfloat16", tail=True,
                                      x_shift=stack > 1)
                assert cfg.smem_bytes <= (T.smem_limit(cfg.ctas) if cfg.ctas else T.SMEM_LIMIT), (r, stack, bpad, cfg)
    # decode keeps its four stages where they fit, and gives them up where they do not (r128 x 3 slices)
    c16 = T.expand_config(64, 4096, 48, 16, 8, 3, "float32", "bfloat16", "bfloat16", tail=True, x_shift=True)
    assert c16.stages == 4 and c16.accumulate and c16.ctas == 0
    assert T.expand_config(64, 6144, 384, 128, 8, 3, "float32", "bfloat16", "bfloat16", tail=True, x_shift=True).stages == 1
    with pytest.raises(ValueError, match="shared memory"):
        T.expand_config(64, 28672, 512, 256, 8, 2, "float32", "bfloat16", "bfloat16", tail=True, x_shift=True)
    with pytest.raises(ValueError, match="shared memory"):  # a Tuning that cannot fit says so
        T.expand_config(64, 6144, 384, 128, 8, 3, "float32", "bfloat16", "bfloat16", tail=True, x_shift=True,
                        tuning=T.Tuning(expand_stages=4))


@pytest.mark.parametrize("what,args", [
    ("rank-64 QKV, two CTAs per SM", (8192, 6144, 64, 3, "bfloat16", True)),
    ("rank-16 expand, two CTAs per SM", (8192, 4096, 16, 1, "bfloat16", False)),
    ("rank-16 QKV, float32 x", (8192, 6144, 16, 3, "float32", True)),
    ("rank-64 float32, one CTA per tile", (8192, 4096, 64, 1, "float32", False)),
    ("decode gate-up, gathering", (256, 28672, 16, 2, "bfloat16", True)),
    ("decode rank-64 gate-up, gathering, two B tiles in flight", (256, 28672, 64, 2, "bfloat16", True)),
    ("decode expand, one CTA per tile, a tiled tile for full blocks", (64, 4096, 16, 1, "bfloat16", False)),
    ("decode rank-16 QKV, float32 x, a tiled tile for full blocks", (64, 6144, 16, 3, "float32", True)),
])
def test_expand_shared_memory_is_mosaics_count(what, args):
    """The shared memory the plans count for an expand CTA (ExpandConfig.smem_bytes, what decides two
    CTAs per SM) is Mosaic's own count or up to 1 KB over it, never under."""
    from lora.pallas import interop
    from lora.pallas import plan as P

    tokens, n, r, stack, dtype, internal = args
    cfg = P.plan_expand(tokens, n, r, stack, 8, dtype, "bfloat16" if dtype == "float32" else dtype, dtype,
                        internal=internal, tail=True).cfgs[0]
    counted, mosaic = cfg.smem_bytes, interop.smem_bytes("expand", cfg)
    assert 0 <= counted - mosaic < 1024, (what, counted, mosaic, cfg)
    assert counted <= (T.smem_limit(cfg.ctas) if cfg.ctas else T.SMEM_LIMIT), (what, cfg)


def test_prefill_plans_take_the_shared_memory_that_is_free():
    """The block shrink's cast tile (the result in x's dtype) is scoped after the K loops, so the
    rank-64 QKV shrink keeps three stages for its pairs of adapters; the persistent expand's
    one-by-one tiles take their base tile after its pipeline, so stacked slices keep four tiles in
    flight (rank 16: two CTAs per SM); the rank-64 stacked expands take x windows as wgmma operands
    (64 columns, not the shifted 80), so three 64-wide tiles in flight fit two CTAs per SM. (The Mosaic
    lowering of these configurations, test_every_planned_kernel_lowers_for_cuda, checks that they fit
    a CTA; test_expand_shared_memory_is_mosaics_count that they fit the share of an SM counted here.)"""
    assert T.shrink_config(8192, 4096, 192, 8, 3, "bfloat16", tail=True, out_dtype="bfloat16").pair_stages == 3
    P = T.PERSISTENT_CTAS
    for r, stack, n, want in ((16, 3, 6144, (2 * P, 4, 128)), (16, 2, 28672, (2 * P, 4, 128)),
                              (64, 3, 6144, (2 * P, 3, 64)), (64, 2, 28672, (2 * P, 3, 64)),
                              (64, 1, 4096, (2 * P, 3, 64))):
        cfg = T.expand_config(8192, n, stack * r, r, 8, stack, "bfloat16", "bfloat16", "bfloat16", tail=True,
                              x_shift=stack > 1)
        assert (cfg.ctas, cfg.stream_stages, cfg.block_n) == want, (r, stack, cfg)


def test_split_shrink_splits_k_within_the_partial_tile_target():
    """The split (decode) shrink splits K 8 ways on the Llama-3-8B decode shapes, but 4 ways for the rank-64
    gate-up and QKV shrinks at 256 tokens, whose 8-way partial tiles (10 and 14 MB) are over
    SPLIT_PARTS_TARGET (session 37 on the H200: 15.5 -> 11.6 and 20.1 -> 14.4 us); a Tuning's split stays."""
    for r, stack, k, want in ((16, 1, 4096, (8, 8)), (16, 2, 4096, (8, 8)), (16, 3, 4096, (8, 8)),
                              (64, 1, 4096, (8, 8)), (64, 2, 4096, (8, 4)), (64, 3, 4096, (8, 4)),
                              (16, 1, 14336, (16, 8)), (64, 1, 14336, (16, 8))):
        got = []
        for bpad in (64, 256):
            cfg = T.shrink_config(bpad, k, stack * r, 8, stack, "bfloat16", tail=True, out_dtype="bfloat16", result=True)
            assert cfg.split and cfg.nk % cfg.ksplit == 0, cfg
            assert cfg.nb * cfg.parts_shape[1] * T.BM * cfg.na_out * 4 <= T.SPLIT_PARTS_TARGET, cfg
            got.append(cfg.ksplit)
        assert tuple(got) == want, (r, stack, k, got)
    asked = T.shrink_config(256, 4096, 192, 8, 3, "bfloat16", tail=True, tuning=T.Tuning(shrink_ksplit=8))
    assert asked.ksplit == 8


def test_block_shrink_extra_units_follow_the_heuristic_unless_asked():
    """The block shrink's extra units: for outputs up to 128 columns, not the split variant; a Tuning
    turns them on or off."""
    def shrink(na, bpad=8192, **kw):
        return T.shrink_config(bpad, 4096, na, 8, na // 64 or 1, "bfloat16", tail=True, out_dtype="bfloat16",
                               tuning=T.Tuning(**kw))

    assert shrink(16).extra_units and shrink(128).extra_units and not shrink(192).extra_units
    assert not shrink(16, bpad=128).extra_units  # decode-sized: the split variant
    assert shrink(192, shrink_extra_units=True).extra_units and not shrink(16, shrink_extra_units=False).extra_units
    with pytest.raises(ValueError, match="shrink_extra_units=1 must be a bool or None"):
        T.Tuning(shrink_extra_units=1)


def test_token_buckets():
    assert [T.padded_tokens(s) for s in (0, 1, 64, 65, 128, 129, 8192, 8193)] == [64, 64, 64, 128, 128, 256, 8192, 16384]
    assert T.token_buckets(1024) == [64, 128, 256, 512, 1024]


def test_meta_layout_alignment():
    for L in (1, 3, 8, 33):
        lay = T.MetaLayout(L)
        assert lay.head % 16 == 0 and lay.record % 16 == 0
        for p in range(0, 300):
            assert lay.box_offset(p) % 4 == 0  # every box is a 16-byte aligned TMA start


def test_meta_contents(rng):
    comp = C.Composition([70, 0, 10, 50], [2, 1, 0, 2], [0, 16, 16], [1.0, 1.0, 1.0], 16, 133)
    bpad = 192
    meta = np.asarray(lp.build_meta(jnp.asarray(comp.seg_indptr, jnp.int32), jnp.asarray(comp.weight_indices, jnp.int32),
                                    jnp.asarray(comp.lora_ranks, jnp.int32), bpad=bpad))
    lay = T.MetaLayout(3)
    assert meta.shape == (lay.length(bpad),)
    rows = np.concatenate([meta[lay.box_offset(64 * g) : lay.box_offset(64 * g) + 64] for g in range(3)])
    assert (rows[:70] == 2).all() and (rows[70:80] == -1).all() and (rows[80:130] == 2).all() and (rows[130:] == -1).all()
    counts = [meta[lay.group(g)] for g in range(3)]
    assert counts == [1, 1, 1]  # slot 0 (rows 70..79) has rank 0: only slot 2 is present
    # the box of a partial last block (rows 69..132): one contiguous aligned run
    assert (meta[lay.box_offset(69) : lay.box_offset(69) + 64] == rows[69:133]).all()


def test_meta_extra_units():
    """Extra units (the block shrink's K loops past a block's first): numbered over the groups in order,
    for units of one and of two adapters. Adapters per group: 5, 1, 1, 1, 2, 4, 1, 0."""
    comp = C.Composition([10, 12, 20, 9, 5, 250, 20, 20, 24, 30], [0, 1, 2, 3, 4, 0, 1, 2, 3, 4], [16] * 5, [1.0] * 5,
                         16, 400)
    meta = np.asarray(lp.build_meta(jnp.asarray(comp.seg_indptr, jnp.int32), jnp.asarray(comp.weight_indices, jnp.int32),
                                    jnp.asarray(comp.lora_ranks, jnp.int32), bpad=512))
    lay = T.MetaLayout(5)
    counts = [int(meta[lay.group(g)]) for g in range(8)]
    assert counts == [5, 1, 1, 1, 2, 4, 1, 0]
    for unit in T.UNIT_SIZES:
        extra = [max(-(-n // unit) - 1, 0) for n in counts]
        first = [int(meta[lay.extra(g, unit)]) for g in range(8)]
        assert first == list(np.cumsum(extra) - extra)
        owners = [(g, unit * (1 + i)) for g in range(8) for i in range(extra[g])]
        table = [(int(meta[lay.extra(j, unit) + 1]), int(meta[lay.extra(j, unit) + 2])) for j in range(8)]
        assert table == (owners + [(-1, 0)] * 8)[:8], (unit, table)


def test_expand_with_max_r_zero_returns_base(rng, interpret):
    """A rank-0 weight buffer (no adapter loaded): nothing to add (was a JAX IndexError)."""
    comp = C.Composition([5, 3], [0, 1], [0, 0], [1.0, 1.0], 0, 8)
    batch = batch_of(comp)
    base = jnp.asarray(rng.standard_normal((8, 64)), jnp.bfloat16)
    out = lp.expand(jnp.zeros((8, 0), jnp.bfloat16), jnp.zeros((2, 64, 0), jnp.bfloat16), batch, base=base)
    assert np.array_equal(np.asarray(out, np.float32), np.asarray(base, np.float32))
    zeros = lp.expand(jnp.zeros((8, 0), jnp.bfloat16), jnp.zeros((2, 64, 0), jnp.bfloat16), batch)
    assert zeros.shape == (8, 64) and not np.asarray(zeros, np.float32).any()
    out = lp.gate_up_lora(jnp.ones((8, 64), jnp.bfloat16), jnp.zeros((2, 0, 64), jnp.bfloat16),
                          jnp.zeros((2, 128, 0), jnp.bfloat16), batch, base=jnp.ones((8, 128), jnp.bfloat16))
    assert np.array_equal(np.asarray(out, np.float32), np.ones((8, 128), np.float32))


def test_lowered_kernels_are_cached_on_disk(tmp_path, monkeypatch):
    """A configuration is lowered once: later processes read its module from the cache directory
    (a GPU machine can be handed a cache lowered on a CPU one). A different configuration gets
    its own entry; an unreadable entry is lowered again and rewritten; an empty directory setting
    turns the cache off."""
    from lora.pallas import interop

    monkeypatch.setenv(interop.CACHE_DIR_ENV, str(tmp_path))
    assert interop.cache_dir() == tmp_path
    cfg = T.PartsConfig(1, 4, 16, 32, 32, "bfloat16", 4, 1)
    before = interop.stats()
    asm, aliases = interop.lower("parts", cfg)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and interop.stats()["lowered"] == before["lowered"] + 1
    assert interop.lower("parts", cfg) == (asm, aliases)  # from the file
    assert interop.stats()["lowered"] == before["lowered"] + 1 and interop.stats()["cached"] == before["cached"] + 1
    interop.lower("parts", T.PartsConfig(1, 4, 16, 32, 32, "float32", 4, 1))
    assert len(list(tmp_path.iterdir())) == 2 and interop.stats()["lowered"] == before["lowered"] + 2
    files[0].write_bytes(b"not a cache entry")
    again = interop.lower("parts", cfg)  # (lowering is not byte-for-byte repeatable: symbol counters)
    assert again[0].startswith(b"ML\xefR") and again[1] == aliases
    assert interop.stats()["lowered"] == before["lowered"] + 3
    assert interop.lower("parts", cfg) == again and interop.stats()["lowered"] == before["lowered"] + 3
    monkeypatch.setenv(interop.CACHE_DIR_ENV, "")
    assert interop.cache_dir() is None
    monkeypatch.delenv(interop.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the per-user cache, as the triton tables'
    assert interop.cache_dir() == tmp_path / "xdg" / "kernelstack" / "lora-pallas"
    monkeypatch.setenv(interop.CACHE_DIR_ENV, "")
    interop.lower("parts", cfg)
    assert interop.stats()["lowered"] == before["lowered"] + 4


def test_kernel_lowers_once_and_counts_its_buffers(tmp_path, monkeypatch):
    """interop.kernel (the torch executor's entry) builds a configuration's signature once, lowers it
    once and keeps one kernel per configuration, with its buffers: the inputs, then an output per
    result (compiling needs the GPU plugin: stubbed here, run by tests/gpu)."""
    from lora.pallas import interop

    monkeypatch.setenv(interop.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(interop.MosaicKernel, "_compile", lambda self: None)
    built = []
    signature = interop.kernel_signature
    monkeypatch.setattr(interop, "kernel_signature", lambda kind, cfg: built.append(kind) or signature(kind, cfg))
    cfg = T.PartsConfig(1, 4, 16, 32, 32, "float16", 4, 1)
    before = interop.stats()["lowered"]
    k = interop.kernel("parts", cfg)
    assert built == ["parts"] and interop.stats()["lowered"] == before + 1
    assert (k.num_inputs, k.num_buffers, k.aliases) == (2, 3, [None])  # the row count and the tiles; the sum
    assert interop.kernel("parts", cfg) is k and built == ["parts"]


def test_expand_with_max_r_zero_lowers_for_cuda():
    """What the GPU sees: compiling an expand of a max_r = 0 buffer for CUDA (was an IndexError,
    ``aligned_dim(0, 16) == 0`` slicing a zero-width weight)."""
    from lora.pallas import interop

    def f(x, b, base, ip, wi, rk, sc):
        return lp.expand(x, b, lp.make_batch(ip, wi, rk, sc, num_tokens=8), base=base)

    specs = [sds((8, 0), jnp.bfloat16), sds((2, 64, 0), jnp.bfloat16), sds((8, 64), jnp.bfloat16),
             sds((3,), jnp.int32), sds((2,), jnp.int32), sds((2,), jnp.int32), sds((2,), jnp.float32)]
    with interop._hopper_target():
        jax.jit(f).trace(*specs).lower(lowering_platforms=("cuda",))


def test_float32_path_precision(rng, interpret):
    """float32 activations run as three bf16 products: about 2**-16 relative error (what the docs
    say), far better than one bf16 product (2**-8) and not float32's 2**-24."""
    comp = C.Composition([100, 60, 96], [0, 1, 0], [16, 16], [1.0, 1.0], 16, 256)
    batch = batch_of(comp)
    k = 512
    x = rng.standard_normal((256, k)).astype(np.float32)
    a = (rng.standard_normal((2, 16, k)) / np.sqrt(k)).astype(np.float32)
    out = np.asarray(lp.shrink(jnp.asarray(x), jnp.asarray(a), batch), np.float64)
    ref = C.ref_shrink(comp, x.astype(np.float64), a.astype(np.float64), 1)
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert 2.0**-22 < err < 2.0**-13, f"relative error {err:.3g} is not the documented ~2**-16"


@pytest.mark.parametrize("out_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("piece", [(8, 16, 4), (64, 48, 2), (64, 16, 4)], ids=["8x16", "64x48", "64x16"])
def test_split_partials_are_added_in_index_order(interpret, out_dtype, piece):
    """The partial-tile sum adds a split shrink's tiles in index order (so every run rounds alike),
    one rounding to the output dtype, every block's rows and columns [0, na) at their place, the
    columns beyond left alone: in a split shrink's 8 x 16 pieces and a K-split block shrink's
    pieces of a whole block."""
    from lora.pallas.api import XP

    rows, cols, per_step = piece
    nb, tiles, na, na_out = 2, 12, 48, 96
    cfg = T.PartsConfig(nb, tiles, na, na_out, na_out, out_dtype, per_step, 3, False, rows, cols)
    rng = np.random.default_rng(5)
    parts = rng.standard_normal((nb, tiles, 64, na_out)).astype(np.float32)
    parts[1, :4, 7, 33] = [1e8, 1.0, -1e8, 1.0]  # a sum whose value depends on the order
    parts[1, 4:, 7, 33] = 0.0
    rows = SimpleNamespace(nrows=jnp.asarray([nb * 64], jnp.int32))
    got = np.asarray(XP.add_parts(cfg, rows, jnp.asarray(parts)).astype(jnp.float32))
    assert got.shape == (nb * 64, na_out)
    want = np.float32(np.float32(np.float32(1e8) + np.float32(1.0)) + np.float32(-1e8)) + np.float32(1.0)
    assert got[64 + 7, 33] == want == 1.0  # (a pairwise or reordered sum gives 0 or 2)
    ref = parts.astype(np.float64).sum(axis=1).reshape(nb * 64, na_out)
    ref[64 + 7, 33] = 1.0
    tol = 1e-6 if out_dtype == "float32" else 2.0**-8
    assert np.abs(got[:, :na] - ref[:, :na]).max() <= tol * np.abs(ref[:, :na]).max()


@pytest.mark.parametrize("piece_rows", [8, 64])
@pytest.mark.parametrize("s", [64 + 20, 64 + 5, 64 + 8, 2 * 64 - 1])
def test_partial_tile_sum_places_a_clamped_last_block_and_writes_rows_below_s_only(interpret, s, piece_rows):
    """With ``tail``, the tiles of a partial last block hold its clamped box (rows s-64 .. s-1): the
    sum reads that block's rows at the box's offset and stores rows < s (the chunk that s cuts row
    by row); NaN tiles of a block past s change nothing. Without ``tail`` the rows are where the
    block is. In 8-row pieces (a split shrink's) and whole blocks (a K-split block shrink's). (That no row from s on is written: the GPU tests, into tensors of s rows.)"""
    from lora.pallas.api import XP

    nb, tiles, na = 3, 4, 16
    rng = np.random.default_rng(s)
    parts = rng.standard_normal((nb, tiles, 64, na)).astype(np.float32)
    parts[2] = np.nan  # a block past s: never read
    rows = SimpleNamespace(nrows=jnp.asarray([s], jnp.int32))
    sums = parts.astype(np.float64).sum(axis=1)
    for tail in (True, False):
        cfg = T.PartsConfig(nb, tiles, na, na, na, "float32", 2, 2, tail, piece_rows, 16)
        got = np.asarray(XP.add_parts(cfg, rows, jnp.asarray(parts)))
        m = s - 64
        want_last = sums[1, 64 - m:] if tail else sums[1, :m]
        np.testing.assert_allclose(got[:64], sums[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[64:s], want_last, rtol=1e-6, atol=1e-6)
        assert not np.isnan(got[:s]).any()


def test_split_shrink_results_are_the_same_bits_every_run(interpret):
    """A decode shrink (split over K, partial tiles added by the sum kernel) twice: the same bits."""
    comp = C.Composition([1] * 40 + [24], [i % 3 for i in range(40)] + [1], [16, 16, 8], [1.0, 0.5, 2.0], 16, 64)
    from lora.pallas import plan as P

    batch = batch_of(comp)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((64, 1024)), jnp.bfloat16)
    a = jnp.asarray(np.random.default_rng(2).standard_normal((3, 32, 1024)) / 32, jnp.bfloat16)
    assert P.plan_shrink(64, 1024, 16, 2, 3, "bfloat16", tail=False, result=True).sum is not None
    one, two = lp.shrink(x, a, batch, stack=2), lp.shrink(x, a, batch, stack=2)
    assert np.array_equal(np.asarray(one.view(jnp.uint16)), np.asarray(two.view(jnp.uint16)))
    ref = C.ref_shrink(comp, np.asarray(x, np.float64), np.asarray(a, np.float64), 2)
    assert C.compare(np.asarray(one, np.float64), ref, "bfloat16").ok


def test_torch_path_keeps_jax_off_the_gpu():
    """The torch executor's lowering keeps JAX to its CPU backend (JAX's GPU client invalidated
    global-mode CUDA-graph captures), unless the process named its platforms or started JAX first."""
    code = ("import os, jax; from jax._src import xla_bridge; {pre}from lora.pallas import interop; interop._import_jax(); "
            "print(jax.config.jax_platforms)")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    for pre, extra, want in (("", {}, "cpu"), ("", {"JAX_PLATFORMS": "cpu,cuda"}, "cpu,cuda"),
                             ("jax.devices(); ", {}, "None")):
        out = subprocess.run([sys.executable, "-c", code.format(pre=pre)], capture_output=True, text=True,
                             env={**env, **extra})
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == want, (pre, extra, out.stdout)


def test_lora_pallas_imports_without_jax_or_torch():
    code = ("import sys, lora.pallas, lora.pallas.tiling; "
            "assert 'jax' not in sys.modules and 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_reduce_add_expand_is_gpu_only(rng, interpret):
    """Tuning.expand_reduce_add (TMA reduce-add into base) cannot run in interpret mode: it says so
    before any launch (its kernels are lowered above; the GPU check times and checks it)."""
    comp = C.decode_composition(rng, 8, 2, 16)
    x = jnp.zeros((8, 16), jnp.bfloat16)
    b = jnp.zeros((2, 64, 16), jnp.bfloat16)
    with pytest.raises(ValueError, match="interpret mode"):
        lp.expand(x, b, batch_of(comp), tuning=T.Tuning(expand_reduce_add=True))
    with pytest.raises(ValueError, match="bool"):
        T.Tuning(expand_reduce_add=1)
