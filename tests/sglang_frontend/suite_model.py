"""A fake model that knows the answers to the questions of SGLang's own program suite.

``sglang.test.test_programs`` asserts on what a real model says (the capital of Japan, 24 hours a day,
the founder of Linux...). The wire servers of ``tests/providers`` answer from a queue, which cannot serve
forks and batches whose requests arrive in any order; this model answers from the prompt instead.

Each rule is an *anchor* (text the prompt contains) and what a model writes after it. For a prompt, the
rule whose anchor occurs last wins, provided what the prompt already holds after the anchor starts the
answer (so a program that generated part of it, or speculated, is answered with the rest); the reply is
the rest, and the wire server cuts it at the request's stop strings and token limit. A prompt no rule
fits gets :data:`DEFAULT`.
"""

from __future__ import annotations

from tests.providers.wire_anthropic import _text_of as anthropic_text
from tests.providers.wire_gemini import _parts_text as gemini_text
from tests.providers.wire_openai import _content_text as openai_text

DEFAULT = (
    "Aloha! My week in Hawaii began with a lei greeting and a hula lesson in Honolulu. "
    "Next came the Road to Hana, Haleakala at sunrise and a luau on the beach.\n\n"
    "All in all, it was a trip to remember."
)

RULES: list[tuple[str, str]] = [
    # test_few_shot_qa (the run and the run_batch)
    ("Q: What is the capital of the United States?\nA:", " Washington, D.C.\nQ: What is the capital of Spain?\n"),
    ("Q: What is the capital of Japan?\nA:", " Tokyo\nQ: What is the capital of Spain?\n"),
    ("Q: What is the capital of the United Kingdom?\nA:", " London\nQ: What is the capital of Spain?\n"),
    ("Q: What is the capital city of China?\nA:", " Beijing\nQ: What is the capital of Spain?\n"),
    # test_select
    ("Statement: The capital of Germany is Berlin.\nAnswer:", "True\n"),
    ("Statement: The capital of Canada is Tokyo.\nAnswer:", "False\n"),
    ("Statement: Purple is a better color than green.\nAnswer:", "Unknown\n"),
    # test_decode_int
    ("The number of hours in a day is ", "24 hours.\n"),
    ("The number of days in a year is ", "365 days.\n"),
    # test_decode_json (gen_string opens a quote and stops at the closing one)
    ('"name": "', 'Paris",\n'),
    ('"population": ', "2148000,\n"),
    ('"area": ', "105,\n"),
    ('"country": "', 'France",\n'),
    ('"timezone": "', 'Europe/Paris"\n}'),
    # test_expert_answer
    ("A good person to answer this question is", " a French geography teacher.\n"),
    ("would answer that ", "the capital of France is Paris. It has been so for centuries."),
    # test_tool_use
    ("Answer: The answer is calculate(", "257*983) = 252631\n"),
    # test_react: the question after the worked example, step by step
    ("Question: What country does the creator of Linux live in?\nThought 1:",
     " I need to search for the creator of Linux.\nAction 1: Search [Creator of Linux].\n"
     "Observation 1: The creator of Linux is Linus Torvalds.\n"
     "Thought 2: I need to search for the country where Linus Torvalds lives.\n"
     "Action 2: Search [Where does Linus Torvalds live].\n"
     "Observation 2: Linus Torvalds lives in the United States.\n"
     "Thought 3: The answer is the United States.\nAction 3: Finish [United States].\n"),
    # test_parallel_encoding
    ("Question: Who is the father of Julian?\nASSISTANT:", " Noah is the father of Julian."),
    # test_regex (an IP address)
    ("Q: What is the IP address of the Google DNS servers?\nA: ", "8.8.8.8 and 8.8.4.4.\n"),
    # test_image_qa
    ("Please describe this image in simple words.", "A yellow taxi waits at a street corner in the city."),
    # test_completion_speculative / test_chat_completion_speculative
    ("Please generate new Name, Birthday and Job.\n",
     "Name: Ada Lovelace\nBirthday: December 10, 1815\nJob: Mathematician\n\n"),
]


def answer(prompt: str) -> str:
    """What the model writes after ``prompt`` (before stop strings and token limits)."""
    best, best_end = None, -1
    for anchor, reply in RULES:
        at = prompt.rfind(anchor)
        if at < 0:
            continue
        end = at + len(anchor)
        done = prompt[end:]
        if end > best_end and reply.startswith(done):
            best, best_end = reply[len(done):], end
    return DEFAULT if best is None else best


# ---------------------------------------------------------------------------------- request texts


def prompt_of(api: str, body: dict, tokenizer=None) -> str:
    """The prompt text a request carries, the way the model reads it: message texts in order (a prompt
    of token ids, as select probes send, decoded with ``tokenizer``)."""
    if api == "openai":
        if "prompt" in body:
            prompt = body["prompt"]
            return prompt if isinstance(prompt, str) else tokenizer.decode(prompt)
        return "\n".join(openai_text(m.get("content")) for m in body.get("messages") or [])
    if api == "anthropic":
        messages = body.get("messages") or []
        return "\n".join([anthropic_text(body.get("system")), *(anthropic_text(m.get("content")) for m in messages)])
    if api == "gemini":
        return "\n".join(gemini_text(c.get("parts")) for c in body.get("contents") or [])
    raise ValueError(api)


def reply_for(api: str, tokenizer=None):
    """A wire server reply (``server.default_reply = reply_for(server.api)``): the answer to its request."""
    return lambda req: answer(prompt_of(api, req.json or {}, tokenizer))
