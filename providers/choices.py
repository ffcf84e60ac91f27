"""How ``select`` picks one of several continuations from their token logprobs.

A backend that can score text (SGLang via prompt logprobs) computes, for every choice, the logprobs
of the choice's tokens given the prompt and calls a :class:`ChoicesSamplingMethod`::

    decision = method(
        choices=choices,                              # list[str]
        input_token_logprobs=per_choice_entries,      # list[list[[logprob|None, token_id, text|None]]]
        output_token_logprobs=per_choice_outputs,     # same shape (usually empty lists)
        unconditional_token_logprobs=uncond or None,  # the choice tokens scored without the prompt
        normalized_prompt_logprobs=None,              # computed here when not given
    )

Every method returns a :class:`ChoicesDecision` whose ``meta_info`` always has ``"method"`` (the
method's name) and ``"normalized_prompt_logprobs"``. Backends that decide another way (e.g. generate
and match) build a ``ChoicesDecision`` themselves and put their own method name there.

Generate-and-match (``select`` where an API exposes neither logprobs nor logit bias):
:func:`with_select_instruction` appends one instruction listing the choices
(:func:`select_instruction`) to the last user turn (a new user turn if the last one is the
assistant's); the backend generates at the caller's temperature and :func:`match_choice` maps the
answer to a choice: exact match, else equal after case-folding and trimming quotes/punctuation, else
the longest choice contained in the answer, else the closest by ``difflib`` similarity.
``meta_info["match"]`` says which rule decided and ``meta_info["generated"]`` holds the raw answer,
so a caller can reject a ``"closest"`` guess.

None-safety: servers report ``None`` as the logprob of the very first prompt token (nothing
precedes it), and may do so elsewhere. A ``None`` logprob is "no information": it is left out of
means; a choice with no scored token at all gets ``-inf`` (it loses against any scored choice).
Ties go to the earliest choice.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ChoicesDecision",
    "ChoicesSamplingMethod",
    "TokenLengthNormalized",
    "GreedyTokenSelection",
    "UnconditionalLikelihoodNormalized",
    "token_length_normalized",
    "greedy_token_selection",
    "unconditional_likelihood_normalized",
    "normalized_logprob",
    "SELECT_INSTRUCTION",
    "select_instruction",
    "with_select_instruction",
    "match_choice",
    "method_name",
    "run_choices_method",
]

TokenLogprobs = Sequence[Sequence[Any]]  # entries [logprob|None, token_id, text|None]


@dataclass
class ChoicesDecision:
    """The chosen continuation and how it was chosen."""

    decision: str
    meta_info: dict[str, Any] = field(default_factory=dict)


def normalized_logprob(entries: TokenLogprobs) -> float:
    """Mean logprob of ``entries``, skipping None values; ``-inf`` when none is scored."""
    values = [e[0] for e in entries if e[0] is not None]
    if not values:
        return -math.inf
    return sum(values) / len(values)


def _argmax_first(values: Sequence[float]) -> int:
    best = 0
    for i, value in enumerate(values):
        if value > values[best]:
            best = i
    return best


class ChoicesSamplingMethod(ABC):
    """A rule that picks one choice from per-choice token logprobs."""

    #: name reported in ``meta_info["method"]``
    name: str = "choices_method"

    @property
    def requires_unconditional_logprobs(self) -> bool:
        """Whether the backend must also score each choice without the prompt."""
        return False

    def __call__(
        self,
        *,
        choices: Sequence[str],
        input_token_logprobs: Sequence[TokenLogprobs],
        output_token_logprobs: Sequence[TokenLogprobs] | None = None,
        unconditional_token_logprobs: Sequence[TokenLogprobs] | None = None,
        normalized_prompt_logprobs: Sequence[float] | None = None,
    ) -> ChoicesDecision:
        if not choices:
            raise ValueError("choices must not be empty")
        if len(input_token_logprobs) != len(choices):
            raise ValueError(
                f"input_token_logprobs has {len(input_token_logprobs)} entries for {len(choices)} choices"
            )
        if normalized_prompt_logprobs is None:
            normalized_prompt_logprobs = [normalized_logprob(e) for e in input_token_logprobs]
        meta: dict[str, Any] = {
            "method": self.name,
            "normalized_prompt_logprobs": list(normalized_prompt_logprobs),
            "input_token_logprobs": [list(e) for e in input_token_logprobs],
            "output_token_logprobs": [list(e) for e in (output_token_logprobs or [[] for _ in choices])],
        }
        index = self._decide(
            choices=choices,
            input_token_logprobs=input_token_logprobs,
            unconditional_token_logprobs=unconditional_token_logprobs,
            normalized_prompt_logprobs=list(normalized_prompt_logprobs),
            meta=meta,
        )
        return ChoicesDecision(decision=choices[index], meta_info=meta)

    @abstractmethod
    def _decide(
        self,
        *,
        choices: Sequence[str],
        input_token_logprobs: Sequence[TokenLogprobs],
        unconditional_token_logprobs: Sequence[TokenLogprobs] | None,
        normalized_prompt_logprobs: list[float],
        meta: dict[str, Any],
    ) -> int:
        """Index of the chosen choice; may add method-specific keys to ``meta``."""

    def __repr__(self) -> str:
        return f"<choices method {self.name}>"


class TokenLengthNormalized(ChoicesSamplingMethod):
    """The choice with the highest mean token logprob (length-normalized likelihood)."""

    name = "token_length_normalized"

    def _decide(self, *, normalized_prompt_logprobs, **_: Any) -> int:
        return _argmax_first(normalized_prompt_logprobs)


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Compare choices token by token, keeping those with the best logprob at each position.

    A choice shorter than the longest is padded with its own mean logprob, so a choice that is a
    prefix of a longer one competes on its average; a None logprob is replaced the same way. The
    matrix is reported as ``meta_info["greedy_logprob_matrix"]``.
    """

    name = "greedy_token_selection"

    def _decide(self, *, input_token_logprobs, meta, **_: Any) -> int:
        width = max((len(e) for e in input_token_logprobs), default=0)
        matrix = []
        for entries in input_token_logprobs:
            mean = normalized_logprob(entries)
            row = [mean if e[0] is None else float(e[0]) for e in entries]
            row += [mean] * (width - len(row))
            matrix.append(row)
        meta["greedy_logprob_matrix"] = matrix
        remaining = list(range(len(matrix)))
        for column in range(width):
            best = max(matrix[i][column] for i in remaining)
            remaining = [i for i in remaining if matrix[i][column] == best]
            if len(remaining) == 1:
                break
        return remaining[0]


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """The choice whose tokens gain most from the prompt: mean of ``logp(t|prompt) - logp(t)``.

    The unconditional logprobs score each choice's tokens on their own; the first of them has no
    context and is None -- it counts as 0. A position whose conditional logprob is None is skipped.
    Reported as ``meta_info["normalized_unconditional_prompt_logprobs"]``.
    """

    name = "unconditional_likelihood_normalized"

    @property
    def requires_unconditional_logprobs(self) -> bool:
        return True

    def _decide(self, *, input_token_logprobs, unconditional_token_logprobs, meta, **_: Any) -> int:
        if unconditional_token_logprobs is None:
            raise ValueError(f"{self.name} needs unconditional_token_logprobs")
        if len(unconditional_token_logprobs) != len(input_token_logprobs):
            raise ValueError("unconditional_token_logprobs must have one entry per choice")
        scores = []
        for cond, uncond in zip(input_token_logprobs, unconditional_token_logprobs):
            if len(cond) != len(uncond):
                raise ValueError(
                    f"a choice has {len(cond)} conditional but {len(uncond)} unconditional token logprobs"
                )
            diffs = [
                float(c[0]) - (0.0 if u[0] is None else float(u[0]))
                for c, u in zip(cond, uncond)
                if c[0] is not None
            ]
            scores.append(sum(diffs) / len(diffs) if diffs else -math.inf)
        meta["unconditional_token_logprobs"] = [list(u) for u in unconditional_token_logprobs]
        meta["normalized_unconditional_prompt_logprobs"] = scores
        return _argmax_first(scores)


