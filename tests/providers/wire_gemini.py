"""Loopback server speaking the Gemini ``generateContent`` wire format as served by Vertex AI.

Routes (any API version prefix, e.g. ``/v1beta1``):

* ``POST /{v}/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent``
* ``POST ...:streamGenerateContent?alt=sse`` -- SSE, one ``data: {GenerateContentResponse}`` per chunk
* the Vertex "express mode" form without ``projects/.../locations/...`` (API-key auth).

Responses are ``{"candidates": [{"content": {"role": "model", "parts": [{"text"}]}, "finishReason",
"index"}], "usageMetadata": {"promptTokenCount", "candidatesTokenCount", "totalTokenCount"},
"modelVersion"}``; errors are ``{"error": {"code", "message", "status"}}``.

The fake model: each candidate (``generationConfig.candidateCount``) takes the next queued reply
(default ``"Hello from Gemini"``), cut at ``stopSequences`` (finishReason ``STOP``) and at
``maxOutputTokens`` words (``MAX_TOKENS``). For ``responseMimeType: "text/x.enum"`` the reply must be
one of the schema's ``enum`` values (the server picks ``enum_pick(values)``, default the first) --
the constrained decoding a real model does. Like the real API it rejects unknown roles
(only ``user`` and ``model``) and a ``system`` role inside ``contents``.
"""

from __future__ import annotations

import re

from .wire_http import Break, Request, WireServer, count_tokens, cut_reply, pieces, sse

_ROUTE = re.compile(
    r"^/(?P<version>v[0-9a-z]+)/(?:projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/)?"
    r"publishers/google/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$"
)
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def _parts_text(parts) -> str:
    return " ".join(p.get("text", "") for p in parts or [] if isinstance(p, dict) and "text" in p)


class GeminiServer(WireServer):
    api = "gemini"

    def __init__(self, token: str | None = None, api_key: str | None = None, lifetime: float = 120.0):
        super().__init__(lifetime=lifetime)
        self.token = token  # expected OAuth bearer token (project/location mode)
        self.api_key = api_key  # expected x-goog-api-key (express mode)
        self.default_reply = "Hello from Gemini"
        self.enum_pick = lambda values: values[0]
        self.stream_delay = 0.0

    def error_body(self, status, message):
        return {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}}

    def _err(self, h, status, msg):
        self.send_json(h, self.error_body(status, msg), status=status)

    def handle(self, h, req: Request, action) -> None:
        m = _ROUTE.match(req.path)
        if not m:
            return self._err(h, 404, f"no route {req.path}")
        if m.group("project"):
            if self.token is not None and req.header("authorization") != f"Bearer {self.token}":
                return self._err(h, 401, "Request had invalid authentication credentials.")
        elif self.api_key is not None and req.header("x-goog-api-key") != self.api_key:
            return self._err(h, 400, f"API key not valid: {req.header('x-goog-api-key')}. Please pass a valid API key.")
        body = req.json or {}
        contents = body.get("contents") or []
        for c in contents:
            if c.get("role") not in ("user", "model"):
                return self._err(h, 400, f"Please use a valid role: user, model. Got {c.get('role')!r}.")
        cfg = body.get("generationConfig") or {}
        n = int(cfg.get("candidateCount") or 1)
        limit = cfg.get("maxOutputTokens")
        stops = cfg.get("stopSequences") or []
        prompt_tokens = sum(count_tokens(_parts_text(c.get("parts"))) for c in contents)
        prompt_tokens += count_tokens(_parts_text((body.get("systemInstruction") or {}).get("parts")))
        cands = []
        for i in range(n):
            if cfg.get("responseMimeType") == "text/x.enum":
                schema = cfg.get("responseSchema") or cfg.get("responseJsonSchema") or {}
                values = schema.get("enum") or []
                if not values:
                    return self._err(h, 400, "text/x.enum needs a response schema with enum values")
                text, finish = self.enum_pick(values), "STOP"
            else:
                text, hit_limit = cut_reply(self.next_reply(req, self.default_reply), stops, limit)
                finish = "MAX_TOKENS" if hit_limit else "STOP"
            cands.append({"text": text, "finish": finish, "index": i})
        out_tokens = sum(count_tokens(c["text"]) for c in cands)
        usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out_tokens,
                 "totalTokenCount": prompt_tokens + out_tokens}
        model = m.group("model")

        if m.group("method") == "generateContent":
            resp = {"candidates": [{"content": {"role": "model", "parts": [{"text": c["text"]}]},
                                    "finishReason": c["finish"], "index": c["index"]} for c in cands],
                    "usageMetadata": usage, "modelVersion": model, "responseId": "resp-loopback"}
            if isinstance(action, Break):
                return self.send_partial_json(h, resp)
            return self.send_json(h, resp)

        if req.query.get("alt") != "sse":
            return self._err(h, 400, "this loopback server streams only with alt=sse")
        events = []
        for c in cands:
            ps = pieces(c["text"]) or [""]
            for j, p in enumerate(ps):
                cand = {"content": {"role": "model", "parts": [{"text": p}]}, "index": c["index"]}
                last = j == len(ps) - 1
                if last:
                    cand["finishReason"] = c["finish"]
                chunk = {"candidates": [cand], "modelVersion": model, "responseId": "resp-loopback"}
                if last and c is cands[-1]:
                    chunk["usageMetadata"] = usage
                else:
                    chunk["usageMetadata"] = {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens}
                events.append(sse(chunk).replace(b"\n\n", b"\r\n\r\n"))
        self.stream(h, events, action, delay=self.stream_delay)
