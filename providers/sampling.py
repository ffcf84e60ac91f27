"""Sampling parameters, validated once, and one mapping function per provider.

:class:`SamplingParams` is what a frontend passes to ``backend.generate``. It is validated on
construction (a bad value raises ``ValueError``/``TypeError`` naming the field, before any network
call), and immutable -- use :meth:`SamplingParams.replace` for a changed copy.

Defaults mean "the provider's default": a field counts as *set* when its value differs from its
default (``top_k=-1`` is "unset" and is never sent as -1). The exception is ``max_new_tokens``,
which every mapping always sends because several APIs require a limit.

The rule for parameters a provider cannot honour (:func:`check_supported`):

* **Output constraints** change what the caller gets back -- ``n``, ``stop``, ``stop_token_ids``,
  ``min_new_tokens``, ``ignore_eos``, ``regex``, ``json_schema``, ``dtype`` and the logprob fields.
  Setting one the provider cannot honour raises :class:`~providers.errors.UnsupportedParameterError`.
* **Sampling knobs** only reshape the distribution -- ``temperature``, ``top_p``, ``top_k``,
  ``min_p``, ``frequency_penalty``, ``presence_penalty``. Setting one the provider cannot honour emits
  an :class:`UnsupportedParameterWarning` and the request goes ahead without it.

Adding a provider: write ``to_<provider>(params) -> dict`` at the end of this module. Call
``check_supported(params, "<provider>", {...fields you map...})`` first, then translate the set
fields (see :func:`to_sglang`). ``dtype`` has a portable meaning -- :data:`DTYPE_REGEX` -- that a
provider may implement by other means (e.g. logit bias) or list as unsupported.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ProviderError, UnsupportedParameterError

__all__ = [
    "SamplingParams",
    "UnsupportedParameterWarning",
    "OUTPUT_CONSTRAINTS",
    "SAMPLING_KNOBS",
    "DTYPE_REGEX",
    "DTYPE_VALUE_KEY",
    "check_supported",
    "dtype_json_schema",
    "format_dtype_value",
    "parse_dtype_output",
    "openai_response_format",
    "to_sglang",
    "to_openai_kwargs",
    "to_litellm_kwargs",
    "to_anthropic_kwargs",
    "to_vertexai_config",
]


class UnsupportedParameterWarning(UserWarning):
    """A sampling knob was set that the provider ignores (see the module docstring)."""


#: Regular expressions the server-side constraint uses for ``dtype``.
DTYPE_REGEX: dict[str, str] = {
    "int": r"[-+]?[0-9]+",
    "float": r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?",
    "bool": r"(?:True|False)",
    "str": r'"(?:[^"\\\n]|\\.)*"',
}
_DTYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str"}

OUTPUT_CONSTRAINTS = frozenset(
    {
        "n",
        "stop",
        "stop_token_ids",
        "min_new_tokens",
        "ignore_eos",
        "regex",
        "json_schema",
        "dtype",
        "return_logprob",
        "logprob_start_len",
        "top_logprobs_num",
        "return_text_in_logprobs",
    }
)
SAMPLING_KNOBS = frozenset(
    {"temperature", "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty"}
)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters of one generation call.

    ``stop`` accepts a string or a sequence of strings and is stored as a tuple. ``dtype`` accepts
    ``int``/``float``/``bool``/``str`` or their names and is stored as the name; it constrains the
    output to that literal syntax (:data:`DTYPE_REGEX`) and cannot be combined with ``regex`` or
    ``json_schema``. ``json_schema`` accepts a dict or a JSON string and is stored as a JSON string.
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    n: int = 1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    ignore_eos: bool = False
    return_logprob: bool = False
    logprob_start_len: int | None = None
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    json_schema: str | None = None
    regex: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        _int("max_new_tokens", self.max_new_tokens, minimum=0)
        _int("min_new_tokens", self.min_new_tokens, minimum=0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens ({self.max_new_tokens})"
            )
        _int("n", self.n, minimum=1)
        set_(self, "stop", _str_tuple("stop", self.stop))
        set_(self, "stop_token_ids", _int_tuple("stop_token_ids", self.stop_token_ids))
        _float("temperature", self.temperature, 0.0, None)
        _float("top_p", self.top_p, 0.0, 1.0)
        if self.top_p == 0.0:
            raise ValueError("top_p must be in (0, 1], got 0")
        _int("top_k", self.top_k, minimum=-1)
        if self.top_k == 0:
            raise ValueError("top_k must be -1 (unset) or >= 1, got 0")
        _float("min_p", self.min_p, 0.0, 1.0)
        _float("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _float("presence_penalty", self.presence_penalty, -2.0, 2.0)
        for name, unset in (("return_logprob", False), ("return_text_in_logprobs", False), ("top_logprobs_num", 0)):
            if getattr(self, name) is None:  # SGLang's "not given"
                set_(self, name, unset)
        for name in ("ignore_eos", "return_logprob", "return_text_in_logprobs"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.logprob_start_len is not None:
            _int("logprob_start_len", self.logprob_start_len, minimum=-1)
        _int("top_logprobs_num", self.top_logprobs_num, minimum=0)
        if self.json_schema is not None:
            set_(self, "json_schema", _schema_json(self.json_schema))
        if self.regex is not None and (not isinstance(self.regex, str) or not self.regex):
            raise TypeError(f"regex must be a non-empty str, got {self.regex!r}")
        if self.dtype is not None:
            set_(self, "dtype", _dtype_name(self.dtype))
        constraints = [k for k in ("regex", "json_schema", "dtype") if getattr(self, k) is not None]
        if len(constraints) > 1:
            raise ValueError(f"set at most one of regex, json_schema, dtype; got {', '.join(constraints)}")

    def replace(self, **changes: Any) -> SamplingParams:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def set_fields(self) -> dict[str, Any]:
        """The fields whose value differs from the default (what the user asked for)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        }

    @property
    def regex_constraint(self) -> str | None:
        """The effective regex: ``regex``, or the one ``dtype`` stands for."""
        if self.dtype is not None:
            return DTYPE_REGEX[self.dtype]
        return self.regex


