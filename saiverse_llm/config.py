"""SAIVerse model configs for the llama.cpp provider: parsing, validation, path expansion.

A model is one JSON file (``models/<key>.json``); the file name without ``.json`` is the
key. The schema is the one the SAIVerse llama.cpp guide shows::

    {
      "model": "llama-3-8b-instruct-q8",
      "display_name": "Llama 3 8B Instruct Q8 (llama.cpp)",
      "provider": "llama_cpp",
      "context_length": 8192,
      "model_path": "~/models/llama-3-8b-instruct-q8_0.gguf",
      "n_gpu_layers": -1,
      "fallback_on_error": true,
      "supports_images": false,
      "parameters": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 2048}
    }

plus a few optional fields this client adds (``chat_format``, ``n_threads``, ``n_seq_max``:
how many requests the model decodes together, each with ``context_length`` tokens, null
sizing it from free memory; ``fallback_model``, ``test_model``, ``note``, and ``source``:
where the GGUF comes from, see :class:`ModelSource`, used by ``saiverse-llm fetch``).
``parameters`` may also use SAIVerse's spec form
(``{"temperature": {"default": 0.7, "min": 0, "max": 2}}``); both forms mean the same.

Every problem raises :class:`ConfigError`, which names the file, the field, the bad value and
the fix. Harmless oddities (unknown keys, ``model`` not matching the file name) are logged as
warnings and do not fail.
"""

from __future__ import annotations

import json
import logging
import math
import os
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

log = logging.getLogger(__name__)

PROVIDER = "llama_cpp"

#: n_ctx used when a config has no ``context_length``: the GGUF's trained context, capped
#: here (a 128k-context model would otherwise reserve gigabytes of KV cache). Override per
#: client (``context_cap=``) or process-wide with ``$SAIVERSE_LLM_CONTEXT_CAP``. The client
#: (saiverse_llm.loading) and memory planning (saiverse_llm.fit) both read it from here.
DEFAULT_CONTEXT_CAP = 8192

DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9
DEFAULT_MAX_TOKENS = 2048

# Integer bounds: every integer a config (or a CLI flag) gives ends in a C field, and a value
# outside that field's type would wrap silently in ctypes (2**32 GPU layers became 0, a
# 2**32+512 context became 512). Sources, llama-cpp-python 0.3.36 (llama_cpp/llama_cpp.py)
# and its vendored llama.cpp:
#   n_gpu_layers   -> llama_model_params.n_gpu_layers      ctypes.c_int32
#   context_length -> llama_context_params.n_ctx           ctypes.c_uint32
#   n_threads      -> llama_context_params.n_threads       ctypes.c_int32; a sane bound is
#                     GGML_MAX_N_THREADS = 512 (ggml/include/ggml.h), ggml's thread-pool limit
#   max_tokens     -> compared with n_ctx by Llama.create_completion (so: c_uint32)
#   seed           -> llama_sampler_init_dist(seed)        ctypes.c_uint32 (0xFFFFFFFF,
#                     LLAMA_DEFAULT_SEED, means "random"; -1 is llama.cpp's spelling of it)
#   n_seq_max      -> llama_context_params.n_seq_max       ctypes.c_uint32; llama_context
#                     refuses more than LLAMA_MAX_SEQ = 256 (src/llama-cparams.h)
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
GGML_MAX_N_THREADS = 512
N_GPU_LAYERS_RANGE = (-1, INT32_MAX)
CONTEXT_LENGTH_RANGE = (1, UINT32_MAX)
N_THREADS_RANGE = (1, GGML_MAX_N_THREADS)
LLAMA_MAX_SEQ = 256
N_SEQ_MAX_RANGE = (1, LLAMA_MAX_SEQ)
MAX_TOKENS_RANGE = (1, UINT32_MAX)
SEED_RANGE = (0, UINT32_MAX)
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.0, 1.0)

