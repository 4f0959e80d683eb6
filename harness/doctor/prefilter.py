"""A cheap test before a slow regular expression: the words any match must contain.

The doctor matches dozens of case-insensitive alternations (``build_log``'s step markers and
error lines, ``causes.yaml``'s ``matches``) against logs of megabytes, most of whose lines
(compiler command lines) match none of them; Python's ``re`` tries every alternative at
every position, about 0.3 ms per 350-character line for the error alternation alone. A
match of ``(CUDA|ROCm) error|Illegal instruction`` must contain "error" or "illegal
instruction", so a line (or a whole text) holding neither is skipped with a substring test.

:func:`required_words` reads those words from the pattern itself (Python's own regex parser,
so there is no second list to keep in step); a pattern it cannot read is always searched.
The test is exact for ASCII text; a text with other characters (where ``IGNORECASE`` has
equivalences ``str.lower`` does not, e.g. "ſ" for "s") is always searched.
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import Any

_p: Any
_c: Any
try:  # the parser behind re.compile (a private module: a surprise means no prefilter)
    _p = importlib.import_module("re._parser")
    _c = importlib.import_module("re._constants")
except ImportError:  # pragma: no cover - another Python
    _p = _c = None

# the shortest word worth testing: shorter ones are in almost every line
_MIN_WORD = 3


@functools.lru_cache(maxsize=1024)
def required_words(pattern: re.Pattern[str]) -> frozenset[str] | None:
    """Lower-case words one of which every match of ``pattern`` contains, or None when no
    such set is known (always search). E.g. ``(CUDA|ROCm) error|^Illegal instruction`` ->
    {"error", "illegal instruction"}."""
    if _p is None or not isinstance(pattern.pattern, str):
        return None
    try:
        words = _sequence(list(_p.parse(pattern.pattern, pattern.flags)))
    except Exception:  # an op this reader does not know: no prefilter, never a wrong answer
        return None
    if words is None or any(not w.isascii() for w in words):
        return None
    return frozenset(w.lower() for w in words)


def _sequence(items: list[tuple[Any, Any]]) -> set[str] | None:
    """The most selective requirement of a sequence: one of its literal runs, or the words
    of one of its parts (the set whose shortest word is longest)."""
    choices: list[set[str]] = []
    run = ""
    for op, av in items:
        if op is _c.LITERAL:
            run += chr(av)
            continue
        if len(run) >= _MIN_WORD:
            choices.append({run})
        run = ""
        part = _item(op, av)
        if part is not None:
            choices.append(part)
    if len(run) >= _MIN_WORD:
        choices.append({run})
    return max(choices, key=lambda s: min(map(len, s)), default=None)


def _item(op: Any, av: Any) -> set[str] | None:
    if op is _c.SUBPATTERN:
        return _sequence(list(av[3]))
    if op is _c.ATOMIC_GROUP:
        return _sequence(list(av))
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
        low, _high, inner = av
        return _sequence(list(inner)) if low >= 1 else None
    if op is _c.BRANCH:
        union: set[str] = set()
        for branch in av[1]:
            words = _sequence(list(branch))
            if words is None:
                return None
            union |= words
        return union
    return None  # a class, an anchor, a look-around, a backreference: no word


@functools.lru_cache(maxsize=4)
def _lowered(text: str) -> str | None:
    return text.lower() if text.isascii() else None


def may_match(pattern: re.Pattern[str], text: str) -> bool:
    """False only when ``pattern`` cannot match ``text``: none of its required words is in
    it (ASCII text; any other text: True)."""
    words = required_words(pattern)
    if words is None:
        return True
    low = _lowered(text)
    return low is None or any(map(low.__contains__, words))


def search(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """``pattern.search(text)``, skipped when :func:`may_match` says it cannot match."""
    return pattern.search(text) if may_match(pattern, text) else None
