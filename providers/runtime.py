"""Runtime: launch an SGLang-compatible server as a child process and talk to it.

::

    with Runtime("Qwen/Qwen2.5-7B-Instruct") as rt:      # python -m sglang.launch_server ...
        s = ProgramState(rt.endpoint)
        ...
        rt.generate("Hello", {"max_new_tokens": 8})

Decisions where the issue is silent:

* ``launch_command`` may be a string (split like a shell would, nothing is run through a shell) or
  an argument list; ``{model_path}``, ``{host}``, ``{port}`` and ``{api_key}`` in it are replaced
  (only those names -- other braces stay as they are). A command with none of those placeholders is
  the server program alone: the default's arguments are appended to it (``--model-path M --host H
  --port P``, plus ``--api-key K`` when a key is set), as for ``sglang.launch_server``. A command
  with some placeholders but not ``{port}`` needs a fixed ``port=`` (the server has to learn the
  port somehow). The default command is ``<this python> -m sglang.launch_server`` with those
  arguments.
* The port, when not given, is a free one on ``host`` found by binding port 0 just before launch.
* The child runs in its own session (so its own process group) with stdout+stderr going to a
  temporary log file; readiness is polled on ``GET /health_generate`` (``/health``, then
  ``/get_model_info``, the documented protocol, if the server lacks it) with short, growing sleeps until ``start_timeout``. A child that exits, never becomes
  ready, or rejects the API key raises :class:`~providers.errors.LaunchError` with the last 40
  lines of its log (keys redacted), and is killed.
* ``shutdown`` sends SIGTERM to the whole process group, waits up to 10 s, then SIGKILL; it is
  idempotent, and also runs when the object is garbage-collected and at interpreter exit (a
  ``weakref.finalize``, which does not keep the object alive). The log file is deleted then.
* ``generate`` takes ``sampling_params`` as a :class:`SamplingParams` (validated and mapped) or a
  dict (sent as is: SGLang has server-side parameters this package does not model).
* ``async_generate`` is an async generator of text deltas with the endpoint's retry rule (retried
  only before the first delta); ``agenerate`` is the async twin of ``generate``. Both run on the
  endpoint's ``httpx.AsyncClient`` of the running loop (``await rt.endpoint.aclose()`` closes it);
  the program-level async operations are the endpoint's (``rt.endpoint.agenerate`` ... or an
  ``AsyncProgramState(rt.endpoint)``).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from .errors import LaunchError, Secret, redact
from .runtime_endpoint import DEFAULT_TIMEOUT, RuntimeEndpoint, to_sglang
from .sampling import SamplingParams

__all__ = ["Runtime"]

_LOG_TAIL_LINES = 40
_KILL_WAIT = 10.0


#: What the default command passes (and what a placeholder-free launch_command gets appended).
_DEFAULT_ARGS = ("--model-path", "{model_path}", "--host", "{host}", "--port", "{port}")


class Runtime:
    """An SGLang-compatible server in a child process, with a :class:`RuntimeEndpoint` to it.

    Attributes: ``url``, ``endpoint``, ``pid``, ``command`` (redacted), ``log_path``.
    """

    def __init__(
        self,
        model_path: str,
        *,
        launch_command: str | Sequence[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        api_key: str | None = None,
        start_timeout: float = 600.0,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        if not isinstance(model_path, str) or not model_path:
            raise ValueError(f"model_path must be a non-empty str, got {model_path!r}")
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty str, got {host!r}")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            raise ValueError(f"port must be an int in 1..65535, got {port!r}")
        if isinstance(start_timeout, bool) or not isinstance(start_timeout, (int, float)) or start_timeout <= 0:
            raise ValueError(f"start_timeout must be > 0 seconds, got {start_timeout!r}")
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            raise ValueError("api_key must be a non-empty str or None")
        self.model_path = model_path
        self.endpoint: RuntimeEndpoint | None = None
        self._api_key = Secret(api_key) if api_key else None
        self._finalizer: Any = None
        argv, default_args = self._command(launch_command, model_path, host, port)
        if default_args and api_key:
            argv += ["--api-key", "{api_key}"]
        self.port = port if port is not None else _free_port(host)
        argv = [_fill(arg, model_path, host, self.port, api_key) for arg in argv]
        self.command = redact(shlex.join(argv), [api_key])
        connect_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        self.url = f"http://[{connect_host}]:{self.port}" if ":" in connect_host else f"http://{connect_host}:{self.port}"

        fd, self.log_path = tempfile.mkstemp(prefix="kernelstack-runtime-", suffix=".log")
        try:
            with os.fdopen(fd, "wb") as log:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as err:
            os.unlink(self.log_path)
            raise LaunchError(f"cannot start {self.command!r}: {err}", provider="sglang") from None
        self.pid = self._proc.pid
        self._finalizer = weakref.finalize(self, _stop_process_group, self._proc, self.log_path)
        try:
            self._wait_ready(start_timeout)
            self.endpoint = RuntimeEndpoint(self.url, api_key=api_key, timeout=timeout)
        except BaseException:
            self.shutdown()
            raise

    # ------------------------------------------------------------------------------ launch

    @staticmethod
    def _command(
        launch_command: str | Sequence[str] | None, model_path: str, host: str, port: int | None
    ) -> tuple[list[str], bool]:
        """(argv with placeholders, whether the default's arguments are in it)."""
        if launch_command is None:
            return [sys.executable, "-m", "sglang.launch_server", *_DEFAULT_ARGS], True
        if isinstance(launch_command, str):
            argv = shlex.split(launch_command)
        elif isinstance(launch_command, Sequence) and all(isinstance(a, str) for a in launch_command):
            argv = list(launch_command)
        else:
            raise TypeError("launch_command must be a str or a sequence of str")
        if not argv:
            raise ValueError("launch_command is empty")
        if not any(p in arg for arg in argv for p in ("{model_path}", "{host}", "{port}", "{api_key}")):
            # the server program alone: give it the default's arguments
            return argv + list(_DEFAULT_ARGS), True
        if port is None and not any("{port}" in arg for arg in argv):
            raise ValueError("launch_command has no {port} placeholder: pass port= so the server and client agree")
        return argv, False

    def _wait_ready(self, start_timeout: float) -> None:
        deadline = time.monotonic() + start_timeout
        headers = {"Authorization": f"Bearer {self._api_key.get()}"} if self._api_key else {}
        # SGLang's health routes first; a server without them (the documented protocol alone) is ready when
        # /get_model_info answers. A 404 moves to the next route.
        routes, sleep = ["/health_generate", "/health", "/get_model_info"], 0.05
        path = routes[0]
        with httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(5.0, connect=1.0)) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise LaunchError(
                        f"the server exited with code {code} before it was ready\n"
                        f"command: {self.command}\n{self._log_tail()}",
                        provider="sglang",
                    )
                try:
                    response = client.get(path)
                except httpx.HTTPError:
                    pass
                else:
                    if response.status_code == 200:
                        return
                    if response.status_code == 404 and path != routes[-1]:
                        path = routes[routes.index(path) + 1]
                        continue
                    if response.status_code in (401, 403):
                        raise LaunchError(
                            f"the server rejected the API key (HTTP {response.status_code})\n{self._log_tail()}",
                            provider="sglang",
                            status=response.status_code,
                        )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LaunchError(
                        f"the server was not ready within {start_timeout:g} s\n"
                        f"command: {self.command}\n{self._log_tail()}",
                        provider="sglang",
                    )
                time.sleep(min(sleep, remaining))
                sleep = min(sleep * 1.5, 1.0)

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                lines = f.read().decode("utf-8", "replace").splitlines()[-_LOG_TAIL_LINES:]
        except OSError:
            return "(no server log)"
        body = "\n".join(lines) if lines else "(empty)"
        return f"server log (last {len(lines)} lines):\n{body}"

    # -------------------------------------------------------------------------- requests

    def _payload(
        self,
        prompt: str | list[str],
        sampling_params: SamplingParams | dict[str, Any] | None,
        return_logprob: bool,
        logprob_start_len: int | None,
        top_logprobs_num: int | None,
        lora_path: str | list[str] | None,
    ) -> dict[str, Any]:
        if isinstance(prompt, str):
            pass
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            pass
        else:
            raise TypeError("prompt must be a str or a non-empty list of str")
        top: dict[str, Any] = {}
        if sampling_params is None:
            sampling: dict[str, Any] = {}
        elif isinstance(sampling_params, SamplingParams):
            sampling, top = to_sglang(sampling_params)
        elif isinstance(sampling_params, dict):
            sampling = dict(sampling_params)
        else:
            raise TypeError(f"sampling_params must be a SamplingParams, a dict or None, got {type(sampling_params).__name__}")
        payload: dict[str, Any] = {"text": prompt, "sampling_params": sampling, **top}
        if return_logprob:
            payload["return_logprob"] = True
        if logprob_start_len is not None:
            payload["logprob_start_len"] = logprob_start_len
        if top_logprobs_num is not None:
            payload["top_logprobs_num"] = top_logprobs_num
        if lora_path is not None:
            payload["lora_path"] = lora_path
        return payload

    def _endpoint(self) -> RuntimeEndpoint:
        if self.endpoint is None:
            raise RuntimeError("this Runtime was shut down")
        return self.endpoint

    def generate(
        self,
        prompt: str | list[str],
        sampling_params: SamplingParams | dict[str, Any] | None = None,
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        lora_path: str | list[str] | None = None,
    ) -> Any:
        """``POST /generate``; returns the parsed response (a list for a list of prompts)."""
        payload = self._payload(prompt, sampling_params, return_logprob, logprob_start_len, top_logprobs_num, lora_path)
        return self._endpoint().request("POST", "/generate", json=payload)

    async def agenerate(
        self,
        prompt: str | list[str],
        sampling_params: SamplingParams | dict[str, Any] | None = None,
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        lora_path: str | list[str] | None = None,
    ) -> Any:
        """The async twin of :meth:`generate`."""
        payload = self._payload(prompt, sampling_params, return_logprob, logprob_start_len, top_logprobs_num, lora_path)
        return await self._endpoint().arequest("POST", "/generate", json=payload)

    async def async_generate(
        self,
        prompt: str,
        sampling_params: SamplingParams | dict[str, Any] | None = None,
        lora_path: str | None = None,
    ) -> AsyncIterator[str]:
        """Stream text deltas for ``prompt`` (no delta is ever repeated)."""
        if not isinstance(prompt, str):
            raise TypeError("async_generate streams one prompt: prompt must be a str")
        payload = self._payload(prompt, sampling_params, False, None, None, lora_path)
        payload["stream"] = True
        endpoint = self._endpoint()
        stream = endpoint.retry.astream(lambda: _text_deltas(endpoint, payload), provider="sglang")
        try:
            async for delta in stream:
                yield delta
        finally:
            await stream.aclose()

    def encode(self, prompt: str | list[str]) -> Any:
        """``POST /encode`` (embedding models); returns the parsed response."""
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(p, str) for p in prompt))):
            raise TypeError("prompt must be a str or a list of str")
        return self._endpoint().request("POST", "/encode", json={"text": prompt})

    def get_server_info(self) -> dict[str, Any]:
        return self._endpoint().get_server_info()

    def get_tokenizer(self):
        """The Hugging Face tokenizer of the served model (needs ``transformers``)."""
        try:
            from transformers import AutoTokenizer
        except ImportError as err:
            raise ImportError("Runtime.get_tokenizer needs transformers: pip install transformers") from err
        info = self._endpoint().model_info
        return AutoTokenizer.from_pretrained(info.get("tokenizer_path") or self.model_path)

    def cache_prefix(self, prefix: str) -> None:
        self._endpoint().cache_prefix(prefix)

    def start_profile(self) -> None:
        self._endpoint().start_profile()

    def stop_profile(self) -> None:
        self._endpoint().stop_profile()

    # ---------------------------------------------------------------------------- lifetime

    @property
    def running(self) -> bool:
        return self._proc.poll() is None if hasattr(self, "_proc") else False

    def shutdown(self) -> None:
        """Stop the server (its whole process group) and close the endpoint; idempotent."""
        if self.endpoint is not None:
            self.endpoint.shutdown()
            self.endpoint = None
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def __del__(self) -> None:
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()

    def __repr__(self) -> str:
        return f"Runtime(model_path={self.model_path!r}, url={self.url!r}, pid={self.pid}, running={self.running})"


