"""AsyncProgramState: a program state for asyncio programs.

The same state as :class:`~providers.state.ProgramState` (text, messages, images, roles, variables;
the same template and stop rules), with the operations that talk to the backend as coroutines on the
backend's async twins (``agenerate``, ``agenerate_stream``, ``aselect``,
``acommit_lazy_operations``) -- no threads::

    async def program(backend, question):
        s = AsyncProgramState(backend)
        s.system("You are terse.")
        s.user(question)
        with s.assistant():
            await s.gen("answer", max_new_tokens=32)
        s.user("Why?")
        with s.assistant():
            async for delta in s.gen_stream("why"):
                print(delta, end="")
        return s["answer"], s["why"]

    answers = await asyncio.gather(*(program(backend, q) for q in questions))   # one backend, one loop

Decisions:

* Writing text, images and roles (``+=``, ``s.user(...)``, ``with s.assistant():``) is synchronous,
  as in ``ProgramState``: it sends nothing. Speculative execution (which sends a request as an
  assistant role closes) is for the synchronous state only.
* The operations of one state run one at a time (an ``asyncio.Lock``: a second ``gen`` on the same
  state waits for the first); while one is in flight, a synchronous mutation of the state (``+=``, a
  role) raises ``RuntimeError`` instead of changing the prompt under the request. Many states share
  one backend freely.
* ``gen_stream`` returns an async iterator (arguments are checked when it is called). A failed stream
  leaves the state as it was; a consumer that stops early -- ``break`` then ``aclose()``, or
  cancelling its task -- keeps the text seen so far with ``meta_info[name]["finish_reason"] ==
  "abort"``, and the backend's response is closed (the connection is freed). After a ``break``, close
  the iterator before the next operation on the state (``async with contextlib.aclosing(...)``);
  until it is closed the state counts as streaming.
* ``await s.fork(n)`` commits the prompt (``acommit_lazy_operations``) and returns ``n``
  ``AsyncProgramState`` copies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from .choices import ChoicesSamplingMethod, token_length_normalized
from .sampling import SamplingParams
from .state import ProgramState, _check_fork

__all__ = ["AsyncProgramState"]


class AsyncProgramState(ProgramState):
    """A :class:`ProgramState` whose backend operations are coroutines (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._op_lock = asyncio.Lock()

    # ------------------------------------------------------------------------------ roles

    @contextlib.contextmanager
    def role(self, name: str) -> Iterator[AsyncProgramState]:
        """Open role ``name`` for the ``with`` block (it sends nothing, so it is a plain ``with``)."""
        self._begin_role(name)
        try:
            yield self
        finally:
            self._end_role()

    # ------------------------------------------------------------------------- generation

    async def gen(
        self, name: str | None = None, *, sampling_params: SamplingParams | None = None, **sampling: Any
    ) -> Any:
        """Generate a continuation (``await backend.agenerate``), append it and store it as ``name``.

        Arguments as for :meth:`ProgramState.gen`; returns the text (a list when ``n > 1``).
        """
        params = self._sampling(sampling_params, sampling)
        async with self._operation(f"gen {name!r}" if name else "gen"):
            text, meta = await self.backend.agenerate(self, params)
            with self._lock:
                self._append_result(name, text, meta)
        return text

    def gen_stream(
        self, name: str | None = None, *, sampling_params: SamplingParams | None = None, **sampling: Any
    ) -> AsyncIterator[str]:
        """Like :meth:`gen`, as an async iterator of text deltas (arguments checked at call time)."""
        return self._astream(name, self._stream_sampling(sampling_params, sampling))

    async def _astream(self, name: str | None, params: SamplingParams) -> AsyncIterator[str]:
        async with self._op_lock:
            start, previous = self._stream_begin(name)
            received = ""
            meta: dict[str, Any] = {}
            finished = False
            stream: Any = None
            try:
                stream = self.backend.agenerate_stream(self, params)
                async for delta, meta in stream:
                    if delta:
                        received = self._stream_append(name, received, delta)
                        yield delta
                finished = True
            except (GeneratorExit, asyncio.CancelledError):
                meta = {**meta, "finish_reason": "abort"}
                finished = True
                raise
            except BaseException:
                self._stream_rollback(name, start, previous)
                raise
            finally:
                try:
                    if stream is not None:
                        await stream.aclose()
                finally:
                    self._stream_end(name, received, meta, finished)

    async def select(
        self,
        name: str | None,
        choices: Sequence[str],
        *,
        method: ChoicesSamplingMethod = token_length_normalized,
        temperature: float = 0.0,
    ) -> str:
        """Choose one of ``choices`` as the continuation (``await backend.aselect``)."""
        choices = self._select_args(choices, method, temperature)
        async with self._operation(f"select {name!r}" if name else "select"):
            decision = await self.backend.aselect(self, choices, temperature, method)
            with self._lock:
                self.text_ += decision.decision
                self._store(name, decision.decision, decision.meta_info)
        return decision.decision

    # ------------------------------------------------------------------------------- fork

    async def fork(self, n: int = 1) -> list[AsyncProgramState]:  # type: ignore[override]
        """``n`` independent copies that continue from here (the prompt is committed first)."""
        _check_fork(n)
        async with self._operation("fork"):
            await self.backend.acommit_lazy_operations(self)
            with self._lock:
                children = [self._copy() for _ in range(n)]
            self.backend.fork_program(self, children, position_ids_offset=None)
        return children

    def _copy(self) -> AsyncProgramState:
        child = super()._copy()
        child._op_lock = asyncio.Lock()
        return child

    async def commit_lazy_operations(self) -> None:  # type: ignore[override]
        """Send the prompt so far to the backend now (``await backend.acommit_lazy_operations``)."""
        async with self._operation("commit"):
            await self.backend.acommit_lazy_operations(self)

    async def __aenter__(self) -> AsyncProgramState:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()

    # ---------------------------------------------------------------------------- helpers

    @contextlib.asynccontextmanager
    async def _operation(self, label: str) -> AsyncIterator[None]:
        """One operation at a time; the state is marked busy (sync mutations raise) meanwhile."""
        async with self._op_lock:
            with self._mutating():
                self._streaming = f"{label} (in flight)"
            try:
                yield
            finally:
                with self._lock:
                    self._streaming = None
