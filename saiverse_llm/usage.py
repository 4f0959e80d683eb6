"""Token usage of one call, read-and-clear (SAIVerse's ``consume_usage()``)."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Usage:
    """What one ``generate``/``generate_stream`` call cost and who answered it.

    ``model`` is the configured model key; ``answered_by`` is the model that produced the
    reply (the same key, or the fallback's name such as ``gemini-2.0-flash``)."""

    prompt_tokens: int
    completion_tokens: int
    model: str
    answered_by: str
    fallback: bool = False
    fallback_reason: str | None = None
    attempts: int = 1

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    # SAIVerse spells these input/output in places.
    @property
    def input_tokens(self) -> int:
        return self.prompt_tokens

    @property
    def output_tokens(self) -> int:
        return self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_tokens"] = self.total_tokens
        return data


class UsageSlot:
    """One pending value per thread: set by a call, taken once by ``consume``.

    Per thread, so N threads sharing one client never read each other's usage."""

    def __init__(self) -> None:
        self._local = threading.local()

    def set(self, value: Any) -> None:
        self._local.value = value

    def clear(self) -> None:
        self._local.value = None

    def consume(self) -> Any:
        value = getattr(self._local, "value", None)
        self._local.value = None
        return value

    def peek(self) -> Any:
        return getattr(self._local, "value", None)