def check_supported(params: SamplingParams, provider: str, supported: Collection[str]) -> dict[str, Any]:
    """Apply the unsupported-parameter rule; returns the set fields that ``provider`` supports.

    Raises :class:`UnsupportedParameterError` (naming every offending field) if an output constraint
    outside ``supported`` is set; warns once per call for set sampling knobs outside ``supported``.
    """
    set_fields = params.set_fields()
    unsupported = [name for name in set_fields if name not in supported and name != "max_new_tokens"]
    hard = [name for name in unsupported if name not in SAMPLING_KNOBS]
    if hard:
        raise UnsupportedParameterError(
            f"{provider} cannot honour sampling parameter(s) {', '.join(hard)} "
            f"(set to {', '.join(repr(set_fields[n]) for n in hard)})",
            provider=provider,
        )
    soft = [name for name in unsupported if name in SAMPLING_KNOBS]
    if soft:
        warnings.warn(
            f"{provider} ignores sampling parameter(s) {', '.join(soft)}",
            UnsupportedParameterWarning,
            stacklevel=3,
        )
    return {name: value for name, value in set_fields.items() if name in supported}


def to_sglang(params: SamplingParams) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(sampling_params, top_level)`` for SGLang's ``POST /generate``.

    SGLang honours every field. ``dtype`` becomes ``regex`` (:data:`DTYPE_REGEX`); the logprob
    fields go to the top level of the request body. Only set fields are sent (plus
    ``max_new_tokens``), so the server's defaults apply to the rest.
    """
    chosen = params.set_fields()
    sampling: dict[str, Any] = {"max_new_tokens": params.max_new_tokens}
    top: dict[str, Any] = {}
    for name, value in chosen.items():
        if name in ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs"):
            top[name] = value
        elif name == "dtype":
            sampling["regex"] = DTYPE_REGEX[value]
        elif name in ("stop", "stop_token_ids"):
            sampling[name] = list(value)
        else:
            sampling[name] = value
    return sampling, top


# ----------------------------------------------------------------------------------- validation


def _int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _float(name: str, value: Any, low: float, high: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}")


def _str_tuple(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a str or a sequence of str, got {value!r}") from None
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} entries must be str, got {item!r}")
        if not item:
            raise ValueError(f"{name} entries must be non-empty")
    return items


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of int, got {value!r}") from None
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise TypeError(f"{name} entries must be ints >= 0, got {item!r}")
    return items


def _schema_json(value: Any) -> str:
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=False)
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"json_schema is not valid JSON: {err}") from None
        if not isinstance(parsed, dict):
            raise ValueError("json_schema must be a JSON object")
        return value
    raise TypeError(f"json_schema must be a dict or a JSON string, got {type(value).__name__}")


def _dtype_name(value: Any) -> str:
    if isinstance(value, type) and value in _DTYPE_NAMES:
        return _DTYPE_NAMES[value]
    if isinstance(value, str) and value in DTYPE_REGEX:
        return value
    raise ValueError(f"dtype must be one of int, float, bool, str (or their names), got {value!r}")


# ------------------------------------------------------------------ API providers (OpenAI & co.)
#
# The four SDK-backed backends (providers/openai.py, anthropic.py, litellm.py, vertexai.py) map
# parameters here. Shared rules:
#
# * ``max_new_tokens`` is always sent (under the provider's name for it).
# * ``json_schema`` becomes the provider's native structured output (see each function).
# * ``dtype`` is not mapped here: each backend implements it (structured output with a one-field
#   wrapper object, :func:`dtype_json_schema`, read back with :func:`parse_dtype_output`; or logit
#   bias for OpenAI completion models) and formats the value as :data:`DTYPE_REGEX` describes
#   (``42``, ``3.5``, ``True``, ``"text"``; :func:`format_dtype_value`).
# * ``return_logprob`` / ``top_logprobs_num`` ask for output-token logprobs where the API has them;
#   ``return_text_in_logprobs`` is accepted (API logprobs always carry the token text).
#   ``logprob_start_len`` (prompt logprobs) is offered by none of them and raises.
# * ``stop_token_ids``, ``min_new_tokens``, ``ignore_eos`` and ``regex`` are offered by none of
#   them and raise :class:`UnsupportedParameterError` (the output-constraint rule above).

#: Name of the wrapper property ``dtype`` constraints use with structured output.
DTYPE_VALUE_KEY = "value"
_DTYPE_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}


def dtype_json_schema(dtype: str) -> dict[str, Any]:
    """The one-field object schema a ``dtype`` constraint asks structured output for."""
    return {
        "type": "object",
        "properties": {DTYPE_VALUE_KEY: {"type": _DTYPE_JSON_TYPES[dtype]}},
        "required": [DTYPE_VALUE_KEY],
        "additionalProperties": False,
    }


def format_dtype_value(dtype: str, value: Any) -> str:
    """``value`` (decoded from structured output) written in :data:`DTYPE_REGEX` syntax."""
    if dtype == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected a boolean, got {value!r}")
        return "True" if value else "False"
    if dtype == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ValueError(f"expected an integer, got {value!r}")
        return str(value)
    if dtype == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return repr(float(value)) if isinstance(value, float) else str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return json.dumps(value, ensure_ascii=False)


def parse_dtype_output(dtype: str, text: str, *, provider: str) -> str:
    """The ``dtype`` value from structured output ``text`` (the :func:`dtype_json_schema` object),
    written as :data:`DTYPE_REGEX` describes; ``ProviderError`` when it does not parse."""
    try:
        return format_dtype_value(dtype, json.loads(text)[DTYPE_VALUE_KEY])
    except (ValueError, KeyError, TypeError) as err:
        raise ProviderError(f"structured output for dtype={dtype} did not parse: {err}", provider=provider) from None


def _is_strict_compatible(schema: Any) -> bool:
    """Whether OpenAI's strict mode accepts ``schema`` as is: every object closes its properties
    (``additionalProperties: false``) and requires all of them."""
    if isinstance(schema, list):
        return all(_is_strict_compatible(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False or set(schema.get("required") or []) != set(props):
            return False
    return all(_is_strict_compatible(v) for k, v in schema.items() if k not in ("enum", "const", "default"))


def openai_response_format(json_schema: str) -> dict[str, Any]:
    """``response_format`` for a ``json_schema``.

    A schema given in OpenAI's own wrapper form (``{"name": ..., "schema": {...}, "strict": ...}``)
    is sent as is. A bare schema is named ``"output"`` and sent with ``strict: true`` when strict mode
    accepts it (every object has ``additionalProperties: false`` and requires all its properties),
    else ``strict: false`` (the model is guided by the schema but not constrained to it).
    """
    schema = json.loads(json_schema)
    if isinstance(schema.get("schema"), dict) and isinstance(schema.get("name"), str):
        return {"type": "json_schema", "json_schema": schema}
    return {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": _is_strict_compatible(schema)},
    }


_OPENAI_COMMON = {"n", "stop", "temperature", "top_p", "frequency_penalty", "presence_penalty",
                  "return_logprob", "top_logprobs_num", "return_text_in_logprobs", "dtype"}


def to_openai_kwargs(params: SamplingParams, *, chat: bool = True, reasoning: bool = False,
                     provider: str = "openai") -> dict[str, Any]:
    """Keyword arguments for ``client.chat.completions.create`` (``chat``) or ``completions.create``.

    The limit goes as ``max_completion_tokens`` for reasoning models and ``max_tokens`` otherwise,
    never both. ``json_schema`` -> ``response_format`` (chat only; :func:`openai_response_format`).
    ``top_k`` and ``min_p`` do not exist in the OpenAI API: they warn and are not sent. Logprobs: chat
    gets ``logprobs=True`` (+ ``top_logprobs``), completions ``logprobs=<top_logprobs_num>``.
    """
    supported = set(_OPENAI_COMMON)
    if chat:
        supported.add("json_schema")
    chosen = check_supported(params, provider, supported)
    limit_key = "max_completion_tokens" if reasoning else "max_tokens"
    return _openai_style_kwargs(params, chosen, limit_key=limit_key, chat=chat)


def to_litellm_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Keyword arguments for ``litellm.completion`` (OpenAI-style names; litellm translates them).

    The OpenAI chat mapping plus ``top_k``, which is passed through (litellm forwards it to providers
    that have it and raises its own error for those that do not -- nothing is dropped silently);
    ``min_p`` warns and is not sent. ``json_schema`` -> ``response_format`` as for OpenAI (litellm
    maps it to each provider's structured output).
    """
    chosen = check_supported(params, "litellm", set(_OPENAI_COMMON) | {"json_schema", "top_k"})
    return _openai_style_kwargs(params, chosen, limit_key="max_tokens", chat=True)


