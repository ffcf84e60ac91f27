"""The interface every backend implements, and the pieces all backends share.

A backend is an adapter: it reads a program state, sends a request, and turns the response into
``(text, meta_info)``. Subclass :class:`BaseBackend` and override what you support:

* **Operations** -- ``generate``, ``generate_stream``, ``select``, ``concatenate_and_append``,
  ``get_server_info``, ``get_model_name``: the base raises
  :class:`~providers.errors.UnsupportedOperationError` (a ``NotImplementedError``) naming the backend
  and the operation.
* **Async twins** -- ``agenerate``, ``agenerate_stream`` (an async iterator), ``aselect``,
  ``acommit_lazy_operations``, ``aclose``: the same contracts on the backend's async transport (an
  async client per event loop from ``_make_async_client``, see :meth:`BaseBackend._async_client`),
  never a thread; the base raises ``UnsupportedOperationError`` for the operations.
* **Hooks** -- ``cache_prefix``, ``uncache_prefix``, ``end_request``, ``begin_program``,
  ``end_program``, ``commit_lazy_operations``, ``fork_program``, ``fill_image``, ``flush_cache``,
  ``shutdown``: no-ops in the base.

What a backend reads from the state (:class:`StateView`; ``ProgramState`` is the reference
implementation but a frontend may pass its own object with these attributes):

* ``text_`` -- the flat prompt, chat-template prefixes/suffixes included (completion-style APIs);
* ``messages_`` -- OpenAI-format messages for the *finished* roles; string content, or a list of
  ``{"type": "text"}`` / ``{"type": "image_url", "image_url": {"url": "data:<mime>;base64,..."}}``
  parts when the role had images (chat APIs). If ``cur_role`` is set, the text written since
  ``cur_role_begin_pos`` is the open turn (e.g. an assistant prefix to continue);
* ``images_`` -- every ``(path, base64)`` pair of the program, in prompt order (one image token each
  in ``text_``); ``cur_images`` -- those of the open role;
* ``backend_data`` -- a dict private to backends for per-state scratch (e.g. speculative buffers);
  key it by your backend name. Never keep per-state data on the backend object: one backend serves
  many states from many threads.

What a backend returns:

* ``generate`` -> ``(text, meta_info)`` where ``meta_info`` comes from :func:`make_meta_info`
  (``prompt_tokens``, ``completion_tokens``, ``finish_reason`` normalized to ``"stop"`` /
  ``"length"`` / ``"abort"`` / ``"content_filter"`` / other, ``latency`` in seconds, ``model``, plus
  any provider extras). With ``n > 1`` it returns ``(list_of_texts, meta_info)`` where
  ``meta_info["choices"]`` holds one meta_info per text, ``completion_tokens`` is their sum and
  ``finish_reason`` the first choice's.
* ``generate_stream`` -> iterator of ``(delta_text, meta_info)``; deltas concatenate to the full
  text, none is repeated; the last item's ``meta_info`` is complete (``finish_reason`` set).
* ``select`` -> :class:`~providers.choices.ChoicesDecision` with ``meta_info["method"]``.

Provider options: ``backend.provider_options`` (per backend) and ``SamplingParams.provider_options``
(per call) are provider-specific request fields, sent as given (``providers/options.py``).

Errors: raise :class:`~providers.errors.ProviderError` subclasses with ``provider=self.provider``;
register API keys with :func:`~providers.errors.register_secret` (or keep them in a
:class:`~providers.errors.Secret`) so they never appear in messages or reprs.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from .chat_template import ChatTemplate, get_chat_template
from .choices import ChoicesDecision, ChoicesSamplingMethod
from .errors import UnsupportedOperationError
from .sampling import SamplingParams

__all__ = ["BaseBackend", "StateView", "COMMON_FINISH_REASONS", "make_meta_info", "normalize_finish_reason"]


@runtime_checkable
class StateView(Protocol):
    """The attributes of a program state that backends may read (see the module docstring)."""

    text_: str
    messages_: list[dict[str, Any]]
    images_: list[tuple[str, str]]
    cur_images: list[tuple[str, str]]
    cur_role: str | None
    cur_role_begin_pos: int
    variables: dict[str, Any]
    meta_info: dict[str, Any]
    sid: str
    backend_data: dict[str, Any]


#: The uniform vocabulary every backend reports. A provider module maps its API's own reasons onto it
#: (``FINISH_REASONS`` in the module, passed as ``table``); these entries apply to every provider.
COMMON_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
}


def normalize_finish_reason(raw: Any, table: Mapping[str, str] | None = None) -> str | None:
    """One vocabulary for every provider's finish reason.

    ``table`` is the provider's own mapping (Anthropic's ``"end_turn"`` -> ``"stop"``, Gemini's
    ``"MAX_TOKENS"`` -> ``"length"``), consulted first; :data:`COMMON_FINISH_REASONS` after it.
    Accepts strings, enums with a ``name``/``value`` and SGLang's ``{"type": "stop", "matched": ...}``
    dicts. Unknown reasons are returned lower-cased; None stays None.
    """
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        return normalize_finish_reason(raw.get("type"), table)
    if not isinstance(raw, str):
        raw = getattr(raw, "name", None) or getattr(raw, "value", None) or str(raw)
    for key in (raw, str(raw).lower()):
        for mapping in (table or {}, COMMON_FINISH_REASONS):
            if key in mapping:
                return mapping[key]
    return str(raw).lower()


def make_meta_info(
    *,
    model: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    finish_reason: Any,
    latency: float,
    finish_reasons: Mapping[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The uniform ``meta_info`` every backend returns from ``generate``.

    ``finish_reason`` is normalized (:func:`normalize_finish_reason` with the provider's
    ``finish_reasons`` table); the provider's own value is
    kept as ``finish_reason_raw`` when it differs. ``extra`` keys (``id``, ``cached_tokens``,
    logprobs, ...) are added as given, without overriding the uniform keys.
    """
    meta: dict[str, Any] = dict(extra)
    meta.update(
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason=normalize_finish_reason(finish_reason, finish_reasons),
        latency=latency,
    )
    if finish_reason is not None and finish_reason != meta["finish_reason"]:
        meta["finish_reason_raw"] = finish_reason
    return meta


