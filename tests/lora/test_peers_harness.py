"""The peer comparison harness (benchmarks/peers): its report, its backend filter, and the peer backends'
reasons when the peers' sources are absent (as on the CI machine, which never downloads them)."""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

from lora.registry import available_backends, unregister_backend

PEERS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "peers")


@pytest.fixture(scope="module")
def peers_path():
    sys.path.insert(0, os.path.abspath(PEERS))
    yield
    sys.path.remove(os.path.abspath(PEERS))


def _result(case, op, backend, status, us):
    return {"case": case, "op": op, "dtype": "bfloat16", "backend": backend, "status": status, "time_us": us}


def test_report_takes_the_fastest_passing_peer(peers_path):
    report = importlib.import_module("report")
    run = {"command": "x", "results": [
        _result("c", "expand", "triton", "pass", 4.0),
        _result("c", "expand", "peer-a", "pass", 5.0),
        _result("c", "expand", "peer-b", "fail", 1.0),  # a wrong result is never the best peer
        _result("c", "qkv", "triton", "pass", 9.0),
        _result("c", "qkv", "peer-a", "pass", 6.0),
        _result("c", "qkv", "peer-b", "unsupported", None),
        _result("c", "shrink1", "triton", "pass", 3.0),
        _result("c", "shrink1", "peer-b", "unsupported", None),  # no peer: not counted
    ]}
    lines, ahead, counted = report.table(run, "triton")
    assert (ahead, counted) == (1, 2)
    expand = next(line for line in lines if "| expand |" in line)
    assert "1.0 !" in expand and expand.endswith("| peer-a | 0.80 |")
    qkv = next(line for line in lines if "| qkv |" in line)
    assert "unsupported" in qkv and qkv.endswith("| peer-a | 1.50 |")
    assert lines[-1] == "triton at or ahead of the best peer on 1 of 2 rows"


def test_run_leaves_out_only_unregistered_peers(peers_path):
    run = importlib.import_module("run")
    argv = ["compare", "--backends", "triton,peer-a,peer-b,pallas", "--quick"]
    kept, dropped = run.drop_unregistered(argv, {"triton", "peer-a"})
    assert kept == ["compare", "--backends", "triton,peer-a,pallas", "--quick"] and dropped == ["peer-b"]
    assert run.drop_unregistered(["compare", "--quick"], set()) == (["compare", "--quick"], [])


def test_host_offsets_read_once_then_cached(peers_path):
    common = importlib.import_module("peer_common")
    seen = common.HostOffsets()
    t = torch.tensor([0, 4, 6], dtype=torch.int32)
    assert seen(t) == (0, 4, 6)
    t[1] = 5  # written in place: a new version, read again
    assert seen(t) == (0, 5, 6)


def test_peer_backends_say_what_is_missing_without_the_sources(peers_path, monkeypatch):
    names = {"sglang_peer": ["peer-sglang", "peer-sglang-csgmv", "peer-sglang-csgmv128"], "sglang_v2_peer": ["peer-sglang-v2"],
             "vllm_peer": ["peer-vllm"]}
    if any(importlib.util.find_spec(top) is not None for top in ("sglang", "vllm")):
        pytest.skip("an SGLang or vLLM is importable here: the peers' sources are present")
    before = set(sys.modules)
    try:
        for module in names:
            importlib.import_module(module)
        status = {s.name: s for s in available_backends()}
        for module, backends in names.items():
            for name in backends:
                assert not status[name].available, name
                assert "benchmarks/peers/fetch.sh" in status[name].reason, status[name].reason
    finally:
        for backends in names.values():
            for name in backends:
                unregister_backend(name)
        ours = ("sglang", "vllm", "sglang_peer", "sglang_v2_peer", "vllm_peer", "sglang_stubs")
        for name in set(sys.modules) - before:  # the adapters and the stand-ins they installed
            if name.split(".")[0] in ours:
                del sys.modules[name]


def test_stand_in_never_shadows_a_real_module(peers_path):
    common = importlib.import_module("peer_common")
    import json

    assert common.stand_in("json", lambda: pytest.fail("a real module was replaced")) is json
    name = "kernelstack_absent_pkg.sub.mod"
    try:
        mod = common.stand_in(name, lambda: common.package(name, "test", answer=42))
        assert sys.modules[name] is mod and mod.answer == 42
        assert sys.modules["kernelstack_absent_pkg.sub"].mod is mod  # its missing parents stood in for
        assert importlib.import_module(name) is mod
        assert common.stand_in(name, lambda: pytest.fail("made twice")) is mod
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] == "kernelstack_absent_pkg"]:
            del sys.modules[key]


def test_capturing_is_false_off_a_capture(peers_path):
    common = importlib.import_module("peer_common")
    assert common.capturing(torch.device("cpu")) is False
