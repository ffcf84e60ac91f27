"""Provider options: each one arrives on the wire in its provider's field (recorded by the loopback
servers), for generate, streams and the async path; our own parameter names stay validated; usage
reports cached and reasoning tokens for OpenAI."""

from __future__ import annotations

import asyncio
import json

import pytest

from providers import (
    AsyncProgramState,
    ProgramState,
    RetryPolicy,
    RuntimeEndpoint,
    SamplingParams,
    UnsupportedParameterError,
)
from providers.options import merge_provider_options, split_sampling_kwargs

from .api_helpers import ToyTokenizer
from .wire_anthropic import AnthropicServer
from .wire_gemini import GeminiServer
from .wire_openai import OpenAIServer
from .wire_sglang import SGLangServer

pytestmark = pytest.mark.timeout(60)

KEY = "sk-options-loopback-SECRET-0123456789"
FAST = RetryPolicy(max_retries=0)


def chat(backend, user="Capital of France?"):
    s = ProgramState(backend)
    s.system("Be brief.")
    s.user(user)
    return s


# --------------------------------------------------------------------------- our own names


def test_typo_in_our_parameter_raises_with_did_you_mean_before_any_request():
    with SGLangServer() as srv:
        ep = RuntimeEndpoint(srv.url, retry=FAST)
        before = srv.count
        s = ProgramState(ep)
        s += "Repeat: a\n"
        with pytest.raises(TypeError, match=r"'max_new_token'; did you mean 'max_new_tokens'"):
            s.gen("a", max_new_token=5)
        with pytest.raises(TypeError, match=r"did you mean 'temperature'"):
            s.gen_stream("a", temprature=0.5)
        with pytest.raises(TypeError, match=r"did you mean 'reasoning_effort'"):
            s.gen("a", reasoning_efort="low")
        with pytest.raises(TypeError, match="SamplingParams field; pass it as temperature="):
            s.gen("a", provider_options={"temperature": 0.2})
        with pytest.raises(TypeError, match="given both"):
            s.gen("a", reasoning_effort="low", provider_options={"reasoning_effort": "high"})
        assert srv.count == before  # nothing was sent
        ep.shutdown()


def test_options_are_validated_and_merged():
    with pytest.raises(TypeError, match="extra_headers values must be str"):
        SamplingParams(provider_options={"extra_headers": {"X-N": 1}})
    with pytest.raises(TypeError, match="cache_control must be True or a marker dict"):
        SamplingParams(provider_options={"cache_control": "yes"})
    with pytest.raises(TypeError, match="provider_options must be a dict"):
        SamplingParams(provider_options=["seed"])
    p = SamplingParams.from_kwargs(max_new_tokens=3, cache_control=True, provider_options={"seed": 1})
    assert p.provider_options == {"seed": 1, "cache_control": {"type": "ephemeral"}}
    assert p.set_fields() == {"max_new_tokens": 3}  # options are not sampling fields
    assert hash(p) == hash(SamplingParams(max_new_tokens=3))
    merged = merge_provider_options({"extra_headers": {"A": "1", "B": "1"}, "seed": 1},
                                    {"extra_headers": {"B": "2"}, "seed": 2})
    assert merged == {"extra_headers": {"A": "1", "B": "2"}, "seed": 2}
    fields, options = split_sampling_kwargs({"top_k": 3, "thinking": {"type": "enabled"}}, ["top_k"])
    assert fields == {"top_k": 3, "provider_options": {"thinking": {"type": "enabled"}}} and options


# ------------------------------------------------------------------------------------ OpenAI


@pytest.fixture
def oai():
    with OpenAIServer(api_key=KEY) as server:
        yield server


def openai_backend(srv, model="gpt-4o-mini", **kw):
    pytest.importorskip("openai")
    from providers.openai import OpenAI

    return OpenAI(model, api_key=KEY, base_url=srv.url + "/v1", max_retries=0, **kw)


def test_openai_options_on_the_wire(oai):
    backend = openai_backend(oai)
    s = chat(backend)
    with s.assistant():
        s.gen("a", max_new_tokens=8, reasoning_effort="low", extra_body={"custom": {"x": 1}},
              extra_headers={"X-Trace": "t-1"}, extra_query={"tag": "q1"},
              provider_options={"seed": 7, "service_tier": "flex"})
    req = oai.last
    assert req.json["reasoning_effort"] == "low"
    assert req.json["custom"] == {"x": 1}
    assert req.json["seed"] == 7 and req.json["service_tier"] == "flex"
    assert req.json["max_tokens"] == 8
    assert req.header("x-trace") == "t-1"
    assert req.query["tag"] == "q1"
    assert s["a"] == "Hello from OpenAI"


