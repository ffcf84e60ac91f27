"""Provider options: request fields a provider offers beyond :class:`~providers.sampling.SamplingParams`.

Two places, one rule. Our own parameters are :class:`SamplingParams` fields, validated (a typo raises
``TypeError`` with a did-you-mean, :func:`split_sampling_kwargs`). Everything provider-specific goes
in an explicit place and is *sent*, never dropped:

* per call -- ``s.gen("a", provider_options={"seed": 7})``, or by name for the options users reach
  for most (:data:`PASSTHROUGH_NAMES`): ``s.gen("a", reasoning_effort="low")``,
  ``thinking={"type": "enabled", "budget_tokens": 2048}``, ``extra_body={...}``,
  ``extra_headers={...}``, ``extra_query={...}``, ``cache_control={"type": "ephemeral"}``;
  ``SamplingParams(provider_options={...})`` is the same thing;
* per backend -- ``backend.provider_options = {...}``: sent with every request of that backend; a
  call's options win, key by key (``extra_body`` / ``extra_headers`` / ``extra_query`` merge one
  level deep).

Where each option goes is the provider module's business (its ``apply_provider_options``); the
common shape is:

* ``extra_headers`` -> HTTP headers of the request; ``extra_query`` -> URL query parameters (a
  backend whose SDK cannot send them -- litellm, google-genai -- raises
  :class:`~providers.errors.UnsupportedParameterError`); ``extra_body`` -> merged into the top level
  of the JSON body;
* ``cache_control`` -> a prompt-cache marker on the last content block of the prompt (Anthropic;
  OpenAI-format chat messages for OpenAI-compatible servers and litellm); providers whose caching
  works otherwise raise :class:`~providers.errors.UnsupportedParameterError` naming their way;
* any other name -> the request field of that name (e.g. OpenAI ``reasoning_effort``, Anthropic
  ``thinking``, Gemini ``thinking_config`` in ``generationConfig``).

An option that names a field the backend already sets from :class:`SamplingParams` or the state
(``max_tokens``, ``messages``, ``temperature``...) raises ``ValueError``: use the SamplingParams field,
nothing is overridden behind your back.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "PASSTHROUGH_NAMES",
    "CACHE_CONTROL_EPHEMERAL",
    "check_provider_options",
    "merge_provider_options",
    "split_sampling_kwargs",
    "refuse_overrides",
    "mark_last_block",
]

#: Provider options accepted by name as keyword arguments of ``gen`` / ``gen_stream``.
PASSTHROUGH_NAMES = frozenset(
    {"reasoning_effort", "thinking", "extra_body", "extra_headers", "extra_query", "cache_control"}
)
#: The cache marker ``cache_control=True`` stands for.
CACHE_CONTROL_EPHEMERAL = {"type": "ephemeral"}
_NESTED = ("extra_body", "extra_headers", "extra_query")


def check_provider_options(options: Any, *, fields: Iterable[str] = ()) -> dict[str, Any]:
    """A validated copy of ``options`` (``None`` -> ``{}``); ``fields`` are our own parameter names,
    which are refused here (they belong in SamplingParams)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"provider_options must be a dict, got {type(options).__name__}")
    own = set(fields)
    out: dict[str, Any] = {}
    for name, value in options.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"provider_options keys must be non-empty str, got {name!r}")
        if name in own:
            raise TypeError(f"provider_options[{name!r}]: {name} is a SamplingParams field; pass it as {name}=")
        if name in _NESTED:
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise TypeError(f"{name} must be a dict with str keys, got {value!r}")
            if name == "extra_headers":
                bad = [k for k, v in value.items() if not isinstance(v, str)]
                if bad:
                    raise TypeError(f"extra_headers values must be str; {bad[0]!r} is {value[bad[0]]!r}")
            value = dict(value)
        elif name == "cache_control":
            if value is True:
                value = dict(CACHE_CONTROL_EPHEMERAL)
            elif not isinstance(value, Mapping) or "type" not in value:
                raise TypeError(f"cache_control must be True or a marker dict such as {CACHE_CONTROL_EPHEMERAL}, "
                                f"got {value!r}")
            value = dict(value)
        elif name == "thinking" and not isinstance(value, Mapping):
            raise TypeError(f"thinking must be a dict, e.g. {{'type': 'enabled', 'budget_tokens': 2048}}, got {value!r}")
        elif name == "reasoning_effort" and not isinstance(value, str):
            raise TypeError(f"reasoning_effort must be a str such as 'low', got {value!r}")
        out[name] = copy.deepcopy(value)
    return out


def merge_provider_options(backend_options: Mapping[str, Any] | None, call_options: Mapping[str, Any] | None
                           ) -> dict[str, Any]:
    """The backend's options overlaid with a call's (the call wins; ``extra_*`` merge one level)."""
    merged = copy.deepcopy(dict(backend_options or {}))
    for name, value in (call_options or {}).items():
        if name in _NESTED and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = copy.deepcopy(value)
    return merged


def split_sampling_kwargs(kwargs: Mapping[str, Any], fields: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(sampling fields, provider options)`` from ``gen(**kwargs)``.

    :data:`PASSTHROUGH_NAMES` go to the provider options (merged with an explicit
    ``provider_options=`` dict among ``kwargs``); any other name that is not one of ``fields``
    raises ``TypeError`` with the closest known names.
    """
    own = list(fields)
    sampling: dict[str, Any] = {}
    options = dict(kwargs.get("provider_options") or {})
    for name, value in kwargs.items():
        if name == "provider_options":
            continue
        if name in own:
            sampling[name] = value
        elif name in PASSTHROUGH_NAMES:
            if name in options:
                raise TypeError(f"{name} given both by name and in provider_options")
            options[name] = value
        else:
            known = own + sorted(PASSTHROUGH_NAMES) + ["provider_options"]
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise TypeError(
                f"unknown sampling parameter {name!r}{hint} (provider-specific request fields go in "
                f"provider_options={{{name!r}: ...}})"
            )
    if options:
        sampling["provider_options"] = options
    return sampling, options


def refuse_overrides(provider: str, options: Mapping[str, Any], taken: Iterable[str]) -> None:
    """``ValueError`` if an option names a request field the backend already sets."""
    clash = sorted(set(options) & set(taken))
    if clash:
        raise ValueError(
            f"{provider}: provider option(s) {', '.join(clash)} would override a field the backend sets from "
            "SamplingParams or the program state; use the SamplingParams field instead"
        )


def mark_last_block(messages: list[dict[str, Any]], marker: Mapping[str, Any], *, provider: str) -> None:
    """Put a prompt-cache ``marker`` (``cache_control``) on the last content block of ``messages``
    (in place): the prompt up to and including it is cached. String content becomes one text block."""
    for message in reversed(messages):
        content = message.get("content")
        if isinstance(content, str):
            if not content:
                continue
            message["content"] = [{"type": "text", "text": content, "cache_control": dict(marker)}]
            return
        if isinstance(content, list) and content:
            content[-1] = {**content[-1], "cache_control": dict(marker)}
            return
    raise ValueError(f"{provider}: cache_control needs a prompt with at least one message to mark")