#: A model config is a small flat object: a larger file is refused before it is parsed.
MAX_CONFIG_BYTES = 1024 * 1024
#: Integer literals longer than this are kept as text (:class:`HugeNumber`): Python refuses
#: to convert more than 4300 digits, and no field takes more than 10.
_MAX_INT_DIGITS = 40

KNOWN_KEYS = frozenset(
    {
        "model",
        "display_name",
        "provider",
        "context_length",
        "model_path",
        "n_gpu_layers",
        "fallback_on_error",
        "fallback_model",
        "supports_images",
        "chat_format",
        "n_threads",
        "n_seq_max",
        "test_model",
        "note",
        "source",
        "parameters",
    }
)

#: Chat formats registered by llama-cpp-python 0.3.x (``llama_chat_format``). An unknown name
#: is only a warning: newer llama-cpp-python versions may add formats.
KNOWN_CHAT_FORMATS = frozenset(
    {
        "llama-2",
        "llama-3",
        "alpaca",
        "qwen",
        "vicuna",
        "oasst_llama",
        "baichuan-2",
        "baichuan",
        "openbuddy",
        "redpajama-incite",
        "snoozy",
        "phind",
        "intel",
        "open-orca",
        "mistrallite",
        "zephyr",
        "pygmalion",
        "chatml",
        "mistral-instruct",
        "chatglm3",
        "openchat",
        "saiga",
        "gemma",
        "functionary",
        "functionary-v2",
        "functionary-v1",
        "chatml-function-calling",
    }
)


class ConfigError(ValueError):
    """A model config is wrong: says which file, which field, what value, and how to fix it."""

    def __init__(
        self,
        problem: str,
        *,
        file: Path | None = None,
        field: str = "",
        value: object = None,
        fix: str = "",
    ) -> None:
        self.problem = problem
        self.file = file
        self.field = field
        self.value = value
        self.fix = fix
        super().__init__(problem)

    def with_file(self, file: Path | None) -> ConfigError:
        """The same error, attributed to ``file``."""
        if file is None or self.file is not None:
            return self
        return ConfigError(
            self.problem, file=file, field=self.field, value=self.value, fix=self.fix
        )

    def __str__(self) -> str:
        where = str(self.file) if self.file is not None else "<model config>"
        head = f"{where}: {self.field}: " if self.field else f"{where}: "
        text = f"{head}{self.problem}"
        if self.value is not None and not self.problem.startswith(_show(self.value)):
            text += f" (got {_show(self.value)})"
        if self.fix:
            text += f". Fix: {self.fix}"
        return text


@dataclass(frozen=True)
class Parameters:
    """Default generation parameters of a model (the seed's ``parameters`` block)."""

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_tokens: int = DEFAULT_MAX_TOKENS


@dataclass(frozen=True)
class SourceFile:
    """One file of a model on the Hugging Face Hub: its path in the repo and its sha256
    (``None`` when the config does not pin one; ``saiverse-llm fetch`` then checks the
    Hub's own LFS sha256 and prints the value to pin)."""

    filename: str
    sha256: str | None = None

    @property
    def local_name(self) -> str:
        """The file name on disk (a file in a repo folder keeps only its last component)."""
        return self.filename.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ModelSource:
    """Where a model's GGUF comes from: ``"source": {"repo_id", "filename", "revision",
    "sha256"}`` in the config.

    A model split into parts (``name-00001-of-00003.gguf`` ...) lists every part in
    ``filename`` and, if known, their sha256 values in the same order; ``model_path`` then
    names the first part and the others are put beside it under their own names (llama.cpp
    loads the rest from the first).
    """

    repo_id: str
    files: tuple[SourceFile, ...]
    revision: str = "main"

    @property
    def pinned(self) -> bool:
        """True when every file has a sha256 in the config."""
        return all(f.sha256 for f in self.files)

    def url(self, file: SourceFile) -> str:
        return f"https://huggingface.co/{self.repo_id}/blob/{self.revision}/{file.filename}"

    def to_dict(self) -> dict[str, Any]:
        many = len(self.files) > 1
        return {
            "repo_id": self.repo_id,
            "filename": [f.filename for f in self.files] if many else self.files[0].filename,
            "revision": self.revision,
            "sha256": [f.sha256 for f in self.files] if many else self.files[0].sha256,
        }


