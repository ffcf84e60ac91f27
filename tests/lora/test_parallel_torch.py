"""lora.parallel on torch.distributed: gloo on loopback, 2 and 4 processes, every runnable backend.

One spawn per world size runs every case in every process (module-scoped fixture, bounded in time);
each process saves its local outputs, and the tests compare them, rank by rank, against the float64
oracle of lora.testing and against the single-device torch reference backend run on the
*full* weights (the parent process), both cut with the same shard. Compositions are random (uneven
and zero-length segments, rank-0 slots, rows past the last segment) and inputs poisoned.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
import zlib
from datetime import timedelta

import numpy as np
import pytest
import torch

from lora.parallel import sharding as S
from tests.conftest import BASE_SEED
from lora import testing as C

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
K, N = 64, 48  # K splits over 4 ranks into 16, N (column / gate-up) into 12 / 6
HEAD_DIM = 4
SPAWN_TIMEOUT_S = 150


def _backends() -> list[str]:
    """Registered backends that run on CPU tensors here: all available ones on a CPU-only machine
    (triton in its interpreter; pallas needs jax and CUDA), only the torch reference on a CUDA machine
    (GPU backends run tensor-parallel in benchmarks/tp_bench.py, which checks them against it)."""
    import lora

    if torch.cuda.is_available():
        return ["torch"]
    os.environ.setdefault("TRITON_INTERPRET", "1")
    return sorted(s.name for s in lora.available_backends() if s.available)


def _dtypes(backend: str) -> list[str]:
    # Triton's CPU interpreter computes bf16 dots wrongly: float32 there (fp16 is covered by tests/lora).
    return ["float32"] if backend == "triton" else ["float32", "bfloat16"]


_RUN_SEED = [BASE_SEED]  # the parent's; each worker process sets it to the value the parent passes


def _seed(name: str) -> int:
    return (_RUN_SEED[0] + zlib.crc32(name.encode())) % 2**32


def _qkv_heads(tp: int, kind: str) -> tuple[int, int]:
    """(q_heads, kv_heads): kv heads sharded (kv % tp == 0) or replicated (tp % kv == 0, kv < tp)."""
    return (2 * tp, tp) if kind == "qkv_sharded" else (2 * tp, max(1, tp // 2))


CASES = ("column", "gate_up", "qkv_sharded", "qkv_replicated", "row", "row_f32_reduce", "row_fold")


def build(case: str, tp: int, dtype_name: str):
    """Full (unsharded) inputs of one case, the same in every process: (comp, tensors, layout info)."""
    rng = np.random.default_rng(_seed(f"{case}-{tp}-{dtype_name}"))
    comp = C.work_composition(rng)
    dt = DTYPES[dtype_name]
    t = lambda a: torch.from_numpy(a).to(dt)  # noqa: E731
    if case in ("column", "gate_up", "qkv_sharded", "qkv_replicated"):
        if case.startswith("qkv"):
            qh, kvh = _qkv_heads(tp, case)
            n, stack = (qh + 2 * kvh) * HEAD_DIM, 3
        else:
            n, stack = N, (2 if case == "gate_up" else 1)
        inp = dict(
            x=t(C.activations(rng, comp, K)),
            a=t(C.shrink_weights(rng, comp, stack, K)),
            b=t(C.expand_weights(rng, comp, n)),
            base=t(C.base_output(rng, comp, n)),
        )
        return comp, inp
    inp = dict(
        x=t(C.activations(rng, comp, K)),
        a=t(C.shrink_weights(rng, comp, 1, K)),
        b=t(C.expand_weights(rng, comp, N)),
    )
    if case == "row_fold":  # each rank's partial base output (before the base layer's all-reduce)
        inp["bases"] = [t(C.base_output(rng, comp, N)) for _ in range(tp)]
    else:
        inp["base"] = t(C.base_output(rng, comp, N))
    return comp, inp


def shard_of(case: str, tp: int, rank: int) -> S.Shard:
    if case == "column":
        return S.column_shard(N, tp, rank)
    if case == "gate_up":
        return S.gate_up_shard(N, tp, rank)
    if case.startswith("qkv"):
        qh, kvh = _qkv_heads(tp, case)
        return S.qkv_shard(qh, kvh, HEAD_DIM, tp, rank)
    return S.row_shard(K, tp, rank)


def batch_info(comp):
    from lora import LoRABatchInfo

    return LoRABatchInfo.from_segments(comp.seg_lens, comp.weight_indices, comp.lora_ranks, comp.scalings)


# ---- the worker (one process per rank) -------------------------------------------------------------


def run_case(tp_lora, case: str, tp: int, rank: int, dtype_name: str) -> torch.Tensor:
    """This rank's output of one case, from its shard of the full inputs."""
    comp, inp = build(case, tp, dtype_name)
    tp_lora.set_batch_info(batch_info(comp))
    shard = shard_of(case, tp, rank)
    if case in ("column", "gate_up", "qkv_sharded", "qkv_replicated"):
        b, base = shard.take(inp["b"], 1), shard.take(inp["base"], 1)
        op = {"column": tp_lora.run_column_lora, "gate_up": tp_lora.run_gate_up_lora}.get(case, tp_lora.run_qkv_lora)
        return op(inp["x"], inp["a"], b, shard, base_output=base)
    x, a = shard.take(inp["x"], 1), shard.take(inp["a"], 2)
    if case == "row_fold":
        return tp_lora.run_row_lora(x, a, inp["b"], inp["bases"][rank], reduce="fold", shard=shard)
    return tp_lora.run_row_lora(x, a, inp["b"], inp["base"], shard=shard)


