from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import lora
from lora import BaseLoRABackend, LoRABatchInfo, available_backends, get_backend_from_name, register_backend
from lora.registry import BackendUnavailableError, UnknownBackendError, unregister_backend
from lora.torch_backend import TorchLoRABackend

from . import contract as C
from .torch_cases import run_op


def test_from_segments_computes_indptr_and_max_len():
    bi = LoRABatchInfo.from_segments([3, 0, 5], np.array([1, 0, 1]), torch.tensor([8, 0]), [2.0, 0.5])
    assert bi.bs == 3 and bi.max_len == 5 and bi.num_lora == 2
    assert bi.seg_indptr.tolist() == [0, 3, 3, 8]
    assert bi.seg_lens.dtype == bi.seg_indptr.dtype == bi.weight_indices.dtype == bi.lora_ranks.dtype == torch.int32
    assert bi.scalings.dtype == torch.float32 and bi.scalings.tolist() == [2.0, 0.5]
    empty = LoRABatchInfo.from_segments([], [], [4], [1.0])
    assert empty.bs == 0 and empty.max_len == 0 and empty.seg_indptr.tolist() == [0]


@pytest.mark.parametrize(
    "args, words",
    [
        (([1, 2], [0], [4], [1.0]), "weight_indices has 1 entries but seg_lens has 2"),
        (([1], [0], [4, 4], [1.0]), "scalings has 1 entries but lora_ranks has 2"),
        (([-1], [0], [4], [1.0]), "seg_lens must be >= 0"),
        (([1], [0], [-4], [1.0]), "lora_ranks must be >= 0"),
        (([1], [2], [4, 4], [1.0, 1.0]), r"weight_indices \[2\] out of range \[0, 2\)"),
        (([1], [0], [4], [float("nan")]), "scalings must be finite"),
        (([1], ["a"], [4], [1.0]), "weight_indices must be a sequence of ints"),
    ],
)
def test_from_segments_rejects(args, words):
    with pytest.raises((ValueError, TypeError), match=words):
        LoRABatchInfo.from_segments(*args)


def test_registry_lists_backends_and_explains():
    names = {s.name: s for s in available_backends()}
    assert {"torch", "triton", "pallas"} <= set(names)
    assert names["torch"].available and names["torch"].reason is None
    for s in names.values():
        assert s.available or s.reason, f"{s.name} unavailable without a reason"
    cls = get_backend_from_name("torch")
    assert cls is TorchLoRABackend and issubclass(cls, BaseLoRABackend)
    b = cls("torch", LoRABatchInfo.from_segments([1], [0], [2], [1.0]))
    assert b.name == "torch" and b.batch_info.bs == 1


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownBackendError, match="known backends: .*pallas.*torch.*triton"):
        get_backend_from_name("cuda-magic")


def test_missing_dependency_names_the_extra():
    register_backend("needs-missing", "kernelstack_no_such_module.backend:X", extra="triton")
    try:
        with pytest.raises(BackendUnavailableError, match=r"pip install 'kernelstack\[triton\]'"):
            get_backend_from_name("needs-missing")
        status = {s.name: s for s in available_backends()}["needs-missing"]
        assert not status.available and "kernelstack[triton]" in status.reason
    finally:
        unregister_backend("needs-missing")


def test_register_backend_as_decorator_and_lazy_import_lora():
    @register_backend("my-torch")
    class Mine(TorchLoRABackend):
        description = "mine"

    try:
        assert get_backend_from_name("my-torch") is Mine
    finally:
        unregister_backend("my-torch")
    with pytest.raises(TypeError, match="BaseLoRABackend subclass"):
        register_backend("bad", int)
    code = "import sys, lora; mods = [m for m in ('triton', 'jax', 'openai') if m in sys.modules]; print(mods)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", "import lora must import no optional dependency"


class _StaleTailBackend(TorchLoRABackend):
    """Deliberately wrong: reads the whole max_r of B instead of the real rank."""

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        bi = self.batch_info
        full = torch.full_like(bi.lora_ranks, weights.shape[2])
        saved, bi.lora_ranks = bi.lora_ranks, full
        try:
            return super().expand(x, weights, output_offset, max_slice_width, base_output)
        finally:
            bi.lora_ranks = saved


def test_oracle_catches_a_kernel_that_reads_stale_weight_tails(rng):
    """The poisoned inputs make the suite fail a backend that ignores per-slot ranks."""
    comp = C.Composition([4, 3], [0, 1], [2, 4], [1.0, 1.0], 4, 7)
    check, _ = run_op(_StaleTailBackend("stale"), "expand", comp, rng, "float32", "cpu", k=8, n=8)
    assert not check.ok and "NaN" in check.detail
    check, _ = run_op(TorchLoRABackend("torch"), "expand", comp, rng, "float32", "cpu", k=8, n=8)
    assert check.ok, check.detail


def test_oracle_catches_a_wrong_scaling(rng):
    class Unscaled(TorchLoRABackend):
        def expand(self, x, weights, output_offset, max_slice_width, base_output):
            self.batch_info.scalings.fill_(1.0)
            return super().expand(x, weights, output_offset, max_slice_width, base_output)

    comp = C.Composition([5], [0], [4], [0.25], 4, 5)
    check, _ = run_op(Unscaled("u"), "gate_up", comp, rng, "float16", "cpu", k=16, n=8)
    assert not check.ok and check.rel_error > 0.1
