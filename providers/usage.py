"""Token usage a backend keeps: running totals of prompt and completion tokens over every call.

Every API backend exposes one as ``backend.token_usage``; it is safe to update from the many threads
that share one backend. Each backend reads its API's usage fields itself (the field names differ per
API) and calls :meth:`TokenUsage.add`; a response without usage adds nothing.
"""

from __future__ import annotations

import threading

__all__ = ["TokenUsage"]


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
