"""Loopback server speaking the OpenAI wire format (and Azure OpenAI's deployment URLs).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` and the Azure forms
``POST /openai/deployments/{deployment}/chat/completions?api-version=...`` (and ``/completions``),
JSON and SSE (``data: {chunk}`` lines ending with ``data: [DONE]``; a final usage chunk with empty
``choices`` when ``stream_options.include_usage`` is set).

The fake model: each generated choice takes the next queued reply (``server.reply(...)``, default
``"Hello from OpenAI"``), cut at the first ``stop`` string and at ``max_tokens`` /
``max_completion_tokens`` words (finish_reason ``"stop"`` / ``"length"``). Tokens are words
(``wire_http.count_tokens``). With a positive ``logit_bias`` and ``vocab`` (token id -> text) set,
it emits exactly one biased token: the one with the highest ``token_scores[text]`` (ties: lowest
id), reporting log-probabilities (softmax of those scores over the biased tokens) when asked. With a
positive ``logit_bias`` and ``tokenizer`` set instead (``encode``/``decode``, the client's own), the
reply is written as a model confined to the biased tokens writes it: its longest prefix of biased
tokens (at least one: the lowest biased id when its first token is not biased), then cut at ``stop``
and at ``max_tokens`` tokens.
``cached_tokens`` / ``reasoning_tokens`` set add the usage details objects.
"""

from __future__ import annotations

import math
import re
import time

from .wire_http import Break, Request, WireServer, count_tokens, cut_reply, pieces, sse

_AZURE = re.compile(r"^/openai/deployments/([^/]+)/(chat/completions|completions)$")


def _content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


