"""Speculative execution for OpenAI chat models (SGLang's ``num_api_spec_tokens``).

``backend.set_api_speculative(s, num_api_spec_tokens=128)`` turns it on for state ``s`` (or the
state carries ``num_api_spec_tokens``, as SGLang's ``@function(num_api_spec_tokens=...)`` sets).
Inside an assistant turn, each ``gen`` then returns ``""`` at once and records a slot;
``role_end_generate(s)`` (called before the turn closes) makes ONE request for the whole turn,
matches the answer against the turn's pattern (fixed text between the slots, each slot ending at its
``stop``) with :meth:`SpeculativeMixin.spec_pattern_match`, retrying up to ``spec_max_num_tries``
times, and fills ``text_``, ``variables`` and ``meta_info`` of the slots. Fixed text is read from
``text_``; frontends that keep it out of ``text_`` pass it with :meth:`SpeculativeMixin.spec_fill`.
The buffers live in ``s.backend_data["openai"]``: per state, never per backend.

The mixin needs from its backend: ``is_chat_model``, ``provider``, ``spec_max_num_tries``,
``map_params``, ``_options``, ``_complete`` and ``result`` (the :class:`~providers.api_backend.APIBackend`
flow) and ``_place_options(request, options)`` (the provider options of the turn's gens -- they must
be the same for every gen of the turn -- go with its one request).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from .errors import ProviderError, UnsupportedOperationError
from .sampling import SamplingParams

__all__ = ["SpeculativeMixin"]


class SpeculativeMixin:
    """``set_api_speculative`` / ``spec_fill`` / ``role_end_generate`` (see the module docstring)."""

    spec_max_num_tries: int = 3

    def set_api_speculative(self, s: Any, num_api_spec_tokens: int | None = 128) -> None:
        """Turn speculative execution on for state ``s`` (``None`` turns it off)."""
        if not self.is_chat_model:
            raise UnsupportedOperationError("speculative execution is for chat models", provider=self.provider)
        if num_api_spec_tokens is None:
            getattr(s, "backend_data", {}).pop("openai", None)
            return
        if isinstance(num_api_spec_tokens, bool) or not isinstance(num_api_spec_tokens, int) or num_api_spec_tokens < 1:
            raise ValueError("num_api_spec_tokens must be an int >= 1")
        if not isinstance(getattr(s, "backend_data", None), dict):
            s.backend_data = {}  # a frontend's own state (SGLang's StreamExecutor): the buffers live on it
        s.backend_data["openai"] = {"num_tokens": num_api_spec_tokens, "terms": [], "pos": None, "kwargs": None}

    def _spec(self, s: Any) -> dict[str, Any] | None:
        data = getattr(s, "backend_data", None)
        buf = data.get("openai") if isinstance(data, dict) else None
        if buf is None and getattr(s, "num_api_spec_tokens", None):
            self.set_api_speculative(s, s.num_api_spec_tokens)
            buf = s.backend_data["openai"]
        return buf

    def _spec_sync(self, s: Any, buf: dict[str, Any]) -> None:
        begin = s.cur_role_begin_pos
        if buf["pos"] is None or buf["pos"] < begin:
            buf["pos"] = begin
        gap = s.text_[buf["pos"]:]
        if gap:
            buf["terms"].append({"text": gap, "stop": None, "name": None, "meta": None, "slot": False})
            buf["pos"] = len(s.text_)

    def spec_fill(self, s: Any, value: str | None = None) -> None:
        """Record fixed text of the speculative assistant turn (see the module docstring).

        SGLang's StreamExecutor calls ``spec_fill(value)`` without its state; the state is then the
        ``self`` of the calling frame (the executor's ``_execute_fill``), so the buffers still live per
        state. Anything else calling with one argument gets an error.
        """
        if value is None and isinstance(s, str):
            value, s = s, _calling_state(sys._getframe(1))
        buf = self._spec(s)
        if buf is None:
            raise RuntimeError("spec_fill: speculative execution is not on for this state")
        if buf["pos"] is None:
            buf["pos"] = s.cur_role_begin_pos
        self._spec_sync(s, buf)
        buf["terms"].append({"text": value, "stop": None, "name": None, "meta": None, "slot": False})

    def _spec_generate(self, s: Any, params: SamplingParams, name: str | None = None) -> tuple[str, dict[str, Any]]:
        buf = self._spec(s)
        if params.n != 1 or params.dtype is not None or params.json_schema is not None:
            raise ValueError("speculative execution supports plain gen (n=1, no dtype/json_schema)")
        self._spec_sync(s, buf)
        kwargs = (self.map_params(params.replace(stop=(), max_new_tokens=buf["num_tokens"])), self._options(params))
        if buf["kwargs"] is None:
            buf["kwargs"] = kwargs
        elif buf["kwargs"] != kwargs:
            raise ValueError("speculative execution: every gen of one assistant turn must use the same sampling "
                             f"parameters (got {kwargs}, first was {buf['kwargs']})")
        meta: dict[str, Any] = {"speculative": True, "finish_reason": None}
        buf["terms"].append({"text": "", "stop": params.stop, "name": name, "meta": meta, "slot": True})
        return "", meta

    def spec_pattern_match(self, s: Any, comp: str) -> bool:
        """Fill the slots of ``s``'s speculative turn from ``comp``; False if it does not fit."""
        terms = self._spec(s)["terms"]
        filled: list[str] = []
        rest = comp
        for i, term in enumerate(terms):
            if not term["slot"]:
                if not rest.startswith(term["text"]):
                    return False
                rest = rest[len(term["text"]):]
                filled.append(term["text"])
                continue
            nxt = next((t["text"] for t in terms[i + 1:] if not t["slot"] and t["text"]), None)
            ends = [rest.find(x) for x in (term["stop"] or ()) if x and rest.find(x) >= 0]
            if nxt is not None and rest.find(nxt) >= 0:
                ends.append(rest.find(nxt))
            if ends:
                cut = min(ends)
            elif i == len(terms) - 1 or all(t["slot"] or not t["text"] for t in terms[i + 1:]):
                cut = len(rest)
            else:
                return False
            filled.append(rest[:cut])
            rest = rest[cut:]
            # a stop string is consumed by the slot it ends, like a server-side stop
            for x in term["stop"] or ():
                if x and rest.startswith(x) and (nxt is None or not rest.startswith(nxt)):
                    rest = rest[len(x):]
                    break
        for term, text in zip(terms, filled):
            if term["slot"]:
                term["text"] = text
        return True

    def role_end_generate(self, s: Any) -> None:
        """Run the speculative request of ``s``'s open assistant turn and fill its slots."""
        buf = self._spec(s)
        if buf is None or s.cur_role != "assistant":
            return
        self._spec_sync(s, buf)
        if not any(t["slot"] for t in buf["terms"]):
            # A turn without gens: nothing to request, but SGLang's executor handed its fixed text to
            # spec_fill instead of text_: write it there (the turn's message), and start the next turn clean.
            if buf["terms"]:
                s.text_ = s.text_[:s.cur_role_begin_pos] + "".join(t["text"] for t in buf["terms"])
            buf["terms"], buf["pos"], buf["kwargs"] = [], None, None
            return
        messages = [dict(m) for m in s.messages_]
        kwargs, options = buf["kwargs"]
        last = ""
        metas = None
        for _attempt in range(max(1, self.spec_max_num_tries)):
            t0 = time.perf_counter()
            request = self._place_options({"messages": messages, **kwargs}, options)
            completion = self._complete(request, SamplingParams())
            last, metas = self.result(completion, time.perf_counter() - t0, 1)
            if self.spec_pattern_match(s, last):
                break
        else:
            buf["terms"], buf["pos"], buf["kwargs"] = [], None, None
            raise ProviderError(
                f"speculative output did not match the turn's pattern after {self.spec_max_num_tries} tries: "
                f"{last[:80]!r}", provider=self.provider)
        begin = s.cur_role_begin_pos
        s.text_ = s.text_[:begin] + "".join(t["text"] for t in buf["terms"])
        for term in buf["terms"]:
            if term["slot"]:
                term["meta"].update(metas, speculative=True)
                for name, m in list(s.meta_info.items()):
                    if m is term["meta"]:
                        s.variables[name] = term["text"]
                if term["name"] is not None:  # SGLang's executor names the slot and waits on its event
                    s.variables[term["name"]] = term["text"]
                    s.meta_info[term["name"]] = term["meta"]
                    event = (getattr(s, "variable_event", None) or {}).get(term["name"])
                    if event is not None:
                        event.set()
        buf["terms"], buf["pos"], buf["kwargs"] = [], None, None



def _calling_state(frame: Any) -> Any:
    """The state of SGLang's ``StreamExecutor._execute_fill`` frame that called ``spec_fill(value)``."""
    candidate = frame.f_locals.get("self") if frame is not None else None
    if candidate is not None and all(hasattr(candidate, a) for a in ("text_", "cur_role", "num_api_spec_tokens")):
        return candidate
    _sglang_speculation()


def _sglang_speculation():
    raise UnsupportedOperationError(
        "spec_fill(value) without a state: speculative execution keeps its buffers per program state, and no "
        "state called; pass it (spec_fill(s, value))",
        provider="openai",
    )
