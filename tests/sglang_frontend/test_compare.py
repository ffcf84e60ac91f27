"""The same ``@sgl.function`` programs on SGLang's own backends and on ours, same wire server.

Where SGLang's backend works, the outputs must be equal. Where it does not (or answers something the
program did not ask for), the test pins down what SGLang's backend does and what ours does instead;
each case says why ours is right. SGLang's VertexAI backend is absent: it needs Google's
``vertexai`` SDK and reaches Google only (see ``worlds.py``), and ``sglang.Runtime`` launches the real
server, handing programs its ``.endpoint`` -- what ``providers.Runtime`` does too.
"""

from __future__ import annotations

import base64
import warnings

import pytest

from .conftest import require_sglang

require_sglang()

import sglang as sgl  # noqa: E402

import providers  # noqa: E402
from tests.providers.api_helpers import PNG_1X1  # noqa: E402

from . import test_programs as P  # noqa: E402
from tests.providers.worlds import make_world  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def outcome(program, backend, **kwargs):
    """``("ok", variables)`` or ``("error", exception)`` of one run."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = program.run(backend=backend, **kwargs)
        state.sync()
    error = state.error()
    if error is not None:
        return "error", error
    variables = {k: v for k, v in state.stream_executor.variables.items()}
    variables["_warnings"] = [str(w.message) for w in caught
                              if issubclass(w.category, UserWarning) and "stream_executor" not in str(w.message)]
    return "ok", variables


def both(world, program, replies, **kwargs):
    """Run ``program`` on SGLang's backend, then on ours, each with the server answering ``replies``."""
    theirs_backend = world.theirs()
    world.expect(*replies)
    theirs = outcome(program, theirs_backend, **kwargs)
    world.expect(*replies)
    ours = outcome(program, world.backend, **kwargs)
    return theirs, ours


def strip(variables):
    return {k: v for k, v in variables.items() if k != "_warnings"}


# ------------------------------------------------------------------------------- same outputs

SAME = [
    ("sglang", "chat"), ("sglang", "completion"), ("sglang", "stop"), ("sglang", "regex"), ("sglang", "gen_int"),
    ("sglang", "image"), ("sglang", "fork"),
    ("openai", "chat"), ("openai", "stop"),
    ("openai-completion", "chat"), ("openai-completion", "completion"), ("openai-completion", "stop"),
    ("azure", "chat"), ("azure", "stop"),
    ("litellm", "chat"), ("litellm", "completion"), ("litellm", "stop"),
]


def _program(name, tmp_path):
    path = tmp_path / "cat.png"
    path.write_bytes(PNG_1X1)
    return {
        "chat": (P.chat, ["hello there"], {"word": "hello there"}),
        "completion": (P.completion, ["plain words"], {"word": "plain words"}),
        "stop": (P.stopped, ["alpha beta, gamma"], {}),
        "regex": (P.regex, ["True"], {}),
        "gen_int": (P.number, ['{"value": 42}'], {}),
        "image": (P.look, ["a cat"], {"path": str(path)}),
        "fork": (P.forked, ["same", "same", "same and same"], {}),
    }[name]


@pytest.mark.parametrize("world_name, program_name", SAME, ids=[f"{w}-{p}" for w, p in SAME])
def test_same_output_as_sglangs_backend(world_name, program_name, tmp_path):
    program, replies, kwargs = _program(program_name, tmp_path)
    with make_world(world_name) as world:
        (tk, theirs), (ok, ours) = both(world, program, replies, **kwargs)
    assert tk == "ok", f"SGLang's {world_name} backend failed: {theirs!r}"
    assert ok == "ok", f"ours failed: {ours!r}"
    assert strip(ours) == strip(theirs)


def test_stream_same_as_sglangs_runtime_endpoint():
    with make_world("sglang") as world:
        texts = []
        for backend in (world.theirs(), world.backend):
            state = P.chat.run(word="streamed words here", backend=backend, stream=True)
            texts.append("".join(state.text_iter("answer")))
            state.sync()
        assert texts == ["streamed words here"] * 2


def test_run_batch_same_as_sglangs_runtime_endpoint():
    with make_world("sglang") as world:
        args = [{"word": w} for w in ("first", "second", "third")]
        answers = []
        for backend in (world.theirs(), world.backend):
            states = P.chat.run_batch(args, backend=backend, num_threads=3)
            answers.append([s["answer"] for s in states])
        assert answers[0] == answers[1] == ["first", "second", "third"]


# ------------------------------------------------------------------------------ differences


@sgl.function
def pick_raw(s, prompt, choices):
    s += prompt + sgl.gen("c", choices=choices)


def test_select_scores_the_choice_not_the_prompt_runtime_endpoint():
    # SGLang's RuntimeEndpoint asks for logprobs from two tokens before the prompt's end and drops one
    # only when it was "healed", so each choice's mean includes prompt tokens -- the same tokens for
    # every choice, which dilute short choices more than long ones. Ours scores the choice's own tokens
    # (plus the boundary token only when the tokenizer merged it with the choice).
    prompt = "We love Rome. Best city: Supercalifragilisticexpialidocious"
    choices = [" Rome", " New York City"]
    with make_world("sglang") as world:
        _, theirs = outcome(pick_raw, world.theirs(), prompt=prompt, choices=choices)
        _, ours = outcome(pick_raw, world.backend, prompt=prompt, choices=choices)
    assert theirs["c"] == " New York City"  # dragged by " Supercalifragilisticexpialidocious" (-17.25)
    assert ours["c"] == " Rome"  # -0.25 per token (the prompt names it) vs -1.42 for " New York City"


