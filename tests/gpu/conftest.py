"""GPU tests: skipped without CUDA; run through the device tool (``make gpu-test``).

Backends under test: every built-in backend except the torch reference (each skipped with its
reason where it cannot run; entry-point plugins are left to tests/lora), so a new GPU backend (pallas) joins by registering itself;
``LORA_GPU_BACKENDS=triton`` limits a run to the listed names.
"""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (run through the device tool: make gpu-test)")


def gpu_backends() -> list[str]:
    """Names of the registered backends other than the torch reference (availability checked per test)."""
    import os

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
    return lora.get_backend_from_name(name)(name, batch_info)
