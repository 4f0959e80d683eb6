"""The test models in a real llama-cpp-python build: they load, generate tokens, and the
synthesized model's tokenizer and chat template work end to end.

Run by ``nox -s test-<variant>`` against each build. The ``tiny``/``gemma`` fixtures
(tests/client/conftest.py) skip a model left out of LLAMA_HARNESS_MODELS; ``n_gpu_layers``
comes from LLAMA_HARNESS_N_GPU_LAYERS (default 0).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from weather_tool import WEATHER_TOOLS

from harness.models.synth import CHAT_TEMPLATE
from saiverse_llm.gguf_file import read_gguf

pytestmark = pytest.mark.llama

THREADS = max(1, min(4, os.cpu_count() or 1))

TEXTS = [
    "Hello world, how are you?",
    "こんにちは世界！東京の天気は晴れです。",
    "emoji 🎉 ümlaut ñ — «quotes»\n\ttabs and  double  spaces",
    "日本語とEnglishのmixed文章、句読点。",
]

TOOLS = WEATHER_TOOLS


@pytest.fixture(scope="module")
def tiny_llm(tiny: Path, n_gpu_layers: int) -> Iterator[llama_cpp.Llama]:
    read_gguf(tiny)  # the header check passes before llama.cpp sees the file
    llm = llama_cpp.Llama(
        model_path=str(tiny),
        n_ctx=1024,
        n_threads=THREADS,
        n_gpu_layers=n_gpu_layers,
        seed=0,
        verbose=False,
    )
    yield llm
    llm.close()


def render(**kwargs: Any) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHAT_TEMPLATE).render(add_generation_prompt=True, **kwargs)


def test_tiny_generates_tokens(tiny_llm: llama_cpp.Llama) -> None:
    out = tiny_llm.create_completion("Hello world", max_tokens=8, temperature=0.0)
    assert out["usage"]["prompt_tokens"] == len(tiny_llm.tokenize(b"Hello world"))
    assert out["usage"]["completion_tokens"] >= 1
    again = tiny_llm.create_completion("Hello world", max_tokens=8, temperature=0.0)
    assert again["choices"][0]["text"] == out["choices"][0]["text"]  # greedy is reproducible


def test_tiny_metadata_reaches_llama_cpp(tiny_llm: llama_cpp.Llama) -> None:
    assert tiny_llm.n_vocab() == 669
    assert tiny_llm.n_ctx() == 1024
    assert tiny_llm.metadata["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert tiny_llm.metadata["general.architecture"] == "llama"


@pytest.mark.parametrize("text", TEXTS)
def test_tiny_tokenizer_round_trip(tiny_llm: llama_cpp.Llama, text: str) -> None:
    tokens = tiny_llm.tokenize(text.encode(), add_bos=False, special=False)
    assert tokens and all(0 <= t < tiny_llm.n_vocab() for t in tokens)
    assert tiny_llm.detokenize(tokens).decode("utf-8") == text


def test_tiny_tokenizer_uses_vocab_pieces(tiny_llm: llama_cpp.Llama) -> None:
    # whole words and Japanese words from the vocab come out as single tokens ...
    assert len(tiny_llm.tokenize("こんにちは".encode(), add_bos=False)) == 1
    pieces = [tiny_llm.detokenize([t]) for t in tiny_llm.tokenize(b" hello world", add_bos=False)]
    assert pieces == [b" hello", b" world"]
    # ... and a character outside the vocab falls back to its three UTF-8 byte tokens
    assert len(tiny_llm.tokenize("晴".encode(), add_bos=False)) == 3


def test_tiny_special_tokens(tiny_llm: llama_cpp.Llama) -> None:
    # control tokens: one token only when special tokens are parsed, never rendered as text
    for control in ("<|im_start|>", "<|im_end|>"):
        assert len(tiny_llm.tokenize(control.encode(), add_bos=False, special=True)) == 1, control
        assert len(tiny_llm.tokenize(control.encode(), add_bos=False, special=False)) > 1, control
    # tool-call markers are user-defined: always one token, and generated ones show as text
    for marker in ("<tool_call>", "</tool_call>"):
        (token,) = tiny_llm.tokenize(marker.encode(), add_bos=False, special=False)
        assert tiny_llm.detokenize([token]) == marker.encode()
    eos = tiny_llm.token_eos()
    assert tiny_llm.detokenize([eos], special=True) == b"<|im_end|>"


def test_tiny_chat_uses_the_embedded_template(tiny_llm: llama_cpp.Llama) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "You are Sai, a persona in SAIVerse."},
        {"role": "user", "content": "こんにちは！Tell me about 東京."},
    ]
    out = tiny_llm.create_chat_completion(messages=messages, max_tokens=6, temperature=0.0)
    expected = tiny_llm.tokenize(render(messages=messages).encode(), add_bos=False, special=True)
    # the prompt llama-cpp-python built is exactly our ChatML rendering (no llama-2 fallback)
    assert out["usage"]["prompt_tokens"] == len(expected)
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["usage"]["completion_tokens"] >= 1


def test_tiny_chat_with_tools(tiny_llm: llama_cpp.Llama) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "What is the weather in Tokyo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "晴れ, 22°C"},
    ]
    out = tiny_llm.create_chat_completion(
        messages=messages,
        tools=TOOLS,
        max_tokens=4,
        temperature=0.0,  # type: ignore[arg-type]
    )
    prompt = render(messages=messages, tools=TOOLS)
    assert "<tools>" in prompt and "<tool_call>" in prompt and "<tool_response>" in prompt
    expected = tiny_llm.tokenize(prompt.encode(), add_bos=False, special=True)
    assert out["usage"]["prompt_tokens"] == len(expected)


def test_gemma_loads_and_generates(gemma: Path, n_gpu_layers: int) -> None:
    info = read_gguf(gemma)
    assert info.architecture == "gemma3" and info.chat_template is None
    llm = llama_cpp.Llama(
        model_path=str(gemma),
        n_ctx=512,
        n_threads=THREADS,
        n_gpu_layers=n_gpu_layers,
        chat_format="gemma",  # the GGUF has no chat template
        seed=0,
        verbose=False,
    )
    try:
        out = llm.create_completion("The capital of France is", max_tokens=8, temperature=0.0)
        assert out["usage"]["completion_tokens"] >= 1
        assert out["choices"][0]["text"].strip()
        text = "東京タワーは日本の電波塔です。"
        assert llm.detokenize(llm.tokenize(text.encode(), add_bos=False)).decode() == text
        chat = llm.create_chat_completion(
            messages=[{"role": "user", "content": "Say hello in Japanese."}],
            max_tokens=8,
            temperature=0.0,
        )
        assert chat["usage"]["completion_tokens"] >= 1
    finally:
        llm.close()
