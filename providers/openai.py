"""OpenAI and Azure OpenAI backend, on the official ``openai`` SDK.

    backend = OpenAI("gpt-4o-mini")                                   # key from OPENAI_API_KEY
    backend = OpenAI("gpt-3.5-turbo-instruct")                        # a completion model
    backend = OpenAI("my-deployment", is_azure=True, azure_endpoint="https://x.openai.azure.com",
                     api_version="2024-10-21", api_key=...)           # Azure: model = deployment
    backend = OpenAI("gpt-4o", base_url="http://127.0.0.1:8000/v1")   # any OpenAI-compatible server

``**client_kwargs`` go to ``openai.OpenAI`` / ``openai.AzureOpenAI`` unchanged (``api_key``,
``base_url``, ``organization``, ``timeout``, ``max_retries``, ``default_headers``, ``azure_endpoint``,
``api_version``, ``http_client``...).

Chat or completion model: ``is_chat_model=None`` infers it from the name -- names with ``instruct``
(``gpt-3.5-turbo-instruct``) and the legacy base models (``davinci-002``, ``babbage-002``) are
completion models (``/v1/completions`` with the flat ``text_`` prompt); everything else is a chat
model (``/v1/chat/completions`` with ``messages_``). A completion model cannot receive images: a
program with images raises ``ValueError`` before any request (they are never dropped silently).
Reasoning models (``o1``/``o3``/``o4``... and ``gpt-5``, or ``is_reasoning_model=True``, which Azure
deployments need) get ``max_completion_tokens``, the others ``max_tokens``; never both.

Retries and timeouts: the SDK's own machinery, configured by ``max_retries`` (default 2) and
``timeout`` -- exponential backoff with jitter (0.5 s doubling, capped at 8 s), ``Retry-After`` /
``retry-after-ms`` honoured (up to 60 s), retried on 408/409/429/5xx, connection errors and timeouts,
never on other 4xx. A stream is never restarted once it has produced a chunk: a later failure, or a
stream that ends without a finish reason, raises :class:`~providers.errors.StreamInterruptedError`.
Every failure is a :class:`~providers.errors.ProviderError` (provider ``"openai"`` or ``"azure"``)
carrying status and the server's message with the API key redacted.

``select``:

* completion models -- ``"logit_bias"``: token-by-token probing. The choices are tokenized; each step
  asks for one token with ``logit_bias=+100`` on the next token of every choice still in the race
  (and on ``<|endoftext|>`` when a choice is already complete), at the caller's temperature; the
  returned token prunes the race, until one choice is left. Steps where all remaining choices share
  the next token cost no request.
* chat models -- ``"logit_bias"`` when the choices start with distinct tokens: one request with
  ``max_tokens=1``, the biased first tokens and ``logprobs`` (their logprobs are in ``meta_info``).
  Otherwise (shared first tokens, reasoning models, which reject logit bias, or no tokenizer)
  ``"generate_and_match"`` (see ``providers/choices.py``).

Tokenizer: ``tokenizer=`` (anything with ``encode(str) -> list[int]`` and ``decode(list[int]) -> str``)
or tiktoken's encoding for the model. tiktoken downloads its encodings on first use; offline, point
``TIKTOKEN_CACHE_DIR`` at a folder that holds them, or pass ``tokenizer=``. When that variable is
unset and litellm is installed (the ``providers`` extra), its bundled copies (cl100k_base, o200k_base)
are used, as importing litellm would do.

``dtype``: chat models use structured output with a one-field object (``{"value": <type>}``,
strict). Completion models use logit bias: ``int``/``float`` allow only digit tokens (plus ``-``/``.``
for floats, and whitespace, at which they stop); ``str`` opens a quote in the prompt and stops at the
closing one; ``bool`` is a ``select`` between ``True`` and ``False``. The result is written as
``DTYPE_REGEX`` describes; output that does not parse raises ``ProviderError``.

Speculative execution (chat models): ``backend.set_api_speculative(s, num_api_spec_tokens=128)``;
see ``providers/openai_speculative.py``.

This module owns everything about the OpenAI API: the parameter mapping (:func:`to_openai_kwargs`,
:func:`openai_response_format`), the finish reasons (:data:`FINISH_REASONS`) and the SDK's error
quirks (none beyond the generic rules); the flow is :class:`~providers.api_backend.APIBackend`'s.

Usage: ``backend.token_usage`` (:class:`TokenUsage`) sums prompt and completion tokens over every
request (select probes and streams included; streams ask for ``stream_options.include_usage``).
``meta_info`` reports ``cached_tokens`` (``usage.prompt_tokens_details.cached_tokens``) and
``reasoning_tokens`` (``usage.completion_tokens_details.reasoning_tokens``) when they are non-zero.

Async: ``agenerate`` / ``agenerate_stream`` / ``aselect`` use ``openai.AsyncOpenAI`` /
``AsyncAzureOpenAI`` made from the same ``client_kwargs`` (one per event loop; ``http_client`` is
for the sync client only -- pass ``async_http_client=`` an ``httpx.AsyncClient`` for the async one),
so retries, timeouts and errors are the same. Speculative execution is synchronous only.

Provider options (:func:`apply_openai_options`; ``providers/options.py``): ``extra_headers`` ->
HTTP headers, ``extra_query`` -> URL query, ``extra_body`` and every other name (``reasoning_effort``,
``seed``, ``service_tier``, ``prompt_cache_key``, ``verbosity``...) -> the top-level JSON body field
of that name; ``cache_control`` -> a ``cache_control`` marker on the last content part of the last
message (OpenAI-compatible servers that cache by marker; completion models raise). Backend-level
options also go with select's probe requests.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
import time
from typing import Any

from .api_backend import APIBackend, Completion, StreamReader, StreamResult
from .chat_template import ChatTemplate
from .choices import ChoicesDecision, method_name
from .errors import ProviderError, UnsupportedOperationError, UnsupportedParameterError, register_secret
from .messages import chat_turns
from .openai_speculative import SpeculativeMixin
from .options import mark_last_block, refuse_overrides
from .plan import Plan, call
from .sampling import DTYPE_REGEX, SamplingParams, check_supported, dtype_json_schema, parse_dtype_output
from .sdk_errors import INSTALL_HINT, import_sdk, wrap_error
from .usage import TokenUsage

__all__ = ["OpenAI", "AzureOpenAI", "TokenUsage", "FINISH_REASONS", "to_openai_kwargs", "openai_response_format",
           "apply_openai_options", "openai_usage_extra"]

_COMPLETION_NAMES = re.compile(r"instruct|^(davinci|babbage|curie|ada)(-00\d)?$|^text-")
_REASONING_NAMES = re.compile(r"^(o\d)(\b|-|$)|^gpt-5")
_MAX_LOGIT_BIAS = 300  # the API's limit on logit_bias entries

#: OpenAI's finish reasons beyond the common vocabulary (``stop``, ``length``, ``content_filter``...).
FINISH_REASONS = {"function_call": "tool_calls"}

#: The SamplingParams fields every OpenAI-style API maps (``json_schema`` only on chat endpoints).
OPENAI_COMMON = {"n", "stop", "temperature", "top_p", "frequency_penalty", "presence_penalty",
                 "return_logprob", "top_logprobs_num", "return_text_in_logprobs", "dtype"}


class OpenAI(SpeculativeMixin, APIBackend):
    """OpenAI / Azure OpenAI chat and completion models (see the module docstring)."""

    finish_reasons = FINISH_REASONS

    def __init__(
        self,
        model_name: str,
        is_chat_model: bool | None = None,
        chat_template: ChatTemplate | None = None,
        is_azure: bool = False,
        *,
        is_reasoning_model: bool | None = None,
        tokenizer: Any = None,
        spec_max_num_tries: int = 3,
        **client_kwargs: Any,
    ) -> None:
        sdk = import_sdk("openai", "OpenAI")
        if not isinstance(model_name, str) or not model_name:
            raise ValueError("model_name must be a non-empty str")
        self.is_azure = bool(is_azure)
        self.provider = "azure" if self.is_azure else "openai"
        self.is_chat_model = (
            not _COMPLETION_NAMES.search(model_name.lower()) if is_chat_model is None else bool(is_chat_model)
        )
        self.is_reasoning_model = (
            bool(_REASONING_NAMES.search(model_name.lower())) if is_reasoning_model is None else bool(is_reasoning_model)
        )
        self.spec_max_num_tries = int(spec_max_num_tries)
        for secret in (client_kwargs.get("api_key"), client_kwargs.get("azure_ad_token")):
            if isinstance(secret, str):
                register_secret(secret)
        client_kwargs.setdefault("max_retries", 2)
        async_http_client = client_kwargs.pop("async_http_client", None)
        cls = sdk.AzureOpenAI if self.is_azure else sdk.OpenAI
        async_cls = sdk.AsyncAzureOpenAI if self.is_azure else sdk.AsyncOpenAI
        async_kwargs = {k: v for k, v in client_kwargs.items() if k != "http_client"}
        if async_http_client is not None:
            async_kwargs["http_client"] = async_http_client
        self._make_async_client = lambda: async_cls(**async_kwargs)  # the same settings, per event loop
        try:
            self.client = cls(**client_kwargs)
        except sdk.OpenAIError as err:  # e.g. no api_key anywhere: a configuration error
            raise ValueError(f"{type(self).__name__}({model_name!r}): {wrap_error(err, self.provider).message}") from None
        key = getattr(self.client, "api_key", None)
        self._secrets = (key,) if isinstance(key, str) else ()
        if isinstance(key, str):
            register_secret(key)
        self._tokenizer = tokenizer
        self._tokenizer_error: str | None = None
        self._tokenizer_lock = threading.Lock()
        self._number_bias_cache: dict[bool, tuple[dict[str, int], list[str]]] = {}
        super().__init__(model_name, chat_template)

    # ------------------------------------------------------------------------------- basics

    def __repr__(self) -> str:
        kind = "chat" if self.is_chat_model else "completion"
        return f"{type(self).__name__}(model={self.model_name!r}, {kind}, provider={self.provider!r})"

    def shutdown(self) -> None:
        self.client.close()

    def map_params(self, params: SamplingParams) -> dict[str, Any]:
        return to_openai_kwargs(params, chat=self.is_chat_model, reasoning=self.is_reasoning_model,
                                provider=self.provider)

    def _create(self, chat: bool, **kwargs: Any):
        if chat:
            return self.call(lambda: self.client.chat.completions.create(model=self.model_name, **kwargs))
        return self.call(lambda: self.client.completions.create(model=self.model_name, **kwargs))

    async def _acreate(self, chat: bool, **kwargs: Any):
        client = self._async_client()
        if chat:
            return await self.acall(lambda: client.chat.completions.create(model=self.model_name, **kwargs))
        return await self.acall(lambda: client.completions.create(model=self.model_name, **kwargs))

    def _place_options(self, request: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        """``request`` (``create`` kwargs) with provider ``options`` placed (speculative turns)."""
        return apply_openai_options(request, options, provider=self.provider, chat=self.is_chat_model)

    def _probe_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        """A select probe's request with the backend-level provider options."""
        return apply_openai_options(kwargs, self.provider_options, provider=self.provider, chat="messages" in kwargs)

    def _count(self, usage: Any) -> tuple[int | None, int | None]:
        """Usage of a select probe (counted here: probes do not go through ``result``)."""
        if usage is None:
            return None, None
        p, c = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
        self.token_usage.add(p, c)
        return p, c

    # ----------------------------------------------------------------------------- generate

    def generate(self, s: Any, sampling_params: Any, spec_var_name: str | None = None) -> tuple[Any, dict[str, Any]]:
        if spec_var_name is not None and self._speculating(s):  # SGLang's frontend names the slot
            return self._spec_generate(s, self._params(sampling_params), name=spec_var_name)
        return super().generate(s, sampling_params)

    def _generate_plan(self, s: Any, params: SamplingParams) -> Plan:
        if self._speculating(s):
            return self._spec_generate(s, params)
        if params.dtype is not None:
            return (yield from self._dtype_plan(s, params))
        return (yield from super()._generate_plan(s, params))

    async def agenerate(self, s: Any, sampling_params: Any) -> tuple[Any, dict[str, Any]]:
        if self._speculating(s):
            raise UnsupportedOperationError("speculative execution runs in the synchronous ProgramState only",
                                            provider=self.provider)
        return await super().agenerate(s, sampling_params)

    def _speculating(self, s: Any) -> bool:
        return self.is_chat_model and self._spec(s) is not None and getattr(s, "cur_role", None) == "assistant"

    def _streams_whole(self, s: Any, params: SamplingParams) -> bool:
        return params.dtype is not None or self._speculating(s)

    def _request(self, s: Any, params: SamplingParams) -> dict[str, Any]:
        kwargs = self.map_params(params)
        if self.is_chat_model:
            kwargs["messages"], _ = chat_turns(s, allow_prefill=False, backend=self.provider)
        else:
            kwargs["prompt"] = self._prompt(s)
        return apply_openai_options(kwargs, self._options(params), provider=self.provider, chat=self.is_chat_model)

    def _prompt(self, s: Any) -> str:
        """The flat prompt of a completion model, which has no way to receive images."""
        images = getattr(s, "images_", None)
        if images:
            raise ValueError(
                f"{self.provider}: {self.model_name!r} is a completion model and cannot receive images "
                f"(the program has {len(images)}); use a chat model with vision, or is_chat_model=True"
            )
        return s.text_

    def _complete(self, request: dict[str, Any], params: SamplingParams) -> Completion:
        return self._completion(self._create(self.is_chat_model, **request))

    async def _acomplete(self, request: dict[str, Any], params: SamplingParams) -> Completion:
        return self._completion(await self._acreate(self.is_chat_model, **request))

    def _completion(self, resp: Any) -> Completion:
        usage = getattr(resp, "usage", None)
        texts, finishes, extras = [], [], []
        for choice in sorted(resp.choices, key=lambda c: c.index):
            extra: dict[str, Any] = {}
            if self.is_chat_model:
                msg = choice.message
                text = msg.content or ""
                if getattr(msg, "refusal", None):
                    extra["refusal"] = msg.refusal
            else:
                text = choice.text or ""
            extra.update(_logprobs_meta(getattr(choice, "logprobs", None), self.is_chat_model))
            texts.append(text)
            finishes.append(choice.finish_reason)
            extras.append(extra)
        return Completion(texts=texts, finish_reasons=finishes, prompt_tokens=getattr(usage, "prompt_tokens", None),
                          completion_tokens=getattr(usage, "completion_tokens", None),
                          model=getattr(resp, "model", None),
                          extra={"id": getattr(resp, "id", None), **openai_usage_extra(usage)},
                          choice_extra=extras)

    def _open_stream(self, request: dict[str, Any], params: SamplingParams):
        return self._create(self.is_chat_model, stream=True, stream_options={"include_usage": True}, **request)

    async def _aopen_stream(self, request: dict[str, Any], params: SamplingParams):
        return await self._acreate(self.is_chat_model, stream=True, stream_options={"include_usage": True}, **request)

    def _stream_reader(self, request: dict[str, Any], params: SamplingParams, out: StreamResult) -> StreamReader:
        return OpenAIChunkReader(out, chat=self.is_chat_model)

    # -------------------------------------------------------------------------------- dtype

    def _dtype_plan(self, s: Any, params: SamplingParams) -> Plan:
        dtype = params.dtype
        base = params.replace(dtype=None)
        if params.n != 1:
            raise ValueError(f"{self.provider}: dtype constraints need n=1")
        t0 = time.perf_counter()
        if self.is_chat_model:
            schema = json.dumps({"name": f"{dtype}_value", "schema": dtype_json_schema(dtype), "strict": True})
            text, meta = yield from self._generate_plan(s, base.replace(json_schema=schema))
            out = parse_dtype_output(dtype, text, provider=self.provider)
            meta["constraint"] = "response_format"
            return out, meta
        if dtype == "bool":
            decision = yield from self._select_plan(s, ["True", "False"], params.temperature, None)
            return decision.decision, decision.meta_info | {"constraint": "select"}
        kwargs = self.map_params(base.replace(stop=()))
        options = self._options(params)
        if dtype == "str":
            request = apply_openai_options(dict(kwargs, prompt=self._prompt(s) + '"', stop=['"']), options,
                                           provider=self.provider, chat=False)
            resp = yield call("_create", False, **request)
            text, meta = self.result(self._completion(resp), time.perf_counter() - t0, 1)
            out = json.dumps(text, ensure_ascii=False)
            meta["constraint"] = "quote"
            return out, meta
        tok = self._require_tokenizer("dtype constraints on completion models")
        key = dtype == "float"
        if key not in self._number_bias_cache:
            self._number_bias_cache[key] = _number_bias(tok, allow_point=key)
        bias, stops = self._number_bias_cache[key]
        request = apply_openai_options(dict(kwargs, prompt=self._prompt(s), logit_bias=bias, stop=stops), options,
                                       provider=self.provider, chat=False)
        resp = yield call("_create", False, **request)
        text, meta = self.result(self._completion(resp), time.perf_counter() - t0, 1)
        text = text.strip()
        if not re.fullmatch(DTYPE_REGEX[dtype], text):
            raise ProviderError(f"output {text[:40]!r} is not a valid {dtype}", provider=self.provider)
        meta["constraint"] = "logit_bias"
        return text, meta

    # ------------------------------------------------------------------------------- select

    def _select_plan(self, s: Any, choices: list[str], temperature: float, choices_method: Any) -> Plan:
        requested = method_name(choices_method)
        reason = None
        if not self.is_chat_model:
            decision = yield from self._select_probe_completion(s, choices, temperature)
        else:
            tok = None
            if self.is_reasoning_model:
                reason = "reasoning models reject logit_bias"
            else:
                tok = self._tokenizer_or_none()
                if tok is None:
                    reason = f"no tokenizer ({self._tokenizer_error})"
            firsts = [tok.encode(c)[:1] for c in choices] if tok is not None else []
            if tok is not None and all(firsts) and len({f[0] for f in firsts}) == len(choices) \
                    and len(choices) <= _MAX_LOGIT_BIAS:
                decision = yield from self._select_probe_chat(s, choices, temperature, tok, [f[0] for f in firsts])
            else:
                if tok is not None and reason is None:
                    reason = "choices share their first token"
                decision = yield from super()._select_plan(s, choices, temperature, choices_method)
        decision.meta_info["requested_method"] = requested
        if reason:
            decision.meta_info["fallback_reason"] = reason
        return decision

    def _select_probe_chat(self, s, choices, temperature, tok, first_ids) -> Plan:
        messages, _ = chat_turns(s, allow_prefill=False, backend=self.provider)
        t0 = time.perf_counter()
        resp = yield call("_create", True, **self._probe_kwargs(
            messages=messages, max_tokens=1, temperature=temperature, logit_bias={str(t): 100 for t in first_ids},
            logprobs=True, top_logprobs=min(20, len(choices))))
        p, c = self._count(resp.usage)
        text = resp.choices[0].message.content or ""
        ids = tok.encode(text)
        if not ids or ids[0] not in first_ids:
            raise ProviderError(f"logit bias was not honoured: got {text!r}", provider=self.provider)
        index = first_ids.index(ids[0])
        logprobs = {}
        lp = getattr(resp.choices[0], "logprobs", None)
        for entry in (getattr(lp, "content", None) or [])[:1]:
            by_text = {t.token: t.logprob for t in entry.top_logprobs or []}
            for i, t in enumerate(first_ids):
                piece = tok.decode([t])
                if piece in by_text:
                    logprobs[choices[i]] = by_text[piece]
        return ChoicesDecision(choices[index], self.meta(
            model=resp.model or self.model_name, prompt_tokens=p, completion_tokens=c,
            finish_reason=resp.choices[0].finish_reason, latency=time.perf_counter() - t0,
            method="logit_bias", first_token_logprobs=logprobs, requests=1))

    def _select_probe_completion(self, s, choices, temperature) -> Plan:
        tok = self._require_tokenizer("select on completion models")
        token_ids = [list(tok.encode(c)) for c in choices]
        if any(not t for t in token_ids):
            raise ValueError("select: a choice encodes to no tokens")
        eot = getattr(tok, "eot_token", None)
        prompt = list(tok.encode(self._prompt(s)))
        alive = list(range(len(choices)))
        generated: list[int] = []
        steps: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        requests = prompt_total = completion_total = 0
        while len(alive) > 1:
            depth = len(generated)
            done = [i for i in alive if len(token_ids[i]) == depth]
            going = [i for i in alive if len(token_ids[i]) > depth]
            if not going:
                break
            nexts = sorted({token_ids[i][depth] for i in going})
            if len(nexts) == 1 and not done:
                generated.append(nexts[0])  # forced: every remaining choice continues the same way
                continue
            bias = {str(t): 100 for t in nexts}
            if done and eot is not None:
                bias[str(eot)] = 100
            if len(bias) > _MAX_LOGIT_BIAS:
                raise ProviderError(f"select needs {len(bias)} logit_bias entries; the API allows {_MAX_LOGIT_BIAS}",
                                    provider=self.provider)
            resp = yield call("_create", False, **self._probe_kwargs(
                prompt=prompt + generated, max_tokens=1, temperature=temperature, logit_bias=bias,
                logprobs=min(5, len(bias))))
            requests += 1
            p, c = self._count(resp.usage)
            prompt_total += p or 0
            completion_total += c or 0
            text = resp.choices[0].text or ""
            ids = tok.encode(text) if text else []
            step: dict[str, Any] = {"token": text}
            lp = getattr(resp.choices[0], "logprobs", None)
            if lp is not None and getattr(lp, "top_logprobs", None):
                step["top_logprobs"] = dict(lp.top_logprobs[0])
            steps.append(step)
            if done and (not ids or ids[0] == eot):
                alive = done  # the model ended the text: a complete choice wins
                break
            if not ids or ids[0] not in nexts:
                raise ProviderError(f"logit bias was not honoured: got {text!r}", provider=self.provider)
            alive = [i for i in going if token_ids[i][depth] == ids[0]]
            generated.append(ids[0])
        index = min(alive, key=lambda i: len(token_ids[i])) if alive else 0
        return ChoicesDecision(choices[index], self.meta(
            model=self.model_name, prompt_tokens=prompt_total, completion_tokens=completion_total,
            finish_reason="stop", latency=time.perf_counter() - t0, method="logit_bias", steps=steps,
            requests=requests))

    # ---------------------------------------------------------------------------- tokenizer

    def _tokenizer_or_none(self):
        if self._tokenizer is not None:
            return self._tokenizer
        with self._tokenizer_lock:
            if self._tokenizer is None and self._tokenizer_error is None:
                try:
                    import tiktoken
                except ImportError:
                    self._tokenizer_error = f"tiktoken is not installed ({INSTALL_HINT})"
                    return None
                if not os.environ.get("TIKTOKEN_CACHE_DIR"):
                    bundled = _bundled_tiktoken_cache()
                    if bundled:  # what importing litellm would do; offline, tiktoken cannot fetch its files
                        os.environ["TIKTOKEN_CACHE_DIR"] = bundled
                try:
                    try:
                        self._tokenizer = tiktoken.encoding_for_model(self.model_name)
                    except KeyError:
                        self._tokenizer = tiktoken.get_encoding("o200k_base")
                except Exception as err:  # noqa: BLE001 - offline: the encoding file cannot be fetched
                    self._tokenizer_error = (
                        f"tiktoken could not load the encoding for {self.model_name!r} ({type(err).__name__}); "
                        "pass tokenizer= or set TIKTOKEN_CACHE_DIR to a folder holding the encoding files"
                    )
            return self._tokenizer

    def _require_tokenizer(self, what: str):
        tok = self._tokenizer_or_none()
        if tok is None:
            raise UnsupportedOperationError(f"{what} need a tokenizer: {self._tokenizer_error}", provider=self.provider)
        return tok


