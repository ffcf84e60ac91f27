"""Loopback server speaking the Anthropic Messages wire format: ``POST /v1/messages``.

JSON responses are ``{"type": "message", "content": [blocks], "stop_reason", "usage"}``; streams are
SSE with the documented event types ``message_start``, ``content_block_start``, ``ping``,
``content_block_delta`` (``text_delta`` / ``input_json_delta``), ``content_block_stop``,
``message_delta`` (stop_reason + output usage) and ``message_stop``; errors are
``{"type": "error", "error": {"type", "message"}}``.

The fake model takes the next queued reply (default ``"Hello from Anthropic"``), cut at the first
``stop_sequences`` entry (stop_reason ``"stop_sequence"``) and at ``max_tokens`` words
(``"max_tokens"``). Like the real API it rejects a request without ``max_tokens`` or with a
whitespace-only stop sequence, and a ``system`` role inside ``messages``. When the request forces a
tool (``tool_choice: {"type": "tool", "name": ...}``) the reply must be JSON and is returned as that
tool's ``input`` in a ``tool_use`` block. With ``thinking: {"type": "enabled", "budget_tokens": N}``
(N < max_tokens, as the API requires) a ``thinking`` block comes before the text (streamed as
``thinking_delta`` + ``signature_delta``). ``cache_read_tokens`` set is reported as
``usage.cache_read_input_tokens``.
"""

from __future__ import annotations

import json

