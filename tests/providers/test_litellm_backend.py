"""LiteLLM backend on the real ``litellm`` package, routed (``openai/...``) to the loopback OpenAI server."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("litellm")  # offline: conftest.py makes it use its bundled model price map

from providers import (  # noqa: E402
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ProgramState,
    RateLimitError,
    RetryPolicy,
    ServerError,
    StreamInterruptedError,
    UnsupportedParameterError,
)
from providers.litellm import LiteLLM  # noqa: E402

from . import api_helpers  # noqa: E402
from .api_helpers import (  # noqa: E402
    PNG_1X1,
    chat_state,
    failed_gen_with_sdk_logs,
    last_user_text,
    two_turn_programs_in_threads,
)
from .wire_http import Break, Fail, Stall, Truncate  # noqa: E402
from .wire_openai import OpenAIServer  # noqa: E402

pytestmark = pytest.mark.timeout(90)


def _litellm_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("litellm").split(".")[:2])

KEY = "sk-litellm-loopback-SECRET-0123456789"
FAST = RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.05)


@pytest.fixture
def srv():
    with OpenAIServer(api_key=KEY) as server:
        yield server


def make(srv, **kw):
    kw.setdefault("retry_policy", FAST)
    return LiteLLM("openai/gpt-4o-mini", api_key=KEY, base_url=srv.url + "/v1", **kw)


def test_multi_turn_generate_with_system_prompt_and_usage(srv):
    backend = make(srv, default_headers={"X-Team": "kernelstack"}, organization="org-1")
    srv.reply("Paris.", "Lyon.")
    s = chat_state(backend)
    with s.assistant():
        s.gen("a1", max_new_tokens=9, temperature=0.0)
    s.user("Second city?")
    with s.assistant():
        s.gen("a2")
    assert (s["a1"], s["a2"]) == ("Paris.", "Lyon.")
    body = srv.last.json
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Second city?"},
    ]
    assert srv.requests[0].json["max_tokens"] == 9 and srv.requests[0].json["temperature"] == 0.0
    assert srv.last.header("x-team") == "kernelstack" and srv.last.header("openai-organization") == "org-1"
    meta = s.meta_info["a2"]
    assert meta["finish_reason"] == "stop" and meta["prompt_tokens"] == 8 and meta["completion_tokens"] == 1
    assert meta["latency"] > 0 and meta["model"]
    assert backend.token_usage.prompt_tokens == 5 + 8 and backend.token_usage.completion_tokens == 2


def test_stream_usage_images_and_n(srv):
    backend = make(srv)
    srv.reply("Hello big world", "x", "y")
    s = ProgramState(backend)
    with s.user():
        s += "Look"
        s.image(PNG_1X1)
    with s.assistant():
        assert "".join(s.gen_stream("a")) == "Hello big world"
    content = srv.last.json["messages"][0]["content"]
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert srv.last.json["stream"] is True
    assert s.meta_info["a"]["completion_tokens"] == 3 and s.meta_info["a"]["finish_reason"] == "stop"
    s.user("two answers")
    with s.assistant():
        assert s.gen("b", n=2) == ["x", "y"]
    assert srv.last.json["n"] == 2


def test_structured_output_dtype_and_unsupported(srv):
    backend = make(srv)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    srv.reply('{"a": 1}', '{"value": -3}')
    s = chat_state(backend)
    with s.assistant():
        s.gen("j", json_schema=schema)
    assert json.loads(s["j"]) == {"a": 1}
    assert srv.last.json["response_format"]["json_schema"]["schema"] == schema
    s.user("a number")
    with s.assistant():
        assert s.gen("n", dtype=int) == "-3"
    assert srv.last.json["response_format"]["json_schema"]["schema"]["properties"]["value"] == {"type": "integer"}
    with s.assistant():
        with pytest.raises(UnsupportedParameterError, match="regex"):
            s.gen("r", regex="a+")
    assert srv.count == 2


def test_select_generate_and_match(srv):
    backend = make(srv)
    srv.reply("Blue")
    s = chat_state(backend, user="Sky colour?")
    with s.assistant():
        assert s.select("c", ["green", "blue"]) == "blue"
    assert s.meta_info["c"]["method"] == "generate_and_match" and s.meta_info["c"]["match"] == "normalized"
    assert "- green\n- blue" in last_user_text(srv.last.json)


def test_retry_429_retry_after_and_500(srv):
    backend = make(srv)
    srv.script(Fail(429, headers={"Retry-After": "0.3"}), Fail(500))
    s = chat_state(backend)
    t0 = time.monotonic()
    with s.assistant():
        s.gen("a")
    assert time.monotonic() - t0 >= 0.3
    assert srv.count == 3  # litellm/openai-client retries are off: only ours ran


def test_retries_run_out_and_no_retry_on_400(srv):
    backend = make(srv, max_retries=1)
    srv.script(Fail(503), Fail(503))
    s = chat_state(backend)
    with s.assistant():
        with pytest.raises(ServerError) as info:
            s.gen("a")
    assert srv.count == 2 and info.value.status == 503 and info.value.provider == "litellm"
    srv.script(Fail(400, message="context too long"))
    with s.assistant():
        with pytest.raises(BadRequestError) as info:
            s.gen("b")
    assert srv.count == 3 and "context too long" in info.value.message
    backend = make(srv, max_retries=0)
    srv.script(Fail(429, headers={"Retry-After": "5"}))
    s = chat_state(backend)
    with s.assistant():
        with pytest.raises(RateLimitError) as info:
            s.gen("c")
    assert info.value.status == 429


def test_stream_retried_before_first_chunk_then_never(srv):
    backend = make(srv)
    srv.reply("a b c", "a b c d")
    srv.script(Fail(500))
    s = chat_state(backend)
    with s.assistant():
        assert "".join(s.gen_stream("a")) == "a b c"
    assert srv.count == 2
    srv.script(Break(after=3))
    seen = []
    with s.assistant():
        with pytest.raises(StreamInterruptedError):
            for d in s.gen_stream("b"):
                seen.append(d)
    assert seen == ["a ", "b "] and srv.count == 3


# litellm 1.109.0 changed how it reports a stream closed cleanly before its finish reason: up to 1.108
# it synthesized finish_reason="stop" (so no backend behind it could tell the cut), from 1.109 it raises
# MidStreamFallbackError. The lock pins a version on the new side; this test states what each side does.
LITELLM_REPORTS_CLEAN_CUT = _litellm_version() >= (1, 109)


@pytest.mark.tracks_upstream("litellm 1.109.0: a stream cut before its finish reason raises MidStreamFallbackError")
def test_stream_cut_cleanly_is_an_interruption(srv):
    backend = make(srv)
    srv.reply("a b c")
    srv.script(Truncate(after=3))  # role chunk, "a ", "b ", then a clean close
    s = chat_state(backend)
    seen: list[str] = []
    with s.assistant():
        if not LITELLM_REPORTS_CLEAN_CUT:  # litellm < 1.109 hides the cut: the text so far, "finished"
            seen.extend(s.gen_stream("a"))
            assert seen == ["a ", "b "] and s.meta_info["a"]["finish_reason"] == "stop" and srv.count == 1
            return
        with pytest.raises(StreamInterruptedError) as info:
            for d in s.gen_stream("a"):
                seen.append(d)
    assert seen == ["a ", "b "]  # each delta once: never restarted, no repeated text
    assert srv.count == 1
    assert info.value.provider == "litellm"
    assert "a" not in s.variables and "a b" not in s.text_  # the state rolled the partial text back


def test_timeout_is_retried(srv):
    # The one retry rule (errors.py): a timeout is retried, as the OpenAI/Anthropic SDKs do.
    backend = make(srv, timeout=0.3)
    srv.reply("late but here")
    srv.script(Stall(5))
    s = chat_state(backend)
    with s.assistant():
        assert s.gen("a") == "late but here"
    assert srv.count == 2


def test_timeout_without_retries(srv):
    backend = make(srv, timeout=0.3, retry_policy=RetryPolicy(max_retries=0))
    srv.script(Stall(5))
    s = chat_state(backend)
    with s.assistant():
        with pytest.raises(APITimeoutError):
            s.gen("a")
    assert srv.count == 1


def test_api_key_never_in_errors_reprs_or_logs(srv, caplog):
    wrong = "sk-litellm-WRONG-9876543210zz"
    backend = LiteLLM("openai/gpt-4o-mini", api_key=wrong, base_url=srv.url + "/v1", retry_policy=FAST)
    assert wrong not in repr(backend) and wrong not in repr(vars(backend))  # kept in a Secret
    err, log = failed_gen_with_sdk_logs(backend, caplog, AuthenticationError)
    api_helpers.assert_no_sdk_exception_reachable(err, wrong)  # the SDK's exception holds the key
    assert "Incorrect API key provided" in err.message
    for text in (str(err), repr(err), log):
        assert wrong not in text


def test_one_backend_eight_threads(srv):
    backend = make(srv)
    srv.default_reply = lambda req: "echo " + last_user_text(req.json)
    assert two_turn_programs_in_threads(backend, 16) == [(f"echo q{i}", f"echo f{i}") for i in range(16)]
    assert backend.token_usage.completion_tokens == 16 * 2 * 2
