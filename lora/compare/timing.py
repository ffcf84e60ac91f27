"""Timing: CUDA events (and CUDA-graph replay for decode) on a GPU, the wall clock on the CPU.

Every measurement rotates over several input sets (``fns[i % len(fns)]``) whose bytes together exceed
the last-level cache several times over, so a call does not find its weights in L2 from the call
before. Each figure is the median over the timed calls after a warm-up (which also absorbs JIT
compilation and autotuning).

* ``cuda-events``: an event pair around each eager call (what ``triton.testing.do_bench`` does,
  with input rotation in place of its cache flush). Includes the host's launch cost when the GPU
  is faster than the launch, which is the honest figure for an eager call.
* ``cuda-graph``: each input set's call captured once in its own CUDA graph, replays timed with
  an event pair each: one call replayed alone from a graph (its launch included).
* ``cuda-graph-batched``: all sets' calls (at least 16) captured in one graph, replay time / calls:
  the device time of a call among many, back to back (how a served model's graph runs them, and
  what an eager loop gets when the host runs ahead of the GPU): the headline of every case.
* ``wall-clock``: ``time.perf_counter`` around each call on the CPU.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

__all__ = ["Budget", "Measurement", "copy_bandwidth", "l2_bytes", "rotation_sets", "time_calls", "time_cuda_graph"]


@dataclass(frozen=True)
class Budget:
    """How long to measure: warm-up and timed milliseconds, bounds on timed calls."""

    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_reps: int = 10
    max_reps: int = 2000

    @classmethod
    def for_run(cls, device: torch.device, quick: bool) -> "Budget":
        if device.type == "cuda":
            return cls(10.0, 25.0, 10, 500) if quick else cls(25.0, 100.0, 20, 2000)
        # CPU: a correctness run; just enough calls for a stable wall-clock median.
        return cls(0.0, 20.0, 1, 3) if quick else cls(0.0, 150.0, 1, 20)


@dataclass
class Measurement:
    method: str
    median_us: float
    reps: int
    sets: int
    p20_us: float = math.nan
    p80_us: float = math.nan
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.method, "median_us": self.median_us, "p20_us": self.p20_us, "p80_us": self.p80_us,
                "reps": self.reps, "sets": self.sets, **self.extra}


#: A CPU call at least this slow (microseconds) is timed once: it is an interpreter, not a kernel.
_SLOW_CPU_CALL_US = 100_000.0


def _summary(method: str, samples_us: Sequence[float], sets: int) -> Measurement:
    qs = statistics.quantiles(samples_us, n=5) if len(samples_us) >= 2 else [samples_us[0]] * 4
    return Measurement(method, statistics.median(samples_us), len(samples_us), sets, qs[0], qs[3])


def l2_bytes(device: torch.device) -> int:
    """The device's last-level cache in bytes (50 MB on an H100; 32 MiB assumed on the CPU)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)
    return 32 * 2**20


