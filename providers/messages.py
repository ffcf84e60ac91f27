"""The chat messages an API backend sends, read from a program state.

:func:`chat_turns` gives a chat API the state's finished turns (``messages_``, OpenAI format) plus
what is written into the open turn, by these rules:

* Chat APIs receive ``messages_`` (finished roles), deep-copied: the state is never mutated.
* ``gen`` is expected right after ``assistant()`` opens. Text already written into the open assistant
  turn is an *assistant prefill*, which only Anthropic supports (``allow_prefill=True``); the other
  backends raise ``ValueError`` rather than silently drop it. Generation inside an open non-assistant
  turn, and images inside the open assistant turn, raise ``ValueError`` too.
* A program that never opened a role is sent as one user message holding ``text_``; an empty state
  raises ``ValueError``.

Images travel in ``messages_`` as ``image_url`` parts holding base64 ``data:`` URLs, sent with the
MIME type their bytes announce (whatever the state's URL says: SGLang's labels every image JPEG);
:func:`parse_data_url` splits one into MIME type and data for APIs that want them apart (remote URLs
are never fetched).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from .images import fix_data_url_mime

__all__ = ["chat_turns", "parse_data_url"]


def chat_turns(s: Any, *, allow_prefill: bool, backend: str) -> tuple[list[dict[str, Any]], str]:
    """``(messages, prefill)`` for a chat API (see the module docstring for the rules)."""
    messages = copy.deepcopy(list(s.messages_))
    for message in messages:  # the label a frontend wrote may not match the bytes (SGLang: always JPEG)
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    image_url = part.get("image_url") or {}
                    if isinstance(image_url.get("url"), str):
                        image_url["url"] = fix_data_url_mime(image_url["url"])
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
