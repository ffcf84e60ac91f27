"""errors.py (hierarchy, redaction) and retry.py (policy, Retry-After, stream guard)."""

from __future__ import annotations

import pickle

import pytest

from providers.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ProviderError,
    RateLimitError,
    Secret,
    ServerError,
    StreamInterruptedError,
    UnsupportedOperationError,
    UnsupportedParameterError,
    error_from_status,
    redact,
    register_secret,
)
from providers.retry import RetryPolicy, guard_stream, parse_retry_after


@pytest.mark.parametrize(
    "status, cls, retryable",
    [
        (400, BadRequestError, False),
        (401, AuthenticationError, False),
        (403, AuthenticationError, False),
        (404, BadRequestError, False),
        (422, BadRequestError, False),
        (429, RateLimitError, True),
        (500, ServerError, True),
        (503, ServerError, True),
    ],
)
def test_error_from_status_picks_class(status, cls, retryable):
    err = error_from_status(status, "boom", provider="sglang")
    assert type(err) is cls
    assert err.retryable is retryable
    assert err.status == status and err.provider == "sglang"
    assert str(err) == f"sglang {status}: boom"


def test_one_retry_rule_connection_timeout_408_409_429_5xx():
    assert APIConnectionError("x").retryable
    assert APITimeoutError("x").retryable  # as the OpenAI/Anthropic SDKs retry timeouts
    assert isinstance(APITimeoutError("x"), APIConnectionError)
    assert [s for s in range(400, 600) if error_from_status(s, "m").retryable] == [408, 409, 429, *range(500, 600)]


def test_special_errors_are_also_builtin_kinds():
    assert isinstance(UnsupportedParameterError("x"), ValueError)
    assert isinstance(UnsupportedOperationError("x"), NotImplementedError)


def test_registered_secret_is_redacted_everywhere():
    key = "my-very-secret-key-123"
    register_secret(key)
    err = BadRequestError(f"the server says: bad key {key}!", provider="x", status=400)
    assert key not in str(err) and key not in repr(err) and key not in err.message
    assert "[REDACTED]" in err.message


@pytest.mark.parametrize(
    "text, secret_part",
    [
        ("Authorization: Bearer abcdef123456", "abcdef123456"),
        ("invalid key sk-proj-ABCDEFGH12345678", "sk-proj-ABCDEFGH12345678"),
        ("url https://x/v1?key=AIzaSyA1234567890abcdefghij&alt=sse", "AIzaSyA1234567890abcdefghij"),
        ('{"api_key": "zzzzyyyyxxxx"}', "zzzzyyyyxxxx"),
    ],
)
def test_key_shaped_text_is_redacted(text, secret_part):
    out = redact(text)
    assert secret_part not in out
    assert "[REDACTED]" in out


def test_redact_leaves_ordinary_text():
    text = "monkey: banana split, max_tokens must be <= 4096"
    assert redact(text) == text


def test_long_messages_are_truncated():
    err = ServerError("x" * 5000)
    assert len(err.message) < 2100 and err.message.endswith("[truncated]")


def test_secret_hides_value():
    s = Secret("sk-live-0123456789abcdef")
    assert "0123456789" not in repr(s) and "0123456789" not in str(s) and "0123456789" not in f"{s}"
    assert s.get() == "sk-live-0123456789abcdef"
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        Secret("")


def test_provider_error_pickles():
    err = RateLimitError("slow down", provider="p", status=429, retry_after=1.5)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is RateLimitError
    assert (back.message, back.status, back.retry_after, back.retryable) == ("slow down", 429, 1.5, True)


# ------------------------------------------------------------------------------------ retry


def test_parse_retry_after():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


def test_policy_validation():
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=2)


def test_backoff_is_exponential_with_jitter_and_capped():
    p = RetryPolicy(initial_delay=1.0, multiplier=2.0, max_delay=5.0, jitter=0.25)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        for _ in range(20):
            d = p.delay(attempt)
            assert base * 0.75 <= d <= base
    assert p.delay(1, retry_after=3.0) == 3.0


def _flaky(errors, result="ok"):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return fn, calls


def test_call_retries_retryable_then_succeeds():
    sleeps = []
    fn, calls = _flaky([ServerError("a", status=500), RateLimitError("b", status=429, retry_after=0.7)])
    p = RetryPolicy(max_retries=2, initial_delay=0.1, jitter=0)
    assert p.call(fn, sleep=sleeps.append) == "ok"
    assert len(calls) == 3
    assert sleeps == [0.1, 0.7]  # backoff, then the server's Retry-After


def test_call_gives_up_after_max_retries():
    sleeps = []
    fn, calls = _flaky([ServerError("a", status=500)] * 5)
    with pytest.raises(ServerError):
        RetryPolicy(max_retries=2, initial_delay=0.01).call(fn, sleep=sleeps.append)
    assert len(calls) == 3 and len(sleeps) == 2


@pytest.mark.parametrize(
    "error",
    [BadRequestError("bad", status=400), AuthenticationError("key", status=401), ValueError("not ours")],
)
def test_call_never_retries_non_retryable(error):
    fn, calls = _flaky([error])
    with pytest.raises(type(error)):
        RetryPolicy(max_retries=3).call(fn, sleep=lambda s: None)
    assert len(calls) == 1


def test_retry_after_beyond_cap_raises_at_once():
    fn, calls = _flaky([RateLimitError("later", status=429, retry_after=600)])
    with pytest.raises(RateLimitError) as info:
        RetryPolicy(max_retries=3, max_retry_after=60).call(fn, sleep=lambda s: None)
    assert len(calls) == 1 and info.value.retry_after == 600


def test_stream_retries_before_first_item_only():
    opened = []

    def open_stream():
        opened.append(1)

        def gen():
            if len(opened) == 1:
                raise ServerError("not yet", status=503)
            yield "a"
            yield "b"
            raise APIConnectionError("reset")

        return gen()

    got = []
    with pytest.raises(StreamInterruptedError) as info:
        for item in RetryPolicy(max_retries=3, initial_delay=0).stream(open_stream, provider="p", sleep=lambda s: None):
            got.append(item)
    assert got == ["a", "b"]  # nothing repeated
    assert len(opened) == 2  # one retry before the first item, none after
    assert isinstance(info.value.__cause__, APIConnectionError)
    assert info.value.provider == "p"


def test_guard_stream_closes_source():
    closed = []

    def gen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    g = guard_stream(gen())
    assert next(g) == 1
    g.close()
    assert closed == [True]


def test_provider_error_is_base_of_all():
    for cls in (APIConnectionError, BadRequestError, StreamInterruptedError, UnsupportedParameterError):
        assert issubclass(cls, ProviderError)
