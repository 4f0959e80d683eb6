"""consume_usage(): read-and-clear, also after streaming, never leaking between calls;
parameters: configure_parameters and per-call overrides."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

MESSAGES = [{"role": "user", "content": "hello"}]


def forced(text: str) -> Any:
    return llama_cpp.LlamaGrammar.from_string(f"root ::= {json.dumps(text)}", verbose=False)


def tokens_of(usage: Any) -> tuple[int, int]:
    prompt = getattr(usage, "prompt_tokens", None)
    if prompt is None and isinstance(usage, dict):
        return int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    return int(prompt), int(usage.completion_tokens)


def test_usage_after_generate_is_read_and_clear(
    make_client: Callable[..., Any], tiny: Path
) -> None:
    client = make_client(tiny)
    client.generate(MESSAGES, max_tokens=8, seed=1)
    usage = client.consume_usage()
    assert usage is not None
    prompt, completion = tokens_of(usage)
    assert prompt > 0 and 0 < completion <= 8
    assert client.consume_usage() is None


def test_usage_after_stream_counts_the_same_tokens(
    make_client: Callable[..., Any], tiny: Path
) -> None:
    client = make_client(tiny)
    client.generate(MESSAGES, grammar=forced("one two three"), max_tokens=32, seed=1)
    whole = tokens_of(client.consume_usage())
    text = "".join(
        client.generate_stream(MESSAGES, grammar=forced("one two three"), max_tokens=32, seed=1)
    )
    assert text == "one two three"
    streamed = tokens_of(client.consume_usage())
    assert streamed == whole
    assert client.consume_usage() is None


def test_usage_names_the_model_key(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    client = make_client(tiny, model="my-key")
    client.generate(MESSAGES, max_tokens=4, seed=1)
    usage = client.consume_usage()
    assert (usage.model, usage.answered_by, usage.fallback) == ("my-key", "my-key", False)


def test_usage_of_a_previous_call_does_not_leak_into_a_failed_one(
    make_client: Callable[..., Any], tiny: Path
) -> None:
    client = make_client(tiny, context_length=64)
    client.generate(MESSAGES, max_tokens=4, seed=1)  # not consumed
    with pytest.raises(Exception) as info:  # any error type, but it must raise
        client.generate([{"role": "user", "content": "word " * 200}], max_tokens=4)
    assert "64" in str(info.value) or "context" in str(info.value).lower()
    assert client.consume_usage() is None


def test_usage_is_per_thread(make_client: Callable[..., Any], tiny: Path, ours_only: None) -> None:
    client = make_client(tiny)
    seen: dict[int, tuple[int, int]] = {}

    def work(i: int) -> None:
        client.generate(MESSAGES, grammar=forced("x" * (i + 1)), max_tokens=16, seed=1)
        seen[i] = tokens_of(client.consume_usage())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == [0, 1, 2]
    assert seen[0][1] < seen[2][1]


def test_per_call_max_tokens(make_client: Callable[..., Any], tiny: Path) -> None:
    client = make_client(tiny)
    client.generate(MESSAGES, max_tokens=3, seed=1, temperature=1.0)
    assert tokens_of(client.consume_usage())[1] <= 3


def test_configure_parameters(make_client: Callable[..., Any], tiny: Path, ours_only: None) -> None:
    client = make_client(tiny)
    client.configure_parameters({"temperature": 0.2, "top_p": 0.5, "max_tokens": 2})
    assert client.parameters["max_tokens"] == 2
    client.generate(MESSAGES, seed=1)
    assert tokens_of(client.consume_usage())[1] <= 2
    with pytest.raises(ValueError, match="temperature"):
        client.configure_parameters({"temperature": 3.5})
    with pytest.raises(ValueError, match="max_tokens"):
        client.configure_parameters({"max_tokens": "many"})
    client.configure_parameters({"temperature": {"default": 0.4, "min": 0, "max": 2}})
    assert client.parameters["temperature"] == 0.4


def test_max_tokens_holds_even_when_byte_tokens_form_broken_utf8(
    make_client: Callable[..., Any], tiny: Path
) -> None:
    """The random tiny model often samples byte tokens that form incomplete UTF-8, where
    llama-cpp-python skips its own max_tokens check (one reply ran to 10 tokens for 3)."""
    client = make_client(tiny)
    for seed in range(8):
        client.generate(MESSAGES, max_tokens=3, seed=seed, temperature=1.0)
        assert tokens_of(client.consume_usage())[1] <= 3, f"seed {seed}"
        "".join(client.generate_stream(MESSAGES, max_tokens=3, seed=seed, temperature=1.0))
        assert tokens_of(client.consume_usage())[1] <= 3, f"seed {seed} (stream)"


def test_usage_is_per_call_and_total_usage_sums(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    """Issue #14: after two calls consume_usage() gave one record. Defined: per call, the
    last call's record (as SAIVerse's UsageInfo); the sum is total_usage()."""
    client = make_client(tiny)
    client.generate(MESSAGES, grammar=forced("one two"), max_tokens=16, seed=1)
    first = client.consume_usage()
    client.generate(MESSAGES, grammar=forced("x"), max_tokens=16, seed=1)
    "".join(client.generate_stream(MESSAGES, grammar=forced("three four"), max_tokens=16))
    last = client.consume_usage()
    assert last.completion_tokens > 0 and client.consume_usage() is None
    # SAIVerse's UsageInfo attributes, as its usage tracker reads them
    assert (last.input_tokens, last.output_tokens) == (last.prompt_tokens, last.completion_tokens)
    assert (last.cache_write_tokens, last.cache_ttl) == (0, "")
    assert last.timestamp >= first.timestamp and last.model == first.model
    totals = client.total_usage()
    assert totals.calls == 3
    assert totals.completion_tokens > first.completion_tokens + last.completion_tokens


def test_a_stream_closed_early_records_what_it_used(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    client = make_client(tiny)
    stream = client.generate_stream(
        MESSAGES, max_tokens=64, seed=1, temperature=0.0, ignore_eos=True
    )
    next(stream)
    stream.close()
    usage = client.consume_usage()
    assert usage is not None and usage.finish_reason == "cancelled"
    assert 1 <= usage.completion_tokens < 64
    client.generate(MESSAGES, max_tokens=4, seed=1)  # the model is free again
    assert client.consume_usage().finish_reason in ("stop", "length")
