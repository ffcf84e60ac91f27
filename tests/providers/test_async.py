"""The async API on every backend, against every loopback wire server.

One parametrized set of programs (``AsyncProgramState`` on ``agenerate`` / ``agenerate_stream`` /
``aselect``) runs against SGLang's native protocol (RuntimeEndpoint), OpenAI, Azure OpenAI,
Anthropic, litellm and Gemini on Vertex AI: 64 concurrent programs on one backend object in one
event loop, with a 429 and a mid-stream cut aimed at two of them; task cancellation during a stream
must close the response (the server sees the connection go, the client's pool holds no connection);
the retry, timeout, stream and redaction rules of the sync path hold on the async one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import traceback

import pytest

from providers import (
    APITimeoutError,
    AsyncProgramState,
    AuthenticationError,
    BadRequestError,
    ProgramState,
    RetryPolicy,
    RuntimeEndpoint,
    SamplingParams,
    StreamInterruptedError,
    UnsupportedOperationError,
)

from .api_helpers import ToyTokenizer, last_user_text
from .wire_anthropic import AnthropicServer
from .wire_gemini import GeminiServer
from .wire_http import Break, Fail, Stall, Truncate, wait_until
from .wire_openai import OpenAIServer
from .wire_sglang import SGLangServer

pytestmark = pytest.mark.timeout(120)

KEY = "sk-async-loopback-SECRET-0123456789abcdef"
TOKEN = "ya29.async-loopback-token-0123456789"
FAST = RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.05)
KINDS = ["sglang", "openai", "azure", "anthropic", "litellm", "vertexai"]
_REPEAT = re.compile(r"Repeat: ([^\n<]*)")


def _reply(text: str) -> str:
    """The fake model of every server here: the text after the last ``Repeat: `` (SGLang's own rule),
    or ``yes`` for a generate-and-match select instruction."""
    if "\n- yes\n- no" in text:
        return "yes"
    found = _REPEAT.findall(text)
    return found[-1] if found else "nothing to repeat"


def _gemini_text(req) -> str:
    return " ".join(p.get("text", "") for p in req.json["contents"][-1]["parts"])


class Kind:
    """A wire server and a backend factory for one provider."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tokenizer = None
        if name == "sglang":
            self.server = SGLangServer(api_key=KEY)
        elif name in ("openai", "azure", "litellm"):
            self.server = OpenAIServer(api_key=KEY)
            self.server.default_reply = lambda req: _reply(last_user_text(req.json))
            if name == "openai":  # select probes with logit bias: a tokenizer the server's fake model shares
                self.tokenizer = ToyTokenizer(words=["yes", "no"])
                self.server.vocab = self.tokenizer.vocab
                self.server.token_scores = {"yes": 1.0}
        elif name == "anthropic":
            self.server = AnthropicServer(api_key=KEY)
            self.server.default_reply = lambda req: _reply(last_user_text(req.json))
        else:
            self.server = GeminiServer(token=TOKEN)
            self.server.default_reply = lambda req: _reply(_gemini_text(req))
            self.server.enum_pick = lambda values: values[0]

    def backend(self, **kw):
        srv = self.server
        if self.name == "sglang":
            kw.setdefault("retry", FAST)
            return RuntimeEndpoint(srv.url, api_key=KEY, **kw)
        if self.name == "openai":
            from providers.openai import OpenAI

            kw.setdefault("max_retries", 2)
            return OpenAI("gpt-4o-mini", api_key=KEY, base_url=srv.url + "/v1", tokenizer=self.tokenizer, **kw)
        if self.name == "azure":
            from providers.openai import OpenAI

            kw.setdefault("max_retries", 2)
            return OpenAI("my-deployment", is_azure=True, api_key=KEY, azure_endpoint=srv.url,
                          api_version="2024-10-21", is_reasoning_model=True, **kw)
        if self.name == "anthropic":
            from providers.anthropic import Anthropic

            kw.setdefault("max_retries", 2)
            return Anthropic("claude-loopback-1", api_key=KEY, base_url=srv.url, **kw)
        if self.name == "litellm":
            pytest.importorskip("litellm")
            from providers.litellm import LiteLLM

            kw.setdefault("retry_policy", FAST)
            return LiteLLM("openai/gpt-4o-mini", api_key=KEY, base_url=srv.url + "/v1", **kw)
        pytest.importorskip("google.genai")
        from google.oauth2.credentials import Credentials

        from providers.vertexai import VertexAI

        kw.setdefault("retry_policy", FAST)
        return VertexAI("gemini-2.5-flash", project="proj-1", location="us-central1",
                        credentials=Credentials(token=TOKEN), base_url=srv.url, **kw)

    def generation_requests(self):
        """The requests that generated text (SGLang's select scoring asks for max_new_tokens=0)."""
        out = []
        for r in list(self.server.requests):
            body = r.json if isinstance(r.json, dict) else {}
            if self.name == "sglang" and (body.get("sampling_params") or {}).get("max_new_tokens") == 0:
                continue
            if r.method == "POST":
                out.append(r)
        return out


@pytest.fixture(params=KINDS)
def kind(request):
    k = Kind(request.param)
    with k.server:
        yield k


def _run(coro):
    return asyncio.run(coro)


async def _closing(backend):
    await backend.aclose()
    backend.shutdown()


def _gen_error(backend, error: type[Exception]) -> Exception:
    """The ``error`` that ``await s.gen`` raises in a one-turn AsyncProgramState on ``backend`` (then closed)."""

    async def main():
        s = AsyncProgramState(backend)
        s.user("Repeat: x")
        with s.assistant():
            with pytest.raises(error) as info:
                await s.gen("r")
        await _closing(backend)
        return info.value

    return _run(main())


def _question(i: int, part: str) -> str:
    return f"Repeat: p{i:02d}-{part} one two three four five six"


def _answer(i: int, part: str) -> str:
    return f"p{i:02d}-{part} one two three four five six"


async def _program(backend, i: int, *, cut: bool = False) -> AsyncProgramState:
    s = AsyncProgramState(backend)
    s.system("Be brief.")
    s.user(_question(i, "a"))
    with s.assistant():
        await s.gen("a", max_new_tokens=16)
    s.user(_question(i, "b"))
    with s.assistant():
        if cut:
            opened, seen = s.text_, []
            with pytest.raises(StreamInterruptedError):
                async for delta in s.gen_stream("b", max_new_tokens=16):
                    seen.append(delta)
            assert seen and "".join(seen) != _answer(i, "b")  # partial text reached the caller ...
            assert "b" not in s.variables and s.text_ == opened  # ... and the state rolled it back
        else:
            deltas = [d async for d in s.gen_stream("b", max_new_tokens=16)]
            assert "".join(deltas) == _answer(i, "b") and len(deltas) > 1
    s.user("Say yes.")
    with s.assistant():
        await s.select("c", ["yes", "no"])
    return s


# --------------------------------------------------------------------------- one program


def test_one_async_program(kind):
    backend = kind.backend()

    async def main():
        try:
            s = await _program(backend, 0)
            return s
        finally:
            await _closing(backend)

    s = _run(main())
    assert s["a"] == _answer(0, "a") and s["b"] == _answer(0, "b") and s["c"] == "yes"
    for name in ("a", "b"):
        meta = s.meta_info[name]
        assert meta["finish_reason"] == "stop" and meta["completion_tokens"] and meta["prompt_tokens"]
    assert s.meta_info["c"]["method"]
    # the async path sent what the sync path sends: compare the first request with a sync run's
    first_async = kind.generation_requests()[0].json
    sync_backend = kind.backend()
    t = ProgramState(sync_backend)
    t.system("Be brief.")
    t.user(_question(0, "a"))
    with t.assistant():
        t.gen("a", max_new_tokens=16)
    sync_backend.shutdown()
    assert t["a"] == s["a"]
    assert kind.generation_requests()[-1].json == first_async


# --------------------------------------------------------------------- 64 concurrent programs


def test_64_concurrent_programs_one_backend_one_loop(kind):
    """64 programs at once on one backend object: every answer is its own; a 429 (with Retry-After)
    aimed at program 11 is retried away; a mid-stream cut aimed at program 7 raises
    StreamInterruptedError there (never restarted, the state rolled back) and nowhere else."""
    backend = kind.backend()
    srv = kind.server
    srv.stream_delay = 0.001
    srv.when(lambda req: "p11-a" in json.dumps(req.json),
             Fail(429, headers={"retry-after-ms": "10", "retry-after": "0"}))
    srv.when(lambda req: "p07-b" in json.dumps(req.json), Break(after=4))

    async def main():
        try:
            return await asyncio.gather(*(_program(backend, i, cut=(i == 7)) for i in range(64)))
        finally:
            await _closing(backend)

    t0 = time.perf_counter()
    states = _run(main())
    elapsed = time.perf_counter() - t0
    for i, s in enumerate(states):
        assert s["a"] == _answer(i, "a"), i
        assert s["c"] == "yes", i
        if i != 7:
            assert s["b"] == _answer(i, "b"), i
    assert "b" not in states[7]
    bodies = [json.dumps(r.json) for r in kind.generation_requests()]
    assert sum("p11-a" in b and "p11-b" not in b for b in bodies) == 2  # the 429, then the retry
    cut_streams = [b for b in bodies if "p07-b" in b and "Say yes" not in b]
    assert len(cut_streams) == 1  # the cut stream was never restarted
    assert elapsed < 60


# ------------------------------------------------------------------------------- cancellation


def _slow_reply(kind):
    words = " ".join(f"w{i}" for i in range(60))
    kind.server.stream_delay = 0.05
    if kind.name == "sglang":
        return f"Repeat: {words}", words
    kind.server.default_reply = lambda req: words
    return "Go on.", words


def _pool_connections(kind, backend):
    """The httpx connections the backend's async client holds (None where the SDK hides its pool)."""
    if kind.name == "sglang":
        client = backend._async_client()
    elif kind.name in ("openai", "azure", "anthropic"):
        client = backend._async_client()._client
    else:
        return None
    return list(client._transport._pool.connections)


def _wait(pred, timeout=5.0):
    return asyncio.to_thread(wait_until, pred, timeout)


def test_cancelling_a_stream_closes_the_connection(kind):
    backend = kind.backend()
    srv = kind.server
    question, words = _slow_reply(kind)

    async def main():
        s = AsyncProgramState(backend)
        s.user(question)
        got: list[str] = []
        first = asyncio.Event()

        async def consume():
            with s.assistant():
                async for delta in s.gen_stream("r", max_new_tokens=100):
                    got.append(delta)
                    first.set()

        baseline = srv.open_connections  # e.g. RuntimeEndpoint's sync client, idle since construction
        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 10)
        assert srv.open_connections == baseline + 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the server sees the client leave mid-stream, and the connection is gone ...
        assert await _wait(lambda: srv.streams_left_by_client == 1), "the cancelled stream was not closed"
        assert await _wait(lambda: srv.open_connections == baseline)
        # ... and the client's pool keeps no connection checked out for it
        pool = _pool_connections(kind, backend)
        if pool is not None:
            assert all(c.is_idle() or c.is_closed() for c in pool), pool
        # the state kept what it saw, marked aborted, and is usable again
        assert got and s["r"] == "".join(got) and s.meta_info["r"]["finish_reason"] == "abort"
        assert "".join(got) != words
        s.user("Again?")
        await _closing(backend)

    _run(main())


