"""LiteLLM backend: any model litellm can route to, through ``litellm.completion``.

    backend = LiteLLM("openai/gpt-4o-mini")
    backend = LiteLLM("anthropic/claude-haiku-4-5", api_key=...)
    backend = LiteLLM("openai/my-model", base_url="http://127.0.0.1:8000/v1", api_key="...")

``api_key``, ``organization``, ``base_url``, ``timeout`` (seconds, default 600) and
``default_headers`` (sent as ``extra_headers``) go to every ``litellm.completion`` call; without them
litellm reads its usual environment variables. Requests are OpenAI-format ``messages_`` (images as
``image_url`` parts; litellm translates them for the target provider); text already written into the
open assistant turn is an error, as for OpenAI. Parameters: :func:`to_litellm_kwargs`
-- OpenAI names, ``json_schema`` -> ``response_format`` (litellm maps it to the provider's structured
output), ``top_k`` passed through (litellm raises for providers without it). ``dtype`` uses the same
one-field structured output as the OpenAI chat path.

Retries: litellm's behaviour differs by provider (some clients retry, some do not, ``Retry-After``
is not always read), so this backend turns litellm's and the inner client's retries off
(``num_retries=0``, ``max_retries=0``) and retries with :class:`~providers.retry.RetryPolicy`:
``max_retries`` (default 2 when ``None``) retries by the one rule of ``errors.py`` (connection errors,
timeouts, 408/409/429/5xx) with exponential backoff + jitter and ``Retry-After`` honoured; never on
other 4xx. A stream is retried
only before its first chunk; after it a failure or a stream that ends without a finish reason raises
:class:`~providers.errors.StreamInterruptedError`. Pass ``retry_policy=`` for other delays.

A stream that a proxy closes *cleanly* before its finish reason is an interruption too: litellm
>= 1.109 reports it (``MidStreamFallbackError``) and this backend raises ``StreamInterruptedError``;
litellm <= 1.108 synthesized ``finish_reason="stop"`` for it, so behind those versions only broken
connections can be told from a finished stream. Offline, set ``LITELLM_LOCAL_MODEL_COST_MAP=True``
before importing litellm, or it tries to download its model price map on import.

``select`` -- ``"generate_and_match"`` (see ``providers/choices.py``): portable across every provider
litellm reaches, logprobs or not. ``backend.token_usage`` sums the usage litellm reports.

Async: ``agenerate`` / ``agenerate_stream`` / ``aselect`` call ``litellm.acompletion`` (litellm's
async clients) with the same arguments, retried by the same policy with ``asyncio.sleep``.

Provider options (``providers/options.py``) are keyword arguments of ``litellm.completion``:
``reasoning_effort``, ``thinking``, ``extra_body``, ``extra_headers`` (merged over
``default_headers``) and any other name go as they are -- litellm maps them to the target provider's
request (for an OpenAI-compatible target: the body field of that name; ``extra_body`` merged into
the body; ``extra_headers`` the HTTP headers); ``cache_control`` -> a ``cache_control`` marker on the
last content part of the last message, litellm's form for Anthropic prompt caching; ``extra_query``
raises (litellm has no query passthrough: it would send the dict as a body field). The option names
are also passed as ``allowed_openai_params``, so litellm sends them rather than refusing a name it
believes the target model lacks.

This module owns everything about litellm: parameters (:func:`to_litellm_kwargs`, OpenAI names),
finish reasons (OpenAI's) and the SDK's error quirks (:data:`ERRORS`: the real response headers are
kept in ``litellm_response_headers``); the flow is :class:`~providers.api_backend.APIBackend`'s.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .api_backend import APIBackend, Completion, StreamReader, StreamResult
from .chat_template import ChatTemplate
from .errors import Secret, UnsupportedParameterError
from .messages import chat_turns
from .openai import FINISH_REASONS, OPENAI_COMMON, OpenAIChunkReader, openai_style_kwargs, openai_usage_extra
from .options import mark_last_block, refuse_overrides
from .retry import RetryPolicy
from .sampling import SamplingParams, check_supported, dtype_json_schema, parse_dtype_output
from .sdk_errors import ErrorMap, import_sdk

__all__ = ["LiteLLM", "ERRORS", "to_litellm_kwargs"]

#: litellm attaches a synthetic response without headers and keeps the real ones aside.
ERRORS = ErrorMap(header_attrs=("litellm_response_headers",))


class LiteLLM(APIBackend):
    """Models behind ``litellm.completion`` (see the module docstring)."""

    provider = "litellm"
    finish_reasons = FINISH_REASONS
    errors = ERRORS

    def __init__(
        self,
        model_name: str,
        chat_template: ChatTemplate | None = None,
        api_key: str | None = None,
        organization: str | None = None,
        base_url: str | None = None,
        timeout: float | None = 600,
        max_retries: int | None = None,
        default_headers: dict[str, str] | None = None,
        *,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self._litellm = import_sdk("litellm", "LiteLLM")
        policy = retry_policy or RetryPolicy()
        if max_retries is not None:
            policy = dataclasses.replace(policy, max_retries=max_retries)
        self.retry = policy
        self._api_key = Secret(api_key) if api_key else None  # registered for redaction; hidden from repr
        self._fixed: dict[str, Any] = {"num_retries": 0, "max_retries": 0}
        if organization:
            self._fixed["organization"] = organization
        if base_url:
            self._fixed["base_url"] = base_url
        if timeout is not None:
            self._fixed["timeout"] = timeout
        if default_headers:
            self._fixed["extra_headers"] = dict(default_headers)
        super().__init__(model_name, chat_template)

    def map_params(self, params: SamplingParams) -> dict[str, Any]:
        return to_litellm_kwargs(params)

    def _call_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        call = dict(self._fixed, **kwargs)
        if "extra_headers" in self._fixed and "extra_headers" in kwargs:
            call["extra_headers"] = {**self._fixed["extra_headers"], **kwargs["extra_headers"]}
        if self._api_key is not None:
            call["api_key"] = self._api_key.get()
        return call

    def _completion_call(self, **kwargs: Any) -> Any:
        return self._litellm.completion(model=self.model_name, **self._call_kwargs(kwargs))

    async def _acompletion_call(self, **kwargs: Any) -> Any:
        return await self._litellm.acompletion(model=self.model_name, **self._call_kwargs(kwargs))

    def _request(self, s: Any, params: SamplingParams) -> dict[str, Any]:
        kwargs = self.map_params(params)
        if params.dtype is not None:
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": f"{params.dtype}_value", "schema": dtype_json_schema(params.dtype), "strict": True}}
        kwargs["messages"], _ = chat_turns(s, allow_prefill=False, backend=self.provider)
        return apply_litellm_options(kwargs, self._options(params), fixed=self._fixed)

    def _complete(self, request: dict[str, Any], params: SamplingParams) -> Completion:
        return self._completion(self.call(lambda: self._completion_call(**request)), params)

    async def _acomplete(self, request: dict[str, Any], params: SamplingParams) -> Completion:
        return self._completion(await self.acall(lambda: self._acompletion_call(**request)), params)

    def _completion(self, resp: Any, params: SamplingParams) -> Completion:
        usage = getattr(resp, "usage", None)
        choices = sorted(resp.choices, key=lambda c: c.index)
        texts = [c.message.content or "" for c in choices]
        if params.dtype is not None:
            texts = [parse_dtype_output(params.dtype, t, provider=self.provider) for t in texts]
        return Completion(texts=texts, finish_reasons=[c.finish_reason for c in choices],
                          prompt_tokens=getattr(usage, "prompt_tokens", None),
                          completion_tokens=getattr(usage, "completion_tokens", None),
                          model=getattr(resp, "model", None),
                          extra={"id": getattr(resp, "id", None), **openai_usage_extra(usage)})

    def _open_stream(self, request: dict[str, Any], params: SamplingParams):
        return self._completion_call(stream=True, stream_options={"include_usage": True}, **request)

    async def _aopen_stream(self, request: dict[str, Any], params: SamplingParams):
        return await self._acompletion_call(stream=True, stream_options={"include_usage": True}, **request)

    def _stream_reader(self, request: dict[str, Any], params: SamplingParams, out: StreamResult) -> StreamReader:
        return OpenAIChunkReader(out, chat=True)


# ------------------------------------------------------------------------------ parameter mapping


def to_litellm_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Keyword arguments for ``litellm.completion`` (OpenAI-style names; litellm translates them).

    The OpenAI chat mapping plus ``top_k``, which is passed through (litellm forwards it to providers
    that have it and raises its own error for those that do not -- nothing is dropped silently);
    ``min_p`` warns and is not sent. ``json_schema`` -> ``response_format`` as for OpenAI (litellm
    maps it to each provider's structured output).
    """
    chosen = check_supported(params, "litellm", set(OPENAI_COMMON) | {"json_schema", "top_k"})
    return openai_style_kwargs(params, chosen, limit_key="max_tokens", chat=True)


def apply_litellm_options(kwargs: dict[str, Any], options: dict[str, Any], *, fixed: dict[str, Any] | None = None
                          ) -> dict[str, Any]:
    """``kwargs`` for ``litellm.completion`` with the provider options placed, in place (see the
    module docstring); a name the backend already sets raises ``ValueError``."""
    if not options:
        return kwargs
    options = dict(options)
    if "extra_query" in options:  # litellm would put it in the JSON body under that name
        raise UnsupportedParameterError("litellm: no URL query passthrough (extra_query); use extra_body or "
                                        "extra_headers", provider="litellm")
    marker = options.pop("cache_control", None)
    taken = (set(kwargs) | set(fixed or {}) | {"model", "stream", "stream_options", "messages", "api_key"}) - {
        "extra_headers"}
    refuse_overrides("litellm", {**options.get("extra_body", {}), **options}, taken)
    if marker is not None:
        mark_last_block(kwargs["messages"], marker, provider="litellm")
    kwargs.update(options)
    # litellm refuses names it believes the target model lacks; these are the caller's explicit choice
    passthrough = sorted(set(options) - {"extra_body", "extra_headers"})
    if passthrough:
        kwargs["allowed_openai_params"] = passthrough
    return kwargs
