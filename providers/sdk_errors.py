"""What an SDK raises, as this package's errors: a missing SDK and every SDK/transport exception.

The four SDK-backed backends (OpenAI/Azure, Anthropic, LiteLLM, Vertex AI) never let an SDK's own
exception reach the caller:

* :func:`import_sdk` -- the lazy SDK import; a missing SDK raises ``ImportError`` naming the extra
  that installs it (:data:`INSTALL_HINT`);
* :class:`ErrorMap` -- how one SDK's exceptions read (the generic rules plus the SDK's quirks, which
  the provider module declares: see ``ERRORS`` in ``anthropic.py`` / ``litellm.py``);
* :func:`wrap_error` / :func:`translating` -- any SDK or transport exception becomes the matching
  :class:`~providers.errors.ProviderError`: the status (HTTP status, or the status an error event
  inside a 200 stream stands for, e.g. Anthropic's ``overloaded_error`` -> 529), the server's message
  (redacted), ``retry_after`` from ``retry-after-ms`` / ``Retry-After`` (:func:`retry_after_of`);
  timeouts -> :class:`~providers.errors.APITimeoutError`, connection failures ->
  :class:`~providers.errors.APIConnectionError`. ``sdk_error`` keeps the SDK exception's class
  name. It is raised ``from None`` so the SDK's own (unredacted) text is not chained into tracebacks;
* :func:`interrupted` -- the :class:`~providers.errors.StreamInterruptedError` for a stream that
  failed after it had delivered text;
* :class:`StreamGuard` -- both rules around a stream a backend iterates by hand (its SDK already
  retried the request): before any text an exception is the mapped error, after text it is an
  interruption, never a restart.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from types import ModuleType

from .errors import (
    APIConnectionError,
    APITimeoutError,
    ProviderError,
    StreamInterruptedError,
    error_from_status,
    redact,
)
from .retry import parse_retry_after

__all__ = ["INSTALL_HINT", "ErrorMap", "GENERIC", "import_sdk", "wrap_error", "translating", "interrupted",
           "StreamGuard", "retry_after_of"]

#: How to install the optional dependencies of the SDK-backed backends.
INSTALL_HINT = "pip install 'kernelstack[providers]'"


def import_sdk(module: str, backend: str) -> ModuleType:
    """Import ``module`` (an SDK) or raise ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{backend} needs the optional dependency {module!r}; install it with: {INSTALL_HINT}",
            name=err.name or module,
        ) from err


