"""GPU tests: skipped without CUDA; run through the device tool (``make gpu-test``).

Backends under test: every built-in backend except the torch reference (each skipped with its
reason where it cannot run; entry-point plugins are left to tests/lora), so a new GPU backend (pallas) joins by registering itself;
``LORA_GPU_BACKENDS=triton`` limits a run to the listed names; ``LORA_PALLAS_TUNING=wide`` runs the
pallas backend of :func:`backend_or_skip` under that entry of ``lora.pallas.tiling.TUNING_TRIALS``.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (run through the device tool: make gpu-test)")


def gpu_backends() -> list[str]:
    """Names of the registered backends other than the torch reference (availability checked per test)."""
    import lora

    # ours only: a plugin installed in the venv (the example) is checked by tests/lora, not here
    names = sorted(s.name for s in lora.available_backends() if s.name != "torch" and s.origin == "kernelstack")
    only = os.environ.get("LORA_GPU_BACKENDS")  # e.g. "triton": limit a device run to some backends
    return [n for n in names if n in only.split(",")] if only else names



def backend_or_skip(name: str, batch_info=None):
    import lora

    status = {s.name: s for s in lora.available_backends()}[name]
    if not status.available:
        pytest.skip(f"backend {name!r} cannot run here: {status.reason}")
    cls = lora.get_backend_from_name(name)
    trial = os.environ.get("LORA_PALLAS_TUNING")
    if name == "pallas" and trial:
        from lora.pallas.tiling import TUNING_TRIALS, Tuning

        if trial not in TUNING_TRIALS:
            raise ValueError(f"LORA_PALLAS_TUNING={trial!r} is not one of {sorted(TUNING_TRIALS)}")
        return cls(name, batch_info, tuning=Tuning(**TUNING_TRIALS[trial]))
    return cls(name, batch_info)
