"""Tool definitions in, tool calls out.

Models whose chat template renders tools (Qwen2.5, Hermes and the synthesized test model)
answer with native syntax: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
:func:`parse_tool_calls` turns that text into :class:`ToolCall` objects and the rest into
content; :class:`ToolCallStreamFilter` does the same incrementally for streams, holding back
any text that might be the start of ``<tool_call>`` so it is never yielded as reply text.

Argument JSON that does not parse is repaired when the repair is unambiguous (trailing
commas, missing closing brackets/quotes: logged as a WARNING) and otherwise raises
:class:`ToolCallError` with the raw text. It never becomes a silent ``{}``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from saiverse_llm.messages import replace_surrogates

logger = logging.getLogger("saiverse_llm.tools")

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


class ToolCallError(ValueError):
    """The model produced a tool call that cannot be used."""

    def __init__(self, message: str, raw: str) -> None:
        self.raw = raw
        super().__init__(f"{message}; raw model output: {raw!r}")


class ToolDefinitionError(ValueError):
    """A tool definition passed to ``generate(tools=...)`` is malformed."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = ""
    raw: str = ""
    repaired: bool = False


@dataclass
class ParsedOutput:
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)


def _tool_to_dict(tool: object) -> dict[str, Any]:
    if isinstance(tool, Mapping):
        return dict(tool)
    for method in ("model_dump", "to_json_dict", "to_dict"):
        fn = getattr(tool, method, None)
        if callable(fn):
            data = fn(exclude_none=True) if method == "model_dump" else fn()
            if isinstance(data, Mapping):
                return dict(data)
    raise ToolDefinitionError(f"tool definition {tool!r} is not a dict; pass OpenAI-style dicts")


def normalize_tools(tools: Sequence[object] | None) -> list[dict[str, Any]]:
    """OpenAI-style ``[{"type": "function", "function": {name, description, parameters}}]``.

    Accepts that shape, bare ``{name, description, parameters}`` dicts and Gemini-style
    ``{"function_declarations": [...]}`` tools (or SDK objects that dump to those)."""
    if not tools:
        return []
    out: list[dict[str, Any]] = []
    for index, raw in enumerate(tools):
        tool = _tool_to_dict(raw)
        decls = tool.get("function_declarations") or tool.get("functionDeclarations")
        functions: list[Mapping[str, Any]]
        if isinstance(decls, Sequence) and not isinstance(decls, str):
            functions = [_tool_to_dict(d) for d in decls]
        elif isinstance(tool.get("function"), Mapping):
            functions = [tool["function"]]
        else:
            functions = [tool]
        for fn in functions:
            name = fn.get("name")
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", name):
                raise ToolDefinitionError(
                    f"tools[{index}].function.name: bad value {name!r}; a tool needs a name of "
                    "letters, digits, '_', '.', ':' or '-' (at most 64)"
                )
            params = fn.get("parameters") or fn.get("parameters_json_schema")
            if params is None:
                params = {"type": "object", "properties": {}}
            if not isinstance(params, Mapping):
                raise ToolDefinitionError(
                    f"tools[{index}].function.parameters: bad value {params!r}; "
                    "parameters must be a JSON-schema object"
                )
            out.append(
                {
                    "type": "function",
                    "function": {
                        "name": name,
                        "description": str(fn.get("description") or ""),
                        "parameters": _lower_types(dict(params)),
                    },
                }
            )
    fixed: list[dict[str, Any]] = replace_surrogates(out)
    if fixed != out:
        logger.warning("tools: lone UTF-16 surrogates replaced by U+FFFD (UTF-8 cannot hold them)")
    return fixed


def _lower_types(schema: Any) -> Any:
    """Gemini schemas spell types upper-case (``"OBJECT"``); JSON schema wants lower case."""
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key == "type" and isinstance(value, str):
                out[key] = value.lower()
            else:
                out[key] = _lower_types(value)
        return out
    if isinstance(schema, list):
        return [_lower_types(v) for v in schema]
    return schema


def tool_names(tools: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(t["function"]["name"]) for t in tools]


def tool_system_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """Instructions for chat formats whose template does not render ``tools`` itself."""
    lines = [
        "You may call functions. Available tools (JSON schema):",
        "<tools>",
        *(json.dumps(t, ensure_ascii=False) for t in tools),
        "</tools>",
        "To call a tool, answer with exactly:",
        '<tool_call>{"name": <tool name>, "arguments": <JSON object>}</tool_call>',
    ]
    return "\n".join(lines)


# --- JSON repair ---------------------------------------------------------------------


def _strip_fences(text: str) -> str:
    text = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
    return fence.group(1) if fence else text


def _drop_trailing_comma(out: list[str]) -> None:
    """Remove a comma (and the whitespace after it) at the end of ``out``; only called
    outside a string, where that tail is JSON structure, never string content."""
    i = len(out)
    while i and out[i - 1].isspace():
        i -= 1
    if i and out[i - 1] == ",":
        del out[i - 1 :]


