"""The provider registry and the plugin shape: one module, on APIBackend, found by name or entry point."""

from __future__ import annotations

import importlib.metadata
import sys
import types
from collections.abc import Iterator

import pytest

import providers
from providers import ProgramState
from providers import registry
from providers.api_backend import APIBackend, Completion, StreamResult
from providers.sampling import check_supported


# ------------------------------------------------------------------ a whole provider in one module

class EchoAPI(APIBackend):
    """A provider as a third party writes it: mapping, finish reasons and requests, nothing else."""

    provider = "echo"
    finish_reasons = {"DONE": "stop", "CUT": "length"}

    def __init__(self, model_name="echo-1"):
        self.sent = []
        super().__init__(model_name)

    def map_params(self, params):
        chosen = check_supported(params, self.provider, {"n", "temperature"})
        return {"limit": params.max_new_tokens, **chosen}

    def _request(self, s, params):
        return {"prompt": s.text_, **self.map_params(params)}

    def _complete(self, request, params):
        self.sent.append(request)
        words = request["prompt"].split()[-request["limit"]:]
        n = request.get("n", 1)
        return Completion(texts=[" ".join(words)] * n, finish_reasons=["DONE"] * n, prompt_tokens=len(words),
                          completion_tokens=len(words) * n, extra={"id": "r1"})

    def _stream(self, request, params, out: StreamResult) -> Iterator[str]:
        self.sent.append(request)
        for word in request["prompt"].split()[-request["limit"]:]:
            yield word + " "
        out.finish_reason = "CUT"
        out.prompt_tokens, out.completion_tokens = 1, 2


def test_plugin_gets_the_whole_flow():
    backend = EchoAPI()
    s = ProgramState(backend)
    s += "alpha beta gamma"
    assert s.gen("a", max_new_tokens=2) == "beta gamma"
    meta = s.meta_info["a"]
    assert meta["finish_reason"] == "stop" and meta["finish_reason_raw"] == "DONE" and meta["id"] == "r1"
    assert meta["model"] == "echo-1" and meta["prompt_tokens"] == 2
    texts = s.gen("b", max_new_tokens=1, n=2)
    assert texts == ["gamma", "gamma"] and len(s.meta_info["b"]["choices"]) == 2
    assert "".join(s.gen_stream("c", max_new_tokens=2)) == "gammabeta gamma "  # gen appended "beta gamma"
    assert s.meta_info["c"]["finish_reason"] == "length"
    assert backend.token_usage.snapshot() == {"prompt_tokens": 2 + 1 + 1, "completion_tokens": 2 + 2 + 2}
    with pytest.raises(providers.UnsupportedParameterError, match="stop_token_ids"):
        s.gen("d", stop_token_ids=[3])


def test_plugin_select_generates_and_matches():
    backend = EchoAPI()
    s = ProgramState(backend)
    s += "pick one: red"
    assert s.select("x", ["blue", "red"]) == "red"
    meta = s.meta_info["x"]
    assert meta["method"] == "generate_and_match" and meta["requested_method"] == "token_length_normalized"
    assert meta["generated"] == "pick one: red" and meta["match"] == "contains"


# -------------------------------------------------------------------------------------- registry

def test_builtin_names_resolve_and_are_the_package_exports():
    assert registry.get_provider("openai") is providers.OpenAI
    assert registry.get_provider("sglang") is providers.RuntimeEndpoint
    names = {p.name for p in registry.available_providers()}
    assert {"sglang", "runtime", "openai", "azure", "anthropic", "litellm", "vertexai"} <= names
    azure = registry.get_provider("azure")
    assert azure is providers.AzureOpenAI and issubclass(azure, providers.OpenAI)
    with pytest.raises(registry.UnknownProviderError, match="known providers: .*openai"):
        registry.get_provider("no-such-provider")


def test_register_in_code_and_as_decorator():
    try:
        registry.register_provider("echo", EchoAPI)
        assert registry.get_provider("echo") is EchoAPI

        @registry.register_provider("echo2")
        class Echo2(EchoAPI):
            pass

        assert registry.get_provider("echo2") is Echo2
        with pytest.raises(ValueError, match="module:Class"):
            registry.register_provider("bad", "no_colon")
    finally:
        registry.unregister_provider("echo")
        registry.unregister_provider("echo2")


def test_entry_point_adds_a_provider(monkeypatch):
    module = types.ModuleType("acme_provider_plugin")
    module.AcmeBackend = type("AcmeBackend", (EchoAPI,), {"provider": "acme"})
    monkeypatch.setitem(sys.modules, "acme_provider_plugin", module)
    ep = importlib.metadata.EntryPoint(name="acme", value="acme_provider_plugin:AcmeBackend",
                                       group=registry.ENTRY_POINT_GROUP)

    def entry_points(group=None, **_):
        assert group == registry.ENTRY_POINT_GROUP
        return [ep]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    try:
        assert registry.get_provider("acme") is module.AcmeBackend
        assert any(p.name == "acme" and p.available for p in registry.available_providers())
    finally:
        registry.unregister_provider("acme")


def test_missing_provider_module_is_reported():
    registry.register_provider("needs-sdk", "needs_sdk_plugin_missing_mod:X")
    try:
        with pytest.raises(ModuleNotFoundError):  # the provider's own module is missing: not an extra
            registry.get_provider("needs-sdk")
        info = {p.name: p for p in registry.available_providers()}["needs-sdk"]
        assert not info.available and "needs_sdk_plugin_missing_mod" in info.reason
    finally:
        registry.unregister_provider("needs-sdk")
