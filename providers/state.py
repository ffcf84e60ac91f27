"""ProgramState: the state a frontend drives a backend with.

A program is text plus structure. ``ProgramState`` keeps both views at once:

* ``text_`` -- the flat prompt: plain text, chat-template role prefixes/suffixes, one image token per
  image, and every generated or selected string, in order;
* ``messages_`` -- OpenAI-format messages, one per *finished* role (a role's message is added when
  the role ends). Content is the role's text without template tokens -- a string, or a list of
  ``text`` / ``image_url`` parts (images as ``data:<mime>;base64,`` URLs, in the order they were
  written) when the role has images. Text written outside any role goes to ``text_`` only;
* ``images_`` -- ``(path, base64)`` for every image of the program; ``cur_images`` -- the open role's;
* ``variables`` / ``meta_info`` -- results of ``gen``/``select`` by name; ``state[name]`` reads one;
* ``cur_role`` / ``cur_role_begin_pos`` -- the open role and where its content starts in ``text_``;
* ``backend_data`` -- scratch space for backends (per state; see ``base.py``); ``sid`` -- a unique id.

Example::

    s = ProgramState(backend)
    s.system("You are terse.")
    s.user("Capital of France?")
    with s.assistant():
        s.gen("answer", max_new_tokens=16, stop="\\n")
    s["answer"]

Decisions (where SGLang's StreamExecutor is loose):

* Roles do not nest; opening one while another is open raises ``RuntimeError``. A role is closed
  even when its ``with`` block raises, so the state never keeps a dangling role.
* Role content is kept exactly as written (no stripping).
* When the first role is ``user`` and the template has a default system prompt (Qwen), a system
  turn with it is written first -- the model's own template does the same.
* ``gen`` adds the template's ``stop_str`` to ``stop`` (the end-of-turn marker ends a turn).
* ``n > 1``: ``gen`` stores the list of texts in ``variables[name]`` and appends none of them.
* Thread-safety: every mutating method holds the state's lock, so calls from several threads are
  serialized (a second ``gen`` waits for the first). While a ``gen_stream`` is being consumed, any
  mutation raises ``RuntimeError`` instead (the stream owns the text until it ends or is closed).
* ``gen_stream``: if the stream fails, the text it appended is removed again (the state is as
  before the call) and the error propagates; if the consumer stops early (``close()``, ``break``),
  the text seen so far stays and ``meta_info[name]["finish_reason"]`` is ``"abort"``.
* ``fork(n)`` first calls ``backend.commit_lazy_operations`` (so a server can cache the shared
  prefix), then makes ``n`` independent copies (messages deep-copied, ``variables``/``meta_info``/
  ``backend_data`` shallow-copied) and calls ``backend.fork_program(self, children)``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from .base import BaseBackend
from .chat_template import ChatTemplate
from .choices import ChoicesSamplingMethod, token_length_normalized
from .images import image_data_url, image_mime_type, load_image, sniff_image_type
from .sampling import SamplingParams

__all__ = ["ProgramState", "image_mime_type", "image_data_url", "load_image", "sniff_image_type"]


class ProgramState:
    """The state of one program run against ``backend`` (see the module docstring)."""

    def __init__(
        self,
        backend: BaseBackend,
        chat_template: ChatTemplate | None = None,
        *,
        sid: str | None = None,
    ) -> None:
        if not isinstance(backend, BaseBackend) and isinstance(getattr(backend, "endpoint", None), BaseBackend):
            backend = backend.endpoint  # a Runtime: its endpoint runs the program (as in SGLang)
        self.backend = backend
        self.chat_template = chat_template or backend.get_chat_template()
        self.sid = sid or uuid.uuid4().hex
        self.text_ = ""
        self.messages_: list[dict[str, Any]] = []
        self.images_: list[tuple[str, str]] = []
        self.cur_images: list[tuple[str, str]] = []
        self.cur_role: str | None = None
        self.cur_role_begin_pos = 0
        self.variables: dict[str, Any] = {}
        self.meta_info: dict[str, Any] = {}
        self.backend_data: dict[str, Any] = {}
        self._role_suffix = ""
        self._image_spans: list[tuple[int, int, tuple[str, str]]] = []  # in the open role
        self._lock = threading.Lock()
        self._streaming: str | None = None
        self._closed = False
        backend.begin_program(self)

    # ------------------------------------------------------------------------------- text

    def __iadd__(self, text: str) -> ProgramState:
        if not isinstance(text, str):
            raise TypeError(f"can only add str to a ProgramState, got {type(text).__name__}")
        with self._mutating():
            self.text_ += text
        return self

    def text(self) -> str:
        return self.text_

    def messages(self) -> list[dict[str, Any]]:
        """A deep copy of ``messages_``."""
        return copy.deepcopy(self.messages_)

    # ------------------------------------------------------------------------------ roles

    @contextlib.contextmanager
    def role(self, name: str) -> Iterator[ProgramState]:
        """Open role ``name`` for the ``with`` block; its message is added when the block ends."""
        self._begin_role(name)
        try:
            yield self
            if name == "assistant":
                # Speculative execution (SGLang's flow): the turn's deferred gens run as it closes.
                # A backend without it, or a state without it on, returns at once.
                finish = getattr(self.backend, "role_end_generate", None)
                if finish is not None:
                    finish(self)
        finally:
            self._end_role()

    def system(self, text: str | None = None):
        """``with s.system():`` opens a system turn; ``s.system("...")`` writes a whole one."""
        return self._role_or_turn("system", text)

    def user(self, text: str | None = None):
        """``with s.user():`` opens a user turn; ``s.user("...")`` writes a whole one."""
        return self._role_or_turn("user", text)

    def assistant(self, text: str | None = None):
        """``with s.assistant():`` opens an assistant turn; ``s.assistant("...")`` writes a whole one."""
        return self._role_or_turn("assistant", text)

    def _role_or_turn(self, name: str, text: str | None):
        if text is None:
            return self.role(name)
        if not isinstance(text, str):
            raise TypeError(f"{name}(text): text must be a str, got {type(text).__name__}")
        with self.role(name):
            self += text
        return None

    def _begin_role(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"role name must be a non-empty str, got {name!r}")
        with self._mutating():
            if self.cur_role is not None:
                raise RuntimeError(f"role {name!r} opened while role {self.cur_role!r} is open; roles do not nest")
            template = self.chat_template
            if name == "user" and not self.messages_ and template.default_system_prompt:
                self._write_turn("system", template.default_system_prompt)
            prefix, suffix = template.get_prefix_and_suffix(name, self.messages_)
            self.text_ += prefix
            self.cur_role = name
            self.cur_role_begin_pos = len(self.text_)
            self._role_suffix = suffix
            self.cur_images = []
            self._image_spans = []

    def _end_role(self) -> None:
        with self._lock:  # ends even while a (failed) stream is being unwound
            role, begin = self.cur_role, self.cur_role_begin_pos
            if role is None:
                return
            content = self._role_content(begin)
            self.text_ += self._role_suffix
            self.messages_.append({"role": role, "content": content})
            self.cur_role = None
            self.cur_images = []
            self._image_spans = []
            self._role_suffix = ""

    def _write_turn(self, name: str, text: str) -> None:  # caller holds the lock
        prefix, suffix = self.chat_template.get_prefix_and_suffix(name, self.messages_)
        self.text_ += prefix + text + suffix
        self.messages_.append({"role": name, "content": text})

    def _role_content(self, begin: int) -> str | list[dict[str, Any]]:
        spans = [s for s in self._image_spans if s[0] >= begin and s[1] <= len(self.text_)]
        if not spans:
            return self.text_[begin:]
        parts: list[dict[str, Any]] = []
        pos = begin
        for start, end, (path, data) in spans:
            if start > pos:
                parts.append({"type": "text", "text": self.text_[pos:start]})
            parts.append({"type": "image_url", "image_url": {"url": image_data_url(data, path)}})
            pos = end
        if pos < len(self.text_):
            parts.append({"type": "text", "text": self.text_[pos:]})
        return parts

    # ----------------------------------------------------------------------------- images

    def image(self, source: str | os.PathLike | bytes) -> ProgramState:
        """Add an image (file path, raw bytes or base64 data URL) at this point of the prompt.

        Writes the template's image token into ``text_``; chat APIs see the image as an
        ``image_url`` part of the open role's message (images outside a role reach ``images_`` and
        ``text_`` only).
        """
        image = load_image(source)
        with self._mutating():
            start = len(self.text_)
            self.text_ += self.chat_template.image_token
            self.images_.append(image)
            if self.cur_role is not None:
                self.cur_images.append(image)
                self._image_spans.append((start, len(self.text_), image))
        return self

    # ------------------------------------------------------------------------- generation

    def gen(
        self, name: str | None = None, *, sampling_params: SamplingParams | None = None, **sampling: Any
    ) -> Any:
        """Generate a continuation, append it to the prompt and store it as ``variables[name]``.

        Sampling arguments are :class:`SamplingParams` fields (or pass ``sampling_params=``).
        Returns the text (a list of texts when ``n > 1``).
        """
        params = self._sampling(sampling_params, sampling)
        with self._mutating():
            text, meta = self.backend.generate(self, params)
            self._append_result(name, text, meta)
        return text

    def gen_stream(
        self, name: str | None = None, *, sampling_params: SamplingParams | None = None, **sampling: Any
    ) -> Iterator[str]:
        """Like :meth:`gen` but yields text deltas as they arrive (arguments checked at call time)."""
        return self._stream(name, self._stream_sampling(sampling_params, sampling))

    def _stream(self, name: str | None, params: SamplingParams) -> Iterator[str]:
        start, previous = self._stream_begin(name)
        received = ""
        meta: dict[str, Any] = {}
        finished = False
        stream: Any = None
        try:
            stream = self.backend.generate_stream(self, params)
            for delta, meta in stream:
                if delta:
                    received = self._stream_append(name, received, delta)
                    yield delta
            finished = True
        except GeneratorExit:
            meta = {**meta, "finish_reason": "abort"}
            finished = True
            raise
        except BaseException:
            self._stream_rollback(name, start, previous)
            raise
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
            self._stream_end(name, received, meta, finished)

    # The steps of a stream, shared with AsyncProgramState._astream.

    def _stream_begin(self, name: str | None) -> tuple[int, Any]:
        """Mark the state as streaming; returns what a failed stream restores (see ``_stream_rollback``)."""
        with self._mutating():
            self._streaming = name or "<unnamed>"
            return len(self.text_), (self.variables.get(name, _MISSING) if name else _MISSING)

    def _stream_append(self, name: str | None, received: str, delta: str) -> str:
        """Append ``delta`` to the prompt (and to ``variables[name]``); returns the text received so far."""
        with self._lock:
            self.text_ += delta
            received += delta
            if name:
                self.variables[name] = received
        return received

    def _stream_rollback(self, name: str | None, start: int, previous: Any) -> None:
        """Undo a failed stream: the text from ``start`` and ``variables[name]`` go back as they were."""
        with self._lock:
            self.text_ = self.text_[:start]
            if name:
                if previous is _MISSING:
                    self.variables.pop(name, None)
                else:
                    self.variables[name] = previous

    def _stream_end(self, name: str | None, received: str, meta: dict[str, Any], finished: bool) -> None:
        """Store a finished stream's result (as ``name``) and mark the state as not streaming."""
        with self._lock:
            if finished:
                self._store(name, received, dict(meta))
            self._streaming = None

    def select(
        self,
        name: str | None,
        choices: Sequence[str],
        *,
        method: ChoicesSamplingMethod = token_length_normalized,
        temperature: float = 0.0,
    ) -> str:
        """Choose one of ``choices`` as the continuation (see ``choices.py`` for the methods)."""
        choices = self._select_args(choices, method, temperature)
        with self._mutating():
            decision = self.backend.select(self, choices, temperature, method)
            self.text_ += decision.decision
            self._store(name, decision.decision, decision.meta_info)
        return decision.decision

    @staticmethod
    def _select_args(choices: Sequence[str], method: ChoicesSamplingMethod, temperature: float) -> list[str]:
        if isinstance(choices, str) or not isinstance(choices, Sequence):
            raise TypeError("select: choices must be a sequence of str")
        choices = list(choices)
        if not choices:
            raise ValueError("select: choices must not be empty")
        for choice in choices:
            if not isinstance(choice, str) or not choice:
                raise ValueError(f"select: every choice must be a non-empty str, got {choice!r}")
        if len(set(choices)) != len(choices):
            raise ValueError("select: choices must be distinct")
        if not callable(method):  # ours, or SGLang's (same calling convention; see choices.py)
            raise TypeError(f"select: method must be a choices method (callable), got {method!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"select: temperature must be a number >= 0, got {temperature!r}")
        return choices

    # ------------------------------------------------------------------------------- fork

    def fork(self, n: int = 1) -> list[ProgramState]:
        """``n`` independent copies that continue from here (see the module docstring)."""
        _check_fork(n)
        with self._mutating():
            self.backend.commit_lazy_operations(self)
            children = [self._copy() for _ in range(n)]
            self.backend.fork_program(self, children, position_ids_offset=None)
        return children

    def _copy(self) -> ProgramState:
        child = object.__new__(type(self))
        child.backend = self.backend
        child.chat_template = self.chat_template
        child.sid = uuid.uuid4().hex
        child.text_ = self.text_
        child.messages_ = copy.deepcopy(self.messages_)
        child.images_ = list(self.images_)
        child.cur_images = list(self.cur_images)
        child.cur_role = self.cur_role
        child.cur_role_begin_pos = self.cur_role_begin_pos
        child.variables = dict(self.variables)
        child.meta_info = dict(self.meta_info)
        child.backend_data = dict(self.backend_data)
        child._role_suffix = self._role_suffix
        child._image_spans = list(self._image_spans)
        child._lock = threading.Lock()
        child._streaming = None
        child._closed = False
        return child

    # ----------------------------------------------------------------------------- access

    def __getitem__(self, name: str) -> Any:
        try:
            return self.variables[name]
        except KeyError:
            known = ", ".join(sorted(self.variables)) or "none yet"
            raise KeyError(f"no variable {name!r} (variables: {known})") from None

    def __contains__(self, name: str) -> bool:
        return name in self.variables

    def commit_lazy_operations(self) -> None:
        """Send the prompt so far to the backend now (e.g. to warm a prefix cache)."""
        with self._mutating():
            self.backend.commit_lazy_operations(self)

    def close(self) -> None:
        """End the program (``backend.end_program``); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.backend.end_program(self)

    def __enter__(self) -> ProgramState:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ProgramState(sid={self.sid[:8]}, backend={type(self.backend).__name__}, "
            f"chars={len(self.text_)}, messages={len(self.messages_)}, variables={sorted(self.variables)})"
        )

    # ---------------------------------------------------------------------------- helpers

    @contextlib.contextmanager
    def _mutating(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise RuntimeError("this ProgramState is closed")
            if self._streaming is not None:
                raise RuntimeError(
                    f"the state is streaming {self._streaming!r}; consume or close that stream first"
                )
            yield

    def _sampling(self, params: SamplingParams | None, kwargs: dict[str, Any]) -> SamplingParams:
        if params is not None:
            if kwargs:
                raise TypeError("pass either sampling_params= or sampling keyword arguments, not both")
            if not isinstance(params, SamplingParams):
                raise TypeError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
        else:
            params = SamplingParams.from_kwargs(**kwargs)
        extra = [s for s in self.chat_template.stop_str if s not in params.stop]
        if extra:
            params = params.replace(stop=params.stop + tuple(extra))
        return params

    def _stream_sampling(self, params: SamplingParams | None, kwargs: dict[str, Any]) -> SamplingParams:
        """``_sampling`` for ``gen_stream``: one continuation only."""
        params = self._sampling(params, kwargs)
        if params.n != 1:
            raise ValueError("gen_stream: n must be 1 (stream one continuation at a time)")
        return params

    def _append_result(self, name: str | None, value: Any, meta: dict[str, Any]) -> None:
        """Append ``gen``'s text to the prompt (a list of ``n`` texts is only stored) and store it as
        ``name``; the caller holds the lock."""
        if isinstance(value, str):
            self.text_ += value
        self._store(name, value, meta)

    def _store(self, name: str | None, value: Any, meta: dict[str, Any]) -> None:
        if name is not None:
            self.variables[name] = value
            self.meta_info[name] = meta


_MISSING = object()


def _check_fork(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"fork: n must be an int >= 1, got {n!r}")