class ErrorMap:
    """How one SDK's exceptions read: where the response headers are, which in-stream error types
    stand for which status. The generic rules (status attributes, ``body["error"]["message"]``,
    timeouts before statuses, connection failures) apply to every SDK; a provider module passes its
    own instance (with its quirks) to :func:`wrap_error` / :func:`translating` / :class:`StreamGuard`.

    ``header_attrs`` -- attributes of the exception that may hold the response headers, tried after
    ``exc.response.headers`` (litellm keeps the real ones in ``litellm_response_headers``);
    ``stream_error_statuses`` -- ``body["error"]["type"]`` of an error that arrives inside a 200
    stream, as the HTTP status it stands for (Anthropic's ``overloaded_error`` -> 529).
    """

    def __init__(self, *, header_attrs: Sequence[str] = (),
                 stream_error_statuses: Mapping[str, int] | None = None) -> None:
        self.header_attrs = tuple(header_attrs)
        self.stream_error_statuses = dict(stream_error_statuses or {})

    def headers_of(self, exc: BaseException):
        candidates = [getattr(getattr(exc, "response", None), "headers", None)]
        candidates += [getattr(exc, attr, None) for attr in self.header_attrs]
        for headers in candidates:
            if headers:
                return headers
        return None

    def retry_after_of(self, exc: BaseException) -> float | None:
        """Seconds from ``retry-after-ms`` / ``Retry-After`` on the exception's response, if any."""
        headers = self.headers_of(exc)
        if not headers:
            return None
        try:
            ms = headers.get("retry-after-ms")
            if ms is not None:
                value = parse_retry_after(str(ms))
                if value is not None:
                    return value / 1000.0
            return parse_retry_after(headers.get("retry-after"))
        except Exception:  # noqa: BLE001 - odd header containers never break error mapping
            return None

    def status_of(self, exc: BaseException) -> int | None:
        body = getattr(exc, "body", None)
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            kind = body["error"].get("type")
            if kind in self.stream_error_statuses and getattr(exc, "status_code", 200) in (200, None):
                return self.stream_error_statuses[kind]
        for attr in ("status_code", "code", "status"):
            value = getattr(exc, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and 400 <= value < 600:
                return value
        response = getattr(exc, "response", None)
        value = getattr(response, "status_code", None)
        if isinstance(value, int) and 400 <= value < 600:
            return value
        return None

    def wrap(self, exc: BaseException, provider: str, secrets: Sequence[str | None] = ()) -> ProviderError:
        """The :class:`ProviderError` for an SDK/transport exception (messages redacted)."""
        if isinstance(exc, ProviderError):
            return exc
        status = self.status_of(exc)
        kind = type(exc).__name__
        if _is_timeout(exc):  # before the status: litellm's Timeout carries a synthetic 408
            err: ProviderError = APITimeoutError(f"request timed out ({kind})", provider=provider)
        elif status is not None:
            err = error_from_status(
                status, redact(_message_of(exc), secrets), provider=provider, retry_after=self.retry_after_of(exc)
            )
        elif _is_connection(exc):
            err = APIConnectionError(f"{kind}: {redact(str(exc), secrets)}", provider=provider)
        else:
            err = ProviderError(f"{kind}: {redact(str(exc), secrets)}", provider=provider)
        err.sdk_error = kind
        return err


#: The generic rules alone (an SDK without quirks).
GENERIC = ErrorMap()


def retry_after_of(exc: BaseException, errors: ErrorMap = GENERIC) -> float | None:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` on the exception's response, if any."""
    return errors.retry_after_of(exc)


def _message_of(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
    message = getattr(exc, "message", None)
    if isinstance(message, str) and message:
        return message
    return str(exc) or type(exc).__name__


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or any("Timeout" in c.__name__ for c in type(exc).__mro__)


def _is_connection(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(
        names & {"APIConnectionError", "TransportError", "NetworkError", "ProtocolError", "ConnectionError",
                 "RemoteProtocolError", "ServiceUnavailableError"}
    ) or isinstance(exc, OSError)


def wrap_error(exc: BaseException, provider: str, secrets: Sequence[str | None] = (),
               errors: ErrorMap = GENERIC) -> ProviderError:
    """The :class:`ProviderError` for an SDK/transport exception (messages redacted)."""
    return errors.wrap(exc, provider, secrets)


def translating(provider: str, secrets: Sequence[str | None] = (), errors: ErrorMap = GENERIC) -> StreamGuard:
    """Context manager: re-raise any non-ProviderError exception of the block as a :class:`ProviderError`.

    (A :class:`StreamGuard` that never delivers: the same mapping, and the same care that neither the
    exception chain nor the traceback's frames keep the SDK's exception.)
    """
    return StreamGuard(provider, secrets, errors)


def interrupted(provider: str, cause: BaseException | str, secrets: Sequence[str | None] = (),
                errors: ErrorMap = GENERIC) -> StreamInterruptedError:
    """A :class:`StreamInterruptedError` for a stream that failed after delivering text."""
    if isinstance(cause, BaseException):
        base = errors.wrap(cause, provider, secrets)
        err = StreamInterruptedError(
            f"stream interrupted after partial output: {base.message}", provider=provider, status=base.status
        )
        err.sdk_error = getattr(base, "sdk_error", type(cause).__name__)
        return err
    return StreamInterruptedError(f"stream interrupted after partial output: {cause}", provider=provider)


class StreamGuard:
    """Exception translation for an SDK stream that a backend iterates itself::

        guard = StreamGuard(provider, secrets)
        with guard, contextlib.closing(stream):
            for event in stream:
                ...
                guard.delivered = True      # before yielding text
                yield text
        guard.require(done, "the stream ended without message_stop (cut off)")

    An exception inside the block (other than a :class:`ProviderError` or ``GeneratorExit``, which
    pass unchanged) is raised as :func:`wrap_error`'s error while nothing was delivered, and as
    :func:`interrupted`'s error after; both ``from None``. :meth:`require` treats a stream that ended
    without its terminal event the same way.
    """

    def __init__(self, provider: str, secrets: Sequence[str | None] = (), errors: ErrorMap = GENERIC) -> None:
        self.provider = provider
        self.secrets = secrets
        self.errors = errors
        self.delivered = False

    def __enter__(self) -> StreamGuard:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, ProviderError) or not isinstance(exc, Exception):
            return False
        if self.delivered:
            err: ProviderError = interrupted(self.provider, exc, self.secrets, self.errors)
        else:
            err = self.errors.wrap(exc, self.provider, self.secrets)
        exc = tb = None  # noqa: F841 - this frame is in err's traceback: keep the SDK's exception out of it
        raise err from None

    def require(self, ok: bool, message: str) -> None:
        """Raise for a stream that ended early (``ok`` false): interrupted, or a plain ProviderError."""
        if ok:
            return
        if self.delivered:
            raise interrupted(self.provider, message)
        raise ProviderError(message, provider=self.provider)
