"""Launch planning of the Triton backend, and its kernels under plans the heuristic would not pick.

Runs on the CPU (Triton's interpreter, TRITON_INTERPRET=1 from tests/conftest.py) or on a GPU.
Kept small: every kernel call here is a few programs on tiny shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lora

from lora import testing as C
from lora.testing import batch_info


def to_torch(a: np.ndarray, dtype: torch.dtype, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)


def to_f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


STATUS = {s.name: s for s in lora.available_backends()}
if not STATUS["triton"].available:
    pytest.skip(f"triton backend cannot run here: {STATUS['triton'].reason}", allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from lora.triton import tiling  # noqa: E402
from lora.triton.expand import expand_grid, lora_expand  # noqa: E402
from lora.triton.scratch import scratch_for  # noqa: E402
from lora.triton.shrink import _box_row, lora_shrink, shrink_grid  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
H100_SMS = 132


# ---- the heuristic -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stack, r", [(1, 16), (2, 16), (3, 16), (1, 64), (2, 64), (3, 64), (3, 128)])
def test_prefill_shrink_reads_x_once_and_fills_the_gpu(stack, r):
    n_out = stack * r
    plan = tiling.heuristic_shrink(8192, 4096, n_out, 8, H100_SMS)
    assert plan.block_m >= 64 and not plan.group_grid
    cols = plan.block_n * plan.n_sub
    if n_out <= 256:
        assert cols >= n_out, "one program covers the whole stacked width: x is read once"
        assert cols - n_out < plan.block_n, "no whole sub-tile of padding"
    _, n_groups, split = shrink_grid(8192, 8, n_out, plan, 132)
    if plan.num_warps == 4:  # 8-warp tiles for wide outputs run one program per SM on half of them
        assert 8192 // plan.block_m * n_groups * split >= 0.9 * H100_SMS


@pytest.mark.parametrize("tokens", [64, 256])
@pytest.mark.parametrize("stack, r", [(1, 16), (3, 16), (2, 64), (3, 64)])
def test_decode_shrink_spreads_the_weights(tokens, stack, r):
    plan = tiling.heuristic_shrink(tokens, 4096, stack * r, 8, H100_SMS)
    assert plan.group_grid, "decode: one program per adapter group (no chunk-slot search)"
    assert 16 <= plan.block_m <= 64 and plan.n_sub == 1
    assert plan.block_m >= tokens // 8, "a typical adapter's rows fit one chunk (weights read once)"
    groups, n_groups, split = shrink_grid(tokens, 8, stack * r, plan, 132)
    assert groups == 9, "8 adapters + the trailing-row group, whatever the token count"
    assert 8 * n_groups * split >= H100_SMS or split == 16


def test_decode_and_prefill_get_different_layouts():
    decode = tiling.heuristic_shrink(64, 4096, 192, 8, H100_SMS)
    prefill = tiling.heuristic_shrink(8192, 4096, 192, 8, H100_SMS)
    assert decode != prefill and decode.block_m < prefill.block_m
    assert tiling.heuristic_expand(64, 64, 4096, 8) != tiling.heuristic_expand(8192, 64, 4096, 8)
    wide = tiling.heuristic_expand(256, 64, 14336, 8, stack=2)
    assert wide.group_grid and wide.n_iters > 1, "wide decode expand: several column blocks per program"


def test_plans_are_valid_over_many_shapes():
    for s in (1, 7, 64, 300, 4096, 100_000):
        for k in (16, 72, 4096, 14336):
            for n_out in (4, 16, 48, 192, 384, 1024):
                for num_lora in (1, 8, 64):
                    p = tiling.heuristic_shrink(s, k, n_out, num_lora, H100_SMS)
                    assert p.split_k <= max(1, -(-k // p.block_k)), p
            for max_r in (4, 16, 64, 128):
                for stack in (1, 2, 3):
                    tiling.heuristic_expand(s, max_r, 4096, 8, stack)  # validates in __post_init__


def test_plan_rejects_bad_tiles():
    with pytest.raises(ValueError, match="power of two"):
        tiling.ShrinkPlan(48, 64, 1, 64, 1)
    with pytest.raises(ValueError, match="n_sub"):
        tiling.ShrinkPlan(64, 64, 5, 64, 1)
    with pytest.raises(ValueError, match="n_iters"):
        tiling.ExpandPlan(64, 64, 0)
    with pytest.raises(ValueError, match="stream_k"):
        tiling.ShrinkPlan(64, 64, 1, 64, 2, stream_k=1)
    with pytest.raises(ValueError, match="stream_k"):
        tiling.ShrinkPlan(64, 64, 1, 64, 1, group_grid=True, stream_k=1)
    with pytest.raises(ValueError, match="fuse=False"):
        tiling.FusedPlan(16, 64, 4, 64, 1, partials=True)


def test_grid_depends_on_shapes_only():
    """Same shapes, different metadata values (lengths, slots, ranks): same plan and grid."""
    a = C.Composition([5, 0, 9], [0, 1, 1], [8, 4], [1.0, 0.5], 8, 16)
    b = C.Composition([1, 13, 0], [1, 1, 0], [0, 8], [2.0, 1.0], 8, 16)
    grids = []
    for comp in (a, b):
        bi = batch_info(comp, "cpu")
        p = tiling.plan_shrink(comp.tokens, 40, 24, len(comp.lora_ranks), bi.bs, torch.float32, "cpu")
        e = tiling.plan_expand(comp.tokens, 8, 40, 20, 2, len(comp.lora_ranks), bi.bs, torch.float32, "cpu")
        assert p.group_grid and e.group_grid
        grids.append((p, e, shrink_grid(comp.tokens, 2, 24, p, 4), expand_grid(comp.tokens, 2, 2, 20, e)))
    assert grids[0] == grids[1]


def test_tuned_table_is_used_and_can_be_disabled(tmp_path, monkeypatch):
    key = tiling.shrink_key(40, 72, 24, 3)
    plan = tiling.ShrinkPlan(16, 16, 2, 32, 2, 4, 2)
    monkeypatch.setenv(tiling.TUNE_DIR_ENV, str(tmp_path))
    tiling.write_table(tiling.user_table_path("cpu"), {"name": "cpu"}, {key: plan})
    tiling.reload_tables()  # the environment and tables are read once per process
    try:
        assert tiling.plan_shrink(40, 72, 24, 3, 5, torch.float16, "cpu") == plan
        monkeypatch.setenv("LORA_TRITON_NO_TUNED", "1")
        tiling.reload_tables()
        assert tiling.plan_shrink(40, 72, 24, 3, 5, torch.float16, "cpu") == tiling.heuristic_shrink(40, 72, 24, 3, 4)
    finally:
        monkeypatch.undo()
        tiling.reload_tables()
    assert tiling.token_bucket(8000) == tiling.token_bucket(9000) == 8192, "prefill and mixed share a token bucket (not a segment geometry)"


def test_shipped_tables_parse():
    files = sorted(tiling.TABLES_DIR.glob("*.json"))
    assert files, "the package ships at least the H100 table"
    names = set()
    for path in files:
        table = tiling.read_table(path, "shipped")  # raises on any invalid plan
        assert path.stem == tiling.device_slug(table.device), f"{path.name} holds {table.device!r}"
        assert table.plans and table.device not in names
        names.add(table.device)
    assert "NVIDIA H100 80GB HBM3" in names


# ---- the kernels under forced plans ------------------------------------------------------------------


def _comp(rng, tokens_per_seg=10, bs=20, num_lora=5, max_r=16):
    """Many segments (more than one SEG_BLOCK), groups longer than a chunk, rank-0 and odd ranks."""
    lens = [int(v) for v in rng.integers(0, tokens_per_seg, size=bs)]
    lens[3] = 0
    ranks = [max_r, 0, 5, max_r // 2, 1][:num_lora]
    slots = [int(v) for v in rng.integers(0, num_lora, size=bs)]
    return C.Composition(lens, slots, ranks, [0.5, 1.0, 1.5, 2.0, 0.75][:num_lora], max_r, sum(lens) + 3)


SHRINK_PLANS = [
    tiling.ShrinkPlan(16, 16, 1, 16, 1),
    tiling.ShrinkPlan(32, 16, 3, 32, 2),
    tiling.ShrinkPlan(16, 16, 4, 16, 4, num_stages=2),
    tiling.ShrinkPlan(64, 32, 2, 64, 3),
    tiling.ShrinkPlan(16, 16, 1, 16, 2),  # three column groups (the tuner's column-split tiles) with split-K
    tiling.ShrinkPlan(16, 16, 2, 32, 1, group_grid=True),  # groups span several chunks
    tiling.ShrinkPlan(16, 32, 1, 16, 3, group_grid=True),  # ... with split-K counters per chunk
    # stream-K (4 multiprocessors on the interpreter): three column groups, tiles cut across programs
    tiling.ShrinkPlan(16, 16, 1, 16, 1, stream_k=1),
    tiling.ShrinkPlan(16, 16, 3, 32, 1, stream_k=2),
    tiling.ShrinkPlan(32, 16, 4, 16, 1, num_stages=2, stream_k=4),  # more programs than a tile has K steps
]


@pytest.fixture(params=["compare", "histogram", "histogram-in-blocks"])
def seg_blocks(request, monkeypatch):
    """Both ways to find a chunk's rows; segments scanned at once, or 16 at a time (past 1024 segments)."""
    monkeypatch.setattr(tiling, "rows_by_histogram", lambda block_m, seg: request.param != "compare")
    if request.param == "histogram-in-blocks":
        monkeypatch.setattr(tiling, "seg_block", lambda bs: 16)
    return request.param


