"""Normalise SAIVerse chat messages into what llama-cpp-python's chat templates expect.

SAIVerse hands its providers OpenAI-like message dicts with extras: a ``host`` role (the
world's narrator, a system voice), bookkeeping keys such as ``metadata``, tool results and
assistant tool calls in several shapes. Chat templates see exactly what they are given, so
everything is normalised here, before any template renders it:

- roles: ``host`` -> ``system``, ``model`` -> ``assistant``, ``function`` -> ``tool``;
  any other unknown role is an error (a template would silently drop or mangle it);
- keys: only ``role``, ``content``, ``name`` (user/tool), ``tool_calls`` (assistant) and
  ``tool_call_id`` (tool) are kept; ``metadata`` and every other key are dropped;
- content: ``None`` -> ``""``; OpenAI content parts are joined to text (image parts are
  dropped with a warning: the llama.cpp client does not support images);
- assistant ``tool_calls`` -> ``[{"id", "type": "function", "function": {"name",
  "arguments": <JSON string>}}]`` whatever shape they came in;
- tool results -> ``{"role": "tool", "tool_call_id", "content": <str>}`` (dict/list
  content is JSON-encoded; a missing id is taken from the assistant call it answers).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger("saiverse_llm.messages")

ROLE_ALIASES: dict[str, str] = {
    "host": "system",
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
}

Message = dict[str, Any]


class MessageError(ValueError):
    """A message that cannot be turned into a chat-template message."""

    def __init__(self, index: int, field: str, value: object, fix: str) -> None:
        self.index = index
        self.field = field
        self.value = value
        self.fix = fix
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:200] + "..."
        super().__init__(f"messages[{index}].{field}: bad value {shown}; {fix}")


def _content_text(index: int, content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts: list[str] = []
        dropped = 0
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text":
                texts.append(str(part.get("text", "")))
            elif isinstance(part, Mapping) and "text" in part and "type" not in part:
                texts.append(str(part["text"]))
            else:
                dropped += 1
        if dropped:
            logger.warning(
                "messages[%d]: dropped %d non-text content part(s) (images are not supported "
                "by the llama.cpp client; set supports_images false or use another provider)",
                index,
                dropped,
            )
        return "".join(texts)
    if isinstance(content, Mapping):
        return json.dumps(content, ensure_ascii=False)
    raise MessageError(
        index, "content", content, "content must be a string, a list of text parts, or None"
    )


def _arguments_json(index: int, name: str, arguments: object) -> str:
    """Tool-call arguments as a JSON object string (what llama-cpp-python passes on)."""
    if arguments is None:
        return "{}"
    if isinstance(arguments, str):
        text = arguments.strip() or "{}"
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MessageError(
                index,
                "tool_calls.function.arguments",
                arguments,
                f"arguments of tool call {name!r} must be a JSON object ({exc})",
            ) from exc
        if not isinstance(parsed, dict):
            raise MessageError(
                index,
                "tool_calls.function.arguments",
                arguments,
                f"arguments of tool call {name!r} must be a JSON object, "
                f"not {type(parsed).__name__}",
            )
        return json.dumps(parsed, ensure_ascii=False)
    if isinstance(arguments, Mapping):
        return json.dumps(dict(arguments), ensure_ascii=False)
    raise MessageError(
        index,
        "tool_calls.function.arguments",
        arguments,
        "arguments must be a dict or a JSON object string",
    )


def normalize_tool_calls(index: int, calls: object) -> list[dict[str, Any]]:
    """Assistant tool calls in OpenAI shape, whatever shape SAIVerse used."""
    if calls is None:
        return []
    if isinstance(calls, Mapping):
        calls = [calls]
    if not isinstance(calls, Sequence) or isinstance(calls, (str, bytes)):
        raise MessageError(index, "tool_calls", calls, "tool_calls must be a list of calls")
    out: list[dict[str, Any]] = []
    for n, call in enumerate(calls):
        if not isinstance(call, Mapping):
            raise MessageError(index, f"tool_calls[{n}]", call, "each tool call must be a dict")
        function = call.get("function")
        source: Mapping[str, Any] = function if isinstance(function, Mapping) else call
        name = source.get("name")
        if not isinstance(name, str) or not name:
            raise MessageError(
                index, f"tool_calls[{n}].function.name", name, "a tool call needs a tool name"
            )
        if "arguments" in source:
            raw_args = source.get("arguments")
        else:
            raw_args = source.get("args", source.get("parameters"))
        call_id = call.get("id")
        out.append(
            {
                "id": str(call_id) if call_id else f"call_{index}_{n}",
                "type": "function",
                "function": {"name": name, "arguments": _arguments_json(index, name, raw_args)},
            }
        )
    return out


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """Return new messages safe to hand to a chat template (see module docstring)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise MessageError(0, "messages", messages, "pass a list of {'role', 'content'} dicts")
    out: list[Message] = []
    pending: dict[str, str] = {}  # tool_call_id -> tool name, calls not answered yet
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise MessageError(index, "message", message, "each message must be a dict")
        raw_role = message.get("role")
        role = ROLE_ALIASES.get(str(raw_role).lower()) if isinstance(raw_role, str) else None
        if role is None:
            raise MessageError(
                index,
                "role",
                raw_role,
                f"use one of {', '.join(sorted(ROLE_ALIASES))}",
            )
        dropped = sorted(
            set(message)
            - {"role", "content", "name", "tool_calls", "tool_call_id", "function_call"}
        )
        if dropped:
            logger.debug("messages[%d]: dropped keys %s", index, ", ".join(dropped))
        if role == "tool":
            out.append(_tool_result(index, message, pending))
            continue
        norm: Message = {"role": role, "content": _content_text(index, message.get("content"))}
        if role == "assistant":
            raw_calls = message.get("tool_calls")
            if raw_calls is None and isinstance(message.get("function_call"), Mapping):
                raw_calls = [message["function_call"]]
            calls = normalize_tool_calls(index, raw_calls)
            if calls:
                norm["tool_calls"] = calls
                for call in calls:
                    pending[call["id"]] = call["function"]["name"]
        name = message.get("name")
        if role == "user" and isinstance(name, str) and name:
            norm["name"] = name
        out.append(norm)
    return [_utf8_safe(index, m) for index, m in enumerate(out)]


