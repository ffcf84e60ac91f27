"""Vertex AI backend (Gemini models), on the ``google-genai`` SDK with ``vertexai=True``.

    backend = VertexAI("gemini-2.5-flash", project="my-project", location="us-central1")
    backend = VertexAI("gemini-2.5-flash")                 # GCP_PROJECT_ID / GCP_LOCATION
    backend = VertexAI("gemini-2.5-flash", api_key=...)    # Vertex AI express mode (no project)

Configuration. ``project`` / ``location`` come from the arguments, else from ``GCP_PROJECT_ID`` /
``GCP_LOCATION``. Without a project (and without ``api_key``, which selects Vertex AI *express mode*)
the constructor raises ``ValueError`` naming both variables. The location is optional, as in SGLang's
backend: without one, ``GOOGLE_CLOUD_LOCATION`` or the SDK's default, ``"global"``. Credentials are Google's Application Default
Credentials unless ``credentials=`` (any ``google.auth`` credentials object) is given.
``base_url=`` points the SDK elsewhere (a proxy, a private endpoint, or a test server): the SDK
then sends ``{base_url}/v1beta1/projects/{project}/locations/{location}/publishers/google/models/
{model}:generateContent`` (``:streamGenerateContent?alt=sse`` for streams) with the bearer token of
the credentials -- e.g. ``google.oauth2.credentials.Credentials(token="...")`` for a fixed token, which
is how the tests reach a loopback server without any Google account. ``safety_settings`` (a list of
``google.genai.types.SafetySetting`` or dicts) is sent with every request.

Requests. ``system`` turns become ``system_instruction``; ``user`` -> ``user`` and ``assistant`` ->
``model`` contents; images become ``inline_data`` parts with the MIME type sniffed from their bytes.
Gemini cannot continue a partial model turn, so text already written into the open assistant turn
is an error (``ValueError``), as for OpenAI. Parameters: :func:`to_vertexai_config`
(``n`` -> ``candidate_count``; ``json_schema`` -> ``response_json_schema`` with
``application/json``; ``dtype`` -> a one-field JSON schema, parsed back to ``DTYPE_REGEX`` syntax).

``select`` -- ``"response_enum"``: Gemini's enum output mode (``response_mime_type="text/x.enum"``
with a string schema whose ``enum`` is the choices) constrains decoding to exactly one choice in one
request; an answer outside the list (which the constraint rules out) would still be mapped by the
generate-and-match rules and flagged in ``meta_info["match"]``.

Retries: google-genai's own retry options do not honour ``Retry-After``, so this backend leaves them
off and uses :class:`~providers.retry.RetryPolicy` (``retry_policy=``; default: 2 retries,
exponential backoff from 0.5 s with jitter, ``Retry-After`` honoured up to 60 s) by the one rule of
``errors.py``: connection errors, timeouts, 408/409/429/5xx -- never other 4xx (``timeout=`` seconds;
the SDK counts milliseconds, converted here). Streams are retried only before their first chunk; after it a failure,
or a stream that ends without a finish reason, raises :class:`~providers.errors.StreamInterruptedError`.

Usage: ``meta_info`` and ``backend.token_usage`` count ``prompt_token_count`` as prompt tokens and
``candidates_token_count`` plus ``thoughts_token_count`` (thinking tokens, reported separately as
``reasoning_tokens``) as completion tokens. A response without candidates (a blocked prompt) returns
``""`` with finish_reason ``"content_filter"`` and ``meta_info["block_reason"]``.

Async: ``agenerate`` / ``agenerate_stream`` / ``aselect`` use the SDK's async client
(``client.aio.models``), with the same retry policy (``asyncio.sleep`` between attempts), timeout and
stream rules.

Provider options (``providers/options.py``): a name that is a ``GenerateContentConfig`` field goes
into the config (``thinking_config`` -> ``generationConfig.thinkingConfig`` on the wire, ``seed`` ->
``generationConfig.seed``, ``labels`` -> ``labels``, ``cached_content`` -> ``cachedContent``...);
``extra_headers`` -> HTTP headers and ``extra_body`` -> merged into the JSON body (both through the
request's ``http_options``); any other name -> the top-level body field of that name.
``cache_control`` raises :class:`~providers.errors.UnsupportedParameterError`: Gemini caches through
``cached_content`` (a cache resource name), not markers.

This module owns everything about Gemini on Vertex AI: parameters (:func:`to_vertexai_config`), finish
reasons (:data:`FINISH_REASONS`) and errors (the generic rules); the flow is
:class:`~providers.api_backend.APIBackend`'s.
"""

from __future__ import annotations

import base64
import json
import os
import types
from typing import Any

