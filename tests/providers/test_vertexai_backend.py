"""Vertex AI backend on the real ``google-genai`` SDK (vertexai=True) against the loopback Gemini server.

The SDK reaches the loopback server through ``base_url`` with a fixed-token OAuth credentials object
(project/location mode) or an API key (express mode): no Google account or network is involved.
"""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("google.genai")
from google.oauth2.credentials import Credentials  # noqa: E402

from providers import (  # noqa: E402
    APITimeoutError,
    BadRequestError,
    ProgramState,
    RateLimitError,
    RetryPolicy,
    ServerError,
    StreamInterruptedError,
    UnsupportedParameterWarning,
)
from providers.vertexai import VertexAI  # noqa: E402

from . import api_helpers  # noqa: E402
from .api_helpers import (  # noqa: E402
    JPEG_HEAD,
    PNG_1X1,
    chat_state,
    failed_gen_with_sdk_logs,
    two_turn_programs_in_threads,
)
from .wire_gemini import GeminiServer  # noqa: E402
from .wire_http import Break, Fail, Stall, Truncate  # noqa: E402

pytestmark = pytest.mark.timeout(60)

TOKEN = "ya29.loopback-token-0123456789"
FAST = RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.05)


@pytest.fixture
def srv():
    with GeminiServer(token=TOKEN, api_key="AIzaLoopbackKey_0123456789abcdefghij") as server:
        yield server


def make(srv, **kw):
    kw.setdefault("retry_policy", FAST)
    kw.setdefault("project", "proj-1")
    kw.setdefault("location", "us-central1")
    return VertexAI("gemini-2.5-flash", credentials=Credentials(token=TOKEN), base_url=srv.url, **kw)


GEN_PATH = "/v1beta1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent"


def test_multi_turn_with_system_instruction(srv):
    backend = make(srv)
    srv.reply("Paris.", "Lyon.")
    s = chat_state(backend)
    with s.assistant():
        s.gen("a1", max_new_tokens=10, temperature=0.0)
    s.user("Second city?")
    with s.assistant():
        s.gen("a2", top_k=20)
    assert (s["a1"], s["a2"]) == ("Paris.", "Lyon.")
    assert srv.last.path == GEN_PATH
    assert srv.last.header("authorization") == f"Bearer {TOKEN}"
    body = srv.last.json
    assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    assert [(c["role"], c["parts"][0]["text"]) for c in body["contents"]] == [
        ("user", "Capital of France?"), ("model", "Paris."), ("user", "Second city?")]
    assert body["generationConfig"] == {"maxOutputTokens": 128, "topK": 20}
    assert srv.requests[0].json["generationConfig"]["temperature"] == 0.0
    meta = s.meta_info["a2"]
    assert meta["finish_reason"] == "stop" and meta["prompt_tokens"] == 2 + 3 + 1 + 2
    assert meta["completion_tokens"] == 1 and meta["model"] == "gemini-2.5-flash" and meta["latency"] > 0
    assert backend.token_usage.prompt_tokens == 5 + 8 and backend.token_usage.completion_tokens == 2


def test_project_and_location_from_env_or_a_clear_error(srv, monkeypatch):
    monkeypatch.setenv("GCP_PROJECT_ID", "env-proj")
    monkeypatch.setenv("GCP_LOCATION", "europe-west4")
    backend = VertexAI("gemini-2.5-flash", credentials=Credentials(token=TOKEN), base_url=srv.url)
    s = chat_state(backend)
    with s.assistant():
        s.gen("a")
    assert srv.last.path.startswith("/v1beta1/projects/env-proj/locations/europe-west4/")
    monkeypatch.delenv("GCP_LOCATION")
    monkeypatch.delenv("GOOGLE_CLOUD_LOCATION", raising=False)
    # the location is optional (SGLang's backend too): the SDK's default, "global"
    backend = VertexAI("gemini-2.5-flash", credentials=Credentials(token=TOKEN), base_url=srv.url)
    s = chat_state(backend)
    with s.assistant():
        s.gen("a")
    assert srv.last.path.startswith("/v1beta1/projects/env-proj/locations/global/")
    monkeypatch.delenv("GCP_PROJECT_ID")
    with pytest.raises(ValueError, match="GCP_PROJECT_ID") as info:
        VertexAI("gemini-2.5-flash")
    assert "needs a Google Cloud project" in str(info.value)


def test_express_mode_with_api_key(srv):
    key = "AIzaLoopbackKey_0123456789abcdefghij"
    backend = VertexAI("gemini-2.5-flash", api_key=key, base_url=srv.url, retry_policy=FAST)
    s = chat_state(backend)
    with s.assistant():
        s.gen("a")
    assert srv.last.path == "/v1beta1/publishers/google/models/gemini-2.5-flash:generateContent"
    assert srv.last.header("x-goog-api-key") == key
    assert key not in repr(backend)


def test_images_as_inline_data_with_mime_type(srv):
    backend = make(srv)
    s = ProgramState(backend)
    with s.user():
        s += "Compare"
        s.image(PNG_1X1)
        s.image(JPEG_HEAD)
    with s.assistant():
        s.gen("a")
    parts = srv.last.json["contents"][0]["parts"]
    assert parts[0] == {"text": "Compare"}
    # The SDK writes the Blob's field as mime_type (proto JSON accepts both spellings).
    mime = [p["inlineData"].get("mimeType") or p["inlineData"].get("mime_type") for p in parts[1:]]
    assert mime == ["image/png", "image/jpeg"]
    assert parts[1]["inlineData"]["data"].startswith("iVBOR")


