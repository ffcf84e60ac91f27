"""The shared provider suite: the same contract, run once per provider against its wire server.

Every backend (RuntimeEndpoint, Runtime, OpenAI chat and completion models, Azure, Anthropic, LiteLLM,
VertexAI; see ``worlds.py``) must give the uniform meta_info and token usage, stream deltas that add
up to the text with a complete final meta_info, honour ``stop``, decide ``select``, refuse an output
constraint it cannot honour before any request, retry a 5xx by the one retry rule, and send images
under the MIME type of their bytes.
"""

from __future__ import annotations

import pytest

import providers
from providers import ProgramState

from .api_helpers import PNG_1X1
from .wire_http import Fail
from .worlds import WORLDS, make_world

pytestmark = pytest.mark.timeout(60)

UNIFORM = {"model", "prompt_tokens", "completion_tokens", "finish_reason", "latency"}


@pytest.fixture(params=WORLDS)
def world(request):
    with make_world(request.param) as w:
        yield w


def chat(world, user):
    s = ProgramState(world.backend)
    s.system("Be brief.")
    s.user(user)
    return s


def usage_of(world):
    return getattr(world.backend, "endpoint", world.backend).token_usage


def test_generate_meta_and_usage(world):
    world.expect("hello there")
    before = usage_of(world).snapshot()
    s = chat(world, "Repeat: hello there")
    with s.assistant():
        assert s.gen("a", max_new_tokens=16) == "hello there"
    meta = s.meta_info["a"]
    assert UNIFORM <= set(meta) and meta["finish_reason"] == "stop" and meta["latency"] > 0
    assert meta["prompt_tokens"] > 0 and meta["completion_tokens"] > 0
    after = usage_of(world).snapshot()
    assert after["prompt_tokens"] - before["prompt_tokens"] == meta["prompt_tokens"]
    assert after["completion_tokens"] - before["completion_tokens"] == meta["completion_tokens"]


def test_stream_deltas_add_up_and_end_with_complete_meta(world):
    world.expect("one two three four")
    s = chat(world, "Repeat: one two three four")
    with s.assistant():
        deltas = list(s.gen_stream("a", max_new_tokens=16))
    assert "".join(deltas) == "one two three four" == s["a"]
    assert all(deltas)
    assert UNIFORM <= set(s.meta_info["a"]) and s.meta_info["a"]["finish_reason"] == "stop"


def test_stop(world):
    world.expect("alpha beta, gamma")
    s = chat(world, "Repeat: alpha beta, gamma")
    with s.assistant():
        assert s.gen("a", stop=",") == "alpha beta"
    assert s.meta_info["a"]["finish_reason"] == "stop"


def test_select(world):
    world.expect_choice("Paris")
    s = chat(world, "Paris is the capital of France. The capital of France is")
    with s.assistant():
        assert s.select("city", ["Lyon", "Paris", "Marseille"]) == "Paris"
    assert s.meta_info["city"]["method"]


def test_constraint_it_cannot_honour_is_refused_before_any_request(world):
    if world.regex:
        pytest.skip(f"{world.name} honours regex")
    s = chat(world, "Yes or no?")
    count = world.server.count
    with s.assistant():
        with pytest.raises(providers.UnsupportedParameterError, match="regex"):
            s.gen("a", regex="(yes|no)")
    assert world.server.count == count


def test_server_error_is_retried(world):
    if world.server is None:
        pytest.skip("the Runtime's server is a child process: no faults can be scripted into it")
    world.expect("after the retry")
    world.server.script(Fail(503))
    count = world.server.count
    s = chat(world, "Repeat: after the retry")
    with s.assistant():
        assert s.gen("a") == "after the retry"
    assert world.server.count - count == 2


def test_image_goes_with_the_mime_type_of_its_bytes(world, tmp_path):
    path = tmp_path / "picture.jpg"  # a PNG under a misleading name
    path.write_bytes(PNG_1X1)
    world.expect("a picture")
    s = ProgramState(world.backend)
    with s.user():
        s.image(path)
        s += "Repeat: a picture"
    if not world.images:
        with s.assistant():
            with pytest.raises(ValueError, match="cannot receive images"):
                s.gen("a")
        return
    with s.assistant():
        assert s.gen("a", max_new_tokens=8) == "a picture"
    sent = world.sent_image()
    if sent is not None:
        assert sent[0] in ("image/png", None)
