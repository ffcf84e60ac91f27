"""LiteLLM backend: any model litellm can route to, through ``litellm.completion``.

    backend = LiteLLM("openai/gpt-4o-mini")
    backend = LiteLLM("anthropic/claude-haiku-4-5", api_key=...)
    backend = LiteLLM("openai/my-model", base_url="http://127.0.0.1:8000/v1", api_key="...")

``api_key``, ``organization``, ``base_url``, ``timeout`` (seconds, default 600) and
``default_headers`` (sent as ``extra_headers``) go to every ``litellm.completion`` call; without them
litellm reads its usual environment variables. Requests are OpenAI-format ``messages_`` (images as
``image_url`` parts; litellm translates them for the target provider); text already written into the
open assistant turn is an error, as for OpenAI. Parameters: :func:`~providers.sampling.to_litellm_kwargs`
-- OpenAI names, ``json_schema`` -> ``response_format`` (litellm maps it to the provider's structured
output), ``top_k`` passed through (litellm raises for providers without it). ``dtype`` uses the same
one-field structured output as the OpenAI chat path.

Retries: litellm's behaviour differs by provider (some clients retry, some do not, ``Retry-After``
is not always read), so this backend turns litellm's and the inner client's retries off
(``num_retries=0``, ``max_retries=0``) and retries with :class:`~providers.retry.RetryPolicy`:
``max_retries`` (default 2 when ``None``) retries on 429, 5xx and connection errors with exponential
backoff + jitter and ``Retry-After`` honoured; never on other 4xx or timeouts. A stream is retried
only before its first chunk; after it a failure or a stream that ends without a finish reason raises
:class:`~providers.errors.StreamInterruptedError`. Pass ``retry_policy=`` for other delays.

A stream that a proxy closes *cleanly* before its finish reason is an interruption too: litellm
>= 1.109 reports it (``MidStreamFallbackError``) and this backend raises ``StreamInterruptedError``;
litellm <= 1.108 synthesized ``finish_reason="stop"`` for it, so behind those versions only broken
connections can be told from a finished stream. Offline, set ``LITELLM_LOCAL_MODEL_COST_MAP=True``
before importing litellm, or it tries to download its model price map on import.

``select`` -- ``"generate_and_match"`` (see ``providers/choices.py``): portable across every provider
litellm reaches, logprobs or not. ``backend.token_usage`` sums the usage litellm reports.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

from .base import BaseBackend, make_meta_info
from .chat_template import ChatTemplate, get_chat_template_by_model_path
from .choices import ChoicesDecision, ChoicesSamplingMethod, match_choice, with_select_instruction
from .errors import ProviderError, Secret
from .messages import chat_turns
from .retry import RetryPolicy
from .sampling import SamplingParams, dtype_json_schema, parse_dtype_output, to_litellm_kwargs
from .sdk_errors import import_sdk, translating
from .usage import TokenUsage

__all__ = ["LiteLLM"]


class LiteLLM(BaseBackend):
    """Models behind ``litellm.completion`` (see the module docstring)."""

    provider = "litellm"

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
        if not isinstance(model_name, str) or not model_name:
            raise ValueError("model_name must be a non-empty str")
        self.model_name = model_name
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
        self.token_usage = TokenUsage()
        super().__init__(chat_template or get_chat_template_by_model_path(model_name))

    def get_model_name(self) -> str:
        return self.model_name

    def _completion(self, **kwargs: Any) -> Any:
        call = dict(self._fixed, **kwargs)
        if self._api_key is not None:
            call["api_key"] = self._api_key.get()
        with translating(self.provider):
            return self._litellm.completion(model=self.model_name, **call)

    def _prepare(self, s: Any, params: SamplingParams) -> dict[str, Any]:
        kwargs = to_litellm_kwargs(params)
        if params.dtype is not None:
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": f"{params.dtype}_value", "schema": dtype_json_schema(params.dtype), "strict": True}}
        messages, _ = chat_turns(s, allow_prefill=False, backend=self.provider)
        kwargs["messages"] = messages
        return kwargs

    def _count(self, usage: Any) -> tuple[int | None, int | None]:
        if usage is None:
            return None, None
        p, c = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
        self.token_usage.add(p, c)
        return p, c

    def _finish_text(self, text: str, params: SamplingParams) -> str:
        return text if params.dtype is None else parse_dtype_output(params.dtype, text, provider=self.provider)

    # ----------------------------------------------------------------------------- generate

    def generate(self, s: Any, sampling_params: SamplingParams) -> tuple[Any, dict[str, Any]]:
        params = sampling_params
        kwargs = self._prepare(s, params)
        t0 = time.perf_counter()
        resp = self.retry.call(lambda: self._completion(**kwargs))
        latency = time.perf_counter() - t0
        prompt, completion = self._count(getattr(resp, "usage", None))
        model = getattr(resp, "model", None) or self.model_name
        choices = sorted(resp.choices, key=lambda c: c.index)
        texts = [self._finish_text(c.message.content or "", params) for c in choices]
        finishes = [c.finish_reason for c in choices]
        if params.n == 1:
            return texts[0], make_meta_info(model=model, prompt_tokens=prompt, completion_tokens=completion,
                                            finish_reason=finishes[0], latency=latency, id=getattr(resp, "id", None))
        per = [make_meta_info(model=model, prompt_tokens=prompt, completion_tokens=None, finish_reason=f,
                              latency=latency) for f in finishes]
        return texts, make_meta_info(model=model, prompt_tokens=prompt, completion_tokens=completion,
                                     finish_reason=finishes[0], latency=latency, choices=per,
                                     id=getattr(resp, "id", None))

    def generate_stream(self, s: Any, sampling_params: SamplingParams) -> Iterator[tuple[str, dict[str, Any]]]:
        params = sampling_params
        if params.n != 1:
            raise ValueError("litellm: generate_stream streams one continuation; n must be 1")
        if params.dtype is not None:  # a constrained value is decided whole: one delta
            yield self.generate(s, params)
            return
        kwargs = self._prepare(s, params)
        t0 = time.perf_counter()
        state: dict[str, Any] = {}

        def open_stream() -> Iterator[tuple[str, dict[str, Any]]]:
            state.clear()
            stream = self._completion(stream=True, stream_options={"include_usage": True}, **kwargs)
            with translating(self.provider):
                for chunk in stream:
                    state["model"] = getattr(chunk, "model", None) or state.get("model")
                    if getattr(chunk, "usage", None) is not None:
                        state["usage"] = chunk.usage
                    for choice in chunk.choices or []:
                        if choice.finish_reason is not None:
                            state["finish"] = choice.finish_reason
                        delta = getattr(choice.delta, "content", None) or ""
                        if delta:
                            yield delta, {"model": state.get("model") or self.model_name, "finish_reason": None}
            if state.get("finish") is None:
                raise ProviderError("the stream ended without a finish reason (cut off)", provider=self.provider)

        yield from self.retry.stream(open_stream, provider=self.provider)
        prompt, completion = self._count(state.get("usage"))
        yield "", make_meta_info(model=state.get("model") or self.model_name, prompt_tokens=prompt,
                                 completion_tokens=completion, finish_reason=state.get("finish"),
                                 latency=time.perf_counter() - t0)

    # ------------------------------------------------------------------------------- select

    def select(
        self,
        s: Any,
        choices: list[str],
        temperature: float,
        choices_method: ChoicesSamplingMethod | None,
    ) -> ChoicesDecision:
        messages, _ = chat_turns(s, allow_prefill=False, backend=self.provider)
        kwargs = to_litellm_kwargs(SamplingParams(max_new_tokens=max(16, max(len(c) for c in choices) + 16),
                                                  temperature=temperature))
        kwargs["messages"] = with_select_instruction(messages, choices)
        t0 = time.perf_counter()
        resp = self.retry.call(lambda: self._completion(**kwargs))
        prompt, completion = self._count(getattr(resp, "usage", None))
        text = resp.choices[0].message.content or ""
        index, rule = match_choice(text, choices)
        meta = make_meta_info(model=getattr(resp, "model", None) or self.model_name, prompt_tokens=prompt,
                              completion_tokens=completion, finish_reason=resp.choices[0].finish_reason,
                              latency=time.perf_counter() - t0, method="generate_and_match", generated=text,
                              match=rule, requests=1, requested_method=getattr(choices_method, "name", None))
        return ChoicesDecision(choices[index], meta)
