"""RuntimeEndpoint: the backend for SGLang-compatible servers (SGLang's native HTTP protocol).

Protocol used (one ``httpx.Client`` per endpoint, so timeouts, TLS ``verify`` and the bearer key
apply to streaming and plain requests alike):

* ``GET /get_model_info`` (at construction), ``GET /get_server_info``, ``POST /flush_cache``,
  ``POST /start_profile`` / ``/stop_profile`` (``GET`` when the server answers 405);
* ``POST /generate`` with ``text`` or ``input_ids`` (single or batched), ``sampling_params``,
  ``return_logprob``, ``logprob_start_len``, ``top_logprobs_num``, ``return_text_in_logprobs``,
  ``image_data`` and ``stream``; streamed answers are ``data: {json}`` lines with cumulative text
  ending ``data: [DONE]``;
* ``POST /concate_and_append_request``.

Decisions where the protocol is silent:

* **Retries** follow :class:`~providers.retry.RetryPolicy` and the one rule of ``errors.py``
  (connection errors, timeouts, 408/409/429/5xx; ``Retry-After`` honoured). A stream is retried
  only before its first delta; afterwards a failure raises
  :class:`~providers.errors.StreamInterruptedError`.
* **Timeouts**: ``timeout`` (default 10 s to connect, 600 s for each read -- for a stream that is
  the longest gap between two chunks) applies to every request.
* **Streams** must be cumulative: a chunk whose text does not extend the text so far is a protocol
  error. A stream that ends without ``[DONE]`` and without a finish reason is an error too (the
  server died); with a finish reason it is accepted.
* **Images**: the state's images in prompt order; one image is sent as a string, several as a list
  (``image_data``). ``fill_image`` sends nothing when the state has no image.
* **select** is deterministic (``temperature`` must be 0) and scores each ``prompt + choice`` with
  prompt logprobs in one batched request, starting one token before the prompt boundary: if that
  first token is still the prompt's own last token (its text ends the prompt) it is dropped, else it
  merged with the choice's start and is kept as part of the choice. A server that returns no token
  text is assumed not to merge. Unconditional logprobs (when the method needs them) score the
  choice's token ids alone via ``input_ids``.
* ``n > 1``: ``generate`` returns ``(list_of_texts, meta_info)`` (see ``base.py``).
* **Async**: ``agenerate`` / ``agenerate_stream`` / ``aselect`` / ``arequest`` /
  ``acommit_lazy_operations`` are the same requests on an ``httpx.AsyncClient`` (one per event loop,
  same URL, key, timeout and TLS settings; ``await endpoint.aclose()`` closes it), with the same
  retry rules (:meth:`RetryPolicy.acall` / :meth:`RetryPolicy.astream`) and the same stream decoder;
  ``select`` is one plan (``providers/plan.py``) run either way. Cancelling a task mid-stream closes
  the response, which frees the connection.
* **Provider options** (``providers/options.py``; :func:`apply_sglang_options`): names of SGLang
  sampling parameters this package does not model (:data:`SGLANG_SAMPLING_EXTRAS`, e.g.
  ``repetition_penalty``, ``no_stop_trim``, ``ebnf``) go into ``sampling_params``; ``extra_body`` and
  every other name (``lora_path``, ``rid``, ``return_hidden_states``...) to the top level of the
  ``/generate`` body; ``extra_headers`` are HTTP headers and ``extra_query`` URL query parameters.
  ``cache_control`` raises: SGLang's radix cache reuses shared prefixes by itself.
* **Usage**: ``endpoint.token_usage`` (:class:`~providers.usage.TokenUsage`) sums the
  ``prompt_tokens`` / ``completion_tokens`` the server reports for every ``/generate`` request --
  prefix commits, select scoring and streams (their final event) included.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from .base import BaseBackend, StateView, make_meta_info
from .chat_template import ChatTemplate, get_chat_template, get_chat_template_by_model_path
from .choices import ChoicesDecision, ChoicesSamplingMethod, run_choices_method, token_length_normalized
from .errors import (
    APIConnectionError,
    APITimeoutError,
    ProviderError,
    Secret,
    UnsupportedOperationError,
    UnsupportedParameterError,
    error_from_status,
)
from .options import merge_provider_options, refuse_overrides
from .plan import Plan, arun, call, run
from .retry import RetryPolicy, parse_retry_after
from .sampling import DTYPE_REGEX, SamplingParams
from .usage import TokenUsage

__all__ = ["RuntimeEndpoint", "StreamDecoder", "DEFAULT_TIMEOUT", "FINISH_REASONS", "SGLANG_SAMPLING_EXTRAS",
           "to_sglang", "apply_sglang_options"]

log = logging.getLogger(__name__)

#: 10 s to connect; 600 s per read/write (generation of long outputs is slow).
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
PROVIDER = "sglang"
#: SGLang reports ``{"type": "stop" | "length" | "abort", ...}``: the common vocabulary already.
FINISH_REASONS: dict[str, str] = {}
# meta_info keys make_meta_info owns; the server's other keys (id, cached_tokens, logprobs) pass through.
_UNIFORM = {"prompt_tokens", "completion_tokens", "finish_reason", "model", "latency", "provider"}
#: SGLang sampling parameters that SamplingParams does not model: as provider options they go into
#: ``sampling_params`` (any other option goes to the top level of the request body).
SGLANG_SAMPLING_EXTRAS = frozenset({
    "repetition_penalty", "no_stop_trim", "skip_special_tokens", "spaces_between_special_tokens", "custom_params",
    "ebnf", "structural_tag", "stream_interval", "logit_bias", "sampling_seed"})


class RuntimeEndpoint(BaseBackend):
    """A backend talking to an SGLang-compatible server at ``base_url``.

    ``api_key`` is sent as ``Authorization: Bearer``; ``verify`` is ``None``/``True`` (system CAs),
    ``False`` or a path to a CA bundle; ``chat_template_name`` overrides the template matched from
    the server's model path; ``timeout`` is seconds or an ``httpx.Timeout``; ``retry`` a
    :class:`RetryPolicy`. Connects at construction (``GET /get_model_info``).
    """

    provider = PROVIDER
    #: SGLang's frontend may fork into KV-cache-sharing children and join them with
    #: ``/concate_and_append_request`` (``concatenate_and_append``).
    support_concate_and_append = True

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        verify: bool | str | None = None,
        chat_template_name: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            raise ValueError("api_key must be a non-empty str or None")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float, httpx.Timeout)):
            raise TypeError(f"timeout must be seconds or an httpx.Timeout, got {timeout!r}")
        if isinstance(timeout, (int, float)) and timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if chat_template_name is not None:
            template: ChatTemplate | None = get_chat_template(chat_template_name)  # raises if unknown
        else:
            template = None
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._api_key = Secret(api_key) if api_key else None
        self._closed = False
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            verify=_ssl_verify(verify),
            follow_redirects=False,
        )
        self._timeout = self._client.timeout
        self._verify = verify
        self.token_usage = TokenUsage()
        try:
            self.model_info: dict[str, Any] = self.request("GET", "/get_model_info")
            if not isinstance(self.model_info, dict) or "model_path" not in self.model_info:
                raise ProviderError(
                    f"/get_model_info returned no model_path: {self.model_info!r}", provider=PROVIDER
                )
        except BaseException:
            self._client.close()
            raise
        super().__init__(template or get_chat_template_by_model_path(self.model_info["model_path"]))

    # -------------------------------------------------------------------------- transport

    def request(self, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None,
                params: dict[str, Any] | None = None) -> Any:
        """Send one request (with retries) and return the parsed JSON body (or the text if not JSON).

        The low-level door for endpoints this class does not wrap; raises :class:`ProviderError`.
        """
        return self.retry.call(lambda: self._send(method, path, json, headers, params))

    async def arequest(self, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None,
                       params: dict[str, Any] | None = None) -> Any:
        """The async twin of :meth:`request` (the same retries, ``asyncio.sleep`` between them)."""
        return await self.retry.acall(lambda: self._asend(method, path, json, headers, params))

    def _make_async_client(self) -> httpx.AsyncClient:
        return self.async_client()

    def async_client(self) -> httpx.AsyncClient:
        """A new ``httpx.AsyncClient`` with this endpoint's URL, key, timeout and TLS settings.

        The caller closes it (``async with endpoint.async_client() as client:``).
        """
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self._api_key.get()}"} if self._api_key else {},
            timeout=self._timeout,
            verify=_ssl_verify(self._verify),
            follow_redirects=False,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this RuntimeEndpoint was shut down")

    def _send(self, method: str, path: str, payload: Any, headers: dict[str, str] | None = None,
              params: dict[str, Any] | None = None) -> Any:
        self._check_open()
        try:
            response = self._client.request(method, path, json=payload, headers=headers, params=params)
        except httpx.HTTPError as err:
            raise _transport_error(err, method, path) from None
        return _body(response)

    async def _asend(self, method: str, path: str, payload: Any, headers: dict[str, str] | None = None,
                     params: dict[str, Any] | None = None) -> Any:
        self._check_open()
        try:
            response = await self._async_client().request(method, path, json=payload, headers=headers, params=params)
        except httpx.HTTPError as err:
            raise _transport_error(err, method, path) from None
        return _body(response)

    def _post_generate(self, payload: dict[str, Any], **extras: Any) -> Any:
        """``POST /generate`` (with retries); the tokens of every result count in ``token_usage``."""
        return self._count(self.request("POST", "/generate", json=payload, **extras))

    async def _apost_generate(self, payload: dict[str, Any], **extras: Any) -> Any:
        """The async twin of :meth:`_post_generate`."""
        return self._count(await self.arequest("POST", "/generate", json=payload, **extras))

    def _count(self, obj: Any) -> Any:
        for result in obj if isinstance(obj, list) else [obj]:
            meta = result.get("meta_info") if isinstance(result, dict) else None
            if isinstance(meta, dict):
                self.token_usage.add(_int_or_none(meta.get("prompt_tokens")),
                                     _int_or_none(meta.get("completion_tokens")))
        return obj

    def _count_event(self, raw: dict[str, Any]) -> None:
        if raw.get("finish_reason") is not None:  # the final event: its usage is the request's
            self.token_usage.add(_int_or_none(raw.get("prompt_tokens")), _int_or_none(raw.get("completion_tokens")))

    def _raw_deltas(self, payload: dict[str, Any], headers: dict[str, str] | None = None,
                    params: dict[str, Any] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(delta, raw meta_info)`` per event of one streaming ``/generate`` request."""
        self._check_open()
        decoder = StreamDecoder()
        try:
            with self._client.stream("POST", "/generate", json=payload, headers=headers, params=params) as response:
                if response.status_code >= 300:
                    response.read()
                    _raise_for_status(response)
                for line in response.iter_lines():
                    item = decoder.feed(line)
                    if decoder.done:
                        break
                    if item is not None:
                        yield item
        except httpx.HTTPError as err:
            raise _transport_error(err, "POST", "/generate") from None
        decoder.finish()

    async def _araw_deltas(self, payload: dict[str, Any], headers: dict[str, str] | None = None,
                           params: dict[str, Any] | None = None) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The async twin of :meth:`_raw_deltas` (the response is closed on every exit, cancellation
        included: ``async with``)."""
        self._check_open()
        decoder = StreamDecoder()
        client = self._async_client()
        try:
            async with client.stream("POST", "/generate", json=payload, headers=headers, params=params) as response:
                if response.status_code >= 300:
                    await response.aread()
                    _raise_for_status(response)
                async for line in response.aiter_lines():
                    item = decoder.feed(line)
                    if decoder.done:
                        break
                    if item is not None:
                        yield item
        except httpx.HTTPError as err:
            raise _transport_error(err, "POST", "/generate") from None
        decoder.finish()

    def _meta(self, raw: dict[str, Any], started: float) -> dict[str, Any]:
        extra = {k: v for k, v in raw.items() if k not in _UNIFORM}
        return make_meta_info(
            model=self.model_info.get("model_path"),
            prompt_tokens=raw.get("prompt_tokens"),
            completion_tokens=raw.get("completion_tokens"),
            finish_reason=raw.get("finish_reason"),
            latency=time.perf_counter() - started,
            provider=PROVIDER,
            finish_reasons=FINISH_REASONS,
            **extra,
        )

    # ------------------------------------------------------------------------ info & admin

    def get_model_name(self) -> str:
        return self.model_info["model_path"]

    def get_server_info(self) -> dict[str, Any]:
        return self.request("GET", "/get_server_info")

    def flush_cache(self) -> None:
        self.request("POST", "/flush_cache")

    def start_profile(self) -> None:
        self._profile("/start_profile")

    def stop_profile(self) -> None:
        self._profile("/stop_profile")

    def _profile(self, path: str) -> None:
        try:
            self.request("POST", path)
        except ProviderError as err:
            if err.status != 405:
                raise
            self.request("GET", path)  # older servers take GET only

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    def __repr__(self) -> str:
        model = getattr(self, "model_info", {}).get("model_path", "?")
        return f"RuntimeEndpoint(base_url={self.base_url!r}, model={model!r})"

    # ------------------------------------------------------------------------------ hooks

    def cache_prefix(self, prefix_str: str) -> None:
        if not isinstance(prefix_str, str):
            raise TypeError(f"prefix_str must be a str, got {type(prefix_str).__name__}")
        self._post_generate({"text": prefix_str, "sampling_params": {"max_new_tokens": 0}})

    def commit_lazy_operations(self, s: StateView) -> None:
        self._post_generate(self._prefix_payload(s))

    async def acommit_lazy_operations(self, s: StateView) -> None:
        await self._apost_generate(self._prefix_payload(s))

    def fill_image(self, s: StateView) -> None:
        if s.images_:
            self._post_generate(self._prefix_payload(s))

    def concatenate_and_append(self, src_rids: list[str], dst_rid: str) -> None:
        if isinstance(src_rids, str) or not all(isinstance(r, str) and r for r in src_rids) or not src_rids:
            raise ValueError("src_rids must be a non-empty list of request ids")
        if not isinstance(dst_rid, str) or not dst_rid:
            raise ValueError("dst_rid must be a non-empty request id")
        try:
            self.request("POST", "/concate_and_append_request", json={"src_rids": list(src_rids), "dst_rid": dst_rid})
        except ProviderError as err:
            if err.status in (404, 405):
                raise UnsupportedOperationError(
                    f"the server at {self.base_url} has no /concate_and_append_request "
                    f"(HTTP {err.status}); concatenate_and_append needs an SGLang server that offers it",
                    provider=PROVIDER,
                    status=err.status,
                ) from None
            raise

    # ------------------------------------------------------------------------- generation

    def generate(self, s: StateView, sampling_params: SamplingParams) -> tuple[Any, dict[str, Any]]:
        return run(self, self._generate_plan(s, sampling_params))

    async def agenerate(self, s: StateView, sampling_params: SamplingParams) -> tuple[Any, dict[str, Any]]:
        """The async twin of :meth:`generate`."""
        return await arun(self, self._generate_plan(s, sampling_params))

    def _generate_plan(self, s: StateView, sampling_params: SamplingParams) -> Plan:
        sampling_params = SamplingParams.coerce(sampling_params)
        payload, extras = self._generate_request(s, sampling_params)
        started = time.perf_counter()
        obj = yield call("_post_generate", payload, **extras)
        if sampling_params.n == 1:
            result = _single(obj)
            return result["text"], self._meta(result["meta_info"], started)
        results = obj if isinstance(obj, list) else [obj]
        if len(results) != sampling_params.n:
            raise ProviderError(
                f"asked for n={sampling_params.n} completions, got {len(results)}", provider=PROVIDER
            )
        metas = [self._meta(r["meta_info"], started) for r in results]
        meta = make_meta_info(
            model=self.get_model_name(),
            prompt_tokens=metas[0]["prompt_tokens"],
            completion_tokens=sum(m["completion_tokens"] or 0 for m in metas),
            finish_reason=metas[0].get("finish_reason_raw", metas[0]["finish_reason"]),
            latency=time.perf_counter() - started,
            provider=PROVIDER,
            choices=metas,
        )
        return [r["text"] for r in results], meta

    def generate_stream(
        self, s: StateView, sampling_params: SamplingParams
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        payload, extras = self._stream_request(s, sampling_params)
        return self.retry.stream(lambda: self._deltas(payload, extras), provider=PROVIDER)

    def agenerate_stream(
        self, s: StateView, sampling_params: SamplingParams
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The async twin of :meth:`generate_stream` (an async iterator; arguments checked now)."""
        payload, extras = self._stream_request(s, sampling_params)
        return self.retry.astream(lambda: self._adeltas(payload, extras), provider=PROVIDER)

    def _stream_request(self, s: StateView, sampling_params: SamplingParams) -> tuple[dict[str, Any], dict[str, Any]]:
        sampling_params = SamplingParams.coerce(sampling_params)
        if sampling_params.n != 1:
            raise ValueError("generate_stream: n must be 1")
        payload, extras = self._generate_request(s, sampling_params)
        payload["stream"] = True
        return payload, extras

    def _deltas(self, payload: dict[str, Any], extras: dict[str, Any] | None = None
                ) -> Iterator[tuple[str, dict[str, Any]]]:
        started = time.perf_counter()
        pending_meta: dict[str, Any] | None = None
        for delta, raw in self._raw_deltas(payload, **(extras or {})):
            self._count_event(raw)
            meta = self._meta(raw, started)
            if delta:
                pending_meta = None
                yield delta, meta
            else:
                pending_meta = meta
        if pending_meta is not None:  # the last event carried no new text: deliver its meta_info
            yield "", pending_meta

    async def _adeltas(self, payload: dict[str, Any], extras: dict[str, Any] | None = None
                       ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The async twin of :meth:`_deltas` (the same rule for a last event without text)."""
        started = time.perf_counter()
        pending_meta: dict[str, Any] | None = None
        events = self._araw_deltas(payload, **(extras or {}))
        try:
            async for delta, raw in events:
                self._count_event(raw)
                meta = self._meta(raw, started)
                if delta:
                    pending_meta = None
                    yield delta, meta
                else:
                    pending_meta = meta
        finally:
            await events.aclose()
        if pending_meta is not None:
            yield "", pending_meta

    def select(
        self,
        s: StateView,
        choices: list[str],
        temperature: float,
        choices_method: ChoicesSamplingMethod,
    ) -> ChoicesDecision:
        return run(self, self._select_plan(s, choices, temperature, choices_method))

    async def aselect(
        self,
        s: StateView,
        choices: list[str],
        temperature: float,
        choices_method: ChoicesSamplingMethod,
    ) -> ChoicesDecision:
        """The async twin of :meth:`select`."""
        return await arun(self, self._select_plan(s, choices, temperature, choices_method))

    def _select_plan(
        self,
        s: StateView,
        choices: list[str],
        temperature: float,
        choices_method: ChoicesSamplingMethod,
    ) -> Plan:
        if not choices or not all(isinstance(c, str) and c for c in choices):
            raise ValueError("choices must be a non-empty list of non-empty str")
        if temperature > 1e-5:
            raise ValueError(
                f"RuntimeEndpoint.select scores choices deterministically; temperature must be 0, got {temperature}"
            )
        prompt = s.text_
        prefix = _single((yield call("_post_generate", self._prefix_payload(s))))
        prompt_len = prefix["meta_info"]["prompt_tokens"]
        payload: dict[str, Any] = {
            "text": [prompt + c for c in choices],
            "sampling_params": {"max_new_tokens": 0, "temperature": 0},
            "return_logprob": True,
            "return_text_in_logprobs": True,
            "logprob_start_len": max(prompt_len - 1, 0),
        }
        image_data = _image_data(s)
        if image_data is not None:
            payload["image_data"] = [image_data] * len(choices)
        results = yield call("_post_generate", payload)
        if not isinstance(results, list) or len(results) != len(choices):
            raise ProviderError("select: the batched /generate did not return one result per choice", provider=PROVIDER)
        input_logprobs = []
        for result in results:
            entries = list(result["meta_info"].get("input_token_logprobs") or [])
            if prompt_len >= 1 and entries:
                boundary_text = entries[0][2] if len(entries[0]) > 2 else None
                if boundary_text is None or prompt.endswith(boundary_text):
                    entries = entries[1:]  # the prompt's own last token, not part of the choice
            input_logprobs.append(entries)
        output_logprobs = [list(r["meta_info"].get("output_token_logprobs") or []) for r in results]
        unconditional = None
        if choices_method is None:
            choices_method = token_length_normalized
        if getattr(choices_method, "requires_unconditional_logprobs", False):
            if any(not entries for entries in input_logprobs):
                raise ProviderError("select: a choice has no tokens to score", provider=PROVIDER)
            uncond = yield call(
                "_post_generate",
                {
                    "input_ids": [[e[1] for e in entries] for entries in input_logprobs],
                    "sampling_params": {"max_new_tokens": 0, "temperature": 0},
                    "return_logprob": True,
                    "logprob_start_len": 0,
                },
            )
            uncond = uncond if isinstance(uncond, list) else [uncond]
            unconditional = [list(r["meta_info"].get("input_token_logprobs") or []) for r in uncond]
        decision = run_choices_method(
            choices_method,
            choices=choices,
            input_token_logprobs=input_logprobs,
            output_token_logprobs=output_logprobs,
            unconditional_token_logprobs=unconditional,
        )
        decision.meta_info["prompt_tokens"] = prompt_len
        return decision

    # --------------------------------------------------------------------------- payloads

    def _prefix_payload(self, s: StateView) -> dict[str, Any]:
        payload: dict[str, Any] = {"text": s.text_, "sampling_params": {"max_new_tokens": 0}}
        image_data = _image_data(s)
        if image_data is not None:
            payload["image_data"] = image_data
        return payload

    def _generate_request(self, s: StateView, params: SamplingParams) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(/generate body, {"headers": ..., "params": ...})`` with the provider options placed."""
        payload = self._generate_payload(s, params)
        options = merge_provider_options(self.provider_options, params.provider_options)
        return payload, apply_sglang_options(payload, options)

    def _generate_payload(self, s: StateView, params: SamplingParams) -> dict[str, Any]:
        sampling, top = to_sglang(params)
        payload: dict[str, Any] = {"text": s.text_, "sampling_params": sampling, **top}
        image_data = _image_data(s)
        if image_data is not None:
            payload["image_data"] = image_data
        return payload


# ----------------------------------------------------------------------------- parameter mapping


def to_sglang(params: SamplingParams) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(sampling_params, top_level)`` for SGLang's ``POST /generate``.

    SGLang honours every field. ``dtype`` becomes ``regex`` (:data:`DTYPE_REGEX`); the logprob
    fields go to the top level of the request body. Only set fields are sent (plus
    ``max_new_tokens``), so the server's defaults apply to the rest.
    """
    chosen = params.set_fields()
    sampling: dict[str, Any] = {"max_new_tokens": params.max_new_tokens}
    top: dict[str, Any] = {}
    for name, value in chosen.items():
        if name in ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs"):
            top[name] = value
        elif name == "dtype":
            sampling["regex"] = DTYPE_REGEX[value]
        elif name in ("stop", "stop_token_ids", "stop_regex"):
            sampling[name] = list(value)
        else:
            sampling[name] = value
    return sampling, top



def apply_sglang_options(payload: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Place the provider options in a ``/generate`` ``payload`` (in place, see the module docstring);
    returns the request's ``{"headers": ..., "params": ...}`` (empty when there are none)."""
    extras: dict[str, Any] = {}
    if not options:
        return extras
    options = dict(options)
    if "cache_control" in options:
        raise UnsupportedParameterError(
            "sglang: no cache_control markers; the server's radix cache reuses shared prefixes by itself",
            provider=PROVIDER)
    if options.get("extra_headers"):
        extras["headers"] = dict(options.pop("extra_headers"))
    if options.get("extra_query"):
        extras["params"] = dict(options.pop("extra_query"))
    options.pop("extra_headers", None)
    options.pop("extra_query", None)
    top = {**options.pop("extra_body", {})}
    sampling = payload["sampling_params"]
    for name, value in options.items():
        if name in SGLANG_SAMPLING_EXTRAS:
            refuse_overrides(PROVIDER, {name: value}, sampling)
            sampling[name] = value
        else:
            top[name] = value
    refuse_overrides(PROVIDER, top, payload)
    payload.update(top)
    return extras


class StreamDecoder:
    """Turns the lines of an SGLang ``/generate`` stream into ``(delta, meta_info)`` pairs.

    Shared by the sync backend and ``Runtime.async_generate``. ``feed`` returns None for lines that
    carry no event (blank separators, comments, ``[DONE]``, which sets ``done``) and raises
    :class:`ProviderError` for error events and protocol violations (invalid JSON, non-cumulative
    text). ``finish`` raises if the stream ended without ``[DONE]`` and without a finish reason.
    """

    def __init__(self) -> None:
        self.text = ""
        self.done = False
        self.finished = False

    def feed(self, line: str) -> tuple[str, dict[str, Any]] | None:
        if self.done or not line.startswith("data:"):
            return None
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return None
        try:
            event = json.loads(data)
        except ValueError:
            raise ProviderError(f"invalid stream event: {data[:200]!r}", provider=PROVIDER) from None
        if isinstance(event, dict) and "error" in event:
            raise _event_error(event["error"])
        if not isinstance(event, dict) or not isinstance(event.get("text"), str):
            raise ProviderError(f"stream event without text: {data[:200]!r}", provider=PROVIDER)
        text, meta = event["text"], event.get("meta_info") or {}
        if not text.startswith(self.text):
            raise ProviderError(
                "stream text is not cumulative (a chunk does not extend the text so far)", provider=PROVIDER
            )
        delta, self.text = text[len(self.text):], text
        self.finished = meta.get("finish_reason") is not None
        return delta, meta

    def finish(self) -> None:
        if not self.done and not self.finished:
            raise APIConnectionError("the stream ended before [DONE]", provider=PROVIDER)


# ------------------------------------------------------------------------------------ helpers


def _ssl_verify(verify: bool | str | None) -> bool | ssl.SSLContext:
    if verify is None or verify is True:
        return True
    if verify is False:
        return False
    if isinstance(verify, str):
        try:
            return ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as err:
            raise ValueError(f"verify: cannot load CA bundle {verify!r}: {err}") from None
    raise TypeError(f"verify must be None, a bool or a CA bundle path, got {verify!r}")


def _image_data(s: StateView) -> str | list[str] | None:
    images = [data for _, data in s.images_]
    if not images:
        return None
    return images[0] if len(images) == 1 else images


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _single(obj: Any) -> dict[str, Any]:
    if isinstance(obj, list) and len(obj) == 1:
        obj = obj[0]
    if not isinstance(obj, dict) or "text" not in obj or "meta_info" not in obj:
        raise ProviderError(f"unexpected /generate response: {str(obj)[:200]}", provider=PROVIDER)
    return obj


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        for key in ("message", "detail"):
            if body.get(key):
                return str(body[key])
    return json.dumps(body)[:2000]


def _body(response: httpx.Response) -> Any:
    """The parsed JSON body of a (read) response, its text if not JSON, None if empty; raises for errors."""
    _raise_for_status(response)
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 300:
        return
    if response.status_code < 400:  # redirects are not followed: the bearer key stays with base_url
        raise error_from_status(
            response.status_code,
            f"unexpected redirect to {response.headers.get('location')!r}; use the final URL as base_url",
            provider=PROVIDER,
        )
    raise error_from_status(
        response.status_code,
        _error_message(response),
        provider=PROVIDER,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


def _event_error(error: Any) -> ProviderError:
    if isinstance(error, dict):
        message = str(error.get("message") or error)
        code = error.get("code")
    else:
        message, code = str(error), None
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    return error_from_status(status, f"error event in stream: {message}", provider=PROVIDER)


def _transport_error(err: httpx.HTTPError, method: str, path: str) -> ProviderError:
    where = f"{method} {path}"
    if isinstance(err, httpx.ConnectTimeout):
        return APIConnectionError(f"{where}: timed out connecting", provider=PROVIDER)
    if isinstance(err, httpx.TimeoutException):
        return APITimeoutError(f"{where}: timed out ({type(err).__name__})", provider=PROVIDER)
    if isinstance(err, httpx.TransportError):
        return APIConnectionError(f"{where}: {type(err).__name__}: {err}", provider=PROVIDER)
    return ProviderError(f"{where}: {type(err).__name__}: {err}", provider=PROVIDER)