class BaseBackend:
    """The backend interface (see the module docstring for the contract).

    Subclasses set ``provider`` (used in errors) and usually ``chat_template``.
    """

    provider: str = "base"
    #: Read by SGLang's frontend (``StreamExecutor``): backends with ``spec_fill``/``role_end_generate``
    #: speculation (OpenAI chat models) and servers that join forked requests' KV caches
    #: (``concatenate_and_append``).
    is_chat_model: bool = False
    support_concate_and_append: bool = False

    def __init__(self, chat_template: ChatTemplate | None = None) -> None:
        self.chat_template = chat_template or get_chat_template("default")

    # ------------------------------------------------------------------------ provider options

    @property
    def provider_options(self) -> dict[str, Any]:
        """Provider-specific request fields sent with every request of this backend (a copy;
        assign a dict to change them). A call's ``provider_options`` win key by key; see
        ``providers/options.py`` for the rules and each provider module for where they go."""
        return dict(self.__dict__.get("_provider_options") or {})

    @provider_options.setter
    def provider_options(self, value: Mapping[str, Any] | None) -> None:
        from .options import check_provider_options
        from .sampling import SamplingParams

        own = [f for f in SamplingParams.__dataclass_fields__ if f != "provider_options"]
        self._provider_options = check_provider_options(value, fields=own)

    # ------------------------------------------------------------------ identity and settings

    def get_model_name(self) -> str:
        self._unsupported("get_model_name")

    def get_chat_template(self) -> ChatTemplate:
        return self.chat_template

    def get_server_info(self) -> dict[str, Any]:
        self._unsupported("get_server_info")

    # ------------------------------------------------------------------------------------ hooks

    def cache_prefix(self, prefix_str: str) -> None:
        """Warm a server-side prefix cache with ``prefix_str`` (no-op unless overridden)."""

    def uncache_prefix(self, rid: str) -> None:
        """Release a cached prefix (no-op unless overridden)."""

    def end_request(self, rid: str | Sequence[str]) -> None:
        """Tell the server a request id is finished (no-op unless overridden)."""

    def begin_program(self, s: StateView) -> None:
        """Called when a program state is created."""

    def end_program(self, s: StateView) -> None:
        """Called when a program state is closed."""

    def commit_lazy_operations(self, s: StateView) -> None:
        """Send what the state accumulated so far (prompt, images) to the server, e.g. before fork."""

    def fork_program(self, src: StateView, dst: Sequence[StateView], position_ids_offset: Any = None) -> None:
        """Called after ``src`` was forked into ``dst``."""

    def fill_image(self, s: StateView) -> None:
        """Send the state's images ahead of the next generation (no-op unless overridden)."""

    def flush_cache(self) -> None:
        """Drop server-side caches (no-op unless overridden)."""

    def shutdown(self) -> None:
        """Release clients and connections; idempotent."""

    # ------------------------------------------------------------------------------- operations

    def generate(self, s: StateView, sampling_params: SamplingParams) -> tuple[Any, dict[str, Any]]:
        self._unsupported("generate")

    def generate_stream(
        self, s: StateView, sampling_params: SamplingParams
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        self._unsupported("generate_stream")

    def select(
        self,
        s: StateView,
        choices: list[str],
        temperature: float,
        choices_method: ChoicesSamplingMethod,
    ) -> ChoicesDecision:
        self._unsupported("select")

    def concatenate_and_append(self, src_rids: list[str], dst_rid: str) -> None:
        self._unsupported("concatenate_and_append")

    # ------------------------------------------------------------------------- async operations
    #
    # The asyncio twins, on each backend's async transport (never a thread). A backend without one
    # raises UnsupportedOperationError, as for a missing sync operation.

    async def agenerate(self, s: StateView, sampling_params: SamplingParams) -> tuple[Any, dict[str, Any]]:
        self._unsupported("agenerate")

    def agenerate_stream(self, s: StateView, sampling_params: SamplingParams) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self._unsupported("agenerate_stream")

    async def aselect(self, s: StateView, choices: list[str], temperature: float,
                      choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        self._unsupported("aselect")

    async def acommit_lazy_operations(self, s: StateView) -> None:
        """The async twin of :meth:`commit_lazy_operations` (override where the hook sends a request)."""
        self.commit_lazy_operations(s)

    def _make_async_client(self) -> Any:
        """A new async client (HTTP or SDK) for this backend, called once per event loop by
        :meth:`_async_client`; backends with an async transport override it."""
        self._unsupported("async operations")

    def _async_client(self) -> Any:
        """The async client of the running event loop, made on first use in each loop (an async
        client's connections belong to the loop that opened them)."""
        loop = asyncio.get_running_loop()
        lock = self.__dict__.setdefault("_aclients_lock", threading.Lock())
        with lock:
            clients = self.__dict__.setdefault("_aclients", weakref.WeakKeyDictionary())
            client = clients.get(loop)
            if client is None:
                client = clients[loop] = self._make_async_client()
            return client

    async def aclose(self) -> None:
        """Close the async client of the running event loop (if one was made); idempotent."""
        clients = self.__dict__.get("_aclients")
        client = clients.pop(asyncio.get_running_loop(), None) if clients else None
        if client is None:
            return
        close = getattr(client, "aclose", None) or getattr(client, "close", None)
        result = close() if close is not None else None
        if inspect.isawaitable(result):
            await result

    # ---------------------------------------------------------------------------------- helpers

    def _unsupported(self, operation: str):
        raise UnsupportedOperationError(
            f"{type(self).__name__} does not support {operation}", provider=self.provider
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        try:
            model = self.get_model_name()
        except Exception:  # noqa: BLE001 - repr must not fail
            model = "?"
        return f"{type(self).__name__}(model={model!r})"
