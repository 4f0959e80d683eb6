"""Transient errors are retried; a retried stream never repeats text already yielded.

The failure is injected with the client's ``chunk_hook`` (called with each chunk llama.cpp
streams); llama_cpp itself is the real build and everything else is the real generation path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

TEXT = "alpha beta gamma delta epsilon"
MESSAGES = [{"role": "user", "content": "count"}]


def forced() -> Any:
    return llama_cpp.LlamaGrammar.from_string(f"root ::= {json.dumps(TEXT)}", verbose=False)


class FailOnce:
    """Raise ``error`` at chunk ``at`` of the first attempt only."""

    def __init__(self, at: int, error: BaseException) -> None:
        self.at = at
        self.error = error
        self.calls: list[tuple[int, str]] = []
        self.fired = 0

    def __call__(self, index: int, text: str) -> None:
        self.calls.append((index, text))
        if index == self.at and not self.fired:
            self.fired += 1
            raise self.error


def test_retried_stream_does_not_repeat_text(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    hook = FailOnce(8, RuntimeError("llama_decode returned -3"))
    client = make_client(tiny, chunk_hook=hook, max_retries=1)
    chunks = list(
        client.generate_stream(MESSAGES, grammar=forced(), max_tokens=64, temperature=0.9)
    )
    assert hook.fired == 1
    assert sum(1 for i, _ in hook.calls if i == 0) == 2  # the stream really restarted
    assert "".join(chunks) == TEXT
    usage = client.consume_usage()
    assert usage is not None and usage.attempts == 2


def test_retried_generate_returns_one_answer(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    hook = FailOnce(0, RuntimeError("one-off decode failure"))  # generate(): reply = chunk 0
    client = make_client(tiny, chunk_hook=hook, max_retries=1)
    assert client.generate(MESSAGES, grammar=forced(), max_tokens=64) == TEXT
    usage = client.consume_usage()
    assert usage is not None and usage.attempts == 2


def test_non_transient_errors_are_not_retried(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    hook = FailOnce(2, RuntimeError("llama_decode returned 1"))  # KV cache full
    client = make_client(tiny, chunk_hook=hook, max_retries=3)
    seen = []
    with pytest.raises(RuntimeError, match="returned 1"):
        for chunk in client.generate_stream(MESSAGES, grammar=forced(), max_tokens=64):
            seen.append(chunk)
    assert sum(1 for i, _ in hook.calls if i == 0) == 1  # one attempt only
    assert TEXT.startswith("".join(seen))


def test_retries_are_bounded(make_client: Callable[..., Any], tiny: Path, ours_only: None) -> None:
    def always(index: int, text: str) -> None:
        if index == 1:
            raise RuntimeError("flaky")

    client = make_client(tiny, chunk_hook=always, max_retries=2)
    with pytest.raises(RuntimeError, match="flaky"):
        list(client.generate_stream(MESSAGES, grammar=forced(), max_tokens=64))
