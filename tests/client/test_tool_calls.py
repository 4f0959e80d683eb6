"""Native tool-call syntax comes back as tool calls, streaming or not; JSON mode is JSON.

The tiny model has random weights, so its output is forced with a GBNF grammar: the text
really comes out of llama.cpp's sampler (through the model's ChatML template with tools)
and then through the client's parser.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from weather_tool import WEATHER_TOOLS

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

TOOLS = WEATHER_TOOLS
MESSAGES = [{"role": "user", "content": "東京の天気は？"}]


def forced(text: str) -> Any:
    return llama_cpp.LlamaGrammar.from_string(f"root ::= {json.dumps(text)}", verbose=False)


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}\n</tool_call>'


def test_native_tool_call_is_a_tool_call(make_client: Callable[..., Any], tiny: Path) -> None:
    client = make_client(tiny)
    out = client.generate(MESSAGES, tools=TOOLS, grammar=forced(CALL), max_tokens=200, seed=1)
    assert out["type"] == "tool_call"
    assert out["tool_name"] == "get_weather"
    assert out["tool_args"] == {"city": "東京"}
    assert not out.get("content")


def test_text_and_tool_call_is_both(make_client: Callable[..., Any], tiny: Path) -> None:
    client = make_client(tiny)
    out = client.generate(
        MESSAGES, tools=TOOLS, grammar=forced("調べます。" + CALL), max_tokens=200, seed=1
    )
    assert out["type"] == "both"
    assert out["content"] == "調べます。"
    assert out["tool_args"] == {"city": "東京"}


def test_plain_text_with_tools_is_text(make_client: Callable[..., Any], tiny: Path) -> None:
    client = make_client(tiny)
    out = client.generate(MESSAGES, tools=TOOLS, grammar=forced("晴れです"), max_tokens=64, seed=1)
    assert out == {"type": "text", "content": "晴れです"}


def test_stream_holds_back_the_tool_call(make_client: Callable[..., Any], tiny: Path) -> None:
    client = make_client(tiny)
    chunks = list(
        client.generate_stream(
            MESSAGES, tools=TOOLS, grammar=forced("調べます。" + CALL), max_tokens=200, seed=1
        )
    )
    shown = "".join(chunks)
    assert shown.strip() == "調べます。"
    assert "<tool" not in shown and "get_weather" not in shown
    assert all(c for c in chunks)
    detection = client.consume_tool_detection()
    assert detection is not None
    assert detection["tool_name"] == "get_weather"
    assert detection["tool_args"] == {"city": "東京"}
    assert client.consume_tool_detection() is None  # read-and-clear


def test_stream_without_tool_call_detects_nothing(
    make_client: Callable[..., Any], tiny: Path
) -> None:
    client = make_client(tiny)
    text = "".join(
        client.generate_stream(MESSAGES, tools=TOOLS, grammar=forced("a < b"), max_tokens=32)
    )
    assert text == "a < b"
    assert client.consume_tool_detection() is None


def test_repairable_arguments_are_repaired_and_logged(
    make_client: Callable[..., Any], tiny: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(tiny)
    broken = '<tool_call>{"name": "get_weather", "arguments": {"city": "東京",}}</tool_call>'
    with caplog.at_level(logging.WARNING):
        out = client.generate(MESSAGES, tools=TOOLS, grammar=forced(broken), max_tokens=200)
    assert out["tool_args"] == {"city": "東京"}
    assert any("repaired" in r.getMessage() for r in caplog.records)


def test_invalid_arguments_are_an_error_never_empty_args(
    make_client: Callable[..., Any], tiny: Path
) -> None:
    client = make_client(tiny)
    broken = '<tool_call>{"name": "get_weather", "arguments": {city: 東京}}</tool_call>'
    try:
        out = client.generate(MESSAGES, tools=TOOLS, grammar=forced(broken), max_tokens=200)
    except Exception as exc:  # the contract: a clear error...
        assert "JSON" in str(exc) or "json" in str(exc)
    else:  # ...or a repair that kept the argument; never a silent {}
        assert out.get("type") in {"tool_call", "both"}
        assert out["tool_args"] not in ({}, None)


def test_invalid_arguments_raise_tool_call_error(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    from saiverse_llm.tools import ToolCallError

    client = make_client(tiny)
    broken = '<tool_call>{"name": "get_weather", "arguments": {city: 東京}}</tool_call>'
    with pytest.raises(ToolCallError, match="not valid JSON") as info:
        client.generate(MESSAGES, tools=TOOLS, grammar=forced(broken), max_tokens=200)
    assert "city: 東京" in info.value.raw


SCHEMA = {
    "type": "object",
    "properties": {
        "mood": {"type": "string", "enum": ["happy", "sad"]},
        "score": {"type": "integer"},
    },
    "required": ["mood", "score"],
}


def test_response_schema_returns_a_dict(make_client: Callable[..., Any], tiny: Path) -> None:
    client = make_client(tiny)
    out = client.generate(MESSAGES, response_schema=SCHEMA, max_tokens=64, seed=3)
    assert isinstance(out, dict)
    assert out["mood"] in {"happy", "sad"}
    assert isinstance(out["score"], int)


def test_response_schema_stream_yields_the_json(
    make_client: Callable[..., Any], tiny: Path
) -> None:
    client = make_client(tiny)
    text = "".join(client.generate_stream(MESSAGES, response_schema=SCHEMA, max_tokens=64, seed=3))
    assert text.strip()
    data = json.loads(text)
    assert data["mood"] in {"happy", "sad"}


BARE = '{"name": "get_weather", "parameters": {"city": "京都"}}'


def test_bare_json_tool_call_streams_as_a_call_like_generate(
    make_client: Callable[..., Any], tiny: Path
) -> None:
    """Issue #11 item 4 (Llama 3.x style): generate() returned a tool call while
    generate_stream() showed the JSON as text and detected nothing."""
    client = make_client(tiny)
    out = client.generate(MESSAGES, tools=TOOLS, grammar=forced(BARE), max_tokens=200, seed=1)
    chunks = list(
        client.generate_stream(MESSAGES, tools=TOOLS, grammar=forced(BARE), max_tokens=200, seed=1)
    )
    detection = client.consume_tool_detection()
    assert out["type"] == "tool_call" and out["tool_args"] == {"city": "京都"}
    assert "get_weather" not in "".join(chunks)
    assert detection is not None
    assert (detection["type"], detection["tool_name"], detection["tool_args"]) == (
        "tool_call",
        "get_weather",
        {"city": "京都"},
    )


def test_reply_starting_with_json_that_is_not_a_call_is_streamed_as_text(
    make_client: Callable[..., Any], tiny: Path
) -> None:
    client = make_client(tiny)
    text = '{"answer": 42} です'
    out = client.generate(MESSAGES, tools=TOOLS, grammar=forced(text), max_tokens=64, seed=1)
    streamed = "".join(
        client.generate_stream(MESSAGES, tools=TOOLS, grammar=forced(text), max_tokens=64, seed=1)
    )
    assert out == {"type": "text", "content": text}
    assert streamed == text
    assert client.consume_tool_detection() is None


REMOTE = {
    "type": "object",
    "properties": {
        "mood": {"$ref": "https://example.org/schemas/mood.json"},
        "reply": {"type": "string"},
    },
    "required": ["mood", "reply"],
}


def test_schema_with_a_remote_ref_fails_and_names_it(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    """Issue #11 item 5: the client logged a warning and returned {}."""
    from saiverse_llm.schema import SchemaError

    client = make_client(tiny)
    for call in (client.generate, lambda *a, **k: "".join(client.generate_stream(*a, **k))):
        with pytest.raises(SchemaError) as info:
            call(MESSAGES, response_schema=REMOTE, max_tokens=300, seed=7, temperature=0.0)
        message = str(info.value)
        assert "response_schema.properties.mood.$ref" in message
        assert "https://example.org/schemas/mood.json" in message and "Fix:" in message


