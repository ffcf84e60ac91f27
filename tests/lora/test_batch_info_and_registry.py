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


class _NeedsAGpu(TorchLoRABackend):
    description = "needs a device this machine lacks"

    @classmethod
    def unavailable_reason(cls):
        return "no frobnicator device here"


def test_building_an_unavailable_backend_raises_the_registry_reason():
    """Not at the first op call with an unrelated message: at construction, with the listed reason."""
    register_backend("needs-gpu", _NeedsAGpu)
    try:
        status = {s.name: s for s in available_backends()}["needs-gpu"]
        assert not status.available and status.reason == "no frobnicator device here"
        with pytest.raises(BackendUnavailableError, match="'needs-gpu' cannot run here") as info:
            get_backend_from_name("needs-gpu")("needs-gpu", LoRABatchInfo.from_segments([1], [0], [2], [1.0]))
        assert status.reason in str(info.value)
    finally:
        unregister_backend("needs-gpu")


def test_building_each_unavailable_registered_backend_raises():
    """E.g. "pallas" without jax or a Hopper GPU, "triton" without CUDA or its interpreter."""
    unavailable = [s for s in available_backends() if not s.available]
    for s in unavailable:
        try:
            cls = get_backend_from_name(s.name)
        except BackendUnavailableError as exc:  # cannot even be imported: the same reason
            assert str(exc) == s.reason
            continue
        with pytest.raises(BackendUnavailableError) as info:
            cls(s.name)
        assert s.reason in str(info.value)
    if not unavailable:
        pytest.skip("every registered backend can run here")