def test_azure_options_on_the_wire(oai):
    pytest.importorskip("openai")
    from providers.openai import OpenAI

    backend = OpenAI("my-deployment", is_azure=True, api_key=KEY, azure_endpoint=oai.url, api_version="2024-10-21",
                     max_retries=0)
    s = chat(backend)
    with s.assistant():
        s.gen("a", reasoning_effort="medium", extra_query={"tag": "az"}, extra_headers={"X-Trace": "az-1"})
    req = oai.last
    assert req.path == "/openai/deployments/my-deployment/chat/completions"
    assert req.query == {"api-version": "2024-10-21", "tag": "az"}  # merged with the SDK's own query
    assert req.json["reasoning_effort"] == "medium" and req.header("x-trace") == "az-1"


def test_openai_cache_control_marks_the_last_content_part(oai):
    backend = openai_backend(oai)
    s = chat(backend)
    with s.assistant():
        s.gen("a", cache_control=True)
    messages = oai.last.json["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[-1]["content"] == [{"type": "text", "text": "Capital of France?",
                                        "cache_control": {"type": "ephemeral"}}]
    assert s.messages_[1]["content"] == "Capital of France?"  # the state is untouched


def test_openai_backend_options_and_stream_and_async(oai):
    backend = openai_backend(oai)
    backend.provider_options = {"extra_headers": {"X-Team": "a"}, "seed": 1}
    s = chat(backend)
    with s.assistant():
        "".join(s.gen_stream("a", provider_options={"seed": 2}))
    req = oai.last
    assert req.json["stream"] is True and req.json["seed"] == 2 and req.header("x-team") == "a"

    async def main():
        t = AsyncProgramState(backend)
        t.user("hi")
        with t.assistant():
            await t.gen("b", reasoning_effort="high")
        await backend.aclose()

    asyncio.run(main())
    assert oai.last.json["reasoning_effort"] == "high" and oai.last.json["seed"] == 1
    assert oai.last.header("x-team") == "a"


def test_openai_option_overriding_our_field_raises_before_any_request(oai):
    backend = openai_backend(oai)
    s = chat(backend)
    with s.assistant():
        with pytest.raises(ValueError, match="max_tokens would override"):
            s.gen("a", provider_options={"max_tokens": 5})
        with pytest.raises(ValueError, match="messages would override"):
            s.gen("a", extra_body={"messages": []})
    assert oai.count == 0


def test_openai_cache_control_on_a_completion_model_raises(oai):
    backend = openai_backend(oai, model="gpt-3.5-turbo-instruct")
    s = ProgramState(backend)
    s += "Say hi:"
    with pytest.raises(UnsupportedParameterError, match="cache_control"):
        s.gen("a", cache_control=True)
    assert oai.count == 0


def test_openai_backend_options_reach_select_probes(oai):
    tok = ToyTokenizer(words=["yes", "no"])
    backend = openai_backend(oai, tokenizer=tok)
    backend.provider_options = {"extra_headers": {"X-Team": "probe"}, "user": "u-1"}
    oai.vocab = tok.vocab
    oai.token_scores = {"no": 1.0}
    s = chat(backend, user="Green sky?")
    with s.assistant():
        assert s.select("c", ["yes", "no"]) == "no"
    assert oai.last.json["logit_bias"] and oai.last.json["user"] == "u-1"
    assert oai.last.header("x-team") == "probe"


def test_openai_speculative_turn_sends_the_gens_options(oai):
    backend = openai_backend(oai)
    oai.reply("Name: Alice\nAge: 30\n")
    s = chat(backend, user="Describe a person.")
    backend.set_api_speculative(s, num_api_spec_tokens=64)
    with s.assistant():
        s += "Name: "
        s.gen("name", stop="\n", provider_options={"seed": 11}, extra_headers={"X-Spec": "1"})
        s += "\nAge: "
        s.gen("age", stop="\n", provider_options={"seed": 11}, extra_headers={"X-Spec": "1"})
        assert oai.count == 0
    assert s["name"] == "Alice" and s["age"] == "30"
    assert oai.count == 1 and oai.last.json["seed"] == 11 and oai.last.header("x-spec") == "1"
    s.user("Another.")
    with pytest.raises(ValueError, match="same sampling parameters"):
        with s.assistant():
            s.gen("x", provider_options={"seed": 1})
            s.gen("y", provider_options={"seed": 2})


