"""ProgramState mechanics against an in-memory recording backend.

The same programs run over real HTTP in test_programs.py; here the backend is a scripted double so
each rule of the state (roles, messages, images, streaming rollback, locking, fork) is checked
exactly.
"""

from __future__ import annotations

import base64
import threading
import time

import pytest

from providers import BaseBackend, ChoicesDecision, ProgramState, SamplingParams, get_chat_template
from providers.errors import StreamInterruptedError, UnsupportedOperationError
from providers.state import image_data_url, image_mime_type, load_image

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16


class Recorder(BaseBackend):
    provider = "recorder"

    def __init__(self, replies=("ok",), template="default", delay=0.0, fail_stream_after=None):
        super().__init__(get_chat_template(template))
        self.replies = list(replies)
        self.delay = delay
        self.fail_stream_after = fail_stream_after
        self.calls = []
        self.events = []

    def get_model_name(self):
        return "recorder-model"

    def begin_program(self, s):
        self.events.append(("begin", s.sid))

    def end_program(self, s):
        self.events.append(("end", s.sid))

    def commit_lazy_operations(self, s):
        self.events.append(("commit", s.text_))

    def fork_program(self, src, dst, position_ids_offset=None):
        self.events.append(("fork", src.sid, [d.sid for d in dst]))

    def _reply(self):
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def generate(self, s, sampling_params):
        self.calls.append((s.text_, [dict(m) for m in s.messages_], list(s.images_), sampling_params))
        if self.delay:
            time.sleep(self.delay)
        if sampling_params.n > 1:
            return [f"{self._reply()}{i}" for i in range(sampling_params.n)], {"n": sampling_params.n}
        return self._reply(), {"finish_reason": "stop"}

    def generate_stream(self, s, sampling_params):
        self.calls.append((s.text_, [dict(m) for m in s.messages_], list(s.images_), sampling_params))
        for i, word in enumerate(self._reply().split(" ")):
            if self.fail_stream_after is not None and i == self.fail_stream_after:
                raise StreamInterruptedError("gone", provider="recorder")
            yield (word if i == 0 else " " + word), {"finish_reason": None, "i": i}
        yield "", {"finish_reason": "stop"}

    def select(self, s, choices, temperature, choices_method):
        self.calls.append((s.text_, choices, temperature, choices_method))
        return ChoicesDecision(choices[-1], {"method": "last"})


def test_multi_turn_text_and_messages():
    b = Recorder(replies=["Paris.", "Berlin."])
    s = ProgramState(b)
    s.system("Be terse.")
    s.user("France?")
    with s.assistant():
        assert s.gen("a1", max_new_tokens=8) == "Paris."
    with s.user():
        s += "Germany?"
    with s.assistant():
        s.gen("a2")
    assert s.text_ == (
        "SYSTEM:Be terse.\nUSER:France?\nASSISTANT:Paris.\nUSER:Germany?\nASSISTANT:Berlin.\n"
    )
    assert s.messages_ == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Germany?"},
        {"role": "assistant", "content": "Berlin."},
    ]
    assert s["a1"] == "Paris." and s["a2"] == "Berlin."
    assert s.meta_info["a1"] == {"finish_reason": "stop"}
    # what the backend saw at the first gen: the open assistant turn is in text_, not in messages_
    text, messages, _, params = b.calls[0]
    assert text == "SYSTEM:Be terse.\nUSER:France?\nASSISTANT:"
    assert [m["role"] for m in messages] == ["system", "user"]
    assert params == SamplingParams(max_new_tokens=8)


