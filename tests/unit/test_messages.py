"""Message normalisation: what chat templates get from SAIVerse's messages."""

from __future__ import annotations

import json

import pytest

from saiverse_llm.messages import MessageError, fold_system_messages, normalize_messages


def test_host_role_becomes_system_and_metadata_is_dropped() -> None:
    out = normalize_messages(
        [
            {"role": "host", "content": "The room is dark.", "metadata": {"ts": 1}},
            {"role": "user", "content": "hello", "metadata": {"persona": "x"}, "id": 7},
        ]
    )
    assert out == [
        {"role": "system", "content": "The room is dark."},
        {"role": "user", "content": "hello"},
    ]


def test_unknown_role_is_an_error_naming_index_and_fix() -> None:
    with pytest.raises(MessageError) as info:
        normalize_messages([{"role": "user", "content": "a"}, {"role": "narrator", "content": "b"}])
    assert info.value.index == 1
    assert info.value.field == "role"
    assert info.value.value == "narrator"
    assert "host" in info.value.fix


def test_content_none_and_parts() -> None:
    out = normalize_messages(
        [
            {"role": "assistant", "content": None},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ]
    )
    assert out[0]["content"] == ""
    assert out[1]["content"] == "ab"


def test_image_parts_are_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    out = normalize_messages(
        [{"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "image_url"}]}]
    )
    assert out[0]["content"] == "see"
    assert "images are not supported" in caplog.text


def test_assistant_tool_calls_in_openai_shape_with_json_string_arguments() -> None:
    out = normalize_messages(
        [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"name": "get_weather", "arguments": {"city": "東京"}}],
            },
            {"role": "tool", "name": "get_weather", "content": {"temp": 21}},
        ]
    )
    call = out[1]["tool_calls"][0]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {"city": "東京"}
    tool = out[2]
    assert tool["role"] == "tool"
    assert tool["tool_call_id"] == call["id"]
    assert tool["content"] == '{"temp": 21}'
    assert tool["name"] == "get_weather"


def test_openai_shaped_tool_calls_keep_their_id() -> None:
    out = normalize_messages(
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "abc",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"x": 1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "abc", "content": "ok", "metadata": {}},
        ]
    )
    assert out[0]["tool_calls"][0]["id"] == "abc"
    assert out[1] == {"role": "tool", "tool_call_id": "abc", "content": "ok", "name": "f"}


def test_invalid_tool_call_arguments_are_an_error() -> None:
    with pytest.raises(MessageError) as info:
        normalize_messages(
            [{"role": "assistant", "tool_calls": [{"name": "f", "arguments": "{not json"}]}]
        )
    assert "tool_calls.function.arguments" in str(info.value)


def test_fold_system_messages_keeps_system_text_for_gemma() -> None:
    msgs = normalize_messages(
        [{"role": "host", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    )
    folded = fold_system_messages(msgs)
    assert folded == [{"role": "user", "content": "Be brief.\n\nhi"}]
