"""Chat templates: hand-written expected prompts, registry and model-path matching."""

from __future__ import annotations

import pytest

from providers.chat_template import (
    ChatTemplate,
    chat_template_names,
    get_chat_template,
    get_chat_template_by_model_path,
    register_chat_template,
    register_chat_template_matching_function,
)

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Bye"},
]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("default", "SYSTEM:Be brief.\nUSER:Hi\nASSISTANT:Hello\nUSER:Bye\n"),
        ("claude", "Be brief.\n\nHuman: Hi\n\nAssistant:Hello\n\nHuman: Bye"),
        (
            "chatml",
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n",
        ),
        (
            "llama-2-chat",
            "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]Hello </s><s>[INST] Bye [/INST]",
        ),
        (
            "llama-3-instruct",
            "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>",
        ),
        ("mistral", "[INST] Be brief.\n\nHi [/INST]Hello</s>[INST] Bye [/INST]"),
        (
            "gemma-it",
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n",
        ),
        ("deepseek-v3", "Be brief.<｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜><｜User｜>Bye"),
    ],
)
def test_prompts(name, expected):
    assert get_chat_template(name).get_prompt(CONV) == expected


def test_system_merge_only_for_leading_system():
    t = get_chat_template("llama-2-chat")
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    assert t.get_prompt(msgs) == "[INST] Hi [/INST]Yo </s><s>"


def test_unknown_role_is_rejected():
    with pytest.raises(ValueError, match="no role 'tool'"):
        get_chat_template("chatml").get_prefix_and_suffix("tool", [])


@pytest.mark.parametrize(
    "path, name",
    [
        ("meta-llama/Llama-2-7b-chat-hf", "llama-2-chat"),
        ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama-3-instruct"),
        ("/root/.cache/huggingface/hub/models--meta-llama--Llama-3.2-1B-Instruct/snapshots/abc", "llama-3-instruct"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mistral"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen"),
        ("Qwen/Qwen3-8B", "qwen"),
        ("Qwen/Qwen2.5-7B", "default"),  # a base model has no chat template
        ("NousResearch/Nous-Hermes-2-Mistral-7B-DPO", "chatml"),
        ("google/gemma-2-9b-it", "gemma-it"),
        ("google/gemma-2-9b", "default"),
        ("deepseek-ai/DeepSeek-V3", "deepseek-v3"),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "deepseek-v3"),
        ("deepseek-ai/DeepSeek-V3-Base", "default"),
        ("claude-3-5-sonnet", "claude"),
        ("some/unknown-model", "default"),
        ("meta-llama/Llama-2-7b-hf", "default"),
    ],
)
def test_model_path_matching(path, name):
    assert get_chat_template_by_model_path(path).name == name


def test_registry_rules():
    assert {"default", "chatml", "qwen", "llama-2-chat", "llama-3-instruct", "mistral", "gemma-it",
            "deepseek-v3", "claude"} <= set(chat_template_names())
    with pytest.raises(ValueError, match="unknown chat template 'nope'"):
        get_chat_template("nope")
    with pytest.raises(KeyError, match="unknown chat template 'nope'"):  # a registry lookup, as in SGLang
        get_chat_template("nope")
    # re-registering a name replaces the template (SGLang's rule), so registering in a test twice works
    first = register_chat_template(ChatTemplate(name="test-twice-xyz", role_prefix_and_suffix={"user": ("a", "b")}))
    second = register_chat_template(ChatTemplate(name="test-twice-xyz", role_prefix_and_suffix={"user": ("c", "d")}))
    assert get_chat_template("test-twice-xyz") is second is not first
    with pytest.raises(TypeError):
        register_chat_template("chatml")


def test_user_matching_function_wins():
    custom = register_chat_template(
        ChatTemplate(name="test-custom-xyz", role_prefix_and_suffix={"user": ("<u>", "</u>")}),
    )

    @register_chat_template_matching_function
    def match(path):
        return custom if "xyz-special" in path else None

    assert get_chat_template_by_model_path("org/xyz-special-llama-3-instruct").name == "test-custom-xyz"
    assert get_chat_template_by_model_path("org/llama-3-instruct").name == "llama-3-instruct"
