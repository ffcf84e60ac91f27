"""Plans (one flow, run sync or async) and the async twins of RetryPolicy: the same decisions."""

from __future__ import annotations

import asyncio

import pytest

from providers import (
    APITimeoutError,
    BadRequestError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    StreamInterruptedError,
)
from providers.plan import Call, arun, async_name, call, run

pytestmark = pytest.mark.timeout(30)


def test_async_name():
    assert async_name("_complete") == "_acomplete"
    assert async_name("request") == "arequest"
    assert async_name("__x") == "__ax"


class Owner:
    """Answers requests sync and async the same way, and records which path answered."""

    def __init__(self):
        self.log = []

    def _ask(self, x, *, times=1):
        self.log.append(("sync", x))
        if x == "boom":
            raise BadRequestError("no", provider="t", status=400)
        return x * times

    async def _aask(self, x, *, times=1):
        await asyncio.sleep(0)
        self.log.append(("async", x))
        if x == "boom":
            raise BadRequestError("no", provider="t", status=400)
        return x * times


def plan(first):
    a = yield call("_ask", first, times=2)
    try:
        b = yield call("_ask", "boom")
    except BadRequestError:
        b = "caught"
    c = yield Call("_ask", ("z",))
    return a, b, c


def test_a_plan_runs_the_same_both_ways():
    sync, asyn = Owner(), Owner()
    assert run(sync, plan("q")) == ("qq", "caught", "z")
    assert asyncio.run(arun(asyn, plan("q"))) == ("qq", "caught", "z")
    assert [x for _, x in sync.log] == [x for _, x in asyn.log] == ["q", "boom", "z"]
    assert {p for p, _ in sync.log} == {"sync"} and {p for p, _ in asyn.log} == {"async"}


def test_an_uncaught_request_error_propagates_unchanged():
    def failing():
        yield call("_ask", "boom")
        raise AssertionError("not reached")

    with pytest.raises(BadRequestError):
        run(Owner(), failing())
    with pytest.raises(BadRequestError):
        asyncio.run(arun(Owner(), failing()))


# ---------------------------------------------------------------------------------- acall


def _recorder():
    waits = []

    async def sleep(seconds):
        waits.append(seconds)

    return waits, sleep


def test_acall_retries_like_call():
    policy = RetryPolicy(max_retries=2, initial_delay=0.5, jitter=0.0)
    errors = [RateLimitError("slow down", provider="t", status=429, retry_after=0.25), ServerError("oops", provider="t", status=503)]

    async def flaky():
        if errors:
            raise errors.pop(0)
        return "ok"

    waits, sleep = _recorder()
    assert asyncio.run(policy.acall(flaky, sleep=sleep)) == "ok"
    assert waits == [0.25, 1.0]  # Retry-After first, then backoff for retry 2


@pytest.mark.parametrize("err", [BadRequestError("bad", provider="t", status=400),
                                 APITimeoutError("slow", provider="t"),
                                 ServerError("down", provider="t", status=503),
                                 RateLimitError("later", provider="t", status=429, retry_after=3600)])
def test_acall_decides_like_call(err):
    """The same decision function: as many attempts and the same waits as the sync twin."""
    policy = RetryPolicy(max_retries=2, jitter=0.0)
    sync_calls, async_calls, sync_waits = [], [], []

    def fn():
        sync_calls.append(1)
        raise err

    async def afn():
        async_calls.append(1)
        raise err

    with pytest.raises(type(err)):
        policy.call(fn, sleep=sync_waits.append)
    waits, sleep = _recorder()
    with pytest.raises(type(err)):
        asyncio.run(policy.acall(afn, sleep=sleep))
    assert len(async_calls) == len(sync_calls) and waits == sync_waits
    if isinstance(err, BadRequestError) or err.retry_after == 3600:
        assert async_calls == [1] and waits == []  # a 400, or a Retry-After beyond max_retry_after


def test_acall_gives_up_after_max_retries():
    calls = []

    async def fn():
        calls.append(1)
        raise ServerError("down", provider="t", status=500)

    waits, sleep = _recorder()
    with pytest.raises(ServerError):
        asyncio.run(RetryPolicy(max_retries=2).acall(fn, sleep=sleep))
    assert len(calls) == 3 and len(waits) == 2


# --------------------------------------------------------------------------------- astream


class Stream:
    """An async stream that yields ``items`` then raises ``fail`` (if any); records aclose."""

    def __init__(self, items, fail=None, log=None):
        self.items, self.fail, self.log = list(items), fail, log if log is not None else []

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.items:
            return self.items.pop(0)
        if self.fail is not None:
            raise self.fail
        raise StopAsyncIteration

    async def aclose(self):
        self.log.append("closed")


def test_astream_retries_before_the_first_item_only():
    log = []
    attempts = [Stream([], ServerError("503", provider="t", status=503), log), Stream(["a", "b"], None, log)]
    waits, sleep = _recorder()

    async def main():
        return [x async for x in RetryPolicy(max_retries=2).astream(lambda: attempts.pop(0), sleep=sleep)]

    assert asyncio.run(main()) == ["a", "b"]
    assert len(waits) == 1 and log == ["closed", "closed"]


def test_astream_after_the_first_item_is_an_interruption_never_a_restart():
    log = []
    opened = []

    def open_stream():
        opened.append(1)
        return Stream(["a"], ServerError("died", provider="t", status=500), log)

    async def main():
        got = []
        with pytest.raises(StreamInterruptedError) as info:
            async for x in RetryPolicy(max_retries=5).astream(open_stream, provider="t"):
                got.append(x)
        return got, info.value

    got, err = asyncio.run(main())
    assert got == ["a"] and opened == [1] and log == ["closed"]
    assert err.provider == "t" and err.status == 500 and "partial output" in str(err)


def test_astream_closes_the_stream_when_the_consumer_is_cancelled():
    log = []
    started = asyncio.Event

    class Slow(Stream):
        async def __anext__(self):
            if self.items:
                return self.items.pop(0)
            await asyncio.sleep(10)

    async def main():
        first = started()

        async def consume():
            async for _ in RetryPolicy().astream(lambda: Slow(["a"], None, log)):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert log == ["closed"]
