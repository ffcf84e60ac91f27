"""Frontend-level programs: ProgramState driving RuntimeEndpoint over loopback HTTP."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import pytest

from providers import (
    ProgramState,
    RetryPolicy,
    RuntimeEndpoint,
    StreamInterruptedError,
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)

from .wire_sglang import SGLangServer, StreamError

FAST = RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.05)


@pytest.fixture
def server():
    with SGLangServer(model_path="Qwen/Qwen2.5-7B-Instruct", lifetime=60) as srv:
        yield srv


@pytest.fixture
def backend(server):
    ep = RuntimeEndpoint(server.url, retry=FAST, timeout=10)
    yield ep
    ep.shutdown()


def generate_bodies(server):
    return [r.json for r in server.requests if r.path == "/generate"]


def test_multi_turn_chat(server, backend):
    s = ProgramState(backend)
    s.user("Repeat: Bonjour")
    with s.assistant():
        s.gen("first", max_new_tokens=16)
    s.user("Repeat: Au revoir")
    with s.assistant():
        s.gen("second", max_new_tokens=16)
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    turn1 = "<|im_start|>user\nRepeat: Bonjour<|im_end|>\n<|im_start|>assistant\n"
    turn2 = "<|im_start|>user\nRepeat: Au revoir<|im_end|>\n<|im_start|>assistant\n"
    assert s.text_ == system + turn1 + "Bonjour<|im_end|>\n" + turn2 + "Au revoir<|im_end|>\n"
    assert (s["first"], s["second"]) == ("Bonjour", "Au revoir")
    assert s.messages_ == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Repeat: Bonjour"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Repeat: Au revoir"},
        {"role": "assistant", "content": "Au revoir"},
    ]
    first, second = generate_bodies(server)
    assert first["text"] == system + turn1
    assert second["text"] == system + turn1 + "Bonjour<|im_end|>\n" + turn2
    assert first["sampling_params"] == {"max_new_tokens": 16, "stop": ["<|im_end|>"]}
    assert s.meta_info["second"]["finish_reason"] == "stop"
    assert s.meta_info["second"]["cached_tokens"] > 0  # the first turn's prompt is a cached prefix


def test_streaming_program(server, backend):
    s = ProgramState(backend)
    s.user("Repeat: stream me please")
    with s.assistant():
        deltas = list(s.gen_stream("answer"))
    assert deltas == ["stream", " me", " please"]
    assert s["answer"] == "stream me please"
    assert s.messages_[-1] == {"role": "assistant", "content": "stream me please"}
    assert s.meta_info["answer"]["finish_reason"] == "stop"


def test_streaming_failure_leaves_state_as_before(server, backend):
    s = ProgramState(backend)
    s += "Repeat: one two three\n"
    server.script(StreamError(after=1))
    seen = []
    with pytest.raises(StreamInterruptedError):
        for delta in s.gen_stream("x"):
            seen.append(delta)
    assert seen == ["one"]
    assert s.text_ == "Repeat: one two three\n" and "x" not in s
    assert "".join(s.gen_stream("x")) == "one two three"  # the caller may simply try again


@pytest.mark.parametrize(
    "method, expected",
    [
        (token_length_normalized, " ox ox"),
        (greedy_token_selection, " a zebra"),
        (unconditional_likelihood_normalized, " grey elephant"),
    ],
)
def test_select_in_a_program(backend, method, expected):
    # Expectations are hand-computed in test_runtime_endpoint.py (same prompt and choices).
    s = ProgramState(backend)
    s += "Animals: elephant. Pick one:"
    choice = s.select("animal", [" big cat", " grey elephant", " a zebra", " ox ox"], method=method)
    assert choice == expected and s["animal"] == expected
    assert s.text_ == "Animals: elephant. Pick one:" + expected
    assert s.meta_info["animal"]["method"] == method.name


def test_images_in_a_program(server, backend, tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + b"\x01" * 8
    path = tmp_path / "cat.png"
    path.write_bytes(png)
    s = ProgramState(backend)
    with s.user():
        s.image(path)
        s += "Repeat: a cat"
    with s.assistant():
        s.gen("caption")
    assert s["caption"] == "a cat"
    image_token = "<|vision_start|><|image_pad|><|vision_end|>"
    assert image_token in s.text_
    body = generate_bodies(server)[-1]
    assert body["image_data"] == base64.b64encode(png).decode()
    assert s.messages_[1]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
        {"type": "text", "text": "Repeat: a cat"},
    ]


def test_dtype_in_a_program(backend):
    s = ProgramState(backend)
    s += "How many legs does a spider have? "
    s.gen("legs", dtype=int)
    assert s["legs"] == "42" and int(s["legs"]) == 42


def test_fork_shares_the_prefix_and_runs_in_parallel(server, backend):
    s = ProgramState(backend)
    s.system("You list things.")
    kids = s.fork(3)
    commit = generate_bodies(server)[-1]
    assert commit == {"text": s.text_, "sampling_params": {"max_new_tokens": 0}}  # prefix sent once

    def run(i_and_state):
        i, child = i_and_state
        child.user(f"Repeat: item {i}")
        with child.assistant():
            child.gen("item", max_new_tokens=4)
        return child

    with ThreadPoolExecutor(3) as pool:
        kids = list(pool.map(run, enumerate(kids)))
    assert [k["item"] for k in kids] == ["item 0", "item 1", "item 2"]
    assert all(k.meta_info["item"]["cached_tokens"] >= 1 for k in kids)
    assert s.text_.endswith("<|im_end|>\n") and "item" not in s  # the parent is untouched