async def _text_deltas(endpoint: RuntimeEndpoint, payload: dict[str, Any]) -> AsyncIterator[str]:
    """The non-empty text deltas of one streamed ``/generate`` (the endpoint's decoder and transport)."""
    events = endpoint._araw_deltas(payload)
    try:
        async for delta, _meta in events:
            if delta:
                yield delta
    finally:
        await events.aclose()


def _fill(arg: str, model_path: str, host: str, port: int, api_key: str | None) -> str:
    if "{api_key}" in arg and api_key is None:
        raise ValueError("launch_command uses {api_key} but no api_key was given")
    values = {"{model_path}": model_path, "{host}": host, "{port}": str(port), "{api_key}": api_key or ""}
    for placeholder, value in values.items():
        arg = arg.replace(placeholder, value)
    return arg


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _stop_process_group(proc: subprocess.Popen, log_path: str) -> None:
    """SIGTERM the child's process group, SIGKILL what is left after a grace period; drop the log."""
    try:
        pgid = proc.pid  # the child leads its own session, so its pid is the group id
        if proc.poll() is None:
            _killpg(pgid, signal.SIGTERM)
            try:
                proc.wait(_KILL_WAIT)
            except subprocess.TimeoutExpired:
                pass
        _killpg(pgid, signal.SIGKILL)  # stragglers: grandchildren, or a child ignoring SIGTERM
        try:
            proc.wait(_KILL_WAIT)
        except subprocess.TimeoutExpired:
            pass
    finally:
        try:
            os.unlink(log_path)
        except OSError:
            pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