def test_default_system_prompt_and_template_stop():
    b = Recorder(template="qwen")
    s = ProgramState(b)
    s.user("Hi")
    with s.assistant():
        s.gen("r")
    assert s.text_ == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
    )
    assert s.messages_[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert b.calls[0][3].stop == ("<|im_end|>",)


def test_roles_do_not_nest_and_close_on_error():
    s = ProgramState(Recorder())
    with pytest.raises(RuntimeError, match="do not nest"):
        with s.user():
            with s.assistant():
                pass
    assert s.cur_role is None
    assert s.messages_ == [{"role": "user", "content": ""}]
    with pytest.raises(ValueError, match="no role 'tool'"):
        with s.role("tool"):
            pass


def test_iadd_type_check():
    s = ProgramState(Recorder())
    with pytest.raises(TypeError, match="only add str"):
        s += 3


def test_images_interleave_in_messages(tmp_path):
    p = tmp_path / "pic.png"
    p.write_bytes(PNG)
    b = Recorder()
    s = ProgramState(b)
    with s.user():
        s += "Compare "
        s.image(p)
        s += " and "
        s.image(JPEG)
        s += "."
        assert len(s.cur_images) == 2
    png64, jpg64 = base64.b64encode(PNG).decode(), base64.b64encode(JPEG).decode()
    assert s.text_ == "USER:Compare <image> and <image>.\n"
    assert s.images_ == [(str(p), png64), ("<bytes>", jpg64)]
    assert s.cur_images == []
    assert s.messages_[0]["content"] == [
        {"type": "text", "text": "Compare "},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png64}"}},
        {"type": "text", "text": " and "},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{jpg64}"}},
        {"type": "text", "text": "."},
    ]


def test_image_inputs():
    png64 = base64.b64encode(PNG).decode()
    assert load_image(PNG) == ("<bytes>", png64)
    assert load_image(f"data:image/png;base64,{png64}") == ("<data-url>", png64)
    with pytest.raises(ValueError, match="remote URLs"):
        load_image("https://example.com/x.png")
    with pytest.raises(ValueError, match="cannot read"):
        load_image("/nonexistent/x.png")
    with pytest.raises(ValueError, match="not valid base64"):
        load_image("data:image/png;base64,@@@")
    with pytest.raises(TypeError):
        load_image(3.5)
    assert image_mime_type(base64.b64encode(b"GIF89a....").decode()) == "image/gif"
    assert image_mime_type(base64.b64encode(b"RIFF\x00\x00\x00\x00WEBPVP8 ").decode()) == "image/webp"
    assert image_mime_type("AAAA", path="x.jpg") == "image/jpeg"
    assert image_data_url("AAAA") == "data:application/octet-stream;base64,AAAA"


def test_gen_argument_errors_before_backend_call():
    b = Recorder()
    s = ProgramState(b)
    with pytest.raises(TypeError, match="max_tokens"):
        s.gen("x", max_tokens=3)
    with pytest.raises(ValueError, match="temperature"):
        s.gen("x", temperature=-1)
    with pytest.raises(TypeError, match="not both"):
        s.gen("x", sampling_params=SamplingParams(), temperature=0)
    with pytest.raises(ValueError, match="n must be 1"):
        s.gen_stream("x", n=2)
    assert b.calls == []


def test_n_greater_than_one_stores_list_and_appends_nothing():
    s = ProgramState(Recorder(replies=["v"]))
    s += "Q:"
    assert s.gen("many", n=3) == ["v0", "v1", "v2"]
    assert s["many"] == ["v0", "v1", "v2"] and s.text_ == "Q:"


def test_gen_stream_appends_deltas():
    s = ProgramState(Recorder(replies=["one two three"]))
    s += "Count:"
    deltas = list(s.gen_stream("c"))
    assert deltas == ["one", " two", " three"]
    assert s.text_ == "Count:one two three"
    assert s["c"] == "one two three"
    assert s.meta_info["c"]["finish_reason"] == "stop"


def test_gen_stream_failure_rolls_back():
    s = ProgramState(Recorder(replies=["one two three"], fail_stream_after=2))
    s += "Count:"
    got = []
    with pytest.raises(StreamInterruptedError):
        for d in s.gen_stream("c"):
            got.append(d)
    assert got == ["one", " two"]
    assert s.text_ == "Count:" and "c" not in s.variables
    s += " again"  # the state is usable again
    assert s.text_ == "Count: again"


