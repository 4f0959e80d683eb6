"""Gemma 3 270M (base, no chat template in its GGUF): chat_format "gemma" renders Japanese
and English prompts faithfully, system text is kept, and generation returns a str."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

PROMPTS = {
    "ja": "こんにちは！今日の京都の天気を教えてください。絵文字も🌸どうぞ。",
    "en": "Hello! Please describe today's weather in Kyoto.",
}


@pytest.fixture(scope="module")
def gemma_client(gemma: Path, client_class: type, is_ours: bool, n_gpu_layers: int) -> Any:
    kwargs: dict[str, Any] = {
        "n_gpu_layers": n_gpu_layers,
        "fallback_on_error": False,
        "context_length": 1024,
        "chat_format": "gemma",
    }
    if is_ours:
        kwargs["n_threads"] = 2
    return client_class(str(gemma), **kwargs)


@pytest.mark.parametrize("lang", sorted(PROMPTS))
def test_prompt_round_trips_through_the_gemma_template(
    gemma_client: Any, lang: str, ours_only: None
) -> None:
    text = PROMPTS[lang]
    prompt = gemma_client.format_prompt([{"role": "user", "content": text}])
    assert prompt.text == f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"
    llm = gemma_client.llama
    assert prompt.tokens[0] == llm.token_bos()
    decoded = llm.detokenize(prompt.tokens[1:], special=True).decode("utf-8")
    assert decoded == prompt.text
    # The turn markers are single special tokens, not spelled out in pieces.
    start = llm.tokenize(b"<start_of_turn>", add_bos=False, special=True)
    assert len(start) == 1 and start[0] in prompt.tokens


def test_system_and_host_text_is_not_dropped(gemma_client: Any, ours_only: None) -> None:
    prompt = gemma_client.format_prompt(
        [
            {"role": "host", "content": "あなたは京都の案内人です。"},
            {"role": "user", "content": "おすすめは？"},
        ]
    )
    assert prompt.text.startswith(
        "<start_of_turn>user\nあなたは京都の案内人です。\n\nおすすめは？<end_of_turn>\n"
    )


@pytest.mark.parametrize("lang", sorted(PROMPTS))
def test_generation_returns_text(gemma_client: Any, lang: str) -> None:
    reply = gemma_client.generate(
        [{"role": "user", "content": PROMPTS[lang]}], max_tokens=8, temperature=0.0, seed=1
    )
    assert isinstance(reply, str)
    usage = gemma_client.consume_usage()
    if usage is not None:  # the usage record's shape is checked in test_usage
        assert usage.prompt_tokens > 10


def test_stream_returns_text(gemma_client: Any) -> None:
    chunks = list(
        gemma_client.generate_stream(
            [{"role": "user", "content": PROMPTS["ja"]}], max_tokens=8, temperature=0.0, seed=1
        )
    )
    assert all(isinstance(c, str) for c in chunks)
    assert "".join(chunks) == gemma_client.generate(
        [{"role": "user", "content": PROMPTS["ja"]}], max_tokens=8, temperature=0.0, seed=1
    )
