"""SGLang's frontend objects, duck-typed (no sglang here): its sampling parameters, its choices methods'
calling convention, its image labels, its Runtime hand-over. ``tests/sglang_frontend`` runs the real
frontend; these run everywhere."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

import providers
from providers import ProgramState, SamplingParams
from providers.choices import method_name, run_choices_method
from providers.images import fix_data_url_mime
from providers.runtime_endpoint import RuntimeEndpoint, to_sglang

from .api_helpers import PNG_1X1
from .wire_sglang import SGLangServer


@dataclasses.dataclass
class SglLikeParams:
    """The shape of SGLang's SglSamplingParams (its defaults included, ``(None,)`` ones too)."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    n: int = 1
    stop: Any = ()
    stop_token_ids: Any = ()
    stop_regex: Any = ()
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    ignore_eos: bool = False
    return_logprob: Any = None
    logprob_start_len: Any = (None,)
    top_logprobs_num: Any = (None,)
    return_text_in_logprobs: Any = (None,)
    json_schema: Any = None
    dtype: Any = None
    regex: Any = None


def test_coerce_sglang_sampling_params():
    assert SamplingParams.coerce(SglLikeParams()) == SamplingParams()
    p = SamplingParams.coerce(SglLikeParams(max_new_tokens=8, stop=["\n", "<|eot_id|>"], dtype=int, temperature=0.0,
                                            stop_regex=["a+b"]))
    assert p.stop == ("\n", "<|eot_id|>") and p.dtype == "int" and p.max_new_tokens == 8 and p.stop_regex == ("a+b",)
    assert SamplingParams.coerce({"max_new_tokens": 3}).max_new_tokens == 3
    assert SamplingParams.coerce(None) == SamplingParams()
    with pytest.raises(ValueError, match="top_p"):  # validated like ours
        SamplingParams.coerce(SglLikeParams(top_p=0.0))

    @dataclasses.dataclass
    class Extra(SglLikeParams):
        lora_path: Any = None
        speculative: Any = ()

    assert SamplingParams.coerce(Extra()) == SamplingParams()  # unknown but empty: nothing asked
    with pytest.raises(TypeError, match="lora_path"):  # unknown and set: never dropped silently
        SamplingParams.coerce(Extra(lora_path="x"))


def test_stop_regex_goes_to_sglang_and_is_refused_by_apis():
    sampling, _ = to_sglang(SamplingParams(stop_regex=r"\d+"))
    assert sampling["stop_regex"] == [r"\d+"]
    from providers.openai import to_openai_kwargs

    with pytest.raises(providers.UnsupportedParameterError, match="stop_regex"):
        to_openai_kwargs(SamplingParams(stop_regex=r"\d+"))
    with pytest.raises(ValueError, match="stop_regex"):
        SamplingParams(stop_regex="(")


class SglLikeTokenLengthNormalized:
    """SGLang's calling convention: keyword arguments, normalized_prompt_logprobs required."""

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
                 unconditional_token_logprobs=None):
        best = max(range(len(choices)), key=lambda i: normalized_prompt_logprobs[i])
        return type("Decision", (), {"decision": choices[best], "meta_info": {"scores": normalized_prompt_logprobs}})()


def test_run_choices_method_with_sglangs_convention():
    decision = run_choices_method(SglLikeTokenLengthNormalized(), choices=["a", "b"],
                                  input_token_logprobs=[[[-2.0, 1, "a"]], [[-0.5, 2, "b"], [None, 3, "c"]]],
                                  output_token_logprobs=[[], []])
    assert decision.decision == "b" and decision.meta_info["method"] == "sgl_like_token_length_normalized"
    assert decision.meta_info["scores"] == [-2.0, -0.5]
    assert method_name(providers.token_length_normalized) == "token_length_normalized"
    assert method_name(None) is None


def test_runtime_endpoint_select_and_generate_take_sglangs_objects():
    with SGLangServer(lifetime=60) as srv:
        ep = RuntimeEndpoint(srv.url)
        s = ProgramState(ep)
        s += "Paris is lovely. The capital is"
        decision = ep.select(s, [" Lyon", " Paris"], 0.0, SglLikeTokenLengthNormalized())
        assert decision.decision == " Paris" and decision.meta_info["method"] == "sgl_like_token_length_normalized"
        text, meta = ep.generate(state_with(ep, "Repeat: x y\n"), SglLikeParams(max_new_tokens=4))
        assert text == "x y" and meta["finish_reason"] == "stop"
        assert ep.support_concate_and_append and not ep.is_chat_model
        ep.shutdown()


def state_with(ep, text):
    s = ProgramState(ep)
    s += text
    return s


def test_image_labels_follow_the_bytes():
    png = base64.b64encode(PNG_1X1).decode()
    assert fix_data_url_mime(f"data:image/jpeg;base64,{png}") == f"data:image/png;base64,{png}"
    assert fix_data_url_mime(f"data:image/png;base64,{png}") == f"data:image/png;base64,{png}"
    assert fix_data_url_mime("data:image/jpeg;base64,dGV4dA==") == "data:image/jpeg;base64,dGV4dA=="  # unknown
    assert fix_data_url_mime("https://example.invalid/x.png") == "https://example.invalid/x.png"


def test_program_state_on_a_runtime_uses_its_endpoint():
    class RuntimeLike:  # what providers.Runtime (and sglang.Runtime) hand a program: .endpoint
        def __init__(self, endpoint):
            self.endpoint = endpoint

    with SGLangServer(lifetime=60) as srv:
        ep = RuntimeEndpoint(srv.url)
        s = ProgramState(RuntimeLike(ep))
        assert s.backend is ep
        s += "Repeat: via runtime\n"
        assert s.gen("x") == "via runtime"
        ep.shutdown()


def test_flags_sglangs_executor_reads():
    from providers.api_backend import APIBackend

    # is_chat_model routes SGLang's speculation to spec_fill/role_end_generate: only OpenAI chat has them
    assert not APIBackend.is_chat_model and not providers.BaseBackend.is_chat_model
    assert not providers.BaseBackend.support_concate_and_append