from .api_backend import APIBackend, Completion, StreamReader, StreamResult
from .chat_template import ChatTemplate
from .messages import chat_turns, parse_data_url
from .retry import RetryPolicy
from .sampling import SamplingParams, check_supported, dtype_json_schema, parse_dtype_output
from .errors import UnsupportedParameterError, register_secret
from .options import refuse_overrides
from .sdk_errors import import_sdk, translating

__all__ = ["VertexAI", "FINISH_REASONS", "to_vertexai_config"]


#: The location when neither location= nor GCP_LOCATION / GOOGLE_CLOUD_LOCATION gives one (google-genai's own default).
DEFAULT_LOCATION = "global"

#: Gemini's finish reasons (enum names).
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
                  "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
                  "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
                  "IMAGE_SAFETY": "content_filter", "MALFORMED_FUNCTION_CALL": "error"}


class VertexAI(APIBackend):
    """Gemini on Vertex AI (see the module docstring)."""

    provider = "vertexai"
    finish_reasons = FINISH_REASONS
    select_method = "response_enum"

    def __init__(
        self,
        model_name: str,
        safety_settings: list[Any] | None = None,
        project: str | None = None,
        location: str | None = None,
        *,
        chat_template: ChatTemplate | None = None,
        credentials: Any = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | None = 600.0,
        retry_policy: RetryPolicy | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        genai = import_sdk("google.genai", "VertexAI")
        self._types = import_sdk("google.genai.types", "VertexAI")
        if not isinstance(model_name, str) or not model_name:
            raise ValueError("model_name must be a non-empty str")
        self.project = project or os.environ.get("GCP_PROJECT_ID") or None
        self.location = (location or os.environ.get("GCP_LOCATION") or os.environ.get("GOOGLE_CLOUD_LOCATION")
                         or DEFAULT_LOCATION)
        if api_key:
            register_secret(api_key)
            if project or location:
                raise ValueError("VertexAI: api_key (express mode) and project/location are mutually exclusive")
            self.project = self.location = None
        elif not self.project:
            raise ValueError(
                "VertexAI needs a Google Cloud project: pass project= (and optionally location=) or set "
                "GCP_PROJECT_ID (and GCP_LOCATION), or pass api_key= for express mode"
            )
        self.safety_settings = list(safety_settings) if safety_settings else None
        self.timeout = timeout
        self.retry = retry_policy or RetryPolicy()
        self._secrets = (api_key,) if api_key else ()
        options: dict[str, Any] = {}
        if base_url:
            options["base_url"] = base_url
        if timeout is not None:
            options["timeout"] = int(timeout * 1000)
        if headers:
            options["headers"] = dict(headers)
        kwargs: dict[str, Any] = {"vertexai": True, "http_options": self._types.HttpOptions(**options)}
        if api_key:
            kwargs["api_key"] = api_key
        else:
            kwargs.update(project=self.project, location=self.location)
            if credentials is not None:
                kwargs["credentials"] = credentials
        with translating(self.provider, self._secrets):
            self.client = genai.Client(**kwargs)
        super().__init__(model_name, chat_template)

    def __repr__(self) -> str:
        where = f"{self.project}/{self.location}" if self.project else "express"
        return f"VertexAI(model={self.model_name!r}, {where})"

    def shutdown(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()

    def map_params(self, params: SamplingParams) -> dict[str, Any]:
        return to_vertexai_config(params)

    # ------------------------------------------------------------------------------ request

    def _contents(self, s: Any) -> tuple[list[Any], str | None]:
        types = self._types
        messages, _ = chat_turns(s, allow_prefill=False, backend=self.provider)
        system: list[str] = []
        contents = []
        for m in messages:
            parts = _parts(types, m["content"])
            if m["role"] == "system":
                if any(p.text is None for p in parts):
                    raise ValueError("vertexai: a system turn can hold text only (no images)")
                system.append("".join(p.text for p in parts))
                continue
            role = {"user": "user", "assistant": "model"}.get(m["role"])
            if role is None:
                raise ValueError(f"vertexai: unsupported role {m['role']!r}")
            contents.append(types.Content(role=role, parts=parts))
        return contents, ("\n\n".join(system) if system else None)

    def _config(self, system: str | None, fields: dict[str, Any]) -> Any:
        if system is not None:
            fields["system_instruction"] = system
        if self.safety_settings:
            fields["safety_settings"] = self.safety_settings
        return self._types.GenerateContentConfig(**fields)

    def _request(self, s: Any, params: SamplingParams) -> tuple[list[Any], Any]:
        fields = self.map_params(params)
        if params.dtype is not None:
            fields["response_mime_type"] = "application/json"
            fields["response_json_schema"] = dtype_json_schema(params.dtype)
        self._apply_options(fields, self._options(params))
        contents, system = self._contents(s)
        return contents, self._config(system, fields)

    def _apply_options(self, fields: dict[str, Any], options: dict[str, Any]) -> None:
        """Place the provider options in the config ``fields`` (see the module docstring)."""
        if not options:
            return
        options = dict(options)
        if "cache_control" in options:
            raise UnsupportedParameterError(
                "vertexai: Gemini has no cache_control markers; pass provider_options={'cached_content': "
                "'<cache resource name>'} to use a context cache", provider=self.provider)
        config_fields = set(self._types.GenerateContentConfig.model_fields)
        body = dict(options.pop("extra_body", {}))
        headers = options.pop("extra_headers", None)
        if "extra_query" in options:
            raise UnsupportedParameterError("vertexai: the SDK sends no extra_query parameters",
                                            provider=self.provider)
        taken = set(fields) | {"system_instruction", "safety_settings", "http_options", "contents", "model"}
        refuse_overrides(self.provider, {**body, **options}, taken)
        for name, value in options.items():
            if name in config_fields:
                fields[name] = value
            else:
                body[name] = value
        http: dict[str, Any] = {}
        if body:
            http["extra_body"] = body
        if headers:
            http["headers"] = dict(headers)
        if http:
            if self.timeout is not None:
                http["timeout"] = int(self.timeout * 1000)
            fields["http_options"] = self._types.HttpOptions(**http)

    def _select_request(self, s: Any, choices: list[str], params: SamplingParams) -> tuple[list[Any], Any]:
        """Gemini's enum mode: decoding constrained to exactly one of the choices, one request."""
        contents, system = self._contents(s)
        fields = {
            "temperature": params.temperature,
            "max_output_tokens": params.max_new_tokens,
            "response_mime_type": "text/x.enum",
            "response_schema": {"type": "STRING", "enum": list(choices)},
        }
        self._apply_options(fields, self.provider_options)
        return contents, self._config(system, fields)

    def _usage(self, resp: Any) -> tuple[int | None, int | None, dict[str, Any]]:
        u = getattr(resp, "usage_metadata", None)
        if u is None:
            return None, None, {}
        prompt = u.prompt_token_count
        thoughts = u.thoughts_token_count or 0
        completion = (u.candidates_token_count or 0) + thoughts if (u.candidates_token_count is not None or thoughts) \
            else None
        extra = {"reasoning_tokens": thoughts} if thoughts else {}
        if u.cached_content_token_count:
            extra["cached_tokens"] = u.cached_content_token_count
        return prompt, completion, extra

    # ----------------------------------------------------------------------------- generate

    def _complete(self, request: tuple[list[Any], Any], params: SamplingParams) -> Completion:
        contents, config = request
        return self._completion(self.call(lambda: self.client.models.generate_content(
            model=self.model_name, contents=contents, config=config)), params)

    async def _acomplete(self, request: tuple[list[Any], Any], params: SamplingParams) -> Completion:
        contents, config = request
        return self._completion(await self.acall(lambda: self.client.aio.models.generate_content(
            model=self.model_name, contents=contents, config=config)), params)

    def _completion(self, resp: Any, params: SamplingParams) -> Completion:
        prompt, completion, extra = self._usage(resp)
        extra["id"] = getattr(resp, "response_id", None)
        model = getattr(resp, "model_version", None)
        cands = sorted(resp.candidates or [], key=lambda c: c.index or 0)
        if not cands:
            feedback = getattr(resp, "prompt_feedback", None)
            extra["block_reason"] = getattr(getattr(feedback, "block_reason", None), "name", None)
            return Completion(texts=[""] * params.n, finish_reasons=["content_filter"] * params.n,
                              prompt_tokens=prompt, completion_tokens=completion, model=model, extra=extra)
        texts = [_candidate_text(c) for c in cands]
        if params.dtype is not None:
            texts = [parse_dtype_output(params.dtype, t, provider=self.provider) for t in texts]
        return Completion(texts=texts, finish_reasons=[c.finish_reason for c in cands], prompt_tokens=prompt,
                          completion_tokens=completion, model=model, extra=extra)

    def _open_stream(self, request: tuple[list[Any], Any], params: SamplingParams):
        contents, config = request
        return self.client.models.generate_content_stream(model=self.model_name, contents=contents, config=config)

    async def _aopen_stream(self, request: tuple[list[Any], Any], params: SamplingParams):
        contents, config = request
        return _ClosingStream(await self.client.aio.models.generate_content_stream(
            model=self.model_name, contents=contents, config=config))

    def _stream_reader(self, request: tuple[list[Any], Any], params: SamplingParams, out: StreamResult
                       ) -> StreamReader:
        return _ChunkReader(self, out)


class _ClosingStream:
    """google-genai's async stream, closed all the way down.

    The SDK's stream is a stack of async generators; the innermost one belongs to an ``HttpResponse``
    that keeps it as an attribute (``segment_iterator``) -- a reference cycle -- so closing the
    outer generator early (cancellation, ``break``, an error) leaves the HTTP response open, and its
    connection taken, until the garbage collector runs. ``aclose`` closes every generator of the
    stack, outermost first, which runs the SDK's own ``finally`` that releases the response.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._iterator = stream.__aiter__()

    def __aiter__(self) -> Any:
        return self._iterator

    async def aclose(self) -> None:
        stack = _generator_stack(self._iterator)
        for agen in stack:
            await agen.aclose()


def _generator_stack(start: Any) -> list[Any]:
    """The suspended async generators reachable from ``start`` through frame locals (and the SDK's
    ``segment_iterator`` attribute), outermost first."""
    found: list[Any] = []
    seen: set[int] = set()
    pending = [start]
    while pending and len(found) < 32:
        obj = pending.pop(0)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.AsyncGeneratorType):
            found.append(obj)
            frame = obj.ag_frame
            if frame is not None:
                pending.extend(v for v in frame.f_locals.values()
                               if isinstance(v, types.AsyncGeneratorType) or hasattr(v, "segment_iterator"))
        else:
            inner = getattr(obj, "segment_iterator", None)
            if isinstance(inner, types.AsyncGeneratorType):
                pending.append(inner)
    return found


class _ChunkReader(StreamReader):
    """Gemini stream chunks -> text deltas, finish reason, usage."""

    def __init__(self, backend: VertexAI, out: StreamResult) -> None:
        self.backend = backend
        self.out = out

    def feed(self, chunk: Any) -> list[str]:
        out = self.out
        if getattr(chunk, "usage_metadata", None) is not None:
            out.prompt_tokens, out.completion_tokens, usage_extra = self.backend._usage(chunk)
            out.extra.update(usage_extra)
        out.model = getattr(chunk, "model_version", None) or out.model
        deltas = []
        for cand in chunk.candidates or []:
            if cand.finish_reason is not None:
                out.finish_reason = cand.finish_reason
            piece = _candidate_text(cand)
            if piece:
                deltas.append(piece)
        return deltas


# ------------------------------------------------------------------------------ parameter mapping


def to_vertexai_config(params: SamplingParams) -> dict[str, Any]:
    """Fields of google-genai's ``GenerateContentConfig``.

    ``max_output_tokens`` always; ``candidate_count`` for ``n``; ``stop_sequences``; the sampling
    knobs Gemini has (temperature, top_p, top_k, presence/frequency penalties; ``min_p`` warns);
    ``json_schema`` -> ``response_mime_type="application/json"`` + ``response_json_schema`` (the
    schema as given, JSON Schema dialect); logprobs -> ``response_logprobs`` (+ ``logprobs``).
    """
    supported = {"n", "stop", "temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty",
                 "json_schema", "dtype", "return_logprob", "top_logprobs_num", "return_text_in_logprobs"}
    chosen = check_supported(params, "vertexai", supported)
    config: dict[str, Any] = {"max_output_tokens": params.max_new_tokens}
    for name in ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty"):
        if name in chosen:
            config[name] = chosen[name]
    if "n" in chosen:
        config["candidate_count"] = chosen["n"]
    if "stop" in chosen:
        config["stop_sequences"] = list(chosen["stop"])
    if "json_schema" in chosen:
        config["response_mime_type"] = "application/json"
        config["response_json_schema"] = json.loads(chosen["json_schema"])
    if params.return_logprob or params.top_logprobs_num:
        config["response_logprobs"] = True
        if params.top_logprobs_num:
            config["logprobs"] = params.top_logprobs_num
    return config


# ------------------------------------------------------------------------------------ helpers


def _parts(types: Any, content: Any) -> list[Any]:
    if isinstance(content, str):
        return [types.Part(text=content)]
    parts = []
    for part in content:
        if part.get("type") == "text":
            parts.append(types.Part(text=part["text"]))
        elif part.get("type") == "image_url":
            mime, data = parse_data_url(part["image_url"]["url"])
            parts.append(types.Part.from_bytes(data=base64.b64decode(data), mime_type=mime))
        else:
            raise ValueError(f"vertexai: unsupported content part {part.get('type')!r}")
    return parts


def _candidate_text(cand: Any) -> str:
    content = getattr(cand, "content", None)
    return "".join(p.text for p in (getattr(content, "parts", None) or []) if p.text and not getattr(p, "thought", None))
