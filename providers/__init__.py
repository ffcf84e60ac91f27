"""LLM provider backends behind one interface.

The core (backend interface, program state, sampling parameters, chat templates, choice methods,
errors, retry policy, token usage) is imported eagerly and needs nothing outside the standard
library. Backends that need an HTTP client or a provider SDK are imported on first use, so
``import providers`` works without them::

    from providers import ProgramState, RuntimeEndpoint

    backend = RuntimeEndpoint("http://127.0.0.1:30000")
    s = ProgramState(backend)
    s.user("Hello")
    with s.assistant():
        s.gen("reply", max_new_tokens=32)

Every backend has async twins (``agenerate``, ``agenerate_stream``, ``aselect``) on its async
transport, and :class:`AsyncProgramState` drives them (``await s.gen(...)``). Provider-specific
request fields go through ``provider_options`` (``providers/options.py``).

A missing optional dependency raises ``ImportError`` naming ``pip install 'kernelstack[providers]'``.

Each backend is one module found through a small registry (``providers/registry.py``;
``register_provider`` / ``get_provider`` / ``available_providers``; the entry-point group
``kernelstack.providers`` lets another package add one). The SDK-backed ones share
``providers/api_backend.py``.
"""

from __future__ import annotations

from typing import Any

from .async_state import AsyncProgramState
from .base import BaseBackend, StateView, make_meta_info, normalize_finish_reason
from .chat_template import (
    ChatTemplate,
    ChatTemplateStyle,
    UnknownChatTemplateError,
    chat_template_names,
    get_chat_template,
    get_chat_template_by_model_path,
    register_chat_template,
    register_chat_template_matching_function,
)
from .choices import (
    ChoicesDecision,
    ChoicesSamplingMethod,
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    LaunchError,
    ProviderError,
    RateLimitError,
    Secret,
    ServerError,
    StreamInterruptedError,
    UnsupportedOperationError,
    UnsupportedParameterError,
)
from .registry import available_providers, exported_names, get_provider, register_provider
from .retry import RetryPolicy
from .sampling import SamplingParams, UnsupportedParameterWarning
from .sdk_errors import INSTALL_HINT as INSTALL_HINT  # kept importable: providers.INSTALL_HINT
from .state import ProgramState
from .usage import TokenUsage

__all__ = [
    "BaseBackend",
    "StateView",
    "ProgramState",
    "AsyncProgramState",
    "SamplingParams",
    "UnsupportedParameterWarning",
    "ChatTemplate",
    "ChatTemplateStyle",
    "UnknownChatTemplateError",
    "register_chat_template",
    "register_chat_template_matching_function",
    "get_chat_template",
    "get_chat_template_by_model_path",
    "chat_template_names",
    "ChoicesDecision",
    "ChoicesSamplingMethod",
    "token_length_normalized",
    "greedy_token_selection",
    "unconditional_likelihood_normalized",
    "ProviderError",
    "APIConnectionError",
    "APITimeoutError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "RateLimitError",
    "ServerError",
    "StreamInterruptedError",
    "UnsupportedParameterError",
    "UnsupportedOperationError",
    "LaunchError",
    "Secret",
    "RetryPolicy",
    "TokenUsage",
    "make_meta_info",
    "normalize_finish_reason",
    "register_provider",
    "get_provider",
    "available_providers",
]  # the lazy names stay out of __all__: `from providers import *` must not import every SDK


def __getattr__(name: str) -> Any:
    # The backend classes (``providers.OpenAI``...) are the registry's exports, imported on first use.
    provider = exported_names().get(name)
    if provider is None:
        raise AttributeError(f"module 'providers' has no attribute {name!r}")
    value = get_provider(provider)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(exported_names()))
