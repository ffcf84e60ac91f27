"""Helpers shared by the API backend tests (OpenAI, Anthropic, LiteLLM, Vertex AI)."""

from __future__ import annotations

import base64
import logging

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
    """The text of the last user message of an OpenAI-style request body."""
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