@pytest.mark.parametrize("plan", SHRINK_PLANS, ids=str)
def test_shrink_under_forced_plans(plan, rng, seg_blocks):
    comp = _comp(rng)
    k, stack = 50, 3
    x = to_torch(C.activations(rng, comp, k), torch.float32, DEVICE)
    a = to_torch(C.shrink_weights(rng, comp, stack, k), torch.float32, DEVICE)
    bi = batch_info(comp, DEVICE)
    out = lora_shrink(x, a, stack, bi, plan=plan)
    check = C.compare(to_f64(out), C.ref_shrink(comp, to_f64(x), to_f64(a), stack), "float32")
    assert check.ok, check.detail
    if plan.split_k > 1 or plan.stream_k:
        assert not scratch_for(torch.device(DEVICE)).counters.any(), "split-K counters must return to zero"


TMA_PLANS = [
    tiling.ShrinkPlan(16, 16, 1, 16, 1, tma=True),  # three column groups, neighbouring programs
    tiling.ShrinkPlan(32, 16, 3, 32, 2, tma=True),  # the stacked width in one program, split-K, a K tail
    tiling.ShrinkPlan(16, 32, 2, 16, 1, tma=True),  # sub-tiles past the stacked width (the next slot's rows)
]


@pytest.mark.parametrize("layout", ["one-segment-per-slot", "slots-shared"])
@pytest.mark.parametrize("plan", TMA_PLANS, ids=str)
def test_shrink_through_tensor_descriptors(plan, layout, rng):
    """``ShrinkPlan.tma``: weight tiles through a descriptor (all columns, stale NaN tails zeroed after), x
    through a descriptor where a chunk's rows are consecutive tokens and by pointers where a chunk spans two
    segments of one slot (slots-shared). fp16 (descriptors are for 16-bit inputs); K = 56, not a multiple of
    the K step: the descriptors' zero padding is the K tail."""
    if layout == "one-segment-per-slot":
        comp = C.Composition([37, 0, 21, 40, 9], [2, 1, 0, 3, 4], [16, 0, 5, 8, 1], [0.5, 1.0, 1.5, 2.0, 0.75], 16, 110)
    else:
        comp = _comp(rng)
    k, stack = 56, 3
    assert k % plan.block_k
    x = to_torch(C.activations(rng, comp, k), torch.float16, DEVICE)
    a = to_torch(C.shrink_weights(rng, comp, stack, k), torch.float16, DEVICE)
    assert tiling.tma_supported(x, a) == (DEVICE == "cpu" or torch.cuda.get_device_capability()[0] >= 9)
    out = torch.full((comp.tokens, a.shape[1]), float("nan"), dtype=torch.float16, device=DEVICE)
    lora_shrink(x, a, stack, batch_info(comp, DEVICE), plan=plan, out=out)
    check = C.compare(to_f64(out), C.ref_shrink(comp, to_f64(x), to_f64(a), stack), "float16")
    assert check.ok, check.detail
    if plan.split_k > 1:
        assert not scratch_for(torch.device(DEVICE)).counters.any(), "split-K counters must return to zero"


