"""The Pallas (Mosaic GPU) kernels on a CPU-only machine (the torch-free .venv-jax).

* The LoRA contract (lora.testing: poisoned inputs, float64 oracle) through the JAX API,
  with the kernels run in Mosaic GPU interpret mode.
* The full Mosaic lowering for CUDA of every kernel configuration the tiling can pick (interpret
  mode models neither TMA reductions nor TMA alignment).
* Token buckets, the metadata layout, and no recompilation for a new composition.
"""

from __future__ import annotations

import functools
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.experimental.pallas import mosaic_gpu as plgpu  # noqa: E402

from lora import pallas as lp  # noqa: E402
from lora.pallas import common, tiling as T  # noqa: E402
from lora.pallas import expand_kernel as EK  # noqa: E402
from lora.pallas import shrink_kernel as SK  # noqa: E402
from lora import testing as C  # noqa: E402

DT = {"bfloat16": jnp.bfloat16, "float16": jnp.float16, "float32": jnp.float32}
K, N, KV = 64, 64, 32  # fixed widths: each op compiles once per dtype


def f64(a):
    return np.asarray(jnp.asarray(a, jnp.float32), np.float64)


def batch_of(comp: C.Composition):
    return lp.make_batch(comp.seg_indptr, comp.weight_indices, comp.lora_ranks, comp.scalings, num_tokens=comp.tokens)


def run_op(op, comp, rng, dtype_name):
    t = lambda a: jnp.asarray(a, DT[dtype_name])  # noqa: E731
    batch = batch_of(comp)
    if op.startswith("shrink"):
        stack = int(op[-1])
        x, a = t(C.activations(rng, comp, K)), t(C.shrink_weights(rng, comp, stack, K))
        return lp.shrink(x, a, batch, stack=stack), C.ref_shrink(comp, f64(x), f64(a), stack)
    if op == "expand":
        x, b = t(C.expand_input(rng, comp, 1)), t(C.expand_weights(rng, comp, N))
        base = t(C.base_output(rng, comp, N))
        return lp.expand(x, b, batch, base=base), C.ref_expand(comp, f64(x), f64(b), [0, N], f64(base))
    if op == "qkv":
        offs = [0, N, N + KV, N + 2 * KV]
        x, a = t(C.activations(rng, comp, K)), t(C.shrink_weights(rng, comp, 3, K))
        b, base = t(C.expand_weights(rng, comp, offs[-1])), t(C.base_output(rng, comp, offs[-1]))
        out = lp.qkv_lora(x, a, b, batch, q=N, kv=KV, base=base)
        return out, C.ref_stacked(comp, f64(x), f64(a), f64(b), offs, f64(base))
    assert op == "gate_up"
    x, a = t(C.activations(rng, comp, K)), t(C.shrink_weights(rng, comp, 2, K))
    b, base = t(C.expand_weights(rng, comp, 2 * N)), t(C.base_output(rng, comp, 2 * N))
    out = lp.gate_up_lora(x, a, b, batch, base=base)
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


@pytest.mark.parametrize("op", ["shrink2", "qkv"])
def test_block_variant_interpret(op, rng, interpret):
    """More than 4 row blocks: one CTA per block, adapters merged per row; a partial last block."""
    lens = [int(v) for v in rng.integers(0, 90, 6)]
    comp = C.Composition(lens, [int(v) for v in rng.integers(0, 4, 6)], [16, 0, 7, 12], [0.5, 1.0, 2.0, 1.5], 16, sum(lens) + 3)
    if comp.tokens <= 4 * T.BM:
        comp = C.Composition(lens + [300], comp.weight_indices + [0], comp.lora_ranks, comp.scalings, 16, sum(lens) + 303)
    out, ref = run_op(op, comp, rng, "bfloat16")
    check = C.compare(f64(out), ref, "bfloat16")
    assert check.ok, f"{op} {comp}: {check.detail}"


