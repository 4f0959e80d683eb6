"""Messages are normalised before the chat template sees them.

The model here is the tiny model with a STRICT chat template (conftest.STRICT_TEMPLATE)
that raises on a ``host`` role, extra keys such as ``metadata``, tool results without
``tool_call_id`` and assistant ``tool_calls`` that are not in OpenAI shape. A client that
passes SAIVerse's messages through unnormalised fails these tests; the output is forced with
a grammar so the assertion is on the real generation path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

OK = llama_cpp.LlamaGrammar.from_string('root ::= "ok"', verbose=False)

SAIVERSE_HISTORY: list[dict[str, Any]] = [
    {"role": "host", "content": "A quiet café in Kyoto.", "metadata": {"ts": "2026-01-01"}},
    {"role": "user", "content": "天気は？", "metadata": {"persona": "air"}},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "京都"}}],
        "metadata": {"turn": 3},
    },
    {"role": "tool", "name": "get_weather", "content": {"sky": "晴れ", "temp": 21}},
    {"role": "user", "content": "ありがとう", "metadata": None},
]


def test_saiverse_history_renders_through_a_strict_template(
    make_client: Callable[..., Any], strict_gguf: Path
) -> None:
    client = make_client(strict_gguf)
    reply = client.generate(SAIVERSE_HISTORY, grammar=OK, max_tokens=8, seed=1)
    assert reply == "ok"


def test_saiverse_history_streams_through_a_strict_template(
    make_client: Callable[..., Any], strict_gguf: Path
) -> None:
    client = make_client(strict_gguf)
    chunks = list(client.generate_stream(SAIVERSE_HISTORY, grammar=OK, max_tokens=8, seed=1))
    assert "".join(chunks) == "ok"


def test_rendered_prompt_has_system_not_host(
    make_client: Callable[..., Any], strict_gguf: Path, ours_only: None
) -> None:
    prompt = make_client(strict_gguf).format_prompt(SAIVERSE_HISTORY)
    assert "<|im_start|>system\nA quiet café in Kyoto." in prompt.text
    assert "host" not in prompt.text
    assert "metadata" not in prompt.text
    assert '<tool_call>{"city": "京都"}</tool_call>' in prompt.text
    assert '<|im_start|>tool\n{"sky": "晴れ", "temp": 21}' in prompt.text


def test_tiny_template_renders_tool_results_and_calls(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    """The synthesized ChatML template (Qwen/Hermes style) gets OpenAI-shaped tool data."""
    prompt = make_client(tiny).format_prompt(SAIVERSE_HISTORY)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "京都"}}\n</tool_call>' in (
        prompt.text
    )
    assert '<tool_response>\n{"sky": "晴れ", "temp": 21}\n</tool_response>' in prompt.text
    assert prompt.text.startswith("<|im_start|>system\nA quiet café in Kyoto.<|im_end|>")


def test_a_template_error_is_clear_not_a_reply(
    make_client: Callable[..., Any], strict_gguf: Path, ours_only: None
) -> None:
    from saiverse_llm.messages import MessageError

    client = make_client(strict_gguf)
    with pytest.raises(MessageError, match=r"messages\[0\]\.role"):
        client.generate([{"role": "narrator", "content": "x"}], grammar=OK, max_tokens=4)


def test_lone_surrogates_are_replaced_not_a_unicode_error(
    make_client: Callable[..., Any], tiny: Path
) -> None:
    """A lone UTF-16 surrogate (``json.loads('"\\\\ud800"')``, a broken escape in a client's
    JSON) in a message, a tool call, a tool result or a tool definition raised a raw
    ``UnicodeEncodeError`` from the tokenizer, on every later turn of that history. It is
    replaced by U+FFFD; a valid pair written as two code points becomes its character."""
    client = make_client(tiny)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "d\ud800",
                "parameters": {"type": "object", "properties": {"a\udfff": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "system", "content": "s\udc00"},
        {"role": "user", "content": "hi \ud800 \ud83d\ude00"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "1",
                    "type": "function",
                    "function": {"name": "f", "arguments": {"a\udfff": "\ud800"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "1", "content": "r\ud800"},
    ]
    prompt = client.format_prompt(messages, tools)
    assert "hi \ufffd \U0001f600" in prompt.text
    assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in prompt.text)
    assert isinstance(client.generate(messages, tools=tools, max_tokens=2, seed=1), dict)
    assert isinstance("".join(client.generate_stream(messages, max_tokens=2, seed=1)), str)