@triton.jit
def _box_row_probe(rows_ptr, out_ptr, n_ok, num_tokens, BLOCK_M: tl.constexpr):
    pos = tl.arange(0, BLOCK_M)
    rows = tl.load(rows_ptr + pos).to(tl.int64)
    tl.store(out_ptr, _box_row(rows, pos < n_ok, num_tokens, BLOCK_M))


@pytest.mark.parametrize("rows, n_ok, expect", [
    (list(range(40, 56)), 16, 40),  # one segment
    (list(range(40, 50)) + [0] * 6, 10, 40),  # a group's last chunk: places past its rows hold stale entries
    (list(range(3, 10)) + list(range(20, 29)), 16, -1),  # two segments of one slot, apart
    (list(range(0, 16)), 0, -1),  # no rows
    ([5] * 16, 16, -1),
], ids=["segment", "last-chunk", "two-segments", "empty", "repeated"])
def test_box_row_finds_chunks_of_consecutive_tokens(rows, n_ok, expect):
    """The check that sends a chunk's x tile through one descriptor box (``_box_row``), in a one-program kernel."""
    out = torch.full((1,), -7, dtype=torch.int32, device=DEVICE)
    _box_row_probe[(1,)](torch.tensor(rows, dtype=torch.int32, device=DEVICE), out, n_ok, 100, BLOCK_M=16)
    assert int(out.item()) == expect


