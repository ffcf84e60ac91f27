"""What the four SDK-backed API backends (OpenAI/Azure, Anthropic, LiteLLM, Vertex AI) share.

* :func:`import_sdk` -- lazy SDK import with the ``pip install 'kernelstack[providers]'`` hint;
* :class:`TokenUsage` -- thread-safe running totals of prompt/completion tokens;
* :func:`wrap_error` / :func:`translating` -- any SDK or transport exception -> the matching
  :class:`~providers.errors.ProviderError` (provider, status, server message, ``retry_after``),
  redacted, and raised ``from None`` so the SDK's own (unredacted) text is not chained into
  tracebacks; ``sdk_error`` keeps the SDK exception's class name;
* :func:`chat_turns` -- the state's finished messages plus the open turn;
* :func:`generate_and_match` helpers for ``select`` where an API has no logprobs/logit bias.

The rules that these helpers implement are the ones every API backend documents:

Open turn. Chat APIs receive ``messages_`` (finished roles). ``gen`` is expected right after
``assistant()`` opens; text already written into the open assistant turn is an *assistant prefill*,
which only Anthropic supports -- the other backends raise ``ValueError`` rather than silently drop it.
A program that never opened a role is sent as one user message holding ``text_``.

Generate-and-match (``select`` without logprobs): the backend appends one instruction listing the
choices to the last user turn (a new user turn if the last one is the assistant's), generates at the
caller's temperature, and maps the answer to a choice: exact match, else equal after case-folding and
trimming quotes/punctuation, else the longest choice contained in the answer, else the closest by
``difflib`` similarity. ``meta_info["match"]`` says which rule decided and ``meta_info["generated"]``
holds the raw answer, so a caller can reject a ``"closest"`` guess.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import importlib
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from .errors import (
    APIConnectionError,
    APITimeoutError,
    ProviderError,
    StreamInterruptedError,
    error_from_status,
    redact,
)
from .retry import parse_retry_after

INSTALL_HINT = "pip install 'kernelstack[providers]'"


def import_sdk(module: str, backend: str):
    """Import ``module`` (an SDK) or raise ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{backend} needs the optional dependency {module!r}; install it with: {INSTALL_HINT}",
            name=err.name or module,
        ) from err


class TokenUsage:
    """Prompt and completion tokens summed over every call of a backend (thread-safe).

    ``prompt_tokens`` / ``completion_tokens`` / ``total_tokens`` read the totals, ``reset()`` zeroes
    them, ``snapshot()`` returns both as a dict. Calls whose response carries no usage add nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prompt = 0
        self._completion = 0

    def add(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        with self._lock:
            self._prompt += int(prompt_tokens or 0)
            self._completion += int(completion_tokens or 0)

    @property
    def prompt_tokens(self) -> int:
        with self._lock:
            return self._prompt

    @property
    def completion_tokens(self) -> int:
        with self._lock:
            return self._completion

    @property
    def total_tokens(self) -> int:
        with self._lock:
            return self._prompt + self._completion

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"prompt_tokens": self._prompt, "completion_tokens": self._completion}

    def reset(self) -> None:
        with self._lock:
            self._prompt = 0
            self._completion = 0

    def __repr__(self) -> str:
        s = self.snapshot()
        return f"TokenUsage(prompt_tokens={s['prompt_tokens']}, completion_tokens={s['completion_tokens']})"


# ------------------------------------------------------------------------------------- errors


def _headers_of(exc: BaseException):
    # litellm attaches a synthetic response without headers and keeps the real ones aside.
    for headers in (getattr(getattr(exc, "response", None), "headers", None),
                    getattr(exc, "litellm_response_headers", None)):
        if headers:
            return headers
    return None


def retry_after_of(exc: BaseException) -> float | None:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` on the exception's response, if any."""
    headers = _headers_of(exc)
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


# Error types that arrive inside a 200 stream (Anthropic's ``event: error``), as the status they stand for.
_STREAM_ERROR_TYPES = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
                       "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429,
                       "api_error": 500, "overloaded_error": 529}


