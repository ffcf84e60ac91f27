"""``python -m lora compare`` end to end on the CPU: JSON structure, chart, exit status on wrong results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import lora
from lora.compare import cli
from lora.compare.cases import CASES, CPU_DEFAULT_OPS, OPS, Composition, min_bytes, min_bytes_of, parse_shape_spec, select_cases
from lora.registry import unregister_backend
from lora.torch_backend import TorchLoRABackend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _runnable(name: str) -> bool:
    return any(s.name == name and s.available for s in lora.available_backends())


def _cpu_backends() -> str:
    """torch, plus Triton when it runs on its interpreter here."""
    names = ["torch"]
    if os.environ.get("TRITON_INTERPRET") == "1" and _runnable("triton"):
        names.append("triton")
    return ",".join(names)


@pytest.fixture
def registered():
    """Register test backends by name and remove them afterwards."""
    names = []

    def add(name, cls):
        lora.register_backend(name)(cls)
        names.append(name)

    yield add
    for n in names:
        unregister_backend(n)


# ---- the model behind the numbers ----------------------------------------------------------------


def test_min_bytes_by_hand():
    # two worked segments of slot 0 (rank 4) and 1 (rank 2); slot 2 has rank 0; 1 idle trailing row
    comp = Composition((3, 2, 5), (0, 1, 2), (4, 2, 0), (1.0, 1.0, 1.0), max_r=4, tokens=11)
    item = 2
    k, stack = 10, 3
    shrink = min_bytes_of("shrink", seg_lens=comp.seg_lens, weight_indices=comp.weight_indices,
                          lora_ranks=comp.lora_ranks, max_r=4, tokens=11, k=k, stack=stack, itemsize=item)
    assert shrink == item * (5 * k + stack * (4 + 2) * k + 11 * stack * 4)
    n = 7
    expand = min_bytes_of("expand", seg_lens=comp.seg_lens, weight_indices=comp.weight_indices,
                          lora_ranks=comp.lora_ranks, max_r=4, tokens=11, n=n, itemsize=item)
    assert expand == item * ((3 * 4 + 2 * 2) + n * (4 + 2) + 2 * 5 * n)
    qkv = OPS["qkv"].resolve(CASES["tiny-prefill"].shape)
    fused = min_bytes(qkv, comp, item)
    assert fused == item * (5 * qkv.k + 3 * 6 * qkv.k + qkv.n * 6 + 2 * 5 * qkv.n)


def test_default_cases_match_the_issue():
    names = {c.name for c in select_cases(["llama3-8b-*"])}
    assert len(names) == 8
    prefill = CASES["llama3-8b-r64-prefill-8k"].composition(seed=123)
    assert len(prefill.seg_lens) == 8 and sum(prefill.seg_lens) == 8192 and min(prefill.seg_lens) >= 1
    mixed = CASES["llama3-8b-r16-mixed"].composition(seed=5)
    assert len(mixed.seg_lens) == 32 and all(1 <= n <= 512 for n in mixed.seg_lens)
    assert CASES["llama3-8b-r16-decode-256"].composition(seed=0).seg_lens == (1,) * 256
    assert CASES["llama3-8b-r16-mixed"].composition(7) == CASES["llama3-8b-r16-mixed"].composition(7)
    shape = CASES["llama3-8b-r16-mixed"].shape
    assert OPS["qkv"].resolve(shape).offsets == (0, 4096, 5120, 6144)
    assert OPS["gate_up"].resolve(shape).n == 2 * 14336 and OPS["shrink_down"].resolve(shape).k == 14336


def test_shape_spec():
    case = parse_shape_spec("hidden=40,q=40,kv=8,inter=24,ranks=4+0+3,segs=lens:3+0+6,name=mine")
    assert case.name == "mine" and case.max_r == 4 and case.ranks == (4, 0, 3)
    assert case.composition(0).seg_lens == (3, 0, 6)
    with pytest.raises(ValueError, match="bad --shape"):
        parse_shape_spec("hidden=x")
    with pytest.raises(ValueError, match="bad --shape"):
        parse_shape_spec("colour=blue")


# ---- the command ---------------------------------------------------------------------------------


def test_list(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "available" in out
    assert "pallas" in out  # shown even where it cannot run, with the reason
    assert "llama3-8b-r64-prefill-8k" in out and "gate_up" in out


def test_compare_end_to_end_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "out.json", tmp_path / "out.png"
    backends = _cpu_backends()
    rc = cli.main(["compare", "--device", "cpu", "--backends", backends, "--case", "tiny-decode-8", "--quick",
                   "--no-progress", "--json", str(js), "--plot", str(png)])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, out
    assert "CPU correctness run" in out
    # without a bar, one line per result on stderr: a run cut off still shows how far it got
    n_results = len(CPU_DEFAULT_OPS) * 2 * len(backends.split(","))
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("[")]
    assert len(lines) == n_results and lines[-1].startswith(f"[{n_results}/{n_results}] tiny-decode-8 ")
    doc = json.loads(js.read_text())
    assert doc["schema_version"] == 1
    assert doc["correctness_only"] is True and doc["device"]["type"] == "cpu" and doc["device"]["name"]
    assert doc["versions"]["torch"] and doc["versions"]["python"]
    assert doc["copy_bandwidth"]["gbps"] > 0
    assert doc["summary"]["ok"] is True and doc["summary"]["failed"] == 0
    assert {b["name"] for b in doc["backends"]} >= {"torch", "triton", "pallas"}
    assert all(b["reason"] for b in doc["backends"] if not b["available"])
    case_names = [c["name"] for c in doc["cases"]]
    assert case_names == ["tiny-decode-8"]
    for c in doc["cases"]:
        assert c["composition"]["seg_lens"] and c["shape"]["hidden"] == 72 and len(c["ops"]) == len(CPU_DEFAULT_OPS)
    n_backends = len(backends.split(","))
    assert len(doc["results"]) == len(CPU_DEFAULT_OPS) * 2 * n_backends  # ops x (fp16, fp32) x backends
    for r in doc["results"]:
        assert r["status"] == "pass", r
        assert r["rel_error"] <= r["tolerance"]
        assert r["min_bytes"] > 0 and r["time_us"] > 0 and r["gbps"] > 0 and r["fraction_of_copy"] > 0
        assert r["time_method"] == "wall-clock" and "wall-clock" in r["timings"]
        assert isinstance(r["seed"], int)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _WrongScaleBackend(TorchLoRABackend):
    """Right everywhere except that expand forgets the scaling."""

    description = "test: a deliberately wrong backend"

    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        bi = self.batch_info
        saved = bi.scalings
        bi.scalings = torch.ones_like(saved)
        try:
            return super().expand(x, weights, output_offset, max_slice_width, base_output)
        finally:
            bi.scalings = saved


class _TouchesIdleRowsBackend(TorchLoRABackend):
    """Writes zeros into every row of the shrink output, reading the poisoned idle rows of x."""

    def shrink(self, x, weights, stack_num):
        out = super().shrink(x, weights, stack_num)
        out += 0 * x[:, :1]  # NaN rows of x leak in, as from a kernel that ignores segments
        return out


class _CrashingBackend(TorchLoRABackend):
    def shrink(self, x, weights, stack_num):
        raise RuntimeError("kernel launch failed")


def test_wrong_backend_fails_with_seed(registered, capsys, tmp_path):
    registered("wrongscale", _WrongScaleBackend)
    js = tmp_path / "bad.json"
    rc = cli.main(["compare", "--device", "cpu", "--backends", "torch,wrongscale", "--case", "tiny-prefill",
                   "--ops", "shrink1,expand,qkv", "--dtype", "fp32", "--quick", "--no-progress", "--seed", "7",
                   "--json", str(js)])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "FAILED wrongscale on case tiny-prefill, op expand" in out
    assert "seed=" in out and "--seed 7" in out and "replay:" in out
    by = {(r["backend"], r["op"]): r for r in json.loads(js.read_text())["results"]}
    assert by[("wrongscale", "shrink1")]["status"] == "pass"
    assert by[("wrongscale", "expand")]["status"] == "fail"
    assert by[("wrongscale", "qkv")]["status"] == "fail"
    assert by[("torch", "expand")]["status"] == "pass"


def test_poison_read_and_crash_are_failures(registered, capsys):
    registered("leaky", _TouchesIdleRowsBackend)
    registered("crashy", _CrashingBackend)
    rc = cli.main(["compare", "--device", "cpu", "--backends", "leaky,crashy", "--case", "tiny-prefill",
                   "--ops", "shrink2", "--dtype", "fp16", "--quick", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAILED leaky" in out and "NaN-ness" in out
    assert "FAILED crashy" in out and "kernel launch failed" in out


class _SecondReference(TorchLoRABackend):
    pass


def test_custom_shape_and_bad_arguments(registered, capsys):
    # a second correct backend after the reference: the reference's timed calls (which add into their
    # base_output) must not leak into the inputs the second one is checked on
    registered("torch2", _SecondReference)
    rc = cli.main(["compare", "--device", "cpu", "--backends", "torch,torch2", "--shape",
                   "hidden=40,q=40,kv=8,inter=24,r=4,segs=mixed:3/9", "--ops", "gate_up", "--dtype", "fp32",
                   "--quick", "--no-progress"])
    assert rc == 0, capsys.readouterr().out
    assert cli.main(["compare", "--backends", "nosuch", "--device", "cpu"]) == 2
    assert "unknown backend" in capsys.readouterr().err
    assert cli.main(["compare", "--case", "nosuch", "--device", "cpu"]) == 2
    assert cli.main(["compare", "--dtype", "int8", "--device", "cpu"]) == 2
    assert cli.main(["compare", "--ops", "nosuch", "--device", "cpu"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU defaults of a CPU-only machine")
def test_module_entry_point_sets_up_the_interpreter():
    """`python -m lora compare` in a fresh interpreter with default backends: it must set TRITON_INTERPRET itself
    before Triton is imported (`make demo` runs it with no arguments; one small case keeps this fast)."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-m", "lora", "compare", "--case", "tiny-decode-8", "--ops", "shrink1,expand",
                           "--quick", "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CPU correctness run" in proc.stdout and "OK in" in proc.stdout
    assert "backend pallas: cannot run here" in proc.stdout
