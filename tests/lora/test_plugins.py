"""Third-party backends by name: the entry-point group ``kernelstack.lora_backends``.

Two ways in:

* a distribution made up on the spot (a ``*.dist-info`` with ``entry_points.txt`` in a temporary
  directory on ``sys.path``), which always runs: working, broken and clashing entry points;
* the example plugin package (``tests/lora/plugin_example``) installed into the environment, as
  ``make test`` does (``uv pip install --no-deps -e tests/lora/plugin_example``); skipped, saying so,
  where it is not installed.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import lora
from lora import registry
from lora import testing as T
from lora.compare.cli import main as lora_main
from lora.registry import BackendUnavailableError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = Path(__file__).resolve().parent / "plugin_example"

ENTRY_POINTS = """\
[kernelstack.lora_backends]
tmp-example = kernelstack_lora_example:ExampleLoRABackend
fake-missing = fake_lora_plugin_absent.backend:Backend
fake-not-a-backend = fake_lora_plugin:NOT_A_BACKEND
fake-crashes = fake_lora_plugin.crashes:Backend
fake-no-device = fake_lora_plugin:NoDevice
fake-bad-target = fake_lora_plugin
torch = fake_lora_plugin:NoDevice
"""

PLUGIN = """\
from lora.torch_backend import TorchLoRABackend

NOT_A_BACKEND = 42


class NoDevice(TorchLoRABackend):
    description = "needs a device"

    @classmethod
    def unavailable_reason(cls):
        return "no frobnicator attached"
"""


def _status():
    return {s.name: s for s in lora.available_backends()}


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """A distribution 'fake-lora-plugin 1.2' with the entry points above, on sys.path for this test."""
    pkg = tmp_path / "fake_lora_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PLUGIN)
    (pkg / "crashes.py").write_text("raise RuntimeError('plugin bug at import')\n")
    info = tmp_path / "fake_lora_plugin-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-lora-plugin\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE))  # the example's module, whether or not it is installed
    importlib.invalidate_caches()
    with pytest.warns(UserWarning, match="'torch' from fake-lora-plugin 1.2 .* is ignored: the name is taken"):
        added = registry.load_entry_points(refresh=True)
    yield tmp_path, added
    monkeypatch.undo()
    importlib.invalidate_caches()
    registry.load_entry_points(refresh=True)
    for mod in [m for m in sys.modules if m.startswith("fake_lora_plugin")]:
        del sys.modules[mod]


def test_entry_points_are_found_with_their_distribution(fake_dist):
    _, added = fake_dist
    assert {"tmp-example", "fake-missing", "fake-no-device"} <= set(added) and "torch" not in added
    status = _status()
    s = status["tmp-example"]
    assert s.available and s.reason is None and s.origin == "fake-lora-plugin 1.2"
    assert "example plugin" in s.description
    assert status["torch"].origin == "kernelstack", "a built-in name is not taken over by a plugin"
    cls = lora.get_backend_from_name("tmp-example")
    assert cls.__name__ == "ExampleLoRABackend" and registry.registered_name(cls) in ("tmp-example", "example")


def test_the_example_plugin_passes_check_backend(fake_dist):
    T.check_backend("tmp-example", device="cpu").assert_ok()


@pytest.mark.parametrize(
    "name, words",
    [
        ("fake-missing", "needs 'fake_lora_plugin_absent', which is not installed: reinstall or fix fake-lora-plugin 1.2"),
        ("fake-not-a-backend", "'fake_lora_plugin:NOT_A_BACKEND' is 42, not a BaseLoRABackend subclass"),
        ("fake-crashes", "failed to load 'fake_lora_plugin.crashes:Backend': RuntimeError: plugin bug at import"),
        ("fake-bad-target", "target 'fake_lora_plugin' must look like 'package.module:Class'"),
    ],
)
def test_broken_entry_points_say_why_and_break_nothing_else(fake_dist, name, words):
    status = _status()
    assert status["torch"].available and status["tmp-example"].available
    s = status[name]
    assert not s.available and words in s.reason and s.origin == "fake-lora-plugin 1.2"
    with pytest.raises(BackendUnavailableError) as info:
        lora.get_backend_from_name(name)
    assert str(info.value) == s.reason


def test_a_plugin_that_cannot_run_here_raises_its_reason_when_built(fake_dist):
    s = _status()["fake-no-device"]
    assert not s.available and s.reason == "no frobnicator attached"
    with pytest.raises(BackendUnavailableError, match="no frobnicator attached"):
        lora.get_backend_from_name("fake-no-device")("fake-no-device")


def _env_with(path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(path), str(EXAMPLE), str(REPO), env.get("PYTHONPATH", "")])
    return env


def test_lora_list_shows_plugins_and_why_they_cannot_run(fake_dist):
    tmp, _ = fake_dist
    out = subprocess.run([sys.executable, "-m", "lora", "list"], capture_output=True, text=True, env=_env_with(tmp),
                         cwd=tmp, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.startswith("  ") and line.split()}
    assert "available" in lines["tmp-example"] and "[from fake-lora-plugin 1.2]" in lines["tmp-example"]
    assert "unavailable: no frobnicator attached" in lines["fake-no-device"]
    assert "unavailable:" in lines["fake-crashes"] and "plugin bug at import" in lines["fake-crashes"]


def test_lora_compare_checks_and_times_a_plugin_beside_ours(fake_dist, tmp_path, capsys):
    path = tmp_path / "out.json"
    rc = lora_main(["compare", "--backends", "tmp-example,torch", "--case", "tiny-prefill", "--ops", "shrink2,qkv",
                    "--dtype", "fp32", "--quick", "--no-progress", "--json", str(path), "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    data = json.loads(path.read_text())
    mine = [r for r in data["results"] if r["backend"] == "tmp-example"]
    assert len(mine) == 2 and all(r["status"] == "pass" and r["time_us"] for r in mine), mine
    row = next(b for b in data["backends"] if b["name"] == "tmp-example")
    assert row["selected"] and row["origin"] == "fake-lora-plugin 1.2"


# ---- the example plugin, installed ----------------------------------------------------------------------


def _installed_example():
    try:
        return metadata.distribution("kernelstack-lora-example")
    except metadata.PackageNotFoundError:
        pytest.skip("the example plugin is not installed in this environment "
                    "(make test installs it: uv pip install --no-deps -e tests/lora/plugin_example)")


def test_installed_example_plugin_is_found_by_name():
    dist = _installed_example()
    s = _status().get("example")
    assert s is not None, "kernelstack-lora-example is installed but 'example' is not registered"
    assert s.available and s.origin == f"kernelstack-lora-example {dist.version}"
    T.check_backend("example", device="cpu").assert_ok()
    out = subprocess.run([sys.executable, "-m", "lora", "list"], capture_output=True, text=True, cwd=REPO,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and "example" in out.stdout and "[from kernelstack-lora-example" in out.stdout, out
    ours = "triton" if _status()["triton"].available else "torch"
    rc = lora_main(["compare", "--backends", f"example,{ours}", "--case", "tiny-mixed", "--ops", "gate_up",
                    "--dtype", "fp16", "--quick", "--no-progress"])
    assert rc == 0
