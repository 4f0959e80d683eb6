"""Keep secrets out of everything the doctor and the replays print or write.

Three layers, applied to every text, JSON and Markdown output:

* environment variables whose *name* looks secret (``GEMINI_API_KEY``, ``HF_TOKEN``, any
  ``*_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*PASSWORD*``, ``*CREDENTIAL*``...) have their value
  replaced, and that value is also scrubbed wherever it appears verbatim in other text
  (a log line, a URL, a ``CMAKE_ARGS`` string);
* ``NAME=value`` assignments with a secret-looking name inside free text (``-DMY_TOKEN=abc``,
  ``export HF_TOKEN=hf_...``) and ``Authorization:`` headers;
* credentials in URLs (``https://user:pass@host``) and well-known token shapes
  (``hf_...``, ``AIza...``, ``ghp_...``, ``sk-...``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

MASK = "***REDACTED***"

_SECRET_NAME_RE = re.compile(
    r"(?:^|_)(?:KEY|TOKEN|SECRETS?|PASSWORD|PASSWD|PWD|CREDENTIALS?|AUTH|APIKEY)(?:_|$)"
    r"|PASSWORD|SECRET|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY",
    re.IGNORECASE,
)
# Names that match the pattern but hold no secret (paths and switches everybody prints).
_NOT_SECRET = {"PWD", "OLDPWD", "KEYTIMEOUT", "GPG_TTY", "SSH_AUTH_SOCK", "TOKENIZERS_PARALLELISM"}

_URL_CRED_RE = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<cred>[^/@\s:]+(?::[^/@\s]*)?)@"
)
_ASSIGN_RE = re.compile(
    r"(?P<name>\b[A-Za-z_][A-Za-z0-9_.-]*)(?P<nq>[\"']?)(?P<sep>\s*[=:]\s*)(?P<q>[\"']?)"
    r"(?P<value>[^\s\"'|,;&]+)"
)
_AUTH_RE = re.compile(r"(?i)(authorization\s*[:=]\s*)(bearer|basic|token)?\s*[^\s\"']+")
_TOKEN_SHAPES = re.compile(
    r"\bhf_[A-Za-z0-9]{16,}\b|\bAIza[0-9A-Za-z_-]{30,}\b|\bgh[pousr]_[A-Za-z0-9]{20,}\b"
    r"|\bsk-[A-Za-z0-9_-]{20,}\b|\bxox[abpr]-[A-Za-z0-9-]{10,}\b"
)
_MIN_SECRET_LEN = 4


def is_secret_name(name: str) -> bool:
    """True for environment-variable names whose values must never be shown."""
    bare = name.strip()
    if bare.upper() in _NOT_SECRET:
        return False
    return bool(_SECRET_NAME_RE.search(bare))


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """The values of secret-named variables in ``env`` (default: ``os.environ``), longest first."""
    source = os.environ if env is None else env
    values = {v for k, v in source.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, env: Mapping[str, str] | None = None) -> str:
    """Scrub secrets from free text (logs, command lines, URLs)."""
    if not text:
        return text
    for value in secret_values(env):
        text = text.replace(value, MASK)
    text = _URL_CRED_RE.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    text = _AUTH_RE.sub(lambda m: f"{m.group(1)}{MASK}", text)

    def assignment(m: re.Match[str]) -> str:
        name = m.group("name").lstrip("-").removeprefix("D") if m.group("name") else ""
        if is_secret_name(m.group("name")) or is_secret_name(name):
            return f"{m.group('name')}{m.group('nq')}{m.group('sep')}{m.group('q')}{MASK}"
        return m.group(0)

    text = _ASSIGN_RE.sub(assignment, text)
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
