"""Anthropic backend (Claude), on the official ``anthropic`` SDK and its Messages API.

    backend = Anthropic("claude-sonnet-4-5")                      # key from ANTHROPIC_API_KEY
    backend = Anthropic("claude-haiku-4-5", api_key=..., base_url=..., timeout=30, max_retries=3)

``**client_kwargs`` go to ``anthropic.Anthropic`` unchanged.

Requests. ``messages_`` become Messages-API turns without touching the state (it is deep-copied):
``system`` turns are joined (blank line between) into the top-level ``system`` parameter, user and
assistant turns keep their order, images (``image_url`` data URLs) become base64 ``image`` blocks with
their MIME type. Text already written into the open assistant turn is sent as an assistant *prefill*
that the model continues; its trailing whitespace is not sent (the API rejects it) and, when the
reply starts with that same whitespace, it is dropped from the reply so nothing is doubled.

Parameters (:func:`to_anthropic_kwargs`): ``max_tokens`` always, ``top_k`` only
when set, no ``n`` (raises), frequency/presence penalties and ``min_p`` warn. Stop sequences that the
API rejects -- whitespace-only ones such as ``"\\n"`` -- are applied client-side: the request goes
without them and the output (streamed or not) is cut at their first occurrence, finish_reason
``"stop"``, ``meta_info["stop_applied"] == "client"``.

Structured output (``json_schema``, and ``dtype``): a forced tool call. The request carries one tool,
``structured_output``, whose ``input_schema`` is the schema (a non-object schema is wrapped in
``{"value": schema}`` and unwrapped again) and ``tool_choice`` names it, so the model must answer
with arguments valid for the schema; the text returned is that JSON. Tool use works on every Claude
model, which is why it was chosen over the newer ``output_format`` parameter.

``select`` -- ``"generate_and_match"``: the Messages API exposes neither logprobs nor logit bias,
so the backend asks for one of the listed choices and matches the answer (the generate-and-match
rules in ``providers/choices.py``).

Retries and timeouts: the SDK's machinery (``max_retries``, default 2; ``timeout``): exponential
backoff with jitter, ``Retry-After`` honoured, retried on 408/409/429/5xx/529 (overloaded),
connection errors and timeouts, never on other 4xx. Streams never restart after their first event;
an in-stream ``error`` event, a dropped connection or a stream without ``message_stop`` raise
:class:`~providers.errors.StreamInterruptedError` (or the mapped error if nothing was delivered).
``backend.token_usage`` sums ``input_tokens`` (cache reads and writes included) and ``output_tokens``.

Async: ``agenerate`` / ``agenerate_stream`` / ``aselect`` use ``anthropic.AsyncAnthropic`` made from
the same ``client_kwargs`` (one per event loop; ``http_client`` is for the sync client only -- pass
``async_http_client=`` for the async one): the same retries, timeouts and stream rules.

Provider options (``providers/options.py``): ``thinking`` (e.g. ``{"type": "enabled",
"budget_tokens": 2048}``, extended thinking) -> the body's ``thinking``; ``cache_control`` (e.g.
``{"type": "ephemeral"}`` or ``True``) -> a ``cache_control`` marker on the last content block of
the last message (the whole prompt up to it is cached; the usage then reports
``cache_creation_input_tokens`` / ``cache_read_input_tokens``); ``extra_headers`` -> HTTP headers
(e.g. ``anthropic-beta``); ``extra_query`` -> URL query; ``extra_body`` and every other name
(``metadata``, ``service_tier``...) -> the top-level body field of that name. Thinking blocks are
not part of the returned text: their text is ``meta_info["thinking"]``.

This module owns everything about the Messages API: parameters (:func:`to_anthropic_kwargs`), finish
reasons (:data:`FINISH_REASONS`) and the SDK's error quirks (:data:`ERRORS`: error events inside a
200 stream); the flow is :class:`~providers.api_backend.APIBackend`'s.
"""

from __future__ import annotations

import copy
import inspect
import json
from typing import Any

from .api_backend import APIBackend, Completion, StreamReader, StreamResult
from .chat_template import ChatTemplate
from .errors import ProviderError, register_secret
from .messages import chat_turns, parse_data_url
from .sampling import DTYPE_VALUE_KEY, SamplingParams, check_supported, dtype_json_schema, format_dtype_value
from .options import mark_last_block, refuse_overrides
from .sdk_errors import ErrorMap, import_sdk

__all__ = ["Anthropic", "FINISH_REASONS", "ERRORS", "to_anthropic_kwargs"]

TOOL_NAME = "structured_output"

#: The Messages API's stop reasons.
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                  "refusal": "content_filter", "pause_turn": "stop"}

