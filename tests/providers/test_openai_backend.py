"""OpenAI / Azure backend on the real ``openai`` SDK against the loopback OpenAI wire server."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import sys
import time

import pytest

from providers import (
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ProgramState,
    ProviderError,
    RateLimitError,
    ServerError,
    StreamInterruptedError,
    UnsupportedParameterError,
    UnsupportedParameterWarning,
)
from providers.openai import OpenAI, TokenUsage

from . import api_helpers
from .api_helpers import PNG_1X1, ToyTokenizer, failed_gen_with_sdk_logs, last_user_text, two_turn_programs_in_threads
from .wire_http import Break, Fail, Stall, Truncate
from .wire_openai import OpenAIServer

pytestmark = pytest.mark.timeout(60)

KEY = "sk-loopback-SECRET-0123456789"


@pytest.fixture
def srv():
    with OpenAIServer(api_key=KEY) as server:
        yield server


def make(srv, model="gpt-4o-mini", **kw):
    kw.setdefault("max_retries", 2)
    return OpenAI(model, api_key=KEY, base_url=srv.url + "/v1", **kw)


chat_state = functools.partial(api_helpers.chat_state, system="You are terse.")


# ------------------------------------------------------------------------------------ generate


def test_chat_generate_multi_turn_with_system_prompt(srv):
    backend = make(srv)
    srv.reply("Paris.", "Lyon is second.")
    s = chat_state(backend)
    with s.assistant():
        s.gen("a1", max_new_tokens=16, temperature=0.0)
    s.user("And the second city?")
    with s.assistant():
        s.gen("a2", max_new_tokens=16)
    assert s["a1"] == "Paris." and s["a2"] == "Lyon is second."
    body = srv.last.json
    assert srv.last.path == "/v1/chat/completions"
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And the second city?"},
    ]
    assert body["max_tokens"] == 16 and "max_completion_tokens" not in body
    assert "temperature" not in body  # unset knobs are not sent
    assert srv.requests[0].json["temperature"] == 0.0
    meta = s.meta_info["a2"]
    assert {"prompt_tokens", "completion_tokens", "finish_reason", "latency", "model"} <= set(meta)
    assert meta["finish_reason"] == "stop" and meta["model"] == "gpt-4o-mini"
    assert meta["completion_tokens"] == 3 and meta["prompt_tokens"] == 11
    assert meta["latency"] > 0


def test_token_usage_sums_every_call_and_resets(srv):
    backend = make(srv)
    srv.reply("one two", "three")
    s = chat_state(backend, user="a b c")
    with s.assistant():
        s.gen("x")
    s.user("d")
    with s.assistant():
        for _ in s.gen_stream("y"):
            pass
    assert isinstance(backend.token_usage, TokenUsage)
    # prompt: 3+3 words, then 3+3+2+1 words; completion: 2 + 1
    assert backend.token_usage.prompt_tokens == 6 + 9
    assert backend.token_usage.completion_tokens == 3
    backend.token_usage.reset()
    assert backend.token_usage.prompt_tokens == backend.token_usage.completion_tokens == 0


def test_reasoning_models_get_max_completion_tokens_only(srv):
    for model in ("o3-mini", "gpt-5"):
        backend = make(srv, model=model)
        s = chat_state(backend)
        with s.assistant():
            s.gen("a", max_new_tokens=7)
        assert srv.last.json["max_completion_tokens"] == 7 and "max_tokens" not in srv.last.json
    backend = make(srv, model="my-deployment", is_reasoning_model=True)
    s = chat_state(backend)
    with s.assistant():
        s.gen("a", max_new_tokens=5)
    assert srv.last.json["max_completion_tokens"] == 5 and "max_tokens" not in srv.last.json


def test_completion_model_uses_flat_prompt(srv):
    backend = make(srv, model="gpt-3.5-turbo-instruct")
    assert not backend.is_chat_model
    srv.reply(" Paris")
    s = ProgramState(backend)
    s += "Q: Capital of France?\nA:"
    text = s.gen("a", max_new_tokens=4, stop=["\n"])
    assert text == " Paris"
    assert srv.last.path == "/v1/completions"
    assert srv.last.json["prompt"] == "Q: Capital of France?\nA:"
    assert srv.last.json["stop"] == ["\n"]
    assert s.text_.endswith("A: Paris")
    assert make(srv, model="gpt-4o", is_chat_model=False).is_chat_model is False


def test_n_greater_than_one_returns_a_list(srv):
    backend = make(srv)
    srv.reply("first", "second", "third")
    s = chat_state(backend)
    with s.assistant():
        texts = s.gen("many", n=3)
    assert texts == ["first", "second", "third"]
    assert srv.last.json["n"] == 3
    meta = s.meta_info["many"]
    assert len(meta["choices"]) == 3 and meta["completion_tokens"] == 3
    assert all(c["finish_reason"] == "stop" for c in meta["choices"])


def test_images_are_image_url_parts(srv):
    backend = make(srv)
    s = ProgramState(backend)
    with s.user():
        s += "What is in this picture?"
        s.image(PNG_1X1)
    with s.assistant():
        s.gen("a")
    content = srv.last.json["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "What is in this picture?"}
    assert content[1]["type"] == "image_url"
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,iVBOR")


def test_json_schema_becomes_response_format(srv):
    backend = make(srv)
    srv.reply('{"city": "Paris"}', '{"city": "Paris"}')
    strict = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    s = chat_state(backend)
    with s.assistant():
        s.gen("j", json_schema=strict)
    assert json.loads(s["j"]) == {"city": "Paris"}
    rf = srv.last.json["response_format"]
    assert rf == {"type": "json_schema", "json_schema": {"name": "output", "schema": strict, "strict": True}}
    loose = {"type": "object", "properties": {"city": {"type": "string"}}}
    s = chat_state(backend)
    with s.assistant():
        s.gen("j", json_schema=loose)
    assert srv.last.json["response_format"]["json_schema"]["strict"] is False


def test_json_schema_on_completion_model_is_a_clear_error(srv):
    backend = make(srv, model="gpt-3.5-turbo-instruct")
    s = ProgramState(backend)
    s += "x"
    with pytest.raises(UnsupportedParameterError, match="json_schema"):
        s.gen("j", json_schema={"type": "object"})
    assert srv.count == 0


def test_unsupported_params_raise_or_warn_before_any_request(srv):
    backend = make(srv)
    s = chat_state(backend)
    with s.assistant():
        with pytest.raises(UnsupportedParameterError, match="regex"):
            s.gen("a", regex="[0-9]+")
        assert srv.count == 0
        with pytest.warns(UnsupportedParameterWarning, match="top_k"):
            s.gen("b", top_k=5)
    assert "top_k" not in srv.last.json


def test_prefill_in_assistant_turn_is_rejected(srv):
    backend = make(srv)
    s = chat_state(backend)
    with s.assistant():
        s += "The answer is"
        with pytest.raises(ValueError, match="partial assistant message"):
            s.gen("a")
    assert srv.count == 0


def test_dtype_on_chat_uses_structured_output(srv):
    backend = make(srv)
    srv.reply('{"value": 42}', '{"value": "hi \\"there\\""}', '{"value": true}')
    s = chat_state(backend)
    with s.assistant():
        assert s.gen("n", dtype=int) == "42"
    assert srv.last.json["response_format"]["json_schema"]["schema"]["properties"]["value"] == {"type": "integer"}
    s = chat_state(backend)
    with s.assistant():
        assert s.gen("t", dtype=str) == '"hi \\"there\\""'
    s = chat_state(backend)
    with s.assistant():
        assert s.gen("b", dtype=bool) == "True"


def test_dtype_on_completion_model_uses_logit_bias(srv):
    tok = ToyTokenizer(words=["12", "True", "False"])
    backend = make(srv, model="gpt-3.5-turbo-instruct", tokenizer=tok)
    srv.vocab = tok.vocab
    srv.token_scores = {"12": 3.0}
    s = ProgramState(backend)
    s += "Twelve as digits:"
    assert s.gen("n", dtype=int) == "12"
    bias = srv.last.json["logit_bias"]
    allowed = {tok.vocab[int(t)] for t in bias}
    assert "12" in allowed and "7" in allowed and "-" in allowed and " " in allowed
    assert not any(c.isalpha() for piece in allowed for c in piece)
    assert srv.last.json["stop"] == [" ", "\n"]
    # str: the prompt opens a quote and the generation stops at the closing one
    srv.vocab = {}
    srv.reply('hello" and more')
    assert s.gen("s", dtype=str) == '"hello"'
    assert srv.last.json["prompt"].endswith('"') and srv.last.json["stop"] == ['"']
    # bool: a select between True and False
    srv.vocab = tok.vocab
    srv.token_scores = {"False": 1.0}
    assert s.gen("b", dtype=bool) == "False"


# ------------------------------------------------------------------------------------- select


def test_select_on_completion_model_probes_with_logit_bias(srv):
    tok = ToyTokenizer(words=["Paris", "Pa", "London", "ris", "lermo"])
    backend = make(srv, model="gpt-3.5-turbo-instruct", tokenizer=tok)
    srv.vocab = tok.vocab
    srv.token_scores = {"Paris": 2.0, "Pa": 1.0}
    s = ProgramState(backend)
    s += "The capital of France is "
    # Paris -> [Paris], London -> [London], Palermo -> [Pa, lermo]: one step decides.
    choice = s.select("city", ["Paris", "London", "Palermo"])
    assert choice == "Paris"
    assert srv.count == 1
    meta = s.meta_info["city"]
    assert meta["method"] == "logit_bias"
    assert meta["steps"][0]["token"] == "Paris" and set(meta["steps"][0]["top_logprobs"]) == {"Paris", "Pa", "London"}
    first = srv.requests[0].json
    assert first["max_tokens"] == 1 and first["prompt"] == tok.encode("The capital of France is ")
    assert {tok.vocab[int(t)] for t in first["logit_bias"]} == {"Paris", "London", "Pa"}


def test_select_completion_prefers_model_choice_across_steps(srv):
    tok = ToyTokenizer(words=["Pa", "ris", "lermo"])
    backend = make(srv, model="gpt-3.5-turbo-instruct", tokenizer=tok)
    srv.vocab = tok.vocab
    srv.token_scores = {"Pa": 2.0, "lermo": 1.0}
    s = ProgramState(backend)
    s += "Sicily's capital: "
    assert s.select("c", ["Paris", "Palermo", "Rome"]) == "Palermo"
    assert srv.count == 2  # step 1 picks "Pa" (Paris/Palermo left), step 2 "lermo"
    second = srv.requests[1].json
    assert second["prompt"] == tok.encode("Sicily's capital: ") + tok.encode("Pa")
    assert {tok.vocab[int(t)] for t in second["logit_bias"]} == {"ris", "lermo"}
    assert s.meta_info["c"]["requests"] == 2


def test_select_on_chat_with_distinct_first_tokens_uses_logit_bias(srv):
    tok = ToyTokenizer(words=["yes", "no"])
    backend = make(srv, tokenizer=tok)
    srv.vocab = tok.vocab
    srv.token_scores = {"no": 1.5}
    s = chat_state(backend, user="Is the sky green?")
    with s.assistant():
        assert s.select("yn", ["yes", "no"]) == "no"
    body = srv.last.json
    assert body["max_tokens"] == 1 and body["logprobs"] is True
    assert {tok.vocab[int(t)] for t in body["logit_bias"]} == {"yes", "no"}
    meta = s.meta_info["yn"]
    assert meta["method"] == "logit_bias"
    assert meta["first_token_logprobs"]["no"] > meta["first_token_logprobs"]["yes"]
    assert meta["requested_method"] == "token_length_normalized"


def test_select_on_chat_falls_back_to_generate_and_match(srv):
    tok = ToyTokenizer()
    backend = make(srv, tokenizer=tok)  # single-char tokens: "Paris" and "Palermo" share "P"
    srv.reply("  palermo. ")
    s = chat_state(backend, user="Capital of Sicily?")
    with s.assistant():
        assert s.select("c", ["Paris", "Palermo"]) == "Palermo"
    meta = s.meta_info["c"]
    assert meta["method"] == "generate_and_match" and meta["match"] == "normalized"
    assert meta["fallback_reason"] == "choices share their first token"
    assert "- Paris\n- Palermo" in last_user_text(srv.last.json)
    # reasoning models never get logit_bias
    backend = make(srv, model="o3-mini", tokenizer=tok)
    srv.reply("Rome")
    s = chat_state(backend)
    with s.assistant():
        assert s.select("c", ["Rome", "Oslo"]) == "Rome"
    assert "logit_bias" not in srv.last.json
    assert s.meta_info["c"]["fallback_reason"] == "reasoning models reject logit_bias"


# ------------------------------------------------------------------------------------- stream


def test_stream_chat(srv):
    backend = make(srv)
    srv.reply("Hello there, friend.")
    s = chat_state(backend)
    with s.assistant():
        deltas = list(s.gen_stream("a", max_new_tokens=32))
    assert "".join(deltas) == "Hello there, friend." and len(deltas) == 3
    assert srv.last.json["stream"] is True
    assert srv.last.json["stream_options"] == {"include_usage": True}
    meta = s.meta_info["a"]
    assert meta["finish_reason"] == "stop" and meta["completion_tokens"] == 3 and meta["latency"] > 0


def test_stream_completion_model(srv):
    backend = make(srv, model="gpt-3.5-turbo-instruct")
    srv.reply("a b c")
    s = ProgramState(backend)
    s += "x"
    assert "".join(s.gen_stream("a")) == "a b c"
    assert srv.last.path == "/v1/completions"


def test_stream_break_after_first_chunk_raises_without_repeating(srv):
    backend = make(srv)
    srv.reply("one two three four")
    srv.script(Break(after=2))  # role chunk + "one "
    s = chat_state(backend)
    seen = []
    with s.assistant():
        with pytest.raises(StreamInterruptedError) as info:
            for d in s.gen_stream("a"):
                seen.append(d)
    assert seen == ["one "]
    assert srv.count == 1  # never restarted
    assert info.value.provider == "openai"
    assert "a" not in s.variables and "one" not in s.text_  # the state rolled the partial text back


def test_stream_cut_cleanly_without_finish_reason_raises(srv):
    backend = make(srv)
    srv.reply("one two three")
    srv.script(Truncate(after=2))
    s = chat_state(backend)
    with s.assistant():
        with pytest.raises(StreamInterruptedError, match="without a finish reason"):
            list(s.gen_stream("a"))
    assert srv.count == 1


# ------------------------------------------------------------------------------------ retries


def test_retry_on_429_honours_retry_after(srv):
    backend = make(srv)
    srv.script(Fail(429, headers={"Retry-After": "0.3"}))
    s = chat_state(backend)
    t0 = time.monotonic()
    with s.assistant():
        s.gen("a")
    assert time.monotonic() - t0 >= 0.3
    assert srv.count == 2 and s["a"] == "Hello from OpenAI"


def test_retry_on_500_with_backoff_then_give_up(srv):
    backend = make(srv, max_retries=1)
    srv.script(Fail(500), Fail(503))
    s = chat_state(backend)
    t0 = time.monotonic()
    with s.assistant():
        with pytest.raises(ServerError) as info:
            s.gen("a")
    assert time.monotonic() - t0 >= 0.3  # one backoff of ~0.4-0.5 s (0.5 s with jitter)
    assert srv.count == 2  # 1 try + max_retries=1
    assert info.value.status == 503 and info.value.provider == "openai"


def test_rate_limit_error_carries_retry_after_when_retries_run_out(srv):
    backend = make(srv, max_retries=0)
    srv.script(Fail(429, headers={"Retry-After": "7"}, message="slow down"))
    s = chat_state(backend)
    with s.assistant():
        with pytest.raises(RateLimitError) as info:
            s.gen("a")
    assert info.value.retry_after == 7 and info.value.status == 429 and "slow down" in info.value.message


def test_no_retry_on_400(srv):
    backend = make(srv)
    srv.script(Fail(400, message="bad request: messages too long"))
    s = chat_state(backend)
    with s.assistant():
        with pytest.raises(BadRequestError) as info:
            s.gen("a")
    assert srv.count == 1
    assert info.value.status == 400 and info.value.message == "bad request: messages too long"


def test_timeout(srv):
    backend = make(srv, timeout=0.3, max_retries=0)
    srv.script(Stall(5))
    s = chat_state(backend)
    t0 = time.monotonic()
    with s.assistant():
        with pytest.raises(APITimeoutError):
            s.gen("a")
    assert time.monotonic() - t0 < 3 and srv.count == 1


def test_timeout_is_retried_by_the_sdk(srv):
    # The one retry rule (errors.py), here applied by the SDK itself.
    backend = make(srv, timeout=0.3, max_retries=1)
    srv.reply("late but here")
    srv.script(Stall(5))
    s = chat_state(backend)
    with s.assistant():
        assert s.gen("a") == "late but here"
    assert srv.count == 2


# ----------------------------------------------------------------------------------- secrets


def test_api_key_never_in_errors_reprs_or_logs(srv, caplog):
    wrong = "sk-WRONG-key-9876543210abcdef"
    backend = OpenAI("gpt-4o", api_key=wrong, base_url=srv.url + "/v1", max_retries=0)
    assert wrong not in repr(backend) and KEY not in repr(make(srv))
    err, log = failed_gen_with_sdk_logs(backend, caplog, AuthenticationError)
    api_helpers.assert_no_sdk_exception_reachable(err, wrong)  # the SDK's exception holds the key
    assert "Incorrect API key provided" in err.message  # the server's message is kept...
    for text in (str(err), repr(err), err.message, log):
        assert wrong not in text  # ...without the key it echoed
    assert err.__cause__ is None and err.__suppress_context__
    assert err.status == 401 and err.provider == "openai"


def test_missing_key_is_a_configuration_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="api_key"):
        OpenAI("gpt-4o")


def test_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ImportError, match=r"pip install 'kernelstack\[providers\]'"):
        OpenAI("gpt-4o", api_key=KEY)


# ---------------------------------------------------------------------------------------- azure


def test_azure_deployment_urls(srv):
    backend = OpenAI("my-gpt4o", is_azure=True, api_key=KEY, azure_endpoint=srv.url, api_version="2024-10-21",
                     max_retries=0)
    srv.reply("hi from azure", "streamed reply")
    s = chat_state(backend)
    with s.assistant():
        s.gen("a")
    assert s["a"] == "hi from azure"
    assert srv.last.path == "/openai/deployments/my-gpt4o/chat/completions"
    assert srv.last.query == {"api-version": "2024-10-21"}
    assert srv.last.header("api-key") == KEY
    s.user("more")
    with s.assistant():
        assert "".join(s.gen_stream("b")) == "streamed reply"
    srv.script(Fail(400))
    s.user("x")
    with s.assistant():
        with pytest.raises(BadRequestError) as info:
            s.gen("c")
    assert info.value.provider == "azure"


# ------------------------------------------------------------------------------ speculative


def test_speculative_execution_fills_slots_from_one_request(srv):
    backend = make(srv)
    srv.reply("Name: Alice\nAge: 30\n")
    s = chat_state(backend, user="Describe a person.")
    backend.set_api_speculative(s, num_api_spec_tokens=64)
    with s.assistant():
        s += "Name: "
        assert s.gen("name", stop="\n") == ""
        s += "\nAge: "
        s.gen("age", stop="\n")
        assert srv.count == 0  # nothing sent yet
        backend.role_end_generate(s)
    assert srv.count == 1
    assert srv.last.json["max_tokens"] == 64 and "stop" not in srv.last.json
    assert s["name"] == "Alice" and s["age"] == "30"
    assert s.messages_[-1] == {"role": "assistant", "content": "Name: Alice\nAge: 30"}
    assert s.meta_info["name"]["speculative"] is True and s.meta_info["name"]["finish_reason"] == "stop"
    assert s.backend_data["openai"]["terms"] == []


def test_speculative_turn_runs_when_the_assistant_role_closes(srv):
    """SGLang's flow: nothing calls role_end_generate by hand; closing the assistant turn does."""
    backend = make(srv)
    srv.reply("Name: Bob\nAge: 41\n")
    s = chat_state(backend, user="Describe a person.")
    s.num_api_spec_tokens = 32  # the attribute SGLang's executor carries
    with s.assistant():
        s += "Name: "
        s.gen("name", stop="\n")
        s += "\nAge: "
        s.gen("age", stop="\n")
        assert srv.count == 0
    assert srv.count == 1 and srv.last.json["max_tokens"] == 32
    assert s["name"] == "Bob" and s["age"] == "41"
    assert s.messages_[-1] == {"role": "assistant", "content": "Name: Bob\nAge: 41"}