def test_breaking_out_and_closing_the_stream_closes_the_connection(kind):
    backend = kind.backend()
    srv = kind.server
    question, _ = _slow_reply(kind)

    async def main():
        s = AsyncProgramState(backend)
        s.user(question)
        baseline = srv.open_connections
        with s.assistant():
            async with contextlib.aclosing(s.gen_stream("r", max_new_tokens=100)) as stream:
                async for _delta in stream:
                    break
        assert await _wait(lambda: srv.streams_left_by_client == 1), "the abandoned stream was not closed"
        assert await _wait(lambda: srv.open_connections == baseline)
        assert s.meta_info["r"]["finish_reason"] == "abort"
        await _closing(backend)

    _run(main())


# --------------------------------------------------------------------------- the sync rules


def test_async_stream_cut_cleanly_raises(kind):
    backend = kind.backend()
    kind.server.stream_delay = 0.0
    if kind.name != "sglang":
        kind.server.default_reply = lambda req: "one two three four five"
    kind.server.script(*([Truncate(after=4)] * 3))

    async def main():
        s = AsyncProgramState(backend)
        s.user("Repeat: one two three four five")
        with s.assistant():
            with pytest.raises((StreamInterruptedError,)):
                async for _ in s.gen_stream("r"):
                    pass
        await _closing(backend)
        return s

    s = _run(main())
    assert "r" not in s.variables
    assert len(kind.generation_requests()) == 1  # text was delivered: never restarted