@pytest.mark.parametrize("stream", [False, True])
def test_openai_usage_reports_cached_and_reasoning_tokens(oai, stream):
    backend = openai_backend(oai, model="o3-mini")
    oai.cached_tokens, oai.reasoning_tokens = 5, 3
    s = chat(backend)
    with s.assistant():
        if stream:
            "".join(s.gen_stream("a"))
        else:
            s.gen("a")
    meta = s.meta_info["a"]
    assert meta["cached_tokens"] == 5 and meta["reasoning_tokens"] == 3
    oai.cached_tokens, oai.reasoning_tokens = 0, 0
    s.user("again")
    with s.assistant():
        s.gen("b")
    assert "cached_tokens" not in s.meta_info["b"] and "reasoning_tokens" not in s.meta_info["b"]


# --------------------------------------------------------------------------------- Anthropic


@pytest.fixture
def ant():
    with AnthropicServer(api_key=KEY) as server:
        yield server


def anthropic_backend(srv):
    pytest.importorskip("anthropic")
    from providers.anthropic import Anthropic

    return Anthropic("claude-loopback-1", api_key=KEY, base_url=srv.url, max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_thinking_cache_control_and_headers_on_the_wire(ant, stream):
    backend = anthropic_backend(ant)
    ant.cache_read_tokens = 4
    s = chat(backend)
    options = dict(max_new_tokens=64, thinking={"type": "enabled", "budget_tokens": 32}, cache_control=True,
                   extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
                   provider_options={"metadata": {"user_id": "u-1"}, "service_tier": "auto"},
                   extra_body={"custom": 1})
    with s.assistant():
        if stream:
            "".join(s.gen_stream("a", **options))
        else:
            s.gen("a", **options)
    req = ant.last
    assert req.json["thinking"] == {"type": "enabled", "budget_tokens": 32}
    assert req.json["messages"][-1]["content"] == [
        {"type": "text", "text": "Capital of France?", "cache_control": {"type": "ephemeral"}}]
    assert req.json["system"] == "Be brief."
    assert req.json["metadata"] == {"user_id": "u-1"} and req.json["service_tier"] == "auto"
    assert req.json["custom"] == 1
    assert req.header("anthropic-beta") == "prompt-caching-2024-07-31"
    assert s["a"] == "Hello from Anthropic"  # the thinking block is not part of the text ...
    assert s.meta_info["a"]["thinking"] == "Let me think it over."  # ... it is reported beside it
    assert s.meta_info["a"]["cache_read_input_tokens"] == 4


def test_anthropic_async_options_and_conflicts(ant):
    backend = anthropic_backend(ant)

    async def main():
        s = AsyncProgramState(backend)
        s.user("hi")
        with s.assistant():
            await s.gen("a", max_new_tokens=64, thinking={"type": "enabled", "budget_tokens": 16})
            with pytest.raises(ValueError, match="max_tokens would override"):
                await s.gen("b", provider_options={"max_tokens": 3})
        await backend.aclose()

    asyncio.run(main())
    assert ant.count == 1 and ant.last.json["thinking"]["budget_tokens"] == 16


# ----------------------------------------------------------------------------------- litellm


def test_litellm_options_on_the_wire(oai):
    pytest.importorskip("litellm")
    from providers.litellm import LiteLLM

    backend = LiteLLM("openai/gpt-4o-mini", api_key=KEY, base_url=oai.url + "/v1", retry_policy=FAST,
                      default_headers={"X-Default": "d"})
    s = chat(backend)
    with s.assistant():
        s.gen("a", extra_body={"custom": {"x": 1}}, extra_headers={"X-Trace": "t-2"},
              provider_options={"seed": 3}, cache_control=True)
    req = oai.last
    assert req.json["custom"] == {"x": 1} and req.json["seed"] == 3
    assert req.header("x-trace") == "t-2" and req.header("x-default") == "d"
    assert req.json["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    s.user("more")
    with s.assistant():  # names litellm would refuse for this model are sent: the caller asked for them
        s.gen("r", reasoning_effort="low", thinking={"type": "enabled", "budget_tokens": 10})
    assert oai.last.json["reasoning_effort"] == "low"
    assert oai.last.json["thinking"] == {"type": "enabled", "budget_tokens": 10}

    async def main():
        t = AsyncProgramState(backend)
        t.user("hi")
        with t.assistant():
            await t.gen("b", provider_options={"seed": 4})

    asyncio.run(main())
    assert oai.last.json["seed"] == 4
    count = oai.count
    with pytest.raises(UnsupportedParameterError, match="extra_query"):
        with s.assistant():
            s.gen("q", extra_query={"tag": "x"})
    assert oai.count == count


def test_litellm_usage_reports_cached_and_reasoning_tokens(oai):
    pytest.importorskip("litellm")
    from providers.litellm import LiteLLM

    backend = LiteLLM("openai/gpt-4o-mini", api_key=KEY, base_url=oai.url + "/v1", retry_policy=FAST)
    oai.cached_tokens, oai.reasoning_tokens = 6, 2
    s = chat(backend)
    with s.assistant():
        s.gen("a")
    assert s.meta_info["a"]["cached_tokens"] == 6 and s.meta_info["a"]["reasoning_tokens"] == 2


# ---------------------------------------------------------------------------------- Vertex AI


def test_vertexai_options_on_the_wire():
    pytest.importorskip("google.genai")
    from google.oauth2.credentials import Credentials

    from providers.vertexai import VertexAI

    token = "ya29.options-token"
    with GeminiServer(token=token) as srv:
        backend = VertexAI("gemini-2.5-flash", project="p", location="us-central1", credentials=Credentials(token=token),
                           base_url=srv.url, retry_policy=FAST)
        s = chat(backend)
        with s.assistant():
            s.gen("a", provider_options={"thinking_config": {"thinking_budget": 128}, "seed": 5,
                                         "labels": {"team": "a"}, "custom_top": 1},
                  extra_body={"extra": True}, extra_headers={"X-Trace": "t-3"})
        req = srv.last
        # the SDK writes the nested config with its field names (the API reads either spelling)
        assert req.json["generationConfig"]["thinkingConfig"] in ({"thinkingBudget": 128}, {"thinking_budget": 128})
        assert req.json["generationConfig"]["seed"] == 5
        assert req.json["labels"] == {"team": "a"}
        assert req.json["custom_top"] == 1 and req.json["extra"] is True
        assert req.header("x-trace") == "t-3"
        with s.assistant():
            pass
        s.user("and")
        with s.assistant():
            with pytest.raises(UnsupportedParameterError, match="cached_content"):
                s.gen("b", cache_control=True)
        before = srv.count

        async def main():
            t = AsyncProgramState(backend)
            t.user("hi")
            with t.assistant():
                await t.gen("c", provider_options={"seed": 9}, extra_headers={"X-Trace": "t-4"})

        asyncio.run(main())
        assert srv.count == before + 1
        assert srv.last.json["generationConfig"]["seed"] == 9 and srv.last.header("x-trace") == "t-4"


# ------------------------------------------------------------------------------------ SGLang


def test_sglang_options_on_the_wire():
    with SGLangServer() as srv:
        ep = RuntimeEndpoint(srv.url, retry=FAST)
        ep.provider_options = {"extra_headers": {"X-Team": "s"}}
        s = ProgramState(ep)
        s += "Repeat: a b\n"
        s.gen("a", max_new_tokens=4, provider_options={"repetition_penalty": 1.1, "no_stop_trim": True,
                                                       "lora_path": "adapter-1", "rid": "r-1"},
              extra_body={"return_hidden_states": False}, extra_query={"trace": "1"})
        req = srv.last
        assert req.json["sampling_params"]["repetition_penalty"] == 1.1
        assert req.json["sampling_params"]["no_stop_trim"] is True
        assert req.json["sampling_params"]["max_new_tokens"] == 4
        assert req.json["lora_path"] == "adapter-1" and req.json["rid"] == "r-1"
        assert req.json["return_hidden_states"] is False
        assert req.header("x-team") == "s" and req.query["trace"] == "1"
        assert s["a"] == "a b"
        "".join(s.gen_stream("b", provider_options={"lora_path": "adapter-2"}))
        assert srv.last.json["stream"] is True and srv.last.json["lora_path"] == "adapter-2"

        async def main():
            t = ProgramState(ep)
            t += "Repeat: c\n"
            await ep.agenerate(t, SamplingParams(provider_options={"rid": "r-async"}))
            await ep.aclose()

        asyncio.run(main())
        assert srv.last.json["rid"] == "r-async" and srv.last.header("x-team") == "s"
        count = srv.count
        with pytest.raises(UnsupportedParameterError, match="radix cache"):
            s.gen("c", cache_control=True)
        with pytest.raises(ValueError, match="sampling_params would override"):
            s.gen("c", extra_body={"sampling_params": {}})
        with pytest.raises(ValueError, match="text would override"):
            s.gen("c", provider_options={"text": "other prompt"})
        assert srv.count == count
        ep.shutdown()


def test_the_options_rule_is_documented_per_provider():
    """Each provider module says where its options go (the closing note quotes these)."""
    import providers.anthropic
    import providers.litellm
    import providers.openai
    import providers.runtime_endpoint
    import providers.vertexai

    for module in (providers.openai, providers.anthropic, providers.litellm, providers.vertexai,
                   providers.runtime_endpoint):
        assert "Provider options" in module.__doc__, module.__name__
    assert json.dumps(SamplingParams.from_kwargs(thinking={"type": "enabled", "budget_tokens": 9}).provider_options)