from .wire_http import Break, Request, WireServer, count_tokens, pieces, sse


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    return " ".join(b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


class AnthropicServer(WireServer):
    api = "anthropic"

    def __init__(self, api_key: str | None = None, lifetime: float = 120.0):
        super().__init__(lifetime=lifetime)
        self.api_key = api_key
        self.default_reply = "Hello from Anthropic"
        self.stream_delay = 0.0
        self.cache_read_tokens = 0  # reported as usage.cache_read_input_tokens when set

    def error_body(self, status, message):
        kind = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
                529: "overloaded_error"}.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def _bad(self, h, msg):
        self.send_json(h, self.error_body(400, msg), status=400)

    def handle(self, h, req: Request, action) -> None:
        if req.path != "/v1/messages":
            return self.send_json(h, self.error_body(404, f"no route {req.path}"), status=404)
        # Older SDKs send ``x-api-key``; newer ones send the key as a Bearer token: accept both.
        key = req.header("x-api-key") or (req.header("authorization") or "").removeprefix("Bearer ") or None
        if self.api_key is not None and key != self.api_key:
            return self.send_json(h, self.error_body(401, f"invalid x-api-key {key}"), status=401)
        if not req.header("anthropic-version"):
            return self._bad(h, "anthropic-version header is required")
        body = req.json or {}
        if "max_tokens" not in body:
            return self._bad(h, "max_tokens: Field required")
        for s in body.get("stop_sequences") or []:
            if not s.strip():
                return self._bad(h, "stop_sequences: each stop sequence must contain non-whitespace")
        msgs = body.get("messages") or []
        if not msgs or any(m.get("role") not in ("user", "assistant") for m in msgs):
            return self._bad(h, "messages: roles must be 'user' or 'assistant'")
        if msgs[0]["role"] != "user":
            return self._bad(h, "messages: first message must use the 'user' role")

        system = body.get("system")
        prompt_tokens = sum(count_tokens(_text_of(m.get("content"))) for m in msgs)
        prompt_tokens += count_tokens(system if isinstance(system, str) else _text_of(system or []))
        text = self.next_reply(req, self.default_reply)
        stop_reason, stop_seq = "end_turn", None
        choice = body.get("tool_choice") or {}
        tool = choice.get("name") if choice.get("type") == "tool" else None
        if tool is None:
            for s in body.get("stop_sequences") or []:
                if s in text:
                    text, stop_reason, stop_seq = text[: text.index(s)], "stop_sequence", s
                    break
            if count_tokens(text) > int(body["max_tokens"]):
                text, stop_reason = " ".join(text.split()[: int(body["max_tokens"])]), "max_tokens"
            blocks = [{"type": "text", "text": text}]
            out_tokens = count_tokens(text)
            thinking = body.get("thinking") or {}
            if thinking.get("type") == "enabled":  # extended thinking: a thinking block comes first
                if int(thinking.get("budget_tokens", 0)) >= int(body["max_tokens"]):
                    return self._bad(h, "max_tokens must be greater than thinking.budget_tokens")
                blocks.insert(0, {"type": "thinking", "thinking": "Let me think it over.", "signature": "sig-lb"})
                out_tokens += count_tokens(blocks[0]["thinking"])
        else:
            blocks = [{"type": "tool_use", "id": "toolu_loopback", "name": tool, "input": json.loads(text)}]
            stop_reason, out_tokens = "tool_use", count_tokens(text)
        usage = {"input_tokens": prompt_tokens, "output_tokens": out_tokens}
        if self.cache_read_tokens:
            usage["cache_read_input_tokens"] = self.cache_read_tokens
        message = {"id": "msg_loopback", "type": "message", "role": "assistant", "model": body.get("model"),
                   "content": blocks, "stop_reason": stop_reason, "stop_sequence": stop_seq, "usage": usage}
        if not body.get("stream"):
            if isinstance(action, Break):
                return self.send_partial_json(h, message)
            return self.send_json(h, message)

        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
                 "usage": {**usage, "output_tokens": 1}}
        events = [sse({"type": "message_start", "message": start}, "message_start")]
        for i, b in enumerate(blocks):
            if b["type"] == "thinking":
                events.append(sse({"type": "content_block_start", "index": i, "content_block":
                                   {"type": "thinking", "thinking": "", "signature": ""}}, "content_block_start"))
                events.append(sse({"type": "content_block_delta", "index": i, "delta":
                                   {"type": "thinking_delta", "thinking": b["thinking"]}}, "content_block_delta"))
                events.append(sse({"type": "content_block_delta", "index": i, "delta":
                                   {"type": "signature_delta", "signature": b["signature"]}}, "content_block_delta"))
            elif b["type"] == "text":
                events.append(sse({"type": "content_block_start", "index": i,
                                   "content_block": {"type": "text", "text": ""}}, "content_block_start"))
                events.append(sse({"type": "ping"}, "ping"))
                for p in pieces(b["text"]):
                    events.append(sse({"type": "content_block_delta", "index": i,
                                       "delta": {"type": "text_delta", "text": p}}, "content_block_delta"))
            else:
                events.append(sse({"type": "content_block_start", "index": i, "content_block":
                                   {"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}},
                                  "content_block_start"))
                raw = json.dumps(b["input"])
                for j in range(0, len(raw), 7):
                    events.append(sse({"type": "content_block_delta", "index": i, "delta":
                                       {"type": "input_json_delta", "partial_json": raw[j:j + 7]}},
                                      "content_block_delta"))
            events.append(sse({"type": "content_block_stop", "index": i}, "content_block_stop"))
        events.append(sse({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_seq},
                           "usage": {"output_tokens": out_tokens}}, "message_delta"))
        events.append(sse({"type": "message_stop"}, "message_stop"))
        self.stream(h, events, action, delay=self.stream_delay)

    def stream_error(self, h, after_text: str, kind="overloaded_error", message="Overloaded"):
        """Helper for tests: an SSE stream that emits some text, then an in-stream ``error`` event."""
        events = [sse({"type": "message_start", "message": {"id": "msg_e", "type": "message", "role": "assistant",
                                                             "model": "m", "content": [], "stop_reason": None,
                                                             "stop_sequence": None,
                                                             "usage": {"input_tokens": 1, "output_tokens": 1}}},
                      "message_start"),
                  sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                      "content_block_start"),
                  sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": after_text}},
                      "content_block_delta"),
                  sse({"type": "error", "error": {"type": kind, "message": message}}, "error")]
        self.stream(h, events)