def rotation_sets(one_set_bytes: int, device: torch.device, *, factor: float = 3.0, max_sets: int = 128) -> int:
    """How many input sets to rotate over so together they exceed ``factor`` x the cache (1 on the CPU)."""
    if device.type != "cuda":
        return 1
    if one_set_bytes >= 2 * 2**30:
        return 1  # a set this large leaves nothing useful in a 50-60 MB L2; two would cost memory
    return max(2, min(max_sets, math.ceil(factor * l2_bytes(device) / max(one_set_bytes, 1))))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fns: Sequence[Callable[[], object]], device: torch.device, budget: Budget, first_us: float | None = None
) -> Measurement:
    """Median time of one call, rotating over ``fns`` (one per input set), after a warm-up.

    On the CPU, ``first_us`` (the wall time of a call just made) is the first sample; more calls are
    made only while they fit in the budget.
    """
    n = len(fns)
    if device.type == "cuda":
        for f in fns:  # at least one call per set: compiles, autotunes, touches every buffer once
            f()
        torch.cuda.synchronize(device)
        # estimate one call, then warm up for warmup_ms and time for rep_ms
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(max(n, 5)):
            fns[i % n]()
        end.record()
        end.synchronize()
        est_ms = max(start.elapsed_time(end) / max(n, 5), 1e-4)
        for i in range(int(budget.warmup_ms / est_ms)):
            fns[i % n]()
        reps = int(min(budget.max_reps, max(budget.min_reps, budget.rep_ms / est_ms)))
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            starts[i].record()
            fns[i % n]()
            ends[i].record()
        torch.cuda.synchronize(device)
        return _summary("cuda-events", [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)], n)

    # CPU (or any synchronous device): the wall clock around each call. ``first_us`` is the call just
    # checked: a slow one (Triton's interpreter, 0.1-2 s) is the only sample, so a correctness run stays
    # short; a fast one counts as the warm-up and fresh calls are timed within the budget.
    if first_us is None:
        t0 = time.perf_counter()
        fns[0]()
        _sync(device)
        first_us = (time.perf_counter() - t0) * 1e6
    if first_us >= _SLOW_CPU_CALL_US:
        samples = [first_us]
        reps = int(min(budget.max_reps, budget.rep_ms * 1e3 / first_us))
    else:
        samples = []
        reps = int(min(budget.max_reps, max(budget.min_reps, 2, budget.rep_ms * 1e3 / max(first_us, 1.0))))
    for i in range(len(samples), reps):
        t0 = time.perf_counter()
        fns[i % n]()
        _sync(device)
        samples.append((time.perf_counter() - t0) * 1e6)
    return _summary("wall-clock", samples, n)


def time_cuda_graph(
    fns: Sequence[Callable[[], object]], device: torch.device, budget: Budget, *, batched: bool = True
) -> tuple[Measurement, Measurement | None]:
    """Capture each call in a CUDA graph and time replays; raises if a call cannot be captured.

    Returns (one call replayed alone from its own graph, one call among all sets' calls in one graph).
    """
    n = len(fns)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch's capture recipe asks
        for f in fns:
            f()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)

    pool = torch.cuda.graph_pool_handle()
    graphs = []
    for f in fns:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            f()
        graphs.append(g)
    torch.cuda.synchronize(device)
    single = time_calls([g.replay for g in graphs], device, budget)
    single.method = "cuda-graph"

    together = None
    if batched:
        calls = max(n, 16)  # at least 16 calls a graph, cycling through the sets
        g_all = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g_all, pool=pool):
            for i in range(calls):
                fns[i % n]()
        torch.cuda.synchronize(device)
        m = time_calls([g_all.replay], device, Budget(budget.warmup_ms, budget.rep_ms, max(5, budget.min_reps // 2), 200))
        together = Measurement("cuda-graph-batched", m.median_us / calls, m.reps * calls, n,
                               m.p20_us / calls, m.p80_us / calls, {"calls_per_graph": calls})
        del g_all
    del graphs
    torch.cuda.synchronize(device)
    return single, together


def copy_bandwidth(device: torch.device, quick: bool = False) -> dict:
    """The device's copy bandwidth in GB/s, counting bytes read plus bytes written, median of several copies."""
    if device.type == "cuda":
        nbytes = (256 if quick else 1024) * 2**20
        src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
        dst = torch.empty_like(src)
        fns = [lambda: dst.copy_(src)]
        m = time_calls(fns, device, Budget(10.0, 50.0 if quick else 200.0, 10, 200))
        method = "torch copy_ device-to-device, cuda events"
    else:
        nbytes = (32 if quick else 128) * 2**20
        src = torch.rand(nbytes // 4, dtype=torch.float32)
        dst = torch.empty_like(src)
        fns = [lambda: dst.copy_(src)]
        m = time_calls(fns, device, Budget(0.0, 100.0 if quick else 300.0, 5, 50))
        method = "torch copy_ in host memory, wall clock"
    gbps = 2 * nbytes / (m.median_us * 1e-6) / 1e9
    del src, dst
    return {"gbps": gbps, "bytes_per_copy": nbytes, "median_us": m.median_us, "reps": m.reps, "method": method}
