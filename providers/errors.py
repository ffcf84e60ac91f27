"""Errors raised by provider backends, and the redaction that keeps API keys out of them.

Every failure that comes from a provider (an HTTP status, a broken connection, a stream that stops
halfway) is a :class:`ProviderError`. The subclasses say what kind of failure it was, so callers can
catch exactly what they handle::

    ProviderError                      .provider, .status, .message, .retryable, .retry_after
    ├── APIConnectionError             could not talk to the server (refused, reset, DNS)   retryable
    │   └── APITimeoutError            no answer within the timeout                          retryable
    ├── APIStatusError                 the server answered with an error status
    │   ├── BadRequestError            400, 404, 422, other 4xx: fix the request            not retried
    │   │                              (408 Request Timeout, 409 Conflict: retryable)
    │   │   └── AuthenticationError    401, 403                                             not retried
    │   ├── RateLimitError             429 (``retry_after`` from the header)                retryable
    │   └── ServerError                5xx                                                  retryable
    ├── StreamInterruptedError         a stream failed after text was already yielded       not retried
    ├── UnsupportedParameterError      a sampling parameter the provider cannot honour      (also ValueError)
    ├── UnsupportedOperationError      an operation the backend/server lacks     (also NotImplementedError)
    └── LaunchError                    a local server died or never became ready

Bad arguments found *before* any network call are plain ``ValueError`` / ``TypeError`` naming the
argument; they are the caller's bug, not the provider's.

The retry rule (one rule, every backend)
----------------------------------------
A request is retried -- at most ``max_retries`` times, with exponential backoff and jitter, the
server's ``Retry-After`` / ``retry-after-ms`` honoured up to a cap -- when it failed with a connection
error, a **timeout**, or status 408, 409, 429 or 5xx (529 included). Nothing else is retried (other
4xx, errors raised before the request). A stream is retried only before its first delta; after it,
any failure is a :class:`StreamInterruptedError`. This is the rule the OpenAI and Anthropic SDKs
apply (those backends let their SDK retry, configured by ``max_retries``); RuntimeEndpoint, LiteLLM
and VertexAI apply it through :class:`~providers.retry.RetryPolicy` (``retryable`` below). So a
timeout costs up to ``(max_retries + 1) * timeout`` before :class:`APITimeoutError` reaches the
caller; pass ``max_retries=0`` (or ``RetryPolicy(max_retries=0)``) to fail on the first one.

Exception chains
----------------
An SDK's exception holds the request it failed on -- headers with the API key included. Every
:class:`ProviderError` made from one is raised ``from None``, and a ``ProviderError`` raised that way
has no ``__context__`` at all (not only a hidden one): the SDK's exception is never reachable from
ours (``err.__context__`` is None when ``err.__suppress_context__`` is set). A chain between our own
errors (``StreamInterruptedError`` from the ``ProviderError`` that interrupted the stream) stays.

How a backend raises
--------------------
Map the transport's failure with :func:`error_from_status` (HTTP status + server message) or raise
the connection classes directly, always passing ``provider=`` (e.g. ``"sglang"``, ``"openai"``).
Messages are redacted on construction: every secret registered with :func:`register_secret` and
anything that looks like a bearer token or ``sk-...`` key is replaced by ``[REDACTED]``. A backend
registers its API key once, in ``__init__``, so even a server that echoes the key back cannot leak it
through an exception. Keep keys in a :class:`Secret` so they do not show in ``repr`` either.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

__all__ = [
    "ProviderError",
    "APIConnectionError",
    "APITimeoutError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "RateLimitError",
    "ServerError",
    "StreamInterruptedError",
    "UnsupportedParameterError",
    "UnsupportedOperationError",
    "LaunchError",
    "error_from_status",
    "Secret",
    "register_secret",
    "redact",
]

REDACTED = "[REDACTED]"
_GET_CONTEXT = BaseException.__context__.__get__
_SET_CONTEXT = BaseException.__context__.__set__
_MAX_MESSAGE_CHARS = 2000

# Shapes that are secrets whatever their value: "Bearer <token>", OpenAI/Anthropic style keys,
# Google API keys and key=... query parameters.
_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"),
    re.compile(r"(?i)((?:\bapi[_-]?key|\bx-api-key|\baccess_token)[\"']?\s*[=:]\s*[\"']?)[A-Za-z0-9._~+/-]{8,}"),
    re.compile(r"([?&]key=)[^&\s\"']+"),
]

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember ``value`` so :func:`redact` (and so every :class:`ProviderError`) removes it.

    Values shorter than 4 characters are ignored: replacing them would mangle ordinary text.
    """
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with registered secrets, ``secrets`` and key-shaped substrings replaced."""
    with _secrets_lock:
        known = set(_secrets)
    known.update(s for s in secrets if s and len(s) >= 4)
    for secret in sorted(known, key=len, reverse=True):  # longest first: keys may share prefixes
        text = text.replace(secret, REDACTED)
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


class Secret:
    """A string that never shows itself in ``repr``/``str``; ``get()`` returns the value.

    Constructing one registers the value for redaction.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise TypeError("Secret needs a non-empty str")
        self._value = value
        register_secret(value)

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):  # never pickle the value by accident
        raise TypeError("Secret values cannot be pickled")


