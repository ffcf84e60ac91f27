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
model (``/v1/chat/completions`` with ``messages_``). Reasoning models (``o1``/``o3``/``o4``... and
``gpt-5``, or ``is_reasoning_model=True``, which Azure deployments need) get
``max_completion_tokens``, the others ``max_tokens``; never both.

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

Speculative execution (chat models): ``backend.set_api_speculative(s, num_api_spec_tokens=128)``
turns it on for state ``s``. Inside an assistant turn, each ``gen`` then returns ``""`` at once and
records a slot; ``role_end_generate(s)`` (call it before the turn closes) makes ONE request for the
whole turn, matches the answer against the turn's pattern (fixed text between the slots, each slot
ending at its ``stop``) with :meth:`spec_pattern_match`, retrying up to ``spec_max_num_tries`` times,
and fills ``text_``, ``variables`` and ``meta_info`` of the slots. Fixed text is read from ``text_``;
frontends that keep it out of ``text_`` pass it with :meth:`spec_fill`. The buffers live in
``s.backend_data["openai"]``: per state, never per backend.

Usage: ``backend.token_usage`` (:class:`TokenUsage`) sums prompt and completion tokens over every
request (select probes and streams included; streams ask for ``stream_options.include_usage``).
"""

from __future__ import annotations

import os

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from .base import BaseBackend, make_meta_info
from .chat_template import ChatTemplate, get_chat_template_by_model_path
from .choices import ChoicesDecision, ChoicesSamplingMethod, match_choice, with_select_instruction
from .errors import ProviderError, UnsupportedOperationError, register_secret
from .messages import chat_turns
from .sampling import DTYPE_REGEX, SamplingParams, dtype_json_schema, parse_dtype_output, to_openai_kwargs
from .sdk_errors import INSTALL_HINT, StreamGuard, import_sdk, translating, wrap_error
from .usage import TokenUsage

__all__ = ["OpenAI", "TokenUsage"]

_COMPLETION_NAMES = re.compile(r"instruct|^(davinci|babbage|curie|ada)(-00\d)?$|^text-")
_REASONING_NAMES = re.compile(r"^(o\d)(\b|-|$)|^gpt-5")
_MAX_LOGIT_BIAS = 300  # the API's limit on logit_bias entries


class OpenAI(BaseBackend):
    """OpenAI / Azure OpenAI chat and completion models (see the module docstring)."""

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
        self.model_name = model_name
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
        cls = sdk.AzureOpenAI if self.is_azure else sdk.OpenAI
        try:
            self.client = cls(**client_kwargs)
        except sdk.OpenAIError as err:  # e.g. no api_key anywhere: a configuration error
            raise ValueError(f"{type(self).__name__}({model_name!r}): {wrap_error(err, self.provider).message}") from None
        key = getattr(self.client, "api_key", None)
        self._secrets = (key,) if isinstance(key, str) else ()
        if isinstance(key, str):
            register_secret(key)
        self.token_usage = TokenUsage()
        self._tokenizer = tokenizer
        self._tokenizer_error: str | None = None
        self._tokenizer_lock = threading.Lock()
        self._number_bias_cache: dict[bool, tuple[dict[str, int], list[str]]] = {}
        super().__init__(chat_template or get_chat_template_by_model_path(model_name))

    # ------------------------------------------------------------------------------- basics

    def get_model_name(self) -> str:
        return self.model_name

    def __repr__(self) -> str:
        kind = "chat" if self.is_chat_model else "completion"
        return f"{type(self).__name__}(model={self.model_name!r}, {kind}, provider={self.provider!r})"

    def shutdown(self) -> None:
        self.client.close()

    def _kwargs(self, params: SamplingParams) -> dict[str, Any]:
        return to_openai_kwargs(params, chat=self.is_chat_model, reasoning=self.is_reasoning_model,
                                provider=self.provider)

    def _create(self, chat: bool, **kwargs: Any):
        with translating(self.provider, self._secrets):
            if chat:
                return self.client.chat.completions.create(model=self.model_name, **kwargs)
            return self.client.completions.create(model=self.model_name, **kwargs)

    def _count(self, usage: Any) -> tuple[int | None, int | None]:
        if usage is None:
            return None, None
        p, c = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
        self.token_usage.add(p, c)
        return p, c

    # ----------------------------------------------------------------------------- generate

    def generate(self, s: Any, sampling_params: SamplingParams) -> tuple[Any, dict[str, Any]]:
        params = sampling_params
        if self.is_chat_model and self._spec(s) is not None and s.cur_role == "assistant":
            return self._spec_generate(s, params)
        if params.dtype is not None:
            return self._generate_dtype(s, params)
        kwargs = self._kwargs(params)
        t0 = time.perf_counter()
        if self.is_chat_model:
            messages, _ = chat_turns(s, allow_prefill=False, backend=self.provider)
            resp = self._create(True, messages=messages, **kwargs)
        else:
            resp = self._create(False, prompt=s.text_, **kwargs)
        return self._result(resp, time.perf_counter() - t0, n=params.n)

    def _result(self, resp: Any, latency: float, n: int) -> tuple[Any, dict[str, Any]]:
        prompt_tokens, completion_tokens = self._count(getattr(resp, "usage", None))
        texts, metas = [], []
        for choice in sorted(resp.choices, key=lambda c: c.index):
            extra: dict[str, Any] = {}
            if self.is_chat_model:
                msg = choice.message
                text = msg.content or ""
                if getattr(msg, "refusal", None):
                    extra["refusal"] = msg.refusal
            else:
                text = choice.text or ""
            lp = _logprobs_meta(getattr(choice, "logprobs", None), self.is_chat_model)
            if lp:
                extra.update(lp)
            texts.append(text)
            metas.append(extra | {"finish_reason": choice.finish_reason})
        common = {"id": getattr(resp, "id", None)}
        model = getattr(resp, "model", None) or self.model_name
        if n == 1:
            m = metas[0] if metas else {"finish_reason": None}
            meta = make_meta_info(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                  latency=latency, **common, **m)
            return (texts[0] if texts else ""), meta
        per = [make_meta_info(model=model, prompt_tokens=prompt_tokens, completion_tokens=None, latency=latency, **m)
               for m in metas]
        meta = make_meta_info(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                              finish_reason=metas[0]["finish_reason"] if metas else None, latency=latency,
                              choices=per, **common)
        return texts, meta

    def generate_stream(self, s: Any, sampling_params: SamplingParams) -> Iterator[tuple[str, dict[str, Any]]]:
        params = sampling_params
        if params.n != 1:
            raise ValueError(f"{self.provider}: generate_stream streams one continuation; n must be 1")
        if params.dtype is not None or (self.is_chat_model and self._spec(s) is not None
                                        and s.cur_role == "assistant"):
            # A constrained value is decided whole: it arrives as one delta.
            text, meta = self.generate(s, params)
            yield text, meta
            return
        kwargs = self._kwargs(params)
        if self.is_chat_model:
            messages, _ = chat_turns(s, allow_prefill=False, backend=self.provider)
            kwargs["messages"] = messages
        else:
            kwargs["prompt"] = s.text_
        yield from self._stream(self.is_chat_model, kwargs)

    def _stream(self, chat: bool, kwargs: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        t0 = time.perf_counter()
        stream = self._create(chat, stream=True, stream_options={"include_usage": True}, **kwargs)
        guard = StreamGuard(self.provider, self._secrets)
        finish = None
        usage = None
        model = self.model_name
        resp_id = None
        with guard, contextlib.closing(stream):
            for chunk in stream:
                model = getattr(chunk, "model", None) or model
                resp_id = getattr(chunk, "id", None) or resp_id
                if getattr(chunk, "usage", None) is not None:
                    usage = chunk.usage
                for choice in chunk.choices or []:
                    delta = (choice.delta.content if chat else choice.text) or ""
                    if choice.finish_reason is not None:
                        finish = choice.finish_reason
                    if delta:
                        guard.delivered = True
                        yield delta, {"model": model, "finish_reason": None}
        guard.require(finish is not None, "the stream ended without a finish reason (cut off)")
        p, c = self._count(usage)
        yield "", make_meta_info(model=model, prompt_tokens=p, completion_tokens=c, finish_reason=finish,
                                 latency=time.perf_counter() - t0, id=resp_id)

    # -------------------------------------------------------------------------------- dtype

    def _generate_dtype(self, s: Any, params: SamplingParams) -> tuple[str, dict[str, Any]]:
        dtype = params.dtype
        base = params.replace(dtype=None)
        if params.n != 1:
            raise ValueError(f"{self.provider}: dtype constraints need n=1")
        t0 = time.perf_counter()
        if self.is_chat_model:
            schema = json.dumps({"name": f"{dtype}_value", "schema": dtype_json_schema(dtype), "strict": True})
            text, meta = self.generate(s, base.replace(json_schema=schema))
            out = parse_dtype_output(dtype, text, provider=self.provider)
            meta["constraint"] = "response_format"
            return out, meta
        if dtype == "bool":
            decision = self.select(s, ["True", "False"], params.temperature, None)
            return decision.decision, decision.meta_info | {"constraint": "select"}
        kwargs = self._kwargs(base.replace(stop=()))
        if dtype == "str":
            resp = self._create(False, prompt=s.text_ + '"', stop=['"'], **kwargs)
            text, meta = self._result(resp, time.perf_counter() - t0, n=1)
            out = json.dumps(text, ensure_ascii=False)
            meta["constraint"] = "quote"
            return out, meta
        tok = self._require_tokenizer("dtype constraints on completion models")
        key = dtype == "float"
        if key not in self._number_bias_cache:
            self._number_bias_cache[key] = _number_bias(tok, allow_point=key)
        bias, stops = self._number_bias_cache[key]
        resp = self._create(False, prompt=s.text_, logit_bias=bias, stop=stops, **kwargs)
        text, meta = self._result(resp, time.perf_counter() - t0, n=1)
        text = text.strip()
        if not re.fullmatch(DTYPE_REGEX[dtype], text):
            raise ProviderError(f"output {text[:40]!r} is not a valid {dtype}", provider=self.provider)
        meta["constraint"] = "logit_bias"
        return text, meta

    # ------------------------------------------------------------------------------- select

    def select(
        self,
        s: Any,
        choices: list[str],
        temperature: float,
        choices_method: ChoicesSamplingMethod | None,
    ) -> ChoicesDecision:
        requested = getattr(choices_method, "name", None)
        reason = None
        if not self.is_chat_model:
            decision = self._select_probe_completion(s, choices, temperature)
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
                decision = self._select_probe_chat(s, choices, temperature, tok, [f[0] for f in firsts])
            else:
                if tok is not None and reason is None:
                    reason = "choices share their first token"
                decision = self._select_generate_and_match(s, choices, temperature)
        decision.meta_info["requested_method"] = requested
        if reason:
            decision.meta_info["fallback_reason"] = reason
        return decision

    def _select_probe_chat(self, s, choices, temperature, tok, first_ids) -> ChoicesDecision:
        messages, _ = chat_turns(s, allow_prefill=False, backend=self.provider)
        t0 = time.perf_counter()
        resp = self._create(True, messages=messages, max_tokens=1, temperature=temperature,
                            logit_bias={str(t): 100 for t in first_ids}, logprobs=True,
                            top_logprobs=min(20, len(choices)))
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
        return ChoicesDecision(choices[index], make_meta_info(
            model=resp.model or self.model_name, prompt_tokens=p, completion_tokens=c,
            finish_reason=resp.choices[0].finish_reason, latency=time.perf_counter() - t0,
            method="logit_bias", first_token_logprobs=logprobs, requests=1))

    def _select_probe_completion(self, s, choices, temperature) -> ChoicesDecision:
        tok = self._require_tokenizer("select on completion models")
        token_ids = [list(tok.encode(c)) for c in choices]
        if any(not t for t in token_ids):
            raise ValueError("select: a choice encodes to no tokens")
        eot = getattr(tok, "eot_token", None)
        prompt = list(tok.encode(s.text_))
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
            resp = self._create(False, prompt=prompt + generated, max_tokens=1, temperature=temperature,
                                logit_bias=bias, logprobs=min(5, len(bias)))
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
        return ChoicesDecision(choices[index], make_meta_info(
            model=self.model_name, prompt_tokens=prompt_total, completion_tokens=completion_total,
            finish_reason="stop", latency=time.perf_counter() - t0, method="logit_bias", steps=steps,
            requests=requests))

    def _select_generate_and_match(self, s, choices, temperature) -> ChoicesDecision:
        messages, _ = chat_turns(s, allow_prefill=False, backend=self.provider)
        longest = max(len(c) for c in choices)
        kwargs = self._kwargs(SamplingParams(max_new_tokens=max(16, longest + 16), temperature=temperature))
        t0 = time.perf_counter()
        resp = self._create(True, messages=with_select_instruction(messages, choices), **kwargs)
        text, meta = self._result(resp, time.perf_counter() - t0, n=1)
        index, rule = match_choice(text, choices)
        meta.update(method="generate_and_match", generated=text, match=rule, requests=1)
        return ChoicesDecision(choices[index], meta)

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

    # ---------------------------------------------------------------------- speculative API

    def set_api_speculative(self, s: Any, num_api_spec_tokens: int | None = 128) -> None:
        """Turn speculative execution on for state ``s`` (``None`` turns it off)."""
        if not self.is_chat_model:
            raise UnsupportedOperationError("speculative execution is for chat models", provider=self.provider)
        if num_api_spec_tokens is None:
            s.backend_data.pop("openai", None)
            return
        if isinstance(num_api_spec_tokens, bool) or not isinstance(num_api_spec_tokens, int) or num_api_spec_tokens < 1:
            raise ValueError("num_api_spec_tokens must be an int >= 1")
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

    def spec_fill(self, s: Any, value: str) -> None:
        """Record fixed text of the speculative assistant turn (see the module docstring)."""
        buf = self._spec(s)
        if buf is None:
            raise RuntimeError("spec_fill: speculative execution is not on for this state")
        if buf["pos"] is None:
            buf["pos"] = s.cur_role_begin_pos
        self._spec_sync(s, buf)
        buf["terms"].append({"text": value, "stop": None, "name": None, "meta": None, "slot": False})

    def _spec_generate(self, s: Any, params: SamplingParams) -> tuple[str, dict[str, Any]]:
        buf = self._spec(s)
        if params.n != 1 or params.dtype is not None or params.json_schema is not None:
            raise ValueError("speculative execution supports plain gen (n=1, no dtype/json_schema)")
        self._spec_sync(s, buf)
        kwargs = self._kwargs(params.replace(stop=(), max_new_tokens=buf["num_tokens"]))
        if buf["kwargs"] is None:
            buf["kwargs"] = kwargs
        elif buf["kwargs"] != kwargs:
            raise ValueError("speculative execution: every gen of one assistant turn must use the same sampling "
                             f"parameters (got {kwargs}, first was {buf['kwargs']})")
        meta: dict[str, Any] = {"speculative": True, "finish_reason": None}
        buf["terms"].append({"text": "", "stop": params.stop, "name": None, "meta": meta, "slot": True})
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
        if buf is None or s.cur_role != "assistant" or not any(t["slot"] for t in buf["terms"]):
            return
        self._spec_sync(s, buf)
        messages = [dict(m) for m in s.messages_]
        kwargs = dict(buf["kwargs"])
        last = ""
        metas = None
        for _attempt in range(max(1, self.spec_max_num_tries)):
            t0 = time.perf_counter()
            resp = self._create(True, messages=messages, **kwargs)
            last, metas = self._result(resp, time.perf_counter() - t0, n=1)
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
                for name, m in list(s.meta_info.items()):
                    if m is term["meta"]:
                        s.variables[name] = term["text"]
                term["meta"].update(metas, speculative=True)
        buf["terms"], buf["pos"], buf["kwargs"] = [], None, None


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