def method_name(method: Any) -> str | None:
    """The name a choices method reports: ``name`` (ours), else its class name in snake case
    (SGLang's ``TokenLengthNormalized`` -> ``"token_length_normalized"``); None for None."""
    if method is None:
        return None
    name = getattr(method, "name", None)
    if isinstance(name, str) and name:
        return name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(method).__name__).lower()


def run_choices_method(
    method: Any,
    *,
    choices: Sequence[str],
    input_token_logprobs: Sequence[TokenLogprobs],
    output_token_logprobs: Sequence[TokenLogprobs],
    unconditional_token_logprobs: Sequence[TokenLogprobs] | None = None,
) -> ChoicesDecision:
    """Call a choices method -- ours, or any object with SGLang's calling convention (keyword
    arguments, ``normalized_prompt_logprobs`` required) -- and return our :class:`ChoicesDecision`
    with ``meta_info["method"]`` set."""
    if not callable(method):
        raise TypeError(f"choices_method must be callable, got {method!r}")
    normalized = [normalized_logprob(e) for e in input_token_logprobs]
    decision = method(
        choices=list(choices),
        normalized_prompt_logprobs=normalized,
        input_token_logprobs=[list(e) for e in input_token_logprobs],
        output_token_logprobs=[list(e) for e in output_token_logprobs],
        unconditional_token_logprobs=unconditional_token_logprobs,
    )
    chosen = getattr(decision, "decision", None)
    if chosen not in choices:
        raise ValueError(f"choices method {method!r} decided {chosen!r}, which is not one of the choices")
    meta = dict(getattr(decision, "meta_info", None) or {})
    meta.setdefault("method", method_name(method))
    meta.setdefault("normalized_prompt_logprobs", normalized)
    return ChoicesDecision(chosen, meta)


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()