def repair_json(text: str) -> str | None:
    """Return a repaired JSON text when the fix is mechanical, else None.

    Fixes: code fences, trailing commas, an unterminated final string, missing closing
    brackets/braces at the end. Never touches what is inside a string. Anything else
    (unquoted keys or values, garbage) is not guessed."""
    candidate = _strip_fences(text)
    out: list[str] = []
    stack: list[str] = []
    in_string = False
    escaped = False
    for ch in candidate:
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return None
            _drop_trailing_comma(out)
        out.append(ch)
    if in_string:
        if escaped:
            out.pop()  # a lone backslash cut off at the end
        out.append('"')
    for closer in reversed(stack):
        _drop_trailing_comma(out)
        out.append(closer)
    _drop_trailing_comma(out)
    repaired = "".join(out)
    try:
        json.loads(repaired)
    except json.JSONDecodeError:
        return None
    return repaired


def _loads_object(text: str, what: str, raw: str) -> tuple[dict[str, Any], bool]:
    try:
        value = json.loads(text)
        repaired = False
    except json.JSONDecodeError as exc:
        fixed = repair_json(text)
        if fixed is None:
            raise ToolCallError(
                f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}) "
                "and cannot be repaired safely",
                raw,
            ) from exc
        value = json.loads(fixed)
        repaired = True
        logger.warning("repaired invalid tool-call JSON: %r -> %r", text, fixed)
    if not isinstance(value, dict):
        raise ToolCallError(f"{what} must be a JSON object, got {type(value).__name__}", raw)
    return value, repaired


def parse_call_json(text: str, *, known: Sequence[str] | None = None, index: int = 0) -> ToolCall:
    """One ``{"name": ..., "arguments": {...}}`` object (arguments may be a JSON string)."""
    raw = text
    obj, repaired = _loads_object(_strip_fences(text), "tool call", raw)
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ToolCallError('tool call has no "name" string', raw)
    if known is not None and name not in known:
        raise ToolCallError(
            f"model called unknown tool {name!r} (available: {', '.join(known) or 'none'})", raw
        )
    args: object = obj.get("arguments", obj.get("parameters", obj.get("args")))
    if args is None:
        if "arguments" in obj or "parameters" in obj:
            raise ToolCallError(f"tool call {name!r} has null arguments", raw)
        args = {}
        logger.info("tool call %r came without arguments; using {}", name)
    if isinstance(args, str):
        args, args_repaired = _loads_object(args, f"arguments of tool call {name!r}", raw)
        repaired = repaired or args_repaired
    if not isinstance(args, dict):
        raise ToolCallError(
            f"arguments of tool call {name!r} must be a JSON object, got {type(args).__name__}",
            raw,
        )
    call_id = obj.get("id")
    return ToolCall(
        name=name,
        arguments=args,
        id=str(call_id) if call_id else f"call_{index}",
        raw=raw,
        repaired=repaired,
    )


def parse_tool_calls(text: str, *, known: Sequence[str] | None = None) -> ParsedOutput:
    """Split model output into content and tool calls (what :class:`ToolCallStreamFilter`
    gives for the same text, fed in one piece).

    ``<tool_call>`` blocks are calls; an unclosed final block (generation stopped before
    ``</tool_call>``) is still parsed. With ``known`` tool names, a reply that starts with a
    bare JSON object naming a known tool is a call too (Llama 3.x style, ``"arguments"``
    or ``"parameters"``)."""
    filt = ToolCallStreamFilter(known)
    shown = filt.feed(text)
    tail, calls = filt.finish()
    return ParsedOutput(content=(shown + tail).strip(), tool_calls=calls)