def test_async_retries_before_the_first_delta_only(kind):
    backend = kind.backend()
    if kind.name != "sglang":
        kind.server.default_reply = lambda req: "one two three"
    kind.server.script(Fail(503, headers={"retry-after": "0"}))

    async def main():
        s = AsyncProgramState(backend)
        s.user("Repeat: one two three")
        with s.assistant():
            deltas = [d async for d in s.gen_stream("r")]
        await _closing(backend)
        return deltas

    deltas = _run(main())
    assert "".join(deltas) == "one two three"
    assert len(kind.generation_requests()) == 2


def test_async_400_is_not_retried_and_the_key_is_redacted(kind):
    backend = kind.backend()
    kind.server.script(Fail(400, message=f"bad request; you sent key {KEY}"))

    err = _gen_error(backend, BadRequestError)
    assert len(kind.generation_requests()) == 1
    assert KEY not in f"{err} {err!r} {''.join(traceback.format_exception(err))}"


def test_async_timeouts_follow_the_sync_rule(kind):
    """A read timeout raises APITimeoutError after the same number of attempts as the sync path
    (whatever the shared retry rule says about timeouts)."""
    if kind.name in ("openai", "azure", "anthropic"):
        backend = kind.backend(timeout=0.3, max_retries=1)  # the SDK's own retries, configured
    else:
        backend = kind.backend(timeout=0.3)

    def attempts(run_once):
        start = len(kind.generation_requests())
        kind.server.script(*([Stall(2)] * 4))
        run_once()
        with kind.server._lock:
            kind.server._actions.clear()
        return len(kind.generation_requests()) - start

    def sync_once():
        s = ProgramState(backend)
        s.user("Repeat: x")
        with s.assistant():
            with pytest.raises(APITimeoutError):
                s.gen("r")

    async def async_once():
        s = AsyncProgramState(backend)
        s.user("Repeat: x")
        with s.assistant():
            with pytest.raises(APITimeoutError):
                await s.gen("r")
        await backend.aclose()

    t0 = time.perf_counter()
    n_async = attempts(lambda: _run(async_once()))
    elapsed = time.perf_counter() - t0
    n_sync = attempts(sync_once)
    backend.shutdown()
    assert n_async == n_sync >= 1
    assert elapsed < 0.3 * n_async + 2.0  # each attempt gave up at the timeout, not at the stall's end


