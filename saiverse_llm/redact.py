"""Keep secrets out of everything both command lines print, write or log.

One home for redaction. :func:`redact_text` is applied to every output path of
``saiverse-llm`` and ``llama-harness`` (stdout and stderr through :class:`RedactingStream`,
log files through :class:`RedactingFormatter`, error lines, the doctor's and the replays' text,
JSON and Markdown), so a secret that reaches any of them is masked as ``***REDACTED***``.

What counts as a secret:

* the *value* of every environment variable whose *name* looks secret (``GEMINI_API_KEY``,
  ``HF_TOKEN``, any ``*_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*PASSWORD*``, ``*CREDENTIAL*``...),
  wherever it appears verbatim (a log line, a URL, a ``CMAKE_ARGS`` string);
* ``name=value`` / ``name: value`` pairs and ``--name value`` flags whose name looks secret,
  header names with hyphens included (``X-Api-Key: ...``, ``PRIVATE-TOKEN: ...``), values in
  quotes with spaces (``MY_PASSWORD="correct horse battery staple"``), JSON and YAML keys,
  and URL query parameters (``...x.gguf?token=...``; a ``scheme://`` is never taken for a
  ``name:`` pair);
* ``Authorization``/``Proxy-Authorization``/``Cookie`` header values and bare ``Bearer``
  tokens;
* credentials in URLs (``https://user:pass@host``, ``https://token@host``,
  ``redis://:pass@host``);
* well-known token shapes (Hugging Face ``hf_``, Google ``AIza``/``ya29.``, GitHub ``ghp_``
  and ``github_pat_``, GitLab ``glpat-``, OpenAI/Anthropic ``sk-``, Slack ``xox?-``, PyPI
  ``pypi-``, npm ``npm_``, Stripe ``sk_live_``, AWS ``AKIA...``, JSON Web Tokens) and
  PEM private-key blocks.

``tests/unit/test_redact.py`` holds the table of secret shapes this must cover.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TextIO

MASK = "***REDACTED***"

_SECRET_NAME_RE = re.compile(
    r"(?:^|_)(?:KEY|TOKEN|SECRETS?|PASSWORD|PASSWD|PASS|PASSPHRASE|PWD|CREDENTIALS?|AUTH"
    r"|APIKEY|SIG|SIGNATURE|COOKIE|SESSION_?ID)(?:_|$)"
    r"|PASSWORD|SECRET|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY|AUTH_?TOKEN|ACCESS_?TOKEN",
    re.IGNORECASE,
)
# Names that match the pattern but hold no secret (paths and switches everybody prints).
_NOT_SECRET = {
    "PWD",
    "OLDPWD",
    "KEYTIMEOUT",
    "GPG_TTY",
    "SSH_AUTH_SOCK",
    "TOKENIZERS_PARALLELISM",
    "KEY_ID",
    "KEYS",
    # a bare "key" names a config key, a dict key, a cache key... ("?key=" in a URL is caught
    # by _QUERY_RE, and Google's AIza keys by their shape)
    "KEY",
}

# scheme://user:pass@  scheme://token@  scheme://:pass@  (also scheme:/ : a URL given as a file
# path comes back from pathlib as "https:/user:pass@host/x.gguf")
_URL_CRED_RE = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*:/{1,3})(?P<cred>[^/@\s:\"'<>]*:[^/@\s\"'<>]*|[^/@\s:\"'<>]+)@"
)
# name SEP value, with an optional quote around the name (JSON) and around the value. The
# ":" separator never matches the "://" of a URL, so "https://host/x?token=..." is left to
# the query parameter inside it. A bare value stops at a backslash (in serialised JSON, the
# "\n" after a log line's value is the next line, and "\"" the string's end) and never starts
# a JSON object or list.
_ASSIGN_RE = re.compile(
    r"(?P<name>(?<![A-Za-z0-9_.])[A-Za-z_][A-Za-z0-9_.-]*)(?P<nq>[\"']?)"
    r"(?P<sep>[ \t]*(?:=|:(?!//))[ \t]*)"
    r"(?:(?P<q>[\"'])(?P<qvalue>(?:\\.|(?!(?P=q)).)*)(?P=q)"
    r"|(?P<value>[^\s\"'|,;&<>)}\]\\{\[](?:[^\s\"'|,;&<>)}\]\\]*[^\s\"'|,;&<>)}\]\\.:])?))"
)
# --name value (space separated command-line flags). A bare value (here and above) never ends
# in "." "," ";" ":" so "--api-key X. Fix: ..." keeps the sentence's full stop.
_FLAG_RE = re.compile(
    r"(?P<flag>(?<![\w-])--?[A-Za-z][\w-]*)(?P<sep>\s+)"
    r"(?:(?P<q>[\"'])(?P<qvalue>(?:\\.|(?!(?P=q)).)*)(?P=q)|(?P<value>[^\s\"'-](?:[^\s\"']*[^\s\"'.,;:])?))"
)
# Whole-value headers: everything after the colon, up to the end of the line or quote.
_HEADER_RE = re.compile(
    r"(?i)(?P<head>\b(?:proxy-)?authorization|\bcookie|\bset-cookie)(?P<sep>[ \t]*[:=][ \t]*)"
    r"(?P<value>[^\r\n\"'\\]+)"
)
# URL query parameters that carry a credential even under a generic name.
_QUERY_RE = re.compile(
    r"(?i)(?P<head>[?&;](?:key|api_?key|token|access_?token|auth|sig|signature|pass(?:word)?)=)"
    # the value stops before a ")" and never ends in a sentence's "." "," ";" ":"
    r"(?P<value>[^&\s\"'#<>)]+?)(?=[.,;:]*(?:[&\s\"'#<>)]|$))"
)
_BEARER_RE = re.compile(r"(?i)\b(?P<kind>bearer|basic)\s+(?P<value>[A-Za-z0-9._~+/=-]{8,})")
_TOKEN_SHAPES = re.compile(
    r"\bhf_[A-Za-z0-9]{16,}\b"
    r"|\bAIza[0-9A-Za-z_-]{30,}"
    r"|\bya29\.[0-9A-Za-z_-]{20,}"
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}\b|\bgithub_pat_[A-Za-z0-9_]{20,}\b"
    r"|\bglpat-[A-Za-z0-9_-]{16,}"
    r"|\bsk-[A-Za-z0-9_-]{20,}"
    r"|\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}\b"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
    r"|\bpypi-[A-Za-z0-9_-]{40,}"
    r"|\bnpm_[A-Za-z0-9]{30,}\b"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
)
_PEM_RE = re.compile(
    r"-----BEGIN (?P<kind>[A-Z0-9 ]*PRIVATE KEY)-----.*?(?:-----END (?P=kind)-----|\Z)",
    re.DOTALL,
)
_NUMBER_RE = re.compile(r"[+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?%?", re.IGNORECASE)
_MIN_SECRET_LEN = 4


# "<what>_KEY" names that identify something rather than unlock it (the harness's cache keys,
# also as the sessions export them: LLAMA_HARNESS_BUILD_KEY is the wheel's cache key; masked, it
# turned every build key in llama-bench.json into the mask, and the report then said the
# benchmarks and llama-bench ran different builds).
_KEY_NOT_SECRET = re.compile(
    r"^(?:LLAMA_HARNESS_)?"
    r"(?:BUILD|WHEEL|CACHE|TREE|SORT|PRIMARY|FOREIGN|PUBLIC|GROUP|PARTITION|IDEMPOTENCY)_KEY$",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """True for names (environment variables, keys, headers, flags) whose values are secret.

    Hyphens and dots count as underscores: ``X-Api-Key`` and ``PRIVATE-TOKEN`` are secret.
    """
    bare = re.sub(r"[-.\s]+", "_", name.strip().lstrip("-").strip("\"'")).strip("_")
    if not bare or bare.upper() in _NOT_SECRET or _KEY_NOT_SECRET.match(bare):
        return False
    return bool(_SECRET_NAME_RE.search(bare))


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """The values of secret-named variables in ``env`` (default: ``os.environ``), longest first."""
    source = os.environ if env is None else env
    values = {v for k, v in source.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def _masked_pair(m: re.Match[str], name: str) -> str:
    """The match with its value (quoted or bare) replaced by the mask when ``name`` is secret;
    otherwise the value is searched for pairs itself (``--header="X-Api-Key: ..."``,
    ``CMAKE_ARGS=-DMY_TOKEN=...``)."""
    whole = m.group(0)
    value_group = "value" if m.group("q") is None else "qvalue"
    value = m.group(value_group)
    head = whole[: m.start(value_group) - m.start(0)]
    tail = whole[m.end(value_group) - m.start(0) :]
    secret = is_secret_name(name) or is_secret_name(name.removeprefix("D"))
    if not secret:
        return head + _redact_pairs(value) + tail
    if value == MASK:
        return whole
    if value_group == "value" and ":" in m.group("sep") and _NUMBER_RE.fullmatch(value):
        return whole  # "first token: 0.52 s" is a timing, not a secret
    if value_group == "value" and name.lower() == "token" and value.isdigit():
        return whole  # llama.cpp's "BOS token = 2", "EOS token = 1": token ids
    return head + MASK + tail


def _redact_pairs(text: str) -> str:
    text = _ASSIGN_RE.sub(lambda m: _masked_pair(m, m.group("name")), text)
    return _FLAG_RE.sub(lambda m: _masked_pair(m, m.group("flag")), text)


def redact_text(text: str, env: Mapping[str, str] | None = None) -> str:
    """Scrub secrets from free text (logs, command lines, URLs, JSON, YAML, Markdown)."""
    if not text:
        return text
    for value in secret_values(env):
        text = text.replace(value, MASK)
    text = _PEM_RE.sub(lambda m: f"-----BEGIN {m.group('kind')}----- {MASK}", text)
    text = _URL_CRED_RE.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    text = _HEADER_RE.sub(lambda m: f"{m.group('head')}{m.group('sep')}{MASK}", text)
    text = _BEARER_RE.sub(lambda m: f"{m.group('kind')} {MASK}", text)
    text = _QUERY_RE.sub(lambda m: f"{m.group('head')}{MASK}", text)
    text = _redact_pairs(text)
    return _TOKEN_SHAPES.sub(MASK, text)


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` with secret-named values masked and the rest scrubbed as text."""
    return {k: (MASK if is_secret_name(k) and v else redact_text(v, env)) for k, v in env.items()}