def _openai_style_kwargs(params: SamplingParams, chosen: dict[str, Any], *, limit_key: str,
                         chat: bool) -> dict[str, Any]:
    """The OpenAI API's names and shapes for the ``chosen`` fields (set, and supported by the caller)."""
    kwargs: dict[str, Any] = {limit_key: params.max_new_tokens}
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "n", "top_k"):
        if name in chosen:
            kwargs[name] = chosen[name]
    if "stop" in chosen:
        kwargs["stop"] = list(chosen["stop"])
    if "json_schema" in chosen:
        kwargs["response_format"] = openai_response_format(chosen["json_schema"])
    if params.return_logprob or params.top_logprobs_num:
        if chat:
            kwargs["logprobs"] = True
            if params.top_logprobs_num:
                kwargs["top_logprobs"] = params.top_logprobs_num
        else:
            kwargs["logprobs"] = params.top_logprobs_num
    return kwargs


def to_anthropic_kwargs(params: SamplingParams) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``(kwargs for messages.create, client_side_stops)``.

    ``max_tokens`` is always sent (the API requires it); ``top_k`` only when set. The Messages API
    has no ``n``, no frequency/presence penalties, no ``min_p`` and no logprobs: ``n``/logprobs raise,
    the knobs warn. Stop sequences the API rejects -- whitespace-only ones such as ``"\\n"`` -- are not
    sent but returned as ``client_side_stops``: the backend cuts the output at their first occurrence
    (finish_reason ``"stop"``), which is what a server-side stop would have returned. ``json_schema``
    is handled by the backend (a forced tool call, see ``providers/anthropic.py``).
    """
    supported = {"stop", "temperature", "top_p", "top_k", "json_schema", "dtype"}
    chosen = check_supported(params, "anthropic", supported)
    kwargs: dict[str, Any] = {"max_tokens": params.max_new_tokens}
    for name in ("temperature", "top_p", "top_k"):
        if name in chosen:
            kwargs[name] = chosen[name]
    client_stops: tuple[str, ...] = ()
    if "stop" in chosen:
        server = [s for s in chosen["stop"] if s.strip()]
        client_stops = tuple(s for s in chosen["stop"] if not s.strip())
        if server:
            kwargs["stop_sequences"] = server
    return kwargs, client_stops


def to_vertexai_config(params: SamplingParams) -> dict[str, Any]:
    """Fields of google-genai's ``GenerateContentConfig``.

    ``max_output_tokens`` always; ``candidate_count`` for ``n``; ``stop_sequences``; the sampling
    knobs Gemini has (temperature, top_p, top_k, presence/frequency penalties; ``min_p`` warns);
    ``json_schema`` -> ``response_mime_type="application/json"`` + ``response_json_schema`` (the
    schema as given, JSON Schema dialect); logprobs -> ``response_logprobs`` (+ ``logprobs``).
    """
    supported = {"n", "stop", "temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty",
                 "json_schema", "dtype", "return_logprob", "top_logprobs_num", "return_text_in_logprobs"}
    chosen = check_supported(params, "vertexai", supported)
    config: dict[str, Any] = {"max_output_tokens": params.max_new_tokens}
    for name in ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty"):
        if name in chosen:
            config[name] = chosen[name]
    if "n" in chosen:
        config["candidate_count"] = chosen["n"]
    if "stop" in chosen:
        config["stop_sequences"] = list(chosen["stop"])
    if "json_schema" in chosen:
        config["response_mime_type"] = "application/json"
        config["response_json_schema"] = json.loads(chosen["json_schema"])
    if params.return_logprob or params.top_logprobs_num:
        config["response_logprobs"] = True
        if params.top_logprobs_num:
            config["logprobs"] = params.top_logprobs_num
    return config
