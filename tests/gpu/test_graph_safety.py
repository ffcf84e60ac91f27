"""Graph and stream safety of the persistent buffers (issue 15), on the GPU.

* A captured decode-size shrink must not write into memory that a later, larger eager call freed:
  capture 96 tokens / 3 adapters / K 2560, run 256 tokens eagerly (on the capture's stream too),
  allocate small int32 tensors filled with 7, replay, and check that no probe changed. The same for
  triton's gate-up pair whose expand sums the shrink's partials (a scratch buffer of its own).
* Two streams running LoRA ops at the same time must both be right (split-K scratch and the fused
  ops' intermediate are per stream).
* After warm-up an op call allocates only the outputs the caller did not pass (memory stats), and
  never calls cudaMalloc.
* A graph captured once replays a whole step with new batches written in place, with the metadata
  derived outside the graph (set_batch_info before replay) and inside it (prepare captured).

References are float64 on the device, computed from the same (rounded) inputs.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from lora import LoRABatchInfo

from .conftest import backend_or_skip, gpu_backends, needs_cuda

pytestmark = needs_cuda
DEV = "cuda"
DT = torch.bfloat16
TOL = 1.5e-2


def _decode_bi(tokens: int, num_lora: int, rank: int, gen: torch.Generator, device=DEV) -> LoRABatchInfo:
    slots = torch.randint(0, num_lora, (tokens,), generator=gen).tolist()
    scal = (torch.rand(num_lora, generator=gen) * 1.75 + 0.25).tolist()
    return LoRABatchInfo.from_segments([1] * tokens, slots, [rank] * num_lora, scal, device=device)


def _ref_shrink(bi: LoRABatchInfo, x, a, stack: int = 1):
    """float64 (s, stack*max_r): row t gets x[t] @ A[w_t, :stack*r].T (all ranks == max_r here)."""
    slots = torch.repeat_interleave(bi.weight_indices.long(), bi.seg_lens.long())
    rows = slots.shape[0]
    out = torch.zeros(x.shape[0], a.shape[1], dtype=torch.float64, device=x.device)
    for w in slots.unique().tolist():
        idx = (slots == w).nonzero().squeeze(1)
        out[idx] = x[:rows][idx].double() @ a[w].double().T
    return out


def _ref_fused(bi: LoRABatchInfo, x, a, b, offsets: list[int], base):
    xa = _ref_shrink(bi, x, a, len(offsets) - 1)
    r = b.shape[2]
    slots = torch.repeat_interleave(bi.weight_indices.long(), bi.seg_lens.long())
    out = base.double().clone()
    for w in slots.unique().tolist():
        idx = (slots == w).nonzero().squeeze(1)
        scale = float(bi.scalings[w])
        for j, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
            out[idx, lo:hi] += scale * xa[idx, j * r:(j + 1) * r] @ b[w, lo:hi].double().T
    return out


def _close(out, ref, what: str):
    err = (out.double() - ref).norm() / ref.norm().clamp_min(1e-30)
    assert err <= TOL, f"{what}: rel error {float(err):.3g} > {TOL}"


def _partials_pair():
    """Triton's gate-up pair whose expand sums the split-K shrink's partials (its own scratch buffer)."""
    from lora.triton import tiling

    return tiling.forced_plan(tiling.FusedPlan(16, 16, 4, 32, 1, fuse=False, partials=True))


@pytest.mark.parametrize("op", ["shrink", "gate_up-partials"])
@pytest.mark.parametrize("name", gpu_backends())
def test_replayed_shrink_never_writes_freed_memory(name, op):
    """``gate_up-partials``: the same for triton's gate-up pair whose expand sums the shrink's partials."""
    if op != "shrink" and name != "triton":
        pytest.skip("the partials pair is the triton backend's (FusedPlan.partials)")
    gen = torch.Generator().manual_seed(15)
    k, r, num_lora, n = 2560, 16, 3, 512
    stack = 1 if op == "shrink" else 2
    backend = backend_or_skip(name)
    backend.reserve(max_tokens=256, max_segments=256)
    small, big = _decode_bi(96, num_lora, r, gen), _decode_bi(256, num_lora, r, gen)
    a = (torch.randn(num_lora, stack * r, k, device=DEV) / k**0.5).to(DT)
    b = (torch.randn(num_lora, 2 * n, r, device=DEV) / r**0.5).to(DT)
    x96, x256 = torch.randn(96, k, device=DEV).to(DT), torch.randn(256, k, device=DEV).to(DT)
    base96, base256 = torch.randn(96, 2 * n, device=DEV).to(DT), torch.randn(256, 2 * n, device=DEV).to(DT)

    def call(x, base):  # base: updated in place by the gate-up pair
        if op == "shrink":
            return backend.run_lora_a_sgemm(x, a)
        return backend.run_gate_up_lora(x, a, b, base_output=base)

    def ref(bi, x, base):
        return _ref_shrink(bi, x, a) if op == "shrink" else _ref_fused(bi, x, a, b, [0, n, 2 * n], base)

    start96 = base96.clone()
    with _partials_pair() if op != "shrink" else contextlib.nullcontext():
        stream = torch.cuda.Stream()
        backend.set_batch_info(small)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            call(x96, start96.clone())  # compile and size outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            out96 = call(x96, base96)

        # A larger eager call on the capture's own stream and on the default stream: any scratch the
        # graph holds must survive it.
        backend.set_batch_info(big)
        with torch.cuda.stream(stream):
            eager_side = call(x256, base256.clone())
        eager = call(x256, base256.clone())
        torch.cuda.synchronize()
        _close(eager, ref(big, x256, base256), "eager 256 tokens")
        _close(eager_side, ref(big, x256, base256), "eager 256 tokens on the capture stream")
        del eager, eager_side  # (no empty_cache: freed blocks stay in torch's cache, where the probes find them)

        probes = [torch.full((m,), 7, dtype=torch.int32, device=DEV) for m in range(1, 20000, 53)]
        probes += [torch.full((m,), 7, dtype=torch.int32, device=DEV) for m in (2**14, 2**16, 2**18, 2**20)]
        base96.copy_(start96)
        torch.cuda.synchronize()
        backend.set_batch_info(small)  # the graph's batch (metadata derived outside the graph)
        graph.replay()
        torch.cuda.synchronize()
    changed = sum(int((p != 7).any()) for p in probes)
    assert changed == 0, f"{changed} of {len(probes)} unrelated tensors changed when the graph was replayed"
    _close(out96, ref(small, x96, start96), "replayed 96 tokens")


@pytest.mark.parametrize("name", gpu_backends())
def test_two_streams_at_once(name):
    gen = torch.Generator().manual_seed(16)
    k, r, num_lora, n = 4096, 16, 8, 2048
    backend = backend_or_skip(name)
    bi = _decode_bi(64, num_lora, r, gen)
    backend.set_batch_info(bi)
    a = (torch.randn(num_lora, 2 * r, k, device=DEV) / k**0.5).to(DT)
    b = (torch.randn(num_lora, 2 * n, r, device=DEV) / r**0.5).to(DT)
    xs = [torch.randn(64, k, device=DEV).to(DT) for _ in range(8)]
    bases = [torch.randn(64, 2 * n, device=DEV).to(DT) for _ in range(8)]
    refs_fused = [_ref_fused(bi, x, a, b, [0, n, 2 * n], base) for x, base in zip(xs, bases)]
    refs_shrink = [_ref_shrink(bi, x, a, 2) for x in xs]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for s in streams:  # warm-up (compile, scratch) on each stream
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            backend.run_lora_a_sgemm(xs[0], a, stack_num=2)
            backend.run_gate_up_lora(xs[0], a, b, base_output=bases[0].clone())
    torch.cuda.synchronize()
    for trial in range(3):
        outs, fused = [], []
        work = [base.clone() for base in bases]
        torch.cuda.synchronize()
        for i in range(len(xs)):  # interleaved launches, no synchronisation between the streams
            with torch.cuda.stream(streams[i % 2]):
                outs.append(backend.run_lora_a_sgemm(xs[i], a, stack_num=2))
                fused.append(backend.run_gate_up_lora(xs[i], a, b, base_output=work[i]))
        torch.cuda.synchronize()
        for i in range(len(xs)):
            _close(outs[i], refs_shrink[i], f"trial {trial} shrink {i} on stream {i % 2}")
            _close(fused[i], refs_fused[i], f"trial {trial} gate-up {i} on stream {i % 2}")


def _layer(num_lora, r, gen):
    def w(*shape):
        return (torch.randn(*shape, generator=gen) / shape[-1] ** 0.5).to(DEV, DT)

    h, q, kv, inter = 1024, 1024, 256, 2048
    return dict(
        h=h, q=q, kv=kv, inter=inter,
        qkv_a=w(num_lora, 3 * r, h), qkv_b=w(num_lora, q + 2 * kv, r),
        o_a=w(num_lora, r, q), o_b=w(num_lora, h, r),
        gu_a=w(num_lora, 2 * r, h), gu_b=w(num_lora, 2 * inter, r),
        down_a=w(num_lora, r, inter), down_b=w(num_lora, h, r),
        off=torch.tensor([0, q, q + kv, q + 2 * kv], dtype=torch.int32, device=DEV),
    )


def _inputs(L, s, gen):
    def t(*shape):
        return torch.randn(*shape, generator=gen).to(DEV, DT)

    return dict(x=t(s, L["h"]), xq=t(s, L["q"]), xi=t(s, L["inter"]), qkv=t(s, L["q"] + 2 * L["kv"]),
                o=t(s, L["h"]), gu=t(s, 2 * L["inter"]), down=t(s, L["h"]))


def _step(backend, L, io):
    backend.run_qkv_lora(io["x"], L["qkv_a"], L["qkv_b"], L["off"], L["q"], base_output=io["qkv"])
    backend.run_lora_b_sgemm(backend.run_lora_a_sgemm(io["xq"], L["o_a"]), L["o_b"], base_output=io["o"])
    backend.run_gate_up_lora(io["x"], L["gu_a"], L["gu_b"], base_output=io["gu"])
    backend.run_lora_b_sgemm(backend.run_lora_a_sgemm(io["xi"], L["down_a"]), L["down_b"], base_output=io["down"])


def _check_step(bi, L, io, start, what):
    q, kv, inter = L["q"], L["kv"], L["inter"]
    _close(io["qkv"], _ref_fused(bi, start["x"], L["qkv_a"], L["qkv_b"], [0, q, q + kv, q + 2 * kv], start["qkv"]), f"{what} qkv")
    _close(io["o"], _ref_fused(bi, start["xq"], L["o_a"], L["o_b"], [0, L["h"]], start["o"]), f"{what} o")
    _close(io["gu"], _ref_fused(bi, start["x"], L["gu_a"], L["gu_b"], [0, inter, 2 * inter], start["gu"]), f"{what} gate_up")
    _close(io["down"], _ref_fused(bi, start["xi"], L["down_a"], L["down_b"], [0, L["h"]], start["down"]), f"{what} down")


@pytest.mark.parametrize("name", gpu_backends())
def test_no_device_allocation_after_warmup(name):
    gen = torch.Generator().manual_seed(17)
    backend = backend_or_skip(name)
    backend.set_batch_info(_decode_bi(64, 8, 16, gen))
    L = _layer(8, 16, gen)
    io = _inputs(L, 64, gen)
    for _ in range(2):
        _step(backend, L, io)  # warm-up: compile, scratch, metadata buffers
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()
    for _ in range(5):
        _step(backend, L, io)
    torch.cuda.synchronize()
    after = torch.cuda.memory_stats()
    made = after["allocation.all.allocated"] - before["allocation.all.allocated"]
    # the two run_lora_a_sgemm outputs of each step are the only tensors the caller did not pass
    assert made == 5 * 2, f"{made} allocations in 5 steps; expected 10 (the shrink outputs only)"
    assert after["segment.all.allocated"] == before["segment.all.allocated"], "an op call reached cudaMalloc"


@pytest.mark.parametrize("derive", ["outside", "inside"])
@pytest.mark.parametrize("name", gpu_backends())
def test_step_graph_replays_new_batches_written_in_place(name, derive):
    """The engine flow of lora.backend's docstring: reserve, capture once, update_ + derive, replay."""
    gen = torch.Generator().manual_seed(18)
    num_lora, r, s = 8, 16, 64
    backend = backend_or_skip(name)
    backend.reserve(max_tokens=s, max_segments=s)
    bi = LoRABatchInfo.empty(s, num_lora, device=DEV)
    bi.update_([1] * s, torch.randint(0, num_lora, (s,), generator=gen).tolist(), [r] * num_lora, [1.0] * num_lora)
    backend.set_batch_info(bi)
    L = _layer(num_lora, r, gen)
    io = _inputs(L, s, gen)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _step(backend, L, io)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        if derive == "inside":
            backend.prepare(bi)
        _step(backend, L, io)
    for trial in range(3):
        # new lengths (some empty, some 2 tokens, fewer segments), slots, ranks and scalings
        lens = torch.randint(0, 2, (s - 8,), generator=gen)
        lens[:4] = 2
        lens = lens[: s - 8].tolist()
        while sum(lens) > s:
            lens.pop()
        slots = torch.randint(0, num_lora, (len(lens),), generator=gen).tolist()
        scal = (torch.rand(num_lora, generator=gen) + 0.5).tolist()
        bi.update_(lens, slots, [r] * num_lora, scal)
        if derive == "outside":
            backend.set_batch_info(bi)
        fresh = _inputs(L, s, gen)
        for key in io:
            io[key].copy_(fresh[key])
        graph.replay()
        torch.cuda.synchronize()
        _check_step(bi, L, io, fresh, f"{derive} trial {trial}")


