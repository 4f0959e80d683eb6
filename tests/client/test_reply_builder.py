"""``ReplyBuilder.push_many`` (the compiled loop's path: every token of a call at once) gives
exactly what ``push`` gives token by token: the same text, count, end, raw text, tool calls
and errors, for the same tokens cut into calls anywhere.

Real vocabularies (the tiny model's 669 tokens with byte tokens, Gemma's 262k), random
token sequences mixing Japanese, emoji, partial UTF-8, end-of-generation and control
tokens, with stop strings and stop tokens of every shape, tool-call filtering,
``ignore_eos`` and ``max_tokens`` from 1 to past the end.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

TEXTS = [
    "こんにちは、京都の猫です。今日は良い天気ですね。",
    "🐈‍⬛ emoji 👍🏽 and 🇯🇵 flags",
    "plain words, <tool_call> tags and </tool_call> ends",
    '{"name": "look", "arguments": {"city": "Kyoto"}}',
    "STOP here, or STOP there",
    "\n\n### Instruction:\n",
    "Ünïcödé ąćęłńóśźż ÆØÅ",
]
STOPS: list[list[str]] = [
    [],
    ["STOP"],
    ["\n\n"],
    ["です"],
    ["a", "ab"],
    ["</tool_call>"],
    ["🐈"],
    ["###", "Instruction"],
    ["zzzzzzzz"],
]


def reply_run(
    make: Callable[[], Any], tokens: list[int], cuts: list[int] | None
) -> tuple[Any, ...]:
    """Push ``tokens`` one by one (``cuts`` None) or in calls split at ``cuts``; the whole
    outcome."""
    reply = make()
    shown: list[str] = []
    consumed = 0
    error: str | None = None
    try:
        if cuts is None:
            for token in tokens:
                shown.append(reply.push(token))
                consumed += 1
                if reply.done:
                    break
        else:
            bounds = [0, *cuts, len(tokens)]
            for a, b in itertools.pairwise(bounds):
                if a == b:
                    continue
                text, used = reply.push_many(tokens[a:b])
                shown.append(text)
                consumed += used
                if reply.done:
                    break
        shown.append(reply.finish())
    except Exception as exc:  # a tool call that cannot be used: both paths must raise it
        error = f"{type(exc).__name__}: {exc}"
    calls = [(c.name, c.arguments, c.repaired) for c in reply.tool_calls]
    return (
        "".join(shown),
        consumed,
        reply.n_tokens,
        reply.done,
        reply.finish_reason,
        reply.raw,
        calls,
        error,
    )


@pytest.mark.parametrize("which", ["tiny", "gemma"])
def test_push_many_gives_what_push_gives(request: pytest.FixtureRequest, which: str) -> None:
    from saiverse_llm.generation import ReplyBuilder
    from saiverse_llm.tools import ToolCallStreamFilter
    from saiverse_llm.vocab import Vocab

    path: Path = request.getfixturevalue(which)
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    vocab = Vocab(llm)
    rng = random.Random(20261130)
    pools = [list(llm.tokenize(t.encode(), add_bos=False, special=False)) for t in TEXTS]
    eog = vocab.eog_ids()
    controls = [t for t in (vocab.control_token(s) for s in ("<|im_end|>", "<end_of_turn>")) if t]
    checked = 0
    for trial in range(400):
        tokens: list[int] = []
        while len(tokens) < rng.randint(1, 120):
            pick = rng.random()
            if pick < 0.6:
                pool = rng.choice(pools)
                start = rng.randrange(len(pool))
                tokens += pool[start : start + rng.randint(1, 12)]
            elif pick < 0.8:
                tokens.append(rng.randrange(vocab.n_vocab))
            elif pick < 0.9 and eog:
                tokens.append(rng.choice(eog))
            elif controls:
                tokens.append(rng.choice(controls))
        stops = rng.choice(STOPS)
        stop_tokens = rng.sample(controls, k=rng.randint(0, len(controls)))
        tools = rng.random() < 0.3
        settings: dict[str, Any] = {
            "max_tokens": rng.choice([1, 2, 3, max(1, len(tokens) // 2), len(tokens), 500]),
            "stop": stops,
            "stop_tokens": stop_tokens,
            "ignore_eos": rng.random() < 0.4,
        }

        def make(s: dict[str, Any] = settings, t: bool = tools) -> Any:
            return ReplyBuilder(
                vocab, tool_filter=ToolCallStreamFilter(["look"]) if t else None, **s
            )

        one = reply_run(make, tokens, None)
        cuts = sorted(rng.sample(range(1, len(tokens)), k=min(len(tokens) - 1, rng.randint(0, 6))))
        many = reply_run(make, tokens, cuts)
        assert many == one, (trial, tokens, cuts, settings, tools)
        checked += one[3]  # ended (stop, end of generation, max_tokens) before the tokens ran out
    assert checked > 100