def test_speculative_buffers_are_per_state(srv):
    backend = make(srv)
    srv.default_reply = lambda req: "Answer: " + last_user_text(req.json)

    def run(i):
        s = chat_state(backend, user=f"q{i}")
        backend.set_api_speculative(s, 16)
        with s.assistant():
            s += "Answer: "
            s.gen("x")
            time.sleep(0.01)
            backend.role_end_generate(s)
        return s["x"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(run, range(16))) == [f"q{i}" for i in range(16)]


def test_speculative_mismatch_raises_after_bounded_tries(srv):
    backend = make(srv, spec_max_num_tries=2)
    srv.reply("totally different", "still different")
    s = chat_state(backend)
    backend.set_api_speculative(s, 8)
    with s.assistant():
        s += "Name: "
        s.gen("name", stop="\n")
        s += "\nAge: "
        s.gen("age")
        with pytest.raises(ProviderError, match="did not match"):
            backend.role_end_generate(s)
    assert srv.count == 2


# --------------------------------------------------------------------------------- concurrency


def test_one_backend_eight_threads(srv):
    backend = make(srv)
    srv.default_reply = lambda req: "echo " + last_user_text(req.json)
    srv.stream_delay = 0.002
    results = two_turn_programs_in_threads(backend, 24, first="question {}", then="follow {}", state=chat_state)
    assert results == [(f"echo question {i}", f"echo follow {i}") for i in range(24)]
    assert srv.count == 48
    assert backend.token_usage.completion_tokens == 24 * 2 * 3