@dataclass(frozen=True)
class ModelConfig:
    """One validated model config. ``key`` is the file name without ``.json``."""

    key: str
    model: str
    display_name: str
    provider: str
    model_path: Path
    model_path_raw: str
    context_length: int | None = None
    n_gpu_layers: int = -1
    fallback_on_error: bool = True
    fallback_model: str | None = None
    supports_images: bool = False
    chat_format: str | None = None
    n_threads: int | None = None
    n_seq_max: int | None = None
    test_model: str | None = None
    parameters: Parameters = field(default_factory=Parameters)
    source: Path | None = None
    note: str | None = None
    model_source: ModelSource | None = None

    def model_files(self) -> list[Path]:
        """Every local file of the model: ``model_path``, plus the other parts of a split
        model (beside it, under their own names)."""
        if self.model_source is None or len(self.model_source.files) < 2:
            return [self.model_path]
        rest = [self.model_path.parent / f.local_name for f in self.model_source.files[1:]]
        return [self.model_path, *rest]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (paths as strings), e.g. for ``saiverse-llm list --json``."""
        return {
            "key": self.key,
            "model": self.model,
            "display_name": self.display_name,
            "provider": self.provider,
            "model_path": str(self.model_path),
            "model_path_raw": self.model_path_raw,
            "context_length": self.context_length,
            "n_gpu_layers": self.n_gpu_layers,
            "fallback_on_error": self.fallback_on_error,
            "fallback_model": self.fallback_model,
            "supports_images": self.supports_images,
            "chat_format": self.chat_format,
            "n_threads": self.n_threads,
            "n_seq_max": self.n_seq_max,
            "test_model": self.test_model,
            "parameters": {
                "temperature": self.parameters.temperature,
                "top_p": self.parameters.top_p,
                "max_tokens": self.parameters.max_tokens,
            },
            "source": str(self.source) if self.source is not None else None,
            "note": self.note,
            "model_source": self.model_source.to_dict() if self.model_source else None,
        }


# ---------------------------------------------------------------------------------------------
# Path expansion


def expand_path(raw: str, *, env: Mapping[str, str] | None = None) -> Path:
    """Expand ``$VAR``, ``${VAR}``, ``${VAR:-default}`` and a leading ``~`` in ``raw``.

    Variables come from ``env`` (default: ``os.environ``). The default in
    ``${VAR:-default}`` is used when VAR is unset or empty, and may itself contain variables
    and ``~``. An unset variable without a default raises :class:`ConfigError` (field
    ``model_path``) naming the variable. ``$$`` is a literal ``$``.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    text = _expand_vars(raw, environ, raw)
    return Path(_expand_home(text, environ))


def _expand_home(text: str, env: Mapping[str, str]) -> str:
    if text != "~" and not text.startswith(("~/", "~" + os.sep)):
        return os.path.expanduser(text) if text.startswith("~") else text
    home = env.get("HOME") or os.environ.get("HOME") or str(Path.home())
    return home + text[1:]


def _is_name_start(ch: str) -> bool:
    return ch == "_" or ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def _is_name_char(ch: str) -> bool:
    return _is_name_start(ch) or ch.isdigit()


def _undefined(name: str, raw: str) -> ConfigError:
    return ConfigError(
        f"environment variable ${name} is not set",
        field="model_path",
        value=raw,
        fix=(
            f"set {name} (export {name}=/some/dir) or give a default in the path: "
            f"${{{name}:-/default/dir}}"
        ),
    )


