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
is an error (``ValueError``), as for OpenAI. Parameters: :func:`~providers.sampling.to_vertexai_config`
(``n`` -> ``candidate_count``; ``json_schema`` -> ``response_json_schema`` with
``application/json``; ``dtype`` -> a one-field JSON schema, parsed back to ``DTYPE_REGEX`` syntax).

``select`` -- ``"response_enum"``: Gemini's enum output mode (``response_mime_type="text/x.enum"``
with a string schema whose ``enum`` is the choices) constrains decoding to exactly one choice in one
request; an answer outside the list (which the constraint rules out) would still be mapped by the
generate-and-match rules and flagged in ``meta_info["match"]``.

Retries: google-genai's own retry options do not honour ``Retry-After``, so this backend leaves them
off and uses :class:`~providers.retry.RetryPolicy` (``retry_policy=``; default: 2 retries,
exponential backoff from 0.5 s with jitter, ``Retry-After`` honoured up to 60 s) on 429, 5xx and
connection errors -- never on other 4xx, nor on timeouts (``timeout=`` seconds; the SDK counts
milliseconds, converted here). Streams are retried only before their first chunk; after it a failure,
or a stream that ends without a finish reason, raises :class:`~providers.errors.StreamInterruptedError`.

Usage: ``meta_info`` and ``backend.token_usage`` count ``prompt_token_count`` as prompt tokens and
``candidates_token_count`` plus ``thoughts_token_count`` (thinking tokens, reported separately as
``reasoning_tokens``) as completion tokens. A response without candidates (a blocked prompt) returns
``""`` with finish_reason ``"content_filter"`` and ``meta_info["block_reason"]``.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from typing import Any

from .base import BaseBackend, make_meta_info
from .chat_template import ChatTemplate, get_chat_template_by_model_path
from .choices import ChoicesDecision, ChoicesSamplingMethod, match_choice
from .errors import ProviderError, register_secret
from .messages import chat_turns, parse_data_url
from .retry import RetryPolicy
from .sampling import SamplingParams, dtype_json_schema, parse_dtype_output, to_vertexai_config
from .sdk_errors import import_sdk, translating
from .usage import TokenUsage

__all__ = ["VertexAI"]


#: The location when neither location= nor GCP_LOCATION / GOOGLE_CLOUD_LOCATION gives one (google-genai's own default).
DEFAULT_LOCATION = "global"


