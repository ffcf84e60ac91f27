"""A small loopback HTTP server harness for the provider wire-format test servers.

`WireServer` binds 127.0.0.1 on a free port (or the ``host``/``port`` given: the Runtime tests choose
the port of a server they launch), serves each request on its own thread, records every request
(method, path, query, headers, JSON body) and lets a test script faults that are consumed one per
request, in order:

* ``Fail(status, body, headers)``  -- answer with an HTTP error (e.g. 429 + ``Retry-After``, 500, 400);
* ``Stall(seconds)``               -- wait before answering (for client timeouts), interruptibly;
* ``Break(after=1)``               -- send ``after`` stream events, then drop the connection in the middle
                                      of the chunked body (the client sees an incomplete read);
* ``Truncate(after=1)``            -- send ``after`` stream events, then end the body *cleanly* without the
                                      API's terminal event (a proxy that cut the stream politely);
* any callable ``f(handler, request)`` -- answers that one request itself.

``script`` queues faults for the next requests in arrival order; ``when(predicate, ...)`` queues them
for the next requests that ``predicate(request)`` accepts (so a test with many concurrent clients can
aim a fault at one of them). ``open_connections`` counts the connections the server is still
serving (a client that closed its side mid-stream is gone from it once the server notices);
``streams_left_by_client`` counts streams whose client went away before the end (a write failed).

Everything here is bounded: the server stops itself after ``lifetime`` seconds even if a test forgets
to close it, stalls wake up when it stops, closing it ends every connection it accepted (a client's
pooled keep-alive connection can never reach a closed server, even when a later server gets the same
port), and it listens on loopback unless told otherwise.
Subclasses (one per API: wire_openai, wire_anthropic, wire_gemini, wire_sglang) implement
``handle(req, action)`` with the API's documented JSON and SSE shapes.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

# --------------------------------------------------------------------------------------- scripts


@dataclasses.dataclass
class Fail:
    status: int
    body: Any = None  # dict -> JSON; str -> text; None -> the API's own error shape (subclass decides)
    headers: dict = dataclasses.field(default_factory=dict)
    message: str = "scripted failure"


@dataclasses.dataclass
class Stall:
    seconds: float


@dataclasses.dataclass
class Break:
    after: int = 1


@dataclasses.dataclass
class Truncate:
    after: int = 1


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict  # lower-cased names
    body: bytes
    json: Any

    def header(self, name: str, default=None):
        return self.headers.get(name.lower(), default)


class _Dropped(Exception):
    """Raised inside a handler to abort the connection without a proper end of body."""


# ------------------------------------------------------------------------------------- the server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_HTTPServer"

    def log_message(self, fmt, *args):  # keep pytest output quiet
        pass

    def _serve(self):
        wire: WireServer = self.server.wire
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        req = Request(
            method=self.command,
            path=split.path,
            query={k: v[-1] for k, v in parse_qs(split.query).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            json=parsed,
        )
        wire._record(req)
        action = wire._next_action(req)
        try:
            if isinstance(action, Stall):
                if wire._stopped.wait(action.seconds):
                    return
                action = None
            if isinstance(action, Fail):
                wire.send_error(self, req, action)
                return
            if callable(action):  # a custom one-off responder: action(handler, request)
                action(self, req)
                return
            wire.handle(self, req, action)
        except _Dropped:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = _serve


class _HTTPServer(ThreadingHTTPServer):
    """Remembers the connections it accepted, so that closing the server can end them all.

    ``shutdown()`` + ``server_close()`` only stop accepting: a keep-alive connection would go on being
    served by its (daemon) handler thread, on behalf of a server that is closed.
    """

    daemon_threads = True
    allow_reuse_address = True
    # listen backlog: socketserver's default (5) resets connections when many clients connect at once
    # (64 concurrent programs), which no real server does
    request_queue_size = 256
    wire: "WireServer"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # the handler thread is done with the connection
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def end_connections(self) -> None:
        """Shut down every connection still open: idle keep-alive ones, and ones mid-response."""
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone


class WireServer:
    """Base loopback server. Use as a context manager; ``url`` is ``http://HOST:PORT``."""

    api = "wire"

    def __init__(self, lifetime: float = 120.0, *, host: str = "127.0.0.1", port: int = 0):
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self._actions: collections.deque = collections.deque()
        self._aimed: list[list] = []  # [predicate, deque of actions]
        self.streams_left_by_client = 0
        self.replies: collections.deque = collections.deque()
        self._stopped = threading.Event()
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.wire = self
        self.port = self._httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._timer = threading.Timer(lifetime, self.close)
        self._timer.daemon = True

    # lifecycle
    def start(self) -> "WireServer":
        self._thread.start()
        self._timer.start()
        return self

    def close(self) -> None:
        """Stop: no new connections, and the open ones ended (a closed server answers nothing)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._timer.cancel()
        self._httpd.shutdown()
        self._httpd.end_connections()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # scripting and recording
    def script(self, *actions) -> None:
        """Queue faults; each request consumes one (or none when the queue is empty)."""
        with self._lock:
            self._actions.extend(actions)

    def reply(self, *texts) -> None:
        """Queue reply texts (or callables ``req -> text``); each generation consumes one."""
        with self._lock:
            self.replies.extend(texts)

    def when(self, predicate: Callable[[Request], bool], *actions) -> None:
        """Queue faults for the next requests ``predicate`` accepts (checked before ``script``'s)."""
        with self._lock:
            self._aimed.append([predicate, collections.deque(actions)])

    def _next_action(self, req: Request | None = None):
        with self._lock:
            if req is not None:
                for predicate, actions in self._aimed:
                    if actions and predicate(req):
                        return actions.popleft()
            return self._actions.popleft() if self._actions else None

    @property
    def open_connections(self) -> int:
        """Connections accepted and still being served (keep-alive ones included)."""
        with self._httpd._connections_lock:
            return len(self._httpd._connections)

    def next_reply(self, req: Request, default: str) -> str:
        with self._lock:
            item = self.replies.popleft() if self.replies else default
        return item(req) if callable(item) else item

    def _record(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def last(self) -> Request:
        with self._lock:
            return self.requests[-1]

    # API hooks
    def handle(self, h: _Handler, req: Request, action) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> Any:
        return {"error": {"message": message, "code": status}}

    def send_error(self, h: _Handler, req: Request, fail: Fail) -> None:
        body = fail.body if fail.body is not None else self.error_body(fail.status, fail.message)
        self.send_json(h, body, status=fail.status, headers=fail.headers)

    # response writers
    @staticmethod
    def send_json(h: _Handler, obj: Any, status: int = 200, headers: dict | None = None) -> None:
        data = obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json" if not isinstance(obj, str) else "text/plain")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, str(v))
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()

    @staticmethod
    def send_partial_json(h: _Handler, obj: Any) -> None:
        """A non-streaming response cut in half: Content-Length promises more than is sent."""
        data = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[: len(data) // 2])
        h.wfile.flush()
        raise _Dropped

    def stream(self, h: _Handler, events: list[bytes], action=None, delay: float = 0.0) -> None:
        """Send SSE ``events`` (already framed) with chunked transfer encoding; honour Break/Truncate."""
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        limit = action.after if isinstance(action, (Break, Truncate)) else None
        for i, ev in enumerate(events):
            if limit is not None and i >= limit:
                break
            try:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                h.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                with self._lock:
                    self.streams_left_by_client += 1
                raise
            if delay and self._stopped.wait(delay):
                raise _Dropped
        if isinstance(action, Break):
            raise _Dropped  # no terminating zero-length chunk: an incomplete chunked read
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()


# --------------------------------------------------------------------------------- small helpers


def sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def pieces(text: str) -> list[str]:
    """Split text into stream deltas (a word and its trailing space each); never loses a char."""
    out = re.findall(r"\S+\s*|\s+", text)
    assert "".join(out) == text, (out, text)
    return out


def count_tokens(text: str) -> int:
    """The fake 'tokenizer' of the loopback servers: whitespace-separated words."""
    return len(text.split())


def cut_reply(text: str, stops, limit) -> tuple[str, bool]:
    """A fake model's reply cut at the first ``stops`` string, then at ``limit`` words (None: no limit).

    Returns ``(text, hit_limit)``; ``hit_limit`` says the word limit cut it (finish reason "length").
    """
    for s in stops:
        if s and s in text:
            text = text[: text.index(s)]
    if limit is not None and count_tokens(text) > int(limit):
        return " ".join(text.split()[: int(limit)]), True
    return text, False


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()
