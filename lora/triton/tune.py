"""``python -m lora tune``: measure the Triton backend's launch plans on this GPU and write its table.

For every shape bucket a model's LoRA layers plan with (:func:`lora.triton.tiling.shrink_key` /
``expand_key``: the token bucket, widths, rank, number of adapter slots and, for prefill-sized batches,
the segments' geometry: prefill-8k's 8 prompts are "long", mixed's 32 segments of 1..512 tokens
"short"), the tuner times a short list of candidate plans -- the heuristic's, the plans already in a
table for that key or the key without its geometry, then neighbours of the heuristic's plan, nearest
first -- on the batches that share the key (decode-7 and decode-8 share the 8-token bucket), keeps
the plan with the smallest mean slowdown against each batch's
fastest (a plan good for one batch geometry and bad for another loses to one good for both), checks
that plan against the float64 oracle (a wrong plan never wins), and writes the table. For decode-sized
QKV and gate-up it also times one launch (:mod:`lora.triton.fused_decode`) against two (shrink, then
expand, under the plans this run chose for them) and records which is faster (``fused:`` entries)::

    python -m lora tune                                   # Llama-3-8B shapes, ranks 16 and 64, all regimes
    python -m lora tune --model llama3-70b --ranks 16 --budget-s 120
    python -m lora tune --shape hidden=3584,q=3584,kv=512,inter=18944 --regimes decode
    python -m lora tune --out ./nvidia-h200.json          # another path (a directory: <device>.json in it)
    python -m lora tune --dry-run                         # the shape buckets and candidates, nothing timed

The table goes to the user's cache directory (``$KERNELSTACK_TUNE_DIR``, else
``$XDG_CACHE_HOME/kernelstack/lora-triton``, else ``~/.cache/kernelstack/lora-triton``), one file per
device named after it; the backend reads it before the tables shipped in the package
(``python -m lora list`` says which is in use). An existing table for the device is updated: buckets
tuned in this run replace their entries, the others stay.

Bounded: ``--budget-s`` seconds of measuring in all (each bucket gets an equal share of what is left;
a bucket that runs out keeps the best plan timed so far), and the table is rewritten after every
bucket, so a run that is cut off leaves what it measured (``"complete": false`` in the file).
Candidates are compiled ahead in worker processes (``--workers``) while earlier buckets are timed.

Timing: every call captured in a CUDA graph, rotating over input sets that together exceed the L2
cache three times, one graph of at least 16 calls replayed; the figure is the device time of one call
among many (stable to a few percent; a call replayed alone adds the graph launch, which no plan changes).

``--device cpu`` runs the same steps on Triton's interpreter (for tests: the times describe the
interpreter, not a GPU).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, fields, replace

__all__ = ["MODELS", "main"]

_PROG = "python -m lora tune"


def _shapes():
    from lora.compare.cases import LLAMA3_8B, TINY, LayerShape

    return {
        "llama3-8b": LLAMA3_8B,
        "llama3-70b": LayerShape("llama3-70b", hidden=8192, q=8192, kv=1024, inter=28672),
        "mistral-7b": LayerShape("mistral-7b", hidden=4096, q=4096, kv=1024, inter=14336),
        "qwen2.5-7b": LayerShape("qwen2.5-7b", hidden=3584, q=3584, kv=512, inter=18944),
        "tiny": TINY,
    }


#: Named layer shapes ``--model`` accepts.
MODELS = ("llama3-8b", "llama3-70b", "mistral-7b", "qwen2.5-7b", "tiny")
#: The primitives a model's layers call, by compare's op names (the public qkv / gate_up ops run these).
PRIMITIVES = ("shrink1", "shrink2", "shrink3", "shrink_down", "expand", "expand_qkv", "expand_gate_up")
#: Public ops that may run as one launch for decode-sized batches: one launch or two is measured too.
FUSED_OPS = ("qkv", "gate_up")
#: The primitives a fused op's two launches run (under this run's plans for them).
PAIR_OF = {"shrink3": "qkv", "expand_qkv": "qkv", "shrink2": "gate_up", "expand_gate_up": "gate_up"}
REGIMES = ("decode", "prefill", "mixed")


class UsageError(Exception):
    pass


# ---- what to tune ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneCase:
    """One batch to time plans on (plain values: it crosses to the compile workers)."""

    shape: object  # lora.compare.cases.LayerShape
    rank: int
    adapters: int
    regime: str  # decode | prefill | mixed
    tokens: int  # decode: sequences; prefill: total tokens; mixed: unused (32 segments of 1..512)

    @property
    def name(self) -> str:
        # The names (and so the drawn batches) of `python -m lora compare`'s cases for the same shape.
        comp = {"decode": f"decode-{self.tokens}", "mixed": "mixed",
                "prefill": "prefill-8k" if self.tokens == 8192 else f"prefill-{self.tokens}"}[self.regime]
        return f"{self.shape.name}-r{self.rank}-{comp}"

    def case(self):
        from lora.compare.cases import Case, decode, mixed, prefill

        gen = {"decode": lambda: decode(self.tokens), "prefill": lambda: prefill(self.tokens, 8),
               "mixed": lambda: mixed(32, 512)}[self.regime]()
        return Case(self.name, f"{self.shape.name}, {self.adapters} adapters of rank {self.rank}, {gen.__doc__}",
                    self.shape, self.rank, (self.rank,) * self.adapters, gen, decode=self.regime == "decode")


@dataclass
class Bucket:
    """One table key and the (case, op) pairs that plan with it."""

    key: str
    kind: str  # shrink | expand
    members: list  # [(TuneCase, op name)]
    candidates: list = None


def parse_layer_shape(spec: str):
    """``hidden=..,q=..,kv=..,inter=..`` (unset keys: Llama-3-8B's) -> LayerShape named "custom-..."."""
    from lora.compare.cases import LLAMA3_8B

    vals = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        key = {"k": "hidden"}.get(key.strip().lower(), key.strip().lower())
        if not sep or key not in ("hidden", "q", "kv", "inter"):
            raise UsageError(f"bad --shape item {part!r}: expected key=value with key in hidden, q, kv, inter")
        try:
            vals[key] = int(value)
        except ValueError:
            raise UsageError(f"bad --shape item {part!r}: {value!r} is not an integer") from None
        if vals[key] <= 0:
            raise UsageError(f"bad --shape item {part!r}: widths must be positive")
    shape = replace(LLAMA3_8B, **vals)
    return replace(shape, name=f"custom-h{shape.hidden}-q{shape.q}-kv{shape.kv}-i{shape.inter}")


def _int_list(text: str, what: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not out or any(v <= 0 for v in out):
        raise UsageError(f"{what} must be positive integers, got {text!r}")
    return out


def tune_cases(shape, ranks, adapters, regimes, decode_tokens, prefill_tokens) -> list[TuneCase]:
    out = []
    for r in ranks:
        for regime in regimes:
            if regime == "decode":
                out += [TuneCase(shape, r, adapters, "decode", n) for n in decode_tokens]
            elif regime == "prefill":
                out.append(TuneCase(shape, r, adapters, "prefill", prefill_tokens))
            else:
                out.append(TuneCase(shape, r, adapters, "mixed", 0))
    return out


def with_pairs(ops: list[str]) -> tuple[list[str], list[str]]:
    """``ops`` and the fused ops whose two launches run a primitive of ``ops``, and those added.

    A new plan for a pair's shrink or expand changes the pair: on the H100 (session 25), the rank-64
    256-token decode shrinks and expands re-tuned alone (each faster alone) made the decode step 15% slower
    (90.3 -> 103.9 us a layer; the gate-up pair under them 48.7 us against 35.2 re-tuned), until the pairs
    were re-tuned with them (89.8). So tuning a pair's primitive re-tunes the pair."""
    added = [f for f in FUSED_OPS if f not in ops and any(PAIR_OF.get(o) == f for o in ops)]
    return ops + added, added


def buckets_for(cases: list[TuneCase], ops: list[str]) -> list[Bucket]:
    """The distinct table keys of ``cases`` x ``ops``, in first-seen order."""
    from lora.compare.cases import OPS

    from . import tiling

    out: dict[str, Bucket] = {}
    for tc in cases:
        comp = tc.case().composition(0)
        segments = tiling.segment_class(comp.tokens, comp.num_lora, comp.bs)
        for name in ops:
            op = OPS[name].resolve(tc.shape)
            if op.kind == "fused":
                if not tiling.fused_eligible(comp.tokens, op.stack, comp.num_lora, comp.bs):
                    continue
                key = tiling.fused_key(comp.tokens, op.k, op.stack, comp.max_r, op.n, op.max_slice, comp.num_lora)
            elif op.kind == "shrink":
                key = tiling.shrink_key(comp.tokens, op.k, op.stack * comp.max_r, comp.num_lora, segments)
            else:
                key = tiling.expand_key(comp.tokens, comp.max_r, op.n, op.max_slice, op.stack, comp.num_lora, segments)
            out.setdefault(key, Bucket(key, op.kind, [])).members.append((tc, name))
    # one launch or two is decided last, against the primitives' plans this run chose
    return sorted(out.values(), key=lambda b: b.kind == "fused")


# ---- candidates --------------------------------------------------------------------------------------


def _distance(a, b) -> int:
    return sum(getattr(a, f.name) != getattr(b, f.name) for f in fields(a))


def shrink_candidates(s: int, k: int, n_out: int, num_lora: int, sms: int) -> list:
    """Plans around the heuristic's, nearest first (the heuristic's own plan first)."""
    from . import tiling

    h = tiling.heuristic_shrink(s, k, n_out, num_lora, sms)
    grid = []
    # Decode plans of another shape (session 24, not yet measured on a GPU): after the nearest ones, so a
    # default run (12 candidates) times what it timed before; ``--max-candidates`` above ~30 reaches them.
    late = []
    if h.group_grid:  # decode: one program per adapter group, split-K over the weights
        for bn in (16, 32):
            if bn > max(16, tiling.next_pow2(n_out)):
                continue
            for bk in (64, 128, 256):
                for split in (2, 4, 8, 16):
                    if split > 1 and bk * split > 2 * k:
                        continue
                    grid.append(tiling.ShrinkPlan(h.block_m, bn, 1, bk, split, 4, 3 if bk == 256 else 4, True))
            # No split-K, or two splits: no ticket and no partials read back (the ~1 us finish a split pays,
            # session 15), the few programs kept streaming by a deep pipeline instead ...
            for split, bk, stages in ((1, 256, 8), (1, 128, 12), (1, 512, 6), (2, 256, 8)):
                if split > 1 and bk * split > 2 * k:
                    continue
                for warps in (4, 8):
                    late.append(tiling.ShrinkPlan(h.block_m, bn, 1, bk, split, warps, stages, True))
            # ... or the other way: one K step per program, every multiprocessor busy
            if 32 * 128 <= k:
                late.append(tiling.ShrinkPlan(h.block_m, bn, 1, 128, 32, 4, 2, True))
        for bm in {max(16, h.block_m // 2), min(128, h.block_m * 2)} - {h.block_m}:
            grid.append(replace(h, block_m=bm))
    else:  # prefill: chunks of an adapter's rows, the stacked width in one program ...
        tiles = {(h.block_n, h.n_sub)}
        for bn in (16, 32, 64, 128, 256):
            n_sub = -(-n_out // bn)
            if n_sub <= 4 and (bn >= n_out or bn * n_sub - n_out < bn) and bn <= max(16, tiling.next_pow2(n_out)):
                tiles.add((bn, n_sub))
        # ... or split between 2-4 column groups (grid axis 1), each at least 32 wide: more programs for the
        # tensor cores where 8k tokens make too few row chunks (cuBLAS splits the 192 columns of the rank-64
        # QKV shrink in two; on the H100 the tuner's 256 x 64 plan, three groups, is 9-10% faster than the best
        # whole-width plan, session 31)
        for groups in (2, 3, 4):
            width = n_out // groups
            for bn in (32, 64):
                if n_out % groups == 0 and width % bn == 0 and width // bn <= 4:
                    tiles.add((bn, width // bn))
        # (64, 8): two warpgroups share a 64-row tile's columns (session 31)
        for bm, warps in ((64, 4), (128, 8), (128, 4), (32, 4), (256, 8), (128, 16), (64, 8)):
            for bn, n_sub in sorted(tiles):
                for bk, stages in ((64, 4), (128, 3), (128, 4), (64, 3), (256, 2), (32, 5)):
                    for split in (1, 2, 4):
                        if split > 1 and k // (bk * split) < 4:
                            continue
                        grid.append(tiling.ShrinkPlan(bm, bn, n_sub, bk, split, warps, stages))
                    for per_sm in (1, 2):  # stream-K: the grid shares the (tile, K step) iterations
                        grid.append(tiling.ShrinkPlan(bm, bn, n_sub, bk, 1, warps, stages, stream_k=per_sm))
    grid.sort(key=lambda p: _distance(p, h))
    return list(dict.fromkeys(_with_tma_twins([h, *grid, *late])))


def _with_tma_twins(plans: list) -> list:
    """Each prefill shrink plan that can load through tensor descriptors as a pair, without then with ``tma``
    (session 32, H100: the rank-64 QKV shrink's 128 x 64 tiles 41.5 -> 36.8 us with descriptors; other shapes
    within a few percent either way, so it is measured per bucket, not assumed)."""
    out = []
    for p in plans:
        if p.group_grid or p.stream_k:
            out.append(p)
        else:  # (a tma plan, e.g. from a table, after its pointer twin)
            out += [replace(p, tma=False), replace(p, tma=True)]
    return out


def expand_candidates(s: int, max_r: int, max_slice: int, num_lora: int, stack: int, sms: int) -> list:
    from . import tiling

    h = tiling.heuristic_expand(s, max_r, max_slice, num_lora, stack, sms)
    grid = []
    if h.group_grid:  # decode: one program per adapter group, columns spread over the multiprocessors
        for bm in (h.block_m, max(16, h.block_m // 2)):
            for bn in (32, 64, 128, 256):
                for iters in (1, 2, 4, 8):
                    if bn * iters > 4 * max_slice:
                        continue
                    grid.append(tiling.ExpandPlan(bm, bn, iters, 8 if bm * bn >= 16384 else 4, 1 if iters == 1 else 2, True))
    else:
        for bm, bn in ((32, 128), (64, 64), (64, 128), (128, 64), (128, 128), (32, 256), (16, 256), (64, 256), (256, 64)):
            for iters in (1, 2, 4, 8, 16):
                for warps in (4, 8):
                    if (warps == 8) != (bm * bn >= 16384):
                        continue
                    for stages in (2, 3) if iters > 1 else (2,):  # a deeper pipeline over the column blocks
                        grid.append(tiling.ExpandPlan(bm, bn, iters, warps, stages))
    grid += [replace(p, acc_base=True) for p in [h, *grid]]  # base_output as the dot's accumulator
    grid.sort(key=lambda p: _distance(p, h))
    return list(dict.fromkeys([h, *grid]))


def fused_candidates(s: int, k: int, stack: int, max_r: int, max_slice: int, num_lora: int, sms: int) -> list:
    """Two launches first (``fuse=False``), the heuristic's one-launch plan, two launches without PDL between
    them (``pdl=False``), two launches where the expand sums the partials of a shrink split 2, 4 or 8 ways
    (``partials=True``), then one-launch plans around the heuristic's, nearest first."""
    from . import tiling

    h = tiling.heuristic_fused(s, k, stack, max_r, max_slice, num_lora, sms)
    grid = []
    for split in (1, 2, 4, 8, 16):
        if num_lora * stack * split > 4 * sms or (split > 1 and k < 32 * split):
            continue
        for bk in (64, 128, 256):
            for bn, iters in ((64, 1), (64, 2), (128, 1), (128, 2), (64, 4), (128, 4), (32, 2)):
                grid.append(tiling.FusedPlan(h.block_m, bk, split, bn, iters, h.num_warps, 2))
    grid.sort(key=lambda p: _distance(p, h))
    two = replace(h, fuse=False)
    partials = [replace(two, partials=True, split_k=split) for split in (2, 4, 8) if k >= 32 * split]
    return list(dict.fromkeys([two, h, replace(two, pdl=False), *partials, *grid]))


def candidates_for(bucket: Bucket, device, dtype, max_candidates: int) -> list:
    """Heuristic first, then every plan a table has for this key (any device), then the grid; each
    fitted to this device's shared memory for ``dtype``, duplicates dropped, at most ``max_candidates``."""
    import torch

    from lora.compare.cases import OPS

    from . import tiling

    tc, op_name = bucket.members[0]
    comp = tc.case().composition(0)
    op = OPS[op_name].resolve(tc.shape)
    _, sms = tiling.device_info(device)
    lead = 1  # grid plans ahead of the seeds: the heuristic's (and its descriptor twin)
    limit = tiling.smem_limit(device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    seeds = []
    for table in (*tiling.tables_for(tiling.device_info(device)[0]), *tiling.shipped_tables().values()):
        for key in dict.fromkeys((bucket.key, tiling.general_key(bucket.key))):  # a geometry's, then the bucket's
            if key in table.plans:
                seeds.append(table.plans[key])
    if bucket.kind == "fused":
        grid = fused_candidates(comp.tokens, op.k, op.stack, comp.max_r, op.max_slice, comp.num_lora, sms)
        # two-launch entries differ only in pdl, and in partials with their split (their tile fields mean nothing)
        fit = lambda p: (tiling.fit_fused(p, comp.max_r, itemsize, limit) if p.fuse  # noqa: E731
                         else replace(grid[0], pdl=p.pdl, partials=p.partials,
                                      split_k=p.split_k if p.partials else grid[0].split_k))
    elif bucket.kind == "shrink":
        grid = shrink_candidates(comp.tokens, op.k, op.stack * comp.max_r, comp.num_lora, sms)
        seeds = _with_tma_twins(seeds)  # each table plan with and without descriptors
        if not tiling.tma_capable(device):  # descriptor plans would run as their pointer twins: time those once
            grid, seeds = [replace(p, tma=False) for p in grid], [replace(p, tma=False) for p in seeds]
        lead = 2 if len(grid) > 1 and grid[1].tma else 1  # the heuristic's twin (second, by _with_tma_twins)
        fit = lambda p: tiling.fit_shrink(p, itemsize, limit)  # noqa: E731
    else:
        grid = expand_candidates(comp.tokens, comp.max_r, op.max_slice, comp.num_lora, op.stack, sms)
        seeds = [q for p in seeds for q in (p, replace(p, acc_base=True))]  # each table plan in both epilogues
        fit = lambda p: tiling.fit_expand(p, comp.max_r, itemsize, limit)  # noqa: E731
    out = list(dict.fromkeys(fit(p) for p in [*grid[:lead], *seeds, *grid[lead:]]))
    return out[: max(1, max_candidates)]


# ---- running one case's op under a plan ----------------------------------------------------------------


class _Bench:
    """A case's op ready to call: backend, rotating input sets, a check set and its float64 result."""

    def __init__(self, tc: TuneCase, op_name: str, dtype, device, *, timing: bool, check: bool):
        import torch

        from lora import LoRABatchInfo, get_backend_from_name
        from lora import testing as I
        from lora.compare.cases import OPS
        from lora.compare.timing import rotation_sets

        self.case = tc.case()
        self.comp = self.case.composition(0)
        self.op = OPS[op_name].resolve(tc.shape)
        self.dtype, self.device = dtype, device
        c = self.comp
        bi = LoRABatchInfo.from_segments(c.seg_lens, c.weight_indices, c.lora_ranks, c.scalings, device=device)
        self.backend = get_backend_from_name("triton")("triton", bi)
        first = I.make_inputs(self.op, c, dtype, device, seed=1)
        n = rotation_sets(sum(t.numel() * t.element_size() for t in first.values()), device) if timing else 1
        self.sets = [first] + [I.make_inputs(self.op, c, dtype, device, seed=1 + i) for i in range(1, n)]
        self.check_set = self.ref = None
        if check:
            self.check_set = I.make_inputs(self.op, c, dtype, device, seed=0)
            self.ref = I.oracle(self.op, c, self.check_set)
        from lora.compare.cases import min_bytes

        self.min_bytes = min_bytes(self.op, c, torch.empty((), dtype=dtype).element_size())

    def call(self, i: int = 0):
        from lora import testing as I

        return I.call_op(self.backend, self.op, self.sets[i % len(self.sets)])

    def primitive_plans(self, plans: dict) -> tuple:
        """For a fused op: the shrink and expand plans of ``plans`` (this run's choices) for its buckets."""
        from . import tiling

        op, c = self.op, self.comp
        if op.kind != "fused":
            return ()
        segments = tiling.segment_class(c.tokens, c.num_lora, c.bs)
        keys = (tiling.shrink_key(c.tokens, op.k, op.stack * c.max_r, c.num_lora, segments),
                tiling.expand_key(c.tokens, c.max_r, op.n, op.max_slice, op.stack, c.num_lora, segments))
        return tuple(plans[k] for k in keys if k in plans)

    def check(self, plan, extra=()):
        """rel error and whether it is within the dtype's tolerance, the op run under ``plan``."""
        from lora import testing as I

        from . import tiling

        t = {k: v.clone() for k, v in self.check_set.items()}
        with tiling.forced_plan(plan, *extra):
            out = I.call_op(self.backend, self.op, t)
        name = {v: k for k, v in I.DTYPES.items()}[self.dtype]
        c = I.check(out, self.ref, name, expect_dtype=self.dtype, base=t.get("base"))
        return c

    def time_us(self, plan, target_ms: float = 8.0, extra=()) -> float:
        """Device time of one call under ``plan``, among many in one CUDA graph (wall clock on the CPU)."""
        import torch

        from . import tiling

        dev = self.device
        if dev.type != "cuda":
            with tiling.forced_plan(plan, *extra):
                self.call(0)
                t0 = time.perf_counter()
                self.call(0)
                return (time.perf_counter() - t0) * 1e6
        n = len(self.sets)
        calls = max(n, 16)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with tiling.forced_plan(plan, *extra):
            with torch.cuda.stream(side):
                for i in range(n):
                    self.call(i)
            torch.cuda.current_stream(dev).wait_stream(side)
            torch.cuda.synchronize(dev)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for i in range(calls):
                    self.call(i)
        try:
            graph.replay()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            reps = int(min(25, max(3, target_ms / max(start.elapsed_time(end), 1e-3))))
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
            for a, b in ev:
                a.record()
                graph.replay()
                b.record()
            torch.cuda.synchronize(dev)
            return statistics.median(a.elapsed_time(b) for a, b in ev) * 1e3 / calls
        finally:
            del graph


# ---- compiling ahead ---------------------------------------------------------------------------------

_WORKER_BENCH: dict = {}


def _compile_job(job):
    """Worker: launch ``plans`` once each on the case's real shapes (so the kernels the main process
    launches are found in Triton's cache); returns {plan: None or the error}."""
    import torch

    tc, op_name, plans, dtype_name, device_str = job
    from lora import testing as I

    from . import tiling

    device = torch.device(device_str)
    key = (tc, op_name, dtype_name)
    if key not in _WORKER_BENCH:
        _WORKER_BENCH.clear()  # one case's inputs at a time
        _WORKER_BENCH[key] = _Bench(tc, op_name, I.DTYPES[dtype_name], device, timing=False, check=False)
    bench = _WORKER_BENCH[key]
    errors = {}
    for plan in plans:
        try:
            with tiling.forced_plan(plan):
                bench.call(0)
            errors[plan] = None
        except Exception as exc:  # does not compile (shared memory, registers): the main process skips it
            errors[plan] = f"{type(exc).__name__}: {str(exc)[:200]}"
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return errors


class _Compiler:
    """Compile jobs submitted up front, in bucket order, to a pool of spawned workers (or none)."""

    def __init__(self, workers: int):
        self.pool = None
        self.pending = {}
        if workers > 0:
            import multiprocessing as mp

            self.pool = mp.get_context("spawn").Pool(workers)

    def submit(self, bucket: Bucket, dtype_name: str, device_str: str, chunk: int = 3):
        if self.pool is None:
            return
        for tc, op_name in bucket.members:
            for i in range(0, len(bucket.candidates), chunk):
                job = (tc, op_name, bucket.candidates[i : i + chunk], dtype_name, device_str)
                self.pending.setdefault((bucket.key, tc, op_name), []).append(self.pool.apply_async(_compile_job, (job,)))

    def wait(self, key, tc, op_name, deadline: float) -> dict:
        """{plan: error or None} of the jobs of (key, case, op) finished by ``deadline`` (monotonic)."""
        out = {}
        for res in self.pending.pop((key, tc, op_name), []):
            try:
                out.update(res.get(timeout=max(0.0, deadline - time.monotonic())))
            except Exception as exc:  # timeout, a crashed worker: those plans are not timed
                import multiprocessing as mp

                why = "not finished in time" if isinstance(exc, mp.TimeoutError) else f"{type(exc).__name__}: {exc}"
                out.setdefault("__error__", why)
        return out

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


# ---- progress ----------------------------------------------------------------------------------------


class _Progress:
    """A rich bar on a terminal (stderr); otherwise a line per tuned bucket on stdout."""

    def __init__(self, total: int, enabled: bool):
        self.bar = self.task = None
        if enabled and sys.stderr.isatty():
            try:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            except ImportError:
                return
            self.bar = Progress(TextColumn("[bold]tune"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.description}"), console=Console(file=sys.stderr), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=total)

    def step(self, text: str, advance: int = 0):
        if self.bar is not None:
            self.bar.update(self.task, description=text, advance=advance)

    def line(self, text: str):
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.stop()


# ---- the run -----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=_PROG,
        description="Measure the triton backend's launch plans on this GPU for a model's LoRA shapes and write "
        "this device's plan table (read before the tables shipped in the package).",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", default=None, help=f"layer shapes of a named model: {', '.join(MODELS)} (default llama3-8b)")
    g.add_argument("--shape", metavar="SPEC", help="layer widths hidden=..,q=..,kv=..,inter=.. (unset: Llama-3-8B's)")
    p.add_argument("--ranks", default="16,64", help="max ranks to tune (default 16,64)")
    p.add_argument("--adapters", type=int, default=8, help="loaded adapter slots (default 8)")
    p.add_argument("--regimes", default="decode,prefill,mixed", help="decode, prefill, mixed (default all three)")
    p.add_argument("--decode-tokens", default="64,256", help="decode batch sizes (default 64,256)")
    p.add_argument("--prefill-tokens", type=int, default=8192, help="tokens of the prefill batch (default 8192)")
    p.add_argument("--ops", default=",".join(PRIMITIVES + FUSED_OPS),
                   help=f"ops to tune (default all): primitives {', '.join(PRIMITIVES)}; and {', '.join(FUSED_OPS)} "
                   "(decode-sized batches: one launch or two)")
    p.add_argument("--budget-s", type=float, default=240.0, help="seconds of measuring in all (default 240)")
    p.add_argument("--max-candidates", type=int, default=12, help="plans timed per bucket at most (default 12)")
    p.add_argument("--workers", type=int, default=None, help="compile processes (default: CPUs - 2, at most 15; 0: compile inline)")
    p.add_argument("--out", help="table path, or a directory to write <device>.json in (default: the user's table)")
    p.add_argument("--fresh", action="store_true", help="do not keep the entries of an existing table at --out")
    p.add_argument("--dtype", help="bf16 (default on CUDA), fp16; fp32 plans are fitted from these")
    p.add_argument("--device", help="cuda, cuda:N, or cpu (Triton's interpreter: for tests)")
    p.add_argument("--dry-run", action="store_true", help="print the buckets and candidates, time nothing, write nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (a line per bucket)")
    return p


def _resolve(args):
    import torch

    shapes = _shapes()
    if args.shape:
        shape = parse_layer_shape(args.shape)
    else:
        name = args.model or "llama3-8b"
        if name not in shapes:
            raise UsageError(f"unknown --model {name!r}; known: {', '.join(MODELS)} (or give --shape)")
        shape = shapes[name]
    ranks = _int_list(args.ranks, "--ranks")
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    bad = [r for r in regimes if r not in REGIMES]
    if bad or not regimes:
        raise UsageError(f"--regimes: unknown {', '.join(bad) or 'nothing given'}; use {', '.join(REGIMES)}")
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in PRIMITIVES + FUSED_OPS]
    if bad or not ops:
        raise UsageError(f"--ops: unknown {', '.join(bad) or 'nothing given'}; use {', '.join(PRIMITIVES + FUSED_OPS)}")
    if args.adapters <= 0:
        raise UsageError("--adapters must be positive")
    if args.prefill_tokens <= 0:
        raise UsageError("--prefill-tokens must be positive")
    if not args.budget_s > 0:
        raise UsageError("--budget-s must be positive")
    if args.max_candidates < 1:
        raise UsageError("--max-candidates must be at least 1")
    decode_tokens = _int_list(args.decode_tokens, "--decode-tokens")
    if args.device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cpu" and not args.dry_run:
            raise UsageError("needs a CUDA device (--device cpu runs Triton's interpreter: for tests, its times "
                             "describe the interpreter)")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError as exc:
            raise UsageError(f"bad --device {args.device!r}: {exc}") from None
        if device.type not in ("cpu", "cuda"):
            raise UsageError(f"--device must be cpu or cuda[:N], got {args.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: CUDA is not available here")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    from lora import testing as I

    try:
        dtype_name = I.dtype_name(args.dtype or ("bf16" if device.type == "cuda" else "fp16"))
    except ValueError as exc:
        raise UsageError(f"--dtype: {exc}") from None
    if dtype_name == "float32":
        raise UsageError("--dtype: tune with a 16-bit dtype (float32 launches fit the 16-bit plans to shared memory)")
    if device.type == "cpu" and dtype_name == "bfloat16":
        raise UsageError("--dtype bf16 on the CPU: Triton's interpreter computes bf16 dots wrongly; use fp16")
    cases = tune_cases(shape, ranks, args.adapters, regimes, decode_tokens, args.prefill_tokens)
    return shape, cases, ops, device, dtype_name


def _device_record(device) -> dict:
    import torch

    from . import tiling

    name, sms = tiling.device_info(device)
    out = {"name": name, "multiprocessors": sms}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out["capability"] = f"{props.major}.{props.minor}"
        out["memory_bytes"] = props.total_memory
    return out


def _out_path(args, device_name: str):
    from pathlib import Path

    from . import tiling

    if not args.out:
        return tiling.user_table_path(device_name)
    p = Path(args.out).expanduser()
    if p.is_dir() or args.out.endswith(("/", os.sep)):
        return p / f"{tiling.device_slug(device_name)}.json"
    return p


def _existing(path, device_name: str, fresh: bool) -> tuple[dict, dict, list]:
    """(plans, their measurements, the runs that wrote them) of the table already at ``path`` for this device; the
    plans are kept unless retuned, and the runs that wrote them stay on record (oldest first) under ``earlier_runs``."""
    from . import tiling

    if fresh or not path.exists():
        return {}, {}, []
    try:
        t = tiling.read_table(path)
    except tiling.TableError as exc:
        print(f"{_PROG}: warning: {exc}; it is rewritten from this run's results", file=sys.stderr)
        return {}, {}, []
    if t.device != device_name:
        print(f"{_PROG}: warning: {path} holds plans for {t.device!r}; it is rewritten for {device_name!r}", file=sys.stderr)
        return {}, {}, []
    measured = t.meta.get("measured")
    measured = {k: v for k, v in measured.items() if k in t.plans} if isinstance(measured, dict) else {}
    runs = t.meta.get("earlier_runs")
    runs = [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []
    if isinstance(t.meta.get("written_by"), dict):
        runs.append(t.meta["written_by"])
    return dict(t.plans), measured, runs


def _fmt_plan(p) -> str:
    return ",".join(f"{f.name}={getattr(p, f.name)}" for f in fields(p))


def run(args) -> int:
    import torch

    from . import tiling

    shape, cases, ops, device, dtype_name = _resolve(args)
    from lora import testing as I

    dtype = I.DTYPES[dtype_name]
    ops, added = with_pairs(ops)
    buckets = buckets_for(cases, ops)
    if added and any(b.kind == "fused" for b in buckets):
        print(f"{_PROG}: also tuning {', '.join(added)} (decode): their two launches run the plans tuned here",
              flush=True)
    for b in buckets:
        b.candidates = candidates_for(b, device, dtype, args.max_candidates)
    dev = _device_record(device)
    if args.dry_run:
        print(f"{_PROG}: {len(buckets)} buckets of {shape.name} on {dev['name']} (nothing timed):")
        for b in buckets:
            print(f"  {b.key}: {len(b.candidates)} plans on {', '.join(f'{tc.name}/{op}' for tc, op in b.members)}")
            for p in b.candidates:
                print(f"      {_fmt_plan(p)}")
        return 0

    path = _out_path(args, dev["name"])
    plans, measured, earlier_runs = _existing(path, dev["name"], args.fresh)
    command = " ".join([_PROG, *map(shlex.quote, args.argv)])
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    workers = args.workers
    if workers is None:
        workers = max(0, min(15, (os.cpu_count() or 2) - 2)) if device.type == "cuda" else 0
    total_pairs = sum(len(b.candidates) * len(b.members) for b in buckets)
    print(f"{_PROG}: {len(buckets)} buckets ({total_pairs} plan x batch timings at most) of {shape.name}, ranks "
          f"{args.ranks}, {args.regimes}, on {dev['name']} in {dtype_name}; budget {args.budget_s:.0f} s, "
          f"{workers} compile workers; table: {path}", flush=True)

    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    compiler = _Compiler(workers)
    progress = _Progress(total_pairs, enabled=not args.no_progress)
    done, not_done = [], [b.key for b in buckets]

    def write(complete: bool):
        meta = {
            "written_by": {"command": command, "started_at": started, "complete": complete,
                           "elapsed_s": round(time.monotonic() - t0, 1), "dtype": dtype_name,
                           "not_tuned": [k for k in not_done], "versions": _versions(), "python": platform.python_version()},
            "measured": measured,
        }
        if earlier_runs:
            meta["earlier_runs"] = earlier_runs
        tiling.write_table(path, dev, plans, meta)

    try:
        for b in buckets:
            compiler.submit(b, dtype_name, str(device))
        for i, b in enumerate(buckets):
            now = time.monotonic()
            if now >= deadline:
                progress.line(f"[{i + 1}/{len(buckets)}] {b.key}: budget spent, not tuned")
                continue
            share_end = now + (deadline - now) / (len(buckets) - i)
            try:
                result = _tune_bucket(b, device, dtype, compiler, share_end, deadline, progress, plans)
            except Exception as exc:  # one bucket's failure (memory, a driver error) must not lose the others
                result = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if isinstance(result, str):
                progress.line(f"[{i + 1}/{len(buckets)}] {b.key}: {result}; not tuned")
                continue
            plans[b.key] = result["plan"]
            measured[b.key] = result["record"]
            drop_superseded(plans, measured, b.key)
            not_done.remove(b.key)
            done.append(b.key)
            progress.line(f"[{i + 1}/{len(buckets)}] {result['line']}")
            write(complete=False)
    except KeyboardInterrupt:
        progress.line("interrupted: writing what was measured")
    finally:
        progress.close()
        compiler.close()
    write(complete=not not_done)
    tiling.reload_tables()
    print(f"{_PROG}: tuned {len(done)} of {len(buckets)} buckets in {time.monotonic() - t0:.0f} s -> {path}"
          + (f" (not tuned: {len(not_done)}; they keep the shipped table's plan or the heuristic)" if not_done else ""))
    return 0


def drop_superseded(plans: dict, measured: dict, key: str) -> None:
    """Once a table plans both segment geometries of ``key``'s bucket (``...:seglong`` and ``...:segshort``),
    the bucket's entry without a geometry plans no batch: it is dropped with its measurement."""
    from . import tiling

    general = tiling.general_key(key)
    if general != key and all(tiling.with_segments(general, c) in plans for c in tiling.SEGMENT_CLASSES):
        plans.pop(general, None)
        measured.pop(general, None)


_FUSED_STALLED: list = []  # bucket keys where a one-launch call stalled: no more one-launch candidates


def _time_into(times: dict, bench, plan, extra, where: str, progress) -> None:
    """times[plan] = the plan's time on ``bench``; a plan that fails to run is reported and left out."""
    import torch

    try:
        times[plan] = bench.time_us(plan, extra=extra)
    except Exception as exc:
        progress.line(f"  {where} {_fmt_plan(plan)}: {type(exc).__name__}: {str(exc)[:160]}")
        if bench.device.type == "cuda":
            torch.cuda.synchronize(bench.device)


def _tune_bucket(b: Bucket, device, dtype, compiler: _Compiler, share_end: float, deadline: float, progress: _Progress,
                 chosen: dict):
    import torch

    from . import tiling

    per_case = []  # (TuneCase, op, bench, {plan: us}, plans forced beside the candidate)
    n_members = len(b.members)
    for j, (tc, op_name) in enumerate(b.members):
        case_end = time.monotonic() + (share_end - time.monotonic()) / (n_members - j)
        # Compiling may lag behind at the start (workers importing torch): wait up to 20 s past the share.
        wait_end = max(case_end, min(deadline, time.monotonic() + 20.0))
        compiled = compiler.wait(b.key, tc, op_name, wait_end) if compiler.pool is not None else None
        case_end = max(case_end, min(deadline, time.monotonic() + 0.5))
        if compiled is not None:
            for plan, err in compiled.items():
                if err is not None:
                    what = "compiling" if plan == "__error__" else f"{_fmt_plan(plan)} does not compile"
                    progress.line(f"  {b.key} {tc.name}: {what}: {err}")
        bench = _Bench(tc, op_name, dtype, device, timing=True, check=True)
        extra = bench.primitive_plans(chosen)  # a fused op's two launches run this run's primitive plans
        times = {}
        for plan in b.candidates:
            progress.step(f"{b.key} {tc.name}", advance=1)
            if compiled is not None and (plan not in compiled or compiled[plan] is not None):
                continue  # did not compile (or not in time)
            if times and time.monotonic() > case_end:
                continue
            if getattr(plan, "fuse", False):
                # One launch waits on counters inside the kernel: check one call first, so a plan that is
                # wrong or stalls here costs one launch, not hundreds; a stall ends one-launch candidates.
                if _FUSED_STALLED:
                    continue
                with tiling.forced_plan(plan, *extra):
                    bench.call(0)  # compiles (or loads) the kernel first: that time is not a stall
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t_check = time.monotonic()
                chk = bench.check(plan, extra)
                if device.type == "cuda" and time.monotonic() - t_check > 2.0:
                    _FUSED_STALLED.append(b.key)
                    progress.line(f"  {b.key} {tc.name} {_fmt_plan(plan)}: one call took "
                                  f"{time.monotonic() - t_check:.1f} s; no more one-launch plans this run")
                if not chk.ok:
                    progress.line(f"  {b.key} {tc.name} {_fmt_plan(plan)}: WRONG ({chk.detail}), not timed")
                    continue
            _time_into(times, bench, plan, extra, f"{b.key} {tc.name}", progress)
        per_case.append((tc, op_name, bench, times, extra))
    # A plan timed on one batch but not on another (its compile was not ready in that batch's window: the
    # first bucket of a run waits on workers still starting) is timed there now, so that the choice is made
    # among every plan timed (one-launch fused plans are checked before timing: those are left out).
    fill_end = min(deadline, max(share_end, time.monotonic() + 10.0))
    union = [p for p in b.candidates if any(p in c[3] for c in per_case)]
    for tc, op_name, bench, times, extra in per_case:
        for plan in union:
            if plan in times or getattr(plan, "fuse", False) or time.monotonic() > fill_end:
                continue
            _time_into(times, bench, plan, extra, f"{b.key} {tc.name}", progress)
    timed_everywhere = [p for p in b.candidates if all(p in c[3] for c in per_case)]
    if not timed_everywhere:
        counts = ", ".join(f"{c[0].name}: {len(c[3])}" for c in per_case)
        return f"no plan was timed on every batch in its share of the budget (plans timed: {counts})"
    fastest = [min(c[3][p] for p in timed_everywhere) for c in per_case]
    score = {p: sum(c[3][p] / f for c, f in zip(per_case, fastest)) / len(per_case) for p in timed_everywhere}
    heuristic = b.candidates[0]
    for plan in sorted(timed_everywhere, key=lambda p: score[p]):
        bad = [(c[0].name, chk.detail) for c in per_case for chk in [c[2].check(plan, c[4])] if not chk.ok]
        if bad:
            progress.line(f"  {b.key} {_fmt_plan(plan)}: WRONG on {bad[0][0]} ({bad[0][1]}), dropped")
            continue
        cases = {}
        parts = []
        for (tc, op_name, bench, times, _), f in zip(per_case, fastest):
            us = times[plan]
            h_us = times.get(heuristic)
            cases[tc.name] = {"op": op_name, "us": round(us, 3), "heuristic_us": None if h_us is None else round(h_us, 3),
                              "best_us": round(f, 3), "plans_timed": len(times), "min_bytes": bench.min_bytes,
                              "gbps": round(bench.min_bytes / us / 1e3, 1) if device.type == "cuda" else None}
            if b.kind == "fused":  # candidates[0] is two launches (with PDL where the device has it)
                gain = " (two launches)" if plan == heuristic else (f", two launches {h_us:.2f} us" if h_us else "")
            else:
                gain = f", heuristic {h_us:.2f} us" if h_us is not None and plan != heuristic else " (the heuristic's)"
            parts.append(f"{tc.name} {op_name} {us:.2f} us{gain}")
        del per_case
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"plan": plan, "record": {"plan": asdict(plan), "cases": cases},
                "line": f"{b.key}: {_fmt_plan(plan)}: " + "; ".join(parts)}
    return "every timed plan gave a wrong result (see above)"


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("kernelstack", "torch", "triton"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        if args.device is not None and args.device.strip().lower() == "cpu":
            os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported
        return run(args)
    except UsageError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
