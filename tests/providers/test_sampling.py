"""SamplingParams validation, the unsupported-parameter rule and the SGLang mapping."""

from __future__ import annotations

import json
import re
import warnings

import pytest

from providers.errors import UnsupportedParameterError
from providers.sampling import (
    DTYPE_REGEX,
    SamplingParams,
    UnsupportedParameterWarning,
    check_supported,
    to_sglang,
)


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        ({"max_new_tokens": -1}, ValueError, "max_new_tokens"),
        ({"max_new_tokens": 1.5}, TypeError, "max_new_tokens"),
        ({"min_new_tokens": 10, "max_new_tokens": 5}, ValueError, "min_new_tokens"),
        ({"n": 0}, ValueError, "n must"),
        ({"temperature": -0.1}, ValueError, "temperature"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"top_p": 0}, ValueError, "top_p"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"top_k": 0}, ValueError, "top_k"),
        ({"top_k": -2}, ValueError, "top_k"),
        ({"min_p": 2}, ValueError, "min_p"),
        ({"frequency_penalty": 3}, ValueError, "frequency_penalty"),
        ({"presence_penalty": "x"}, TypeError, "presence_penalty"),
        ({"stop": ["ok", 3]}, TypeError, "stop"),
        ({"stop": [""]}, ValueError, "stop"),
        ({"stop_token_ids": [1, -1]}, TypeError, "stop_token_ids"),
        ({"ignore_eos": 1}, TypeError, "ignore_eos"),
        ({"json_schema": "{not json"}, ValueError, "json_schema"),
        ({"json_schema": "[1]"}, ValueError, "json_schema"),
        ({"dtype": list}, ValueError, "dtype"),
        ({"dtype": int, "regex": "a+"}, ValueError, "regex, json_schema, dtype"),
        ({"regex": "a", "json_schema": {"type": "object"}}, ValueError, "at most one"),
        ({"top_logprobs_num": -1}, ValueError, "top_logprobs_num"),
    ],
)
def test_invalid_values_name_the_field(kwargs, exc, name):
    with pytest.raises(exc, match=re.escape(name)):
        SamplingParams(**kwargs)


def test_none_means_unset_for_the_logprob_fields():
    """SGLang's sampling params default these to None: None is the unset value, not an error."""
    p = SamplingParams(return_logprob=None, top_logprobs_num=None, return_text_in_logprobs=None)
    assert (p.return_logprob, p.top_logprobs_num, p.return_text_in_logprobs) == (False, 0, False)


def test_unknown_field_is_a_type_error():
    with pytest.raises(TypeError, match="max_tokens"):
        SamplingParams(max_tokens=3)


def test_normalization():
    p = SamplingParams(stop="\n", stop_token_ids=[2], dtype=float, json_schema=None)
    assert p.stop == ("\n",) and p.stop_token_ids == (2,) and p.dtype == "float"
    q = SamplingParams(json_schema={"type": "object"})
    assert json.loads(q.json_schema) == {"type": "object"}
    assert q.regex_constraint is None
    assert p.regex_constraint == DTYPE_REGEX["float"]


def test_replace_revalidates_and_is_immutable():
    p = SamplingParams()
    with pytest.raises(Exception):
        p.temperature = 0.5  # frozen
    assert p.replace(temperature=0.5).temperature == 0.5
    with pytest.raises(ValueError):
        p.replace(temperature=-1)


def test_set_fields_is_what_differs_from_default():
    assert SamplingParams().set_fields() == {}
    assert SamplingParams(top_k=-1, temperature=1.0).set_fields() == {}
    assert SamplingParams(top_k=5, max_new_tokens=9).set_fields() == {"top_k": 5, "max_new_tokens": 9}


@pytest.mark.parametrize(
    "dtype, good, bad",
    [
        ("int", ["42", "-7", "+0"], ["4.2", "x", ""]),
        ("float", ["3.14", "-0.5", "2", ".5", "1e-3"], ["abc", "1.2.3"]),
        ("bool", ["True", "False"], ["true", "yes"]),
        ("str", ['"hi"', '"a \\" b"', '""'], ["hi", '"unterminated']),
    ],
)
def test_dtype_regexes(dtype, good, bad):
    for s in good:
        assert re.fullmatch(DTYPE_REGEX[dtype], s), s
    for s in bad:
        assert not re.fullmatch(DTYPE_REGEX[dtype], s), s


def test_to_sglang_sends_only_set_fields():
    sampling, top = to_sglang(SamplingParams())
    assert sampling == {"max_new_tokens": 128} and top == {}
    sampling, top = to_sglang(
        SamplingParams(
            max_new_tokens=5,
            stop=["x"],
            temperature=0,
            top_k=3,
            min_p=0.1,
            return_logprob=True,
            logprob_start_len=4,
            top_logprobs_num=2,
            return_text_in_logprobs=True,
            dtype=int,
        )
    )
    assert sampling == {
        "max_new_tokens": 5,
        "stop": ["x"],
        "temperature": 0,
        "top_k": 3,
        "min_p": 0.1,
        "regex": DTYPE_REGEX["int"],
    }
    assert top == {
        "return_logprob": True,
        "logprob_start_len": 4,
        "top_logprobs_num": 2,
        "return_text_in_logprobs": True,
    }
    sampling, _ = to_sglang(SamplingParams(json_schema={"type": "object"}))
    assert sampling["json_schema"] == '{"type": "object"}'


def test_check_supported_raises_for_output_constraints():
    with pytest.raises(UnsupportedParameterError, match="regex") as info:
        check_supported(SamplingParams(regex="a+", stop="x"), "acme", {"stop", "temperature"})
    assert info.value.provider == "acme"
    assert isinstance(info.value, ValueError)


def test_check_supported_warns_for_sampling_knobs():
    with pytest.warns(UnsupportedParameterWarning, match="top_k, min_p"):
        kept = check_supported(SamplingParams(top_k=4, min_p=0.2, temperature=0.3), "acme", {"temperature"})
    assert kept == {"temperature": 0.3}


def test_check_supported_silent_when_nothing_unsupported_is_set():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_supported(SamplingParams(max_new_tokens=7), "acme", set()) == {}