def redact_obj(obj: Any, env: Mapping[str, str] | None = None) -> Any:
    """Recursively scrub a JSON-like structure; mapping keys that name secrets mask their value."""
    if isinstance(obj, str):
        return redact_text(obj, env)
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            if isinstance(k, str) and is_secret_name(k) and isinstance(v, str) and v:
                out[k] = MASK
            else:
                out[k] = redact_obj(v, env)
        return out
    if isinstance(obj, list | tuple):
        return [redact_obj(v, env) for v in obj]
    return obj


# --------------------------------------------------------------------------- output paths


class RedactingFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose whole output (message, arguments, traceback) is redacted.

    Every log handler of both command lines uses it, so log files (``saiverse_log.txt``, the
    harness's own log) never hold a secret.
    """

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


class RedactingStream:
    """A text stream wrapper that redacts what is written to ``raw``, line by line.

    Complete lines are redacted and passed on at once; a partial line waits for its newline
    or for :meth:`flush` (so a streamed chat reply still appears chunk by chunk). Everything
    else (``fileno``, ``isatty``, ``encoding``, ``buffer``...) is ``raw``'s own.
    """

    def __init__(self, raw: TextIO, line_hook: Callable[[str], str] | None = None) -> None:
        self.raw = raw
        self.line_hook = line_hook  # applied to every complete line (see cli_errors)
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\n")
            if self.line_hook is not None:
                done = "\n".join(self.line_hook(line) for line in done.split("\n"))
            self._put(redact_text(done + "\n"))
        return len(text)

    def _put(self, text: str) -> None:
        """Write to ``raw``; a character its encoding lacks (an ASCII-only terminal, a
        ``PYTHONIOENCODING=ascii`` pipe) is written as an escape, never an exception."""
        try:
            self.raw.write(text)
        except UnicodeEncodeError:
            encoding = getattr(self.raw, "encoding", None) or "ascii"
            self.raw.write(text.encode(encoding, "backslashreplace").decode(encoding))

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, ""
            self._put(redact_text(pending))
        self.raw.flush()

    def isatty(self) -> bool:
        return self.raw.isatty()

    def fileno(self) -> int:
        return self.raw.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)