def _expand_vars(text: str, env: Mapping[str, str], raw: str) -> str:
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        if i + 1 < n and text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        if i + 1 < n and text[i + 1] == "{":
            end = _matching_brace(text, i + 1)
            if end < 0:
                raise ConfigError(
                    "unclosed '${' in the path",
                    field="model_path",
                    value=raw,
                    fix="write variables as ${NAME} or ${NAME:-default}",
                )
            body = text[i + 2 : end]
            name, sep, default = body.partition(":-")
            if not name or not _is_name_start(name[0]) or not all(map(_is_name_char, name)):
                raise ConfigError(
                    f"'${{{body}}}' is not a valid variable reference",
                    field="model_path",
                    value=raw,
                    fix="write variables as ${NAME} or ${NAME:-default} (letters, digits, _)",
                )
            value = env.get(name)
            if sep:
                if not value:
                    value = _expand_home(_expand_vars(default, env, raw), env)
            elif value is None:
                raise _undefined(name, raw)
            out.append(value)
            i = end + 1
            continue
        j = i + 1
        if j < n and _is_name_start(text[j]):
            while j < n and _is_name_char(text[j]):
                j += 1
            name = text[i + 1 : j]
            value = env.get(name)
            if value is None:
                raise _undefined(name, raw)
            out.append(value)
            i = j
            continue
        out.append(ch)  # a lone '$' (e.g. "price$") stays as it is
        i += 1
    return "".join(out)


def _matching_brace(text: str, open_at: int) -> int:
    depth = 0
    for k in range(open_at, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    return -1


# ---------------------------------------------------------------------------------------------
# Parsing


def load_config_file(path: Path | str) -> ModelConfig:
    """Read and validate one model config file; the key is the file name without ``.json``."""
    file = Path(path)
    try:
        size = file.stat().st_size
    except OSError:
        size = 0
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"the file has {size:,} bytes; a model config is a small JSON object "
            f"(at most {MAX_CONFIG_BYTES:,} bytes)",
            file=file,
            fix="check that this is the model config and not a model or a log saved as .json",
        )
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise ConfigError(
            "the config file does not exist", file=file, fix="check the path"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"the file is not UTF-8 text (bad byte at offset {exc.start})",
            file=file,
            fix="save the file as UTF-8 JSON",
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot read the file: {exc.strerror or exc}",
            file=file,
            fix="check the file's permissions",
        ) from exc
    return parse_config_text(text, key=file.stem, source=file)


def parse_config_text(text: str, *, key: str, source: Path | None = None) -> ModelConfig:
    """Parse and validate the JSON ``text`` of the model config named ``key``.

    Never raises anything but :class:`ConfigError`: integers of any length (kept as
    :class:`HugeNumber`, then refused by the field that gets one), nesting of any depth, and
    ``NaN``/``Infinity`` included.
    """
    file = source
    try:
        data = json.loads(text, object_pairs_hook=_warn_duplicates(file), parse_int=_parse_int)
    except RecursionError:
        raise ConfigError(
            "the JSON is nested too deeply to read (thousands of [ or { levels)",
            file=file,
            field="(json)",
            fix="a model config is one flat object of settings; rewrite the file",
        ) from None
    except json.JSONDecodeError as exc:
        lines = exc.doc.splitlines()
        line_text = lines[exc.lineno - 1].strip() if 0 < exc.lineno <= len(lines) else ""
        raise ConfigError(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            file=file,
            field="(json)",
            value=line_text or None,
            fix=(
                "correct the JSON syntax there (common causes: a trailing comma, "
                "single quotes, a missing comma or quote, comments)"
            ),
        ) from exc
    return parse_config(data, key=key, source=file)


class HugeNumber(str):
    """An integer literal too long to be a number of any field; its text is kept."""


def _parse_int(text: str) -> int | HugeNumber:
    digits = text.lstrip("-")
    return HugeNumber(text) if len(digits) > _MAX_INT_DIGITS else int(text)


def _warn_duplicates(file: Path | None) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for k, v in pairs:
            if k in result:
                log.warning("%s: key %r appears twice; the last value wins", file, k)
            result[k] = v
        return result

    return hook