def test_a_reply_that_breaks_the_schema_is_an_error_not_a_dict(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    """The grammar is forced to a reply outside the schema's enum: validation catches it."""
    from saiverse_llm.schema import SchemaMismatchError

    client = make_client(tiny)
    bad = forced('{"mood": "angry", "score": 1}')
    with pytest.raises(SchemaMismatchError, match=r"\['mood'\].*angry"):
        client.generate(MESSAGES, response_schema=SCHEMA, grammar=bad, max_tokens=64)
    with pytest.raises(SchemaMismatchError):
        "".join(
            client.generate_stream(
                MESSAGES, response_schema=SCHEMA, grammar=bad, max_tokens=64, seed=1
            )
        )


def test_a_schema_reply_is_the_same_streamed_or_not(
    make_client: Callable[..., Any], tiny: Path
) -> None:
    client = make_client(tiny)
    out = client.generate(MESSAGES, response_schema=SCHEMA, max_tokens=64, seed=3)
    text = "".join(client.generate_stream(MESSAGES, response_schema=SCHEMA, max_tokens=64, seed=3))
    assert json.loads(text) == out


def test_ignore_eos_with_a_schema_or_grammar_is_a_clear_error_not_an_abort(
    make_client: Callable[..., Any], tiny: Path
) -> None:
    """A grammar ends the reply with an end-of-generation token, which ``ignore_eos`` masks:
    once the grammar was complete every token had -inf, llama.cpp's grammar sampler threw
    a C++ exception through ctypes and the process aborted (SIGABRT, every model with it).
    The combination is refused before anything runs, streaming or not."""
    from saiverse_llm.user_errors import ParameterError

    client = make_client(tiny)
    for kwargs in ({"response_schema": SCHEMA}, {"grammar": forced('{"a": 1}')}):
        for call in (client.generate, lambda *a, **k: "".join(client.generate_stream(*a, **k))):
            with pytest.raises(ParameterError, match="ignore_eos"):
                call(MESSAGES, max_tokens=64, seed=3, temperature=0.0, ignore_eos=True, **kwargs)
    out = client.generate(MESSAGES, response_schema=SCHEMA, max_tokens=64, seed=3)
    assert isinstance(out, dict)