def test_tma_plan_on_inputs_descriptors_cannot_take(rng):
    """float32, x rows 102 bytes apart (not 16-byte aligned), weight slots with gaps: the plan's tiles run
    through pointers, same result."""
    comp = _comp(rng)
    k, stack = 48, 2
    plan = tiling.ShrinkPlan(16, 16, 2, 16, 1, tma=True)
    x32 = to_torch(C.activations(rng, comp, k), torch.float32, DEVICE)
    a32 = to_torch(C.shrink_weights(rng, comp, stack, k), torch.float32, DEVICE)
    wide = torch.zeros((comp.tokens, k + 3), dtype=torch.float16, device=DEVICE)
    wide[:, :k] = x32.half()
    gapped = torch.zeros((a32.shape[0], a32.shape[1] + 8, k), dtype=torch.float16, device=DEVICE)
    gapped[:, : a32.shape[1]] = a32.half()
    cases = [(x32, a32, "float32"), (wide[:, :k], a32.half(), "float16"), (x32.half(), gapped[:, : a32.shape[1]], "float16")]
    for x, a, dtype in cases:
        assert not tiling.tma_supported(x, a)
        out = lora_shrink(x, a, stack, batch_info(comp, DEVICE), plan=plan)
        check = C.compare(to_f64(out), C.ref_shrink(comp, to_f64(x), to_f64(a), stack), dtype)
        assert check.ok, f"{dtype} {tuple(x.stride())} {tuple(a.stride())}: {check.detail}"


def test_tma_plans_swap_the_grid_and_need_the_prefill_layout():
    plan = tiling.ShrinkPlan(128, 64, 1, 64, 1, tma=True)
    assert shrink_grid(8192, 8, 192, plan, 132) == (3, 64 + 9, 1), "column groups of a chunk are neighbours"
    assert shrink_grid(8192, 8, 192, tiling.ShrinkPlan(128, 64, 1, 64, 1), 132) == (64 + 9, 3, 1)
    with pytest.raises(ValueError, match="tma"):
        tiling.ShrinkPlan(16, 16, 1, 64, 2, group_grid=True, tma=True)
    with pytest.raises(ValueError, match="tma"):
        tiling.ShrinkPlan(64, 64, 1, 64, 1, stream_k=1, tma=True)


EXPAND_PLANS = [
    tiling.ExpandPlan(16, 16, 1),
    tiling.ExpandPlan(32, 16, 3),
    tiling.ExpandPlan(64, 32, 2),
    tiling.ExpandPlan(16, 16, 2, group_grid=True),
    # base_output as the dot's accumulator (x scaled first), both layouts
    tiling.ExpandPlan(32, 16, 3, acc_base=True),
    tiling.ExpandPlan(16, 16, 2, group_grid=True, acc_base=True),
]


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "ragged"])
@pytest.mark.parametrize("plan", EXPAND_PLANS, ids=str)
def test_expand_under_forced_plans(plan, aligned, rng, seg_blocks):
    """Aligned slice bounds and ranks take the vectorised branch; ragged ones the scalar branch."""
    comp = _comp(rng)
    if aligned:
        comp = C.Composition(comp.seg_lens, comp.weight_indices, [16, 0, 8, 16, 8], comp.scalings, 16, comp.tokens)
        offsets = [0, 48, 64, 80]
    else:
        offsets = [0, 37, 50, 63]
    x = to_torch(C.expand_input(rng, comp, 3), torch.float32, DEVICE)
    b = to_torch(C.expand_weights(rng, comp, offsets[-1]), torch.float32, DEVICE)
    base = to_torch(C.base_output(rng, comp, offsets[-1]), torch.float32, DEVICE)
    ref = C.ref_expand(comp, to_f64(x), to_f64(b), offsets, to_f64(base))
    off_t = torch.tensor(offsets, dtype=torch.int32, device=DEVICE)
    widest = max(b - a for a, b in zip(offsets, offsets[1:]))
    out = lora_expand(x, b, off_t, widest, base, batch_info(comp, DEVICE), plan=plan)
    assert out.data_ptr() == base.data_ptr()
    check = C.compare(to_f64(out), ref, "float32")
    assert check.ok, check.detail


