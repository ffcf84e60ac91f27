"""Sampling parameters, validated once, and the rule for parameters a provider cannot honour.

:class:`SamplingParams` is what a frontend passes to ``backend.generate`` (backends also take SGLang's
``SglSamplingParams``, through :meth:`SamplingParams.coerce`). It is validated on
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

Adding a provider: its module maps the parameters (``map_params`` of its backend, see
``providers/api_backend.py``). Call ``check_supported(params, "<provider>", {...fields you map...})``
first, then translate the set fields (e.g. ``to_openai_kwargs`` in ``providers/openai.py``).
``dtype`` has a portable meaning -- :data:`DTYPE_REGEX` -- that a provider may implement by other
means (e.g. logit bias) or list as unsupported.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
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
        "stop_regex",
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
    stop_regex: tuple[str, ...] = ()
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
    #: Provider-specific request fields, sent as given (see ``providers/options.py``); not compared
    #: with the defaults by :meth:`set_fields` and never checked against a provider's support list.
    provider_options: Mapping[str, Any] | None = dataclasses.field(default=None, hash=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.provider_options is not None:
            from .options import check_provider_options

            own = [f.name for f in dataclasses.fields(self) if f.name != "provider_options"]
            set_(self, "provider_options", check_provider_options(self.provider_options, fields=own) or None)
        _int("max_new_tokens", self.max_new_tokens, minimum=0)
        _int("min_new_tokens", self.min_new_tokens, minimum=0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens ({self.max_new_tokens})"
            )
        _int("n", self.n, minimum=1)
        set_(self, "stop", _str_tuple("stop", self.stop))
        set_(self, "stop_token_ids", _int_tuple("stop_token_ids", self.stop_token_ids))
        set_(self, "stop_regex", _str_tuple("stop_regex", self.stop_regex))
        for pattern in self.stop_regex:
            _check_regex("stop_regex", pattern)
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

    @classmethod
    def coerce(cls, params: Any) -> SamplingParams:
        """``params`` as a :class:`SamplingParams`: ours as is; SGLang's ``SglSamplingParams`` (or any
        object with these field names as attributes) or a mapping, validated field by field.

        The frontend's "not given" spellings mean the default: ``None``, and the ``(None,)`` that
        ``SglSamplingParams`` uses as the default of its logprob fields. ``stop`` and
        ``stop_token_ids`` may be lists; ``dtype`` a type (``int``) or its name. A field this class does
        not know raises ``TypeError`` when it is set (nothing is dropped silently).
        """
        if isinstance(params, cls):
            return params
        if params is None:
            return cls()
        if isinstance(params, Mapping):
            values = dict(params)
        else:
            if isinstance(params, (str, bytes, int, float)):
                raise TypeError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
            names = getattr(params, "__dataclass_fields__", None) or vars(params)
            values = {name: getattr(params, name) for name in names}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        chosen: dict[str, Any] = {}
        for name, value in values.items():
            if value is None or (isinstance(value, tuple) and value == (None,)):
                continue
            if name not in fields:
                if isinstance(value, (tuple, list, str)) and not value:
                    continue  # an empty foreign field asks for nothing
                raise TypeError(f"sampling_params: unknown field {name!r} (set to {value!r})")
            if name in ("stop", "stop_token_ids", "stop_regex") and isinstance(value, list):
                value = tuple(value)
            chosen[name] = value
        return cls(**chosen)

    def replace(self, **changes: Any) -> SamplingParams:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def set_fields(self) -> dict[str, Any]:
        """The fields whose value differs from the default (what the user asked for); the
        ``provider_options`` are not among them (they are sent as they are, not mapped)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "provider_options" and getattr(self, f.name) != f.default
        }

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SamplingParams:
        """``SamplingParams`` from ``gen``-style keyword arguments: the fields, ``provider_options=``
        and the provider options accepted by name (``reasoning_effort``, ``thinking``, ``extra_body``,
        ``extra_headers``, ``extra_query``, ``cache_control``). Any other name raises ``TypeError``
        with a did-you-mean."""
        from .options import split_sampling_kwargs

        own = [f.name for f in dataclasses.fields(cls) if f.name != "provider_options"]
        sampling, _ = split_sampling_kwargs(kwargs, own)
        return cls(**sampling)

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


def _check_regex(name: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{name} is not a valid regular expression: {err}") from None


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


# ------------------------------------------------------------------ dtype through structured output
#
# ``dtype`` is implemented by each API backend (structured output with a one-field wrapper object,
# :func:`dtype_json_schema`, read back with :func:`parse_dtype_output`; or logit bias for OpenAI
# completion models) and formatted as :data:`DTYPE_REGEX` describes (``42``, ``3.5``, ``True``,
# ``"text"``; :func:`format_dtype_value`).

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


# Where the per-provider mappings moved (each provider module owns its own); old imports keep working.
_MOVED = {
    "to_sglang": "providers.runtime_endpoint",
    "openai_response_format": "providers.openai",
    "to_openai_kwargs": "providers.openai",
    "to_litellm_kwargs": "providers.litellm",
    "to_anthropic_kwargs": "providers.anthropic",
    "to_vertexai_config": "providers.vertexai",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'providers.sampling' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
