"""Torch side of the contract: round numpy inputs to a torch dtype, run an op, compare with the oracle."""

from __future__ import annotations

import numpy as np
import torch

from lora import LoRABatchInfo

from . import contract as C

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def to_torch(a: np.ndarray, dtype: torch.dtype, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)


def to_f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def batch_info(comp: C.Composition, device) -> LoRABatchInfo:
    return LoRABatchInfo.from_segments(comp.seg_lens, comp.weight_indices, comp.lora_ranks, comp.scalings, device=device)


OPS = ("shrink1", "shrink2", "shrink3", "expand", "expand_nobase", "qkv", "gate_up")


def run_op(backend, op: str, comp: C.Composition, rng, dtype_name: str, device, *, k: int, n: int, kv: int | None = None):
    """Run ``op`` on fresh poisoned inputs; return (Check, output tensor)."""
    dtype = DTYPES[dtype_name]
    t = lambda a: to_torch(a, dtype, device)  # noqa: E731
    backend.set_batch_info(batch_info(comp, device))
    if op.startswith("shrink"):
        stack = int(op[-1])
        x, a = t(C.activations(rng, comp, k)), t(C.shrink_weights(rng, comp, stack, k))
        out = backend.run_lora_a_sgemm(x, a, stack_num=stack)
        ref = C.ref_shrink(comp, to_f64(x), to_f64(a), stack)
    elif op in ("expand", "expand_nobase"):
        x, b = t(C.expand_input(rng, comp, 1)), t(C.expand_weights(rng, comp, n))
        base = t(C.base_output(rng, comp, n)) if op == "expand" else None
        ref = C.ref_expand(comp, to_f64(x), to_f64(b), [0, n], None if base is None else to_f64(base))
        out = backend.run_lora_b_sgemm(x, b, base_output=base)
        if base is not None:
            assert out.data_ptr() == base.data_ptr(), "expand must add into base_output in place and return it"
    elif op == "qkv":
        kv = kv or max(1, n // 4)
        offsets = [0, n, n + kv, n + 2 * kv]
        x = t(C.activations(rng, comp, k))
        a, b = t(C.shrink_weights(rng, comp, 3, k)), t(C.expand_weights(rng, comp, offsets[-1]))
        base = t(C.base_output(rng, comp, offsets[-1]))
        ref = C.ref_stacked(comp, to_f64(x), to_f64(a), to_f64(b), offsets, to_f64(base))
        off_t = torch.tensor(offsets, dtype=torch.int32, device=device)
        out = backend.run_qkv_lora(x, a, b, off_t, max(n, kv), base_output=base)
        assert out.data_ptr() == base.data_ptr(), "qkv must add into base_output in place"
    elif op == "gate_up":
        x = t(C.activations(rng, comp, k))
        a, b = t(C.shrink_weights(rng, comp, 2, k)), t(C.expand_weights(rng, comp, 2 * n))
        base = t(C.base_output(rng, comp, 2 * n))
        ref = C.ref_stacked(comp, to_f64(x), to_f64(a), to_f64(b), [0, n, 2 * n], to_f64(base))
        out = backend.run_gate_up_lora(x, a, b, base_output=base)
        assert out.data_ptr() == base.data_ptr(), "gate-up must add into base_output in place"
    else:
        raise ValueError(op)
    assert out.dtype == dtype, f"{op} returned {out.dtype}, expected the activation dtype {dtype}"
    return C.compare(to_f64(out), ref, dtype_name), out
