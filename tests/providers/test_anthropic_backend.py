"""Anthropic backend on the real ``anthropic`` SDK against the loopback Messages API server."""

from __future__ import annotations

import json
import time

import pytest

from providers import (
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ProgramState,
    RateLimitError,
    ServerError,
    StreamInterruptedError,
    UnsupportedParameterError,
    UnsupportedParameterWarning,
)
from providers.anthropic import Anthropic

from . import api_helpers  # noqa: E402
from .api_helpers import (
    JPEG_HEAD,
    PNG_1X1,
    chat_state,
    failed_gen_with_sdk_logs,
    last_user_text,
    two_turn_programs_in_threads,
)
from .wire_anthropic import AnthropicServer
from .wire_http import Break, Fail, Stall, Truncate

pytestmark = pytest.mark.timeout(60)

KEY = "sk-ant-loopback-SECRET-0123456789"


@pytest.fixture
def srv():
    with AnthropicServer(api_key=KEY) as server:
        yield server


def make(srv, **kw):
    kw.setdefault("max_retries", 2)
    return Anthropic("claude-loopback-1", api_key=KEY, base_url=srv.url, **kw)


def test_multi_turn_with_system_prompt_and_usage(srv):
    backend = make(srv)
    srv.reply("Paris.", "Lyon.")
    s = chat_state(backend)
    with s.assistant():
        s.gen("a1", max_new_tokens=20)
    s.user("Second city?")
    with s.assistant():
        s.gen("a2", max_new_tokens=20, temperature=0.2)
    assert (s["a1"], s["a2"]) == ("Paris.", "Lyon.")
    body = srv.last.json
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Second city?"},
    ]
    assert body["max_tokens"] == 20 and body["temperature"] == 0.2
    assert "top_k" not in body and "stop_sequences" not in body
    assert s.messages_[0] == {"role": "system", "content": "Be brief."}  # the state is not mutated
    meta = s.meta_info["a2"]
    assert meta["finish_reason"] == "stop" and meta["finish_reason_raw"] == "end_turn"
    assert meta["prompt_tokens"] == 2 + 3 + 1 + 2 and meta["completion_tokens"] == 1  # system included
    assert meta["model"] == "claude-loopback-1" and meta["latency"] > 0
    assert backend.token_usage.prompt_tokens == 5 + 8
    assert backend.token_usage.completion_tokens == 2


def test_top_k_only_when_set_and_n_rejected(srv):
    backend = make(srv)
    s = chat_state(backend)
    with s.assistant():
        s.gen("a", top_k=40)
        assert srv.last.json["top_k"] == 40
        with pytest.raises(UnsupportedParameterError, match="n"):
            s.gen("b", n=2)
        with pytest.warns(UnsupportedParameterWarning, match="presence_penalty"):
            s.gen("c", presence_penalty=0.5)
    assert "presence_penalty" not in srv.last.json
    assert srv.count == 2


def test_images_become_base64_blocks(srv):
    backend = make(srv)
    s = ProgramState(backend)
    with s.user():
        s += "Compare "
        s.image(PNG_1X1)
        s += " and "
        s.image(JPEG_HEAD)
    with s.assistant():
        s.gen("a")
    blocks = srv.last.json["messages"][0]["content"]
    assert [b["type"] for b in blocks] == ["text", "image", "text", "image"]
    assert blocks[1]["source"]["media_type"] == "image/png" and blocks[1]["source"]["type"] == "base64"
    assert blocks[1]["source"]["data"].startswith("iVBOR")
    assert blocks[3]["source"]["media_type"] == "image/jpeg"


def test_assistant_prefill_is_continued(srv):
    backend = make(srv)
    srv.reply(" 42, of course.")
    s = chat_state(backend, user="Answer?")
    with s.assistant():
        s += "The answer is "
        s.gen("a")
    assert srv.last.json["messages"][-1] == {"role": "assistant", "content": "The answer is"}
    assert s["a"] == "42, of course."
    assert s.messages_[-1]["content"] == "The answer is 42, of course."


