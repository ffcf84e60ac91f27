"""The loopback wire-format servers themselves, checked with a plain httpx client.

The backend tests trust these servers to speak each API's documented format and to script faults
faithfully; these tests pin that down independently of any SDK.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from .wire_anthropic import AnthropicServer
from .wire_gemini import GeminiServer
from .wire_http import Break, Fail, Stall, Truncate, WireServer, pieces
from .wire_openai import OpenAIServer

pytestmark = pytest.mark.timeout(60)


def _sse_data(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


def _sse_events(text: str) -> list[str]:
    return [line[len("event: "):] for line in text.splitlines() if line.startswith("event: ")]


def test_pieces_roundtrip():
    for text in ["Hello world", " a  b ", "", "x", "multi\nline text"]:
        assert "".join(pieces(text)) == text


def test_openai_chat_json_and_usage():
    with OpenAIServer(api_key="sk-test-000000") as srv:
        srv.reply("one two three")
        r = httpx.post(srv.url + "/v1/chat/completions", headers={"Authorization": "Bearer sk-test-000000"},
                       json={"model": "m", "messages": [{"role": "user", "content": "a b"}], "max_tokens": 2})
        body = r.json()
        assert r.status_code == 200
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == "one two"
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
        assert srv.last.json["max_tokens"] == 2


def test_openai_rejects_wrong_key_and_both_limits():
    with OpenAIServer(api_key="sk-test-000000") as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", headers={"Authorization": "Bearer nope"},
                       json={"model": "m", "messages": []})
        assert r.status_code == 401
        r = httpx.post(srv.url + "/v1/chat/completions", headers={"Authorization": "Bearer sk-test-000000"},
                       json={"model": "m", "messages": [], "max_tokens": 1, "max_completion_tokens": 1})
        assert r.status_code == 400


def test_openai_stream_framing_with_usage():
    with OpenAIServer() as srv:
        srv.reply("Hello big world")
        r = httpx.post(srv.url + "/v1/chat/completions",
                       json={"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True,
                             "stream_options": {"include_usage": True}})
        assert r.headers["content-type"].startswith("text/event-stream")
        data = _sse_data(r.text)
        assert data[-1] == "[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == "Hello big world"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"


def test_openai_completions_logit_bias_model():
    with OpenAIServer() as srv:
        srv.vocab = {5: "yes", 6: "no", 7: "maybe"}
        srv.token_scores = {"no": 2.0}
        r = httpx.post(srv.url + "/v1/completions",
                       json={"model": "m", "prompt": [1, 2], "max_tokens": 1, "logprobs": 2,
                             "logit_bias": {"5": 100, "6": 100}}).json()
        assert r["choices"][0]["text"] == "no"
        lp = r["choices"][0]["logprobs"]
        assert lp["tokens"] == ["no"] and set(lp["top_logprobs"][0]) == {"yes", "no"}
        assert r["usage"]["prompt_tokens"] == 2


def test_azure_deployment_route_needs_api_version():
    with OpenAIServer(api_key="az-key-12345") as srv:
        url = srv.url + "/openai/deployments/dep1/chat/completions"
        msg = {"messages": [{"role": "user", "content": "x"}]}
        assert httpx.post(url, json=msg, headers={"api-key": "az-key-12345"}).status_code == 404
        r = httpx.post(url, params={"api-version": "2024-10-21"}, json=msg, headers={"api-key": "az-key-12345"})
        assert r.status_code == 200 and r.json()["model"] == "dep1"


def test_scripted_faults_are_consumed_in_order():
    with OpenAIServer() as srv:
        srv.script(Fail(429, headers={"Retry-After": "7"}), Fail(500))
        url = srv.url + "/v1/chat/completions"
        msg = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        r1, r2, r3 = (httpx.post(url, json=msg) for _ in range(3))
        assert (r1.status_code, r1.headers["retry-after"]) == (429, "7")
        assert r1.json()["error"]["type"] == "rate_limit_error"
        assert r2.status_code == 500 and r3.status_code == 200
        assert srv.count == 3


def test_break_and_truncate_and_stall():
    with OpenAIServer() as srv:
        srv.reply("a b c d", "a b c d")
        url = srv.url + "/v1/chat/completions"
        msg = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
        srv.script(Break(2))
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(url, json=msg)
        srv.script(Truncate(2))
        r = httpx.post(url, json=msg)
        assert r.status_code == 200 and "[DONE]" not in r.text and len(_sse_data(r.text)) == 2
        srv.script(Stall(5))
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json={**msg, "stream": False}, timeout=0.2)
        assert time.monotonic() - t0 < 2


def test_server_stops_by_itself():
    srv = OpenAIServer(lifetime=0.3).start()
    httpx.post(srv.url + "/v1/chat/completions", json={"model": "m", "messages": []})
    time.sleep(0.6)
    with pytest.raises(httpx.ConnectError):
        httpx.post(srv.url + "/v1/chat/completions", json={"model": "m", "messages": []}, timeout=1)
    srv.close()  # idempotent


class _Named(WireServer):
    def __init__(self, name, **kw):
        super().__init__(**kw)
        self.name = name

    def handle(self, h, req, action):
        self.send_json(h, {"server": self.name})


def test_closed_server_answers_nothing_on_kept_alive_connections():
    # Clients keep idle keep-alive connections past a server's close (litellm even caches its HTTP
    # clients process-wide), and the OS hands a later server the same port again, often within a
    # few binds. Such a connection must lead to the new server, never into the closed one.
    with httpx.Client() as client:
        with _Named("old") as old:
            assert client.get(old.url + "/").json() == {"server": "old"}
        with _Named("new", port=old.port) as new:
            assert client.get(new.url + "/").json() == {"server": "new"}
    assert old.count == 1 and new.count == 1


def test_base_server_binds_loopback_only():
    srv = WireServer()
    try:
        assert srv.url.startswith("http://127.0.0.1:")
    finally:
        srv._httpd.server_close()


def test_anthropic_stream_event_sequence():
    with AnthropicServer() as srv:
        srv.reply("Hi there you")
        r = httpx.post(srv.url + "/v1/messages", headers={"anthropic-version": "2023-06-01"},
                       json={"model": "c", "max_tokens": 10, "stream": True, "system": "sys",
                             "messages": [{"role": "user", "content": "q"}]})
        assert _sse_events(r.text) == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 3 + [
            "content_block_stop", "message_delta", "message_stop"]
        deltas = [json.loads(d) for d in _sse_data(r.text)]
        assert "".join(d["delta"]["text"] for d in deltas if d["type"] == "content_block_delta") == "Hi there you"
        assert deltas[0]["message"]["usage"]["input_tokens"] == 2
        assert deltas[-2]["delta"]["stop_reason"] == "end_turn" and deltas[-2]["usage"]["output_tokens"] == 3


def test_anthropic_validation_like_the_api():
    with AnthropicServer() as srv:
        h = {"anthropic-version": "2023-06-01"}
        base = {"model": "c", "messages": [{"role": "user", "content": "q"}]}
        assert httpx.post(srv.url + "/v1/messages", headers=h, json=base).status_code == 400  # no max_tokens
        r = httpx.post(srv.url + "/v1/messages", headers=h, json={**base, "max_tokens": 5, "stop_sequences": ["\n"]})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = httpx.post(srv.url + "/v1/messages", headers=h,
                       json={**base, "max_tokens": 5, "messages": [{"role": "system", "content": "s"}]})
        assert r.status_code == 400
        srv.reply('{"k": 1}')
        r = httpx.post(srv.url + "/v1/messages", headers=h,
                       json={**base, "max_tokens": 5, "tools": [{"name": "t", "input_schema": {"type": "object"}}],
                             "tool_choice": {"type": "tool", "name": "t"}}).json()
        assert r["stop_reason"] == "tool_use" and r["content"][0]["input"] == {"k": 1}


def test_gemini_vertex_routes_and_sse():
    with GeminiServer(token="tok") as srv:
        path = "/v1beta1/projects/p/locations/l/publishers/google/models/g"
        h = {"Authorization": "Bearer tok"}
        body = {"contents": [{"role": "user", "parts": [{"text": "a b"}]}],
                "generationConfig": {"candidateCount": 2, "maxOutputTokens": 2}}
        r = httpx.post(srv.url + path + ":generateContent", headers=h, json=body).json()
        assert [c["finishReason"] for c in r["candidates"]] == ["MAX_TOKENS", "MAX_TOKENS"]
        assert r["usageMetadata"]["promptTokenCount"] == 2
        r = httpx.post(srv.url + path + ":streamGenerateContent", params={"alt": "sse"}, headers=h,
                       json={"contents": body["contents"]})
        chunks = [json.loads(d) for d in _sse_data(r.text)]
        assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == "Hello from Gemini"
        assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
        assert httpx.post(srv.url + path + ":generateContent", json=body).status_code == 401
        bad = {"contents": [{"role": "system", "parts": [{"text": "s"}]}]}
        assert httpx.post(srv.url + path + ":generateContent", headers=h, json=bad).status_code == 400


def test_gemini_enum_mode():
    with GeminiServer() as srv:
        srv.enum_pick = lambda values: values[-1]
        r = httpx.post(srv.url + "/v1beta1/publishers/google/models/g:generateContent",
                       json={"contents": [{"role": "user", "parts": [{"text": "q"}]}],
                             "generationConfig": {"responseMimeType": "text/x.enum",
                                                  "responseSchema": {"type": "STRING", "enum": ["a", "b"]}}}).json()
        assert r["candidates"][0]["content"]["parts"][0]["text"] == "b"
