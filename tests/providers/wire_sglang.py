"""Loopback server speaking SGLang's native HTTP protocol, in-process or as a child process.

Endpoints: ``GET /get_model_info``, ``GET /get_server_info``, ``GET|POST /flush_cache``,
``GET|POST /start_profile`` and ``/stop_profile``, ``POST /generate`` (text or input_ids, single or
batched, JSON or ``data:`` streaming with cumulative text ending ``data: [DONE]``), ``POST /encode``,
``POST /concate_and_append_request``, ``GET /health`` and ``/health_generate``. Errors are
``{"error": {"message", "code"}}`` with a 4xx/5xx status, or a ``data: {"error": ...}`` event
mid-stream. With ``api_key`` set every request needs ``Authorization: Bearer <key>``.

The fake model is deterministic, so tests can compute expectations by hand:

* **tokens**: ``re.findall(r"\\s*\\S+|\\s+$", text)`` -- a word with its leading whitespace (trailing
  whitespace is a token of its own, which merges with the next word when text is appended, like a
  real BPE boundary); ids are handed out in order of first sight;
* **logprob** of token *t* after text *c*: ``-0.25`` when *t*'s word (lower-case, without
  punctuation) occurs as a word in *c*, else ``-0.25 - 0.5 * len(t.strip())``. The first token of
  an input has None;
* **completion**: with ``server.model`` set (prompt -> reply), the model's reply; otherwise the text
  after the last ``Repeat: `` in the prompt (up to a newline or ``<``), else ``DEFAULT_REPLY``. With a
  ``regex``, instead: the longest prefix of the model's reply the regex matches whole, else the first
  of ``True``, ``"hello"``, ``3.14``, ``42`` it matches; with a ``json_schema``, an object with a
  placeholder per property. Then cut at the first ``stop`` string and at ``max_new_tokens`` tokens;
* **prefix cache**: every prompt is remembered; ``cached_tokens`` is the token count of the longest
  remembered prompt that prefixes the new one (``flush_cache`` forgets them).

Faults: the ``WireServer`` scripts (``Fail``, ``Stall``, ``Break``, ``Truncate``) plus
:class:`StreamError` (an error event after some chunks). Run as a program (``--help``) it serves one
model on ``--host``/``--port`` until SIGTERM or ``--lifetime`` seconds, which is how the Runtime tests
launch it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import json
import re
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `tests.providers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.providers.wire_http import Request, WireServer, sse
else:
    from .wire_http import Request, WireServer, sse

DEFAULT_REPLY = "The quick brown fox jumps over the lazy dog."
REGEX_CANDIDATES = ["True", "\"hello\"", "3.14", "42"]
_TOKEN = re.compile(r"\s*\S+|\s+$")


@dataclasses.dataclass
class StreamError:
    """Send ``after`` stream chunks, then ``data: {"error": {...}}`` and end the stream."""

    after: int = 1
    message: str = "scheduler crashed"
    code: int = 500


def tokenize(text: str) -> list[str]:
    tokens = _TOKEN.findall(text)
    assert "".join(tokens) == text
    return tokens


def _word(token: str) -> str:
    return re.sub(r"\W", "", token.lower())


def token_logprob(token: str, context: str) -> float:
    """The fake model's log-probability of ``token`` following ``context``."""
    word = _word(token)
    if word and word in set(re.findall(r"\w+", context.lower())):
        return -0.25
    return -0.25 - 0.5 * len(token.strip())


