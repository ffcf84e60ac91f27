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

Parameters (:func:`~providers.sampling.to_anthropic_kwargs`): ``max_tokens`` always, ``top_k`` only
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
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import time
from collections.abc import Iterator
from typing import Any

from .base import BaseBackend, make_meta_info
from .chat_template import ChatTemplate, get_chat_template_by_model_path
from .choices import ChoicesDecision, ChoicesSamplingMethod, match_choice, with_select_instruction
from .errors import ProviderError, register_secret
from .messages import chat_turns, parse_data_url
from .sampling import DTYPE_VALUE_KEY, SamplingParams, dtype_json_schema, format_dtype_value, to_anthropic_kwargs
from .sdk_errors import StreamGuard, import_sdk, translating
from .usage import TokenUsage

__all__ = ["Anthropic"]

TOOL_NAME = "structured_output"


class Anthropic(BaseBackend):
    """Claude models through the Messages API (see the module docstring)."""

    provider = "anthropic"

    def __init__(self, model_name: str, *, chat_template: ChatTemplate | None = None, **client_kwargs: Any) -> None:
        sdk = import_sdk("anthropic", "Anthropic")
        if not isinstance(model_name, str) or not model_name:
            raise ValueError("model_name must be a non-empty str")
        self.model_name = model_name
        for secret in (client_kwargs.get("api_key"), client_kwargs.get("auth_token")):
            if isinstance(secret, str):
                register_secret(secret)
        client_kwargs.setdefault("max_retries", 2)
        self.client = sdk.Anthropic(**client_kwargs)
        secrets = [getattr(self.client, "api_key", None), getattr(self.client, "auth_token", None)]
        if not any(isinstance(x, str) and x for x in secrets):
            raise ValueError("Anthropic: no API key; pass api_key= or set ANTHROPIC_API_KEY")
        self._secrets = tuple(x for x in secrets if isinstance(x, str))
        for x in self._secrets:
            register_secret(x)
        self.token_usage = TokenUsage()
        super().__init__(chat_template or get_chat_template_by_model_path(model_name))

    def get_model_name(self) -> str:
        return self.model_name

    def shutdown(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------------------ request

    def _messages(self, s: Any, extra_user: list[str] | None = None) -> tuple[dict[str, Any], str]:
        """``(request fields: system + messages, removed prefill whitespace)``."""
        messages, prefill = chat_turns(s, allow_prefill=True, backend=self.provider)
        if extra_user is not None:
            messages = with_select_instruction(messages, extra_user)
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
        # Newer SDK releases dropped some body fields (e.g. temperature/top_p/top_k) from create()'s
        # signature; whatever the installed SDK does not name travels in extra_body, unchanged.
        known = self._create_params()
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in known}
        if extra:
            kwargs["extra_body"] = {**kwargs.get("extra_body", {}), **extra}
        with translating(self.provider, self._secrets):
            return self.client.messages.create(model=self.model_name, **kwargs)

    def _create_params(self) -> frozenset[str]:
        params = getattr(type(self), "_sdk_params", None)
        if params is None:
            try:
                params = frozenset(inspect.signature(self.client.messages.create).parameters)
            except (TypeError, ValueError):
                params = frozenset()
            type(self)._sdk_params = params
        return params

    def _count(self, usage: Any) -> tuple[int | None, int | None, dict[str, Any]]:
        if usage is None:
            return None, None, {}
        cached = {k: getattr(usage, k, None) for k in ("cache_read_input_tokens", "cache_creation_input_tokens")}
        prompt = getattr(usage, "input_tokens", None)
        if prompt is not None:
            prompt += sum(v for v in cached.values() if isinstance(v, int))
        completion = getattr(usage, "output_tokens", None)
        self.token_usage.add(prompt, completion)
        return prompt, completion, {k: v for k, v in cached.items() if v}

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

    def _prepare(self, s: Any, params: SamplingParams) -> tuple[dict[str, Any], tuple[str, ...], str, Any]:
        kwargs, client_stops = to_anthropic_kwargs(params)
        fields, removed = self._messages(s)
        kwargs.update(fields)
        structured = None
        if params.json_schema is not None:
            tool, wrapped = self._tool(json.loads(params.json_schema))
            kwargs.update(tool)
            structured = ("json", wrapped)
        elif params.dtype is not None:
            tool, _ = self._tool(dtype_json_schema(params.dtype))
            kwargs.update(tool)
            structured = ("dtype", params.dtype)
        return kwargs, client_stops, removed, structured

    # ----------------------------------------------------------------------------- generate

    def generate(self, s: Any, sampling_params: SamplingParams) -> tuple[str, dict[str, Any]]:
        kwargs, client_stops, removed, structured = self._prepare(s, sampling_params)
        t0 = time.perf_counter()
        resp = self._create(**kwargs)
        latency = time.perf_counter() - t0
        prompt, completion, cached = self._count(resp.usage)
        finish = resp.stop_reason
        extra: dict[str, Any] = {"id": resp.id, **cached}
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
        return text, make_meta_info(model=resp.model or self.model_name, prompt_tokens=prompt,
                                    completion_tokens=completion, finish_reason=finish, latency=latency, **extra)

    def _structured_text(self, data: Any, structured: tuple[str, Any]) -> str:
        kind, arg = structured
        try:
            if kind == "dtype":
                return format_dtype_value(arg, data[DTYPE_VALUE_KEY])
            return json.dumps(data[DTYPE_VALUE_KEY] if arg else data, ensure_ascii=False)
        except (KeyError, TypeError, ValueError) as err:
            raise ProviderError(f"structured output did not fit the schema: {err}", provider=self.provider) from None

    def generate_stream(self, s: Any, sampling_params: SamplingParams) -> Iterator[tuple[str, dict[str, Any]]]:
        kwargs, client_stops, removed, structured = self._prepare(s, sampling_params)
        t0 = time.perf_counter()
        stream = self._create(stream=True, **kwargs)
        hold = max((len(x) for x in client_stops), default=1) - 1
        pending = ""  # text held back: it may be the start of a client-side stop
        guard = StreamGuard(self.provider, self._secrets)
        finish = None
        done = False
        usage_in = usage_out = None
        cached: dict[str, Any] = {}
        model, msg_id = self.model_name, None
        tool_json: list[str] = []
        extra: dict[str, Any] = {}
        strip_removed = removed
        with guard, contextlib.closing(stream):
            for event in stream:
                kind = event.type
                if kind == "message_start":
                    model = event.message.model or model
                    msg_id = event.message.id
                    usage_in = event.message.usage
                elif kind == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta" and structured is None:
                        piece = delta.text
                        if strip_removed:
                            if piece.startswith(strip_removed):
                                piece = piece[len(strip_removed):]
                            strip_removed = ""
                        pending += piece
                        cut = _first_stop(pending, client_stops)
                        if cut is not None:
                            out, pending = pending[:cut], ""
                            if out:
                                guard.delivered = True
                                yield out, {"model": model, "finish_reason": None}
                            finish, done = "stop_sequence", True
                            extra["stop_applied"] = "client"
                            break
                        ready = len(pending) - hold
                        if ready > 0:
                            out, pending = pending[:ready], pending[ready:]
                            guard.delivered = True
                            yield out, {"model": model, "finish_reason": None}
                    elif delta.type == "input_json_delta" and structured is not None:
                        tool_json.append(delta.partial_json)
                        if structured == ("json", False) and delta.partial_json:
                            guard.delivered = True
                            yield delta.partial_json, {"model": model, "finish_reason": None}
                elif kind == "message_delta":
                    finish = event.delta.stop_reason or finish
                    usage_out = event.usage
                elif kind == "message_stop":
                    done = True
        guard.require(done, "the stream ended without message_stop (cut off)")
        if pending:
            yield pending, {"model": model, "finish_reason": None}
        if structured is not None and structured != ("json", False):
            try:
                data = json.loads("".join(tool_json) or "{}")
            except ValueError as err:
                raise ProviderError(f"structured output is not JSON: {err}", provider=self.provider) from None
            yield self._structured_text(data, structured), {"model": model, "finish_reason": None}
        prompt = getattr(usage_in, "input_tokens", None)
        if prompt is not None:
            for k in ("cache_read_input_tokens", "cache_creation_input_tokens"):
                v = getattr(usage_in, k, None)
                if isinstance(v, int) and v:
                    prompt += v
                    cached[k] = v
        completion = getattr(usage_out, "output_tokens", None)
        self.token_usage.add(prompt, completion)
        yield "", make_meta_info(model=model, prompt_tokens=prompt, completion_tokens=completion, finish_reason=finish,
                                 latency=time.perf_counter() - t0, id=msg_id, **cached, **extra)

    # ------------------------------------------------------------------------------- select

    def select(
        self,
        s: Any,
        choices: list[str],
        temperature: float,
        choices_method: ChoicesSamplingMethod | None,
    ) -> ChoicesDecision:
        fields, _ = self._messages(s, extra_user=list(choices))
        kwargs, _ = to_anthropic_kwargs(SamplingParams(max_new_tokens=max(16, max(len(c) for c in choices) + 16),
                                                       temperature=temperature))
        t0 = time.perf_counter()
        resp = self._create(**kwargs, **fields)
        prompt, completion, cached = self._count(resp.usage)
        text = "".join(b.text for b in resp.content if b.type == "text")
        index, rule = match_choice(text, choices)
        meta = make_meta_info(model=resp.model or self.model_name, prompt_tokens=prompt, completion_tokens=completion,
                              finish_reason=resp.stop_reason, latency=time.perf_counter() - t0,
                              method="generate_and_match", generated=text, match=rule, requests=1,
                              requested_method=getattr(choices_method, "name", None), **cached)
        return ChoicesDecision(choices[index], meta)


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