def _partial_tag_suffix(text: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of ``<tool_call>``."""
    for n in range(min(len(OPEN_TAG) - 1, len(text)), 0, -1):
        if OPEN_TAG.startswith(text[-n:]):
            return n
    return 0


_SEPARATORS = " \t\r\n;"
_NAME_RE = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')


class _JsonScanner:
    """Finds where a JSON object that starts a text ends, one chunk at a time."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def feed(self, chunk: str) -> int:
        """Index in ``chunk`` just past the object's closing brace, or -1 if not yet."""
        for i, ch in enumerate(chunk):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return -1


class ToolCallStreamFilter:
    """Tool calls out of a stream of text, holding back whatever might be a call.

    ``feed(chunk)`` returns the text that is safe to show now; ``finish()`` returns the
    remaining text and parses the collected calls (raises :class:`ToolCallError` for an
    unusable one). Held back: text inside ``<tool_call>`` blocks, a trailing prefix of
    ``<tool_call>``, and, with ``known`` tool names, a reply that starts with ``{`` until
    its object is complete: a bare call (Llama 3.x: ``{"name": ..., "parameters": {...}}``,
    optionally several separated by ``;`` or newlines) is a call, anything else is released
    as text. Cost per chunk is linear in the chunk, not in the reply."""

    def __init__(self, known: Sequence[str] | None = None) -> None:
        self.known = list(known) if known is not None else None
        self._pending = ""  # text not yet classified (possible tag start)
        self._in_call = False
        self._call_buf = ""
        self._bodies: list[str] = []
        self._bare_ok = bool(self.known)  # the reply may still start with a bare call
        self._bare: _JsonScanner | None = None  # scanning a bare object
        self._sep = ""  # held separators before a bare object (or a non-call object)
        self._obj = ""  # held text of the bare object being scanned
        self._bare_calls: list[str] = []
        self.raw = ""

    def feed(self, chunk: str) -> str:
        self.raw += chunk
        if self._bare_ok:
            chunk = self._feed_bare(chunk)
            if self._bare_ok or not chunk:
                return ""
        return self._feed_tags(chunk)

    # -- bare JSON at the start of the reply ---------------------------------------------

    def _feed_bare(self, chunk: str) -> str:
        """Hold a leading bare call; returns text to pass on once it is clear there is none."""
        while chunk:
            if self._bare is None:
                stripped = chunk.lstrip(_SEPARATORS)
                self._sep += chunk[: len(chunk) - len(stripped)]
                chunk = stripped
                if not chunk:
                    return ""
                if chunk[0] != "{":
                    return self._end_bare(chunk)
                self._bare = _JsonScanner()
            end = self._bare.feed(chunk)
            if end < 0:
                self._obj += chunk
                return ""
            body, chunk = self._obj + chunk[:end], chunk[end:]
            self._obj = ""
            self._bare = None
            if self._is_bare_call(body):
                self._bare_calls.append(body)
                self._sep = ""
            else:
                self._sep += body
                return self._end_bare(chunk)
        return ""

    def _held_text(self) -> str:
        """Held separators (and a non-call object): text, less separators after a call."""
        held = self._sep.lstrip(_SEPARATORS) if self._bare_calls else self._sep
        self._sep = ""
        return held

    def _is_bare_call(self, text: str) -> bool:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return False
        return (
            isinstance(obj, dict)
            and isinstance(obj.get("name"), str)
            and obj["name"] in (self.known or [])
        )

    def _end_bare(self, rest: str) -> str:
        """No (more) bare calls: what was held goes on as ordinary text."""
        self._bare_ok = False
        return self._held_text() + rest

    # -- <tool_call> blocks ----------------------------------------------------------------

    def _feed_tags(self, chunk: str) -> str:
        self._pending += chunk
        out: list[str] = []
        while self._pending:
            if self._in_call:
                seen = max(0, len(self._call_buf) - len(CLOSE_TAG) + 1)
                self._call_buf += self._pending
                self._pending = ""
                end = self._call_buf.find(CLOSE_TAG, seen)
                if end < 0:
                    break
                self._bodies.append(self._call_buf[:end])
                self._pending = self._call_buf[end + len(CLOSE_TAG) :]
                self._call_buf = ""
                self._in_call = False
                continue
            start = self._pending.find(OPEN_TAG)
            if start >= 0:
                out.append(self._pending[:start])
                self._pending = self._pending[start + len(OPEN_TAG) :]
                self._in_call = True
                continue
            keep = _partial_tag_suffix(self._pending)
            out.append(self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep :]
            break
        return "".join(out)

    @property
    def in_call(self) -> bool:
        return self._in_call or bool(self._bodies) or bool(self._bare_calls)

    def finish(self) -> tuple[str, list[ToolCall]]:
        """Remaining safe text and the parsed tool calls (raises :class:`ToolCallError`)."""
        tail = ""
        if self._bare_ok:
            self._bare_ok = False
            body, self._obj = self._obj, ""
            if self._bare is not None:  # the reply ended inside a leading object
                self._bare = None
                match = _NAME_RE.search(body)
                if match and self.known and match.group(1) in self.known:
                    self._bare_calls.append(body)  # cut off: parsed (and repaired) below
                    body = ""
            tail = self._held_text() + body
        if self._in_call:
            self._bodies.append(self._call_buf)
        else:
            tail += self._pending
        self._pending = ""
        self._call_buf = ""
        self._in_call = False
        bodies = self._bare_calls + self._bodies
        calls = [parse_call_json(body, known=self.known, index=i) for i, body in enumerate(bodies)]
        return tail, calls


def tool_result(content: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
    """SAIVerse's tool-mode reply: ``{"type": "text"|"tool_call"|"both", ...}``.

    The first call fills ``tool_name``/``tool_args``; all calls are in ``tool_calls``."""
    content = content.strip()
    if not calls:
        return {"type": "text", "content": content}
    first = calls[0]
    result: dict[str, Any] = {
        "type": "both" if content else "tool_call",
        "tool_name": first.name,
        "tool_args": dict(first.arguments),
        "tool_calls": [{"id": c.id, "name": c.name, "arguments": dict(c.arguments)} for c in calls],
    }
    if content:
        result["content"] = content
    return result