class SGLangServer(WireServer):
    api = "sglang"

    def __init__(
        self,
        model_path: str = "loopback/llama-3-8b-instruct",
        api_key: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        lifetime: float = 120.0,
    ) -> None:
        super().__init__(lifetime=lifetime, host=host, port=port)
        self.model_path = model_path
        self.api_key = api_key
        self.stream_delay = 0.0
        self.ready = True
        self.support_concat = True
        self.health_routes = True  # /health and /health_generate (SGLang has them; the documented protocol does not)
        self.profile_methods = {"GET", "POST"}
        self.profiling = False
        self.concatenated: list[dict] = []
        self._cache: set[str] = set()
        self.model = None  # prompt -> reply, in place of the "Repeat: " rule (see the module docstring)
        self._vocab: dict[str, int] = {}
        self._words: list[str] = []

    # ------------------------------------------------------------------------------- model

    def token_id(self, token: str) -> int:
        with self._lock:
            if token not in self._vocab:
                self._vocab[token] = len(self._words)
                self._words.append(token)
            return self._vocab[token]

    def decode(self, ids: list[int]) -> str:
        with self._lock:
            if any(not isinstance(i, int) or not 0 <= i < len(self._words) for i in ids):
                raise ValueError(f"unknown token id in {ids}")
            return "".join(self._words[i] for i in ids)

    def completion(self, prompt: str, sp: dict) -> tuple[list[str], dict]:
        reply = self.model(prompt) if self.model is not None else None
        if sp.get("regex"):
            prefixes = [reply[:n] for n in range(len(reply or ""), 0, -1)]  # longest first
            matches = [c for c in prefixes + REGEX_CANDIDATES if re.fullmatch(sp["regex"], c)]
            if not matches:
                raise ValueError(f"cannot satisfy regex {sp['regex']!r}")
            text = matches[0]
        elif sp.get("json_schema"):
            schema = json.loads(sp["json_schema"])
            fill = {"string": "x", "integer": 1, "number": 1.5, "boolean": True}
            text = json.dumps({k: fill.get(v.get("type")) for k, v in schema.get("properties", {}).items()})
        elif reply is not None:
            text = reply
        else:
            found = prompt.rfind("Repeat: ")
            if found >= 0:
                text = re.split(r"[\n<]", prompt[found + len("Repeat: "):], maxsplit=1)[0]
            else:
                text = DEFAULT_REPLY
        finish: dict = {"type": "stop", "matched": None}
        stops = [s for s in sp.get("stop") or [] if s in text]
        if stops:
            first = min(stops, key=text.index)
            text = text[: text.index(first)]
            finish = {"type": "stop", "matched": first}
        tokens = tokenize(text) if text else []
        limit = sp.get("max_new_tokens", 128)
        if len(tokens) > limit:
            tokens = tokens[:limit]
            finish = {"type": "length", "length": limit}
        return tokens, finish

    def cached_tokens(self, prompt: str) -> int:
        with self._lock:
            best = max((p for p in self._cache if prompt.startswith(p)), key=len, default="")
            self._cache.add(prompt)
        return len(tokenize(best)) if best else 0

    def run_one(self, prompt: str, body: dict, sp: dict, images) -> dict:
        prompt_tokens = tokenize(prompt)
        out_tokens, finish = self.completion(prompt, sp)
        with_text = bool(body.get("return_text_in_logprobs"))
        meta = {
            "id": uuid.uuid4().hex,
            "prompt_tokens": len(prompt_tokens),
            "completion_tokens": len(out_tokens),
            "cached_tokens": self.cached_tokens(prompt),
            "finish_reason": finish,
            "e2e_latency": 0.001,
        }
        if images:
            meta["num_images"] = len(images)
        if "lora_path" in body:  # echoed so tests can see it arrived (SGLang itself does not)
            meta["lora_path"] = body["lora_path"]
        if body.get("return_logprob"):
            start = body.get("logprob_start_len")
            start = len(prompt_tokens) if start is None or start < 0 else min(start, len(prompt_tokens))
            entries, context = [], "".join(prompt_tokens[:start])
            for i in range(start, len(prompt_tokens)):
                tok = prompt_tokens[i]
                lp = None if i == 0 else token_logprob(tok, context)
                entries.append([lp, self.token_id(tok), tok if with_text else None])
                context += tok
            outs, context = [], prompt
            for tok in out_tokens:
                outs.append([token_logprob(tok, context), self.token_id(tok), tok if with_text else None])
                context += tok
            meta["input_token_logprobs"] = entries
            meta["output_token_logprobs"] = outs
        return {"text": "".join(out_tokens), "meta_info": meta, "_tokens": out_tokens}

    # ---------------------------------------------------------------------------- dispatch

    def handle(self, h, req: Request, action) -> None:
        if self.api_key is not None and req.header("authorization") != f"Bearer {self.api_key}":
            return self.send_json(h, self.error_body(401, "Invalid API key"), status=401)
        route = {
            "/get_model_info": self._model_info,
            "/get_server_info": self._server_info,
            "/flush_cache": self._flush_cache,
            "/start_profile": self._profile,
            "/stop_profile": self._profile,
            "/generate": self._generate,
            "/encode": self._encode,
            "/concate_and_append_request": self._concat,
            **({"/health": self._health, "/health_generate": self._health} if self.health_routes else {}),
        }.get(req.path)
        if route is None:
            return self.send_json(h, {"detail": "Not Found"}, status=404)
        route(h, req, action)

    def _model_info(self, h, req, action):
        self.send_json(h, {"model_path": self.model_path, "tokenizer_path": self.model_path, "is_generation": True})

    def _server_info(self, h, req, action):
        self.send_json(h, {"model_path": self.model_path, "version": "loopback", "max_total_num_tokens": 4096})

    def _flush_cache(self, h, req, action):
        with self._lock:
            self._cache.clear()
        self.send_json(h, "Cache flushed.\n")

    def _profile(self, h, req, action):
        if req.method not in self.profile_methods:
            return self.send_json(h, {"detail": "Method Not Allowed"}, status=405)
        self.profiling = req.path == "/start_profile"
        self.send_json(h, "Profiling " + ("started" if self.profiling else "stopped") + ".\n")

    def _health(self, h, req, action):
        if not self.ready:
            return self.send_json(h, self.error_body(503, "not ready"), status=503)
        self.send_json(h, "")

    def _concat(self, h, req, action):
        if not self.support_concat:
            return self.send_json(h, {"detail": "Not Found"}, status=404)
        self.concatenated.append(req.json)
        self.send_json(h, {"success": True})

    def _encode(self, h, req, action):
        body = req.json or {}
        texts = body.get("text")
        batch = isinstance(texts, list)
        out = []
        for text in texts if batch else [texts]:
            toks = tokenize(text or "")
            emb = [round(len(toks) / 10, 4), round(sum(len(t) for t in toks) / 100, 4), 1.0]
            out.append({"embedding": emb, "meta_info": {"prompt_tokens": len(toks)}})
        self.send_json(h, out if batch else out[0])

    def _generate(self, h, req, action):
        body = req.json
        if not isinstance(body, dict):
            return self.send_json(h, self.error_body(400, "body must be a JSON object"), status=400)
        sp = body.get("sampling_params") or {}
        try:
            prompts, batch = self._prompts(body)
            images = self._images(body, len(prompts), batch)
            n = sp.get("n", 1)
            results = []
            for prompt, imgs in zip(prompts, images):
                results += [self.run_one(prompt, body, sp, imgs) for _ in range(n)]
        except ValueError as err:
            return self.send_json(h, self.error_body(400, str(err)), status=400)
        if body.get("stream"):
            if len(results) != 1:
                return self.send_json(h, self.error_body(400, "streaming needs one prompt and n=1"), status=400)
            return self._stream(h, results[0], action)
        for r in results:
            r.pop("_tokens")
        self.send_json(h, results if (batch or len(results) > 1) else results[0])

    def _prompts(self, body) -> tuple[list[str], bool]:
        if ("text" in body) == ("input_ids" in body):
            raise ValueError("give exactly one of text, input_ids")
        if "text" in body:
            text = body["text"]
            if isinstance(text, str):
                return [text], False
            if isinstance(text, list) and text and all(isinstance(t, str) for t in text):
                return list(text), True
            raise ValueError("text must be a str or a non-empty list of str")
        ids = body["input_ids"]
        if isinstance(ids, list) and ids and all(isinstance(x, list) for x in ids):
            return [self.decode(x) for x in ids], True
        if isinstance(ids, list):
            return [self.decode(ids)], False
        raise ValueError("input_ids must be a list of ints or of lists of ints")

    @staticmethod
    def _images(body, count: int, batch: bool) -> list[list[str]]:
        data = body.get("image_data")
        if data is None:
            return [[] for _ in range(count)]
        per_prompt = data if batch else [data]
        if len(per_prompt) != count:
            raise ValueError("image_data needs one entry per prompt")
        out = []
        for entry in per_prompt:
            items = entry if isinstance(entry, list) else [entry]
            for item in items:
                try:
                    base64.b64decode(item, validate=True)
                except (binascii.Error, TypeError, ValueError):
                    raise ValueError("image_data entries must be base64") from None
            out.append(items)
        return out

    def _stream(self, h, result, action) -> None:
        tokens, meta = result["_tokens"], result["meta_info"]
        events = []
        for i in range(1, len(tokens) + 1):
            chunk_meta = {**meta, "completion_tokens": i, "finish_reason": None}
            if i == len(tokens):
                chunk_meta["finish_reason"] = meta["finish_reason"]
            events.append(sse({"text": "".join(tokens[:i]), "meta_info": chunk_meta}))
        if not tokens:
            events.append(sse({"text": "", "meta_info": meta}))
        if isinstance(action, StreamError):
            events = events[: action.after] + [sse({"error": {"message": action.message, "code": action.code}})]
        else:
            events.append(sse("[DONE]"))
        self.stream(h, events, action, delay=self.stream_delay)


