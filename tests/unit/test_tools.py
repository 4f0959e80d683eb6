"""Tool definitions and tool-call parsing (native ``<tool_call>`` syntax)."""

from __future__ import annotations

import pytest

from saiverse_llm.tools import (
    OPEN_TAG,
    ToolCallError,
    ToolCallStreamFilter,
    ToolDefinitionError,
    normalize_tools,
    parse_tool_calls,
    repair_json,
    tool_result,
)

KNOWN = ["get_weather", "search"]


def test_parse_tool_call_block() -> None:
    out = parse_tool_calls(
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}\n'
        "</tool_call>",
        known=KNOWN,
    )
    assert out.content == "Let me look."
    assert [(c.name, c.arguments) for c in out.tool_calls] == [("get_weather", {"city": "東京"})]
    assert tool_result(out.content, out.tool_calls)["type"] == "both"


def test_arguments_as_json_string_and_unclosed_block() -> None:
    out = parse_tool_calls(
        '<tool_call>{"name": "search", "arguments": "{\\"q\\": \\"x\\"}"}', known=KNOWN
    )
    assert out.tool_calls[0].arguments == {"q": "x"}
    assert tool_result(out.content, out.tool_calls) == {
        "type": "tool_call",
        "tool_name": "search",
        "tool_args": {"q": "x"},
        "tool_calls": [{"id": "call_0", "name": "search", "arguments": {"q": "x"}}],
    }


def test_plain_text_is_text() -> None:
    out = parse_tool_calls("just words", known=KNOWN)
    assert tool_result(out.content, out.tool_calls) == {"type": "text", "content": "just words"}


def test_bare_json_naming_a_known_tool_is_a_call() -> None:
    out = parse_tool_calls('{"name": "search", "parameters": {"q": "x"}}', known=KNOWN)
    assert out.tool_calls[0].arguments == {"q": "x"}
    assert out.content == ""


def test_repairable_json_is_repaired_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    out = parse_tool_calls(
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Tokyo",}</tool_call>',
        known=KNOWN,
    )
    call = out.tool_calls[0]
    assert call.arguments == {"city": "Tokyo"}
    assert call.repaired
    assert "repaired invalid tool-call JSON" in caplog.text


def test_broken_json_raises_never_empty_args() -> None:
    with pytest.raises(ToolCallError) as info:
        parse_tool_calls(
            '<tool_call>{"name": "get_weather", "arguments": {city: Tokyo}}</tool_call>',
            known=KNOWN,
        )
    assert "not valid JSON" in str(info.value)
    assert "city: Tokyo" in info.value.raw


def test_unknown_tool_raises() -> None:
    with pytest.raises(ToolCallError, match="unknown tool 'delete_all'"):
        parse_tool_calls(
            '<tool_call>{"name": "delete_all", "arguments": {}}</tool_call>', known=KNOWN
        )


def test_null_arguments_raise() -> None:
    with pytest.raises(ToolCallError, match="null arguments"):
        parse_tool_calls(
            '<tool_call>{"name": "search", "arguments": null}</tool_call>', known=KNOWN
        )


def test_repair_json_refuses_guesses() -> None:
    assert repair_json('{"a": [1, 2') == '{"a": [1, 2]}'
    assert repair_json('{"a": "x') == '{"a": "x"}'
    assert repair_json("{a: 1}") is None
    assert repair_json('{"a": 1]') is None


@pytest.mark.parametrize("size", [1, 2, 3, 5, 100])
def test_stream_filter_never_leaks_tag_text(size: int) -> None:
    text = 'Sure. <tool_call>{"name": "search", "arguments": {"q": "猫"}}</tool_call> done'
    filt = ToolCallStreamFilter(KNOWN)
    shown = []
    for i in range(0, len(text), size):
        piece = filt.feed(text[i : i + size])
        assert "<" not in piece or OPEN_TAG not in piece
        shown.append(piece)
    tail, calls = filt.finish()
    visible = "".join(shown) + tail
    assert visible == "Sure.  done"
    assert "tool_call" not in visible
    assert [(c.name, c.arguments) for c in calls] == [("search", {"q": "猫"})]