def _status_of(exc: BaseException) -> int | None:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        kind = body["error"].get("type")
        if kind in _STREAM_ERROR_TYPES and getattr(exc, "status_code", 200) in (200, None):
            return _STREAM_ERROR_TYPES[kind]
    for attr in ("status_code", "code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and 400 <= value < 600:
            return value
    response = getattr(exc, "response", None)
    value = getattr(response, "status_code", None)
    if isinstance(value, int) and 100 <= value < 600 and value >= 400:
        return value
    return None


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


def wrap_error(exc: BaseException, provider: str, secrets: Sequence[str | None] = ()) -> ProviderError:
    """The :class:`ProviderError` for an SDK/transport exception (messages redacted)."""
    if isinstance(exc, ProviderError):
        return exc
    status = _status_of(exc)
    kind = type(exc).__name__
    if _is_timeout(exc):  # before the status: litellm's Timeout carries a synthetic 408
        err: ProviderError = APITimeoutError(f"request timed out ({kind})", provider=provider)
    elif status is not None:
        err = error_from_status(
            status, redact(_message_of(exc), secrets), provider=provider, retry_after=retry_after_of(exc)
        )
    elif _is_connection(exc):
        err = APIConnectionError(f"{kind}: {redact(str(exc), secrets)}", provider=provider)
    else:
        err = ProviderError(f"{kind}: {redact(str(exc), secrets)}", provider=provider)
    err.sdk_error = kind
    return err


@contextlib.contextmanager
def translating(provider: str, secrets: Sequence[str | None] = ()) -> Iterator[None]:
    """Re-raise any non-ProviderError exception of the block as a :class:`ProviderError`."""
    try:
        yield
    except ProviderError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except Exception as exc:  # noqa: BLE001 - every SDK failure becomes a ProviderError
        raise wrap_error(exc, provider, secrets) from None


def interrupted(provider: str, cause: BaseException | str, secrets: Sequence[str | None] = ()) -> StreamInterruptedError:
    """A :class:`StreamInterruptedError` for a stream that failed after delivering text."""
    if isinstance(cause, BaseException):
        base = wrap_error(cause, provider, secrets)
        err = StreamInterruptedError(
            f"stream interrupted after partial output: {base.message}", provider=provider, status=base.status
        )
        err.sdk_error = getattr(base, "sdk_error", type(cause).__name__)
        return err
    return StreamInterruptedError(f"stream interrupted after partial output: {cause}", provider=provider)


# -------------------------------------------------------------------------------- chat turns


def chat_turns(s: Any, *, allow_prefill: bool, backend: str) -> tuple[list[dict[str, Any]], str]:
    """``(messages, prefill)`` for a chat API (see the module docstring for the rules)."""
    messages = copy.deepcopy(list(s.messages_))
    prefill = ""
    role = getattr(s, "cur_role", None)
    if role is not None:
        open_text = s.text_[s.cur_role_begin_pos:]
        if role != "assistant":
            raise ValueError(
                f"{backend}: generation inside an open {role!r} turn; chat models answer in an assistant turn "
                "(use `with s.assistant(): s.gen(...)`)"
            )
        prefill = open_text
        if getattr(s, "cur_images", None):
            raise ValueError(f"{backend}: images inside the assistant turn cannot be sent to a chat API")
    elif not messages and s.text_:
        messages = [{"role": "user", "content": s.text_}]
    if prefill and not allow_prefill:
        raise ValueError(
            f"{backend}: the open assistant turn already holds text ({prefill[:40]!r}...); this API cannot "
            "continue a partial assistant message, so gen must come right after assistant() opens "
            "(or use speculative execution where the backend offers it)"
        )
    if not messages:
        raise ValueError(f"{backend}: nothing to send; the program state is empty")
    return messages, prefill


_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.S)


def parse_data_url(url: str) -> tuple[str, str]:
    """``(mime_type, base64_data)`` of a ``data:`` URL; ValueError for anything else."""
    m = _DATA_URL.match(url)
    if not m:
        raise ValueError("only base64 data: URLs are supported for images (remote URLs are not fetched)")
    return m.group("mime"), m.group("data")


# --------------------------------------------------------------------------- generate & match

SELECT_INSTRUCTION = "Answer with exactly one of the following options and nothing else:"


def select_instruction(choices: Sequence[str]) -> str:
    return SELECT_INSTRUCTION + "\n" + "\n".join(f"- {c}" for c in choices)


def with_select_instruction(messages: list[dict[str, Any]], choices: Sequence[str]) -> list[dict[str, Any]]:
    """A copy of OpenAI-format ``messages`` with the select instruction added to the last user turn."""
    messages = copy.deepcopy(messages)
    note = select_instruction(choices)
    if messages and messages[-1]["role"] == "user":
        content = messages[-1]["content"]
        if isinstance(content, str):
            messages[-1]["content"] = (content + "\n\n" + note) if content else note
        else:
            messages[-1]["content"] = list(content) + [{"type": "text", "text": "\n\n" + note}]
    else:
        messages.append({"role": "user", "content": note})
    return messages


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.casefold().strip().strip("\"'`*.,;:!?()[]{}<> \n\t")).strip()


def match_choice(text: str, choices: Sequence[str]) -> tuple[int, str]:
    """``(index, rule)`` of the choice ``text`` names (rules: exact, normalized, contains, closest)."""
    stripped = text.strip()
    for i, c in enumerate(choices):
        if stripped == c or stripped == c.strip():
            return i, "exact"
    n = _norm(text)
    for i, c in enumerate(choices):
        if n == _norm(c):
            return i, "normalized"
    contained = [i for i, c in enumerate(choices) if _norm(c) and _norm(c) in n]
    if contained:
        return max(contained, key=lambda i: (len(_norm(choices[i])), -i)), "contains"
    ratios = [difflib.SequenceMatcher(None, n, _norm(c)).ratio() for c in choices]
    return max(range(len(choices)), key=lambda i: (ratios[i], -i)), "closest"

