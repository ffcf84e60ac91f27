"""The "pallas" backend on a Hopper GPU: zero-copy, stream ordering, no recompiles, contract at real
widths (bf16/fp16), cross-check against "triton", the JAX API on the GPU. Skipped elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lora import testing as C
from lora.testing import batch_info

from .conftest import needs_cuda

pytestmark = needs_cuda
DEV = "cuda"
HIDDEN, Q, KV, INTER = 4096, 4096, 1024, 14336


def to_torch(a, dtype: torch.dtype, device) -> torch.Tensor:
    return torch.from_numpy(a).to(device=device, dtype=dtype)


def run_op(backend, op: str, comp, rng, dtype_name: str, device, *, k: int, n: int, kv: int | None = None):
    """``op`` of lora.testing.OPS at widths k, n (QKV: q=n, kv) on fresh poisoned inputs: (Check, output)."""
    return C.run_op(backend, C.contract_op(op, k, n, kv), comp, dtype_name, device=device, seed=int(rng.integers(2**31)))


def pallas(bi=None, **kw):
    import lora

    status = {s.name: s for s in lora.available_backends()}["pallas"]
    if not status.available:
        pytest.skip(f"pallas cannot run here: {status.reason}")
    return lora.get_backend_from_name("pallas")("pallas", bi, **kw)


def mixed(rng, tokens=1500, segs=12, num_lora=8, max_r=64, odd_rank=True):
    cuts = sorted(int(v) for v in rng.choice(range(1, tokens), segs - 1, replace=False))
    lens = [b - a for a, b in zip([0, *cuts], [*cuts, tokens])]
    ranks = [max_r] * num_lora
    ranks[1] = 0
    ranks[2] = max_r // 2 - 3 if odd_rank else max_r // 2
    slots = [int(v) for v in rng.integers(0, num_lora, segs)]
    return C.Composition(lens, slots, ranks, [float(v) for v in rng.uniform(0.25, 2, num_lora)], max_r, tokens + 3)


# ---- contract at real widths --------------------------------------------------------------------


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("kind", ["decode", "mixed"])
@pytest.mark.parametrize("op", ["shrink1", "shrink3", "expand", "qkv", "gate_up"])
def test_contract_real_widths(op, kind, dtype_name, rng):
    be = pallas()
    comp = C.decode_composition(rng, 64, 8, 16) if kind == "decode" else mixed(rng)
    check, _ = run_op(be, op, comp, rng, dtype_name, DEV, k=HIDDEN, n=Q if op != "gate_up" else INTER, kv=KV)
    assert check.ok, f"{op} {kind} {dtype_name}: {check.detail}"


def _check_decode_op_then_repeats(be, op, comp, rng, n):
    """``op`` on ``comp`` at real widths against the float64 oracle, then 20 plain expands of n columns
    on the same inputs give the same bits as the first."""
    check, _ = run_op(be, op, comp, rng, "bfloat16", DEV, k=HIDDEN, n=Q if op != "gate_up" else INTER, kv=KV)
    assert check.ok, f"{op} {comp.tokens}: {check.detail}"
    be.set_batch_info(batch_info(comp, DEV))
    dt = torch.bfloat16
    x = to_torch(C.expand_input(rng, comp, 1), dt, DEV)
    b = to_torch(C.expand_weights(rng, comp, n), dt, DEV)
    base = to_torch(C.base_output(rng, comp, n), dt, DEV)
    first = be.run_lora_b_sgemm(x, b, base_output=base.clone())
    diffs = sum(int(not torch.equal(be.run_lora_b_sgemm(x, b, base_output=base.clone()).view(torch.int16),
                                    first.view(torch.int16))) for _ in range(20))
    assert diffs == 0, f"{diffs}/20 results differ bitwise"


@pytest.mark.parametrize("tokens", [64, 256])
@pytest.mark.parametrize("op", ["expand", "qkv", "gate_up"])
def test_gathering_decode_expand(op, tokens, rng):
    """The gathering decode expand on every decode op (forced: the heuristic picks it for gate-up at
    256 tokens and stacked rank-64 slices only), a rank-0 slot and a lower rank among full ones;
    then 20 repeats give the same bits (each element of base gets one reduce-add)."""
    from lora.pallas.tiling import Tuning

    comp = C.decode_composition(rng, tokens, 8, 64)
    comp = C.Composition(comp.seg_lens, comp.weight_indices, (64, 0, 40) + (64,) * 5, comp.scalings, 64, tokens)
    be = pallas(tuning=Tuning(expand_gather=True))
    _check_decode_op_then_repeats(be, op, comp, rng, INTER)


def test_float32_and_odd_shapes(rng):
    be = pallas()
    comp = C.random_composition(rng, max_tokens=90)
    for op in ("shrink2", "expand", "qkv", "gate_up"):
        check, _ = run_op(be, op, comp, rng, "float32", DEV, k=200, n=72, kv=24)
        assert check.ok, f"{op} float32 K=200 N=72: {check.detail}"
        check, _ = run_op(be, op, comp, rng, "bfloat16", DEV, k=72, n=40, kv=8)
        assert check.ok, f"{op} bf16 K=72 N=40: {check.detail}"


# ---- zero-copy, in place, stream ordering --------------------------------------------------------


def test_zero_copy_in_place(rng):
    # An odd rank allocates nothing more (the expand shifts slices in shared memory, no repack).
    comp = mixed(rng, tokens=4096, segs=8, odd_rank=True)
    be = pallas(batch_info(comp, DEV))
    dt = torch.bfloat16
    x = to_torch(C.activations(rng, comp, HIDDEN), dt, DEV)
    a = to_torch(C.shrink_weights(rng, comp, 3, HIDDEN), dt, DEV)
    b = to_torch(C.expand_weights(rng, comp, Q + 2 * KV), dt, DEV)
    base = to_torch(C.base_output(rng, comp, Q + 2 * KV), dt, DEV)
    off = torch.tensor([0, Q, Q + KV, Q + 2 * KV], dtype=torch.int32, device=DEV)
    be.run_qkv_lora(x, a, b, off, Q, base_output=base)  # compile + metadata outside the measurement
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ptrs = (x.data_ptr(), a.data_ptr(), b.data_ptr(), base.data_ptr())
    out = be.run_qkv_lora(x, a, b, off, Q, base_output=base)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert out.data_ptr() == base.data_ptr()
    assert (x.data_ptr(), a.data_ptr(), b.data_ptr(), base.data_ptr()) == ptrs
    # Only the float32 shrink output (token bucket x (3r + 16)) may be allocated: no copy of x,
    # weights or base, no metadata (derived once per batch, in set_batch_info).
    from lora.pallas.tiling import padded_tokens

    assert extra <= padded_tokens(comp.tokens) * (3 * comp.max_r + 32) * 4 + (1 << 20), f"{extra} bytes allocated"
    assert extra < x.numel() * x.element_size() // 4


def test_launch_ordered_on_side_stream(rng):
    """x is written on a side stream after a long sleep; the op on that stream must see it."""
    comp = mixed(rng, tokens=2048, segs=6)
    be = pallas(batch_info(comp, DEV))
    dt = torch.bfloat16
    x_true = to_torch(C.activations(rng, comp, HIDDEN), dt, DEV)
    a = to_torch(C.shrink_weights(rng, comp, 2, HIDDEN), dt, DEV)
    b = to_torch(C.expand_weights(rng, comp, 2 * INTER), dt, DEV)
    base0 = to_torch(C.base_output(rng, comp, 2 * INTER), dt, DEV)
    ref = be.run_gate_up_lora(x_true, a, b, base_output=base0.clone()).clone()  # warm-up + reference
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    x = torch.zeros_like(x_true)
    base = base0.clone()
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time before x gets its values
        x.copy_(x_true)
        out = be.run_gate_up_lora(x, a, b, base_output=base)
        result = out.clone()
    side.synchronize()
    assert torch.equal(torch.nan_to_num(result), torch.nan_to_num(ref)), "kernel did not run after the side-stream producer"


def test_new_compositions_do_not_recompile(rng):
    from lora.pallas import interop

    be = pallas()
    dt = torch.bfloat16
    comps = [mixed(rng, tokens=t, segs=s) for t, s in ((700, 5), (900, 11), (1000, 3))]  # one bucket (1024)
    a = to_torch(C.shrink_weights(rng, comps[0], 3, HIDDEN), dt, DEV)
    b = to_torch(C.expand_weights(rng, comps[0], Q + 2 * KV), dt, DEV)
    off = torch.tensor([0, Q, Q + KV, Q + 2 * KV], dtype=torch.int32, device=DEV)
    counts = []
    for comp in comps:
        be.set_batch_info(batch_info(comp, DEV))
        x = to_torch(C.activations(rng, comp, HIDDEN), dt, DEV)
        base = to_torch(C.base_output(rng, comp, Q + 2 * KV), dt, DEV)
        be.run_qkv_lora(x, a, b, off, Q, base_output=base)
        counts.append(interop.lowering_count())
    torch.cuda.synchronize()
    assert counts[1] == counts[0] == counts[2], f"kernels lowered per call: {counts}"


# ---- cross-check against triton ------------------------------------------------------------------


@pytest.mark.parametrize("op", ["shrink3", "qkv", "gate_up"])
def test_matches_triton(op, rng):
    import lora

    status = {s.name: s for s in lora.available_backends()}
    if not status.get("triton") or not status["triton"].available:
        pytest.skip("triton backend not available")
    comp = mixed(rng, tokens=1200, segs=9)
    bi = batch_info(comp, DEV)
    pl_be, tr_be = pallas(bi), lora.get_backend_from_name("triton")("triton", bi)
    dt = torch.bfloat16
    x = to_torch(C.activations(rng, comp, HIDDEN), dt, DEV)
    n = Q + 2 * KV if op == "qkv" else 2 * INTER
    stack = 3 if op != "gate_up" else 2
    a = to_torch(C.shrink_weights(rng, comp, stack, HIDDEN), dt, DEV)
    if op == "shrink3":
        p, t = pl_be.run_lora_a_sgemm(x, a, 3), tr_be.run_lora_a_sgemm(x, a, 3)
    else:
        b = to_torch(C.expand_weights(rng, comp, n), dt, DEV)
        base = to_torch(C.base_output(rng, comp, n), dt, DEV)
        if op == "qkv":
            off = torch.tensor([0, Q, Q + KV, n], dtype=torch.int32, device=DEV)
            p = pl_be.run_qkv_lora(x, a, b, off, Q, base_output=base.clone())
            t = tr_be.run_qkv_lora(x, a, b, off, Q, base_output=base.clone())
        else:
            p = pl_be.run_gate_up_lora(x, a, b, base_output=base.clone())
            t = tr_be.run_gate_up_lora(x, a, b, base_output=base.clone())
    assert torch.equal(torch.isnan(p), torch.isnan(t))
    diff = torch.nan_to_num(p.float() - t.float()).norm() / torch.nan_to_num(t.float()).norm()
    assert diff < 1e-2, f"pallas vs triton rel diff {float(diff):.3g}"


# ---- CUDA graphs, JAX's memory, the JAX API on the GPU ------------------------------------------


def _graph_case(rng, be, bi, comps, capture_prepare: bool):
    """Capture QKV then gate-up on reserved buffers; replay after copying new batch values in place
    (and re-deriving with set_batch_info, unless prepare itself is in the graph)."""
    dt = torch.bfloat16
    off = torch.tensor([0, Q, Q + KV, Q + 2 * KV], dtype=torch.int32, device=DEV)
    x = torch.zeros(64, HIDDEN, dtype=dt, device=DEV)
    a3 = to_torch(C.shrink_weights(rng, comps[0], 3, HIDDEN), dt, DEV)
    b3 = to_torch(C.expand_weights(rng, comps[0], Q + 2 * KV), dt, DEV)
    a2 = to_torch(C.shrink_weights(rng, comps[0], 2, HIDDEN), dt, DEV)
    b2 = to_torch(C.expand_weights(rng, comps[0], 2 * INTER), dt, DEV)
    qkv = torch.zeros(64, Q + 2 * KV, dtype=dt, device=DEV)
    gu = torch.zeros(64, 2 * INTER, dtype=dt, device=DEV)

    def step():
        if capture_prepare:
            be.prepare(bi)
        be.run_qkv_lora(x, a3, b3, off, Q, base_output=qkv)
        be.run_gate_up_lora(x, a2, b2, base_output=gu)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up: compiles every kernel outside the capture
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    f64 = lambda t: t.double().cpu().numpy()  # noqa: E731
    for comp in comps[1:]:
        new = batch_info(comp, DEV)
        for field in ("seg_lens", "seg_indptr", "weight_indices", "lora_ranks", "scalings"):
            getattr(bi, field).copy_(getattr(new, field))
        if not capture_prepare:
            be.set_batch_info(bi)  # re-derives into the same (reserved) buffers
        xv = to_torch(C.activations(rng, comp, HIDDEN), dt, DEV)
        q0 = to_torch(C.base_output(rng, comp, Q + 2 * KV), dt, DEV)
        g0 = to_torch(C.base_output(rng, comp, 2 * INTER), dt, DEV)
        x.copy_(xv)
        qkv.copy_(q0)
        gu.copy_(g0)
        g.replay()
        torch.cuda.synchronize()
        check = C.compare(f64(gu), C.ref_stacked(comp, f64(xv), f64(a2), f64(b2), [0, INTER, 2 * INTER], f64(g0)), "bfloat16")
        assert check.ok, f"gate-up after replay: {check.detail}"
        ref = C.ref_stacked(comp, f64(xv), f64(a3), f64(b3), [0, Q, Q + KV, Q + 2 * KV], f64(q0))
        check = C.compare(f64(qkv), ref, "bfloat16")
        assert check.ok, f"qkv after replay: {check.detail}"


@pytest.mark.parametrize("capture_prepare", [False, True], ids=["set_batch_info-before-replay", "prepare-in-graph"])
def test_cuda_graph_replay_with_new_metadata(rng, capture_prepare):
    comps = [C.decode_composition(rng, 64, 8, 16) for _ in range(3)]
    bi = batch_info(comps[0], DEV)
    be = pallas()
    be.reserve(max_tokens=256, max_segments=64)
    be.set_batch_info(bi)
    meta = be._meta.data_ptr()
    _graph_case(rng, be, bi, comps, capture_prepare)
    assert be._meta.data_ptr() == meta, "reserved metadata buffers were reallocated"


def test_compiled_metadata_builder(rng):
    """prepare's builder compiled for the GPU (lora.pallas.fused_meta: inductor's Triton kernels): bitwise the
    op-by-op builder's metadata on decode, prefill and edge-case batches; a shape built twice outside a capture
    runs compiled inside one, and its replays re-derive the metadata of new batch values; a shape never built
    outside a capture runs op by op in it."""
    pallas()
    from lora.pallas import fused_meta as F
    from lora.pallas import meta as M

    b = F.FusedBuilder(DEV)  # a builder of its own: the counts below are this test's
    if not b.enabled:
        pytest.skip(f"{F.EAGER_ENV}=1: the builder runs op by op")

    def args(comp):
        bi = batch_info(comp, DEV)
        groups = max(1, -(-comp.tokens // 64))
        kw = dict(bs=bi.bs, num_lora=bi.num_lora, groups=groups, units=groups > 4)
        return bi, (bi.seg_indptr, bi.weight_indices, bi.lora_ranks), kw

    ranks, scal = (16, 16, 0, 16, 8, 16, 16, 16), (1.0,) * 8
    comps = [C.decode_composition(rng, t, 8, 16) for t in (1, 7, 64, 200, 256)] + [mixed(rng), mixed(rng, 700, 5)]
    comps += [C.Composition((0, 5, 0, 0, 9, 0, 3), (1, 2, 1, 2, 2, 0, 7), ranks, scal, 16, 17),
              C.Composition((3, 1, 70, 2, 5, 1, 8), (1, 0, 1, 1, 0, 1, 0), ranks, scal, 16, 97)]
    for comp in comps:
        _, a, kw = args(comp)
        want = M.build(b.ex, *a, **kw)
        for _ in range(F.FusedBuilder.COMPILE_AT):
            got = b(*a, **kw)
        assert torch.equal(got, want), (comp.seg_lens[:8], kw, (got != want).nonzero().flatten()[:8].tolist())
    assert b.failure is None and b.runs["compiled"] >= len(comps)

    bi, a, kw = args(C.decode_composition(rng, 64, 8, 16))
    out = torch.zeros_like(M.build(b.ex, *a, **kw))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(F.FusedBuilder.COMPILE_AT):
            out.copy_(b(*a, **kw))
    torch.cuda.current_stream().wait_stream(side)
    runs = dict(b.runs)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out.copy_(b(*a, **kw))
    assert b.runs == {"compiled": runs["compiled"] + 1, "eager": runs["eager"]}
    for _ in range(3):
        new = C.decode_composition(rng, 64, 8, 16)
        new.lora_ranks[int(rng.integers(8))] = 0
        nbi = batch_info(new, DEV)
        for field in ("seg_indptr", "weight_indices", "lora_ranks"):
            getattr(bi, field).copy_(getattr(nbi, field))
        out.zero_()
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, M.build(b.ex, nbi.seg_indptr, nbi.weight_indices, nbi.lora_ranks, **kw))

    _, a, kw = args(C.decode_composition(rng, 32, 8, 16))  # never built outside a capture
    g2 = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g2):
        b(*a, **kw)
    assert b.runs["eager"] == runs["eager"] + 1


def test_decode_shrink_is_bitwise_reproducible(rng):
    """The split-K decode shrink, repeated on one stream, gives the same bits every time (each CTA
    stores its own partial tile, the tiles are summed in index order; before: TMA reduce-adds of the
    K-split partials in completion order, one bf16 ulp apart in ~5 of 100 runs)."""
    comp = C.decode_composition(rng, 64, 8, 16)
    be = pallas(batch_info(comp, DEV))
    dt = torch.bfloat16
    x = to_torch(C.activations(rng, comp, HIDDEN), dt, DEV)
    a = to_torch(C.shrink_weights(rng, comp, 3, HIDDEN), dt, DEV)
    b = to_torch(C.expand_weights(rng, comp, Q + 2 * KV), dt, DEV)
    base = to_torch(C.base_output(rng, comp, Q + 2 * KV), dt, DEV)
    off = torch.tensor([0, Q, Q + KV, Q + 2 * KV], dtype=torch.int32, device=DEV)
    first = be.run_lora_a_sgemm(x, a, 3)
    first_qkv = be.run_qkv_lora(x, a, b, off, Q, base_output=base.clone())
    bits = lambda t: torch.nan_to_num(t.float()).view(torch.int32)  # noqa: E731
    diffs = sum(int(not torch.equal(bits(be.run_lora_a_sgemm(x, a, 3)), bits(first))) for _ in range(100))
    diffs_qkv = sum(
        int(not torch.equal(bits(be.run_qkv_lora(x, a, b, off, Q, base_output=base.clone())), bits(first_qkv)))
        for _ in range(20)
    )
    assert diffs == 0 and diffs_qkv == 0, f"{diffs}/100 shrink and {diffs_qkv}/20 qkv results differ bitwise"


def test_expand_with_max_r_zero(rng):
    """No adapter loaded (max_r = 0): base_output comes back unchanged, as with torch and triton."""
    comp = C.decode_composition(rng, 16, 2, 16)
    be = pallas(batch_info(comp, DEV))
    base = torch.randn(16, Q, dtype=torch.bfloat16, device=DEV)
    x = torch.empty(16, 0, dtype=torch.bfloat16, device=DEV)
    w = torch.empty(2, Q, 0, dtype=torch.bfloat16, device=DEV)
    be.batch_info.lora_ranks.zero_()
    be.set_batch_info(be.batch_info)
    out = be.run_lora_b_sgemm(x, w, base_output=base.clone())
    assert torch.equal(out, base)
    assert not be.run_lora_b_sgemm(x, w).any()


_MEMORY_PROBE = r"""
import numpy as np, torch
import lora
from lora import testing as C
from lora.testing import batch_info
rng = np.random.default_rng(0)
torch.zeros(1, device="cuda")  # torch's CUDA context first: it is not what is measured
torch.cuda.synchronize()
free0, _ = torch.cuda.mem_get_info()
reserved0 = torch.cuda.memory_reserved()
comp = C.decode_composition(rng, 16, 4, 16)
be = lora.get_backend_from_name("pallas")("pallas", batch_info(comp, "cuda"))
check, _ = C.run_op(be, C.contract_op("qkv", 4096, 4096, 1024), comp, "bfloat16", device="cuda", seed=0)
assert check.ok, check.detail
torch.cuda.synchronize()
free1, _ = torch.cuda.mem_get_info()
print((free0 - free1) - (torch.cuda.memory_reserved() - reserved0))
"""


def test_jax_runtime_takes_no_gpu_memory():
    """Lowering starts JAX's CUDA client; with preallocation off it must not take the GPU from torch.

    Measured in a fresh process (JAX's client starts there), as the device's free memory before and
    after minus what torch reserved. Free memory is device-wide, so under ``pytest -n`` another
    worker's allocations can land in the window: the probe runs up to three times and the smallest
    figure counts (a preallocating client, 75% of the GPU, shows in every run).
    """
    pallas()  # skips where the backend cannot run
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONPATH=os.getcwd())
    seen = []
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        seen.append(int(r.stdout.strip().splitlines()[-1]))
        if seen[-1] < 1 << 30:
            break
    assert min(seen) < 1 << 30, f"GPU memory taken outside torch per run (MiB): {[v >> 20 for v in seen]}"


def test_jax_api_on_gpu():
    """The JAX functional API, jitted, on the GPU (a subprocess: JAX starts its own CUDA client)."""
    code = r"""
import numpy as np, jax, jax.numpy as jnp
from lora import pallas as lp
from lora import testing as C
rng = np.random.default_rng(0)
for comp in (C.decode_composition(rng, 64, 8, 16), C.Composition([300, 0, 500, 200], [2, 1, 0, 2], [16, 16, 9, 0], [0.5, 1.0, 2.0, 1.5], 16, 1003)):
    x = jnp.asarray(C.activations(rng, comp, 4096), jnp.bfloat16)
    a = jnp.asarray(C.shrink_weights(rng, comp, 3, 4096), jnp.bfloat16)
    b = jnp.asarray(C.expand_weights(rng, comp, 6144), jnp.bfloat16)
    base = jnp.asarray(C.base_output(rng, comp, 6144), jnp.bfloat16)
    f = jax.jit(lambda x, a, b, base, ip, wi, rk, sc: lp.qkv_lora(x, a, b, lp.make_batch(ip, wi, rk, sc, num_tokens=x.shape[0]), q=4096, kv=1024, base=base))
    out = f(x, a, b, base, jnp.asarray(comp.seg_indptr, jnp.int32), jnp.asarray(comp.weight_indices, jnp.int32), jnp.asarray(comp.lora_ranks, jnp.int32), jnp.asarray(comp.scalings, jnp.float32))
    f64 = lambda t: np.asarray(jnp.asarray(t, jnp.float32), np.float64)
    ref = C.ref_stacked(comp, f64(x), f64(a), f64(b), [0, 4096, 5120, 6144], f64(base))
    chk = C.compare(f64(out), ref, "bfloat16")
    assert chk.ok, chk.detail
    print("ok", chk.detail, jax.devices()[0].device_kind)
"""
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONPATH=os.getcwd())
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