def test_tiktoken_encoding_loads_offline_without_litellm_imported():
    """Offline, tiktoken cannot fetch its files: the backend uses litellm's bundled copies (when
    TIKTOKEN_CACHE_DIR is unset), as importing litellm would; checked in a fresh process with the
    network blocked and litellm never imported."""
    import importlib.util
    import os
    import subprocess

    if importlib.util.find_spec("litellm") is None:
        pytest.skip("litellm (the providers extra) is not installed: no bundled tiktoken files to fall back on")
    code = r"""
import socket, sys
def blocked(self, addr):
    raise OSError("network blocked")
socket.socket.connect = blocked
from providers.openai import OpenAI
b = OpenAI("gpt-3.5-turbo-instruct", api_key="sk-test", base_url="http://127.0.0.1:9/v1")
tok = b._require_tokenizer("select on completion models")
assert tok.decode(tok.encode("Paris")) == "Paris"
assert "litellm" not in sys.modules
print("ok", tok.name)
"""
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok cl100k_base")


def test_completion_model_refuses_images_instead_of_dropping_them(srv):
    backend = make(srv, model="gpt-3.5-turbo-instruct")
    s = ProgramState(backend)
    s += "Describe: "
    s.image(PNG_1X1)
    with pytest.raises(ValueError, match="completion model and cannot receive images"):
        s.gen("a")
    with pytest.raises(ValueError, match="cannot receive images"):
        list(s.gen_stream("b"))
    assert srv.count == 0  # refused before any request