def test_decode_composition_interpret(rng, interpret):
    comp = C.decode_composition(rng, 17, 5, 16)
    out, ref = run_op("qkv", comp, rng, "bfloat16")
    assert C.compare(f64(out), ref, "bfloat16").ok


def test_jit_and_no_recompile_for_new_compositions(rng, interpret):
    """Under jit, a new composition (same shapes, padded segment arrays) reuses the kernels."""
    seg_slots = 8

    @jax.jit
    def f(x, a, b, base, lens, slots, ranks, scalings):
        indptr = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(lens)]).astype(jnp.int32)
        batch = lp.make_batch(indptr, slots, ranks, scalings, num_tokens=x.shape[0])
        return lp.gate_up_lora(x, a, b, batch, base=base)

    counts = []
    for trial in range(3):
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
    assert counts[0] == counts[1] == counts[2], f"kernels traced again for a new composition: {counts}"


# ---- the Mosaic lowering of every configuration -------------------------------------------------


def lower(fn, *specs):
    from lora.pallas import interop

    with interop._hopper_target():
        jax.jit(fn).trace(*specs).lower(lowering_platforms=("cuda",))


sds = jax.ShapeDtypeStruct


@pytest.mark.parametrize(
    "tokens,na,dtype,tail",
    [
        (64, 16, "bfloat16", True),  # split-K, decode
        (256, 192, "float16", True),  # split-K, 4 blocks, r64 x3
        (200, 48, "bfloat16", False),  # split, JAX API (no tail view)
        (8192, 192, "bfloat16", True),  # block variant, prefill qkv r64
        (8192, 16, "bfloat16", False),  # block variant, r16 x1
        (1000, 384, "bfloat16", True),  # block variant, two column chunks (r128 x3)
    ],
)
def test_shrink_lowers_for_cuda(tokens, na, dtype, tail):
    bpad, L, k = T.padded_tokens(tokens), 8, 4096
    stack = 3 if na % 3 == 0 else 1
    cfg = T.shrink_config(bpad, k, na, L, stack, dtype, tail=tail)
    lay = T.MetaLayout(bpad, L)
    specs = [sds((lay.length,), jnp.int32), sds((L,), jnp.int32), sds((bpad, k), DT[dtype]),
             sds((T.BM, k), DT[dtype]), sds((L, na, k), DT[dtype])]
    if cfg.split:
        fn = lambda m, r, x, xt, a, ws: SK.shrink_split(m, r, x, xt if tail else None, a, ws, cfg=cfg)  # noqa: E731
        lower(fn, *specs, sds((bpad, cfg.na_out), jnp.float32))
    else:
        fn = lambda m, r, x, xt, a: SK.shrink_block(m, r, x, xt if tail else None, a, cfg=cfg)  # noqa: E731
        lower(fn, *specs)


@pytest.mark.parametrize(
    "tokens,n,r,stack,x_dtype,op_dtype,base_dtype,part,tail,stride",
    [
        (64, 6144, 64, 3, "float32", "bfloat16", "bfloat16", 0, False, 0),  # decode qkv, fused
        (8192, 28672, 16, 2, "float32", "bfloat16", "bfloat16", 0, False, 0),  # prefill gate-up
        (1000, 6144, 16, 3, "float32", "float16", "float16", 0, False, 16),  # odd ranks: strided slices
        (1000, 4096, 64, 1, "bfloat16", "bfloat16", "bfloat16", 0, True, 0),  # run_lora_b_sgemm, tail
        (300, 128, 16, 2, "float32", "bfloat16", "float32", 1, True, 16),  # float32: lo part, f32 base
        (256, 6144, 128, 3, "float32", "bfloat16", "bfloat16", 0, False, 0),  # decode qkv r128: SMEM-bound stages
        (64, 28672, 256, 2, "float32", "float16", "float16", 0, True, 0),  # decode gate-up r256: narrower tiles
    ],
)
def test_expand_lowers_for_cuda(tokens, n, r, stack, x_dtype, op_dtype, base_dtype, part, tail, stride):
    bpad, L = T.padded_tokens(tokens), 8
    na = T.x_columns(stack * r, jnp.dtype(x_dtype).itemsize)
    cfg = T.expand_config(bpad, n, na, r, L, stack, x_dtype, op_dtype, base_dtype, x_part=part, tail=tail, x_stride=stride)
    lay = T.MetaLayout(bpad, L)
    specs = [sds((lay.length,), jnp.int32), sds((L,), jnp.int32), sds((L,), jnp.float32), sds((stack + 1,), jnp.int32),
             sds((bpad, na), DT[x_dtype]), sds((T.BM, na), DT[x_dtype]), sds((L, n, r), DT[op_dtype]),
             sds((bpad, n), DT[base_dtype])]
    fn = lambda m, rk, sc, o, x, xt, b, base: EK.expand(m, rk, sc, o, x, xt if tail else None, b, base, cfg=cfg)  # noqa: E731
    lower(fn, *specs)


