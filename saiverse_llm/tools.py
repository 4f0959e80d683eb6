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
    return out


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


def repair_json(text: str) -> str | None:
    """Return a repaired JSON text when the fix is mechanical, else None.

    Fixes: code fences, trailing commas, unterminated final string, missing closing
    brackets/braces at the end. Anything else (unquoted values, garbage) is not guessed."""
    candidate = _strip_fences(text)
    candidate = re.sub(r",\s*([}\]])", r"\1", candidate)
    stack: list[str] = []
    in_string = False
    escaped = False
    for ch in candidate:
        if in_string:
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
        elif ch in "}]" and (not stack or stack.pop() != ch):
            return None
    if in_string:
        candidate += '"'
    candidate = re.sub(r",\s*$", "", candidate)
    candidate += "".join(reversed(stack))
    try:
        json.loads(candidate)
    except json.JSONDecodeError:
        return None
    return candidate


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
    """Split model output into content and ``<tool_call>`` blocks.

    An unclosed final block (generation stopped before ``</tool_call>``) is still parsed.
    A reply that is only a bare JSON object naming a known tool is taken as a call too
    (Llama 3.x style)."""
    content_parts: list[str] = []
    calls: list[ToolCall] = []
    pos = 0
    while True:
        start = text.find(OPEN_TAG, pos)
        if start < 0:
            content_parts.append(text[pos:])
            break
        content_parts.append(text[pos:start])
        body_start = start + len(OPEN_TAG)
        end = text.find(CLOSE_TAG, body_start)
        body = text[body_start:] if end < 0 else text[body_start:end]
        calls.append(parse_call_json(body, known=known, index=len(calls)))
        if end < 0:
            break
        pos = end + len(CLOSE_TAG)
    content = "".join(content_parts).strip()
    if not calls and known and content.startswith("{") and content.endswith("}"):
        try:
            obj = json.loads(content)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and obj.get("name") in known:
            calls.append(parse_call_json(content, known=known))
            content = ""
    return ParsedOutput(content=content, tool_calls=calls)


def _partial_tag_suffix(text: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of ``<tool_call>``."""
    for n in range(min(len(OPEN_TAG) - 1, len(text)), 0, -1):
        if OPEN_TAG.startswith(text[-n:]):
            return n
    return 0


class ToolCallStreamFilter:
    """Incremental version of :func:`parse_tool_calls` for streams.

    ``feed(chunk)`` returns the text that is safe to show now; text inside ``<tool_call>``
    blocks and any trailing text that could still become ``<tool_call>`` is held back.
    ``finish()`` returns the remaining text and parses the collected calls."""

    def __init__(self, known: Sequence[str] | None = None) -> None:
        self.known = list(known) if known is not None else None
        self._pending = ""  # text not yet classified (possible tag start)
        self._in_call = False
        self._call_buf = ""
        self._bodies: list[str] = []
        self.raw = ""

    def feed(self, chunk: str) -> str:
        self.raw += chunk
        self._pending += chunk
        out: list[str] = []
        while self._pending:
            if self._in_call:
                self._call_buf += self._pending
                self._pending = ""
                end = self._call_buf.find(CLOSE_TAG)
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
        return self._in_call or bool(self._bodies)

    def finish(self) -> tuple[str, list[ToolCall]]:
        """Remaining safe text and the parsed tool calls (raises :class:`ToolCallError`)."""
        tail = ""
        if self._in_call:
            self._bodies.append(self._call_buf)
        else:
            tail = self._pending
        self._pending = ""
        self._call_buf = ""
        self._in_call = False
        calls = [
            parse_call_json(body, known=self.known, index=i) for i, body in enumerate(self._bodies)
        ]
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
