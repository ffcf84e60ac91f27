"""SGLang's own program suite (``sglang.test.test_programs``) on our backends.

SGLang checks its backends by running these functions with the backend as the default
(``test/lang/test_openai_backend.py``, ``test_anthropic_backend.py``, ``test_litellm_backend.py``,
``test_vertexai_backend.py``, ``test_srt_backend.py``). Here the same functions run, with the same
arguments, on ours: each backend kind gets the functions SGLang runs on its own backend of that kind
(the OpenAI completion model those of ``gpt-3.5-turbo-instruct``, the chat model those of
``gpt-3.5-turbo`` / ``gpt-4-turbo``; Azure, which SGLang does not test, the chat model's). The wire
servers answer from :mod:`.suite_model`, a fake model that knows the suite's answers, so the
assertions SGLang makes on a real model's output hold when our backend carries prompts, stops, forks,
selections, dtype constraints, images and streams as SGLang's own would.

Not run: the ``runtime`` world (its server is a child process the fake model cannot reach;
``Runtime`` hands programs its ``RuntimeEndpoint``, which the ``sglang`` world runs);
``test_hellaswag_select`` and ``test_gen_min_new_tokens`` (they download a dataset and a tokenizer;
SGLang runs neither on an API backend).
"""

from __future__ import annotations

import pytest

from .conftest import require_sglang

require_sglang()

import sglang as sgl  # noqa: E402

try:
    from sglang.test import test_programs as suite
except ImportError as err:  # the suite imports sglang.srt.utils (torch): lock/sglang.in installs it
    pytest.skip(f"SGLang's program suite does not import here ({err}); `make test-sglang` builds a venv where it does",
                allow_module_level=True)

from tests.providers.api_helpers import PNG_1X1  # noqa: E402
from tests.providers.worlds import make_world  # noqa: E402

from . import suite_model  # noqa: E402

pytestmark = pytest.mark.timeout(120)

_INSTRUCT = [
    ("test_few_shot_qa", {}),
    ("test_select", {"check_answer": True}),
    ("test_decode_int", {}),
    ("test_decode_json", {}),
    ("test_expert_answer", {}),
    ("test_tool_use", {}),
    ("test_react", {}),
    ("test_parallel_decoding", {}),
    ("test_parallel_encoding", {}),
    ("test_stream", {}),
    ("test_completion_speculative", {}),
]
_CHAT = [
    ("test_mt_bench", {}),
    ("test_image_qa", {}),
    ("test_chat_completion_speculative", {}),
]

#: world -> the suite functions (and their arguments) SGLang runs on its backend of that kind
SUITES: dict[str, list[tuple[str, dict]]] = {
    "sglang": [
        ("test_few_shot_qa", {}),
        ("test_mt_bench", {}),
        ("test_select", {"check_answer": False}),
        ("test_decode_int", {}),
        ("test_decode_json_regex", {}),
        ("test_expert_answer", {}),
        ("test_tool_use", {}),
        ("test_parallel_decoding", {}),
        ("test_stream", {}),
        ("test_regex", {}),
    ],
    "openai-completion": _INSTRUCT,
    "openai": _CHAT,
    "azure": _CHAT,
    "anthropic": [("test_mt_bench", {}), ("test_stream", {})],
    "litellm": [("test_mt_bench", {}), ("test_stream", {})],
    "vertexai": [
        ("test_few_shot_qa", {}),
        ("test_mt_bench", {}),
        ("test_expert_answer", {}),
        ("test_parallel_decoding", {}),
        ("test_parallel_encoding", {}),
        ("test_image_qa", {}),
        ("test_stream", {}),
    ],
}

CASES = [pytest.param(w, name, kwargs, id=f"{w}-{name.removeprefix('test_')}")
         for w, runs in SUITES.items() for name, kwargs in runs]


def _answer_from_the_suite_model(world) -> None:
    server = world.server
    if world.name == "sglang":
        server.model = suite_model.answer
        return
    tokenizer = None
    if world.name == "openai-completion":  # select and gen_int steer a completion model with logit bias
        import tiktoken

        tokenizer = server.tokenizer = tiktoken.encoding_for_model(world.backend.model_name)
    server.default_reply = suite_model.reply_for(server.api, tokenizer)


@pytest.mark.parametrize("world_name, name, kwargs", CASES)
def test_sglang_suite(world_name, name, kwargs, tmp_path, monkeypatch, recwarn):
    monkeypatch.chdir(tmp_path)  # test_image_qa reads "example_image.png" from the working directory
    (tmp_path / "example_image.png").write_bytes(PNG_1X1)
    with make_world(world_name) as world:
        _answer_from_the_suite_model(world)
        previous = sgl.global_config.default_backend
        sgl.set_default_backend(world.backend)
        try:
            getattr(suite, name)(**kwargs)
        finally:
            sgl.global_config.default_backend = previous
    # Some suite functions never look at the state's error: SGLang's interpreter reports it as a warning.
    errors = [str(w.message) for w in recwarn if "Error in stream_executor" in str(w.message)]
    assert not errors, errors[0][-1500:]
