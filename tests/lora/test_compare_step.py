"""``python -m lora compare --step`` (the decode step) on the CPU: its correctness path, its bytes model,
and a wrong backend caught. Timing as one CUDA graph runs on the GPU (benchmarks/decode_step.sh)."""

from __future__ import annotations

import json
import os

import pytest
import torch

import lora
from lora.compare import cli
from lora.compare.cases import Composition, min_bytes_of
from lora.compare.step import GPU_DEFAULT_STEPS, modules, STEP_CASES, step_min_bytes
from lora.registry import unregister_backend
from lora.torch_backend import TorchLoRABackend


def _cpu_backends() -> str:
    if torch.cuda.is_available():
        # Triton was imported for the GPU: TRITON_INTERPRET set later in this process (by an earlier CPU compare)
        # would not move its kernels to the interpreter
        return "torch"
    ok = {s.name for s in lora.available_backends() if s.available}
    names = ["torch"] + (["triton"] if "triton" in ok and os.environ.get("TRITON_INTERPRET") == "1" else [])
    return ",".join(names)


def test_default_step_cases_match_the_issue():
    cases = [STEP_CASES[n] for n in GPU_DEFAULT_STEPS]
    assert {(c.tokens, c.max_r) for c in cases} == {(64, 16), (256, 16), (64, 64), (256, 64)}
    for c in cases:
        assert c.layers == 32 and c.shape.hidden == 4096 and c.shape.inter == 14336 and len(c.ranks) == 8
        assert [m.name for m in modules(c.shape)] == ["qkv", "o", "gate_up", "down"]
        comp = c.composition(0)
        assert comp.seg_lens == (1,) * c.tokens and comp == c.composition(0) and comp.num_lora == 8


def test_step_min_bytes_by_hand():
    case = STEP_CASES["step-tiny-decode-8"]  # hidden 72, q 72, kv 24, inter 88; ranks 8/0/5/8
    comp = Composition((1, 1, 1), (0, 1, 2), (8, 0, 5, 8), (1.0,) * 4, 8, 3)
    # rows with work: 2 (slots 0 and 2); used slots: rank 8 and rank 5
    expect = 0
    for k, n, stack in ((72, 72 + 48, 3), (72, 72, 1), (72, 176, 2), (88, 72, 1)):
        elems = 2 * k + stack * (8 + 5) * k + n * (8 + 5) + 2 * 2 * n
        assert min_bytes_of("fused", seg_lens=comp.seg_lens, weight_indices=comp.weight_indices,
                            lora_ranks=comp.lora_ranks, max_r=8, tokens=3, k=k, n=n, stack=stack, itemsize=2) == 2 * elems
        expect += 2 * elems
    assert step_min_bytes(case, comp, 2) == 2 * expect  # two layers


def test_step_runs_its_correctness_path_on_cpu(tmp_path, capsys):
    path = tmp_path / "step.json"
    rc = cli.main(["compare", "--step", "--device", "cpu", "--backends", _cpu_backends(), "--json", str(path),
                   "--layers", "1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    doc = json.loads(path.read_text())
    assert doc["kind"] == "decode-step" and doc["partial"] is False
    assert [c["name"] for c in doc["cases"]] == ["step-tiny-decode-8"]
    for r in doc["results"]:
        assert r["status"] == "pass", r
        assert r["min_bytes"] > 0 and r["layers"] == 1 and r["op_calls"] == 6
        assert r["timings"]["eager_once"]["median_us"] > 0 and r["timings"]["eager_per_call"]["median_us"] > 0


class _WrongScaleBackend(TorchLoRABackend):
    def expand(self, x, weights, output_offset, max_slice_width, base_output):
        saved = self.batch_info.scalings.clone()
        self.batch_info.scalings.mul_(1.5)
        try:
            return super().expand(x, weights, output_offset, max_slice_width, base_output)
        finally:
            self.batch_info.scalings.copy_(saved)


@pytest.fixture
def wrongscale():
    lora.register_backend("wrongscale-step")(_WrongScaleBackend)
    yield "wrongscale-step"
    unregister_backend("wrongscale-step")


def test_wrong_backend_fails_the_step(wrongscale, capsys):
    rc = cli.main(["compare", "--step", "--device", "cpu", "--backends", f"torch,{wrongscale}", "--layers", "2"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "wrongscale-step" in text and "fail" in text and "layer 0 qkv: rel error" in text


def test_step_rejects_bad_arguments(capsys):
    assert cli.main(["compare", "--step", "--device", "cpu", "--case", "nosuch"]) == 2
    assert cli.main(["compare", "--step", "--device", "cpu", "--layers", "0"]) == 2
    assert cli.main(["compare", "--step", "--device", "cpu", "--ops", "qkv"]) == 2
    assert "step cases" in capsys.readouterr().err


def test_graph_timings_capture_prepare_once_or_per_call(monkeypatch):
    """The CUDA branch on the CPU, with the graph timer replaced: what each timed graph would contain."""
    import torch

    from lora.compare import step
    from lora.compare.timing import Budget

    case = STEP_CASES["step-tiny-decode-8"]
    comp = case.composition(0)
    gen = torch.Generator().manual_seed(0)
    layers = [step._layer_inputs(case, comp, torch.float32, torch.device("cpu"), gen) for _ in range(2)]
    prepares = []

    class Counting(TorchLoRABackend):
        def prepare(self, bi):
            prepares.append(bi)
            super().prepare(bi)

    def fake_graph(fn, device, budget):
        before = len(prepares)
        fn()
        return {"method": "fake-graph", "median_us": 100.0 + len(prepares) - before, "prepares": len(prepares) - before}

    monkeypatch.setattr(step, "_time_graph", fake_graph)
    r = step._one("counting", Counting, case, comp, "float32", torch.float32, torch.device("cpu"), layers, 10.0,
                  Budget(0.0, 0.0, 1, 1), 0, graphs=True)
    assert r.status == "pass", r.detail
    assert r.timings["graph_once"]["prepares"] == 1, "the step graph derives the metadata once"
    assert r.timings["graph_per_call"]["prepares"] == 6 * 2, "per call: once per op call (6 a layer)"
    assert r.timings["graph_once"]["per_layer_us"] == r.timings["graph_once"]["median_us"] / 2
    assert r.timings["per_call_over_once"] > 1
    assert r.timings["graph_once"]["gbps"] > 0 and r.min_bytes == step_min_bytes(case, comp, 4)