# --------------------------------------------------------------------------- generate & match

SELECT_INSTRUCTION = "Answer with exactly one of the following options and nothing else:"


def select_instruction(choices: Sequence[str]) -> str:
    """The instruction that asks for exactly one of ``choices`` (one ``- choice`` line each)."""
    return SELECT_INSTRUCTION + "\n" + "\n".join(f"- {c}" for c in choices)


def with_select_instruction(messages: list[dict[str, Any]], choices: Sequence[str]) -> list[dict[str, Any]]:
    """A copy of OpenAI-format ``messages`` with the select instruction added to the last user turn."""
    messages = copy.deepcopy(messages)
    note = select_instruction(choices)
    if messages and messages[-1]["role"] == "user":
        content = messages[-1]["content"]
        if isinstance(content, str):
            messages[-1]["content"] = (content + "\n\n" + note) if content else note
        else:
            messages[-1]["content"] = list(content) + [{"type": "text", "text": "\n\n" + note}]
    else:
        messages.append({"role": "user", "content": note})
    return messages


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.casefold().strip().strip("\"'`*.,;:!?()[]{}<> \n\t")).strip()


def match_choice(text: str, choices: Sequence[str]) -> tuple[int, str]:
    """``(index, rule)`` of the choice ``text`` names (rules: exact, normalized, contains, closest)."""
    stripped = text.strip()
    for i, c in enumerate(choices):
        if stripped == c or stripped == c.strip():
            return i, "exact"
    n = _norm(text)
    for i, c in enumerate(choices):
        if n == _norm(c):
            return i, "normalized"
    contained = [i for i, c in enumerate(choices) if _norm(c) and _norm(c) in n]
    if contained:
        return max(contained, key=lambda i: (len(_norm(choices[i])), -i)), "contains"
    ratios = [difflib.SequenceMatcher(None, n, _norm(c)).ratio() for c in choices]
    return max(range(len(choices)), key=lambda i: (ratios[i], -i)), "closest"
