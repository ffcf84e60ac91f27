"""Every validation rule raises a clear error naming the argument, before any kernel launch."""

from __future__ import annotations

import pytest
import torch

import lora
from lora import LoRABatchInfo

STATUS = {s.name: s for s in lora.available_backends()}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
S, K, R, N, L = 6, 16, 4, 12, 2


def make(name):
    if not STATUS[name].available:
        pytest.skip(f"backend {name!r} cannot run here: {STATUS[name].reason}")
    bi = LoRABatchInfo.from_segments([2, 4], [0, 1], [R, 2], [1.0, 0.5], device=DEVICE)
    return lora.get_backend_from_name(name)(name, bi)


def t(*shape, dtype=torch.float16):
    return torch.randn(*shape, device=DEVICE).to(dtype)


backends = pytest.mark.parametrize("name", sorted(STATUS))


@backends
@pytest.mark.parametrize(
    "args, kwargs, exc, words",
    [
        ((t(S, K).tolist(), t(L, R, K)), {}, TypeError, "x must be a torch.Tensor"),
        ((t(S, K, 1), t(L, R, K)), {}, ValueError, "x must be 2-D"),
        ((t(S, K, dtype=torch.float64), t(L, R, K, dtype=torch.float64)), {}, TypeError, "x has dtype torch.float64"),
        ((t(K, S).T, t(L, R, K)), {}, ValueError, "x must be contiguous"),
        ((t(S, K), t(L, R, K, dtype=torch.float32)), {}, TypeError, "weights has dtype"),
        ((t(S, K), t(L, R, K + 1)), {}, ValueError, "K=17"),
        ((t(S, K), t(L + 1, R, K)), {}, ValueError, "batch_info.lora_ranks has shape"),
        ((t(S, K), t(L, 2 * R, K).transpose(1, 2).contiguous().transpose(1, 2)), {}, ValueError, "weights must be contiguous"),
        ((t(S, K), t(L, R, K)), {"stack_num": 5}, ValueError, "stack_num must be 1, 2, 3 or 4"),
        ((t(S, K), t(L, R, K)), {"stack_num": 1.0}, TypeError, "stack_num must be an int"),
        ((t(S, K), t(L, 3 * R + 1, K)), {"stack_num": 3}, ValueError, "multiple of stack_num=3"),
        ((t(S, K), t(L, R - 1, K)), {}, ValueError, "lora_ranks"),  # rank 4 > max_r 3 (checked on CPU)
    ],
)
def test_shrink_rejects(name, args, kwargs, exc, words):
    backend = make(name)
    if words == "lora_ranks" and DEVICE != "cpu":
        pytest.skip("rank values are checked without a sync only for CPU metadata")
    with pytest.raises(exc, match=words):
        backend.run_lora_a_sgemm(*args, **kwargs)


@backends
@pytest.mark.parametrize(
    "args, kwargs, exc, words",
    [
        ((t(S, R + 1), t(L, N, R)), {}, ValueError, "max_r=4"),
        ((t(S, R), t(L, N, R)), {"base_output": t(S, N + 1)}, ValueError, "base_output has shape"),
        ((t(S, R), t(L, N, R)), {"base_output": t(S, N, dtype=torch.float32)}, TypeError, "base_output has dtype"),
        ((t(S, R), t(L, N, R)), {"base_output": t(N, S).T}, ValueError, "base_output must be contiguous"),
        ((t(S, R), t(L, N, R, dtype=torch.bfloat16)), {}, TypeError, "weights has dtype"),
    ],
)
def test_expand_rejects(name, args, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        make(name).run_lora_b_sgemm(*args, **kwargs)


@backends
def test_qkv_rejects_inconsistent_offsets(name):
    backend = make(name)
    q, kv = 8, 4
    a, b = t(L, 3 * R, K), t(L, q + 2 * kv, R)
    ok = torch.tensor([0, q, q + kv, q + 2 * kv], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=r"output_offset must have shape \(4,\)"):
        backend.run_qkv_lora(t(S, K), a, b, ok[:3], q)
    with pytest.raises(TypeError, match="output_offset must be int32 or int64"):
        backend.run_qkv_lora(t(S, K), a, b, ok.float(), q)
    with pytest.raises(ValueError, match="max_qkv_out_dim"):
        backend.run_qkv_lora(t(S, K), a, b, ok, q + 2 * kv + 1)
    with pytest.raises(ValueError, match="qkv_lora_b has max_r"):
        backend.run_qkv_lora(t(S, K), a, t(L, q + 2 * kv, R + 1), ok, q)
    with pytest.raises(ValueError, match="qkv_lora_b has 3 adapter slots"):
        backend.run_qkv_lora(t(S, K), a, t(L + 1, q + 2 * kv, R), ok, q)
    cpu_bad = torch.tensor([0, q, q + kv, q + 2 * kv + 1], dtype=torch.int32)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="must rise strictly from 0 to 16"):
            backend.run_qkv_lora(t(S, K), a, b, cpu_bad, q)
        with pytest.raises(ValueError, match="wider than max_qkv_out_dim"):
            backend.run_qkv_lora(t(S, K), a, b, ok, kv)
    else:
        with pytest.raises(ValueError, match="output_offset is on cpu"):
            backend.run_qkv_lora(t(S, K), a, b, cpu_bad, q)


@backends
def test_gate_up_rejects_odd_rows_and_missing_batch_info(name):
    backend = make(name)
    with pytest.raises(ValueError, match="even number"):
        backend.run_gate_up_lora(t(S, K), t(L, 2 * R, K), t(L, 2 * N + 1, R))
    with pytest.raises(ValueError, match="gate_up_lora_b has max_r"):
        backend.run_gate_up_lora(t(S, K), t(L, 2 * R, K), t(L, 2 * N, 2 * R))
    bare = lora.get_backend_from_name(name)(name)
    with pytest.raises(RuntimeError, match="set_batch_info"):
        bare.run_gate_up_lora(t(S, K), t(L, 2 * R, K), t(L, 2 * N, R))
    with pytest.raises(TypeError, match="LoRABatchInfo"):
        bare.set_batch_info({"bs": 1})


@backends
def test_batch_info_must_match_x_device_and_dtypes(name):
    backend = make(name)
    bi = backend.batch_info
    backend.set_batch_info(LoRABatchInfo(**{**bi.__dict__, "seg_lens": bi.seg_lens.long()}))
    with pytest.raises(TypeError, match=r"batch_info.seg_lens has dtype torch.int64"):
        backend.run_lora_a_sgemm(t(S, K), t(L, R, K))
    if DEVICE == "cpu":
        backend.set_batch_info(bi)
        with pytest.raises(ValueError, match="cover 6 tokens but x has 5 rows"):
            backend.run_lora_a_sgemm(t(S - 1, K), t(L, R, K))