def test_acc_base_keeps_fp16_products_in_range():
    """fp16 x near the top of its range times a scale of 2 overflows fp16 if scaled before the product: the
    plan's accumulator epilogue is not used for fp16 (the result must be finite and right)."""
    comp = C.Composition([40, 24], [0, 1], [16, 16], [2.0, 2.0], 16, 64)
    x = torch.full((64, 16), 40000.0, dtype=torch.float16, device=DEVICE)
    b = torch.full((1, 32, 16), 1e-3, dtype=torch.float16, device=DEVICE).expand(2, 32, 16).contiguous()
    base = torch.zeros((64, 32), dtype=torch.float16, device=DEVICE)
    off_t = torch.tensor([0, 32], dtype=torch.int32, device=DEVICE)
    out = lora_expand(x, b, off_t, 32, base, batch_info(comp, DEVICE), plan=tiling.ExpandPlan(32, 16, 2, acc_base=True))
    expect = 2.0 * 40000.0 * 1e-3 * 16
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), torch.full_like(out, expect).double(), rtol=3e-3)


def test_new_metadata_in_the_same_tensors(rng):
    """What a CUDA-graph replay does: same tensors and shapes, new values copied in, no re-planning."""
    first = C.Composition([6, 0, 10, 4], [1, 0, 1, 2], [8, 4, 0], [1.0, 0.5, 2.0], 8, 22)
    second = C.Composition([0, 12, 1, 9], [2, 2, 0, 1], [3, 8, 8], [0.25, 1.5, 1.0], 8, 22)
    backend = lora.get_backend_from_name("triton")("triton")
    bi = batch_info(first, DEVICE)
    backend.set_batch_info(bi)
    k, n, kv = 24, 32, 16
    offsets = [0, n, n + kv, n + 2 * kv]
    off_t = torch.tensor(offsets, dtype=torch.int32, device=DEVICE)
    for comp in (first, second):
        fresh = batch_info(comp, DEVICE)
        for field in ("seg_lens", "seg_indptr", "weight_indices", "lora_ranks", "scalings"):
            getattr(bi, field).copy_(getattr(fresh, field))
        x = to_torch(C.activations(rng, comp, k), torch.float32, DEVICE)
        a = to_torch(C.shrink_weights(rng, comp, 3, k), torch.float32, DEVICE)
        b = to_torch(C.expand_weights(rng, comp, offsets[-1]), torch.float32, DEVICE)
        base = to_torch(C.base_output(rng, comp, offsets[-1]), torch.float32, DEVICE)
        ref = C.ref_stacked(comp, to_f64(x), to_f64(a), to_f64(b), offsets, to_f64(base))
        out = backend.run_qkv_lora(x, a, b, off_t, n, base_output=base)
        check = C.compare(to_f64(out), ref, "float32")
        assert check.ok, f"{comp}: {check.detail}"


def test_fp16_decode_many_slots(rng):
    """More slots than one group block, one token each: the decode layout on the interpreter."""
    comp = C.decode_composition(rng, tokens=40, num_lora=20, max_r=16)
    k = 64
    x = to_torch(C.activations(rng, comp, k), torch.float16, DEVICE)
    a = to_torch(C.shrink_weights(rng, comp, 2, k), torch.float16, DEVICE)
    bi = batch_info(comp, DEVICE)
    plan = tiling.heuristic_shrink(comp.tokens, k, 32, 20, 8)
    out = lora_shrink(x, a, 2, bi, plan=plan)
    check = C.compare(to_f64(out), C.ref_shrink(comp, to_f64(x), to_f64(a), 2), "float16")
    assert check.ok, check.detail
    np.testing.assert_array_equal(to_f64(out)[:, 2 * 16 :], 0.0)


