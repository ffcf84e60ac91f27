"""Real ``@sgl.function`` programs, run by SGLang's own frontend on our backends.

Every backend (RuntimeEndpoint, Runtime, OpenAI chat and completion models, Azure, Anthropic, LiteLLM,
VertexAI) runs the same programs -- chat, raw completion, stop, regex, select with each of SGLang's
choices methods, streaming, fork, ``run_batch``, images, ``gen_int`` -- against the loopback wire
servers of ``tests/providers``. ``test_compare.py`` runs them on SGLang's own backends too.

A "world" is one backend kind with its wire server: ``ours()`` builds our backend, ``expect(text)``
makes the server's next answer ``text`` (the SGLang server model is prompt-driven instead: it repeats
what follows ``Repeat: `` in the prompt, so ``expect`` has nothing to do there).
"""

from __future__ import annotations

import base64

import pytest

from .conftest import require_sglang

require_sglang()

import sglang as sgl  # noqa: E402
from sglang.lang.choices import (  # noqa: E402
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)

import providers  # noqa: E402
from tests.providers.api_helpers import PNG_1X1  # noqa: E402

from tests.providers.worlds import WORLDS, World, make_world  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=WORLDS)
def world(request):
    with make_world(request.param) as w:
        yield w


def run(program, world: World, **kwargs):
    state = program.run(backend=world.backend, **kwargs)
    state.sync()
    error = state.error()
    if error is not None:
        raise error
    return state


# ------------------------------------------------------------------------------------ programs


@sgl.function
def chat(s, word):
    s += sgl.system("Be brief.")
    s += sgl.user("Repeat: " + word)
    s += sgl.assistant(sgl.gen("answer", max_tokens=16))


@sgl.function
def completion(s, word):
    s += "Repeat: " + word + "\n" + sgl.gen("out", max_tokens=8, stop="\n")


@sgl.function
def stopped(s):
    s += sgl.user("Repeat: alpha beta, gamma")
    s += sgl.assistant(sgl.gen("x", max_tokens=16, stop=","))


@sgl.function
def regex(s):
    s += sgl.user("Is the sky blue? Answer True or False.")
    s += sgl.assistant(sgl.gen("x", max_tokens=8, regex=r"(True|False)"))


@sgl.function
def pick(s, method):
    s += sgl.user("Paris is the capital of France. The capital of France is")
    s += sgl.assistant(sgl.gen("city", choices=["Lyon", "Paris", "Marseille"], choices_method=method))


@sgl.function
def forked(s):
    s += sgl.system("Two answers.")
    forks = s.fork(2)
    for f in forks:
        f += sgl.user("Repeat: same")
        f += sgl.assistant(sgl.gen("ans", max_tokens=8))
    forks.join()
    s += sgl.user("Repeat: " + forks[0]["ans"] + " and " + forks[1]["ans"])
    s += sgl.assistant(sgl.gen("both", max_tokens=16))


@sgl.function
def look(s, path):
    s += sgl.user(sgl.image(path) + "Repeat: a cat")
    s += sgl.assistant(sgl.gen("caption", max_tokens=8))


@sgl.function
def number(s):
    s += sgl.user("Repeat: 42")
    s += sgl.assistant(sgl.gen_int("n"))


# ---------------------------------------------------------------------------------------- tests


def test_chat(world):
    world.expect("hello there")
    state = run(chat, world, word="hello there")
    assert state["answer"] == "hello there"
    meta = state.get_meta_info("answer")
    assert meta["finish_reason"] == "stop" and meta["prompt_tokens"] > 0
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[-1]["content"] == "hello there"


def test_raw_completion(world):
    world.expect("plain words")
    state = run(completion, world, word="plain words")
    assert state["out"] == "plain words"
    assert state.text().endswith("Repeat: plain words\nplain words")


def test_stop(world):
    world.expect("alpha beta, gamma")
    state = run(stopped, world)
    assert state["x"] == "alpha beta"
    assert state.get_meta_info("x")["finish_reason"] == "stop"


def test_regex(world):
    if world.regex:
        state = run(regex, world)
        assert state["x"] == "True"
        return
    # APIs without regex constraints: an error naming the parameter, never an unconstrained answer.
    with pytest.raises(providers.UnsupportedParameterError, match="regex"):
        run(regex, world)


@pytest.mark.parametrize(
    "method", [token_length_normalized, greedy_token_selection, unconditional_likelihood_normalized],
    ids=["token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized"],
)
def test_select_with_sglangs_choices_methods(world, method):
    world.expect_choice("Paris")
    state = run(pick, world, method=method)
    assert state["city"] == "Paris"
    meta = state.get_meta_info("city")
    name = type(method).__name__
    expected_name = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    if world.scores_choices:  # the method itself decided, from our logprobs
        assert meta["method"] == expected_name
        assert len(meta["normalized_prompt_logprobs"]) == 3
    else:  # the API decides another way; the method asked for is on record
        assert meta["requested_method"] == expected_name and meta["method"] != expected_name
    assert state.messages()[-1] == {"role": "assistant", "content": "Paris"}