def test_gen_stream_closed_early_keeps_text():
    s = ProgramState(Recorder(replies=["one two three"]))
    stream = s.gen_stream("c")
    assert next(stream) == "one"
    with pytest.raises(RuntimeError, match="streaming 'c'"):
        s += "x"  # the stream owns the state
    stream.close()
    assert s.text_ == "one" and s["c"] == "one"
    assert s.meta_info["c"]["finish_reason"] == "abort"
    s += "!"
    assert s.text_ == "one!"


def test_gen_stream_unsupported_backend_leaves_state_usable():
    s = ProgramState(BaseBackend())
    with pytest.raises(UnsupportedOperationError, match="BaseBackend does not support generate_stream"):
        list(s.gen_stream("x"))
    s += "fine"
    assert s.text_ == "fine"


def test_select_validation_and_result():
    b = Recorder()
    s = ProgramState(b)
    s += "Pick:"
    for bad, exc in [([], ValueError), ("ab", TypeError), (["a", "a"], ValueError), (["a", ""], ValueError)]:
        with pytest.raises(exc):
            s.select("x", bad)
    assert b.calls == []
    assert s.select("x", ["red", "blue"]) == "blue"
    assert s.text_ == "Pick:blue" and s["x"] == "blue" and s.meta_info["x"] == {"method": "last"}


def test_fork_copies_independently():
    b = Recorder(replies=["A", "B"])
    s = ProgramState(b)
    s.user("Hi")
    s.variables["keep"] = 1
    kids = s.fork(2)
    assert [k.text_ for k in kids] == [s.text_, s.text_]
    assert len({k.sid for k in kids} | {s.sid}) == 3
    with kids[0].assistant():
        kids[0].gen("r")
    assert kids[0]["r"] == "A" and "r" not in kids[1] and "r" not in s
    assert kids[1].messages_ == s.messages_ and kids[0].messages_ != s.messages_
    kinds = [e[0] for e in b.events]
    assert kinds == ["begin", "commit", "fork"]
    assert b.events[2] == ("fork", s.sid, [k.sid for k in kids])
    with pytest.raises(ValueError):
        s.fork(0)


def test_getitem_error_lists_names():
    s = ProgramState(Recorder())
    s.gen("a")
    with pytest.raises(KeyError, match="variables: a"):
        s["b"]


def test_close_is_idempotent_and_blocks_use():
    b = Recorder()
    with ProgramState(b) as s:
        pass
    s.close()
    assert [e[0] for e in b.events] == ["begin", "end"]
    with pytest.raises(RuntimeError, match="closed"):
        s += "x"


def test_concurrent_gens_on_one_state_are_serialized():
    b = Recorder(replies=["x"], delay=0.05)
    s = ProgramState(b)
    threads = [threading.Thread(target=s.gen, args=(f"v{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert s.text_ == "xxxx"
    # each call saw the text of the calls before it: prompts are "", "x", "xx", "xxx"
    assert sorted(c[0] for c in b.calls) == ["", "x", "xx", "xxx"]


def test_repr_is_short():
    s = ProgramState(Recorder())
    s += "secret prompt text"
    assert "secret prompt text" not in repr(s)


def test_image_content_decides_never_the_file_name(tmp_path):
    # A text file named like an image was sent as image/png (the MIME type guessed from the name).
    fake = tmp_path / "notes.png"
    fake.write_text("just some notes, not a picture\n")
    s = ProgramState(Recorder())
    with s.user():
        with pytest.raises(ValueError, match="notes.png.* is not an image"):
            s.image(fake)
        with pytest.raises(ValueError, match="bytes given is not an image"):
            s.image(b"abc")
        with pytest.raises(ValueError, match="payload is not an image"):
            s.image("data:image/png;base64," + base64.b64encode(b"plain text").decode())
    assert s.images_ == [] and "<image>" not in s.text_
    for data, mime in [(PNG, "image/png"), (JPEG, "image/jpeg"), (b"GIF89a" + bytes(10), "image/gif"),
                       (b"II*\x00" + bytes(10), "image/tiff"), (bytes(4) + b"ftypavif" + bytes(8), "image/avif")]:
        assert load_image(data)[1] == base64.b64encode(data).decode()
        assert image_mime_type(base64.b64encode(data).decode(), path="x.txt") == mime