def test_whitespace_stop_sequences_are_applied_client_side(srv):
    backend = make(srv)
    srv.reply("line one\nline two END x", "alpha\n\nbeta", "no stop here")
    s = chat_state(backend)
    with s.assistant():
        s.gen("a", stop=["\n", "END"])
    assert srv.last.json["stop_sequences"] == ["END"]
    assert s["a"] == "line one"
    assert s.meta_info["a"]["finish_reason"] == "stop" and s.meta_info["a"]["stop_applied"] == "client"
    s.user("more")
    with s.assistant():
        deltas = list(s.gen_stream("b", stop="\n\n"))
    assert "stop_sequences" not in srv.last.json
    assert "".join(deltas) == "alpha" and s.meta_info["b"]["stop_applied"] == "client"
    s.user("again")
    with s.assistant():
        assert "".join(s.gen_stream("c", stop="\n")) == "no stop here"
    assert s.meta_info["c"]["finish_reason"] == "stop" and "stop_applied" not in s.meta_info["c"]


def test_json_schema_is_a_forced_tool_call(srv):
    backend = make(srv)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    srv.reply('{"city": "Paris"}', '{"city": "Rome"}', '{"value": [1, 2]}')
    s = chat_state(backend)
    with s.assistant():
        s.gen("j", json_schema=schema)
    assert json.loads(s["j"]) == {"city": "Paris"}
    body = srv.last.json
    assert body["tools"][0]["input_schema"] == schema
    assert body["tool_choice"] == {"type": "tool", "name": "structured_output"}
    assert s.meta_info["j"]["finish_reason"] == "tool_calls"
    s.user("again")
    with s.assistant():
        assert json.loads("".join(s.gen_stream("k", json_schema=schema))) == {"city": "Rome"}
    s.user("a list")
    with s.assistant():
        s.gen("l", json_schema={"type": "array", "items": {"type": "integer"}})
    assert json.loads(s["l"]) == [1, 2]
    assert srv.last.json["tools"][0]["input_schema"]["properties"]["value"]["type"] == "array"


def test_dtype_via_tool(srv):
    backend = make(srv)
    srv.reply('{"value": 7}', '{"value": false}')
    s = chat_state(backend)
    with s.assistant():
        assert s.gen("n", dtype=int) == "7"
        assert srv.last.json["tools"][0]["input_schema"]["properties"]["value"] == {"type": "integer"}
        assert "".join(s.gen_stream("b", dtype=bool)) == "False"


def test_select_generate_and_match(srv):
    backend = make(srv)
    srv.reply("I would say: **No**.")
    s = chat_state(backend, user="Is the sky green?")
    with s.assistant():
        assert s.select("yn", ["Yes", "No"]) == "No"
    meta = s.meta_info["yn"]
    assert meta["method"] == "generate_and_match" and meta["match"] == "contains"
    assert meta["generated"] == "I would say: **No**." and meta["prompt_tokens"] > 0
    assert "- Yes\n- No" in last_user_text(srv.last.json)
    assert s.messages_[1]["content"] == "Is the sky green?"  # the instruction is not added to the state


def test_stream_text_and_usage(srv):
    backend = make(srv)
    srv.reply("Hello big world")
    s = chat_state(backend)
    with s.assistant():
        deltas = list(s.gen_stream("a"))
    assert deltas == ["Hello ", "big ", "world"]
    assert srv.last.json["stream"] is True
    meta = s.meta_info["a"]
    assert meta["completion_tokens"] == 3 and meta["prompt_tokens"] == 5 and meta["finish_reason"] == "stop"
    assert backend.token_usage.completion_tokens == 3


def test_retries_429_retry_after_and_529_overloaded(srv):
    backend = make(srv)
    srv.script(Fail(429, headers={"retry-after": "0.2"}), Fail(529, headers={"retry-after": "0.01"}))
    s = chat_state(backend)
    t0 = time.monotonic()
    with s.assistant():
        s.gen("a")
    assert time.monotonic() - t0 >= 0.2
    assert srv.count == 3 and s["a"] == "Hello from Anthropic"


