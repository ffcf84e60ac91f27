"""`import providers`: no SDK, no torch, no httpx needed; lazy names fail with the extra's name."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import providers
from providers.base import make_meta_info, normalize_finish_reason

ROOT = Path(__file__).resolve().parents[2]

# A meta-path finder that makes the listed top-level packages unimportable.
_BLOCK = textwrap.dedent(
    """
    import sys
    BLOCKED = {blocked!r}
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None
    sys.meta_path.insert(0, Block())
    """
)


def _run(code: str, blocked: set[str]) -> subprocess.CompletedProcess:
    script = _BLOCK.format(blocked=sorted(blocked)) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


SDKS = {"openai", "anthropic", "litellm", "google", "httpx", "torch", "tiktoken"}


def test_import_without_sdks_or_torch():
    proc = _run(
        """
        import providers
        from providers import *
        s = providers.ProgramState(providers.BaseBackend())
        s.user("hi")
        assert repr(providers.TokenUsage()) == "TokenUsage(prompt_tokens=0, completion_tokens=0)"
        assert "torch" not in sys.modules
        print("OK", sorted(set(sys.modules) & {"httpx", "openai", "anthropic", "litellm"}))
        """,
        SDKS,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK []"


@pytest.mark.parametrize("name", ["RuntimeEndpoint", "Runtime"])
def test_lazy_name_without_httpx_names_the_extra(name):
    # (The SDK-backed classes import their SDK when constructed; their tests check that message.)
    proc = _run(
        f"""
        import providers
        try:
            providers.{name}
        except ImportError as err:
            print("ERR", err)
        else:
            print("NOERR")
        """,
        SDKS,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ERR"), proc.stdout
    assert "pip install 'kernelstack[providers]'" in proc.stdout


def test_unknown_chat_template_error_is_exported():
    # A public error class that callers catch must be importable from the package.
    assert "UnknownChatTemplateError" in providers.__all__
    with pytest.raises(providers.UnknownChatTemplateError):
        providers.get_chat_template("no-such-template")


def test_lazy_names_resolve_and_unknown_names_fail():
    assert providers.RuntimeEndpoint.__name__ == "RuntimeEndpoint"
    assert "RuntimeEndpoint" in dir(providers) and "OpenAI" in dir(providers)
    with pytest.raises(AttributeError, match="no_such_thing"):
        providers.no_such_thing


@pytest.mark.parametrize(
    "provider, raw, norm",
    [
        (None, "stop", "stop"),
        ("anthropic", "end_turn", "stop"),
        ("anthropic", "stop_sequence", "stop"),
        ("anthropic", "max_tokens", "length"),
        ("vertexai", "MAX_TOKENS", "length"),
        ("vertexai", "SAFETY", "content_filter"),
        ("openai", "function_call", "tool_calls"),
        ("runtime_endpoint", {"type": "length", "length": 8}, "length"),
        ("runtime_endpoint", {"type": "stop", "matched": "\n"}, "stop"),
        ("runtime_endpoint", {"type": "abort"}, "abort"),
        (None, None, None),
        (None, "weird_reason", "weird_reason"),
        (None, "end_turn", "end_turn"),  # a provider's own reason needs that provider's table
    ],
)
def test_normalize_finish_reason(provider, raw, norm):
    import importlib

    table = importlib.import_module(f"providers.{provider}").FINISH_REASONS if provider else None
    assert normalize_finish_reason(raw, table) == norm


def test_make_meta_info_shape():
    meta = make_meta_info(
        model="m", prompt_tokens=3, completion_tokens=2, finish_reason="end_turn", latency=0.5, id="r1",
        finish_reason_x=None, finish_reasons={"end_turn": "stop"},
    )
    assert meta["finish_reason"] == "stop" and meta["finish_reason_raw"] == "end_turn"
    assert {k: meta[k] for k in ("model", "prompt_tokens", "completion_tokens", "latency", "id")} == {
        "model": "m", "prompt_tokens": 3, "completion_tokens": 2, "latency": 0.5, "id": "r1",
    }
    assert "finish_reason_raw" not in make_meta_info(
        model=None, prompt_tokens=None, completion_tokens=None, finish_reason="stop", latency=0.0
    )


# ----------------------------------------------------------------------------- BaseBackend


class _Named(providers.BaseBackend):
    provider = "acme"


@pytest.mark.parametrize(
    "operation, args",
    [
        ("get_model_name", ()),
        ("get_server_info", ()),
        ("generate", (None, providers.SamplingParams())),
        ("generate_stream", (None, providers.SamplingParams())),
        ("select", (None, ["a"], 0.0, providers.token_length_normalized)),
        ("concatenate_and_append", (["a"], "b")),
    ],
)
def test_base_operations_raise_naming_backend_and_operation(operation, args):
    with pytest.raises(NotImplementedError, match=f"_Named does not support {operation}") as info:
        getattr(_Named(), operation)(*args)
    assert isinstance(info.value, providers.UnsupportedOperationError) and info.value.provider == "acme"


@pytest.mark.parametrize(
    "hook, args",
    [
        ("cache_prefix", ("p",)),
        ("uncache_prefix", ("rid",)),
        ("end_request", ("rid",)),
        ("begin_program", (None,)),
        ("end_program", (None,)),
        ("commit_lazy_operations", (None,)),
        ("fork_program", (None, [])),
        ("fill_image", (None,)),
        ("flush_cache", ()),
        ("shutdown", ()),
    ],
)
def test_base_hooks_are_noops(hook, args):
    assert getattr(_Named(), hook)(*args) is None


def test_base_defaults():
    b = _Named()
    assert b.get_chat_template().name == "default"
    assert repr(b) == "_Named(model='?')"
    with b as same:
        assert same is b
    assert isinstance(providers.ProgramState(b), providers.StateView)
