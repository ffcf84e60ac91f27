"""Shared test setup.

* No CUDA device: Triton kernels run on its CPU interpreter (TRITON_INTERPRET=1), set before any
  test imports triton.
* Random inputs are fresh each run: the base seed comes from LORA_TEST_SEED or the clock and is
  printed in the header, so a failure can be replayed with LORA_TEST_SEED=<seed>.
"""

from __future__ import annotations

import importlib.util
import os
import time
import zlib

import numpy as np
import pytest

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # the torch-free JAX venv
    HAS_CUDA = False

if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

BASE_SEED = int(os.environ.get("LORA_TEST_SEED", time.time_ns() % 1_000_000))


def pytest_report_header(config):
    return f"LoRA random inputs: LORA_TEST_SEED={BASE_SEED} (set it to replay); CUDA: {HAS_CUDA}"


@pytest.fixture
def rng(request):
    """A generator seeded from the run's base seed and the test's id (printed on failure)."""
    seed = (BASE_SEED + zlib.crc32(request.node.nodeid.encode())) % 2**32
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed} (LORA_TEST_SEED={BASE_SEED})")
    return np.random.default_rng(seed)


@pytest.fixture
def benchmark_script():
    """``benchmark_script(name)``: the script ``benchmarks/<name>.py`` loaded as a module (scripts are not a package)."""

    def load(name: str):
        path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", f"{name}.py")
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
