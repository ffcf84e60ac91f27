"""compute-sanitizer (memcheck) over one small case of each Triton kernel (sanitize_case.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import needs_cuda

pytestmark = needs_cuda
ROOT = Path(__file__).resolve().parents[2]


def _sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for cand in ("/usr/local/cuda/bin/compute-sanitizer", "/opt/nvidia/compute-sanitizer/compute-sanitizer"):
        if os.path.exists(cand):
            return cand
    return None


@pytest.mark.parametrize("tool", ["memcheck"])
def test_triton_kernels_under_compute_sanitizer(tool):
    exe = _sanitizer()
    if exe is None:
        pytest.skip("compute-sanitizer not found")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [exe, "--tool", tool, "--error-exitcode", "3", sys.executable, str(Path(__file__).with_name("sanitize_case.py"))],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
    )
    log = proc.stdout + proc.stderr
    print(log[-4000:])
    assert "ERROR SUMMARY: 0 errors" in log, log[-4000:]
    assert proc.returncode == 0 and "sanitize_case: ok" in log, log[-4000:]