_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def replace_surrogates(value: Any) -> Any:
    """``value`` (strings, in dicts and lists too, keys included) with lone UTF-16 surrogates
    (``"\\ud800"``, which ``json.loads`` makes of a broken escape in a client's JSON) replaced
    by U+FFFD and valid pairs joined: UTF-8 cannot encode a lone one, and tokenizing raised
    ``UnicodeEncodeError``. Returns ``value`` itself when there is nothing to replace."""
    if isinstance(value, str):
        if not _SURROGATE_RE.search(value):
            return value
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {replace_surrogates(k): replace_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_surrogates(v) for v in value]
    return value


def _utf8_safe(index: int, message: Message) -> Message:
    """``message`` with :func:`replace_surrogates` applied, and a warning when it changed."""
    fixed: Message = replace_surrogates(message)
    if fixed != message:
        logger.warning(
            "messages[%d]: lone UTF-16 surrogate(s) replaced by U+FFFD (not encodable as UTF-8)",
            index,
        )
    return fixed


def _tool_result(index: int, message: Mapping[str, Any], pending: dict[str, str]) -> Message:
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif content is None:
        text = ""
    elif isinstance(content, (Mapping, list, tuple, int, float, bool)):
        text = json.dumps(content, ensure_ascii=False)
    else:
        text = str(content)
    name = message.get("name")
    call_id = message.get("tool_call_id")
    if not call_id:
        matches = [cid for cid, tool in pending.items() if name is None or tool == name]
        if matches:
            call_id = matches[0]
        else:
            call_id = f"call_{index}"
            logger.debug("messages[%d]: tool result without a matching call; id %s", index, call_id)
    call_id = str(call_id)
    tool_name = pending.pop(call_id, None)
    result: Message = {"role": "tool", "tool_call_id": call_id, "content": text}
    if isinstance(name, str) and name:
        result["name"] = name
    elif tool_name:
        result["name"] = tool_name
    return result


def fold_system_messages(messages: Sequence[Message]) -> list[Message]:
    """For chat formats without a system role (Gemma): put system text into the first user
    turn instead of letting the format drop it silently (llama-cpp-python's ``gemma`` format
    discards system messages). Tool results become user turns, tool calls assistant text."""
    system_parts = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
    out: list[Message] = []
    for message in messages:
        role = message["role"]
        if role == "system":
            continue
        if role == "tool":
            out.append(
                {
                    "role": "user",
                    "content": f"[tool result {message['tool_call_id']}]\n" + message["content"],
                }
            )
            continue
        if role == "assistant" and message.get("tool_calls"):
            calls = "\n".join(
                "<tool_call>"
                + json.dumps(
                    {
                        "name": c["function"]["name"],
                        "arguments": json.loads(c["function"]["arguments"]),
                    },
                    ensure_ascii=False,
                )
                + "</tool_call>"
                for c in message["tool_calls"]
            )
            text = (message["content"] + "\n" + calls) if message["content"] else calls
            out.append({"role": "assistant", "content": text})
            continue
        out.append(dict(message))
    if system_parts:
        system_text = "\n\n".join(system_parts)
        for message in out:
            if message["role"] == "user":
                message["content"] = f"{system_text}\n\n{message['content']}"
                break
        else:
            out.insert(0, {"role": "user", "content": system_text})
    return out