class OpenAIServer(WireServer):
    api = "openai"

    def __init__(self, api_key: str | None = None, lifetime: float = 120.0):
        super().__init__(lifetime=lifetime)
        self.api_key = api_key  # when set, requests must carry it (Bearer or Azure's api-key header)
        self.vocab: dict[int, str] = {}
        self.tokenizer = None  # encode(str) -> ids, decode(ids) -> str: logit bias on replies (see above)
        self.token_scores: dict[str, float] = {}
        self.default_reply = "Hello from OpenAI"
        self.stream_delay = 0.0
        # usage details (prompt_tokens_details.cached_tokens, completion_tokens_details.reasoning_tokens):
        # sent when either is set (None: the usage object has no details, like older servers)
        self.cached_tokens: int | None = None
        self.reasoning_tokens: int | None = None

    def error_body(self, status, message):
        kind = {400: "invalid_request_error", 401: "invalid_request_error", 429: "rate_limit_error"}
        return {"error": {"message": message, "type": kind.get(status, "server_error"), "param": None, "code": None}}

    # ------------------------------------------------------------------------------ dispatch
    def handle(self, h, req: Request, action) -> None:
        m = _AZURE.match(req.path)
        if m:
            kind = m.group(2)
            if "api-version" not in req.query:
                return self.send_json(h, self.error_body(404, "Resource not found"), status=404)
            key = req.header("api-key") or (req.header("authorization") or "").removeprefix("Bearer ")
        elif req.path in ("/v1/chat/completions", "/v1/completions"):
            kind = req.path.removeprefix("/v1/")
            key = (req.header("authorization") or "").removeprefix("Bearer ")
        else:
            return self.send_json(h, self.error_body(404, f"no route {req.path}"), status=404)
        if self.api_key is not None and key != self.api_key:
            # Like the real API, the error text names the key it got: clients must redact it.
            msg = f"Incorrect API key provided: {key}. You can find your API key at the dashboard."
            return self.send_json(h, self.error_body(401, msg), status=401)
        body = req.json or {}
        if not body.get("model") and not m:
            return self.send_json(h, self.error_body(400, "you must provide a model parameter"), status=400)
        if "max_tokens" in body and "max_completion_tokens" in body:
            msg = "max_tokens and max_completion_tokens cannot both be set"
            return self.send_json(h, self.error_body(400, msg), status=400)
        chat = kind == "chat/completions"
        choices, usage = self._generate(req, body, chat)
        model = body.get("model") or m.group(1)
        if body.get("stream"):
            return self._stream(h, body, chat, model, choices, usage, action)
        if isinstance(action, Break):
            return self.send_partial_json(h, self._full(chat, model, choices, usage))
        self.send_json(h, self._full(chat, model, choices, usage))

    # --------------------------------------------------------------------------- fake model
    def _generate(self, req, body, chat):
        if chat:
            prompt_tokens = sum(count_tokens(_content_text(m.get("content"))) for m in body.get("messages", []))
        else:
            prompt = body.get("prompt", "")
            prompt_tokens = len(prompt) if isinstance(prompt, list) else count_tokens(prompt)
        n = int(body.get("n") or 1)
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        bias = {int(k): v for k, v in (body.get("logit_bias") or {}).items() if v > 0}
        choices = []
        for i in range(n):
            lp = None
            if bias and self.vocab:
                text, finish, lp = self._biased(bias, body, chat)
            elif bias and self.tokenizer is not None:
                text, finish = self._follow_bias(self.next_reply(req, self.default_reply), bias, stops, limit)
            else:
                text, hit_limit = cut_reply(self.next_reply(req, self.default_reply), stops, limit)
                finish = "length" if hit_limit else "stop"
            choices.append({"text": text, "finish": finish, "logprobs": lp, "index": i})
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": sum(max(count_tokens(c["text"]), 1 if c["text"] else 0) for c in choices),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if self.cached_tokens is not None or self.reasoning_tokens is not None:  # the API's usage details
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens or 0, "audio_tokens": 0}
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens or 0, "audio_tokens": 0,
                                                  "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        return choices, usage

    def _follow_bias(self, reply, bias, stops, limit):
        ids = []
        for t in self.tokenizer.encode(reply):
            if t not in bias:
                break
            ids.append(t)
        ids = ids or [min(bias)]
        hit_limit = limit is not None and len(ids) > int(limit)
        text, _ = cut_reply(self.tokenizer.decode(ids[: int(limit)] if hit_limit else ids), stops, None)
        return text, "length" if hit_limit else "stop"

    def _biased(self, bias, body, chat):
        cands = sorted(t for t in bias if t in self.vocab)
        if not cands:
            return "", "stop", None
        scores = {t: self.token_scores.get(self.vocab[t], 0.0) for t in cands}
        best = max(cands, key=lambda t: (scores[t], -t))
        z = math.log(sum(math.exp(s) for s in scores.values()))
        lps = {self.vocab[t]: scores[t] - z for t in cands}
        text = self.vocab[best]
        lp = None
        if chat and body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            top = sorted(lps.items(), key=lambda kv: -kv[1])[:k]
            lp = {"content": [{"token": text, "logprob": lps[text], "bytes": list(text.encode()),
                               "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in top]}]}
        elif not chat and body.get("logprobs") is not None:
            k = int(body.get("logprobs") or 0)
            top = dict(sorted(lps.items(), key=lambda kv: -kv[1])[:k])
            lp = {"tokens": [text], "token_logprobs": [lps[text]], "top_logprobs": [top], "text_offset": [0]}
        return text, "length", lp

    # ---------------------------------------------------------------------------- responses
    def _full(self, chat, model, choices, usage):
        created = int(time.time())
        if chat:
            return {
                "id": "chatcmpl-loopback", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": c["index"], "message": {"role": "assistant", "content": c["text"], "refusal": None},
                             "logprobs": c["logprobs"], "finish_reason": c["finish"]} for c in choices],
                "usage": usage, "system_fingerprint": "fp_loopback",
            }
        return {
            "id": "cmpl-loopback", "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": c["index"], "text": c["text"], "logprobs": c["logprobs"],
                         "finish_reason": c["finish"]} for c in choices],
            "usage": usage,
        }

    def _stream(self, h, body, chat, model, choices, usage, action):
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        base = {"id": "chatcmpl-loopback" if chat else "cmpl-loopback", "object": obj, "created": created, "model": model}
        events = []

        def chunk(index, text=None, finish=None, role=False):
            if chat:
                delta = {}
                if role:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                ch = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                ch = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
            return sse({**base, "choices": [ch]})

        for c in choices:
            if chat:
                events.append(chunk(c["index"], "", role=True))
            for piece in pieces(c["text"]):
                events.append(chunk(c["index"], piece))
            events.append(chunk(c["index"], None if chat else "", finish=c["finish"]))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(sse({**base, "choices": [], "usage": usage}))
        events.append(sse("[DONE]"))
        self.stream(h, events, action, delay=self.stream_delay)