def test_tma_shrink_replays_new_inputs_written_in_place():
    """A prefill shrink plan with descriptor loads (``ShrinkPlan.tma``: the descriptors hold x's and the weights'
    addresses, made when the graph is captured) replays right with new x values and new batches (other segment
    lengths and slots: chunks that do and do not lie in one segment) written into the captured tensors, as an
    engine does (``update_``, ``set_batch_info``, replay), and writes nothing outside its output."""
    from lora.triton import tiling

    gen = torch.Generator().manual_seed(32)
    k, r, num_lora, stack, tokens = 1024, 64, 4, 3, 1000
    backend = backend_or_skip("triton")
    backend.reserve(max_tokens=tokens, max_segments=16)
    bi = LoRABatchInfo.empty(16, num_lora, device=DEV)

    def new_batch(lens):
        slots = torch.randint(0, num_lora, (len(lens),), generator=gen).tolist()
        bi.update_(lens, slots, [r] * num_lora, (torch.rand(num_lora, generator=gen) + 0.5).tolist())
        backend.set_batch_info(bi)

    a = (torch.randn(num_lora, stack * r, k, device=DEV) / k**0.5).to(DT)
    x = torch.randn(tokens, k, device=DEV).to(DT)
    plan = tiling.ShrinkPlan(64, 64, 1, 64, 1, 4, 4, tma=True)
    assert tiling.tma_supported(x, a) == (torch.cuda.get_device_capability()[0] >= 9)
    with tiling.forced_plan(plan):
        new_batch([300, 5, 200, 495])
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            backend.run_lora_a_sgemm(x, a, stack_num=stack)  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            out = backend.run_lora_a_sgemm(x, a, stack_num=stack)
        probes = [torch.full((m,), 7, dtype=torch.int32, device=DEV) for m in range(1, 20000, 53)]
        for lens in ([64, 64, 128, 1, 700, 43], [1000], [13, 987]):
            new_batch(lens)
            x.copy_(torch.randn(tokens, k, device=DEV).to(DT))
            out.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            _close(out, _ref_shrink(bi, x, a, stack), f"replayed {lens}")
    changed = sum(int((p != 7).any()) for p in probes)
    assert changed == 0, f"{changed} of {len(probes)} unrelated tensors changed when the graph was replayed"