def test_float32_plans_fit_shared_memory():
    """A table tuned for 16-bit inputs must still launch for float32 (twice the bytes per tile)."""
    limit = 232_448  # an H100's opt-in shared memory per block
    for plan in (tiling.ShrinkPlan(64, 32, 1, 128, 4, 4, 4, group_grid=True), tiling.ShrinkPlan(64, 64, 3, 128, 1, 4, 3)):
        fitted = tiling.fit_shrink(plan, 4, limit)
        assert tiling.shrink_smem(fitted, 4) <= limit and fitted.split_k == plan.split_k
        assert tiling.fit_shrink(plan, 2, limit) == plan, "16-bit plans within the limit are kept as tuned"
    wide = tiling.ExpandPlan(128, 64, 16, 4, 2)
    assert tiling.expand_smem(tiling.fit_expand(wide, 128, 4, limit), 128, 4) <= limit


# ---- programmatic dependent launch (the two-launch decode qkv / gate-up) ---------------------------------


@pytest.mark.parametrize("seg_lens, pdl", [([1] * 12, True), ([300, 200], False)], ids=["decode", "prefill"])
def test_decode_launches_are_chained_by_pdl(monkeypatch, seg_lens, pdl):
    """On decode-sized batches every shrink lets the next kernel launch at its start, and every expand is a
    programmatic dependent of the kernel before it: after its own shrink it loads early (PDL_SHRINK), alone it
    waits first (PDL_ANY). Prefill batches launch plainly (PDL was measured 5-14% slower there on the H200).
    Where the device has no PDL (the CPU interpreter) the launch is a plain one and the result right."""
    from lora.triton import backend as tb

    calls = []
    real_shrink, real_expand = tb.lora_shrink, tb.lora_expand
    monkeypatch.setattr(tb, "lora_shrink", lambda *a, **k: calls.append(("shrink", k.get("pdl_trigger")))
                        or real_shrink(*a, **{**k, "pdl_trigger": False}))  # the interpreter has no PDL
    monkeypatch.setattr(tb, "lora_expand", lambda *a, **k: calls.append(("expand", k.get("pdl"))) or real_expand(*a, **k))
    monkeypatch.setattr(tb.tiling, "plan_fused", lambda *a, **k: None)  # the two-launch path
    monkeypatch.setattr(tb.tiling, "pdl_supported", lambda device: True)  # what pdl_chain sees on a Hopper GPU
    monkeypatch.setattr(tb.tiling, "pdl_launch", lambda mode, device: {})  # ... while the interpreter launches plainly
    n = len(seg_lens)
    comp = C.Composition(seg_lens, [i % 3 for i in range(n)], [16, 8, 16], [0.5, 1.0, 2.0], 16, sum(seg_lens))
    be = lora.get_backend_from_name("triton")("triton", batch_info(comp, DEVICE))
    for op in ("gate_up", "shrink2", "expand"):
        check, _ = C.run_op(be, C.contract_op(op, 64, 48), comp, "float16", device=DEVICE, seed=5)
        assert check.ok, check.detail
    any_, shrink_ = (tiling.PDL_ANY, tiling.PDL_SHRINK) if pdl else (0, 0)
    assert calls == [("shrink", pdl), ("expand", shrink_), ("shrink", pdl), ("expand", any_)]
    assert tiling.pdl_chain(comp.tokens, 3, DEVICE) == pdl
    monkeypatch.undo()
    if DEVICE == "cpu":
        assert not tiling.pdl_supported("cpu") and tiling.pdl_launch(tiling.PDL_ANY, "cpu") == {}
        assert not tiling.pdl_chain(12, 3, "cpu")


def test_multi_slice_expand_primitive_on_a_fresh_backend():
    """The harness calls the 2-3 slice expand primitive directly: on a fresh backend, a batch with rows past
    its segments must get metadata sized for x's rows, as a public op would (it raised before)."""
    comp = C.Composition([7], [0], [8], [0.5], 8, 12)
    be = lora.get_backend_from_name("triton")("triton")
    op = C.ResolvedOp("expand_qkv", "expand", 0, (0, 32, 48, 64), 3)
    check, _ = C.run_op(be, op, comp, "float16", device=DEVICE, seed=3)
    assert check.ok, check.detail