class AzureOpenAI(OpenAI):
    """Azure OpenAI: ``OpenAI(deployment, is_azure=True, ...)`` under its own name (registry: ``"azure"``)."""

    def __init__(self, model_name: str, is_chat_model: bool | None = None, chat_template: ChatTemplate | None = None,
                 **kwargs: Any) -> None:
        if kwargs.pop("is_azure", True) is not True:
            raise ValueError("AzureOpenAI is always Azure; use OpenAI for api.openai.com")
        super().__init__(model_name, is_chat_model, chat_template, True, **kwargs)


# ------------------------------------------------------------------------------ parameter mapping


def _is_strict_compatible(schema: Any) -> bool:
    """Whether OpenAI's strict mode accepts ``schema`` as is: every object closes its properties
    (``additionalProperties: false``) and requires all of them."""
    if isinstance(schema, list):
        return all(_is_strict_compatible(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False or set(schema.get("required") or []) != set(props):
            return False
    return all(_is_strict_compatible(v) for k, v in schema.items() if k not in ("enum", "const", "default"))


def openai_response_format(json_schema: str) -> dict[str, Any]:
    """``response_format`` for a ``json_schema``.

    A schema given in OpenAI's own wrapper form (``{"name": ..., "schema": {...}, "strict": ...}``)
    is sent as is. A bare schema is named ``"output"`` and sent with ``strict: true`` when strict mode
    accepts it (every object has ``additionalProperties: false`` and requires all its properties),
    else ``strict: false`` (the model is guided by the schema but not constrained to it).
    """
    schema = json.loads(json_schema)
    if isinstance(schema.get("schema"), dict) and isinstance(schema.get("name"), str):
        return {"type": "json_schema", "json_schema": schema}
    return {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": _is_strict_compatible(schema)},
    }


OPENAI_COMMON = {"n", "stop", "temperature", "top_p", "frequency_penalty", "presence_penalty",
                  "return_logprob", "top_logprobs_num", "return_text_in_logprobs", "dtype"}


def to_openai_kwargs(params: SamplingParams, *, chat: bool = True, reasoning: bool = False,
                     provider: str = "openai") -> dict[str, Any]:
    """Keyword arguments for ``client.chat.completions.create`` (``chat``) or ``completions.create``.

    The limit goes as ``max_completion_tokens`` for reasoning models and ``max_tokens`` otherwise,
    never both. ``json_schema`` -> ``response_format`` (chat only; :func:`openai_response_format`).
    ``top_k`` and ``min_p`` do not exist in the OpenAI API: they warn and are not sent. Logprobs: chat
    gets ``logprobs=True`` (+ ``top_logprobs``), completions ``logprobs=<top_logprobs_num>``.
    """
    supported = set(OPENAI_COMMON)
    if chat:
        supported.add("json_schema")
    chosen = check_supported(params, provider, supported)
    limit_key = "max_completion_tokens" if reasoning else "max_tokens"
    return openai_style_kwargs(params, chosen, limit_key=limit_key, chat=chat)


def openai_style_kwargs(params: SamplingParams, chosen: dict[str, Any], *, limit_key: str,
                         chat: bool) -> dict[str, Any]:
    """The OpenAI API's names and shapes for the ``chosen`` fields (set, and supported by the caller)."""
    kwargs: dict[str, Any] = {limit_key: params.max_new_tokens}
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "n", "top_k"):
        if name in chosen:
            kwargs[name] = chosen[name]
    if "stop" in chosen:
        kwargs["stop"] = list(chosen["stop"])
    if "json_schema" in chosen:
        kwargs["response_format"] = openai_response_format(chosen["json_schema"])
    if params.return_logprob or params.top_logprobs_num:
        if chat:
            kwargs["logprobs"] = True
            if params.top_logprobs_num:
                kwargs["top_logprobs"] = params.top_logprobs_num
        else:
            kwargs["logprobs"] = params.top_logprobs_num
    return kwargs



def apply_openai_options(kwargs: dict[str, Any], options: dict[str, Any], *, provider: str = "openai",
                         chat: bool = True) -> dict[str, Any]:
    """``kwargs`` (for ``create``) with the provider options placed (see the module docstring)."""
    if not options:
        return kwargs
    options = dict(options)
    marker = options.pop("cache_control", None)
    if marker is not None:
        if not chat:
            raise UnsupportedParameterError(
                f"{provider}: cache_control marks a chat message; completion models have none", provider=provider)
        kwargs["messages"] = copy.deepcopy(kwargs["messages"])
        mark_last_block(kwargs["messages"], marker, provider=provider)
    for name in ("extra_headers", "extra_query"):
        if name in options:
            kwargs[name] = options.pop(name)
    body = {**options.pop("extra_body", {}), **options}
    refuse_overrides(provider, body, set(kwargs) | {"model", "stream", "stream_options", "messages", "prompt"})
    if body:
        kwargs["extra_body"] = body
    return kwargs


def openai_usage_extra(usage: Any) -> dict[str, Any]:
    """``cached_tokens`` / ``reasoning_tokens`` of an OpenAI-format usage object, when non-zero."""
    extra: dict[str, Any] = {}
    for details, key, name in (("prompt_tokens_details", "cached_tokens", "cached_tokens"),
                               ("completion_tokens_details", "reasoning_tokens", "reasoning_tokens")):
        part = getattr(usage, details, None)
        value = part.get(key) if isinstance(part, dict) else getattr(part, key, None)
        if isinstance(value, int) and value:
            extra[name] = value
    return extra


class OpenAIChunkReader(StreamReader):
    """Chat/completion stream chunks -> text deltas, finish reason, usage (shared with litellm)."""

    def __init__(self, out: StreamResult, *, chat: bool = True) -> None:
        self.out = out
        self.chat = chat

    def feed(self, chunk: Any) -> list[str]:
        out = self.out
        out.model = getattr(chunk, "model", None) or out.model
        out.extra["id"] = getattr(chunk, "id", None) or out.extra.get("id")
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            out.prompt_tokens = getattr(usage, "prompt_tokens", None)
            out.completion_tokens = getattr(usage, "completion_tokens", None)
            out.extra.update(openai_usage_extra(usage))
        deltas = []
        for choice in chunk.choices or []:
            if choice.finish_reason is not None:
                out.finish_reason = choice.finish_reason
            delta = (getattr(choice.delta, "content", None) if self.chat else choice.text) or ""
            if delta:
                deltas.append(delta)
        return deltas


# ------------------------------------------------------------------------------------ helpers


def _logprobs_meta(lp: Any, chat: bool) -> dict[str, Any]:
    """SGLang-style ``output_token_logprobs`` ([logprob, token_id=None, text]) from an API choice."""
    if lp is None:
        return {}
    if chat:
        content = getattr(lp, "content", None) or []
        out = [[e.logprob, None, e.token] for e in content]
        top = [[[t.logprob, None, t.token] for t in (e.top_logprobs or [])] for e in content]
    else:
        tokens = getattr(lp, "tokens", None) or []
        out = [[v, None, t] for t, v in zip(tokens, getattr(lp, "token_logprobs", None) or [])]
        top = [[[v, None, t] for t, v in (d or {}).items()] for d in (getattr(lp, "top_logprobs", None) or [])]
    return {"output_token_logprobs": out, "output_top_logprobs": top}


def _number_bias(tok: Any, allow_point: bool) -> tuple[dict[str, int], list[str]]:
    """logit_bias that allows only digit tokens (shortest first, within the API's entry limit), plus
    ``-`` (and ``.`` for floats) and the whitespace tokens the generation stops at."""
    extra: list[int] = []
    for piece in (["-", "."] if allow_point else ["-"]) + [" ", "\n"]:
        ids = tok.encode(piece)
        if len(ids) == 1:
            extra.append(ids[0])
    found: set[tuple[int, int]] = set()
    n_vocab = getattr(tok, "n_vocab", None)
    if isinstance(n_vocab, int) and n_vocab > 0:
        for t in range(n_vocab):
            try:
                text = tok.decode([t])
            except Exception:  # noqa: BLE001 - holes in a vocabulary
                continue
            if text.isascii() and text.isdigit():
                found.add((len(text), t))
    else:
        for number in range(1000):
            for text in {str(number), str(number).zfill(2), str(number).zfill(3)}:
                ids = tok.encode(text)
                if len(ids) == 1:
                    found.add((len(text), ids[0]))
    chosen = [t for _, t in sorted(found)][: _MAX_LOGIT_BIAS - len(extra)]
    return {str(t): 100 for t in chosen + extra}, [" ", "\n"]


def _bundled_tiktoken_cache() -> str | None:
    """litellm's bundled tiktoken files (found without importing litellm), or None."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "litellm_core_utils", "tokenizers")
        if os.path.isdir(path):
            return path
    return None
