"""Chat templates: how a role's text is wrapped in the flat prompt (``ProgramState.text_``).

A :class:`ChatTemplate` maps each role to a ``(prefix, suffix)`` pair. ``ProgramState`` writes the
prefix when a role begins and the suffix when it ends, so ``text_`` is the prompt a completion-style
server (SGLang) sees; message-based APIs read ``messages_`` instead and ignore the template's tokens.

Two styles:

* ``PLAIN`` -- every role is wrapped in its own prefix and suffix.
* ``SYSTEM_IN_FIRST_USER`` -- the model has no separate system turn (Llama-2, Mistral, Gemma): a
  leading system message opens the first user turn (user prefix + system prefix), and that user
  message then starts without its own prefix.

Registry: :func:`register_chat_template`, :func:`get_chat_template` and
:func:`get_chat_template_by_model_path`, which asks the matching functions (registered with
:func:`register_chat_template_matching_function`, newest first, so a user's function wins) and falls
back to ``"default"``. Built in: default, claude, chatml, qwen, llama-2-chat, llama-3-instruct,
mistral, gemma-it, deepseek-v3.
"""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "ChatTemplate",
    "ChatTemplateStyle",
    "register_chat_template",
    "register_chat_template_matching_function",
    "get_chat_template",
    "get_chat_template_by_model_path",
    "chat_template_names",
    "UnknownChatTemplateError",
]


class ChatTemplateStyle(enum.Enum):
    PLAIN = "plain"
    SYSTEM_IN_FIRST_USER = "system_in_first_user"


@dataclass(frozen=True)
class ChatTemplate:
    """How roles are written into the flat prompt.

    ``default_system_prompt``: when the first role of a program is ``user`` and this is set,
    ``ProgramState`` first writes a system turn with it (the model's own chat template does the same).
    ``stop_str``: strings that end an assistant turn. ``image_token``: the placeholder written into
    the prompt for each image.
    """

    name: str
    role_prefix_and_suffix: Mapping[str, tuple[str, str]]
    default_system_prompt: str | None = None
    stop_str: tuple[str, ...] = ()
    image_token: str = "<image>"
    style: ChatTemplateStyle = ChatTemplateStyle.PLAIN

    def get_prefix_and_suffix(self, role: str, hist_messages: Sequence[Mapping]) -> tuple[str, str]:
        """``(prefix, suffix)`` for ``role``, given the messages that precede it."""
        if role not in self.role_prefix_and_suffix:
            raise ValueError(
                f"chat template {self.name!r} has no role {role!r} "
                f"(roles: {', '.join(self.role_prefix_and_suffix)})"
            )
        prefix, suffix = self.role_prefix_and_suffix[role]
        if self.style is ChatTemplateStyle.SYSTEM_IN_FIRST_USER:
            user_prefix = self.role_prefix_and_suffix.get("user", ("", ""))[0]
            if role == "system" and not hist_messages:
                return user_prefix + prefix, suffix
            if role == "user" and len(hist_messages) == 1 and hist_messages[0]["role"] == "system":
                return "", suffix
        return prefix, suffix

    def get_prompt(self, messages: Sequence[Mapping]) -> str:
        """The flat prompt for OpenAI-style ``messages`` (string contents)."""
        prompt = []
        for i, message in enumerate(messages):
            prefix, suffix = self.get_prefix_and_suffix(message["role"], messages[:i])
            prompt.append(f"{prefix}{message['content']}{suffix}")
        return "".join(prompt)


_registry: dict[str, ChatTemplate] = {}
_matchers: list[Callable[[str], ChatTemplate | None]] = []
_lock = threading.Lock()