def test_async_fork_and_serialized_operations(kind):
    backend = kind.backend()

    async def main():
        s = AsyncProgramState(backend)
        s.user(_question(1, "a"))
        children = await s.fork(2)
        assert all(isinstance(c, AsyncProgramState) for c in children)

        async def child(c, i):
            c.user(_question(i, "x"))
            with c.assistant():
                return await c.gen("x", max_new_tokens=16)

        answers = await asyncio.gather(*(child(c, i) for i, c in enumerate(children)))
        # two gens on ONE state run one after the other; a sync mutation meanwhile is refused
        s.user(_question(2, "a"))
        order = []

        async def gen():
            await s.gen("g1", max_new_tokens=16)
            order.append("gen")

        async def commit():
            await s.commit_lazy_operations()
            order.append("commit")

        with s.assistant():
            first, second = asyncio.create_task(gen()), asyncio.create_task(commit())
            await asyncio.sleep(0)
            with pytest.raises(RuntimeError, match="in flight"):
                s += "x"
            await asyncio.gather(first, second)
        assert order == ["gen", "commit"]
        await _closing(backend)
        return answers, s

    answers, s = _run(main())
    assert answers == [_answer(0, "x"), _answer(1, "x")]
    assert s["g1"] == _answer(2, "a")


def test_authentication_error_async(kind):
    if kind.name == "vertexai":
        pytest.skip("the Gemini server checks a bearer token the credentials object always sends")
    srv = kind.server
    backend = kind.backend()
    srv.api_key = "another-key"  # the server now rejects the backend's key

    err = _gen_error(backend, AuthenticationError)
    assert KEY not in f"{err} {err!r}"


