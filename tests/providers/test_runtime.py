"""Runtime: the loopback SGLang server launched as a real child process."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from providers import LaunchError, ProgramState, Runtime, SamplingParams, StreamInterruptedError

WIRE = Path(__file__).with_name("wire_sglang.py")
ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-runtime-SECRET-abcdef0123456789"
MODEL = "loopback/Qwen2.5-0.5B-Instruct"


def command(*extra: str) -> list[str]:
    return [sys.executable, str(WIRE), "--model-path", "{model_path}", "--host", "{host}", "--port", "{port}",
            "--lifetime", "60", *extra]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


@pytest.fixture(scope="module")
def runtime():
    rt = Runtime(MODEL, launch_command=command("--api-key", "{api_key}"), api_key=KEY, start_timeout=30)
    yield rt
    rt.shutdown()


def test_endpoint_and_program(runtime):
    assert runtime.url == f"http://127.0.0.1:{runtime.port}"
    assert runtime.endpoint.get_model_name() == MODEL
    assert runtime.endpoint.get_chat_template().name == "qwen"
    s = ProgramState(runtime.endpoint)
    s.user("Repeat: from a child process")
    with s.assistant():
        s.gen("a", max_new_tokens=8)
    assert s["a"] == "from a child process"


def test_generate_variants(runtime):
    out = runtime.generate("Repeat: hi there\n", {"max_new_tokens": 1})
    assert out["text"] == "hi" and out["meta_info"]["finish_reason"]["type"] == "length"
    out = runtime.generate("Repeat: x\n", SamplingParams(dtype=int), return_logprob=True,
                           logprob_start_len=0, lora_path="adapters/a")
    assert out["text"] == "42"
    assert out["meta_info"]["lora_path"] == "adapters/a"
    assert out["meta_info"]["input_token_logprobs"][0][0] is None
    outs = runtime.generate(["Repeat: a\n", "Repeat: b\n"])
    assert [o["text"] for o in outs] == ["a", "b"]
    with pytest.raises(TypeError, match="sampling_params"):
        runtime.generate("x", sampling_params=3)
    with pytest.raises(TypeError, match="prompt"):
        runtime.generate(["x", 1])


def test_async_generate(runtime):
    async def collect():
        return [d async for d in runtime.async_generate("Repeat: streaming in async land\n", {"max_new_tokens": 9})]

    assert asyncio.run(collect()) == ["streaming", " in", " async", " land"]


def test_agenerate_and_async_programs_on_the_runtime(runtime):
    """Runtime.agenerate is generate's async twin; programs use the endpoint's async operations."""
    from providers import AsyncProgramState

    async def main():
        one = await runtime.agenerate("Repeat: async twin\n", SamplingParams(max_new_tokens=4))
        batch = await runtime.agenerate(["Repeat: a\n", "Repeat: b c\n"], {"max_new_tokens": 4})

        async def program(i):
            s = AsyncProgramState(runtime.endpoint)
            s.user(f"Repeat: p{i} x")
            with s.assistant():
                await s.gen("a", max_new_tokens=8)
            return s["a"]

        answers = await asyncio.gather(*(program(i) for i in range(16)))
        await runtime.endpoint.aclose()
        return one, batch, answers

    one, batch, answers = asyncio.run(main())
    assert one["text"] == "async twin"
    assert [r["text"] for r in batch] == ["a", "b c"]
    assert answers == [f"p{i} x" for i in range(16)]


def test_encode_info_cache_profile(runtime):
    emb = runtime.encode("one two three")
    assert emb["meta_info"]["prompt_tokens"] == 3 and len(emb["embedding"]) == 3
    assert runtime.get_server_info()["model_path"] == MODEL
    runtime.cache_prefix("A shared prefix for caching.")
    out = runtime.generate("A shared prefix for caching. Repeat: y\n")
    assert out["meta_info"]["cached_tokens"] == 5
    runtime.start_profile()
    runtime.stop_profile()


def test_api_key_not_in_repr_or_command(runtime):
    assert KEY not in repr(runtime) and KEY not in runtime.command and KEY not in repr(runtime.endpoint)
    assert "[REDACTED]" in runtime.command


def test_get_tokenizer(runtime, monkeypatch):
    calls = []
    fake = types.ModuleType("transformers")
    fake.AutoTokenizer = types.SimpleNamespace(from_pretrained=lambda path: calls.append(path) or "tok")
    monkeypatch.setitem(sys.modules, "transformers", fake)
    assert runtime.get_tokenizer() == "tok" and calls == [MODEL]
    monkeypatch.setitem(sys.modules, "transformers", None)  # not installed
    with pytest.raises(ImportError, match="transformers"):
        runtime.get_tokenizer()


# ----------------------------------------------------------------------------- lifecycle


def test_default_command_is_sglang_launch_server(tmp_path, monkeypatch):
    # A stand-in `sglang` package whose launch_server is the loopback server.
    pkg = tmp_path / "sglang"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "launch_server.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.providers.wire_sglang import main\nsys.exit(main())\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    with Runtime("loopback/default-cmd", api_key=KEY, start_timeout=30) as rt:
        argv = rt.command.split()
        assert argv[:3] == [sys.executable, "-m", "sglang.launch_server"]
        assert argv[3:] == ["--model-path", "loopback/default-cmd", "--host", "127.0.0.1", "--port", str(rt.port),
                            "--api-key", "[REDACTED]"]
        assert rt.generate("Repeat: default\n")["text"] == "default"
        pid = rt.pid
    assert wait_dead(pid)


def test_shutdown_kills_process_group_and_is_idempotent():
    rt = Runtime(MODEL, launch_command=command("--spawn-grandchild"), start_timeout=30)
    log = Path(rt.log_path).read_text()
    grandchild = int(log.split("grandchild pid ")[1].split()[0])
    assert alive(rt.pid) and alive(grandchild)
    rt.shutdown()
    rt.shutdown()
    assert wait_dead(rt.pid) and wait_dead(grandchild)
    assert not rt.running and not Path(rt.log_path).exists()
    with pytest.raises(RuntimeError, match="shut down"):
        rt.generate("x")


def test_garbage_collection_stops_the_server():
    def start():
        return Runtime(MODEL, launch_command=command(), start_timeout=30).pid

    pid = start()  # the Runtime is unreachable once start() returns
    gc.collect()
    assert wait_dead(pid)


def test_interpreter_exit_stops_the_server():
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from providers import Runtime
        rt = Runtime("m", launch_command={command()!r}, start_timeout=30)
        print(rt.pid, flush=True)
        keep = rt  # still referenced at exit: only the atexit hook can stop it
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert wait_dead(int(proc.stdout.split()[0]))


def test_crash_on_start_raises_with_log_tail():
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as info:
        Runtime(MODEL, launch_command=command("--crash-on-start", "--api-key", "{api_key}"), api_key=KEY,
                start_timeout=30)
    msg = str(info.value)
    assert "exited with code 3" in msg and "CUDA out of memory (simulated)" in msg
    assert KEY not in msg
    assert time.monotonic() - t0 < 15


def test_never_ready_times_out():
    with pytest.raises(LaunchError, match=r"not ready within 1\.5 s") as info:
        Runtime(MODEL, launch_command=command("--never-ready"), start_timeout=1.5)
    assert "serving on" in str(info.value)  # the log tail


def test_ready_on_the_documented_protocol_alone():
    """A server without SGLang's /health routes is ready once /get_model_info answers."""
    rt = Runtime(MODEL, launch_command=command("--no-health"), start_timeout=30)
    try:
        assert rt.endpoint.get_model_name() == MODEL
    finally:
        rt.shutdown()