def test_stream(world):
    world.expect("streamed words here")
    state = chat.run(word="streamed words here", backend=world.backend, stream=True)
    pieces = list(state.text_iter("answer"))
    assert "".join(pieces) == "streamed words here"
    state.sync()
    assert state.error() is None and state["answer"] == "streamed words here"
    assert state.get_meta_info("answer")["finish_reason"] == "stop"


def test_fork_and_join(world):
    world.expect("same", "same", "same and same")
    state = run(forked, world)
    assert state["both"] == "same and same"


def test_run_batch(world):
    words = ["first", "second", "third"] if world.prompt_driven else ["same"] * 3
    world.expect(*words)
    states = chat.run_batch([{"word": w} for w in words], backend=world.backend, num_threads=3)
    for state, word in zip(states, words):
        state.sync()
        assert state.error() is None
        assert state["answer"] == word


def test_image(world, tmp_path):
    path = tmp_path / "cat.png"
    path.write_bytes(PNG_1X1)
    world.expect("a cat")
    if not world.images:
        with pytest.raises(ValueError, match="cannot receive images"):
            run(look, world, path=str(path))
        return
    state = run(look, world, path=str(path))
    assert state["caption"] == "a cat"
    # SGLang's frontend labels every image image/jpeg; the bytes are PNG, and that is what is sent.
    sent = world.sent_image()
    if sent is not None:  # (the Runtime's server is a child process: its requests are not recorded here)
        mime, data = sent
        assert data == base64.b64encode(PNG_1X1).decode() and mime in ("image/png", None)


def test_gen_int(world):
    if world.name == "openai-completion":
        # logit bias on the digit tokens (the loopback model answers from its queue, bias or not)
        world.expect("42")
        state = run(number, world)
        assert state["n"] == "42" and world.server.last.json["logit_bias"]
        return
    world.expect('{"value": 42}')  # structured output (APIs) or the regex (SGLang servers)
    state = run(number, world)
    assert state["n"] == "42"


@sgl.function(num_api_spec_tokens=64)
def speculative(s):
    s += sgl.user("Describe a person.")
    s += sgl.assistant("Name: " + sgl.gen("name", stop="\n") + "\nAge: " + sgl.gen("age", stop="\n"))


def test_speculative_execution(world):
    # One request for the whole assistant turn; its answer fills both gens.
    world.expect("Name: Ann\nAge: 30")
    if world.prompt_driven:
        pytest.skip(f"{world.name}: a server that continues the prompt has nothing to speculate over")
    if not world.backend.is_chat_model:
        pytest.skip(f"{world.name}: SGLang speculates with plain generate calls here (not a spec_fill backend)")
    count = world.server.count
    state = run(speculative, world)
    assert (state["name"], state["age"]) == ("Ann", "30")
    assert world.server.count - count == 1
    assert state.messages()[-1] == {"role": "assistant", "content": "Name: Ann\nAge: 30"}


@sgl.function(num_api_spec_tokens=64)
def speculative_after_an_example(s):
    s += sgl.user("Describe a person.")
    s += sgl.assistant("Name: Bo\nAge: 7")  # a fixed turn: SGLang hands its text to spec_fill
    s += sgl.user("Another one.")
    s += sgl.assistant("Name: " + sgl.gen("name", stop="\n") + "\nAge: " + sgl.gen("age", stop="\n"))


def test_speculative_program_with_a_fixed_assistant_turn(world):
    # With speculation on, SGLang's executor passes every fill of an assistant turn to spec_fill, also in
    # a turn without gens: that turn's text must still become its message, and not leak into the next
    # turn's pattern.
    if world.prompt_driven or not world.backend.is_chat_model:
        pytest.skip(f"{world.name}: not a spec_fill backend")
    world.expect("Name: Ann\nAge: 30")
    state = run(speculative_after_an_example, world)
    assert (state["name"], state["age"]) == ("Ann", "30")
    sent = world.server.last.json["messages"]
    assert {"role": "assistant", "content": "Name: Bo\nAge: 7"} in sent
    assert state.messages()[1:] == [{"role": "assistant", "content": "Name: Bo\nAge: 7"},
                                    {"role": "user", "content": "Another one."},
                                    {"role": "assistant", "content": "Name: Ann\nAge: 30"}]


def test_speculative_programs_in_a_batch_keep_their_own_buffers(world):
    # SGLang's own OpenAI backend keeps the turn's buffers on the backend, shared by every program of a
    # batch; ours keeps them on each program's state.
    if world.prompt_driven or not world.backend.is_chat_model:
        pytest.skip(f"{world.name}: not a spec_fill backend")
    world.expect(*["Name: Ann\nAge: 30"] * 4)
    states = speculative.run_batch([{}] * 4, backend=world.backend, num_threads=4)
    for state in states:
        state.sync()
        assert state.error() is None and (state["name"], state["age"]) == ("Ann", "30")


def test_default_backend():
    # sgl.set_default_backend with ours: programs run without backend=. (`sgl.global_config`: the module
    # moved from sglang.global_config to sglang.lang.global_config in 0.5.11; the attribute stayed.)
    global_config = sgl.global_config

    with make_world("sglang") as world:
        previous = global_config.default_backend
        sgl.set_default_backend(world.backend)
        try:
            state = chat.run(word="by default")
            assert state["answer"] == "by default"
        finally:
            global_config.default_backend = previous
