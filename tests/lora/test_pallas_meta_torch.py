"""The pallas backend's torch path on the CPU: metadata derived once per batch (``prepare``), the plan
and the torch executor, with the Mosaic kernels replaced by a torch model of what they compute.

* The metadata built by :mod:`lora.pallas.meta` through the torch executor, against a plain-Python
  model of the layout in :mod:`lora.pallas.tiling`.
* The whole op path (validation, ``prepare`` / ``reserve``, plan, padding, float32 split, split-K
  workspace and its ordered sum, shifted slice windows, write-back) against the float64 oracle with poisoned
  inputs, the kernels modelled in torch from the same metadata and configurations (the real kernels
  run in ``tests/pallas`` in interpret mode and in ``tests/gpu``).
"""

from __future__ import annotations

import pytest
import torch

from lora import LoRABatchInfo
from lora.pallas import meta as M
from lora.pallas import plan as P
from lora.pallas import tiling as T
from lora.pallas.backend import PallasLoRABackend, TorchExecutor
from lora import testing as C
from lora.testing import batch_info


def run_op(backend, op: str, comp, rng, dtype_name: str, device, *, k: int, n: int, kv: int | None = None):
    """``op`` of lora.testing.OPS at widths k, n (QKV: q=n, kv) on fresh poisoned inputs: (Check, output)."""
    return C.run_op(backend, C.contract_op(op, k, n, kv), comp, dtype_name, device=device, seed=int(rng.integers(2**31)))

# ---- the layout -------------------------------------------------------------------------------------


def model_meta(lens, slots, ranks, groups):
    L, BM = len(ranks), T.BM
    n = M.rows_covered(groups)
    row_slot = [-1] * n
    r0 = 0
    for length, w in zip(lens, slots):
        for r in range(r0, min(r0 + length, n)):
            if ranks[w] > 0:
                row_slot[r] = w
        r0 += length
    lay = T.MetaLayout(L)
    meta = model_chunks(row_slot, lay)
    present = [sorted(set(v for v in row_slot[g * BM : (g + 1) * BM] if v >= 0)) for g in range(groups)]
    units = {u: model_extra_units([len(p) for p in present], u) for u in T.UNIT_SIZES}
    for g in range(groups):
        rec = [len(present[g])] + present[g] + sorted(set(range(L)) - set(present[g]))
        for u in T.UNIT_SIZES:
            rec += units[u][g]
        rec += [0] * (lay.head - len(rec))
        for k in range(T.SHIFTS):
            rec += row_slot[g * BM + k : g * BM + k + T.BOX_SPAN]
        assert len(rec) == lay.record
        meta += rec
    return meta