class UnknownChatTemplateError(KeyError, ValueError):
    """No template of that name: a ``KeyError`` (a registry lookup, as in SGLang) and a ``ValueError``."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def register_chat_template(template: ChatTemplate) -> ChatTemplate:
    """Add ``template`` under its name, replacing one already registered under it (as SGLang does)."""
    if not isinstance(template, ChatTemplate):
        raise TypeError(f"register_chat_template takes a ChatTemplate, got {type(template).__name__}")
    with _lock:
        _registry[template.name] = template
    return template


def register_chat_template_matching_function(
    func: Callable[[str], ChatTemplate | None],
) -> Callable[[str], ChatTemplate | None]:
    """Register ``func(model_path) -> ChatTemplate | None``; usable as a decorator.

    Later registrations are asked first.
    """
    with _lock:
        _matchers.insert(0, func)
    return func


def get_chat_template(name: str) -> ChatTemplate:
    """The registered template called ``name``."""
    with _lock:
        try:
            return _registry[name]
        except KeyError:
            raise UnknownChatTemplateError(
                f"unknown chat template {name!r}; registered: {', '.join(sorted(_registry))}"
            ) from None


def chat_template_names() -> list[str]:
    with _lock:
        return sorted(_registry)


def get_chat_template_by_model_path(model_path: str) -> ChatTemplate:
    """The template for a model path or name, by family; ``default`` when nothing matches."""
    with _lock:
        matchers = list(_matchers)
    for matcher in matchers:
        template = matcher(model_path)
        if template is not None:
            return template
    return get_chat_template("default")


# --------------------------------------------------------------------------------- built-ins

_ROLES_CHATML = {
    "system": ("<|im_start|>system\n", "<|im_end|>\n"),
    "user": ("<|im_start|>user\n", "<|im_end|>\n"),
    "assistant": ("<|im_start|>assistant\n", "<|im_end|>\n"),
}

register_chat_template(
    ChatTemplate(
        name="default",
        role_prefix_and_suffix={
            "system": ("SYSTEM:", "\n"),
            "user": ("USER:", "\n"),
            "assistant": ("ASSISTANT:", "\n"),
        },
    )
)
register_chat_template(
    ChatTemplate(
        name="claude",
        role_prefix_and_suffix={
            "system": ("", ""),
            "user": ("\n\nHuman: ", ""),
            "assistant": ("\n\nAssistant:", ""),
        },
    )
)
register_chat_template(ChatTemplate(name="chatml", role_prefix_and_suffix=_ROLES_CHATML, stop_str=("<|im_end|>",)))
register_chat_template(
    ChatTemplate(
        name="qwen",
        role_prefix_and_suffix=_ROLES_CHATML,
        default_system_prompt="You are a helpful assistant.",
        stop_str=("<|im_end|>",),
        image_token="<|vision_start|><|image_pad|><|vision_end|>",
    )
)
register_chat_template(
    ChatTemplate(
        name="llama-2-chat",
        role_prefix_and_suffix={
            "system": ("<<SYS>>\n", "\n<</SYS>>\n\n"),
            "user": ("[INST] ", " [/INST]"),
            "assistant": ("", " </s><s>"),
        },
        style=ChatTemplateStyle.SYSTEM_IN_FIRST_USER,
    )
)
register_chat_template(
    ChatTemplate(
        name="llama-3-instruct",
        role_prefix_and_suffix={
            role: (f"<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>")
            for role in ("system", "user", "assistant")
        },
        stop_str=("<|eot_id|>",),
        image_token="<|image|>",
    )
)
register_chat_template(
    ChatTemplate(
        name="mistral",
        role_prefix_and_suffix={
            "system": ("", "\n\n"),
            "user": ("[INST] ", " [/INST]"),
            "assistant": ("", "</s>"),
        },
        stop_str=("</s>",),
        image_token="[IMG]",
        style=ChatTemplateStyle.SYSTEM_IN_FIRST_USER,
    )
)
register_chat_template(
    ChatTemplate(
        name="gemma-it",
        role_prefix_and_suffix={
            "system": ("", "\n\n"),
            "user": ("<start_of_turn>user\n", "<end_of_turn>\n"),
            "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n"),
        },
        stop_str=("<end_of_turn>",),
        image_token="<start_of_image>",
        style=ChatTemplateStyle.SYSTEM_IN_FIRST_USER,
    )
)
register_chat_template(
    ChatTemplate(
        name="deepseek-v3",
        role_prefix_and_suffix={
            "system": ("", ""),
            "user": ("<｜User｜>", ""),
            "assistant": ("<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
        },
        stop_str=("<｜end▁of▁sentence｜>",),
    )
)


# Families, most specific first. Each entry: (template name, predicate on the lower-cased path).
_FAMILIES: list[tuple[str, Callable[[str], bool]]] = [
    ("deepseek-v3", lambda p: re.search(r"deepseek-(v3|r1)", p) is not None and "base" not in p),
    ("llama-3-instruct", lambda p: re.search(r"llama-?3", p) is not None and "instruct" in p),
    ("llama-2-chat", lambda p: re.search(r"llama-?2", p) is not None and "chat" in p),
    ("mistral", lambda p: re.search(r"m[ia]xtral|mistral|ministral", p) is not None and "instruct" in p),
    ("gemma-it", lambda p: "gemma" in p and re.search(r"-it\b|-it-|instruct", p) is not None),
    (
        "qwen",
        lambda p: "qwen" in p
        and "base" not in p
        and re.search(r"instruct|chat|qwen3|qwq", p) is not None,
    ),
    ("chatml", lambda p: re.search(r"chatml|hermes|dolphin", p) is not None),
    ("claude", lambda p: "claude" in p),
]


def _match_builtin_family(model_path: str) -> ChatTemplate | None:
    # The whole path decides: local snapshot paths keep the model's name in a parent folder
    # (".../models--meta-llama--Llama-3-8B-Instruct/snapshots/<hash>").
    name = model_path.lower()
    for template_name, predicate in _FAMILIES:
        if predicate(name):
            return get_chat_template(template_name)
    return None


_matchers.append(_match_builtin_family)