# ------------------------------------------------------------------------------ child process


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="loopback SGLang-protocol server for tests")
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--lifetime", type=float, default=120.0, help="stop by itself after this many seconds")
    ap.add_argument("--startup-delay", type=float, default=0.0, help="sleep before listening")
    ap.add_argument("--crash-on-start", action="store_true", help="print an error and exit 3")
    ap.add_argument("--never-ready", action="store_true", help="health endpoints answer 503")
    ap.add_argument("--no-health", action="store_true", help="no /health, /health_generate: only the documented protocol")
    ap.add_argument("--spawn-grandchild", action="store_true", help="start a sleeping grandchild process")
    ap.add_argument("--stream-delay", type=float, default=0.0, help="seconds between stream chunks")
    args, unknown = ap.parse_known_args(argv)
    print(f"loopback sglang: model {args.model_path} ignoring {unknown}", flush=True)
    if args.crash_on_start:
        print("RuntimeError: CUDA out of memory (simulated)", file=sys.stderr, flush=True)
        return 3
    if args.spawn_grandchild:
        import subprocess

        child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({args.lifetime})"])
        print(f"grandchild pid {child.pid}", flush=True)
    time.sleep(args.startup_delay)
    server = SGLangServer(args.model_path, args.api_key, host=args.host, port=args.port, lifetime=args.lifetime)
    server.ready = not args.never_ready
    server.health_routes = not args.no_health
    server.stream_delay = args.stream_delay
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    server.start()
    print(f"serving on {server.url}", flush=True)
    while not done.is_set() and not server._stopped.is_set():
        done.wait(0.1)
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