def test_stream_filter_releases_a_lone_angle_bracket() -> None:
    filt = ToolCallStreamFilter(KNOWN)
    assert filt.feed("a <") == "a "
    assert filt.feed("b") == "<b"
    assert filt.finish() == ("", [])


def test_normalize_tools_shapes() -> None:
    openai = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    bare = {"name": "g", "description": "d"}
    gemini = {"function_declarations": [{"name": "h", "parameters": {"type": "OBJECT"}}]}
    out = normalize_tools([openai, bare, gemini])
    assert [t["function"]["name"] for t in out] == ["f", "g", "h"]
    assert out[1]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert out[2]["function"]["parameters"] == {"type": "object"}


def test_normalize_tools_rejects_bad_names() -> None:
    with pytest.raises(ToolDefinitionError, match=r"tools\[0\]\.function\.name"):
        normalize_tools([{"name": "has space"}])


BARE = '{"name": "get_weather", "parameters": {"city": "京都"}}'


def stream(text: str, size: int) -> tuple[str, list[tuple[str, dict[str, object]]]]:
    filt = ToolCallStreamFilter(KNOWN)
    shown = "".join(filt.feed(text[i : i + size]) for i in range(0, len(text), size))
    tail, calls = filt.finish()
    return shown + tail, [(c.name, c.arguments) for c in calls]


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_stream_holds_back_a_bare_json_call(size: int) -> None:
    """Issue #11 item 4: the stream showed the call JSON as text and detected nothing."""
    shown, calls = stream("\n" + BARE, size)
    assert shown.strip() == ""
    assert calls == [("get_weather", {"city": "京都"})]


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_stream_and_parse_agree_on_bare_json(size: int) -> None:
    for text in (
        BARE,
        BARE + " そして説明です。",
        BARE + ';\n{"name": "search", "arguments": {"q": "猫"}}',
        '{"answer": 42} is the JSON you asked for',
        '{"name": "not_a_tool", "arguments": {}}',
        "plain text {with braces}",
        '{"name": "get_weather", "arguments": {"city": "To',  # cut off by max_tokens
    ):
        shown, calls = stream(text, size)
        parsed = parse_tool_calls(text, known=KNOWN)
        assert shown.strip() == parsed.content, text
        assert calls == [(c.name, c.arguments) for c in parsed.tool_calls], text


def test_bare_json_that_is_not_a_call_is_text() -> None:
    assert stream('{"answer": 42} ok', 2) == ('{"answer": 42} ok', [])
    assert stream('  {"name": "not_a_tool"} x', 4) == ('  {"name": "not_a_tool"} x', [])


def test_two_bare_calls_and_trailing_text() -> None:
    shown, calls = stream(BARE + '; {"name": "search", "arguments": {"q": "x"}}\nDone.', 3)
    assert calls == [("get_weather", {"city": "京都"}), ("search", {"q": "x"})]
    assert shown == "Done."


def test_a_cut_off_bare_call_is_repaired_not_shown() -> None:
    shown, calls = stream('{"name": "get_weather", "arguments": {"city": "To', 4)
    assert shown == ""
    assert calls == [("get_weather", {"city": "To"})]


def test_without_known_tools_json_is_just_text() -> None:
    filt = ToolCallStreamFilter(None)
    assert filt.feed(BARE) == BARE
    assert filt.finish() == ("", [])


def test_repair_json_never_changes_string_contents() -> None:
    """Issue #11 item 6: '{"code": "d = {1: 2, }"' came back as "d = {1: 2}"."""
    cut = '{"name": "run", "arguments": {"code": "d = {1: 2, }"'
    assert repair_json(cut) == cut + "}}"
    assert repair_json('{"a": "x, ]", "b": [1, 2,],}') == '{"a": "x, ]", "b": [1, 2]}'
    assert repair_json('{"q": "say \\"hi,}\\"", }') == '{"q": "say \\"hi,}\\""}'
    assert repair_json('{"path": "C:\\\\') == '{"path": "C:\\\\"}'
    assert repair_json('{"a": "tab\\') == '{"a": "tab"}'
