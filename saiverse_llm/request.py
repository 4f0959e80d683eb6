"""What every backend (the local model, a fallback) is given and gives back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saiverse_llm.messages import Message
from saiverse_llm.tools import ToolCall


@dataclass
class Request:
    """One normalised generation request (what every backend gets)."""

    messages: list[Message]
    tools: list[dict[str, Any]] = field(default_factory=list)
    response_schema: dict[str, Any] | None = None
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 2048
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    grammar: Any = None  # a llama_cpp.LlamaGrammar; local models only
    extra: dict[str, Any] = field(default_factory=dict)  # other llama.cpp sampling kwargs


@dataclass
class Reply:
    """A finished answer: content text (tool-call blocks removed), calls, token counts.

    ``cached_tokens``: prompt tokens served from the KV cache of the previous call on the
    same model instead of being evaluated again (SAIVerse's ``UsageInfo.cached_tokens``)."""

    text: str
    answered_by: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    raw: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    finish_reason: str | None = None
    cached_tokens: int = 0
