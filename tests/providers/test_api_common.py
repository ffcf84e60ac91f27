"""Shared pieces of the API backends: error mapping, matching rules, usage, parameter mappings, SDK loading."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import sys

import httpx
import pytest

from providers import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    ProgramState,
    ProviderError,
    RateLimitError,
    SamplingParams,
    ServerError,
    StreamInterruptedError,
    UnsupportedOperationError,
    UnsupportedParameterError,
    UnsupportedParameterWarning,
)
from providers.choices import match_choice, with_select_instruction
from providers.messages import parse_data_url
from providers.anthropic import to_anthropic_kwargs
from providers.litellm import to_litellm_kwargs
from providers.openai import openai_response_format, to_openai_kwargs
from providers.sampling import format_dtype_value
from providers.vertexai import to_vertexai_config
from providers.sdk_errors import StreamGuard, wrap_error
from providers.usage import TokenUsage

from .wire_openai import OpenAIServer

# ------------------------------------------------------------------------------ match rules


@pytest.mark.parametrize(
    "text, expected, rule",
    [
        ("Paris", 0, "exact"),
        ("  Lyon \n", 1, "exact"),
        ('"paris."', 0, "normalized"),
        ("I think the answer is Lyon, clearly.", 1, "contains"),
        ("New York it is", 2, "contains"),  # longest contained choice wins over "York"
        ("Parsi", 0, "closest"),
    ],
)
def test_match_choice_rules(text, expected, rule):
    assert match_choice(text, ["Paris", "Lyon", "New York", "York"]) == (expected, rule)


def test_select_instruction_goes_to_last_user_turn_without_mutation():
    msgs = [{"role": "user", "content": "Q?"}]
    out = with_select_instruction(msgs, ["a", "b"])
    assert msgs == [{"role": "user", "content": "Q?"}]
    assert out[0]["content"].startswith("Q?\n\n") and out[0]["content"].endswith("- a\n- b")
    parts = with_select_instruction([{"role": "user", "content": [{"type": "text", "text": "x"}]}], ["a"])
    assert parts[0]["content"][-1]["text"].endswith("- a")
    after_assistant = with_select_instruction([{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}],
                                              ["a"])
    assert after_assistant[-1]["role"] == "user"


def test_parse_data_url():
    assert parse_data_url("data:image/png;base64,AAAA") == ("image/png", "AAAA")
    with pytest.raises(ValueError, match="data: URLs"):
        parse_data_url("https://example.invalid/x.png")


# ------------------------------------------------------------------------------ errors


class _Resp:
    def __init__(self, status, headers):
        self.status_code = status
        self.headers = headers


class _SDKStatusError(Exception):
    def __init__(self, status, body, headers=None):
        super().__init__(f"Error code: {status} - {body}")
        self.status_code = status
        self.body = body
        self.response = _Resp(status, headers or {})


def test_wrap_error_maps_status_message_and_retry_after():
    err = wrap_error(_SDKStatusError(429, {"error": {"message": "slow down"}}, {"retry-after-ms": "1500"}), "openai")
    assert isinstance(err, RateLimitError) and err.retry_after == 1.5 and err.message == "slow down"
    err = wrap_error(_SDKStatusError(503, {"message": "busy"}, {"retry-after": "2"}), "x")
    assert isinstance(err, ServerError) and err.retry_after == 2 and err.provider == "x" and err.status == 503
    err = wrap_error(_SDKStatusError(401, {"error": {"message": "bad key sk-abcdefghijkl0123"}}), "x")
    assert isinstance(err, AuthenticationError) and "sk-abcdefghijkl0123" not in str(err)
    # Anthropic's in-stream error event arrives on a 200 response: a quirk its module declares
    from providers.anthropic import ERRORS

    event = _SDKStatusError(200, {"type": "error", "error": {"type": "overloaded_error", "message": "o"}})
    err = wrap_error(event, "a", errors=ERRORS)
    assert isinstance(err, ServerError) and err.status == 529
    assert not isinstance(wrap_error(event, "a"), ServerError)  # not a rule of every SDK


def test_wrap_error_transport_failures():
    req = httpx.Request("POST", "http://127.0.0.1:9/x")
    assert isinstance(wrap_error(httpx.ReadTimeout("t", request=req), "p"), APITimeoutError)
    conn = wrap_error(httpx.ConnectError("refused", request=req), "p")
    assert isinstance(conn, APIConnectionError) and conn.retryable
    assert wrap_error(httpx.RemoteProtocolError("peer closed", request=req), "p").retryable
    assert wrap_error(ValueError("odd"), "p").sdk_error == "ValueError"


def _guarded(guard, items, fail):
    with guard:
        for item in items:
            guard.delivered = True
            yield item
        raise fail


def test_stream_guard_maps_before_text_and_interrupts_after():
    req = httpx.Request("POST", "http://127.0.0.1:9/x")
    broken = httpx.RemoteProtocolError("peer closed sk-abcdefghijkl0123", request=req)
    with pytest.raises(APIConnectionError) as info:  # nothing delivered: the mapped, retryable error
        list(_guarded(StreamGuard("p"), [], broken))
    assert not isinstance(info.value, StreamInterruptedError) and info.value.__cause__ is None
    with pytest.raises(StreamInterruptedError) as info:  # after text: never restarted
        list(_guarded(StreamGuard("p"), ["a"], broken))
    err = info.value
    assert err.sdk_error == "RemoteProtocolError" and "sk-abcdefghijkl0123" not in str(err)
    assert err.__cause__ is None and err.__suppress_context__
    with pytest.raises(RateLimitError):  # a ProviderError passes unchanged
        list(_guarded(StreamGuard("p"), ["a"], RateLimitError("slow", provider="p", status=429)))
    gen = _guarded(StreamGuard("p"), ["a", "b"], broken)
    next(gen)
    gen.close()  # GeneratorExit passes: a consumer may stop early
    guard = StreamGuard("p")
    guard.require(True, "fine")
    with pytest.raises(ProviderError) as info:
        guard.require(False, "cut off")
    assert type(info.value) is ProviderError
    guard.delivered = True
    with pytest.raises(StreamInterruptedError, match="cut off"):
        guard.require(False, "cut off")


def test_token_usage_is_thread_safe():
    usage = TokenUsage()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: [usage.add(2, 1) for _ in range(1000)], range(8)))
    assert usage.snapshot() == {"prompt_tokens": 16000, "completion_tokens": 8000}
    assert usage.total_tokens == 24000
    usage.add(None, None)
    assert repr(usage) == "TokenUsage(prompt_tokens=16000, completion_tokens=8000)"


# ------------------------------------------------------------------------------ mappings


def test_openai_mapping():
    p = SamplingParams(max_new_tokens=5, stop="\n", temperature=0.5, n=2, return_logprob=True, top_logprobs_num=3)
    assert to_openai_kwargs(p) == {"max_tokens": 5, "stop": ["\n"], "temperature": 0.5, "n": 2, "logprobs": True,
                                   "top_logprobs": 3}
    assert to_openai_kwargs(p, chat=False)["logprobs"] == 3
    assert "max_completion_tokens" in to_openai_kwargs(p, reasoning=True)
    assert "max_tokens" not in to_openai_kwargs(p, reasoning=True)
    with pytest.raises(UnsupportedParameterError, match="logprob_start_len"):
        to_openai_kwargs(SamplingParams(logprob_start_len=0))
    with pytest.raises(UnsupportedParameterError, match="stop_token_ids"):
        to_openai_kwargs(SamplingParams(stop_token_ids=[2]))
    with pytest.warns(UnsupportedParameterWarning, match="min_p"):
        assert "min_p" not in to_openai_kwargs(SamplingParams(min_p=0.1))
    wrapper = {"name": "person", "schema": {"type": "object"}, "strict": False}
    assert openai_response_format(json.dumps(wrapper)) == {"type": "json_schema", "json_schema": wrapper}
    nested = {"type": "object", "properties": {"p": {"type": "object", "properties": {"a": {"type": "string"}}}},
              "required": ["p"], "additionalProperties": False}
    assert openai_response_format(json.dumps(nested))["json_schema"]["strict"] is False  # inner object is open


def test_anthropic_vertex_litellm_mappings():
    p = SamplingParams(stop=["\n", " \t", "END"], top_k=3, temperature=0.1)
    kwargs, client = to_anthropic_kwargs(p)
    assert kwargs == {"max_tokens": 128, "temperature": 0.1, "top_k": 3, "stop_sequences": ["END"]}
    assert client == ("\n", " \t")
    assert "top_k" not in to_anthropic_kwargs(SamplingParams())[0]
    with pytest.raises(UnsupportedParameterError):
        to_anthropic_kwargs(SamplingParams(return_logprob=True))
    cfg = to_vertexai_config(SamplingParams(n=2, top_k=4, presence_penalty=0.5, return_logprob=True, top_logprobs_num=2))
    assert cfg == {"max_output_tokens": 128, "top_k": 4, "presence_penalty": 0.5, "candidate_count": 2,
                   "response_logprobs": True, "logprobs": 2}
    lk = to_litellm_kwargs(SamplingParams(top_k=5, json_schema={"type": "object"}))
    assert lk["top_k"] == 5 and lk["response_format"]["type"] == "json_schema"


def test_format_dtype_value():
    assert format_dtype_value("int", 3) == "3" and format_dtype_value("int", 3.0) == "3"
    assert format_dtype_value("float", 2.5) == "2.5" and format_dtype_value("bool", False) == "False"
    assert format_dtype_value("str", 'a"b') == '"a\\"b"'
    with pytest.raises(ValueError):
        format_dtype_value("int", "3")


# ------------------------------------------------------------------------------ SDK loading


@pytest.mark.parametrize(
    "module, cls, sdk, args",
    [
        ("providers.openai", "OpenAI", "openai", {"api_key": "sk-x"}),
        ("providers.anthropic", "Anthropic", "anthropic", {"api_key": "sk-x"}),
        ("providers.litellm", "LiteLLM", "litellm", {}),
        ("providers.vertexai", "VertexAI", "google.genai", {"project": "p", "location": "l"}),
    ],
)
def test_missing_sdk_names_the_extra(monkeypatch, module, cls, sdk, args):
    backend_cls = getattr(importlib.import_module(module), cls)
    monkeypatch.setitem(sys.modules, sdk, None)
    if sdk == "google.genai":
        monkeypatch.setitem(sys.modules, "google.genai.types", None)
    with pytest.raises(ImportError, match=r"pip install 'kernelstack\[providers\]'"):
        backend_cls("m", **args)


# ------------------------------------------------------------------------------ tiktoken


def _litellm_tiktoken_dir():
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "litellm_core_utils", "tokenizers")
    return path if os.path.isdir(path) else None


def test_real_tiktoken_encoding_offline_for_chat_select(monkeypatch):
    cache = _litellm_tiktoken_dir()
    if cache is None:
        pytest.skip("litellm's bundled tiktoken encodings are not installed")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", cache)
    import tiktoken

    from providers.openai import OpenAI

    enc = tiktoken.get_encoding("o200k_base")
    with OpenAIServer() as srv:
        backend = OpenAI("gpt-4o", api_key="sk-x", base_url=srv.url + "/v1", max_retries=0)
        first = {enc.encode(w)[0]: enc.decode(enc.encode(w)[:1]) for w in ("Yes", "No")}
        srv.vocab = first
        srv.token_scores = {"No": 1.0}
        s = ProgramState(backend)
        s.user("Is water dry?")
        with s.assistant():
            assert s.select("a", ["Yes", "No"]) == "No"
        assert s.meta_info["a"]["method"] == "logit_bias"
        assert {int(t) for t in srv.last.json["logit_bias"]} == set(first)


def test_without_a_tokenizer(monkeypatch):
    import tiktoken

    from providers.openai import OpenAI

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(tiktoken, "encoding_for_model", offline)
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with OpenAIServer() as srv:
        chat = OpenAI("gpt-4o", api_key="sk-x", base_url=srv.url + "/v1", max_retries=0)
        srv.reply("Yes")
        s = ProgramState(chat)
        s.user("q")
        with s.assistant():
            assert s.select("a", ["Yes", "No"]) == "Yes"
        assert s.meta_info["a"]["method"] == "generate_and_match"
        assert "TIKTOKEN_CACHE_DIR" in s.meta_info["a"]["fallback_reason"]
        completion = OpenAI("gpt-3.5-turbo-instruct", api_key="sk-x", base_url=srv.url + "/v1", max_retries=0)
        s = ProgramState(completion)
        s += "q"
        with pytest.raises(UnsupportedOperationError, match="tokenizer=") as info:
            s.select("a", ["Yes", "No"])
        assert isinstance(info.value, NotImplementedError)