def model_extra_units(counts, unit):
    """Per group: its first extra unit's number, then (group, first adapter) of extra unit number g
    ((-1, 0): none). Every unit of ``unit`` adapters of a group after its first is an extra unit."""
    extra = [max(-(-n // unit) - 1, 0) for n in counts]
    first = [sum(extra[:g]) for g in range(len(counts))]
    owners = [(g, unit * (1 + i)) for g in range(len(counts)) for i in range(extra[g])]
    owners += [(-1, 0)] * len(counts)
    return [[first[g], *owners[g]] for g in range(len(counts))]


def model_chunks(row_slot, lay):
    """The chunk table: each slot's rows among the first 256, ascending, in chunks of <= 64."""
    rows = row_slot[: T.SPLIT_MAX_BLOCKS * T.BM]
    rows += [-1] * (T.SPLIT_MAX_BLOCKS * T.BM - len(rows))
    table = []
    for w in range(lay.num_lora):
        mine = [i for i, v in enumerate(rows) if v == w]
        table += [(w, mine[i : i + T.BM]) for i in range(0, len(mine), T.BM)]
    assert len(table) <= lay.chunks
    out = []
    for c in range(lay.chunks):
        w, members = table[c] if c < len(table) else (None, [])  # None: unspecified
        out += [w, len(members)] + [0] * (T.CHUNK - T.BM - 2) + members + [None] * (T.BM - len(members))
    return out


CASES = [
    ([70, 0, 10, 50], [2, 1, 0, 2], [0, 16, 16], 133),  # empty segment, rank-0 slot, trailing rows
    ([1] * 64, [i % 8 for i in range(64)], [16] * 8, 64),  # decode
    ([3, 5], [1, 0], [4, 0], 20),  # fewer than 64 rows, rank-0 slot
    ([], [], [8, 8], 40),  # no segments
    ([300, 700, 24], [3, 0, 3], [16, 9, 0, 64], 1100),  # prefill, partial last block
    ([64, 64], [0, 1], [8, 8], 128),  # exact blocks
    ([100, 30], [0, 1], [8, 8], 130),  # the last block's box (rows 66..129) spans two groups
]


@pytest.mark.parametrize("lens,slots,ranks,s", CASES)
def test_meta_matches_the_layout(lens, slots, ranks, s):
    bi = LoRABatchInfo.from_segments(lens, slots, ranks, [1.0] * len(ranks), device="cpu")
    groups = T.padded_tokens(s) // T.BM
    meta = M.build(TorchExecutor("cpu", launcher=lambda *a: None), bi.seg_indptr, bi.weight_indices,
                             bi.lora_ranks, bs=bi.bs, num_lora=bi.num_lora, groups=groups)
    want_meta = model_meta(lens, slots, ranks, groups)
    assert meta.dtype == torch.int32 and meta.shape == (T.MetaLayout(len(ranks)).length(groups * T.BM),)
    got = meta.tolist()
    # entries past a chunk's rows (and an unused chunk's slot) are unspecified (None in the model)
    assert [g if w is not None else None for g, w in zip(got, want_meta)] == want_meta
    # a box starting at any row reads that row and the next 63 (what the kernels rely on)
    lay = T.MetaLayout(len(ranks))
    slot_of = model_row_slots(lens, slots, ranks, groups * T.BM)
    for p in range(0, groups * T.BM - T.BM + 1):
        off = lay.box_offset(p)
        assert off % 4 == 0  # 16-byte aligned TMA start
        assert meta[off : off + T.BM].tolist() == slot_of[p : p + T.BM]


@pytest.mark.parametrize("lens,slots,ranks,s", CASES)
def test_meta_without_units_differs_only_in_the_units(lens, slots, ranks, s):
    """build(units=False) (what prepare asks for where no call can run the block shrink) leaves every group's
    extra-unit entries 0 and the rest as build() writes it; the torch executor's kept layout arrays give the
    same metadata on a second build."""
    bi = LoRABatchInfo.from_segments(lens, slots, ranks, [1.0] * len(ranks), device="cpu")
    groups = T.padded_tokens(s) // T.BM
    ex = TorchExecutor("cpu", launcher=lambda *a: None)
    args = (bi.seg_indptr, bi.weight_indices, bi.lora_ranks)
    kw = dict(bs=bi.bs, num_lora=bi.num_lora, groups=groups)
    full, without = M.build(ex, *args, **kw), M.build(ex, *args, units=False, **kw)
    assert ex._consts and torch.equal(M.build(ex, *args, **kw), full)
    lay = T.MetaLayout(len(ranks))
    units = {lay.extra(g, u) + i for g in range(groups) for u in T.UNIT_SIZES for i in range(3)}
    for i, (a, b) in enumerate(zip(full.tolist(), without.tolist())):
        assert b == (0 if i in units else a), i


def test_prepare_leaves_out_the_units_only_where_no_call_reads_them(rng, model, monkeypatch):
    """Decode-sized buffers (at most SPLIT_MAX_BLOCKS groups) skip the extra units, unless the backend's
    Tuning lets the block shrink run on such batches; prefill-sized buffers always have them."""
    seen = []
    real = M.build
    monkeypatch.setattr(M, "build", lambda *a, **k: seen.append(k["units"]) or real(*a, **k))
    backend(batch_info(C.decode_composition(rng, 64, 8, 16), "cpu"))
    backend(batch_info(C.decode_composition(rng, 256, 8, 16), "cpu"))
    backend(batch_info(C.decode_composition(rng, 320, 8, 16), "cpu"))
    PallasLoRABackend("pallas", batch_info(C.decode_composition(rng, 64, 8, 16), "cpu"),
                      tuning=T.Tuning(split_max_blocks=0))
    assert seen == [False, False, True, True]
    assert T.Tuning().split_blocks == T.SPLIT_MAX_BLOCKS and T.Tuning(split_max_blocks=0).split_blocks == 0


def test_prepare_of_a_decode_batch_runs_few_torch_ops(rng, model):
    """prepare derives the metadata inside every decode step's graph, each torch op a kernel there (session 38
    on the H100: 144 kernels took 222 us a batch, 79 took 141). Once the layout-only arrays are kept, a
    decode batch's prepare runs at most 42 torch ops that are neither views nor indexing (session 40: 40; 50
    before the row slots were taken from per-segment slots and the chunk table was rewritten with fewer ops)."""
    from torch.overrides import TorchFunctionMode

    views = {"reshape", "view", "__getitem__", "dim", "size", "__get__", "numel", "data_ptr", "is_floating_point"}

    class Count(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", str(func))
            if name not in views:
                self.ops.append(name)
            return func(*args, **(kwargs or {}))

    be = backend(batch_info(C.decode_composition(rng, 64, 8, 16), "cpu"))
    bi = batch_info(C.decode_composition(rng, 64, 8, 16), "cpu")
    with Count() as count:
        be.set_batch_info(bi)
    assert 0 < len(count.ops) <= 42, (len(count.ops), count.ops)


def model_row_slots(lens, slots, ranks, n):
    out, r0 = [-1] * n, 0
    for length, w in zip(lens, slots):
        for r in range(r0, min(r0 + length, n)):
            out[r] = w if ranks[w] > 0 else -1
        r0 += length
    return out


# ---- a torch model of the kernels ----------------------------------------------------------------------


def cfg_is_block_shrink(cfg) -> bool:
    return hasattr(cfg, "split") and not cfg.split


class KernelModel:
    """What the Mosaic kernels compute, in torch, from the same arguments (checked on the GPU against
    the kernels themselves). Rows >= s of the block variant's output are left as NaN (garbage)."""

    def __init__(self):
        self.launches = []
        self.outputs = []  # the output tensors of each launch

    def __call__(self, kind, cfg, inputs, outputs, device):
        self.launches.append((kind, cfg))
        self.outputs.append(outputs)
        {"shrink": self._shrink, "expand": self._expand, "parts": self._parts}[kind](cfg, inputs, outputs)

    @staticmethod
    def _parts(cfg, inputs, outputs):
        (nrows, parts), (out,) = inputs, outputs
        s = int(nrows[0])
        assert tuple(parts.shape) == (cfg.nb, cfg.tiles, T.BM, cfg.in_cols) and parts.dtype == torch.float32
        assert out.shape[1] == cfg.out_cols and out.dtype == getattr(torch, cfg.out_dtype)
        assert out.shape[0] == cfg.bpad or (cfg.tail and s <= out.shape[0] <= cfg.bpad), (out.shape, s)
        total = parts[:, 0, :, : cfg.na].clone()
        for t in range(1, cfg.tiles):  # index order, as the kernel adds them
            total += parts[:, t, :, : cfg.na]
        rows = total.reshape(cfg.bpad, cfg.na).clone()
        m = s % T.BM
        if cfg.tail and s > T.BM and m:  # the partial last block's tiles hold its clamped box
            rows[s - m : s] = total[s // T.BM, T.BM - m :]
        out[:s, : cfg.na] = rows[:s].to(out.dtype)  # rows < s only

    @staticmethod
    def _blocks(cfg, meta, s):
        lay = T.MetaLayout(cfg.num_lora)
        for b in range(cfg.nb):
            row_lo = b * T.BM
            if row_lo >= s:
                continue
            tail = cfg.tail and row_lo + T.BM > s
            rx = max(s - T.BM, 0) if tail else row_lo
            count = int(meta[lay.group(b)])
            slots = [int(v) for v in meta[lay.group(b) + 1 : lay.group(b) + 1 + count]]
            if tail and b > 0 and cfg_is_block_shrink(cfg):  # the block shrink also runs the block before's
                prev = lay.group(b - 1)
                slots += [int(v) for v in meta[prev + 1 : prev + 1 + int(meta[prev])]]
            off = lay.box_offset(rx)
            rs = meta[off : off + T.BM].long()
            yield row_lo, rx, tail, slots, rs

    def _shrink(self, cfg, inputs, outputs):
        meta, nrows, ranks, x, *rest = inputs
        x_tail = rest.pop(0) if cfg.tail else None
        a = rest.pop(0)
        s = int(nrows[0])
        out = outputs[0]
        parts = cfg.split or cfg.ksplit > 1
        if parts:  # (nb, tiles, 64, na_out) partial tiles: the model puts each block's in tile 0
            tiles = cfg.ksplit * (cfg.num_lora if cfg.split else 1)
            assert tuple(out.shape) == (cfg.nb, tiles, T.BM, cfg.na_out)
            out.fill_(float("nan"))
            out[:, :, :, : cfg.na] = 0.0
        else:
            out.fill_(float("nan"))
        cols = torch.arange(cfg.na)
        for row_lo, rx, tail, slots, rs in self._blocks(cfg, meta, s):
            xb = (x_tail if tail else x[rx : rx + T.BM]).double()
            tile = torch.zeros(T.BM, cfg.na, dtype=torch.float64)
            for w in slots:
                keep = (rs[:, None] == w) & (cols[None, :] < cfg.stack * int(ranks[w]))
                tile = torch.where(keep, xb @ a[w].double().T, tile)
            if cfg.split:  # rows of the block before are masked (zero)
                tile[: row_lo - rx] = 0.0
                out[row_lo // T.BM, 0, :, : cfg.na] = tile.float()
            elif parts:  # the K-split block variant: its box tile (rows of the block before included)
                out[row_lo // T.BM, 0, :, : cfg.na] = tile.float()
            else:  # the whole box (rows of the block before: the same values it writes), x's dtype
                assert tuple(out.shape[1:]) == (cfg.out_cols,) and out.dtype == getattr(torch, cfg.out_dtype)
                assert rx + T.BM <= out.shape[0], "a block box past the output's rows"
                out[rx : rx + T.BM, : cfg.na] = tile.float().to(out.dtype)

    def _expand(self, cfg, inputs, outputs):
        meta, nrows, ranks, scal, offs, x, *rest = inputs
        x_tail = rest.pop(0) if cfg.tail else None
        b, base = rest
        s = int(nrows[0])
        op = getattr(torch, cfg.op_dtype)
        kr = cfg.kr
        q = 16 // x.element_size()
        offs = [int(v) for v in offs]
        if cfg.gather and all(o % cfg.block_n == 0 for o in offs):
            return self._expand_gather(cfg, meta, ranks, scal, offs, x, b, base)
        for row_lo, rx, tail, slots, rs in self._blocks(cfg, meta, s):
            xb = x_tail if tail else x[rx : rx + T.BM]
            rows = slice(row_lo, min(row_lo + T.BM, s))
            own = slice(row_lo - rx, min(row_lo + T.BM, s) - rx)
            for w in slots:
                r = int(ranks[w])
                for j in range(cfg.stack):
                    start = j * r  # the kernel reads it through an aligned window, shifted (x_shift)
                    if not cfg.x_shift:
                        assert start % q == 0, "a slice off a 16-byte boundary without x_shift"
                    if not cfg.tail:  # (the torch executor's windows may run past x's last column: TMA reads 0)
                        assert start - start % q + cfg.kw <= xb.shape[1], "x window past the buffer's columns"
                    xw = torch.zeros(xb.shape[0], kr)
                    xw[:, : xb.shape[1] - start] = xb[:, start : start + kr].float()
                    xw = torch.where(torch.arange(kr)[None, :] < r, xw, 0.0)
                    hi = xw.to(op)
                    xop = hi if cfg.x_part == 0 else (xw - hi.float()).to(op)
                    bw = b[w, offs[j] : offs[j + 1], :kr].float()
                    bw = torch.where(torch.arange(kr)[None, :] < r, bw, 0.0).to(op)
                    acc = xop.double() @ bw.double().T
                    keep = rs[own] == w
                    old = base[rows, offs[j] : offs[j + 1]]
                    new = (old.float() + (acc[own] * float(scal[w])).float()).to(base.dtype)
                    base[rows, offs[j] : offs[j + 1]] = torch.where(keep[:, None], new, old)

    @staticmethod
    def _expand_gather(cfg, meta, ranks, scal, offs, x, b, base):
        """The decode kernel: a chunk's rows, its adapter's product per slice, x scaled before its
        rounding to the operand dtype, each row's update added to base by a TMA reduce-add."""
        lay = T.MetaLayout(cfg.num_lora)
        op = getattr(torch, cfg.op_dtype)
        kr, q = cfg.kr, 16 // x.element_size()
        kx = min(cfg.gather_cols, cfg.na)
        for c in range(cfg.nb + cfg.num_lora):
            w, n = int(meta[lay.chunk(c)]), int(meta[lay.chunk(c) + 1])
            if n == 0:
                continue
            rows = meta[lay.chunk(c) + T.CHUNK - T.BM : lay.chunk(c) + T.CHUNK - T.BM + n].long()
            r = int(ranks[w])
            for j in range(cfg.stack):
                start = j * r if cfg.x_shift else 0
                if not cfg.tail:
                    assert start - start % q + kx <= x.shape[1], "gathered x rows past the buffer's columns"
                xw = torch.zeros(n, kr)
                width = min(kr, x.shape[1] - start)
                xw[:, :width] = x[rows, start : start + width].float()
                xw = torch.where(torch.arange(kr)[None, :] < r, xw * float(scal[w]), 0.0)
                hi = xw.to(op)
                xop = hi if cfg.x_part == 0 else (xw - hi.float()).to(op)
                bw = b[w, offs[j] : offs[j + 1], :kr].float()
                bw = torch.where(torch.arange(kr)[None, :] < r, bw, 0.0).to(op)
                # the update rounded to base's dtype, then added by the TMA reduce-add (two roundings)
                acc = (xop.double() @ bw.double().T).to(base.dtype)
                base[rows, offs[j] : offs[j + 1]] = (base[rows, offs[j] : offs[j + 1]].float() + acc.float()).to(base.dtype)


@pytest.fixture
def model(monkeypatch):
    m = KernelModel()
    monkeypatch.setattr(PallasLoRABackend, "launcher", m)
    # the kernels are modelled in torch: the backend runs here whether or not jax could
    monkeypatch.setattr(PallasLoRABackend, "unavailable_reason", classmethod(lambda cls: None))
    return m


def backend(bi=None, **kw):
    return PallasLoRABackend("pallas", bi, **kw)


@pytest.mark.parametrize("dtype_name", ["float16", "float32"])
@pytest.mark.parametrize("op", ["shrink1", "shrink3", "expand", "qkv", "gate_up"])
def test_torch_path_against_the_oracle(op, dtype_name, rng, model):
    comp = C.random_composition(rng)
    check, _ = run_op(backend(), op, comp, rng, dtype_name, "cpu", k=72, n=80, kv=24)
    assert check.ok, f"{op} {dtype_name} {comp}: {check.detail}"


@pytest.mark.parametrize("op", ["shrink2", "qkv"])
def test_torch_path_block_variant(op, rng, model):
    """More than 4 blocks (one CTA per block), a partial last block read through the tail view."""
    lens = [int(v) for v in rng.integers(0, 120, 7)] + [150]
    comp = C.Composition(lens, [int(v) for v in rng.integers(0, 4, 8)], [16, 0, 7, 12], [0.5, 1.0, 2.0, 1.5], 16,
                         sum(lens) + 5)
    check, _ = run_op(backend(), op, comp, rng, "float16", "cpu", k=64, n=64, kv=32)
    assert check.ok, f"{op} {comp}: {check.detail}"
    assert any(k == "shrink" and not cfg.split for k, cfg in model.launches)


def test_metadata_is_derived_once_per_batch(rng, model, monkeypatch):
    """Op calls launch only: the metadata is derived by set_batch_info (prepare), not per call."""
    comp = C.decode_composition(rng, 64, 8, 16)
    be = backend(batch_info(comp, "cpu"))
    calls = []
    real = M.build
    monkeypatch.setattr(M, "build", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(comp.tokens, 64, dtype=torch.float16)
    a = torch.randn(8, 48, 64, dtype=torch.float16)
    b = torch.randn(8, 192, 16, dtype=torch.float16)
    off = torch.tensor([0, 64, 128, 192], dtype=torch.int32)
    for _ in range(3):
        be.run_qkv_lora(x, a, b, off, 64)
        be.run_lora_a_sgemm(x, a, 3)
    assert calls == []
    be.set_batch_info(batch_info(C.decode_composition(rng, 64, 8, 16), "cpu"))
    assert calls == [1]


def test_reserve_fixes_the_buffers(rng, model):
    comp = C.decode_composition(rng, 64, 8, 16)
    be = backend()
    be.reserve(max_tokens=256, max_segments=256)
    be.set_batch_info(batch_info(comp, "cpu"))
    meta = be._meta
    be.set_batch_info(batch_info(C.decode_composition(rng, 200, 8, 16), "cpu"))
    assert be._meta.data_ptr() == meta.data_ptr()
    x = torch.randn(300, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="max_tokens"):
        be.run_lora_a_sgemm(x, torch.randn(8, 16, 64, dtype=torch.float16))


def test_new_values_copied_in_place_are_picked_up_by_set_batch_info(rng, model):
    """The CUDA-graph flow: new values are copied into the same batch-info tensors, then
    set_batch_info re-derives into the same buffers (a replay reads them)."""
    comps = [C.decode_composition(rng, 64, 8, 16) for _ in range(2)]
    bi = batch_info(comps[0], "cpu")
    be = backend()
    be.reserve(max_tokens=64, max_segments=64)
    be.set_batch_info(bi)
    new = batch_info(comps[1], "cpu")
    for f in ("seg_lens", "seg_indptr", "weight_indices", "lora_ranks", "scalings"):
        getattr(bi, f).copy_(getattr(new, f))
    be.set_batch_info(bi)
    comp = comps[1]
    f16 = lambda a: torch.from_numpy(a).to(torch.float16)  # noqa: E731
    x, a = f16(C.activations(rng, comp, 64)), f16(C.shrink_weights(rng, comp, 2, 64))
    b, base = f16(C.expand_weights(rng, comp, 128)), f16(C.base_output(rng, comp, 128))
    ref = C.ref_stacked(comp, *(t.double().numpy() for t in (x, a, b)), [0, 64, 128], base.double().numpy())
    out = be.run_gate_up_lora(x, a, b, base_output=base)
    check = C.compare(out.double().numpy(), ref, "float16")
    assert check.ok, check.detail


def test_expand_with_max_r_zero_returns_base(model):
    """SGLang passes weight buffers with max_r = 0 when no adapter is loaded: nothing to add."""
    bi = LoRABatchInfo.from_segments([5, 3], [0, 1], [0, 0], [1.0, 1.0], device="cpu")
    be = backend(bi)
    base = torch.randn(8, 32, dtype=torch.float16)
    out = be.run_lora_b_sgemm(torch.empty(8, 0, dtype=torch.float16), torch.empty(2, 32, 0, dtype=torch.float16),
                              base_output=base.clone())
    assert torch.equal(out, base)
    assert model.launches == []
    assert P.plan_expand(64, 32, 0, 1, 2, "float16", "float16", "float16", internal=False, tail=True).noop


def test_plan_is_shape_only_and_memoised():
    p1 = P.plan_shrink(64, 4096, 16, 3, 8, "bfloat16", tail=True)
    p2 = P.plan_shrink(64, 4096, 16, 3, 8, "bfloat16", tail=True)
    assert p1 is p2 and p1.cfg.split
    assert P.plan_shrink(8192, 4096, 16, 3, 8, "bfloat16", tail=True).cfg.split is False
    f32 = P.plan_expand(64, 6144, 16, 3, 8, "float32", "float32", "float32", internal=True, tail=True)
    assert f32.b_parts == (0, 1, 0) and [c.x_part for c in f32.cfgs] == [0, 0, 1]


def test_tuning_overrides_the_plan():
    t = T.Tuning(split_max_blocks=0, shrink_stages=2, expand_block_n=64, expand_stages=1)
    sp = P.plan_shrink(64, 4096, 16, 3, 8, "bfloat16", tail=True, tuning=t)
    assert not sp.cfg.split and sp.cfg.stages == 2
    ep = P.plan_expand(64, 6144, 16, 3, 8, "float32", "bfloat16", "bfloat16", internal=True, tail=True, tuning=t)
    assert ep.cfgs[0].block_n == 64 and ep.cfgs[0].stages == 1
    with pytest.raises(ValueError, match="shrink_ksplit"):
        P.plan_shrink(64, 4096, 16, 3, 8, "bfloat16", tail=True, tuning=T.Tuning(shrink_ksplit=7))
    with pytest.raises(ValueError, match="expand_block_n"):
        T.Tuning(expand_block_n=100)
    with pytest.raises(TypeError, match="tuning"):
        PallasLoRABackend("pallas", tuning={"expand_block_n": 64})


def test_tuned_backend_runs_the_override(rng, model):
    comp = C.decode_composition(rng, 64, 8, 16)
    be = backend(tuning=T.Tuning(split_max_blocks=0))
    check, _ = run_op(be, "qkv", comp, rng, "float16", "cpu", k=64, n=64, kv=32)
    assert check.ok, check.detail
    assert all(not cfg.split for k, cfg in model.launches if k == "shrink")


def test_a_call_plans_nothing_twice(rng, model, monkeypatch):
    """The plan is memoised per shape: a second fused call computes no kernel configuration (the
    expand's used to be computed three times per call)."""
    comp = C.decode_composition(rng, 64, 8, 16)
    be = backend(batch_info(comp, "cpu"))
    x = torch.randn(comp.tokens, 64, dtype=torch.float16)
    a = torch.randn(8, 48, 64, dtype=torch.float16)
    b = torch.randn(8, 192, 16, dtype=torch.float16)
    off = torch.tensor([0, 64, 128, 192], dtype=torch.int32)
    be.run_qkv_lora(x, a, b, off, 64)
    calls = []
    for name in ("expand_config", "shrink_config"):
        real = getattr(P, name)
        monkeypatch.setattr(P, name, lambda *args, _r=real, _n=name, **kw: calls.append(_n) or _r(*args, **kw))
    be.run_qkv_lora(x, a, b, off, 64)
    for name in ("parts_config",):
        real = getattr(P, name)
        monkeypatch.setattr(P, name, lambda *args, _r=real, _n=name, **kw: calls.append(_n) or _r(*args, **kw))
    be.run_qkv_lora(x, a, b, off, 64)
    assert calls == []
    # split shrink, sum of its partial tiles, expand: three times
    assert [k for k, _ in model.launches] == ["shrink", "parts", "expand"] * 3


@pytest.mark.parametrize("tokens", [130, 100, 64, 20])
def test_split_partials_placed_at_their_rows(tokens, rng, model):
    """Split-K shrink (<= 4 blocks): each block's summed tile at its rows, the partial last block's
    clamped box moved in place (130 tokens: block 2 holds rows 128..129, its box 66..129; block 3
    has no rows)."""
    comp = C.decode_composition(rng, tokens, 8, 16)
    for op in ("shrink3", "qkv"):
        check, _ = run_op(backend(), op, comp, rng, "float16", "cpu", k=64, n=64, kv=32)
        assert check.ok, f"{op} {tokens}: {check.detail}"
    assert all(cfg.split for k, cfg in model.launches if k == "shrink")


@pytest.mark.parametrize("tokens", [300, 330, 1000])
def test_block_variant_with_k_split(tokens, rng, model):
    """Tuning(shrink_ksplit=2) on prefill-sized batches: the block shrink's K loop over two CTAs per
    block, partial tiles added by the executor (a partial last block's box moved to its rows)."""
    comp = C.Composition([tokens - 50, 50], [0, 2], [16, 0, 7], [0.5, 1.0, 2.0], 16, tokens)
    be = backend(tuning=T.Tuning(shrink_ksplit=2))
    for op in ("shrink3", "gate_up"):
        check, _ = run_op(be, op, comp, rng, "float16", "cpu", k=128, n=64, kv=32)
        assert check.ok, f"{op} {tokens}: {check.detail}"
    assert any(k == "shrink" and not cfg.split and cfg.ksplit == 2 for k, cfg in model.launches)


# ---- no device allocation in an op call after warm-up (issue 15) ----------------------------------------


class _Allocations(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every op that returns a tensor on storage none of its arguments had (a new allocation:
    factories, but also ``sum``, ``sub``, ``clone``, ``to`` ...); views and in-place or ``out=`` ops
    are not allocations. Paused while the (torch-modelled) kernels run."""

    def __init__(self):
        super().__init__()
        self.made: list[str] = []
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.paused:
            leaves = torch.utils._pytree.tree_leaves
            seen = {t.untyped_storage().data_ptr() for t in leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            for t in leaves(out):
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                    self.made.append(func.overloadpacket.__name__)
        return out


class _PausedModel:
    """The kernel model, with the allocation count paused while it runs (the real kernels allocate nothing)."""

    def __init__(self, model, mode):
        self.model, self.mode = model, mode

    def __call__(self, *args):
        self.mode.paused += 1
        try:
            return self.model(*args)
        finally:
            self.mode.paused -= 1


ALLOC_CASES = [  # (tokens, K, N, max_r, dtype, tuning, misaligned x)
    (64, 64, 64, 16, torch.float16, None, False),  # decode: split-K shrink, summed partials
    (20, 72, 80, 12, torch.float16, None, False),  # < 64 rows, K / N / max_r padded copies
    (130, 64, 64, 16, torch.float16, None, False),  # split-K, partial last block moved to its rows
    (300, 128, 64, 16, torch.float16, None, False),  # block shrink
    (330, 128, 64, 16, torch.float16, T.Tuning(shrink_ksplit=2), False),  # block shrink split over K
    (64, 64, 64, 16, torch.float32, None, False),  # float32: bf16 hi/lo parts, three products added
    (70, 64, 64, 16, torch.float16, None, True),  # x not 16-byte aligned (an aligned copy)
]


@pytest.mark.parametrize("tokens,k,n,r,dtype,tuning,misaligned", ALLOC_CASES)
def test_op_calls_allocate_only_their_outputs_after_warmup(tokens, k, n, r, dtype, tuning, misaligned, rng, model,
                                                           monkeypatch):
    """After one warm-up call, a call allocates only the outputs the caller did not pass: a shrink's
    output (one tensor), nothing for expand / QKV / gate-up into the caller's base_output (what
    tests/gpu/test_graph_safety.py measures on the GPU). Repeated calls give the same bits."""
    mode = _Allocations()
    monkeypatch.setattr(PallasLoRABackend, "launcher", _PausedModel(model, mode))
    num_lora = 4
    lens = [tokens - tokens // 3, tokens // 3]
    comp = C.Composition(lens, [1, 3], [r, 0, r - 4, r // 2], [0.5, 1.0, 2.0, 1.5], r, tokens)
    be = backend(batch_info(comp, "cpu"), tuning=tuning)
    if misaligned:
        x = torch.randn(tokens * k + 1, dtype=dtype)[1:].view(tokens, k)
        assert x.data_ptr() % 16
    else:
        x = torch.randn(tokens, k, dtype=dtype)
    w = lambda *shape: torch.randn(*shape, dtype=dtype) / shape[-1] ** 0.5  # noqa: E731
    q, kv = n, 32
    qkv_off = torch.tensor([0, q, q + kv, q + 2 * kv], dtype=torch.int32)
    a1, a2, a3 = w(num_lora, r, k), w(num_lora, 2 * r, k), w(num_lora, 3 * r, k)
    b1, b2, b3 = w(num_lora, n, r), w(num_lora, 2 * n, r), w(num_lora, q + 2 * kv, r)
    xa = torch.randn(tokens, r, dtype=dtype)
    base1, base2, base3 = torch.randn(tokens, n, dtype=dtype), torch.randn(tokens, 2 * n, dtype=dtype), \
        torch.randn(tokens, q + 2 * kv, dtype=dtype)
    ops = {
        "shrink": (1, lambda: be.run_lora_a_sgemm(x, a1)),
        "shrink3": (1, lambda: be.run_lora_a_sgemm(x, a3, 3)),
        "expand": (0, lambda base: be.run_lora_b_sgemm(xa, b1, base_output=base), base1),
        "qkv": (0, lambda base: be.run_qkv_lora(x, a3, b3, qkv_off, q, base_output=base), base3),
        "gate_up": (0, lambda base: be.run_gate_up_lora(x, a2, b2, base_output=base), base2),
    }
    calls = 3
    for op, (allowed, fn, *base) in ops.items():
        bases = [b.clone() for b in base * (calls + 1)]
        first = fn(*bases[:1])  # warm-up: sizes the scratch
        mode.made.clear()
        outs = []
        with mode:
            for i in range(calls):
                outs.append(fn(*bases[1 + i : 2 + i]))
        assert mode.made.count("empty") == allowed * calls and len(mode.made) == allowed * calls, (
            f"{op}: {len(mode.made)} allocations in {calls} calls after warm-up, expected {allowed * calls} "
            f"(the outputs the caller did not pass): {mode.made}"
        )
        for out in outs:
            assert torch.equal(out, first), f"{op}: a repeated call gave other bits"


def test_row_counts_are_views_of_one_table(rng, model):
    """The (1,) row count a kernel reads is a 16-byte aligned view of a table ``prepare`` writes into
    a persistent buffer: no tensor per token count (the old per-count cache was cleared after 256
    counts, freeing tensors a captured graph could still read)."""
    be = backend()
    be.reserve(max_tokens=300, max_segments=256)
    be.set_batch_info(batch_info(C.decode_composition(rng, 8, 4, 16), "cpu"))
    table = be._nrows(1).untyped_storage().data_ptr()
    for s in range(1, 301):
        t = be._nrows(s)
        assert t.shape == (1,) and t.dtype == torch.int32 and int(t[0]) == s
        assert t.data_ptr() % 16 == 0 and t.untyped_storage().data_ptr() == table
    be.set_batch_info(batch_info(C.decode_composition(rng, 200, 4, 16), "cpu"))  # re-derived in place
    assert be._nrows(300).untyped_storage().data_ptr() == table and int(be._nrows(300)[0]) == 300
    be.reserve(max_tokens=500, max_segments=256)  # new buffers: the table is written again
    assert [int(be._nrows(s)[0]) for s in range(501)] == list(range(501))


def test_expand_kernel_choice():
    """Decode-sized batches: a CTA per (column tile, adapter chunk), rows gathered (or, without
    gather, one CTA per tile accumulating all of the block's adapters). Larger: the persistent kernel, two CTAs per SM
    where three tiles in flight fit each (128- or 64-wide tiles), else one per SM (256-wide where three such tiles fit), one CTA per tile again where fewer than three
    fit (rank 64 with stacked float32 slices), unless a Tuning asks for it; always within SMEM (a
    persistent CTA's share of its SM's, where a Tuning asks for more CTAs than SMs)."""
    def cfg(bpad, n, r, stack, tuning=T.DEFAULT_TUNING):
        internal = stack > 1
        ep = P.plan_expand(bpad, n, r, stack, 8, "float32" if internal else "bfloat16", "bfloat16", "bfloat16",
                           internal=internal, tail=True, tuning=tuning)
        c = ep.cfgs[0]
        assert c.smem_bytes <= (T.smem_limit(c.ctas) if c.ctas else T.SMEM_LIMIT), c
        return c

    c = cfg(256, 4096, 16, 1)  # one CTA per tile: all of a block's adapters, one accumulator
    assert c.ctas == 0 and not c.gather and c.accumulate
    assert not cfg(256, 4096, 16, 1, T.Tuning(expand_accumulate=False)).accumulate
    c = cfg(256, 28672, 64, 2)  # several blocks, many tiles: gathering CTAs, eight tiles each
    assert c.gather and c.gather_tiles == 8 and not c.accumulate and c.stages == 1
    assert cfg(64, 6144, 64, 3).gather and cfg(64, 6144, 64, 3).gather_tiles == 4  # stacked, rank 64
    assert not cfg(64, 28672, 64, 2).gather and not cfg(64, 28672, 16, 2).gather  # one block
    assert cfg(64, 4096, 16, 1, T.Tuning(expand_gather=True)).gather
    assert not cfg(256, 28672, 64, 2, T.Tuning(expand_gather=False)).gather
    with pytest.raises(ValueError, match="expand_gather"):
        T.Tuning(expand_gather=1)
    assert not cfg(8192, 4096, 16, 1).accumulate  # the persistent kernel merges per tile in its own step
    assert not cfg(8192, 4096, 16, 1).gather
    # two CTAs per SM where three tiles in flight fit each, at the widest tile that allows it
    c = cfg(8192, 4096, 16, 1)
    assert (c.ctas, c.block_n, c.stream_stages) == (2 * T.PERSISTENT_CTAS, 128, 4)
    c = cfg(8192, 28672, 16, 2)
    assert (c.ctas, c.block_n) == (2 * T.PERSISTENT_CTAS, 128) and c.stream_stages >= 3
    c = cfg(8192, 4096, 64, 1)
    assert (c.ctas, c.block_n) == (2 * T.PERSISTENT_CTAS, 64) and c.stream_stages >= 3
    # one per SM otherwise, 256-wide tiles where three fit (and when a Tuning asks for one per SM)
    c = cfg(8192, 4096, 16, 1, T.Tuning(expand_ctas=T.PERSISTENT_CTAS))
    assert (c.ctas, c.block_n, c.stream_stages) == (T.PERSISTENT_CTAS, 256, 4)
    c = cfg(8192, 4096, 16, 1, T.Tuning(expand_block_n=256))
    assert (c.ctas, c.block_n, c.stream_stages) == (T.PERSISTENT_CTAS, 256, 4)
    # float32 x, rank-64 gate-up: three tiles in flight fit (one-by-one tiles take their base tile after
    # the pipeline); rank-128 QKV: they do not, one CTA per tile unless forced (then two)
    c = cfg(8192, 28672, 64, 2)
    assert (c.ctas, c.stream_stages) == (T.PERSISTENT_CTAS, 3)
    assert cfg(8192, 6144, 128, 3).ctas == 0
    forced = cfg(8192, 6144, 128, 3, T.Tuning(expand_persistent=True))
    assert forced.ctas == T.PERSISTENT_CTAS and forced.stream_stages == 2
    assert cfg(8192, 4096, 16, 1, T.Tuning(expand_persistent=False)).ctas == 0
    assert cfg(256, 4096, 16, 1, T.Tuning(expand_persistent=True)).ctas == 2 * T.PERSISTENT_CTAS
    assert cfg(8192, 4096, 16, 1, T.Tuning(expand_reduce_add=True)).ctas == 0  # reduce-add: grid only
    with pytest.raises(ValueError, match="expand_stream_stages"):
        T.Tuning(expand_stream_stages=1)
    with pytest.raises(ValueError, match="expand_persistent"):
        T.Tuning(expand_persistent=1)
    # more CTAs than SMs: each CTA's tiles in flight must fit beside the others' on its SM
    assert T.smem_limit(T.PERSISTENT_CTAS) == T.SMEM_LIMIT
    assert T.smem_limit(2 * T.PERSISTENT_CTAS) == T.SM_SMEM // 2 - 1024
    assert T.smem_limit(2 * T.PERSISTENT_CTAS + 1) == T.SM_SMEM // 3 - 1024
    assert T.ctas_per_sm(T.smem_limit(2 * T.PERSISTENT_CTAS)) == 2 and T.ctas_per_sm(T.smem_limit(1)) == 1
    assert T.ctas_per_sm(T.smem_limit(2 * T.PERSISTENT_CTAS) + 1) == 1
    two = T.Tuning(expand_ctas=2 * T.PERSISTENT_CTAS, expand_block_n=128)
    c = cfg(8192, 4096, 16, 1, two)
    assert (c.ctas, c.block_n) == (2 * T.PERSISTENT_CTAS, 128) and c.stream_stages >= 3  # (fits: cfg checks)
    with pytest.raises(ValueError, match=f"with {2 * T.PERSISTENT_CTAS} CTAs"):
        cfg(8192, 4096, 16, 1, T.Tuning(expand_ctas=2 * T.PERSISTENT_CTAS, expand_block_n=256,
                                         expand_stream_stages=4))
    with pytest.raises(ValueError, match="expand_ctas"):
        T.Tuning(expand_ctas=0)
    # one slice of activation-dtype x: no copy of x (its windows are the rank wide)
    assert P.plan_expand(8192, 4096, 16, 1, 8, "bfloat16", "bfloat16", "bfloat16", internal=False, tail=True).x_cols == 16


def test_shrink_pairs_adapters_where_two_fit():
    """The block shrink runs a block's adapters two per K loop (one read of its rows) where two A tiles
    per stage fit in shared memory; the split (decode) variant never does."""
    cfg = lambda bpad, k, r, stack: P.plan_shrink(bpad, k, r, stack, 8, "bfloat16", tail=True).cfg  # noqa: E731
    c = cfg(8192, 4096, 16, 1)
    assert not c.split and c.pair_stages >= 2
    need = T.BM * c.na * 4 + c.pair_stages * (T.BM + 2 * c.na) * c.block_k * 2
    assert need <= T.SMEM_LIMIT, need
    assert cfg(8192, 4096, 64, 3).pair_stages >= 2
    assert cfg(64, 4096, 16, 3).pair_stages == 0  # split variant
    assert cfg(8192, 4096, 128, 3).pair_stages == 0  # two 384-row A tiles per stage do not fit twice


def test_decode_split_and_stage_choice():
    """Decode-sized shrinks split K down to 8 steps a CTA, at most 16 ways and 256 CTAs; decode
    expands without gathering keep four adapters' tiles in flight, two for stacked slices above rank
    32 (session 6)."""
    def ks(bpad, k, r=16, stack=1):
        c = P.plan_shrink(bpad, k, r, stack, 8, "bfloat16", tail=True).cfg
        assert c.split and c.nk % c.ksplit == 0
        return c.ksplit

    assert ks(64, 4096) == 8 and ks(256, 4096) == 8 and ks(64, 4096, 64, 3) == 8
    assert ks(64, 14336) == 16 and ks(256, 14336) == 8  # (256 tokens: 4 blocks x 8 adapters x 8 = 256 CTAs)
    assert ks(64, 256) == 1  # four K steps: no split

    def stages(r, stack):
        tuning = T.Tuning(expand_gather=False)  # (the gathering kernel pipelines nothing: one stage)
        return P.plan_expand(64, 4096 * stack, r, stack, 8, "float32" if stack > 1 else "bfloat16", "bfloat16",
                             "bfloat16", internal=stack > 1, tail=True, tuning=tuning).cfgs[0].stages

    assert stages(16, 1) == 4 and stages(16, 3) == 4 and stages(32, 2) == 4
    assert stages(64, 1) == 4 and stages(64, 2) == 2


@pytest.mark.parametrize("tokens,r,stack,direct", [(64, 16, 1, True), (128, 16, 3, True), (64, 8, 1, False),
                                                   (100, 16, 1, True), (100, 8, 1, False)])
def test_decode_shrink_sums_its_partials_into_its_result(tokens, r, stack, direct, rng, model):
    """A decode (split) shrink's partial tiles are added by one kernel straight into the op's result
    in its dtype when the result has the kernel's columns, whatever its row count (the sum writes rows
    < s only, a partial last block's from its clamped box: no copy after it, session 17), else into a
    buffer of the op dtype the result is copied from; either way the result is right."""
    comp = C.Composition([tokens // 2, tokens - tokens // 2], [0, 1], [r, r // 2], [1.0, 1.0], r, tokens)
    be = backend(batch_info(comp, "cpu"))
    x = torch.randn(tokens, 64, dtype=torch.float16)
    a = torch.randn(2, stack * r, 64, dtype=torch.float16) / 8
    out = be.run_lora_a_sgemm(x, a, stack_num=stack)
    kinds = [k for k, _ in model.launches]
    assert kinds == ["shrink", "parts"], kinds
    pcfg = model.launches[1][1]
    assert pcfg.out_dtype == "float16"
    assert (model.outputs[1][0] is out) == direct
    ref = C.ref_shrink(comp, x.double().numpy(), a.double().numpy(), stack)
    assert C.compare(out.double().numpy(), ref, "float16").ok


@pytest.mark.parametrize("tokens,r,stack,direct", [(300, 16, 1, True), (300, 16, 3, True), (256 + 64, 16, 2, True),
                                                   (300, 8, 1, False)])
def test_block_shrink_writes_its_result_in_x_dtype(tokens, r, stack, direct, rng, model):
    """A prefill (block) shrink writes its result in x's dtype, rounded once from its float32 tile,
    straight into the op's result when the rank fills its 16-column tiles (one launch, no float32
    buffer, no cast kernel: 2.2-2.4 us of a 23 us rank-16 prefill shrink on the H200, session 10
    call 1), else into a buffer the result is copied from. A partial last block's box ends at the
    result's last row."""
    comp = C.Composition([tokens // 3, tokens - tokens // 3], [0, 1], [r, r // 2], [1.0, 1.0], r, tokens)
    be = backend(batch_info(comp, "cpu"))
    x = torch.randn(tokens, 64, dtype=torch.float16)
    a = torch.randn(2, stack * r, 64, dtype=torch.float16) / 8
    out = be.run_lora_a_sgemm(x, a, stack_num=stack)
    assert [k for k, _ in model.launches] == ["shrink"]
    cfg = model.launches[0][1]
    assert not cfg.split and cfg.ksplit == 1 and cfg.result and cfg.out_dtype == "float16"
    assert (model.outputs[0][0] is out) == direct
    ref = C.ref_shrink(comp, x.double().numpy(), a.double().numpy(), stack)
    assert C.compare(out.double().numpy(), ref, "float16").ok


@pytest.mark.parametrize("n,r,stack", [(6144, 16, 3), (28672, 16, 2), (6144, 64, 3), (28672, 64, 2)])
def test_fused_expand_reads_the_shrink_output_in_x_dtype(n, r, stack):
    """QKV / gate-up (Llama-3-8B, prefill-8k): the shrink output is x's dtype with the expand's
    window columns, so the expand reads it as it is and gets the tiles of a plain stacked expand
    (a float32 one cost the rank-16 QKV expand its 256-column tiles: 85 against 66 us on the H200,
    session 10 call 1; rank-64 gate-up its persistent kernel)."""
    sp = P.plan_shrink(8192, 4096, r, stack, 8, "bfloat16", tail=True)
    assert not sp.cfg.result and sp.cfg.out_dtype == "bfloat16"
    fused = P.plan_expand(8192, n, r, stack, 8, "bfloat16", "bfloat16", "bfloat16", internal=True, tail=True)
    plain = P.plan_expand(8192, n, r, stack, 8, "bfloat16", "bfloat16", "bfloat16", internal=False, tail=True)
    assert fused.x_cols <= sp.cfg.out_cols  # no padded copy of the shrink output
    f, p = fused.cfgs[0], plain.cfgs[0]
    assert (f.ctas, f.block_n, f.stream_stages) == (p.ctas, p.block_n, p.stream_stages), (f, p)
    if r == 16 or stack == 2:
        assert f.ctas in (T.PERSISTENT_CTAS, 2 * T.PERSISTENT_CTAS)  # the persistent kernel
    if r == 16:  # two CTAs per SM, each with four 128-wide tiles in flight
        assert (f.ctas, f.block_n, f.stream_stages) == (2 * T.PERSISTENT_CTAS, 128, 4)


def test_fused_op_runs_two_kernels_on_x_dtype(rng, model):
    """A prefill QKV on float16: the shrink's output (float16, rows of bpad) is the expand's x."""
    lens = [100, 150, 70]
    comp = C.Composition(lens, [0, 1, 2], [16, 8, 16], [0.5, 1.0, 2.0], 16, sum(lens))
    check, _ = run_op(backend(), "qkv", comp, rng, "float16", "cpu", k=64, n=128, kv=64)
    assert check.ok, check.detail
    assert [k for k, _ in model.launches] == ["shrink", "expand"]
    (_, scfg), (_, ecfg) = model.launches
    shrunk = model.outputs[0][0]
    assert shrunk.dtype == torch.float16 and tuple(shrunk.shape) == (scfg.bpad, scfg.out_cols)
    assert ecfg.x_dtype == "float16" and ecfg.na == scfg.out_cols


def test_stacked_expand_reads_the_callers_x_as_it_is():
    """The torch executor's plain stacked expand (QKV / gate-up expand of a packed x) reads the
    caller's x without a padded copy when its rows are 16-byte multiples; the JAX executor and odd
    widths pad."""
    def plan(r, stack, tail):
        return P.plan_expand(64, 6144, r, stack, 8, "bfloat16", "bfloat16", "bfloat16", internal=False, tail=tail)

    assert plan(16, 3, True).x_cols == 48 and plan(16, 3, True).cfgs[0].na == 48
    assert plan(64, 2, True).x_cols == 128
    assert plan(16, 3, False).x_cols == 64  # JAX: padded (interpret mode has no out-of-bounds fill)
    # ... so that the gathering decode kernel's rows (64 columns: 128 bytes) of the last slice
    # (column 32) lie inside
    assert P.plan_expand(64, 6144, 16, 3, 8, "bfloat16", "bfloat16", "bfloat16", internal=False, tail=False,
                         tuning=T.Tuning(expand_gather=True)).x_cols == 96
    assert P.plan_expand(8192, 6144, 16, 3, 8, "bfloat16", "bfloat16", "bfloat16", internal=False,
                         tail=False).x_cols == 64
    assert plan(12, 3, True).x_cols == 64  # 36 columns: 72-byte rows, not a TMA row pitch
    assert plan(8, 3, True).x_cols == 64  # 24 columns: narrower than one 32-column window


def test_plans_name_the_kernels_they_launch():
    """What `benchmarks/pallas_prelower.py` lowers ahead: a block shrink is one kernel, a split shrink adds the
    sum of its partial tiles; an expand of float32 weights launches one configuration per product (three
    launches, two configurations: B's hi and lo parts share one), listed once each."""
    block = P.plan_shrink(8192, 4096, 16, 1, 8, "bfloat16", tail=True, result=True)
    assert block.kernels == [("shrink", block.cfg)]
    split = P.plan_shrink(64, 4096, 16, 3, 8, "bfloat16", tail=True)
    assert split.sum is not None and split.kernels == [("shrink", split.cfg), ("parts", split.sum)]
    ep = P.plan_expand(64, 4096, 16, 1, 8, "float32", "float32", "float32", internal=False, tail=True)
    assert len(ep.cfgs) == 3 and ep.kernels == [("expand", c) for c in dict.fromkeys(ep.cfgs)]
    assert len(ep.kernels) < len(ep.cfgs)


def test_k_split_block_shrink_runs_two_ctas_per_sm_where_four_stages_fit():
    """The down projection's K-split block shrink: four stages where two such CTAs fit on an SM (rank
    16), else as many stages as fit one (rank 64); an unsplit shrink keeps its deep pipeline."""
    down = lambda r, tuning=T.DEFAULT_TUNING: P.plan_shrink(8192, 14336, r, 1, 8, "bfloat16", tail=True,  # noqa: E731
                                                            result=True, tuning=tuning).cfg
    c = down(16)
    assert c.ksplit > 1 and c.stages == 4
    assert T.BM * c.na * 4 + 4 * (T.BM + c.na) * c.block_k * 2 <= T.smem_limit(2 * T.PERSISTENT_CTAS)
    c64 = down(64)
    assert c64.ksplit > 1 and c64.stages > 4
    assert down(16, T.Tuning(shrink_stages=6)).stages == 6
    assert P.plan_shrink(8192, 4096, 16, 1, 8, "bfloat16", tail=True, result=True).cfg.stages == 8


def test_partial_tile_sums_take_whole_blocks_after_a_k_split_block_shrink():
    """A K-split block shrink's partial tiles are added by CTAs of a whole block (64 rows, up to 64
    columns that divide the output's width, steps of up to 32 KB); a decode split shrink's by 8 x 16
    pieces that spread one block over many CTAs."""
    def total(tokens, k, r, stack, tuning=T.DEFAULT_TUNING):
        return P.plan_shrink(tokens, k, r, stack, 8, "bfloat16", tail=True, result=True, tuning=tuning).sum

    for r, stack, cols in ((16, 1, 16), (64, 1, 64), (128, 1, 64), (16, 3, 48)):
        s = total(8192, 14336, r, stack, T.Tuning(shrink_ksplit=2))
        assert (s.rows, s.cols, s.na % s.cols) == (T.BM, cols, 0), (r, stack, s)
        assert s.tiles_per_step * s.rows * s.cols * 4 <= T.PARTS_BLOCK_STEP_BYTES
    d = total(64, 4096, 16, 3)
    assert (d.rows, d.cols, d.tiles_per_step) == (T.PARTS_ROWS, T.PARTS_COLS, T.PARTS_TILES_PER_STEP)