@pytest.mark.parametrize("world_name", ["openai", "azure", "litellm", "anthropic"])
def test_select_on_chat_apis(world_name):
    # SGLang's chat backends raise NotImplementedError; ours decide (logit bias, or generate and match).
    with make_world(world_name) as world:
        theirs = outcome(P.pick, world.theirs(), method=P.token_length_normalized)
        world.expect_choice("Paris")
        ours = outcome(P.pick, world.backend, method=P.token_length_normalized)
    assert theirs[0] == "error" and isinstance(theirs[1], (NotImplementedError, TypeError))
    assert ours == ("ok", {"city": "Paris", "_warnings": []})


@pytest.mark.parametrize("world_name", ["openai", "openai-completion", "azure", "litellm"])
def test_regex_is_refused_not_ignored(world_name):
    # SGLang's API backends warn and send the request without the constraint: the program gets text
    # that need not match. Ours refuses before any request, naming the parameter.
    with make_world(world_name) as world:
        (tk, theirs), (ok, ours) = both(world, P.regex, ["maybe"])
    assert tk == "ok" and theirs["x"] == "maybe"
    assert any("not supported" in w for w in theirs["_warnings"])
    assert ok == "error" and isinstance(ours, providers.UnsupportedParameterError)


@pytest.mark.parametrize("world_name", ["openai", "azure", "litellm"])
def test_gen_int_on_chat_apis(world_name):
    # SGLang: OpenAI/Azure chat models raise ("constrained type not supported on chat model"); LiteLLM
    # sends the request unconstrained and returns whatever came back. Ours asks for structured output.
    with make_world(world_name) as world:
        (tk, theirs), (ok, ours) = both(world, P.number, ['{"value": 42}'])
    if world_name == "litellm":
        assert tk == "ok" and theirs["n"] == '{"value": 42}'  # not an int: the constraint was dropped
    else:
        assert tk == "error" and isinstance(theirs, AssertionError)
    assert ok == "ok" and ours["n"] == "42"


def test_gen_int_on_a_completion_model():
    # SGLang's OpenAI backend passes max_completion_tokens to completions.create, which the installed SDK
    # does not take (TypeError); ours constrains the digits with logit bias.
    with make_world("openai-completion") as world:
        theirs = outcome(P.number, world.theirs())
        world.expect("42")
        ours = outcome(P.number, world.backend)
    assert theirs[0] == "error" and isinstance(theirs[1], TypeError) and "max_completion_tokens" in str(theirs[1])
    assert ours[0] == "ok" and ours[1]["n"] == "42"


@pytest.mark.parametrize("world_name", ["openai", "azure", "litellm"])
def test_image_is_sent_with_its_real_mime_type(world_name, tmp_path):
    # SGLang's frontend labels every image "image/jpeg"; its backends pass that on. Ours read the bytes.
    path = tmp_path / "cat.png"
    path.write_bytes(PNG_1X1)
    with make_world(world_name) as world:
        world.expect("a cat")
        assert outcome(P.look, world.theirs(), path=str(path))[0] == "ok"
        theirs = world.sent_image()
        world.expect("a cat")
        assert outcome(P.look, world.backend, path=str(path)) == ("ok", {"caption": "a cat", "_warnings": []})
        ours = world.sent_image()
    data = base64.b64encode(PNG_1X1).decode()
    assert theirs == ("image/jpeg", data) and ours == ("image/png", data)


def test_completion_model_with_an_image(tmp_path):
    # SGLang's OpenAI backend sends a completion model the flat prompt -- the image token, not the
    # image -- and the model answers as if it had seen one; ours refuses the program before any request.
    path = tmp_path / "cat.png"
    path.write_bytes(PNG_1X1)
    with make_world("openai-completion") as world:
        (tk, theirs), (ok, ours) = both(world, P.look, ["a cat"], path=str(path))
        assert tk == "ok" and theirs["caption"] == "a cat"
        sent = str(world.server.requests[-1].json)
        assert "USER:<image>Repeat: a cat" in sent and base64.b64encode(PNG_1X1).decode()[:12] not in sent
    assert ok == "error" and "cannot receive images" in str(ours)


def test_raw_completion_program_on_a_chat_model():
    # SGLang's OpenAI backend raises for a gen outside an assistant turn on a chat model; ours sends the
    # text so far as one user turn (providers/messages.py).
    with make_world("openai") as world:
        (tk, theirs), (ok, ours) = both(world, P.completion, ["plain words"], word="plain words")
        assert world.server.last.json["messages"] == [{"role": "user", "content": "Repeat: plain words\n"}]
    assert tk == "error" and "sgl.gen must be right after sgl.assistant" in str(theirs)
    assert ok == "ok" and ours["out"] == "plain words"


def test_anthropic_backend_of_sglang_fails_with_this_sdk():
    # SGLang's Anthropic backend passes temperature/top_p/top_k as keyword arguments that the installed
    # anthropic SDK no longer names; ours sends what the SDK does not name in extra_body (and top_k only
    # when set, never SGLang's -1).
    with make_world("anthropic") as world:
        (tk, theirs), (ok, ours) = both(world, P.chat, ["hello there"], word="hello there")
        body = world.server.last.json
    assert tk == "error" and isinstance(theirs, TypeError)
    assert ok == "ok" and ours["answer"] == "hello there" and "top_k" not in body


def test_speculative_execution_openai():
    # SGLang's OpenAI backend sends both max_tokens and max_completion_tokens with a speculative turn,
    # which the API refuses (400), and retries it three times with 5 s waits; ours sends max_tokens.
    with make_world("openai") as world:
        (tk, theirs), (ok, ours) = both(world, P.speculative, ["Name: Ann\nAge: 30"] * 4)
    assert tk == "error" and "max_tokens and max_completion_tokens" in str(theirs)
    assert ok == "ok" and (ours["name"], ours["age"]) == ("Ann", "30")