# ------------------------------------------------------------------------------- odds and ends


def test_speculative_execution_is_sync_only():
    pytest.importorskip("openai")
    from providers.openai import OpenAI

    with OpenAIServer(api_key=KEY) as srv:
        backend = OpenAI("gpt-4o-mini", api_key=KEY, base_url=srv.url + "/v1")

        async def main():
            s = AsyncProgramState(backend)
            s.user("hi")
            backend.set_api_speculative(s, 16)
            with s.assistant():
                with pytest.raises(UnsupportedOperationError, match="synchronous"):
                    await s.gen("a")
            await backend.aclose()

        _run(main())
        assert srv.count == 0


def test_one_backend_two_event_loops():
    """An async client belongs to its loop: a second asyncio.run gets its own."""
    with SGLangServer() as srv:
        ep = RuntimeEndpoint(srv.url, retry=FAST)
        params = SamplingParams(max_new_tokens=4)

        async def once():
            s = ProgramState(ep)
            s += "Repeat: a b\n"
            text, _ = await ep.agenerate(s, params)
            return text, ep._async_client()

        (t1, c1), (t2, c2) = _run(once()), _run(once())
        assert t1 == t2 == "a b" and c1 is not c2
        ep.shutdown()


def test_backends_without_async_say_so():
    from providers import BaseBackend

    class Sync(BaseBackend):
        pass

    b = Sync()
    with pytest.raises(UnsupportedOperationError, match="agenerate"):
        _run(b.agenerate(None, SamplingParams()))
    with pytest.raises(UnsupportedOperationError, match="aselect"):
        _run(b.aselect(None, ["a"], 0.0, None))


def test_readme_asyncio_program_runs(monkeypatch, capsys):
    """The README's asyncio program, run as written against the loopback OpenAI server."""
    pytest.importorskip("openai")
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    program = next(b for b in blocks if "AsyncProgramState" in b)
    with OpenAIServer(api_key=KEY) as srv:
        srv.default_reply = lambda req: "echo " + last_user_text(req.json)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url + "/v1")
        exec(compile(program, "README.md", "exec"), {"__name__": "readme"})
        bodies = [r.json for r in srv.requests]
    assert capsys.readouterr().out.strip() == "['echo Why is the sky blue?', 'echo Name a prime.']"
    assert all(b["reasoning_effort"] == "low" and b["max_completion_tokens"] == 64 for b in bodies)


def test_openai_multi_request_flows_run_the_same_plan_async():
    """select by token probing over several requests, and dtype constraints, on the async path:
    the same requests as the sync path (one plan), in the same order."""
    pytest.importorskip("openai")
    from providers.openai import OpenAI

    def run_both(scores, program):
        bodies = []
        for mode in ("sync", "async"):
            with OpenAIServer(api_key=KEY) as srv:
                tok = ToyTokenizer(words=["Pa", "ris", "lermo", "12", "True", "False"])
                srv.vocab, srv.token_scores = tok.vocab, scores
                backend = OpenAI("gpt-3.5-turbo-instruct", api_key=KEY, base_url=srv.url + "/v1", tokenizer=tok)
                if mode == "sync":
                    s = ProgramState(backend)
                    s += "Sicily's capital: "
                    result = program(s, None)
                else:
                    async def main():
                        s = AsyncProgramState(backend)
                        s += "Sicily's capital: "
                        out = await program(s, True)
                        await backend.aclose()
                        return out

                    result = _run(main())
                bodies.append([r.json for r in srv.requests])
                yield result
        assert bodies[0] == bodies[1]

    select = list(run_both({"Pa": 2.0, "lermo": 1.0},
                           lambda s, a: s.select("c", ["Paris", "Palermo", "Rome"])))
    assert select == ["Palermo", "Palermo"]
    number = list(run_both({"12": 3.0}, lambda s, a: s.gen("n", dtype=int)))
    assert number == ["12", "12"]
    boolean = list(run_both({"False": 1.0}, lambda s, a: s.gen("b", dtype=bool)))
    assert boolean == ["False", "False"]