def parse_config(data: object, *, key: str, source: Path | None = None) -> ModelConfig:
    """Validate already-decoded JSON ``data`` as the model config named ``key``."""
    try:
        return _parse(data, key=key, source=source)
    except ConfigError as exc:
        raise exc.with_file(source) from exc.__cause__


def _parse(data: object, *, key: str, source: Path | None) -> ModelConfig:
    where = str(source) if source is not None else f"model config {key!r}"
    if not isinstance(data, dict):
        raise ConfigError(
            f"the top level must be a JSON object, not {_json_type(data)}",
            field="(top level)",
            value=data,
            fix='wrap the settings in { ... }, e.g. {"model": "...", "provider": "llama_cpp", ...}',
        )

    for name in data:
        if name not in KNOWN_KEYS and not str(name).startswith("_"):
            log.warning(
                "%s: unknown key %r is ignored (known keys: %s)",
                where,
                name,
                ", ".join(sorted(KNOWN_KEYS)),
            )

    model = _required_str(data, "model", example=key)
    if model != key:
        log.warning(
            '%s: "model" is %r but the file name says %r; the file name is the key',
            where,
            model,
            key,
        )
    display_name = _optional_str(data, "display_name") or model

    provider = _required_str(data, "provider", example=PROVIDER)
    if provider != PROVIDER:
        raise ConfigError(
            f"unknown provider; this client only runs provider {PROVIDER!r}",
            field="provider",
            value=provider,
            fix=f'set "provider": "{PROVIDER}"',
        )

    model_path_raw = _required_str(data, "model_path", example="~/models/<file>.gguf")
    model_path = expand_path(model_path_raw)

    context_length = _optional_int(
        data,
        "context_length",
        bounds=CONTEXT_LENGTH_RANGE,
        why="llama.cpp keeps n_ctx in a 32-bit unsigned field",
        fix="use a positive number of tokens such as 8192, or null to use the GGUF's own",
    )
    n_gpu_layers = _int(
        data,
        "n_gpu_layers",
        default=-1,
        bounds=N_GPU_LAYERS_RANGE,
        why="llama.cpp keeps n_gpu_layers in a 32-bit signed field",
        fix="use -1 (all layers on the GPU), 0 (CPU only) or a positive layer count like 32",
    )
    fallback_on_error = _bool(data, "fallback_on_error", default=True)
    fallback_model = _optional_str(data, "fallback_model")
    supports_images = _bool(data, "supports_images", default=False)
    if supports_images:
        log.warning(
            "%s: supports_images is true, but the llama.cpp client does not support image "
            "input; images will not be sent to this model",
            where,
        )
    chat_format = _optional_str(data, "chat_format")
    if chat_format is not None and chat_format not in KNOWN_CHAT_FORMATS:
        log.warning(
            "%s: chat_format %r is not one llama-cpp-python 0.3 knows (e.g. %s)",
            where,
            chat_format,
            ", ".join(sorted(KNOWN_CHAT_FORMATS)[:8]) + ", ...",
        )
    n_threads = _optional_int(
        data,
        "n_threads",
        bounds=N_THREADS_RANGE,
        why=f"ggml runs at most {GGML_MAX_N_THREADS} threads (GGML_MAX_N_THREADS)",
        fix="use the number of physical cores (e.g. 8), or null for the default",
    )
    n_seq_max = _optional_int(
        data,
        "n_seq_max",
        bounds=N_SEQ_MAX_RANGE,
        why=f"llama.cpp holds at most {LLAMA_MAX_SEQ} sequences (LLAMA_MAX_SEQ)",
        fix="use the number of requests to decode together (1 = one at a time), or null to "
        "size it from free memory",
    )
    test_model = _optional_str(data, "test_model")
    note = _optional_str(data, "note")
    model_source = _model_source(data.get("source"), model_path, where)
    parameters = _parameters(data.get("parameters"), where)
    if context_length is not None and parameters.max_tokens > context_length:
        log.warning(
            "%s: parameters.max_tokens (%d) is larger than context_length (%d); replies are "
            "cut at the context size",
            where,
            parameters.max_tokens,
            context_length,
        )

    return ModelConfig(
        key=key,
        model=model,
        display_name=display_name,
        provider=provider,
        model_path=model_path,
        model_path_raw=model_path_raw,
        context_length=context_length,
        n_gpu_layers=n_gpu_layers,
        fallback_on_error=fallback_on_error,
        fallback_model=fallback_model,
        supports_images=supports_images,
        chat_format=chat_format,
        n_threads=n_threads,
        n_seq_max=n_seq_max,
        test_model=test_model,
        parameters=parameters,
        source=source,
        note=note,
        model_source=model_source,
    )


