"""Choice methods on hand-computed logprobs, including the None entries servers send."""

from __future__ import annotations

import math

import pytest

from providers.choices import (
    ChoicesDecision,
    greedy_token_selection,
    normalized_logprob,
    token_length_normalized,
    unconditional_likelihood_normalized,
)


def tok(*logprobs):
    return [[lp, i, f"t{i}"] for i, lp in enumerate(logprobs)]


def test_normalized_logprob_skips_none():
    assert normalized_logprob(tok(None, -1.0, -3.0)) == -2.0
    assert normalized_logprob(tok(None)) == -math.inf
    assert normalized_logprob([]) == -math.inf
    assert normalized_logprob(tok(0.0, -2.0)) == -1.0  # a 0.0 logprob is a value, not "missing"


def test_token_length_normalized():
    # means: A = (-1 - 3)/2 = -2.0 ; B = -1.5 ; C = (-0.5 - 4)/2 = -2.25
    d = token_length_normalized(
        choices=["A", "B", "C"], input_token_logprobs=[tok(-1, -3), tok(-1.5), tok(-0.5, -4)]
    )
    assert isinstance(d, ChoicesDecision)
    assert d.decision == "B"
    assert d.meta_info["normalized_prompt_logprobs"] == [-2.0, -1.5, -2.25]
    assert d.meta_info["method"] == "token_length_normalized"


def test_token_length_normalized_none_first_token_and_tie():
    d = token_length_normalized(choices=["x", "y"], input_token_logprobs=[tok(None, -1.0), tok(-1.0)])
    assert d.decision == "x"  # equal means: the first wins
    d = token_length_normalized(choices=["x", "y"], input_token_logprobs=[tok(None), tok(-9.0)])
    assert d.decision == "y"  # an unscored choice loses


def test_given_normalized_prompt_logprobs_are_used():
    d = token_length_normalized(
        choices=["a", "b"], input_token_logprobs=[tok(-1), tok(-2)], normalized_prompt_logprobs=[-5.0, -0.1]
    )
    assert d.decision == "b"


def test_greedy_token_selection():
    # first token: A -0.5, B -0.5, C -0.7 -> C out; second: A -2.0, B -1.0 -> B.
    d = greedy_token_selection(
        choices=["A", "B", "C"], input_token_logprobs=[tok(-0.5, -2.0), tok(-0.5, -1.0), tok(-0.7, -0.1)]
    )
    assert d.decision == "B"
    assert d.meta_info["method"] == "greedy_token_selection"
    assert d.meta_info["greedy_logprob_matrix"] == [[-0.5, -2.0], [-0.5, -1.0], [-0.7, -0.1]]


def test_greedy_pads_shorter_choice_with_its_mean_and_fills_none():
    # "dog" = [-1.0]; "dog house" = [-1.0, -3.0]. Padded "dog" row: [-1.0, -1.0] -> wins at column 1.
    d = greedy_token_selection(choices=["dog", "dog house"], input_token_logprobs=[tok(-1.0), tok(-1.0, -3.0)])
    assert d.decision == "dog"
    assert d.meta_info["greedy_logprob_matrix"] == [[-1.0, -1.0], [-1.0, -3.0]]
    # A None entry counts as the row's mean: row [None, -2, -4] -> [-3, -2, -4].
    d = greedy_token_selection(choices=["p", "q"], input_token_logprobs=[tok(None, -2.0, -4.0), tok(-3.5, 0, 0)])
    assert d.meta_info["greedy_logprob_matrix"][0] == [-3.0, -2.0, -4.0]
    assert d.decision == "p"


def test_greedy_full_tie_picks_first():
    d = greedy_token_selection(choices=["a", "b"], input_token_logprobs=[tok(-1, -1), tok(-1, -1)])
    assert d.decision == "a"


def test_unconditional_likelihood_normalized():
    # A: cond [-1, -2], uncond [None->0, -1]   -> mean(-1 - 0, -2 + 1) = mean(-1, -1) = -1.0
    # B: cond [-0.5],   uncond [None->0]       -> -0.5 ... but token_length would also pick B,
    # so give C a big unconditional penalty:   cond [-3, -3], uncond [None, -6] -> mean(-3, 3) = 0.0
    d = unconditional_likelihood_normalized(
        choices=["A", "B", "C"],
        input_token_logprobs=[tok(-1, -2), tok(-0.5), tok(-3, -3)],
        unconditional_token_logprobs=[tok(None, -1), tok(None), tok(None, -6)],
    )
    assert d.decision == "C"
    assert d.meta_info["normalized_unconditional_prompt_logprobs"] == [-1.0, -0.5, 0.0]
    assert d.meta_info["method"] == "unconditional_likelihood_normalized"
    assert unconditional_likelihood_normalized.requires_unconditional_logprobs
    assert not token_length_normalized.requires_unconditional_logprobs


def test_unconditional_skips_none_conditional_positions():
    d = unconditional_likelihood_normalized(
        choices=["a", "b"],
        input_token_logprobs=[tok(None, -1.0), tok(-2.0)],
        unconditional_token_logprobs=[tok(None, -4.0), tok(None)],
    )
    # a: only position 1 -> -1 - (-4) = 3 ; b: -2 - 0 = -2
    assert d.meta_info["normalized_unconditional_prompt_logprobs"] == [3.0, -2.0]
    assert d.decision == "a"


def test_unconditional_input_errors():
    with pytest.raises(ValueError, match="needs unconditional"):
        unconditional_likelihood_normalized(choices=["a"], input_token_logprobs=[tok(-1)])
    with pytest.raises(ValueError, match="1 conditional but 2 unconditional"):
        unconditional_likelihood_normalized(
            choices=["a"], input_token_logprobs=[tok(-1)], unconditional_token_logprobs=[tok(None, -1)]
        )


def test_shape_errors():
    with pytest.raises(ValueError, match="empty"):
        token_length_normalized(choices=[], input_token_logprobs=[])
    with pytest.raises(ValueError, match="1 entries for 2 choices"):
        token_length_normalized(choices=["a", "b"], input_token_logprobs=[tok(-1)])