class ProviderError(Exception):
    """A failure reported by (or while talking to) a provider.

    Attributes: ``provider`` (e.g. ``"sglang"``), ``status`` (HTTP status or None), ``message`` (the
    server's message, redacted and truncated to 2000 characters), ``retryable`` (whether a retry may
    succeed), ``retry_after`` (seconds the server asked us to wait, or None).
    """

    retryable: bool = False

    # See "Exception chains" in the module docstring: Python records the exception being handled as
    # __context__ even under ``raise ... from None``; ours drop it, so an SDK exception (and the key in
    # its request headers) cannot be reached from a ProviderError.
    @property
    def __context__(self) -> BaseException | None:
        if self.__suppress_context__:
            _SET_CONTEXT(self, None)  # drop the reference too, not only the view of it
            return None
        return _GET_CONTEXT(self)

    @__context__.setter
    def __context__(self, value: BaseException | None) -> None:
        _SET_CONTEXT(self, value)

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        message = redact(str(message))
        if len(message) > _MAX_MESSAGE_CHARS:
            message = message[:_MAX_MESSAGE_CHARS] + "... [truncated]"
        self.message = message
        self.provider = provider
        self.status = status
        self.retry_after = retry_after
        if retryable is not None:
            self.retryable = retryable
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.provider or "provider"
        status = f" {self.status}" if self.status is not None else ""
        return f"{where}{status}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(provider={self.provider!r}, status={self.status!r}, "
            f"message={self.message!r})"
        )

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.provider, self.status, self.retry_after, self.retryable))


def _rebuild(cls, message, provider, status, retry_after, retryable):
    err = cls.__new__(cls)
    ProviderError.__init__(
        err, message, provider=provider, status=status, retry_after=retry_after, retryable=retryable
    )
    return err


class APIConnectionError(ProviderError):
    """The request did not get an answer: connection refused/reset, DNS failure, TLS failure."""

    retryable = True


class APITimeoutError(APIConnectionError):
    """The server did not answer (or stopped sending) within the timeout.

    Retried, as every SDK this package wraps does (see "The retry rule" in the module docstring).
    """

    retryable = True


class APIStatusError(ProviderError):
    """The server answered with an error status (``status`` is set)."""


class BadRequestError(APIStatusError):
    """A 4xx answer other than 429: the request itself is wrong; retrying cannot help."""


class AuthenticationError(BadRequestError):
    """401/403: missing or wrong API key (the key is never part of the message)."""


class RateLimitError(APIStatusError):
    """429: too many requests; ``retry_after`` holds the server's Retry-After, if any."""

    retryable = True


class ServerError(APIStatusError):
    """5xx: the server failed; a retry may succeed."""

    retryable = True


class StreamInterruptedError(ProviderError):
    """A stream failed after some text was already delivered.

    Never retried: restarting would repeat text the caller has already consumed. ``__cause__`` is the
    underlying failure.
    """

    retryable = False


class UnsupportedParameterError(ProviderError, ValueError):
    """A sampling parameter was set that this provider cannot honour (see ``sampling.py``)."""


class UnsupportedOperationError(ProviderError, NotImplementedError):
    """The backend (or the server behind it) does not offer this operation."""


class LaunchError(ProviderError):
    """A locally launched server exited or did not become ready; the message holds its log tail."""


def error_from_status(
    status: int,
    message: str,
    *,
    provider: str | None = None,
    retry_after: float | None = None,
) -> APIStatusError:
    """The :class:`APIStatusError` subclass for an HTTP ``status``."""
    if status == 429:
        cls: type[APIStatusError] = RateLimitError
    elif status in (401, 403):
        cls = AuthenticationError
    elif 400 <= status < 500:
        cls = BadRequestError
    elif status >= 500:
        cls = ServerError
    else:
        cls = APIStatusError
    # 408 Request Timeout and 409 Conflict (e.g. a lock held by a concurrent request) may pass on a retry.
    retryable = True if status in (408, 409) else None
    return cls(message, provider=provider, status=status, retry_after=retry_after, retryable=retryable)
