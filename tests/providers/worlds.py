"""One backend kind with its loopback wire server: ours, SGLang's own where it has one, and how to
make the server answer what a test expects. Used by the shared provider suite (``test_contract.py``)
and by ``tests/sglang_frontend``."""

from __future__ import annotations

import base64
import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from providers.messages import parse_data_url
from providers.retry import RetryPolicy

from .wire_anthropic import AnthropicServer
from .wire_gemini import GeminiServer
from .wire_openai import OpenAIServer
from .wire_sglang import SGLangServer

KEY = "sk-sglang-frontend-SECRET-0123456789"
TOKEN = "ya29.sglang-frontend-token-0123456789"
WIRE_SGLANG = Path(__file__).with_name("wire_sglang.py")

FAST = RetryPolicy(max_retries=1, initial_delay=0.01, max_delay=0.05)

WORLDS = ["sglang", "runtime", "openai", "openai-completion", "azure", "anthropic", "litellm", "vertexai"]


@dataclass
class World:
    name: str
    server: Any  # the wire server (None for "runtime": it runs in the child process)
    backend: Any  # ours
    theirs: Callable[[], Any] | None = None  # SGLang's own backend on the same server, if it has one
    why_not_theirs: str = ""
    prompt_driven: bool = False  # the server model answers from the prompt (SGLang's), not from a queue
    scores_choices: bool = False  # select scores choices with logprobs (the choices method decides)
    regex: bool = False
    images: bool = True
    closers: list[Callable[[], None]] = field(default_factory=list)

    def expect(self, *texts: str) -> None:
        """The server's next answers (in order); nothing to do for a prompt-driven server."""
        if not self.prompt_driven:
            self.server.replies.clear()  # a request refused before it was sent leaves its reply behind
            self.server.reply(*texts)

    def expect_choice(self, choice: str) -> None:
        if self.name == "vertexai":
            self.server.enum_pick = lambda values: choice  # enum mode: the server picks from the schema
        elif not self.prompt_driven:
            self.expect(choice)

    def sent_image(self) -> tuple[str | None, str] | None:
        """``(mime type or None, base64)`` of the image in the last request, as the server saw it."""
        if self.server is None:
            return None
        body = self.server.last.json
        if self.name == "sglang":
            data = body["image_data"]
            return None, data if isinstance(data, str) else data[0]
        if self.name == "anthropic":
            for message in body["messages"]:
                for block in message["content"] if isinstance(message["content"], list) else []:
                    if block.get("type") == "image":
                        return block["source"]["media_type"], block["source"]["data"]
        elif self.name == "vertexai":
            for content in body["contents"]:
                for part in content["parts"]:
                    if "inlineData" in part:
                        blob = part["inlineData"]
                        # google-genai writes the bytes url-safe base64: compare them as standard base64
                        data = base64.b64encode(base64.urlsafe_b64decode(blob["data"])).decode()
                        return blob.get("mimeType") or blob.get("mime_type"), data
        else:
            for message in body["messages"]:
                for part in message["content"] if isinstance(message["content"], list) else []:
                    if part.get("type") == "image_url":
                        return parse_data_url(part["image_url"]["url"])
        raise AssertionError(f"no image in the last request: {body}")


@contextlib.contextmanager
def make_world(name: str) -> Iterator[World]:
    with contextlib.ExitStack() as stack:
        world = _build(name, stack)
        try:
            yield world
        finally:
            for close in world.closers:
                close()


def _build(name: str, stack: contextlib.ExitStack) -> World:
    import providers

    if name == "sglang":
        srv = stack.enter_context(SGLangServer())
        return World(name, srv, providers.RuntimeEndpoint(srv.url, retry=FAST), theirs=lambda: _sgl("runtime_endpoint",
                     "RuntimeEndpoint")(srv.url), prompt_driven=True, scores_choices=True, regex=True)
    if name == "runtime":
        rt = providers.Runtime(
            "loopback/llama-3-8b-instruct",
            launch_command=[sys.executable, str(WIRE_SGLANG), "--model-path", "{model_path}", "--host", "{host}",
                            "--port", "{port}", "--lifetime", "120"],
            start_timeout=60,
        )
        stack.callback(rt.shutdown)
        return World(name, None, rt, why_not_theirs=(
            "sglang.Runtime launches SGLang's own server (the GPU stack); for a program it only hands over its "
            "`.endpoint`, which is what ours does"), prompt_driven=True, scores_choices=True, regex=True)
    if name in ("openai", "openai-completion", "azure", "litellm"):
        srv = stack.enter_context(OpenAIServer(api_key=KEY))
        if name == "openai":
            ours = providers.OpenAI("gpt-4o-mini", api_key=KEY, base_url=srv.url + "/v1", max_retries=1)
            theirs = lambda: _sgl("openai", "OpenAI")("gpt-4o-mini", api_key=KEY, base_url=srv.url + "/v1",  # noqa: E731
                                                       max_retries=1)
        elif name == "openai-completion":
            ours = providers.OpenAI("gpt-3.5-turbo-instruct", api_key=KEY, base_url=srv.url + "/v1", max_retries=1)
            theirs = lambda: _sgl("openai", "OpenAI")("gpt-3.5-turbo-instruct", api_key=KEY,  # noqa: E731
                                                       base_url=srv.url + "/v1", max_retries=1)
        elif name == "azure":
            azure = {"api_key": KEY, "azure_endpoint": srv.url, "api_version": "2024-10-21", "max_retries": 1}
            ours = providers.AzureOpenAI("my-deployment", **azure)
            theirs = lambda: _sgl("openai", "OpenAI")("my-deployment", is_azure=True, **azure)  # noqa: E731
        else:
            ours = providers.LiteLLM("openai/gpt-4o-mini", api_key=KEY, base_url=srv.url + "/v1", retry_policy=FAST)
            theirs = lambda: _sgl("litellm", "LiteLLM")("openai/gpt-4o-mini", api_key=KEY,  # noqa: E731
                                                         base_url=srv.url + "/v1")
        world = World(name, srv, ours, theirs=theirs, images=name != "openai-completion")
        world.closers.append(ours.shutdown)
        return world
    if name == "anthropic":
        srv = stack.enter_context(AnthropicServer(api_key=KEY))
        ours = providers.Anthropic("claude-loopback-1", api_key=KEY, base_url=srv.url, max_retries=1)
        world = World(name, srv, ours, theirs=lambda: _sgl("anthropic", "Anthropic")(
            "claude-loopback-1", api_key=KEY, base_url=srv.url, max_retries=1))
        world.closers.append(ours.shutdown)
        return world
    if name == "vertexai":
        from google.oauth2.credentials import Credentials

        srv = stack.enter_context(GeminiServer(token=TOKEN))
        ours = providers.VertexAI("gemini-2.5-flash", project="proj-1", location="us-central1",
                                  credentials=Credentials(token=TOKEN), base_url=srv.url, retry_policy=FAST)
        world = World(name, srv, ours, why_not_theirs=(
            "SGLang's VertexAI backend needs the `vertexai` SDK (google-cloud-aiplatform) and reaches Google "
            "only: vertexai.init(project=GCP_PROJECT_ID) with no endpoint override, so it cannot run on a "
            "loopback server"))
        world.closers.append(ours.shutdown)
        return world
    raise ValueError(name)


def _sgl(module: str, cls: str):
    import importlib

    return getattr(importlib.import_module(f"sglang.lang.backend.{module}"), cls)
