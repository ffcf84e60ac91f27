"""RuntimeEndpoint over real HTTP against the loopback SGLang server (wire_sglang)."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import logging
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from providers import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ProgramState,
    RateLimitError,
    RetryPolicy,
    RuntimeEndpoint,
    SamplingParams,
    ServerError,
    StreamInterruptedError,
    UnsupportedOperationError,
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from providers.sampling import DTYPE_REGEX

from .api_helpers import PNG_1X1, assert_no_sdk_exception_reachable
from .wire_http import Break, Fail, Stall, Truncate
from .wire_sglang import SGLangServer, StreamError

FAST = RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.05)
KEY = "sk-loopback-SECRET-0123456789abcdef"


@pytest.fixture
def server():
    with SGLangServer(lifetime=60) as srv:
        yield srv


@pytest.fixture
def endpoint(server):
    ep = RuntimeEndpoint(server.url, retry=FAST, timeout=10)
    yield ep
    ep.shutdown()


def generate_requests(server):
    return [r.json for r in server.requests if r.path == "/generate"]


def state_with(endpoint, text):
    s = ProgramState(endpoint)
    s += text
    return s


# ----------------------------------------------------------------------------- construction


def test_model_info_and_template(server, endpoint):
    assert endpoint.get_model_name() == "loopback/llama-3-8b-instruct"
    assert endpoint.get_chat_template().name == "llama-3-instruct"
    assert server.requests[0].method == "GET" and server.requests[0].path == "/get_model_info"
    assert repr(endpoint) == f"RuntimeEndpoint(base_url={server.url!r}, model='loopback/llama-3-8b-instruct')"
    ep = RuntimeEndpoint(server.url, chat_template_name="chatml")
    assert ep.get_chat_template().name == "chatml"
    ep.shutdown()


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"base_url": "localhost:3000"}, ValueError, "base_url"),
        ({"base_url": "http://x", "timeout": 0}, ValueError, "timeout"),
        ({"base_url": "http://x", "timeout": "5"}, TypeError, "timeout"),
        ({"base_url": "http://x", "api_key": ""}, ValueError, "api_key"),
        ({"base_url": "http://x", "chat_template_name": "nope"}, ValueError, "unknown chat template"),
        ({"base_url": "https://x", "verify": "/no/such/ca.pem"}, ValueError, "verify"),
    ],
)
def test_bad_arguments_fail_before_network(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RuntimeEndpoint(**kwargs)


def test_unreachable_server_raises_connection_error_after_retries():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(APIConnectionError) as info:
        RuntimeEndpoint(f"http://127.0.0.1:{port}", retry=FAST)
    assert info.value.provider == "sglang" and time.monotonic() - t0 < 5


# ------------------------------------------------------------------------------- generate


def test_generate_payload_and_meta(server, endpoint):
    s = state_with(endpoint, "Repeat: Paris is lovely\n")
    text, meta = endpoint.generate(s, SamplingParams(max_new_tokens=16, temperature=0.0, stop=["zzz"]))
    assert text == "Paris is lovely"
    assert generate_requests(server)[-1] == {
        "text": "Repeat: Paris is lovely\n",
        "sampling_params": {"max_new_tokens": 16, "temperature": 0.0, "stop": ["zzz"]},
    }
    assert meta["prompt_tokens"] == 5 and meta["completion_tokens"] == 3  # "Repeat:" " Paris" " is" " lovely" "\n"
    assert meta["finish_reason"] == "stop" and meta["finish_reason_raw"] == {"type": "stop", "matched": None}
    assert meta["model"] == "loopback/llama-3-8b-instruct" and meta["provider"] == "sglang"
    assert meta["latency"] > 0 and isinstance(meta["id"], str)


def test_stop_and_length(endpoint):
    s = state_with(endpoint, "Go:")
    text, meta = endpoint.generate(s, SamplingParams(stop=["fox"]))
    assert text == "The quick brown " and meta["finish_reason"] == "stop"
    assert meta["finish_reason_raw"]["matched"] == "fox"
    text, meta = endpoint.generate(s, SamplingParams(max_new_tokens=2))
    assert text == "The quick" and meta["finish_reason"] == "length" and meta["completion_tokens"] == 2


@pytest.mark.parametrize("dtype, out", [(int, "42"), (float, "3.14"), (bool, "True"), (str, '"hello"')])
def test_dtype_becomes_regex(server, endpoint, dtype, out):
    text, _ = endpoint.generate(state_with(endpoint, "x="), SamplingParams(dtype=dtype))
    assert text == out
    assert generate_requests(server)[-1]["sampling_params"]["regex"] == DTYPE_REGEX[dtype.__name__]


def test_json_schema_passes_through(server, endpoint):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    text, _ = endpoint.generate(state_with(endpoint, "Person:"), SamplingParams(json_schema=schema))
    assert json.loads(text) == {"name": "x", "age": 1}
    assert json.loads(generate_requests(server)[-1]["sampling_params"]["json_schema"]) == schema


def test_n_returns_lists(endpoint):
    texts, meta = endpoint.generate(state_with(endpoint, "Repeat: hi\n"), SamplingParams(n=3))
    assert texts == ["hi", "hi", "hi"]
    assert len(meta["choices"]) == 3 and meta["completion_tokens"] == 3 and meta["prompt_tokens"] == 3
    assert meta["finish_reason"] == "stop"


def test_logprob_fields_pass_through(server, endpoint):
    params = SamplingParams(return_logprob=True, logprob_start_len=0, top_logprobs_num=2,
                            return_text_in_logprobs=True, max_new_tokens=1)
    _, meta = endpoint.generate(state_with(endpoint, "Hi there"), params)
    body = generate_requests(server)[-1]
    assert (body["return_logprob"], body["logprob_start_len"], body["top_logprobs_num"]) == (True, 0, 2)
    assert meta["input_token_logprobs"][0] == [None, meta["input_token_logprobs"][0][1], "Hi"]
    assert meta["output_token_logprobs"][0][2] == "The"


def test_images_single_and_several(server, endpoint):
    s = ProgramState(endpoint)
    with s.user():
        s.image(b"\x89PNG\r\n\x1a\nAAAA")
        s += "What is it?"
    endpoint.generate(s, SamplingParams(max_new_tokens=1))
    one = base64.b64encode(b"\x89PNG\r\n\x1a\nAAAA").decode()
    assert generate_requests(server)[-1]["image_data"] == one
    with s.user():
        s.image(b"\xff\xd8\xffBBBB")
    endpoint.generate(s, SamplingParams(max_new_tokens=1))
    assert generate_requests(server)[-1]["image_data"] == [one, base64.b64encode(b"\xff\xd8\xffBBBB").decode()]
    assert s.text_.count("<|image|>") == 2


# -------------------------------------------------------------------------------- caching


def test_cache_prefix_commit_fill_image_and_flush(server, endpoint):
    endpoint.cache_prefix("Long shared system prompt.")
    assert generate_requests(server)[-1] == {
        "text": "Long shared system prompt.", "sampling_params": {"max_new_tokens": 0}
    }
    s = state_with(endpoint, "Long shared system prompt. Repeat: ok")
    _, meta = endpoint.generate(s, SamplingParams())
    assert meta["cached_tokens"] == 4  # the cached prefix was found
    endpoint.commit_lazy_operations(s)
    assert generate_requests(server)[-1] == {"text": s.text_, "sampling_params": {"max_new_tokens": 0}}
    before = len(server.requests)
    endpoint.fill_image(s)  # no image: nothing to send
    assert len(server.requests) == before
    s.image(PNG_1X1)
    endpoint.fill_image(s)
    assert generate_requests(server)[-1]["image_data"] == base64.b64encode(PNG_1X1).decode()
    endpoint.flush_cache()
    assert server.requests[-1].method == "POST" and server.requests[-1].path == "/flush_cache"
    _, meta = endpoint.generate(state_with(endpoint, "Long shared system prompt. Again"), SamplingParams())
    assert meta["cached_tokens"] == 0


def test_server_info_and_profiling(server, endpoint):
    assert endpoint.get_server_info()["version"] == "loopback"
    endpoint.start_profile()
    assert server.profiling and server.requests[-1].method == "POST"
    server.profile_methods = {"GET"}  # an older server: POST gets 405, we fall back to GET
    endpoint.stop_profile()
    assert not server.profiling
    assert [(r.method, r.path) for r in server.requests[-2:]] == [("POST", "/stop_profile"), ("GET", "/stop_profile")]


def test_concatenate_and_append(server, endpoint):
    endpoint.concatenate_and_append(["a", "b"], "c")
    assert server.concatenated == [{"src_rids": ["a", "b"], "dst_rid": "c"}]
    with pytest.raises(ValueError, match="src_rids"):
        endpoint.concatenate_and_append("ab", "c")
    server.support_concat = False
    with pytest.raises(UnsupportedOperationError, match="concate_and_append_request") as info:
        endpoint.concatenate_and_append(["a"], "c")
    assert isinstance(info.value, NotImplementedError) and info.value.status == 404


# ------------------------------------------------------------------------------ streaming


def test_stream_yields_deltas_once(server, endpoint):
    s = state_with(endpoint, "Repeat: one two three four\n")
    items = list(endpoint.generate_stream(s, SamplingParams()))
    deltas = [d for d, _ in items]
    assert deltas == ["one", " two", " three", " four"]
    assert items[-1][1]["finish_reason"] == "stop" and items[-1][1]["completion_tokens"] == 4
    assert all(m["finish_reason"] is None for _, m in items[:-1])
    assert generate_requests(server)[-1]["stream"] is True


def test_stream_final_meta_without_new_text(endpoint):
    items = list(endpoint.generate_stream(state_with(endpoint, "x"), SamplingParams(max_new_tokens=0)))
    assert items == [("", items[0][1])] and items[0][1]["finish_reason"] == "length"


def test_stream_retried_before_first_delta(server, endpoint):
    server.script(Fail(503), StreamError(after=0))  # an HTTP 503, then an error event before any text
    deltas = [d for d, _ in endpoint.generate_stream(state_with(endpoint, "Repeat: a b\n"), SamplingParams())]
    assert deltas == ["a", " b"]
    assert len(generate_requests(server)) == 3


@pytest.mark.parametrize("fault", [StreamError(after=2), Break(after=2), Truncate(after=2)])
def test_stream_failure_after_text_raises_without_repeating(server, endpoint, fault):
    server.script(fault)
    got = []
    with pytest.raises(StreamInterruptedError) as info:
        for delta, _ in endpoint.generate_stream(state_with(endpoint, "Repeat: a b c d\n"), SamplingParams()):
            got.append(delta)
    assert got == ["a", " b"]
    assert len(generate_requests(server)) == 1  # never restarted
    assert info.value.provider == "sglang" and info.value.__cause__ is not None


def test_stream_rejects_non_cumulative_text(server, endpoint):
    def respond(h, req):
        server.stream(h, [b'data: {"text": "ab", "meta_info": {}}\n\n', b'data: {"text": "xy", "meta_info": {}}\n\n',
                          b"data: [DONE]\n\n"])

    server.script(respond)
    with pytest.raises(StreamInterruptedError, match="not cumulative"):
        list(endpoint.generate_stream(state_with(endpoint, "p"), SamplingParams()))


def test_stream_http_error_status(server, endpoint):
    server.script(Fail(400, message="prompt too long"))
    with pytest.raises(BadRequestError, match="prompt too long"):
        list(endpoint.generate_stream(state_with(endpoint, "p"), SamplingParams()))
    assert len(generate_requests(server)) == 1


# --------------------------------------------------------------------------- errors/retries


def test_no_retry_on_400(server, endpoint):
    server.script(Fail(400, message="bad sampling params"))
    with pytest.raises(BadRequestError) as info:
        endpoint.generate(state_with(endpoint, "p"), SamplingParams())
    assert info.value.status == 400 and info.value.message == "bad sampling params"
    assert len(generate_requests(server)) == 1


def test_retry_on_500_until_exhausted(server, endpoint):
    server.script(Fail(500), Fail(502), Fail(500))
    with pytest.raises(ServerError):
        endpoint.generate(state_with(endpoint, "p"), SamplingParams())
    assert len(generate_requests(server)) == 3  # 1 try + 2 retries


def test_retry_on_429_honours_retry_after(server, endpoint):
    server.script(Fail(429, headers={"Retry-After": "0.3"}))
    t0 = time.monotonic()
    text, _ = endpoint.generate(state_with(endpoint, "Repeat: ok\n"), SamplingParams())
    assert text == "ok" and time.monotonic() - t0 >= 0.3
    assert len(generate_requests(server)) == 2


def test_long_retry_after_is_not_waited(server, endpoint):
    server.script(Fail(429, headers={"Retry-After": "3600"}))
    t0 = time.monotonic()
    with pytest.raises(RateLimitError) as info:
        endpoint.generate(state_with(endpoint, "p"), SamplingParams())
    assert info.value.retry_after == 3600 and time.monotonic() - t0 < 2


def test_timeout(server):
    ep = RuntimeEndpoint(server.url, timeout=0.3, retry=RetryPolicy(max_retries=0))
    server.script(Stall(3))
    t0 = time.monotonic()
    with pytest.raises(APITimeoutError):
        ep.generate(state_with(ep, "p"), SamplingParams())
    assert time.monotonic() - t0 < 2
    assert len(generate_requests(server)) == 1
    ep.shutdown()


def test_timeout_is_retried(server):
    # The one retry rule (errors.py): a timeout is retried, as the OpenAI/Anthropic SDKs do.
    ep = RuntimeEndpoint(server.url, timeout=0.3, retry=FAST)
    server.script(Stall(3))
    text, _ = ep.generate(state_with(ep, "p"), SamplingParams(max_new_tokens=4))
    assert text and len(generate_requests(server)) == 2
    ep.shutdown()


def test_stream_read_timeout_between_chunks(server):
    ep = RuntimeEndpoint(server.url, timeout=0.3, retry=FAST)
    server.stream_delay = 1.0
    with pytest.raises((APITimeoutError, StreamInterruptedError)):
        list(ep.generate_stream(state_with(ep, "Repeat: a b c\n"), SamplingParams()))
    ep.shutdown()


def test_redirects_are_not_followed(server, endpoint):
    server.script(Fail(307, body="", headers={"Location": "http://elsewhere.example/generate"}))
    with pytest.raises(APIStatusError, match="redirect to 'http://elsewhere.example/generate'") as info:
        endpoint.generate(state_with(endpoint, "p"), SamplingParams())
    assert info.value.status == 307 and not info.value.retryable


def test_shutdown_is_idempotent_and_final(endpoint):
    endpoint.shutdown()
    endpoint.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        endpoint.get_server_info()


# ------------------------------------------------------------------------------------ auth


def test_api_key_is_sent_and_never_leaks(caplog):
    caplog.set_level(logging.DEBUG)
    with SGLangServer(api_key=KEY, lifetime=60) as srv:
        ep = RuntimeEndpoint(srv.url, api_key=KEY, retry=FAST)
        assert srv.requests[0].header("authorization") == f"Bearer {KEY}"
        text, _ = ep.generate(state_with(ep, "Repeat: in\n"), SamplingParams())
        assert text == "in"
        list(ep.generate_stream(state_with(ep, "Repeat: streamed\n"), SamplingParams()))
        assert srv.requests[-1].header("authorization") == f"Bearer {KEY}"
        # a server that echoes the key in its error message
        srv.script(*[Fail(500, message=f"backend exploded, key was {KEY}")] * 3)
        with pytest.raises(ServerError) as info:
            ep.generate(state_with(ep, "p"), SamplingParams())
        texts = [str(info.value), repr(info.value), info.value.message, repr(ep), caplog.text]
        assert all(KEY not in t for t in texts)
        assert "[REDACTED]" in info.value.message
        ep.shutdown()

        with pytest.raises(AuthenticationError) as info:
            RuntimeEndpoint(srv.url, api_key="sk-wrong-key-0000000000", retry=FAST)
        assert info.value.status == 401 and "sk-wrong-key-0000000000" not in str(info.value)
        with pytest.raises(AuthenticationError):
            RuntimeEndpoint(srv.url, retry=FAST)
        gone = RuntimeEndpoint(srv.url, api_key=KEY, retry=RetryPolicy(max_retries=0))
    with pytest.raises(APIConnectionError) as info:  # the server is gone: httpx's error holds the request
        gone.generate(state_with(gone, "p"), SamplingParams())
    assert_no_sdk_exception_reachable(info.value, KEY)
    assert KEY not in caplog.text


# ------------------------------------------------------------------------------------- TLS


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "loopback")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def test_verify_is_honoured_for_plain_and_streaming(tmp_path):
    pytest.importorskip("cryptography")
    cert, key = _self_signed(tmp_path)
    srv = SGLangServer(lifetime=60)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv._httpd.socket = ctx.wrap_socket(srv._httpd.socket, server_side=True)
    url = srv.url.replace("http://", "https://")
    with srv:
        with pytest.raises(APIConnectionError):  # self-signed: the system CAs reject it
            RuntimeEndpoint(url, retry=RetryPolicy(max_retries=0))
        ep = RuntimeEndpoint(url, verify=cert, retry=FAST)
        assert ep.generate(state_with(ep, "Repeat: secure\n"), SamplingParams())[0] == "secure"
        assert "".join(d for d, _ in ep.generate_stream(state_with(ep, "Repeat: tls stream\n"), SamplingParams())) == "tls stream"
        ep.shutdown()
        insecure = RuntimeEndpoint(url, verify=False, retry=FAST)
        assert insecure.generate(state_with(insecure, "Repeat: ok\n"), SamplingParams())[0] == "ok"
        insecure.shutdown()


# ---------------------------------------------------------------------------------- select

PROMPT = "Animals: elephant. Pick one:"
CHOICES = [" big cat", " grey elephant", " a zebra", " ox ox"]
# Hand-computed with the loopback model (wire_sglang docstring): logprob -0.25 for a word already
# in the context, else -0.25 - 0.5 * len(token.strip()); the first token of an input has None.
#   " big cat":       -1.75, -1.75  mean -1.75 | uncond [None, -1.75] -> diffs -1.75, 0    -> -0.875
#   " grey elephant": -2.25, -0.25  mean -1.25 | uncond [None, -4.25] -> diffs -2.25, 4.0  ->  0.875
#   " a zebra":       -0.75, -2.75  mean -1.75 | uncond [None, -2.75] -> diffs -0.75, 0    -> -0.375
#   " ox ox":         -1.25, -0.25  mean -0.75 | uncond [None, -0.25] -> diffs -1.25, 0    -> -0.625
# token_length_normalized -> " ox ox"; greedy (first column -1.75, -2.25, -0.75, -1.25) -> " a zebra";
# unconditional_likelihood_normalized -> " grey elephant".


def test_select_token_length_normalized(server, endpoint):
    d = endpoint.select(state_with(endpoint, PROMPT), CHOICES, 0.0, token_length_normalized)
    assert d.decision == " ox ox"
    assert d.meta_info["normalized_prompt_logprobs"] == [-1.75, -1.25, -1.75, -0.75]
    assert d.meta_info["method"] == "token_length_normalized"
    assert [e[2] for e in d.meta_info["input_token_logprobs"][0]] == [" big", " cat"]
    prefix, batch = generate_requests(server)[-2:]
    assert prefix == {"text": PROMPT, "sampling_params": {"max_new_tokens": 0}}
    assert batch["text"] == [PROMPT + c for c in CHOICES]
    assert batch["logprob_start_len"] == 3  # prompt has 4 tokens: start at the last one
    assert batch["return_logprob"] is True and batch["sampling_params"]["max_new_tokens"] == 0


def test_select_greedy(endpoint):
    d = endpoint.select(state_with(endpoint, PROMPT), CHOICES, 0.0, greedy_token_selection)
    assert d.decision == " a zebra"
    assert d.meta_info["greedy_logprob_matrix"][2] == [-0.75, -2.75]


def test_select_unconditional(server, endpoint):
    d = endpoint.select(state_with(endpoint, PROMPT), CHOICES, 0.0, unconditional_likelihood_normalized)
    assert d.decision == " grey elephant"
    assert d.meta_info["normalized_unconditional_prompt_logprobs"] == [-0.875, 0.875, -0.375, -0.625]
    uncond = generate_requests(server)[-1]
    assert "text" not in uncond and len(uncond["input_ids"]) == 4 and len(uncond["input_ids"][0]) == 2
    assert uncond["logprob_start_len"] == 0


def test_select_keeps_boundary_token_that_merged(endpoint):
    # "Answer: " ends in a whitespace token that merges with the choice: "Answer: yes" -> " yes".
    d = endpoint.select(state_with(endpoint, "Answer: "), ["yes", "no"], 0.0, token_length_normalized)
    assert [e[2] for e in d.meta_info["input_token_logprobs"][0]] == [" yes"]
    assert d.decision == "no"  # -1.25 beats -1.75


def test_select_rejects_temperature(endpoint):
    with pytest.raises(ValueError, match="temperature"):
        endpoint.select(state_with(endpoint, "x"), ["a"], 0.7, token_length_normalized)


def test_select_with_images_sends_them_per_choice(server, endpoint):
    s = ProgramState(endpoint)
    s.image(PNG_1X1)
    s += "Is it a cat?"
    endpoint.select(s, [" yes", " no"], 0.0, token_length_normalized)
    batch = generate_requests(server)[-1]
    assert batch["image_data"] == [base64.b64encode(PNG_1X1).decode()] * 2


# ----------------------------------------------------------------------------- concurrency


def test_one_endpoint_many_threads(server, endpoint):
    def program(i):
        s = ProgramState(endpoint)
        s.user(f"Repeat: answer {i}")
        with s.assistant():
            s.gen("a", max_new_tokens=8)
        streamed = "".join(s.gen_stream("b", max_new_tokens=8))
        return s["a"], streamed

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(program, range(24)))
    assert results == [(f"answer {i}", f"answer {i}") for i in range(24)]


def test_a_frontends_own_state_object_works(endpoint):
    # Backends rely only on the documented StateView surface, not on ProgramState itself.
    import types

    own = types.SimpleNamespace(
        text_="Repeat: duck typed\n", messages_=[], images_=[], cur_images=[], cur_role=None,
        cur_role_begin_pos=0, variables={}, meta_info={}, sid="mine", backend_data={},
    )
    assert endpoint.generate(own, SamplingParams())[0] == "duck typed"
    assert "".join(d for d, _ in endpoint.generate_stream(own, SamplingParams())) == "duck typed"
    assert endpoint.select(own, [" duck", " goose"], 0.0, token_length_normalized).decision == " duck"


def test_token_usage_sums_every_generate_request(server, endpoint):
    # RuntimeEndpoint had no token_usage, unlike every API backend.
    assert endpoint.token_usage.snapshot() == {"prompt_tokens": 0, "completion_tokens": 0}
    _, meta = endpoint.generate(state_with(endpoint, "Repeat: a b\n"), SamplingParams())
    expected = [meta["prompt_tokens"], meta["completion_tokens"]]
    assert expected[0] > 0 and expected[1] > 0
    assert endpoint.token_usage.snapshot() == {"prompt_tokens": expected[0], "completion_tokens": expected[1]}
    stream = list(endpoint.generate_stream(state_with(endpoint, "Repeat: c d e\n"), SamplingParams()))
    final = stream[-1][1]
    expected = [expected[0] + final["prompt_tokens"], expected[1] + final["completion_tokens"]]
    assert endpoint.token_usage.snapshot() == {"prompt_tokens": expected[0], "completion_tokens": expected[1]}
    before = len(generate_requests(server))
    endpoint.select(state_with(endpoint, "Pick:"), [" x", " yy"], 0.0, token_length_normalized)
    assert len(generate_requests(server)) - before == 2  # the prefix, then one batch scoring both choices
    assert endpoint.token_usage.prompt_tokens > expected[0]  # select's prompts count too
