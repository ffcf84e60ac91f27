"""The torch-free JAX venv that runs the Pallas kernels: right jax, Mosaic GPU interpret mode, lazy lora."""

from __future__ import annotations

import subprocess
import sys


def test_jax_has_mosaic_gpu_interpret_mode():
    import jax
    from jax.experimental.pallas import mosaic_gpu as plgpu

    major, minor = (int(v) for v in jax.__version__.split(".")[:2])
    assert (major, minor) >= (0, 11), f"Mosaic GPU interpret mode needs jax >= 0.11, found {jax.__version__}"
    assert hasattr(plgpu, "force_gpu_interpret_mode")


def test_import_lora_needs_no_torch():
    code = "import sys, lora; assert 'torch' not in sys.modules, 'import lora pulled in torch'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