def test_command_without_placeholders_gets_the_default_arguments():
    """A bare server program (no placeholders) is run like sglang.launch_server: --model-path, --host,
    --port (and --api-key) are appended."""
    rt = Runtime(MODEL, launch_command=[sys.executable, str(WIRE)], api_key=KEY, start_timeout=30)
    try:
        assert rt.command.endswith(f"--model-path {MODEL} --host 127.0.0.1 --port {rt.port} --api-key [REDACTED]")
        assert KEY not in rt.command
        assert rt.endpoint.get_model_name() == MODEL
    finally:
        rt.shutdown()


def test_wrong_api_key_is_reported():
    with pytest.raises(LaunchError, match="rejected the API key"):
        Runtime(MODEL, launch_command=[*command(), "--api-key", "server-side-key-123"], api_key="client-key-456",
                start_timeout=30)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"model_path": ""}, ValueError, "model_path"),
        ({"model_path": "m", "port": 70000}, ValueError, "port"),
        ({"model_path": "m", "start_timeout": 0}, ValueError, "start_timeout"),
        ({"model_path": "m", "launch_command": "python -m server --model {model_path}"}, ValueError, "{port}"),
        ({"model_path": "m", "launch_command": ["srv", "--port", "{port}", "--key", "{api_key}"]}, ValueError, "api_key"),
        ({"model_path": "m", "launch_command": 5}, TypeError, "launch_command"),
        ({"model_path": "m", "launch_command": ["/no/such/binary-xyz", "{port}"]}, LaunchError, "cannot start"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Runtime(**kwargs)


def test_async_generate_interrupted_stream_is_not_restarted():
    # The server dies after the first delta: the stream raises, nothing is repeated or restarted.
    rt = Runtime(MODEL, launch_command=command("--stream-delay", "0.3"), start_timeout=30)
    try:
        async def run():
            got = []
            with pytest.raises(StreamInterruptedError):
                async for delta in rt.async_generate("Repeat: a b c d\n"):
                    got.append(delta)
                    rt._proc.kill()
            return got

        assert asyncio.run(run()) == ["a"]
    finally:
        rt.shutdown()