def _worker(rank: int, tp: int, init_method: str, out_dir: str, backends: list[str], seed: int) -> None:
    import torch.distributed as dist

    import lora
    from lora.parallel import TensorParallelLoRA

    _RUN_SEED[0] = seed  # every rank builds the same full inputs as the parent

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=tp, timeout=timedelta(seconds=60))
    results: dict[str, object] = {}
    try:
        for name in backends:
            for dtype_name in _dtypes(name):
                for case in CASES:
                    reduce_dtype = torch.float32 if case == "row_f32_reduce" else None
                    tp_lora = TensorParallelLoRA(lora.get_backend_from_name(name)(name), reduce_dtype=reduce_dtype)
                    key = f"{name}/{dtype_name}/{case}"
                    try:
                        results[key] = run_case(tp_lora, case, tp, rank, dtype_name).clone()
                    except Exception:  # reported by the test of this case, not lost with the process
                        results[key] = traceback.format_exc()
        # A shard of another rank is refused before any launch.
        tp_lora = TensorParallelLoRA(lora.get_backend_from_name("torch")("torch"))
        comp, inp = build("column", tp, "float32")
        tp_lora.set_batch_info(batch_info(comp))
        other = S.column_shard(N, tp, (rank + 1) % tp)
        try:
            tp_lora.run_column_lora(inp["x"], inp["a"], other.take(inp["b"], 1), other)
            results["wrong_shard"] = "no error"
        except ValueError as exc:
            results["wrong_shard"] = f"ValueError: {exc}"
        # A bad B of a row layer is refused before the shrink and the all-reduce (no rank left waiting).
        comp, inp = build("row", tp, "float32")
        tp_lora.set_batch_info(batch_info(comp))
        row = S.row_shard(K, tp, rank)
        bad_b = inp["b"][:, :, :-1].contiguous()
        try:
            tp_lora.run_row_lora(row.take(inp["x"], 1), row.take(inp["a"], 2), bad_b, inp["base"])
            results["bad_row_b"] = "no error"
        except ValueError as exc:
            results["bad_row_b"] = f"ValueError: {exc}"
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(tp: int, out_dir: str, backends: list[str]) -> list[dict]:
    """Run _worker in tp processes (loopback only), bounded by SPAWN_TIMEOUT_S; each rank's results."""
    import torch.multiprocessing as mp

    if "lo" in {name for _, name in socket.if_nameindex()}:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    init = f"tcp://127.0.0.1:{_free_port()}"
    ctx = mp.start_processes(_worker, args=(tp, init, out_dir, backends, _RUN_SEED[0]), nprocs=tp, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    try:
        while not ctx.join(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{tp} gloo processes did not finish within {SPAWN_TIMEOUT_S} s")
    finally:
        for p in ctx.processes:  # only the processes this test started
            if p.is_alive():
                p.kill()
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(tp)]


# ---- the tests ------------------------------------------------------------------------------------

BACKENDS = _backends()


@pytest.fixture(scope="module", params=[2, 4], ids=lambda tp: f"tp{tp}")
def world(request, tmp_path_factory):
    tp = request.param
    return tp, spawn(tp, str(tmp_path_factory.mktemp(f"tp{tp}")), BACKENDS)


def f64(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


def references(case: str, tp: int, dtype_name: str):
    """The float64 oracle and the single-device torch backend, both on the full weights."""
    import lora

    comp, inp = build(case, tp, dtype_name)
    ref_backend = lora.get_backend_from_name("torch")("torch", batch_info(comp))
    if case in ("column", "gate_up", "qkv_sharded", "qkv_replicated"):
        shard0 = shard_of(case, tp, 0)
        stack = len(shard0.ranges)
        full_offs = [0]
        n = inp["b"].shape[1]
        if case.startswith("qkv"):
            qh, kvh = _qkv_heads(tp, case)
            full_offs = [0, qh * HEAD_DIM, (qh + kvh) * HEAD_DIM, n]
            single = ref_backend.run_qkv_lora(
                inp["x"], inp["a"], inp["b"], torch.tensor(full_offs, dtype=torch.int32), qh * HEAD_DIM,
                base_output=inp["base"].clone(),
            )
        elif case == "gate_up":
            full_offs = [0, n // 2, n]
            single = ref_backend.run_gate_up_lora(inp["x"], inp["a"], inp["b"], base_output=inp["base"].clone())
        else:
            full_offs = [0, n]
            xa = ref_backend.run_lora_a_sgemm(inp["x"], inp["a"])
            single = ref_backend.run_lora_b_sgemm(xa, inp["b"], base_output=inp["base"].clone())
        assert stack == len(full_offs) - 1
        oracle = C.ref_stacked(comp, f64(inp["x"]), f64(inp["a"]), f64(inp["b"]), full_offs, f64(inp["base"]))
        return oracle, f64(single)
    base = sum(f64(b) for b in inp["bases"]) if case == "row_fold" else f64(inp["base"])
    oracle = C.ref_stacked(comp, f64(inp["x"]), f64(inp["a"]), f64(inp["b"]), [0, N], base)
    xa = ref_backend.run_lora_a_sgemm(inp["x"], inp["a"])
    single_base = torch.from_numpy(base).to(DTYPES[dtype_name])
    single = ref_backend.run_lora_b_sgemm(xa, inp["b"], base_output=single_base)
    return oracle, f64(single)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def _result(results, rank, key):
    value = results[rank][key]
    assert not isinstance(value, str), f"rank {rank} failed on {key}:\n{value}"
    return value


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend, dtype_name", [(b, d) for b in BACKENDS for d in _dtypes(b)])
def test_matches_single_device_on_full_weights(world, backend, dtype_name, case):
    tp, results = world
    key = f"{backend}/{dtype_name}/{case}"
    oracle, single = references(case, tp, dtype_name)
    outs = [_result(results, r, key) for r in range(tp)]
    if case == "row_fold":  # the base layer's all-reduce sums the partials, LoRA update included
        checks = [(sum(f64(o) for o in outs), oracle, single)]
    elif case.startswith("row"):  # every rank holds the full output, the same bits on each
        for r in range(1, tp):
            assert torch.equal(_bits(outs[r]), _bits(outs[0])), f"rank {r} differs from rank 0"
        checks = [(f64(outs[0]), oracle, single)]
    else:  # rank r holds its columns of the full output
        checks = []
        for r in range(tp):
            shard = shard_of(case, tp, r)
            checks.append((f64(outs[r]), shard.take(oracle, 1), shard.take(single, 1)))
    for out, ref, ref_single in checks:
        check = C.compare(out, ref, dtype_name)
        assert check.ok, f"{key} tp={tp} vs float64 oracle: {check.detail}"
        check = C.compare(out, ref_single, dtype_name)
        assert check.ok, f"{key} tp={tp} vs single-device torch on full weights: {check.detail}"


def test_bad_row_b_is_refused_before_the_collective(world):
    tp, results = world
    for r in range(tp):
        msg = results[r]["bad_row_b"]
        assert msg.startswith("ValueError") and "lora_b has max_r=" in msg, msg


def test_shard_of_another_rank_is_refused(world):
    tp, results = world
    for r in range(tp):
        msg = results[r]["wrong_shard"]
        assert msg.startswith("ValueError") and f"rank {(r + 1) % tp} of tp={tp}" in msg, msg


# ---- sharding helpers (no processes) ---------------------------------------------------------------


def test_qkv_shard_gqa_offsets_sharded():
    # Llama-3-8B at tp 4: 32 q heads, 8 kv heads of 128 -> 8 q heads and 2 kv heads per rank.
    s = S.qkv_shard(32, 8, 128, tp=4, rank=1)
    assert s.output_offset == (0, 1024, 1280, 1536) and s.max_slice_width == 1024
    assert s.ranges == ((1024, 2048), (4096 + 256, 4096 + 512), (5120 + 256, 5120 + 512))


def test_qkv_shard_replicates_kv_heads_when_tp_is_a_multiple():
    # 8 kv heads at tp 16: each kv head on 2 consecutive ranks.
    shards = [S.qkv_shard(64, 8, 128, tp=16, rank=r) for r in range(16)]
    k_heads = [(s.ranges[1][0] - 8192) // 128 for s in shards]
    assert k_heads == [r // 2 for r in range(16)]
    assert all(s.output_offset == (0, 512, 640, 768) for s in shards)
    # The q heads of a rank attend to the kv head it holds (8 q heads per kv head).
    for r, s in enumerate(shards):
        assert s.ranges[0][0] // 128 // 8 == k_heads[r]


def test_qkv_shard_refuses_kv_heads_that_neither_divide_nor_are_divided():
    with pytest.raises(ValueError, match="kv_heads=3"):
        S.qkv_shard(12, 3, 8, tp=2, rank=0)
    with pytest.raises(ValueError, match="q_heads=6"):
        S.qkv_shard(6, 2, 8, tp=4, rank=0)


def test_uneven_and_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n=10"):
        S.column_shard(10, 4, 0)
    with pytest.raises(ValueError, match=r"two_n=7"):
        S.gate_up_shard(7, 1, 0)
    with pytest.raises(ValueError, match=r"rank must lie in \[0, tp=2\)"):
        S.row_shard(8, 2, 2)
    with pytest.raises(TypeError, match="tp must be an int"):
        S.row_shard(8, 2.0, 0)
    with pytest.raises(ValueError, match="48 elements along axis 1 but this shard cuts a dimension of 40"):
        S.column_shard(40, 2, 0).take(np.zeros((2, 48)), 1)


def test_take_and_shard_major_on_numpy_and_torch():
    full = np.arange(2 * 12 * 3).reshape(2, 12, 3)
    shards = [S.gate_up_shard(12, 3, r) for r in range(3)]
    np.testing.assert_array_equal(shards[1].take(full, 1), full[:, [2, 3, 8, 9], :])
    sm = S.shard_major(full, shards, axis=1)
    np.testing.assert_array_equal(sm[:, 4:8], shards[1].take(full, 1))
    t = torch.from_numpy(full)
    local = shards[2].take(t, 1)
    assert local.is_contiguous() and torch.equal(local, torch.from_numpy(full[:, [4, 5, 10, 11], :]))


def test_wrapper_needs_an_initialised_process_group():
    import lora
    from lora.parallel import TensorParallelLoRA

    with pytest.raises(RuntimeError, match="init_process_group"):
        TensorParallelLoRA(lora.get_backend_from_name("torch")("torch"))
    with pytest.raises(TypeError, match="backend must be a BaseLoRABackend"):
        TensorParallelLoRA("torch")


def test_paper_cost_of_the_row_all_reduces():
    from lora.parallel import cost

    # Llama-3-70B, tp 8, decode 64 tokens at r 16 in bf16: two all-reduces of 64*16*2 bytes per layer.
    rows = cost.layer_collectives(64, 16, 8, busbw=450e9, latency_s=0.0)
    assert [c.module for c in rows] == ["lora o", "lora down"] and all(c.nbytes == 2048 for c in rows)
    assert rows[0].bus_bytes_per_rank == pytest.approx(2 * 7 / 8 * 2048)
    assert rows[0].seconds == pytest.approx(3584 / 450e9)
    assert cost.layer_collectives(64, 16, 1)[0].seconds == 0.0  # tp 1: nothing to reduce