class VertexAI(BaseBackend):
    """Gemini on Vertex AI (see the module docstring)."""

    provider = "vertexai"

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
        self.model_name = model_name
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
        self.token_usage = TokenUsage()
        super().__init__(chat_template or get_chat_template_by_model_path(model_name))

    def get_model_name(self) -> str:
        return self.model_name

    def __repr__(self) -> str:
        where = f"{self.project}/{self.location}" if self.project else "express"
        return f"VertexAI(model={self.model_name!r}, {where})"

    def shutdown(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()

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

    def _prepare(self, s: Any, params: SamplingParams) -> tuple[list[Any], Any]:
        fields = to_vertexai_config(params)
        if params.dtype is not None:
            fields["response_mime_type"] = "application/json"
            fields["response_json_schema"] = dtype_json_schema(params.dtype)
        contents, system = self._contents(s)
        return contents, self._config(system, fields)

    def _call(self, contents: list[Any], config: Any) -> Any:
        def once():
            with translating(self.provider, self._secrets):
                return self.client.models.generate_content(model=self.model_name, contents=contents, config=config)

        return self.retry.call(once)

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

    def generate(self, s: Any, sampling_params: SamplingParams) -> tuple[Any, dict[str, Any]]:
        params = sampling_params
        contents, config = self._prepare(s, params)
        t0 = time.perf_counter()
        resp = self._call(contents, config)
        latency = time.perf_counter() - t0
        prompt, completion, extra = self._usage(resp)
        self.token_usage.add(prompt, completion)
        model = getattr(resp, "model_version", None) or self.model_name
        extra["id"] = getattr(resp, "response_id", None)
        cands = sorted(resp.candidates or [], key=lambda c: c.index or 0)
        if not cands:
            feedback = getattr(resp, "prompt_feedback", None)
            block = getattr(getattr(feedback, "block_reason", None), "name", None)
            meta = make_meta_info(model=model, prompt_tokens=prompt, completion_tokens=completion,
                                  finish_reason="content_filter", latency=latency, block_reason=block, **extra)
            return ([""] * params.n if params.n > 1 else ""), meta
        texts = [self._finish_text(_candidate_text(c), params) for c in cands]
        finishes = [c.finish_reason for c in cands]
        if params.n == 1:
            return texts[0], make_meta_info(model=model, prompt_tokens=prompt, completion_tokens=completion,
                                            finish_reason=finishes[0], latency=latency, **extra)
        per = [make_meta_info(model=model, prompt_tokens=prompt, completion_tokens=None, finish_reason=f,
                              latency=latency) for f in finishes]
        return texts, make_meta_info(model=model, prompt_tokens=prompt, completion_tokens=completion,
                                     finish_reason=finishes[0], latency=latency, choices=per, **extra)

    def _finish_text(self, text: str, params: SamplingParams) -> str:
        return text if params.dtype is None else parse_dtype_output(params.dtype, text, provider=self.provider)

    def generate_stream(self, s: Any, sampling_params: SamplingParams) -> Iterator[tuple[str, dict[str, Any]]]:
        params = sampling_params
        if params.n != 1:
            raise ValueError("vertexai: generate_stream streams one continuation; n must be 1")
        if params.dtype is not None:  # a constrained value is decided whole: one delta
            yield self.generate(s, params)
            return
        contents, config = self._prepare(s, params)
        t0 = time.perf_counter()
        state: dict[str, Any] = {}

        def open_stream() -> Iterator[tuple[str, dict[str, Any]]]:
            state.clear()
            with translating(self.provider, self._secrets):
                chunks = self.client.models.generate_content_stream(
                    model=self.model_name, contents=contents, config=config)
                try:
                    for chunk in chunks:
                        if getattr(chunk, "usage_metadata", None) is not None:
                            state["usage"] = chunk
                        state["model"] = getattr(chunk, "model_version", None) or state.get("model")
                        for cand in chunk.candidates or []:
                            if cand.finish_reason is not None:
                                state["finish"] = cand.finish_reason
                            piece = _candidate_text(cand)
                            if piece:
                                yield piece, {"model": state.get("model") or self.model_name, "finish_reason": None}
                finally:
                    close = getattr(chunks, "close", None)
                    if close is not None:
                        close()
            if state.get("finish") is None:
                raise ProviderError("the stream ended without a finish reason (cut off)", provider=self.provider)

        yield from self.retry.stream(open_stream, provider=self.provider)
        prompt, completion, extra = self._usage(state.get("usage"))
        self.token_usage.add(prompt, completion)
        yield "", make_meta_info(model=state.get("model") or self.model_name, prompt_tokens=prompt,
                                 completion_tokens=completion, finish_reason=state.get("finish"),
                                 latency=time.perf_counter() - t0, **extra)

    # ------------------------------------------------------------------------------- select

    def select(
        self,
        s: Any,
        choices: list[str],
        temperature: float,
        choices_method: ChoicesSamplingMethod | None,
    ) -> ChoicesDecision:
        contents, system = self._contents(s)
        config = self._config(system, {
            "temperature": temperature,
            "max_output_tokens": max(16, max(len(c) for c in choices) + 16),
            "response_mime_type": "text/x.enum",
            "response_schema": {"type": "STRING", "enum": list(choices)},
        })
        t0 = time.perf_counter()
        resp = self._call(contents, config)
        prompt, completion, extra = self._usage(resp)
        self.token_usage.add(prompt, completion)
        cands = resp.candidates or []
        text = _candidate_text(cands[0]) if cands else ""
        index, rule = match_choice(text, choices)
        meta = make_meta_info(model=getattr(resp, "model_version", None) or self.model_name, prompt_tokens=prompt,
                              completion_tokens=completion, finish_reason=cands[0].finish_reason if cands else None,
                              latency=time.perf_counter() - t0, method="response_enum", generated=text, match=rule,
                              requests=1, requested_method=getattr(choices_method, "name", None), **extra)
        return ChoicesDecision(choices[index], meta)


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
