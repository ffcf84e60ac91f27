"""Helpers shared by the API backend tests (OpenAI, Anthropic, LiteLLM, Vertex AI)."""

from __future__ import annotations

import base64
import concurrent.futures
import logging

import pytest

from providers import ProgramState

# A 1x1 PNG: the smallest real image, so MIME sniffing has true magic bytes to read.
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
JPEG_HEAD = b"\xff\xd8\xff\xe0" + b"\x00" * 16  # enough for MIME sniffing


class ToyTokenizer:
    """A deterministic tokenizer for logit-bias tests: greedy longest match over a fixed vocabulary.

    Every printable ASCII character is a token, plus the multi-character ``words``; ids are stable.
    ``vocab`` maps id -> text, the shape the loopback OpenAI server's fake model reads.
    """

    def __init__(self, words=()):
        pieces = [chr(c) for c in range(32, 127)] + ["\n"]
        pieces += [w for w in words if w not in pieces]
        self.vocab = {i + 1: p for i, p in enumerate(pieces)}
        self._ids = {p: i for i, p in self.vocab.items()}
        self._longest = max(len(p) for p in pieces)
        self.eot_token = 0
        self.n_vocab = len(self.vocab) + 1

    def encode(self, text: str) -> list[int]:
        out, i = [], 0
        while i < len(text):
            for size in range(min(self._longest, len(text) - i), 0, -1):
                piece = text[i:i + size]
                if piece in self._ids:
                    out.append(self._ids[piece])
                    i += size
                    break
            else:
                raise ValueError(f"ToyTokenizer cannot encode {text[i]!r}")
        return out

    def decode(self, ids) -> str:
        return "".join(self.vocab.get(i, "") for i in ids)


def last_user_text(body: dict) -> str:
    """The text of the last user message of an OpenAI-style (or Anthropic Messages) request body."""
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else " ".join(p.get("text", "") for p in c if p.get("type") == "text")
    return ""


def debug_logging():
    """Turn every logger the SDKs use up to DEBUG (callers restore with the returned function)."""
    names = ["", "openai", "anthropic", "httpx", "httpx2", "httpcore", "google_genai", "google", "LiteLLM",
             "providers"]
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.DEBUG)

    def restore():
        for n, level in old.items():
            logging.getLogger(n).setLevel(level)

    return restore


def chat_state(backend, system="Be brief.", user="Capital of France?"):
    """A ProgramState with a system turn and a user turn, ready for ``with s.assistant(): s.gen(...)``."""
    s = ProgramState(backend)
    s.system(system)
    s.user(user)
    return s


def failed_gen_with_sdk_logs(backend, caplog, error_type):
    """Run one chat ``gen`` that must raise ``error_type`` while every SDK logger is at DEBUG.

    Checks that the SDK did log the call (so a test that the key is absent from the log means
    something) and returns ``(error, log_text)``.
    """
    caplog.set_level(logging.DEBUG)  # first: caplog restores its saved level at teardown
    restore = debug_logging()
    try:
        s = chat_state(backend)
        with s.assistant():
            with pytest.raises(error_type) as info:
                s.gen("a")
    finally:
        restore()
    assert "127.0.0.1" in caplog.text or "HTTP Request" in caplog.text  # the SDK did log the call
    return info.value, caplog.text


def two_turn_programs_in_threads(backend, count, *, first="q{}", then="f{}", state=chat_state):
    """Run ``count`` two-turn chat programs (``gen``, then ``gen_stream``) on one backend from 8 threads.

    Program ``i`` asks ``first.format(i)`` then ``then.format(i)``; returns each program's two answers.
    """

    def program(i):
        s = state(backend, user=first.format(i))
        with s.assistant():
            s.gen("a")
        s.user(then.format(i))
        with s.assistant():
            "".join(s.gen_stream("b"))
        return s["a"], s["b"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(program, range(count)))


def exception_chain(err: BaseException) -> list[BaseException]:
    """``err`` and every exception reachable through ``__cause__`` / ``__context__``."""
    chain: list[BaseException] = []
    todo = [err]
    while todo:
        e = todo.pop()
        if e is None or any(e is c for c in chain):
            continue
        chain.append(e)
        todo += [e.__cause__, e.__context__]
    return chain


def assert_no_sdk_exception_reachable(err: BaseException, key: str) -> None:
    """Neither the exception chain nor the traceback's frames of ``err`` reach an SDK exception (which
    holds the request, API key included), and no error in the chain shows ``key``."""
    from providers import ProviderError

    for e in exception_chain(err):
        assert isinstance(e, ProviderError), f"an SDK exception is chained to ours: {type(e).__module__}.{type(e).__name__}"
        assert key not in str(e) and key not in repr(e) and key not in repr(vars(e))
    tb = err.__traceback__
    while tb is not None:
        for name, value in tb.tb_frame.f_locals.items():
            assert not (isinstance(value, BaseException) and not isinstance(value, ProviderError)), (
                f"frame {tb.tb_frame.f_code.co_name} of the traceback keeps {type(value).__name__} in {name!r}")
        tb = tb.tb_next
