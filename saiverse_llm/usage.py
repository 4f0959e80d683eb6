"""Token usage: one record per call, read-and-clear (SAIVerse's ``consume_usage()``).

Semantics, the way SAIVerse's callers use ``LLMClient.consume_usage()`` (its base class
stores a ``UsageInfo`` per request and every caller consumes it right after the call):

* **per call**: each ``generate``/``generate_stream`` call sets the pending record of the
  calling thread to that call's usage, replacing a record nobody consumed (two calls, then
  one ``consume_usage()``: the second call's record, not a sum). ``consume_usage()``
  returns it and clears it; a second ``consume_usage()`` returns None. A call that fails
  leaves no record. A stream records its usage when it ends, or when its consumer closes
  it early (``finish_reason`` "cancelled", the tokens generated so far).
* **per thread**: threads sharing one client never see each other's records.
* **cumulative**: :class:`UsageTotals` (``client.total_usage()``) sums every recorded call of
  the client, all threads, since it was made; reading it clears nothing.

:class:`Usage` carries SAIVerse's ``UsageInfo`` attributes (``model``, ``input_tokens``,
``output_tokens``, ``timestamp``, ``cached_tokens``, ``cache_write_tokens``, ``cache_ttl``,
``cache_storage_tokens``, ``cache_storage_ttl_seconds``), so its usage tracker can record
it unchanged, plus who answered (a fallback names itself).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Usage:
    """What one ``generate``/``generate_stream`` call cost and who answered it.

    ``model`` is the configured model key (SAIVerse prices by it); ``answered_by`` is the
    model that produced the reply (the same key, or the fallback's name such as
    ``gemini-2.0-flash``). ``cached_tokens``: prompt tokens served from the KV cache of the
    model's previous call instead of being evaluated again (a local model's prefix cache;
    they are part of ``prompt_tokens``). ``timestamp``: ``time.time()`` when recorded."""

    prompt_tokens: int
    completion_tokens: int
    model: str
    answered_by: str
    fallback: bool = False
    fallback_reason: str | None = None
    attempts: int = 1
    cached_tokens: int = 0
    finish_reason: str | None = None
    timestamp: float = field(default_factory=time.time)
    # SAIVerse's UsageInfo fields for provider-side caches: always 0 / "" for llama.cpp.
    cache_write_tokens: int = 0
    cache_ttl: str = ""
    cache_storage_tokens: int = 0
    cache_storage_ttl_seconds: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    # SAIVerse's UsageInfo spells these input/output.
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


@dataclass
class UsageTotals:
    """Sums over every call a client recorded (all threads): ``calls``, tokens, fallbacks."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    fallback_calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, usage: Usage) -> None:
        with self._lock:
            self.calls += 1
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
            self.cached_tokens += usage.cached_tokens
            self.fallback_calls += int(usage.fallback)

    def snapshot(self) -> UsageTotals:
        with self._lock:
            return UsageTotals(
                self.calls,
                self.prompt_tokens,
                self.completion_tokens,
                self.cached_tokens,
                self.fallback_calls,
            )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