def test_n_candidates_and_safety_settings(srv):
    safety = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]
    backend = make(srv, safety_settings=safety)
    srv.reply("one", "two")
    s = chat_state(backend)
    with s.assistant():
        assert s.gen("a", n=2) == ["one", "two"]
    assert srv.last.json["generationConfig"]["candidateCount"] == 2
    assert srv.last.json["safetySettings"] == safety
    assert len(s.meta_info["a"]["choices"]) == 2


def test_json_schema_and_dtype(srv):
    backend = make(srv)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    srv.reply('{"city": "Paris"}', '{"value": 3.5}')
    s = chat_state(backend)
    with s.assistant():
        s.gen("j", json_schema=schema)
    cfg = srv.last.json["generationConfig"]
    assert cfg["responseMimeType"] == "application/json" and cfg["responseJsonSchema"] == schema
    assert json.loads(s["j"]) == {"city": "Paris"}
    s.user("a number")
    with s.assistant():
        assert s.gen("f", dtype=float) == "3.5"
    assert srv.last.json["generationConfig"]["responseJsonSchema"]["properties"]["value"] == {"type": "number"}


def test_min_p_warns(srv):
    backend = make(srv)
    s = chat_state(backend)
    with s.assistant():
        with pytest.warns(UnsupportedParameterWarning, match="min_p"):
            s.gen("a", min_p=0.1)


def test_select_uses_enum_mode(srv):
    backend = make(srv)
    srv.enum_pick = lambda values: values[1]
    s = chat_state(backend, user="Sky colour?")
    with s.assistant():
        assert s.select("c", ["green", "blue", "red"], temperature=0.0) == "blue"
    cfg = srv.last.json["generationConfig"]
    assert cfg["responseMimeType"] == "text/x.enum"
    assert cfg["responseSchema"]["enum"] == ["green", "blue", "red"]
    meta = s.meta_info["c"]
    assert meta["method"] == "response_enum" and meta["match"] == "exact" and meta["prompt_tokens"] > 0


def test_stream_and_usage(srv):
    backend = make(srv)
    srv.reply("Hello big world")
    s = chat_state(backend)
    with s.assistant():
        assert list(s.gen_stream("a")) == ["Hello ", "big ", "world"]
    assert srv.last.path.endswith(":streamGenerateContent") and srv.last.query == {"alt": "sse"}
    meta = s.meta_info["a"]
    assert meta["finish_reason"] == "stop" and meta["completion_tokens"] == 3 and meta["prompt_tokens"] == 5
    assert backend.token_usage.completion_tokens == 3


def test_retry_429_honours_retry_after(srv):
    backend = make(srv)
    srv.script(Fail(429, headers={"Retry-After": "0.3"}))
    s = chat_state(backend)
    t0 = time.monotonic()
    with s.assistant():
        s.gen("a")
    assert time.monotonic() - t0 >= 0.3 and srv.count == 2


def test_retry_5xx_with_backoff_then_give_up(srv):
    backend = make(srv)
    srv.script(Fail(500), Fail(503), Fail(500))
    s = chat_state(backend)
    with s.assistant():
        with pytest.raises(ServerError) as info:
            s.gen("a")
    assert srv.count == 3 and info.value.status == 500 and info.value.provider == "vertexai"
    backend = make(srv, retry_policy=RetryPolicy(max_retries=0))
    srv.script(Fail(429, headers={"Retry-After": "11"}))
    s = chat_state(backend)
    with s.assistant():
        with pytest.raises(RateLimitError) as info:
            s.gen("a")
    assert info.value.retry_after == 11


def test_no_retry_on_400(srv):
    backend = make(srv)
    srv.script(Fail(400, message="Request contains an invalid argument."))
    s = chat_state(backend)
    with s.assistant():
        with pytest.raises(BadRequestError) as info:
            s.gen("a")
    assert srv.count == 1 and info.value.status == 400
    assert info.value.message == "Request contains an invalid argument."


def test_stream_retried_before_first_chunk_only(srv):
    backend = make(srv)
    srv.reply("a b c", "a b c d")
    srv.script(Fail(503))
    s = chat_state(backend)
    with s.assistant():
        assert "".join(s.gen_stream("a")) == "a b c"
    assert srv.count == 2
    srv.script(Break(after=2))
    seen = []
    with s.assistant():
        with pytest.raises(StreamInterruptedError):
            for d in s.gen_stream("b"):
                seen.append(d)
    assert seen == ["a ", "b "] and srv.count == 3
    srv.reply("x y z")
    srv.script(Truncate(after=1))
    with s.assistant():
        with pytest.raises(StreamInterruptedError, match="finish reason"):
            list(s.gen_stream("c"))
    assert srv.count == 4


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
    t0 = time.monotonic()
    with s.assistant():
        with pytest.raises(APITimeoutError):
            s.gen("a")
    assert srv.count == 1 and time.monotonic() - t0 < 3


def test_api_key_never_in_errors_reprs_or_logs(srv, caplog):
    wrong = "AIzaWRONGkey_abcdefghijklmnopqrstuvw"
    backend = VertexAI("gemini-2.5-flash", api_key=wrong, base_url=srv.url, retry_policy=FAST)
    err, log = failed_gen_with_sdk_logs(backend, caplog, BadRequestError)
    api_helpers.assert_no_sdk_exception_reachable(err, wrong)  # the SDK's exception holds the key
    assert "API key not valid" in err.message
    for text in (str(err), repr(err), repr(backend), log):
        assert wrong not in text


def test_one_backend_eight_threads(srv):
    backend = make(srv)

    def echo(req):
        return "echo " + req.json["contents"][-1]["parts"][0]["text"]

    srv.default_reply = echo
    srv.stream_delay = 0.002
    assert two_turn_programs_in_threads(backend, 24) == [(f"echo q{i}", f"echo f{i}") for i in range(24)]
    assert backend.token_usage.completion_tokens == 24 * 2 * 2