# ---- tiling and metadata -------------------------------------------------------------------------


def test_expand_config_fits_shared_memory():
    for r in (16, 64, 128, 256):
        for stack in (1, 2, 3) if r < 256 else (1, 2):
            for bpad in (64, 8192):
                cfg = T.expand_config(bpad, 4096, stack * r, r, 8, stack, "float32", "bfloat16", "bfloat16", tail=True)
                used = T.expand_smem_bytes(cfg.kr, stack, 4, 2, 2, cfg.block_n, cfg.stages)
                assert used <= T.SMEM_LIMIT, (r, stack, bpad, cfg)
    # decode keeps its two stages where they fit, and gives them up where they do not (r128 x 3 slices)
    assert T.expand_config(64, 4096, 48, 16, 8, 3, "float32", "bfloat16", "bfloat16", tail=True).stages == 2
    assert T.expand_config(64, 6144, 384, 128, 8, 3, "float32", "bfloat16", "bfloat16", tail=True).stages == 1
    with pytest.raises(ValueError, match="shared memory"):
        T.expand_config(64, 6144, 768, 256, 8, 3, "float32", "bfloat16", "bfloat16", tail=True)


def test_token_buckets():
    assert [T.padded_tokens(s) for s in (0, 1, 64, 65, 128, 129, 8192, 8193)] == [64, 64, 64, 128, 128, 256, 8192, 16384]
    assert T.token_buckets(1024) == [64, 128, 256, 512, 1024]


def test_meta_layout_alignment():
    for bpad in (64, 128, 8192):
        for L in (1, 3, 8, 33):
            lay = T.MetaLayout(bpad, L)
            assert lay.boxes % 16 == 0 and lay.length % 16 == 0  # TMA starts/extents 16-byte aligned


def test_meta_contents(rng):
    comp = C.Composition([70, 0, 10, 50], [2, 1, 0, 2], [0, 16, 16], [1.0, 1.0, 1.0], 16, 133)
    bpad = 192
    meta = np.asarray(lp.build_meta(jnp.asarray(comp.seg_indptr, jnp.int32), jnp.asarray(comp.weight_indices, jnp.int32),
                                    jnp.asarray(comp.lora_ranks, jnp.int32), num_tokens=comp.tokens, bpad=bpad))
    lay = T.MetaLayout(bpad, 3)
    assert meta[0] == 133
    rows = meta[lay.boxes : lay.boxes + bpad]
    assert (rows[:70] == 2).all() and (rows[70:80] == -1).all() and (rows[80:130] == 2).all() and (rows[130:] == -1).all()
    counts = meta[lay.count : lay.count + 3]
    assert counts.tolist() == [1, 1, 1]  # block 2 = rows 128..191, its clamped box 69..132 holds slot 2 only
    tail_box = meta[lay.boxes + bpad : lay.boxes + bpad + 64]
    assert (tail_box == rows[69:133]).all()


def test_lora_pallas_imports_without_jax_or_torch():
    code = ("import sys, lora.pallas, lora.pallas.tiling; "
            "assert 'jax' not in sys.modules and 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