# ---------------------------------------------------------------------------------------------
# Field checks


def _required_str(data: Mapping[str, Any], name: str, *, example: str) -> str:
    if name not in data or data[name] is None:
        raise ConfigError("required field is missing", field=name, fix=f'add "{name}": "{example}"')
    value = data[name]
    if not _is_text(value) or not value.strip():
        raise ConfigError(
            "must be a non-empty string",
            field=name,
            value=value,
            fix=f'write it as a JSON string, e.g. "{name}": "{example}"',
        )
    return _printable(value, name)


def _optional_str(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not _is_text(value) or not value.strip():
        raise ConfigError(
            "must be a non-empty string or null",
            field=name,
            value=value,
            fix=f'write it as a JSON string ("{name}": "...") or remove it',
        )
    return _printable(value, name)


def _printable(value: str, name: str) -> str:
    """``value`` when it holds no control character. An escape sequence in a display name or
    a path would be sent to the terminal by ``saiverse-llm list`` (clear the screen, set the
    window title, hide text); a newline would break the table. A note may hold newlines/tabs.
    """
    allowed = "\n\t" if name == "note" else ""
    for index, char in enumerate(value):
        if char not in allowed and unicodedata.category(char) == "Cc":
            raise ConfigError(
                f"holds the control character U+{ord(char):04X} at position {index}",
                field=name,
                value=value[:80],
                fix="remove it (an escape like \\u001b or a newline has no place in this field)",
            )
    return value


def _bool(data: Mapping[str, Any], name: str, *, default: bool) -> bool:
    if name not in data or data[name] is None:
        return default
    value = data[name]
    if not isinstance(value, bool):
        raise ConfigError(
            "must be true or false",
            field=name,
            value=value,
            fix=f'write "{name}": true or "{name}": false (JSON booleans, without quotes)',
        )
    return value


def _is_text(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and not isinstance(value, HugeNumber)


def _int(
    data: Mapping[str, Any],
    name: str,
    *,
    default: int,
    bounds: tuple[int, int],
    why: str,
    fix: str,
) -> int:
    value = _optional_int(data, name, bounds=bounds, why=why, fix=fix)
    return default if value is None else value


def _optional_int(
    data: Mapping[str, Any], name: str, *, bounds: tuple[int, int], why: str, fix: str
) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    return _whole_number(value, name, bounds=bounds, why=why, fix=fix)


def _whole_number(value: object, field: str, *, bounds: tuple[int, int], why: str, fix: str) -> int:
    """``value`` as an int within ``bounds``, or a ConfigError saying what it is instead."""
    low, high = bounds
    if isinstance(value, HugeNumber):
        digits = len(value.lstrip("-"))
        raise ConfigError(
            f"is a {digits:,}-digit number; it must be from {low:,} to {high:,} ({why})",
            field=field,
            value=f"{value[:12]}...",
            fix=fix,
        )
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            raise ConfigError(
                f"{_number_text(value)} is a float, not a whole number",
                field=field,
                value=value,
                fix=f"write {int(value)} (without the .0)",
            )
        raise ConfigError(
            f"{_number_text(value)} is not a whole number", field=field, value=value, fix=fix
        )
    if isinstance(value, bool) or not isinstance(value, int):
        hint = " (without quotes)" if isinstance(value, str) else ""
        raise ConfigError(
            f"must be a whole number{hint}, not {_json_type(value)}",
            field=field,
            value=value,
            fix=fix,
        )
    if not low <= value <= high:
        raise ConfigError(
            f"must be from {low:,} to {high:,} ({why})", field=field, value=value, fix=fix
        )
    return value


_SOURCE_EXAMPLE = (
    '"source": {"repo_id": "owner/name", "filename": "model.Q4_K_M.gguf", '
    '"revision": "<commit sha>", "sha256": "<64 hex digits>"}'
)
_SOURCE_KEYS = ("repo_id", "filename", "revision", "sha256")


def _is_sha256(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 64
        and all(c in "0123456789abcdef" for c in value.lower())
    )


def _model_source(raw: object, model_path: Path, where: str) -> ModelSource | None:
    """Validate the optional ``source`` block (see :class:`ModelSource`)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"must be an object, not {_json_type(raw)}",
            field="source",
            value=raw,
            fix=f"write {_SOURCE_EXAMPLE}, or remove it",
        )
    for name in raw:
        if name not in _SOURCE_KEYS and not str(name).startswith("_"):
            log.warning(
                "%s: source.%s is ignored (known keys: %s)", where, name, ", ".join(_SOURCE_KEYS)
            )
    repo_id = raw.get("repo_id")
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(
            "must be a Hugging Face repo id, owner/name",
            field="source.repo_id",
            value=repo_id,
            fix='write e.g. "repo_id": "QuantFactory/Meta-Llama-3-8B-Instruct-GGUF"',
        )
    revision = raw.get("revision")
    if revision is None:
        log.warning(
            '%s: source.revision is not set; the file is fetched from the branch "main", '
            "whose content can change (pin a commit sha)",
            where,
        )
        revision = "main"
    elif not isinstance(revision, str) or not revision.strip():
        raise ConfigError(
            "must be a non-empty string (a commit sha, a branch or a tag)",
            field="source.revision",
            value=revision,
            fix='pin the commit the sha256 belongs to, e.g. "revision": "26cfcd83..."',
        )
    names = raw.get("filename")
    many = isinstance(names, list)
    name_list = names if isinstance(names, list) else [names]
    if not name_list or not all(
        isinstance(n, str) and n.strip() and not n.startswith("/") and ".." not in n.split("/")
        for n in name_list
    ):
        raise ConfigError(
            "must be the file's path in the repo (a string), or a list of the parts of a "
            "split model",
            field="source.filename",
            value=names,
            fix='write e.g. "filename": "Meta-Llama-3-8B-Instruct.Q4_K_M.gguf"',
        )
    shas = raw.get("sha256")
    if shas is None:
        sha_list: list[object] = [None] * len(name_list)
    elif isinstance(shas, list) == many and (
        not many or (isinstance(shas, list) and len(shas) == len(name_list))
    ):
        sha_list = list(shas) if isinstance(shas, list) else [shas]
    else:
        raise ConfigError(
            f"must match source.filename: {'a list of ' + str(len(name_list)) if many else 'one'}"
            " sha256 value" + ("s (null for an unknown one)" if many else ""),
            field="source.sha256",
            value=shas,
            fix="give one sha256 per file in the same order, or null when it is not known",
        )
    files: list[SourceFile] = []
    for i, (name, sha) in enumerate(zip(name_list, sha_list, strict=True)):
        if sha is not None and not _is_sha256(sha):
            fld = f"source.sha256[{i}]" if many else "source.sha256"
            raise ConfigError(
                "must be 64 hexadecimal digits, or null when it is not known",
                field=fld,
                value=sha,
                fix="copy the SHA256 the Hub shows under the file's 'Git LFS Details'",
            )
        assert isinstance(name, str)
        digest = sha.lower() if isinstance(sha, str) else None
        files.append(SourceFile(filename=name, sha256=digest))
    if many and model_path.name != files[0].local_name:
        raise ConfigError(
            "for a split model, model_path must name the first part (llama.cpp finds the "
            "other parts beside it by their names)",
            field="model_path",
            value=str(model_path),
            fix=f"end model_path with /{files[0].local_name}",
        )
    return ModelSource(repo_id=repo_id, files=tuple(files), revision=revision)


def _parameters(raw: object, where: str) -> Parameters:
    if raw is None:
        return Parameters()
    if not isinstance(raw, dict):
        raise ConfigError(
            f"must be an object, not {_json_type(raw)}",
            field="parameters",
            value=raw,
            fix='write {"temperature": 0.7, "top_p": 0.9, "max_tokens": 2048}',
        )
    for name in raw:
        if name not in ("temperature", "top_p", "max_tokens"):
            log.warning(
                "%s: parameters.%s is ignored (this client reads temperature, top_p, max_tokens)",
                where,
                name,
            )
    temperature = _number_param(raw, "temperature", DEFAULT_TEMPERATURE, *TEMPERATURE_RANGE)
    top_p = _number_param(raw, "top_p", DEFAULT_TOP_P, *TOP_P_RANGE)
    max_tokens = _max_tokens_param(raw)
    return Parameters(temperature=temperature, top_p=top_p, max_tokens=max_tokens)


def _param_value(raw: Mapping[str, Any], name: str) -> tuple[object, str, Mapping[str, Any]]:
    """The parameter's value, its field name for errors, and the spec (empty for flat form)."""
    value = raw.get(name)
    if isinstance(value, dict):
        if "default" not in value:
            raise ConfigError(
                'spec-form parameter has no "default"',
                field=f"parameters.{name}",
                value=value,
                fix=f'add a "default" value, or write the flat form "{name}": <value>',
            )
        return value["default"], f"parameters.{name}.default", value
    return value, f"parameters.{name}", {}


def _number_param(
    raw: Mapping[str, Any], name: str, default: float, low: float, high: float
) -> float:
    value, fld, spec = _param_value(raw, name)
    if value is None:
        return default
    fix = f"use a number from {low} to {high} (default {default})"
    if isinstance(value, HugeNumber):
        raise ConfigError(
            f"is a {len(value.lstrip('-')):,}-digit number, outside {low}-{high}",
            field=fld,
            value=f"{value[:12]}...",
            fix=fix,
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"must be a number, not {_json_type(value)}", field=fld, value=value, fix=fix
        )
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(
            f"{_number_text(number)} is not a finite number (JSON has no NaN or Infinity)",
            field=fld,
            fix=fix,
        )
    if not low <= number <= high:
        raise ConfigError(f"is outside {low}-{high}", field=fld, value=value, fix=fix)
    _check_spec_range(spec, name, number)
    return number


def _max_tokens_param(raw: Mapping[str, Any]) -> int:
    value, fld, spec = _param_value(raw, "max_tokens")
    if value is None:
        return DEFAULT_MAX_TOKENS
    number = _whole_number(
        value,
        fld,
        bounds=MAX_TOKENS_RANGE,
        why="llama.cpp counts tokens in 32-bit unsigned n_ctx",
        fix=f"use a positive whole number of tokens (default {DEFAULT_MAX_TOKENS})",
    )
    _check_spec_range(spec, "max_tokens", float(number))
    return number


def _check_spec_range(spec: Mapping[str, Any], name: str, number: float) -> None:
    low, high = spec.get("min"), spec.get("max")
    below = isinstance(low, int | float) and not isinstance(low, bool) and number < low
    above = isinstance(high, int | float) and not isinstance(high, bool) and number > high
    if below or above:
        raise ConfigError(
            f"default is outside the spec's own range {low}-{high}",
            field=f"parameters.{name}.default",
            value=number,
            fix="make the default lie within min and max",
        )


# ---------------------------------------------------------------------------------------------
# Small helpers


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | HugeNumber):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _number_text(value: float) -> str:
    """A float as JSON-ish text: 8192.0, NaN, Infinity, -Infinity."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _show(value: object, limit: int = 80) -> str:
    """``value`` as JSON text, shortened to ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (RecursionError, ValueError):
        text = f"<{_json_type(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
