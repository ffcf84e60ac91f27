"""The "torch" reference: rows grouped by adapter once per batch, one matmul per used slot, no host
synchronisation in an op call (what a user without Triton or Mosaic GPU runs on a GPU)."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from lora import testing as T
from lora.torch_backend import TorchLoRABackend

#: Tensor methods that read device values on the host (a synchronisation on a GPU).
SYNCING = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy"}


class Record(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def _matmuls(names):
    return sum(n in ("matmul", "__matmul__", "mm", "addmm") for n in names)


@pytest.mark.parametrize("op", ["shrink3", "expand", "qkv", "gate_up"])
def test_one_matmul_per_used_slot_and_no_host_reads(op, rng):
    comp = T.Composition([3, 0, 5, 2, 4, 1, 6], [2, 0, 1, 2, 3, 2, 1], [8, 5, 0, 3], [0.5, 1.0, 2.0, 1.5], 8, 23)
    used = len(comp.used_slots())
    assert used == 2  # slot 1 (rank 5) and slot 3 (rank 3); slot 0 has only an empty segment, slot 2 rank 0
    backend = TorchLoRABackend("torch", T.batch_info(comp))
    resolved = T.contract_op(op, 12, 10, 4)
    t = T.make_inputs(resolved, comp, "float32", "cpu", seed=0)
    ref = T.oracle(resolved, comp, t)
    inputs = {k: v.clone() for k, v in t.items()}
    with Record() as rec:  # the primitives: what a call runs after validation
        if resolved.kind == "shrink":
            out = backend.shrink(inputs["x"], inputs["a"], resolved.stack)
        else:
            offsets = torch.tensor(resolved.offsets, dtype=torch.int32)
            x = inputs["x"] if resolved.kind == "expand" else backend.shrink(inputs["x"], inputs["a"], resolved.stack)
            out = backend.expand(x, inputs["b"], offsets, resolved.max_slice, inputs["base"])
    assert not SYNCING & set(rec.names), f"host reads in an op call: {sorted(SYNCING & set(rec.names))}"
    per_primitive = 2 if resolved.kind == "fused" else 1
    assert _matmuls(rec.names) == per_primitive * used, rec.names
    assert T.compare(out, ref, "float32", comp=comp, op=resolved).ok


def test_grouping_follows_set_batch_info(rng):
    """A new batch (set_batch_info) regroups; the same backend object serves both."""
    backend = TorchLoRABackend("torch")
    for seed in range(3):
        comp = T.random_composition(rng, num_lora=4, max_r=8)
        check, _ = T.run_op(backend, T.contract_op("qkv", 9, 7, 3), comp, "float16", seed=seed)
        assert check.ok, f"{comp}: {check.detail} {check.problems}"


def test_scalings_are_read_at_call_time():
    """Scalings stay device values read by the op (an engine may update them in place)."""
    comp = T.Composition([4], [0], [2], [1.0], 2, 4)
    bi = T.batch_info(comp)
    backend = TorchLoRABackend("torch", bi)
    x = torch.ones(4, 2)
    b = torch.ones(1, 3, 2)
    first = backend.run_lora_b_sgemm(x, b).clone()
    bi.scalings.fill_(3.0)
    assert torch.equal(backend.run_lora_b_sgemm(x, b), 3 * first)
