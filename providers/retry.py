"""Bounded retries with exponential backoff, jitter and ``Retry-After``.

One policy object, used the same way from synchronous and asyncio code:

* ``policy.call(fn)`` / ``await policy.acall(afn)`` -- call ``fn()`` until it returns, retrying on
  retryable :class:`ProviderError`;
* ``policy.stream(open_stream)`` / ``policy.astream(open_astream)`` -- iterate ``open_stream()``;
  failures *before the first item* are retried (nothing was delivered yet), failures after it raise
  :class:`StreamInterruptedError` (so no text is ever delivered twice);
* ``policy.delay(attempt, retry_after)`` -- the wait before retry ``attempt``.

The async twins make the same decisions (:meth:`RetryPolicy.should_retry`, :meth:`RetryPolicy.delay`)
and wait with ``asyncio.sleep``; cancelling the task during a wait or a stream cancels the attempt
(the stream is closed) and is never retried.

What is retried: only errors whose ``retryable`` is true -- the one rule of ``errors.py``: connection
failures, timeouts, 408, 409, 429 and 5xx. Other 4xx and anything that is not a
:class:`ProviderError` are raised at once. The wait before retry *k* (1-based) is
``initial_delay * multiplier**(k-1)``, capped at ``max_delay``, times a random factor in
``[1 - jitter, 1]`` (so concurrent clients spread out). When the server sent ``Retry-After``, that
wait is used instead -- unless it is longer than ``max_retry_after``, in which case the error is
raised at once with ``retry_after`` set, rather than blocking the caller for minutes.

SDK-backed providers should configure their SDK's own retries (``max_retries``) with these numbers
rather than wrap a second loop around them; they still keep :meth:`RetryPolicy.stream` semantics for
streams (:func:`guard_stream` alone, or :class:`~providers.sdk_errors.StreamGuard` around an SDK's
stream, when the SDK already retried the request).
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from .errors import ProviderError, StreamInterruptedError

__all__ = ["RetryPolicy", "parse_retry_after", "guard_stream", "aguard_stream"]

T = TypeVar("T")
log = logging.getLogger(__name__)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` (or ``retry-after-ms``-style) header value.

    Accepts delta-seconds (``"2"``, ``"0.5"``) and HTTP dates; returns None for a missing or
    unparsable value and never a negative number.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry (see the module docstring for the rules).

    ``max_retries`` counts retries after the first attempt: ``max_retries=2`` means at most 3 tries.
    ``RetryPolicy(max_retries=0)`` disables retrying.
    """

    max_retries: int = 2
    initial_delay: float = 0.5
    max_delay: float = 8.0
    multiplier: float = 2.0
    jitter: float = 0.25
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        for name in ("initial_delay", "max_delay", "max_retry_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter!r}")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        return base * (1.0 - self.jitter * random.random())

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether to make retry number ``attempt`` (1-based) after ``error``."""
        if not isinstance(error, ProviderError) or not error.retryable:
            return False
        if attempt > self.max_retries:
            return False
        if error.retry_after is not None and error.retry_after > self.max_retry_after:
            return False
        return True

    def _retry_wait(self, err: ProviderError, attempt: int, *, stream: bool) -> float | None:
        """Seconds to wait before retry ``attempt`` after ``err`` (logged), or None: ``err`` is not retried."""
        if not self.should_retry(err, attempt):
            return None
        wait = self.delay(attempt, err.retry_after)
        log.info("stream: %s; retry %d/%d in %.2fs" if stream else "%s; retry %d/%d in %.2fs",
                 err, attempt, self.max_retries, wait)
        return wait

    def call(self, fn: Callable[[], T], *, sleep: Callable[[float], None] = time.sleep) -> T:
        """``fn()``, retried on retryable :class:`ProviderError` per this policy."""
        attempt = 0
        while True:
            try:
                return fn()
            except ProviderError as err:
                attempt += 1
                wait = self._retry_wait(err, attempt, stream=False)
                if wait is None:
                    raise
                sleep(wait)

    def stream(
        self,
        open_stream: Callable[[], Iterator[T]],
        *,
        provider: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[T]:
        """Iterate ``open_stream()``, retrying only until the first item has been delivered.

        ``open_stream`` is called again for each attempt (it must start a fresh request). Once an item
        was yielded, a failure raises :class:`StreamInterruptedError` chained to the cause.
        """
        attempt = 0
        while True:
            stream = open_stream()
            try:
                first = next(stream)
            except StopIteration:
                return
            except ProviderError as err:
                _close(stream)
                attempt += 1
                wait = self._retry_wait(err, attempt, stream=True)
                if wait is None:
                    raise
                sleep(wait)
                continue
            except BaseException:
                _close(stream)
                raise
            break
        yield first
        yield from guard_stream(stream, provider=provider)


    async def acall(self, fn: Callable[[], Awaitable[T]], *,
                    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> T:
        """``await fn()``, retried on retryable :class:`ProviderError` per this policy (the async
        twin of :meth:`call`: the same decisions, an ``asyncio.sleep`` between attempts)."""
        attempt = 0
        while True:
            try:
                return await fn()
            except ProviderError as err:
                attempt += 1
                wait = self._retry_wait(err, attempt, stream=False)
                if wait is None:
                    raise
                await sleep(wait)

    async def astream(
        self,
        open_stream: Callable[[], AsyncIterator[T]],
        *,
        provider: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> AsyncIterator[T]:
        """The async twin of :meth:`stream`: ``open_stream()`` returns an async iterator; failures
        before its first item are retried, after it they raise :class:`StreamInterruptedError`."""
        attempt = 0
        while True:
            stream = open_stream()
            try:
                first = await stream.__anext__()
            except StopAsyncIteration:
                return
            except ProviderError as err:
                await _aclose(stream)
                attempt += 1
                wait = self._retry_wait(err, attempt, stream=True)
                if wait is None:
                    raise
                await sleep(wait)
                continue
            except BaseException:
                await _aclose(stream)
                raise
            break
        yield first
        async for item in aguard_stream(stream, provider=provider):
            yield item


def guard_stream(stream: Iterator[T], *, provider: str | None = None) -> Iterator[T]:
    """Re-raise a :class:`ProviderError` from an already-started stream as StreamInterruptedError.

    Use it on the part of a stream after its first item. The stream is closed on any exit.
    """
    try:
        for item in stream:
            yield item
    except StreamInterruptedError:
        raise
    except ProviderError as err:
        raise _interrupted(err, provider) from err
    finally:
        _close(stream)


async def aguard_stream(stream: AsyncIterator[T], *, provider: str | None = None) -> AsyncIterator[T]:
    """The async twin of :func:`guard_stream` (the stream is closed on any exit, cancellation included)."""
    try:
        async for item in stream:
            yield item
    except StreamInterruptedError:
        raise
    except ProviderError as err:
        raise _interrupted(err, provider) from err
    finally:
        await _aclose(stream)


def _interrupted(err: ProviderError, provider: str | None) -> StreamInterruptedError:
    return StreamInterruptedError(
        f"stream interrupted after partial output: {err.message}",
        provider=provider or err.provider,
        status=err.status,
    )


async def _aclose(stream: object) -> None:
    """Close an async stream: ``aclose()`` (async generators), else ``close()`` (awaited if async)."""
    close = getattr(stream, "aclose", None) or getattr(stream, "close", None)
    if close is not None:
        result = close()
        if inspect.isawaitable(result):
            await result


def _close(stream: object) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()
