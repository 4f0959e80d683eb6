"""Errors a user can fix, and the environment settings that can cause them.

:class:`UserError` is the base both command lines know: a raised ``UserError`` (or subclass)
becomes the one line ``error: <what>. Fix: <fix>`` on stderr with its ``exit_code`` (1 for a
failure, 2 for usage), see :mod:`saiverse_llm.cli_errors`. Raise one from any command (new
commands included) instead of printing and returning a code. :class:`UsageError` is for bad
input the user gave (an option value, a name, an environment variable); :class:`SettingError`
for a bad environment variable (also a ``ValueError``, as before).
"""

from __future__ import annotations

import os
from collections.abc import Mapping


class UserError(Exception):
    """A problem the user can fix. ``str()`` is ``"<what>. Fix: <fix>"``.

    ``exit_code``: 1 (the work failed) unless given; :class:`UsageError` uses 2.
    """

    exit_code: int = 1

    def __init__(self, what: str, fix: str, *, exit_code: int | None = None) -> None:
        self.what = what.rstrip(" .;")
        self.fix = fix.rstrip(" .")
        if exit_code is not None:
            self.exit_code = exit_code
        super().__init__(f"{self.what}. Fix: {self.fix}")


class UsageError(UserError):
    """The user's input (an option, a name, a setting) is wrong: exit status 2."""

    exit_code = 2


class SettingError(UsageError, ValueError):
    """An environment variable has a value that cannot be used."""

    def __init__(self, name: str, value: str, problem: str, fix: str) -> None:
        self.name = name
        self.value = value
        shown = value if len(value) <= 60 else f"{value[:40]}... ({len(value):,} characters)"
        super().__init__(f"${name}={shown!r} {problem}", fix)


class ParameterError(UsageError, ValueError):
    """A generation or load parameter (max_tokens, temperature, seed, n_gpu_layers...) is out
    of range; raised by the client before the value reaches llama.cpp."""


def env_int(
    name: str,
    *,
    default: int | None,
    bounds: tuple[int, int],
    none_words: frozenset[str] = frozenset(),
    fix: str,
    env: Mapping[str, str] | None = None,
) -> int | None:
    """The integer in ``$name``, ``default`` when unset or blank, ``None`` for a word in
    ``none_words`` (compared lower-case); otherwise :class:`SettingError`."""
    raw = (os.environ if env is None else env).get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in none_words:
        return None
    low, high = bounds
    digits = raw[1:] if raw[:1] in "+-" else raw
    if not (digits.isascii() and digits.isdigit()):  # not '²', '٣' or '1_000'
        raise SettingError(name, raw, "is not a whole number", fix)
    value = int(raw) if len(digits) <= 20 else (high + 1 if raw[0] != "-" else low - 1)
    if not low <= value <= high:
        raise SettingError(name, raw, f"is outside {low:,}..{high:,}", fix)
    return value