def test_retry_500_then_give_up_and_429_carries_retry_after(srv):
    backend = make(srv, max_retries=1)
    srv.script(Fail(500), Fail(500))
    s = chat_state(backend)
    with s.assistant():
        with pytest.raises(ServerError) as info:
            s.gen("a")
    assert srv.count == 2 and info.value.status == 500 and info.value.provider == "anthropic"
    backend = make(srv, max_retries=0)
    srv.script(Fail(429, headers={"retry-after": "9"}))
    s = chat_state(backend)
    with s.assistant():
        with pytest.raises(RateLimitError) as info:
            s.gen("a")
    assert info.value.retry_after == 9


def test_no_retry_on_400(srv):
    backend = make(srv)
    srv.script(Fail(400, message="prompt is too long"))
    s = chat_state(backend)
    with s.assistant():
        with pytest.raises(BadRequestError) as info:
            s.gen("a")
    assert srv.count == 1 and info.value.message == "prompt is too long" and info.value.status == 400


def test_stream_break_error_event_and_truncation(srv):
    backend = make(srv)
    srv.reply("one two three four", "one two three four")
    s = chat_state(backend)
    seen = []
    srv.script(Break(after=5))  # message_start, block_start, ping, "one ", "two "
    with s.assistant():
        with pytest.raises(StreamInterruptedError):
            for d in s.gen_stream("a"):
                seen.append(d)
    assert seen == ["one ", "two "] and srv.count == 1
    srv.script(lambda h, req: srv.stream_error(h, "Hel", kind="overloaded_error", message="Overloaded"))
    with s.assistant():
        with pytest.raises(StreamInterruptedError, match="Overloaded") as info:
            list(s.gen_stream("b"))
    assert info.value.status == 529 and srv.count == 2
    srv.script(Truncate(after=6))
    with s.assistant():
        with pytest.raises(StreamInterruptedError, match="message_stop"):
            list(s.gen_stream("c"))
    assert srv.count == 3


def test_timeout(srv):
    backend = make(srv, timeout=0.3, max_retries=0)
    srv.script(Stall(5))
    s = chat_state(backend)
    with s.assistant():
        with pytest.raises(APITimeoutError):
            s.gen("a")
    assert srv.count == 1


def test_timeout_is_retried_by_the_sdk(srv):
    # The one retry rule (errors.py), here applied by the SDK itself.
    backend = make(srv, timeout=0.3, max_retries=1)
    srv.reply("late but here")
    srv.script(Stall(5))
    s = chat_state(backend)
    with s.assistant():
        assert s.gen("a") == "late but here"
    assert srv.count == 2


def test_api_key_never_in_errors_reprs_or_logs(srv, caplog):
    wrong = "sk-ant-WRONG-key-9876543210"
    backend = Anthropic("claude-x", api_key=wrong, base_url=srv.url, max_retries=0)
    assert wrong not in repr(backend)
    err, log = failed_gen_with_sdk_logs(backend, caplog, AuthenticationError)
    api_helpers.assert_no_sdk_exception_reachable(err, wrong)  # the SDK's exception holds the key
    assert "invalid x-api-key" in err.message
    for text in (str(err), repr(err), log):
        assert wrong not in text
    assert err.__cause__ is None


def test_missing_key_is_a_configuration_error(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    with pytest.raises(ValueError, match="API key"):
        Anthropic("claude-x")


def test_one_backend_eight_threads(srv):
    backend = make(srv)
    srv.default_reply = lambda req: "echo " + last_user_text(req.json)
    srv.stream_delay = 0.002
    assert two_turn_programs_in_threads(backend, 24) == [(f"echo q{i}", f"echo f{i}") for i in range(24)]
    assert backend.token_usage.completion_tokens == 24 * 2 * 2