#: Error types that arrive inside a 200 stream (``event: error``), as the HTTP status they stand for.
ERRORS = ErrorMap(stream_error_statuses={
    "invalid_request_error": 400, "authentication_error": 401, "permission_error": 403, "not_found_error": 404,
    "request_too_large": 413, "rate_limit_error": 429, "api_error": 500, "overloaded_error": 529})


class Anthropic(APIBackend):
    """Claude models through the Messages API (see the module docstring)."""

    provider = "anthropic"
    finish_reasons = FINISH_REASONS
    errors = ERRORS
    allows_prefill = True

    def __init__(self, model_name: str, *, chat_template: ChatTemplate | None = None, **client_kwargs: Any) -> None:
        sdk = import_sdk("anthropic", "Anthropic")
        if not isinstance(model_name, str) or not model_name:
            raise ValueError("model_name must be a non-empty str")
        for secret in (client_kwargs.get("api_key"), client_kwargs.get("auth_token")):
            if isinstance(secret, str):
                register_secret(secret)
        client_kwargs.setdefault("max_retries", 2)
        async_http_client = client_kwargs.pop("async_http_client", None)
        async_kwargs = {k: v for k, v in client_kwargs.items() if k != "http_client"}
        if async_http_client is not None:
            async_kwargs["http_client"] = async_http_client
        self._make_async_client = lambda: sdk.AsyncAnthropic(**async_kwargs)  # same settings, per event loop
        self.client = sdk.Anthropic(**client_kwargs)
        secrets = [getattr(self.client, "api_key", None), getattr(self.client, "auth_token", None)]
        if not any(isinstance(x, str) and x for x in secrets):
            raise ValueError("Anthropic: no API key; pass api_key= or set ANTHROPIC_API_KEY")
        self._secrets = tuple(x for x in secrets if isinstance(x, str))
        for x in self._secrets:
            register_secret(x)
        super().__init__(model_name, chat_template)

    def shutdown(self) -> None:
        self.client.close()

    def map_params(self, params: SamplingParams) -> dict[str, Any]:
        kwargs, client_stops = to_anthropic_kwargs(params)
        kwargs["client_stops"] = client_stops  # taken out again by _request
        return kwargs

    # ------------------------------------------------------------------------------ request

    def _messages(self, s: Any) -> tuple[dict[str, Any], str]:
        """``(request fields: system + messages, removed prefill whitespace)``."""
        messages, prefill = chat_turns(s, allow_prefill=True, backend=self.provider)
        system: list[str] = []
        turns: list[dict[str, Any]] = []
        for m in messages:
            if m["role"] == "system":
                system.append(_text_only(m["content"]))
                continue
            turns.append({"role": m["role"], "content": _blocks(m["content"])})
        removed = ""
        if prefill:
            stripped = prefill.rstrip()
            removed = prefill[len(stripped):]
            if stripped:
                turns.append({"role": "assistant", "content": stripped})
        fields: dict[str, Any] = {"messages": turns}
        if system:
            fields["system"] = "\n\n".join(system)
        return fields, removed

    def _create(self, **kwargs: Any):
        kwargs = self._sdk_kwargs(kwargs)
        return self.call(lambda: self.client.messages.create(model=self.model_name, **kwargs))

    async def _acreate(self, **kwargs: Any):
        kwargs = self._sdk_kwargs(kwargs)
        client = self._async_client()
        return await self.acall(lambda: client.messages.create(model=self.model_name, **kwargs))

    def _sdk_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        # Newer SDK releases dropped some body fields (e.g. temperature/top_p/top_k) from create()'s
        # signature; whatever the installed SDK does not name travels in extra_body, unchanged.
        known = self._create_params()
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in known}
        if extra:
            kwargs["extra_body"] = {**kwargs.get("extra_body", {}), **extra}
        return kwargs

    def _create_params(self) -> frozenset[str]:
        params = getattr(type(self), "_sdk_params", None)
        if params is None:
            try:
                params = frozenset(inspect.signature(self.client.messages.create).parameters)
            except (TypeError, ValueError):
                params = frozenset()
            type(self)._sdk_params = params
        return params

    @staticmethod
    def _usage(usage: Any) -> tuple[int | None, dict[str, Any]]:
        """``(prompt tokens with cache reads/writes, the cache counts that were non-zero)``."""
        cached = {k: getattr(usage, k, None) for k in ("cache_read_input_tokens", "cache_creation_input_tokens")}
        prompt = getattr(usage, "input_tokens", None)
        if prompt is not None:
            prompt += sum(v for v in cached.values() if isinstance(v, int))
        return prompt, {k: v for k, v in cached.items() if isinstance(v, int) and v}

    @staticmethod
    def _tool(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        wrapped = schema.get("type") != "object"
        input_schema = schema if not wrapped else {
            "type": "object", "properties": {DTYPE_VALUE_KEY: schema}, "required": [DTYPE_VALUE_KEY]}
        return {
            "tools": [{"name": TOOL_NAME, "description": "Return the answer as this tool's input.",
                       "input_schema": input_schema}],
            "tool_choice": {"type": "tool", "name": TOOL_NAME},
        }, wrapped

    def _request(self, s: Any, params: SamplingParams) -> dict[str, Any]:
        """``{"kwargs", "client_stops", "removed", "structured"}``."""
        kwargs = self.map_params(params)
        client_stops = kwargs.pop("client_stops")
        fields, removed = self._messages(s)
        kwargs.update(fields)
        options = self._options(params)
        structured = None
        if params.json_schema is not None:
            tool, wrapped = self._tool(json.loads(params.json_schema))
            kwargs.update(tool)
            structured = ("json", wrapped)
        elif params.dtype is not None:
            tool, _ = self._tool(dtype_json_schema(params.dtype))
            kwargs.update(tool)
            structured = ("dtype", params.dtype)
        apply_anthropic_options(kwargs, options)
        return {"kwargs": kwargs, "client_stops": client_stops, "removed": removed, "structured": structured}

    def _streams_whole(self, s: Any, params: SamplingParams) -> bool:
        return False  # the tool call's JSON streams; a dtype value arrives whole at its end

    # ----------------------------------------------------------------------------- generate

    def _complete(self, request: dict[str, Any], params: SamplingParams) -> Completion:
        return self._completion(self._create(**request["kwargs"]), request)

    async def _acomplete(self, request: dict[str, Any], params: SamplingParams) -> Completion:
        return self._completion(await self._acreate(**request["kwargs"]), request)

    def _completion(self, resp: Any, request: dict[str, Any]) -> Completion:
        prompt, cached = self._usage(resp.usage)
        finish = resp.stop_reason
        extra: dict[str, Any] = {"id": resp.id, **cached}
        structured, removed, client_stops = request["structured"], request["removed"], request["client_stops"]
        thinking = "".join(getattr(b, "thinking", "") or "" for b in resp.content if b.type == "thinking")
        if thinking:
            extra["thinking"] = thinking
        if structured is not None:
            data = next((b.input for b in resp.content if b.type == "tool_use"), None)
            if data is None:
                raise ProviderError("the model did not return the structured output tool call", provider=self.provider)
            text = self._structured_text(data, structured)
        else:
            text = "".join(b.text for b in resp.content if b.type == "text")
            if removed and text.startswith(removed):
                text = text[len(removed):]
            cut = _first_stop(text, client_stops)
            if cut is not None:
                text, finish = text[:cut], "stop_sequence"
                extra["stop_applied"] = "client"
            if resp.stop_sequence:
                extra["matched_stop"] = resp.stop_sequence
        return Completion(texts=[text], finish_reasons=[finish], prompt_tokens=prompt,
                          completion_tokens=getattr(resp.usage, "output_tokens", None), model=resp.model,
                          extra=extra)

    def _structured_text(self, data: Any, structured: tuple[str, Any]) -> str:
        kind, arg = structured
        try:
            if kind == "dtype":
                return format_dtype_value(arg, data[DTYPE_VALUE_KEY])
            return json.dumps(data[DTYPE_VALUE_KEY] if arg else data, ensure_ascii=False)
        except (KeyError, TypeError, ValueError) as err:
            raise ProviderError(f"structured output did not fit the schema: {err}", provider=self.provider) from None

    def _open_stream(self, request: dict[str, Any], params: SamplingParams):
        return self._create(stream=True, **request["kwargs"])

    async def _aopen_stream(self, request: dict[str, Any], params: SamplingParams):
        return await self._acreate(stream=True, **request["kwargs"])

    def _stream_reader(self, request: dict[str, Any], params: SamplingParams, out: StreamResult) -> StreamReader:
        return _EventReader(self, request, out)


class _EventReader(StreamReader):
    """Messages-API stream events -> text deltas (client-side stops held back, the tool call's JSON)."""

    def __init__(self, backend: Anthropic, request: dict[str, Any], out: StreamResult) -> None:
        self.backend = backend
        self.structured, self.client_stops = request["structured"], request["client_stops"]
        self.out = out
        out.complete = False
        out.cut_message = "the stream ended without message_stop (cut off)"
        self.hold = max((len(x) for x in self.client_stops), default=1) - 1
        self.pending = ""  # text held back: it may be the start of a client-side stop
        self.tool_json: list[str] = []
        self.strip_removed = request["removed"]

    def feed(self, event: Any) -> list[str]:
        out, structured = self.out, self.structured
        kind = event.type
        deltas: list[str] = []
        if kind == "message_start":
            out.model = event.message.model or out.model
            out.extra["id"] = event.message.id
            out.prompt_tokens, cached = self.backend._usage(event.message.usage)
            out.extra.update(cached)
        elif kind == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta" and structured is None:
                piece = delta.text
                if self.strip_removed:
                    if piece.startswith(self.strip_removed):
                        piece = piece[len(self.strip_removed):]
                    self.strip_removed = ""
                self.pending += piece
                cut = _first_stop(self.pending, self.client_stops)
                if cut is not None:
                    deltas.append(self.pending[:cut])
                    self.pending = ""
                    out.finish_reason, out.complete = "stop_sequence", True
                    out.extra["stop_applied"] = "client"
                    self.done = True
                    return deltas
                ready = len(self.pending) - self.hold
                if ready > 0:
                    deltas.append(self.pending[:ready])
                    self.pending = self.pending[ready:]
            elif delta.type == "thinking_delta":
                out.extra["thinking"] = out.extra.get("thinking", "") + delta.thinking
            elif delta.type == "input_json_delta" and structured is not None:
                self.tool_json.append(delta.partial_json)
                if structured == ("json", False) and delta.partial_json:
                    deltas.append(delta.partial_json)
        elif kind == "message_delta":
            out.finish_reason = event.delta.stop_reason or out.finish_reason
            out.completion_tokens = getattr(event.usage, "output_tokens", None)
        elif kind == "message_stop":
            out.complete = True
        return deltas

    def end(self) -> list[str]:
        if not self.out.complete:
            return []  # the base raises: cut off
        deltas = [self.pending] if self.pending else []
        if self.structured is not None and self.structured != ("json", False):
            try:
                data = json.loads("".join(self.tool_json) or "{}")
            except ValueError as err:
                raise ProviderError(f"structured output is not JSON: {err}", provider=self.backend.provider) from None
            deltas.append(self.backend._structured_text(data, self.structured))
        return deltas


# ------------------------------------------------------------------------------ parameter mapping


def to_anthropic_kwargs(params: SamplingParams) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``(kwargs for messages.create, client_side_stops)``.

    ``max_tokens`` is always sent (the API requires it); ``top_k`` only when set. The Messages API
    has no ``n``, no frequency/presence penalties, no ``min_p`` and no logprobs: ``n``/logprobs raise,
    the knobs warn. Stop sequences the API rejects -- whitespace-only ones such as ``"\\n"`` -- are not
    sent but returned as ``client_side_stops``: the backend cuts the output at their first occurrence
    (finish_reason ``"stop"``), which is what a server-side stop would have returned. ``json_schema``
    is handled by the backend (a forced tool call, see ``providers/anthropic.py``).
    """
    supported = {"stop", "temperature", "top_p", "top_k", "json_schema", "dtype"}
    chosen = check_supported(params, "anthropic", supported)
    kwargs: dict[str, Any] = {"max_tokens": params.max_new_tokens}
    for name in ("temperature", "top_p", "top_k"):
        if name in chosen:
            kwargs[name] = chosen[name]
    client_stops: tuple[str, ...] = ()
    if "stop" in chosen:
        server = [s for s in chosen["stop"] if s.strip()]
        client_stops = tuple(s for s in chosen["stop"] if not s.strip())
        if server:
            kwargs["stop_sequences"] = server
    return kwargs, client_stops



def apply_anthropic_options(kwargs: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` (for ``messages.create``) with the provider options placed, in place (see the
    module docstring); a name the backend already sets raises ``ValueError``."""
    if not options:
        return kwargs
    options = dict(options)
    marker = options.pop("cache_control", None)
    refuse_overrides("anthropic", {**options.get("extra_body", {}), **options},
                     set(kwargs) | {"model", "stream", "messages", "system"})
    if marker is not None:
        mark_last_block(kwargs["messages"], marker, provider="anthropic")
    kwargs.update(options)
    return kwargs


# ------------------------------------------------------------------------------------ helpers


def _text_only(content: Any) -> str:
    if isinstance(content, str):
        return content
    if any(p.get("type") != "text" for p in content):
        raise ValueError("anthropic: a system turn can hold text only (no images)")
    return "".join(p.get("text", "") for p in content)


def _blocks(content: Any) -> Any:
    if isinstance(content, str):
        return content
    blocks: list[dict[str, Any]] = []
    for part in copy.deepcopy(content):
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            mime, data = parse_data_url(part["image_url"]["url"])
            blocks.append({"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}})
        else:
            raise ValueError(f"anthropic: unsupported content part {part.get('type')!r}")
    return blocks


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(x) for x in stops if x and text.find(x) >= 0]
    return min(hits) if hits else None
