"""The shared base of the SDK-backed backends: the flow every API provider has, written once.

A provider module (``openai.py``, ``anthropic.py``, ``litellm.py``, ``vertexai.py``, or a third
party's) subclasses :class:`APIBackend` and supplies only what is about its API:

* class attributes -- ``provider`` (the name in errors and in the registry), ``finish_reasons`` (the
  API's finish reasons mapped onto the uniform vocabulary of ``base.py``), ``errors`` (an
  :class:`~providers.sdk_errors.ErrorMap` with the SDK's exception quirks), ``allows_prefill``
  (whether the API continues a partial assistant turn), ``select_method`` (the name ``select``
  reports);
* ``map_params(params)`` -- :class:`~providers.sampling.SamplingParams` to the API's parameters,
  applying :func:`~providers.sampling.check_supported` (the one place options are validated);
* ``_request(s, params)`` -- the request for a state (messages, images, parameters). It runs before
  any network call, so a bad program raises ``ValueError`` here, never a provider error;
* ``_complete(request, params)`` -> :class:`Completion` -- send it, read the answer;
* ``_stream(request, params, out)`` -- send it streaming and yield text deltas, filling ``out``
  (:class:`StreamResult`: finish reason, usage, model, extras) as the events arrive.

The base owns the rest: ``generate`` (one text, or a list for ``n > 1`` with per-choice meta_info),
``generate_stream`` (deltas, then one final item whose meta_info is complete), ``select`` by
generate-and-match, token usage, the final ``meta_info`` (:meth:`APIBackend.meta`) and the retry and
error rules:

* ``retry = None`` -- the SDK retries the request itself (OpenAI, Anthropic: configured through its
  ``max_retries``); the base only translates exceptions and guards streams
  (:class:`~providers.sdk_errors.StreamGuard`: after the first delta a failure is a
  :class:`~providers.errors.StreamInterruptedError`, never a restart);
* ``retry = RetryPolicy(...)`` -- the SDK's retries are off and the base retries
  (:meth:`RetryPolicy.call`, and :meth:`RetryPolicy.stream` before the first delta).

Either way the rule for *what* is retried is the one in ``errors.py``.

Async. Every operation has an async twin -- ``agenerate``, ``agenerate_stream`` (an async iterator),
``aselect`` -- on the SDK's async client (``_async_client()``: one per event loop, made by the
provider's ``_make_async_client``), following the same flow: the operations are written once as
plans (``providers/plan.py``) whose requests are ``_complete`` / ``_acomplete`` (and the provider's
own, e.g. OpenAI's ``_create`` / ``_acreate``); streams are read by one
:class:`StreamReader` per request whatever the transport (``_open_stream`` / ``_aopen_stream`` give
the SDK's stream of events); retries are :meth:`RetryPolicy.acall` / :meth:`RetryPolicy.astream` or
the async SDK's own, with the same settings. Cancelling a task during a stream closes the SDK's
response (the connection is released, nothing is retried). ``await backend.aclose()`` closes the
async client of the running loop.

Provider options (``providers/options.py``): ``_options(params)`` is the backend's
``provider_options`` overlaid with the call's; each provider module places them in its request
(``_request``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .base import BaseBackend, make_meta_info
from .chat_template import ChatTemplate, get_chat_template_by_model_path
from .choices import ChoicesDecision, match_choice, method_name, with_select_instruction
from .errors import ProviderError, UnsupportedOperationError
from .messages import chat_turns
from .options import merge_provider_options
from .plan import Plan, arun, call, run
from .retry import RetryPolicy, _aclose, _close
from .sampling import SamplingParams, check_supported
from .sdk_errors import GENERIC, ErrorMap, StreamGuard, translating
from .usage import TokenUsage

__all__ = ["APIBackend", "Completion", "StreamResult", "StreamReader"]

T = TypeVar("T")


@dataclass
class Completion:
    """What one non-streaming request returned, before it becomes ``(text, meta_info)``.

    ``texts`` / ``finish_reasons`` / ``choice_extra`` -- one entry per choice, in order;
    ``extra`` -- meta_info keys of the whole response (``id``, ``cached_tokens``...).
    """

    texts: list[str]
    finish_reasons: list[Any]
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    choice_extra: list[dict[str, Any]] | None = None


@dataclass
class StreamResult:
    """Filled in by a provider's ``_stream`` as events arrive; read by the base when it ends.

    ``complete`` -- whether the stream reached its terminal event; None means "it did when a finish
    reason arrived" (most APIs). A stream that ends incomplete raises (see the module docstring).
    """

    model: str | None = None
    finish_reason: Any = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    complete: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    cut_message: str = "the stream ended without a finish reason (cut off)"

    @property
    def ended(self) -> bool:
        return self.complete if self.complete is not None else self.finish_reason is not None


class StreamReader:
    """Turns one request's stream events into text deltas, the same for the sync and async paths.

    A provider returns one from ``_stream_reader(request, params, out)``; the base feeds it every
    event (``feed`` returns the deltas the event completes), stops reading when ``done`` turns true,
    and calls ``end()`` once the events ran out (it returns any deltas held back). Errors raised in
    ``feed``/``end`` follow the stream rules (before/after the first delta).
    """

    done: bool = False

    def feed(self, event: Any) -> Iterable[str]:
        return ()

    def end(self) -> Iterable[str]:
        return ()


class _SelectView:
    """A state seen with the select instruction added (what generate-and-match sends)."""

    def __init__(self, s: Any, choices: Sequence[str], *, allow_prefill: bool, provider: str) -> None:
        messages, prefill = chat_turns(s, allow_prefill=allow_prefill, backend=provider)
        self.messages_ = with_select_instruction(messages, choices)
        self.images_ = list(getattr(s, "images_", []))
        self.cur_images: list[Any] = []
        self.backend_data = getattr(s, "backend_data", {})
        self.variables = getattr(s, "variables", {})
        self.meta_info = getattr(s, "meta_info", {})
        self.sid = getattr(s, "sid", "")
        if prefill:
            self.text_, self.cur_role, self.cur_role_begin_pos = prefill, "assistant", 0
        else:
            self.text_, self.cur_role, self.cur_role_begin_pos = s.text_, None, 0


class APIBackend(BaseBackend):
    """The base of an SDK-backed provider (see the module docstring)."""

    provider: str = "api"
    finish_reasons: Mapping[str, str] = {}
    errors: ErrorMap = GENERIC
    allows_prefill: bool = False
    select_method: str = "generate_and_match"
    #: SGLang's frontend reads it to pick its speculative-execution path: True sends fills and gens to
    #: ``spec_fill``/``role_end_generate`` (only OpenAI chat models implement them), False speculates
    #: through plain ``generate`` calls.
    is_chat_model: bool = False
    #: None: the SDK retries (configured through it); else the policy the base retries with.
    retry: RetryPolicy | None = None

    def __init__(self, model_name: str, chat_template: ChatTemplate | None = None) -> None:
        if not isinstance(model_name, str) or not model_name:
            raise ValueError("model_name must be a non-empty str")
        self.model_name = model_name
        self.token_usage = TokenUsage()
        if not hasattr(self, "_secrets"):
            self._secrets: tuple[str, ...] = ()
        super().__init__(chat_template or get_chat_template_by_model_path(model_name))

    # -------------------------------------------------------------------------- provider hooks

    def map_params(self, params: SamplingParams) -> dict[str, Any]:
        """The API's request parameters for ``params`` (override; the default accepts nothing but
        ``max_new_tokens``)."""
        check_supported(params, self.provider, ())
        return {"max_new_tokens": params.max_new_tokens}

    def _request(self, s: Any, params: SamplingParams) -> Any:
        raise NotImplementedError

    def _complete(self, request: Any, params: SamplingParams) -> Completion:
        raise NotImplementedError

    def _stream(self, request: Any, params: SamplingParams, out: StreamResult) -> Iterator[str]:
        """Text deltas of one streamed request: the events of ``_open_stream`` through the
        provider's :class:`StreamReader` (override both, or this whole method)."""
        reader = self._stream_reader(request, params, out)
        stream = self._open_stream(request, params)
        try:
            for event in stream:
                yield from reader.feed(event)
                if reader.done:
                    break
        finally:
            _close(stream)
        yield from reader.end()

    async def _astream(self, request: Any, params: SamplingParams, out: StreamResult) -> AsyncIterator[str]:
        """The async twin of :meth:`_stream` (``_aopen_stream`` through the same reader). The SDK's
        stream is closed on every exit -- end, error, ``break`` or task cancellation."""
        reader = self._stream_reader(request, params, out)
        stream = await self._aopen_stream(request, params)
        try:
            async for event in stream:
                for delta in reader.feed(event):
                    yield delta
                if reader.done:
                    break
        finally:
            await _aclose(stream)
        for delta in reader.end():
            yield delta

    def _stream_reader(self, request: Any, params: SamplingParams, out: StreamResult) -> StreamReader:
        raise NotImplementedError

    def _open_stream(self, request: Any, params: SamplingParams) -> Iterable[Any]:
        """The SDK's stream of events for ``request`` (errors translated by :meth:`call`)."""
        raise NotImplementedError

    async def _aopen_stream(self, request: Any, params: SamplingParams) -> AsyncIterator[Any]:
        self._no_async("generate_stream")

    async def _acomplete(self, request: Any, params: SamplingParams) -> Completion:
        """The async twin of :meth:`_complete`."""
        self._no_async("generate")

    def _no_async(self, operation: str):
        raise UnsupportedOperationError(f"{type(self).__name__} has no async {operation}", provider=self.provider)

    def _streams_whole(self, s: Any, params: SamplingParams) -> bool:
        """Whether a stream of ``params`` is one delta (a constrained value is decided whole)."""
        return params.dtype is not None

    # --------------------------------------------------------------------------- shared pieces

    def get_model_name(self) -> str:
        return self.model_name

    def _params(self, sampling_params: Any) -> SamplingParams:
        """Ours, or SGLang's ``SglSamplingParams`` (:meth:`SamplingParams.coerce`)."""
        return SamplingParams.coerce(sampling_params)

    def translating(self):
        """Context manager: SDK exceptions inside become :class:`ProviderError` (redacted)."""
        return translating(self.provider, self._secrets, self.errors)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` (one SDK request) with exceptions translated, retried when ``self.retry`` is set."""

        def once() -> T:
            with self.translating():
                return fn()

        return once() if self.retry is None else self.retry.call(once)

    async def acall(self, fn: Callable[[], Awaitable[T]]) -> T:
        """The async twin of :meth:`call`: ``await fn()`` translated, retried when ``self.retry`` is set."""

        async def once() -> T:
            with self.translating():
                return await fn()

        return await once() if self.retry is None else await self.retry.acall(once)

    def _options(self, params: SamplingParams) -> dict[str, Any]:
        """The provider options of one request: the backend's, overlaid with the call's."""
        return merge_provider_options(self.provider_options, params.provider_options)

    def meta(self, *, latency: float, model: str | None = None, prompt_tokens: int | None = None,
             completion_tokens: int | None = None, finish_reason: Any = None, **extra: Any) -> dict[str, Any]:
        """The uniform meta_info, with this provider's finish reasons."""
        return make_meta_info(model=model or self.model_name, prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens, finish_reason=finish_reason, latency=latency,
                              finish_reasons=self.finish_reasons, **extra)

    def result(self, c: Completion, latency: float, n: int) -> tuple[Any, dict[str, Any]]:
        """``(text, meta_info)`` (``n == 1``) or ``(texts, meta_info with "choices")``; counts usage."""
        self.token_usage.add(c.prompt_tokens, c.completion_tokens)
        model = c.model or self.model_name
        extras = c.choice_extra or [{} for _ in c.texts]
        if n == 1:
            finish = c.finish_reasons[0] if c.finish_reasons else None
            return (c.texts[0] if c.texts else ""), self.meta(
                model=model, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                finish_reason=finish, latency=latency, **c.extra, **(extras[0] if extras else {}))
        per = [self.meta(model=model, prompt_tokens=c.prompt_tokens, completion_tokens=None, finish_reason=f,
                         latency=latency, **x) for f, x in zip(c.finish_reasons, extras)]
        return list(c.texts), self.meta(
            model=model, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
            finish_reason=c.finish_reasons[0] if c.finish_reasons else None, latency=latency, choices=per, **c.extra)

    # ------------------------------------------------------------------------------ operations

    def generate(self, s: Any, sampling_params: Any) -> tuple[Any, dict[str, Any]]:
        params = self._params(sampling_params)
        return self._generate(s, params)

    async def agenerate(self, s: Any, sampling_params: Any) -> tuple[Any, dict[str, Any]]:
        """The async twin of :meth:`generate`."""
        params = self._params(sampling_params)
        return await arun(self, self._generate_plan(s, params))

    def _generate(self, s: Any, params: SamplingParams) -> tuple[Any, dict[str, Any]]:
        return run(self, self._generate_plan(s, params))

    def _generate_plan(self, s: Any, params: SamplingParams) -> Plan:
        """generate as a plan (``providers/plan.py``): one ``_complete`` request."""
        request = self._request(s, params)
        t0 = time.perf_counter()
        completion = yield call("_complete", request, params)
        return self.result(completion, time.perf_counter() - t0, params.n)

    def generate_stream(self, s: Any, sampling_params: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        params = self._params(sampling_params)
        if params.n != 1:
            raise ValueError(f"{self.provider}: generate_stream streams one continuation; n must be 1")
        if self._streams_whole(s, params):
            return self._whole_stream(s, params)
        request = self._request(s, params)
        return self._stream_flow(request, params)

    def agenerate_stream(self, s: Any, sampling_params: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The async twin of :meth:`generate_stream`: an async iterator of ``(delta, meta_info)``
        (arguments are checked, and the request built, when it is called)."""
        params = self._params(sampling_params)
        if params.n != 1:
            raise ValueError(f"{self.provider}: generate_stream streams one continuation; n must be 1")
        if self._streams_whole(s, params):
            return self._awhole_stream(s, params)
        request = self._request(s, params)
        return self._astream_flow(request, params)

    def _whole_stream(self, s: Any, params: SamplingParams) -> Iterator[tuple[str, dict[str, Any]]]:
        yield self._generate(s, params)

    async def _awhole_stream(self, s: Any, params: SamplingParams) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        yield await arun(self, self._generate_plan(s, params))

    def _delta_meta(self, out: StreamResult) -> dict[str, Any]:
        return {"model": out.model or self.model_name, "finish_reason": None}

    def _stream_end(self, out: StreamResult, t0: float) -> tuple[str, dict[str, Any]]:
        """The last item of a stream: no text, the complete meta_info (usage counted)."""
        self.token_usage.add(out.prompt_tokens, out.completion_tokens)
        return "", self.meta(model=out.model, prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                             finish_reason=out.finish_reason, latency=time.perf_counter() - t0, **out.extra)

    def _stream_flow(self, request: Any, params: SamplingParams) -> Iterator[tuple[str, dict[str, Any]]]:
        t0 = time.perf_counter()
        out = StreamResult(model=self.model_name)

        def deltas() -> Iterator[tuple[str, dict[str, Any]]]:
            with contextlib.closing(self._stream(request, params, out)) as stream:
                for delta in stream:
                    if delta:
                        yield delta, self._delta_meta(out)

        if self.retry is None:
            guard = StreamGuard(self.provider, self._secrets, self.errors)
            with guard:
                for item in deltas():
                    guard.delivered = True
                    yield item
            guard.require(out.ended, out.cut_message)
        else:
            def attempt() -> Iterator[tuple[str, dict[str, Any]]]:
                fresh = StreamResult(model=self.model_name)
                out.__dict__.update(fresh.__dict__)
                with self.translating():
                    yield from deltas()
                if not out.ended:
                    raise ProviderError(out.cut_message, provider=self.provider)

            yield from self.retry.stream(attempt, provider=self.provider)
        yield self._stream_end(out, t0)

    async def _astream_flow(self, request: Any, params: SamplingParams) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The async twin of :meth:`_stream_flow`: the same guard / retry rules."""
        t0 = time.perf_counter()
        out = StreamResult(model=self.model_name)

        async def deltas() -> AsyncIterator[tuple[str, dict[str, Any]]]:
            stream = self._astream(request, params, out)
            try:
                async for delta in stream:
                    if delta:
                        yield delta, self._delta_meta(out)
            finally:
                await stream.aclose()

        if self.retry is None:
            guard = StreamGuard(self.provider, self._secrets, self.errors)
            with guard:
                items = deltas()
                try:
                    async for item in items:
                        guard.delivered = True
                        yield item
                finally:
                    await items.aclose()
            guard.require(out.ended, out.cut_message)
        else:
            async def attempt() -> AsyncIterator[tuple[str, dict[str, Any]]]:
                fresh = StreamResult(model=self.model_name)
                out.__dict__.update(fresh.__dict__)
                items = deltas()
                try:
                    with self.translating():
                        async for item in items:
                            yield item
                finally:
                    await items.aclose()
                if not out.ended:
                    raise ProviderError(out.cut_message, provider=self.provider)

            stream = self.retry.astream(attempt, provider=self.provider)
            try:
                async for item in stream:
                    yield item
            finally:
                await stream.aclose()
        yield self._stream_end(out, t0)

    def select(self, s: Any, choices: Sequence[str], temperature: float, choices_method: Any) -> ChoicesDecision:
        return self._select(s, _checked_choices(choices), temperature, choices_method)

    async def aselect(self, s: Any, choices: Sequence[str], temperature: float, choices_method: Any) -> ChoicesDecision:
        """The async twin of :meth:`select`."""
        return await arun(self, self._select_plan(s, _checked_choices(choices), temperature, choices_method))

    def _select(self, s: Any, choices: list[str], temperature: float, choices_method: Any) -> ChoicesDecision:
        return run(self, self._select_plan(s, choices, temperature, choices_method))

    def _select_plan(self, s: Any, choices: list[str], temperature: float, choices_method: Any) -> Plan:
        """Generate and match: ask for one of the choices, map the answer (``choices.match_choice``)."""
        params = SamplingParams(max_new_tokens=max(16, max(len(c) for c in choices) + 16), temperature=temperature)
        request = self._select_request(s, choices, params)
        t0 = time.perf_counter()
        completion = yield call("_complete", request, params)
        text, meta = self.result(completion, time.perf_counter() - t0, 1)
        index, rule = match_choice(text, choices)
        meta.update(method=self.select_method, generated=text, match=rule, requests=1,
                    requested_method=method_name(choices_method))
        return ChoicesDecision(choices[index], meta)

    def _select_request(self, s: Any, choices: list[str], params: SamplingParams) -> Any:
        """The request of generate-and-match: the state with the select instruction added."""
        view = _SelectView(s, choices, allow_prefill=self.allows_prefill, provider=self.provider)
        return self._request(view, params)


def _checked_choices(choices: Any) -> list[str]:
    if isinstance(choices, str) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("choices must be a non-empty list of non-empty str")
    return list(choices)
