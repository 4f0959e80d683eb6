"""``LlamaCppClient``: SAIVerse's llama.cpp provider, without the original's known defects.

Interface (SAIVerse's ``LLMClient``)::

    client = LlamaCppClient("~/models/x.gguf", context_length=8192, n_gpu_layers=-1)
    text = client.generate(messages)                                   # str
    data = client.generate(messages, response_schema=schema)           # dict (parsed JSON)
    out = client.generate(messages, tools=tools)  # {"type": "text"|"tool_call"|"both", ...}
    for chunk in client.generate_stream(messages): ...                 # text chunks
    client.consume_tool_detection(); client.consume_usage()            # read-and-clear

How a call runs: messages are normalised (:mod:`saiverse_llm.messages`), the model is
taken from the process-wide pool (:mod:`saiverse_llm.pool`: loaded once per key, GGUF
checked first, n_ctx from the GGUF's trained context capped at :data:`DEFAULT_CONTEXT_CAP`
when ``context_length`` is missing), the prompt is rendered with the model's chat template
(the GGUF's Jinja template, or the named ``chat_format``), tokenized and completed by
``Llama.create_completion`` under the model's lock. Tool calls are parsed from the text
(:mod:`saiverse_llm.tools`). Transient errors are retried (:func:`is_transient`); a retried
stream never repeats text it already yielded. Failures fall back (:mod:`saiverse_llm.fallback`)
when ``fallback_on_error`` is true, with a WARNING and the answering model in the usage.

llama.cpp's own log is captured process-wide and routed to the ``saiverse_llm.llama_cpp``
logger; the load log gives :meth:`LlamaCppClient.load_report` (layers offloaded, backend,
devices).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saiverse_llm.config import ConfigError, ModelConfig, expand_path
from saiverse_llm.fallback import (
    Fallback,
    FallbackError,
    Reply,
    Request,
    make_fallback,
)
from saiverse_llm.messages import (
    Message,
    MessageError,
    fold_system_messages,
    normalize_messages,
)
from saiverse_llm.pool import Closable, ModelKey, ModelLoadError, ModelPool, default_pool
from saiverse_llm.tools import (
    ToolCall,
    ToolCallError,
    ToolCallStreamFilter,
    ToolDefinitionError,
    normalize_tools,
    parse_tool_calls,
    tool_names,
    tool_result,
    tool_system_prompt,
)
from saiverse_llm.usage import Usage, UsageSlot

logger = logging.getLogger("saiverse_llm")
native_logger = logging.getLogger("saiverse_llm.llama_cpp")

#: n_ctx used when a config has no ``context_length``: the GGUF's trained context, capped
#: here (a 128k-context model would otherwise reserve gigabytes of KV cache). Override per
#: client (``context_cap=``) or process-wide with ``$SAIVERSE_LLM_CONTEXT_CAP``.
DEFAULT_CONTEXT_CAP = 8192

DEFAULT_PARAMETERS: dict[str, Any] = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 2048}

#: Sampling kwargs passed through to ``Llama.create_completion`` (per call or via
#: ``configure_parameters``).
SAMPLING_KEYS = frozenset(
    {"top_k", "min_p", "typical_p", "repeat_penalty", "presence_penalty", "frequency_penalty"}
)


# --- errors ----------------------------------------------------------------------------


class GenerationError(RuntimeError):
    """A generation failed in a way a retry would not fix."""


class ContextOverflowError(GenerationError):
    """The prompt does not fit into n_ctx."""


class TemplateError(GenerationError):
    """The chat template rejected the messages."""


class RetryDivergedError(GenerationError):
    """A retried stream produced different text than was already yielded."""


class TransientError(RuntimeError):
    """Raise (e.g. from a hook) to mark an error as worth one retry."""


_DECODE_RC = re.compile(r"llama_decode returned (-?\d+)")


def is_transient(exc: BaseException) -> bool:
    """Whether one retry may help.

    Not transient: load failures, our own generation errors (context overflow, template,
    tool-call JSON, diverged retry), ValueError/TypeError (bad input), MemoryError, and
    ``llama_decode`` return codes 1 (no KV slot: the cache is full) and -1 (invalid batch).
    Transient: :class:`TransientError`, ``llama_decode`` returning 2 (aborted) or < -1
    (compute failure), and any other plain ``RuntimeError`` raised during decoding."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(
        exc,
        (
            GenerationError,
            ModelLoadError,
            ToolCallError,
            FallbackError,
            MessageError,
            ValueError,
            TypeError,
            MemoryError,
        ),
    ):
        return False
    if isinstance(exc, RuntimeError):
        match = _DECODE_RC.search(str(exc))
        if match:
            code = int(match.group(1))
            return code == 2 or code < -1
        return True
    return False


# --- llama.cpp's log -----------------------------------------------------------------

# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continue previous line).
_NATIVE_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING}


class _NativeLog:
    """Process-wide llama.cpp log callback -> ``logging``, plus per-thread capture."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._callback: Any = None
        self._lock = threading.Lock()

    def install(self, llama_cpp: Any) -> None:
        """(Re)install the callback: called before every load, so code that replaced it
        (llama_cpp's own ``_logger`` does at import) cannot hide the load log from us."""
        with self._lock:
            if self._callback is None:

                @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
                def callback(level: int, text: bytes | None, user_data: Any) -> None:
                    with contextlib.suppress(Exception):  # never raise into C
                        self._on_log(int(level), (text or b"").decode("utf-8", "replace"))

                self._callback = callback
            llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: str) -> None:
        local = self._local
        if level == 5:
            level = getattr(local, "level", 2)
        local.level = level
        buf = getattr(local, "buf", "") + text
        while "\n" in buf:
            line, buf = buf.split("\n", 1)
            capture: list[str] | None = getattr(local, "capture", None)
            if capture is not None:
                capture.append(line)
            native_logger.log(_NATIVE_LEVELS.get(level, logging.ERROR), "%s", line)
        local.buf = buf

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[str]]:
        previous = getattr(self._local, "capture", None)
        lines: list[str] = []
        self._local.capture = lines
        try:
            yield lines
        finally:
            self._local.capture = previous


_native_log = _NativeLog()


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelLoadError(
            f"llama-cpp-python is not installed ({exc}). Fix: install a build, e.g. "
            "`nox -s build-cpu` then `nox -s test-cpu`, or "
            'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python'
        ) from exc
    _native_log.install(llama_cpp)
    return llama_cpp


_LAYER_RE = re.compile(r"layer\s+(\d+) assigned to device ([^,\s]+)")
_OFFLOADED_RE = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_DEVICE_RE = re.compile(r"using device (\S+) \((.*?)\)")
_BUFFER_RE = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")


def _backend_of(device: str) -> str:
    name = device.upper()
    for prefix, backend in (
        ("CUDA", "CUDA"),
        ("MTL", "METAL"),
        ("METAL", "METAL"),
        ("VULKAN", "VULKAN"),
        ("ROCM", "HIP"),
        ("HIP", "HIP"),
        ("SYCL", "SYCL"),
        ("BLAS", "BLAS"),
    ):
        if name.startswith(prefix):
            return backend
    return "CPU" if name.startswith("CPU") else name.rstrip("0123456789")


def parse_load_log(lines: Sequence[str]) -> dict[str, Any]:
    """Layers per device, offload count, devices and weight buffers from llama.cpp's load log.

    ``load_tensors: layer N assigned to device X`` (one line per layer incl. the output
    layer) is authoritative; ``offloaded N/M layers to GPU`` is used when those are absent."""
    layers: dict[int, str] = {}
    devices: list[dict[str, str]] = []
    buffers: dict[str, float] = {}
    offloaded_line: tuple[int, int] | None = None
    for line in lines:
        if m := _LAYER_RE.search(line):
            layers[int(m.group(1))] = m.group(2)
        elif m := _OFFLOADED_RE.search(line):
            offloaded_line = (int(m.group(1)), int(m.group(2)))
        elif m := _DEVICE_RE.search(line):
            devices.append({"name": m.group(1), "description": m.group(2)})
        elif m := _BUFFER_RE.search(line):
            buffers[m.group(1)] = buffers.get(m.group(1), 0.0) + float(m.group(2))
    if layers:
        total = len(layers)
        gpu_devices = [d for d in layers.values() if _backend_of(d) != "CPU"]
        offloaded = len(gpu_devices)
        backend = _backend_of(gpu_devices[0]) if gpu_devices else "CPU"
    elif offloaded_line is not None:
        offloaded = offloaded_line[0] if devices else 0
        total = offloaded_line[1]
        backend = _backend_of(devices[0]["name"]) if devices and offloaded else "CPU"
    else:
        offloaded, total, backend = 0, 0, "CPU"
    return {
        "n_layers_offloaded": offloaded,
        "n_layers_total": total,
        "backend": backend,
        "devices": devices or [{"name": "CPU", "description": "host CPU"}],
        "layer_devices": [layers[i] for i in sorted(layers)],
        "buffers_mib": buffers,
    }


# --- chat templates --------------------------------------------------------------------

_FORMAT_FUNCTIONS = {
    "llama-2": "format_llama2",
    "llama-3": "format_llama3",
    "baichuan-2": "format_baichuan2",
    "vicuna": "format",
}

#: Named formats whose renderer drops system messages (they are folded into the first turn).
_NO_SYSTEM_ROLE = frozenset({"gemma"})


@dataclass
class ChatTemplate:
    """How prompts are rendered for one loaded model."""

    name: str  # "gguf" or a llama-cpp-python chat_format name
    formatter: Callable[..., Any]
    renders_tools: bool
    system_role: bool


def resolve_template(llm: Any, chat_format: str | None, architecture: str | None) -> ChatTemplate:
    from llama_cpp import llama_chat_format

    metadata: Mapping[str, str] = llm.metadata
    if chat_format is None or chat_format.startswith("chat_template"):
        key = "tokenizer.chat_template"
        if chat_format and chat_format != "chat_template.default":
            key = "tokenizer." + chat_format
        template = metadata.get(key)
        if template:
            eos_id, bos_id = llm.token_eos(), llm.token_bos()
            eos = llm._model.token_get_text(eos_id) if eos_id != -1 else ""
            bos = llm._model.token_get_text(bos_id) if bos_id != -1 else ""
            formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id]
            )
            return ChatTemplate("gguf", formatter, "tools" in template, True)
        if chat_format is not None:
            raise GenerationError(
                f"chat_format {chat_format!r}: the GGUF has no {key}; remove chat_format "
                "or name a format such as 'chatml' or 'gemma'"
            )
        if architecture and architecture.startswith("gemma"):
            logger.info("GGUF has no chat template; using chat_format 'gemma' (%s)", architecture)
            chat_format = "gemma"
        else:
            logger.warning(
                "GGUF has no chat template and no chat_format is configured; falling back to "
                "'llama-2'. Fix: set \"chat_format\" in the model config"
            )
            chat_format = "llama-2"
    attr = _FORMAT_FUNCTIONS.get(chat_format, "format_" + chat_format.replace("-", "_"))
    named: Callable[..., Any] | None = getattr(llama_chat_format, attr, None)
    if named is None:
        raise GenerationError(
            f"chat_format {chat_format!r} is not a prompt format saiverse_llm can render "
            "(function-calling handlers such as 'functionary' are not supported); use e.g. "
            "'chatml', 'llama-3', 'gemma', 'mistral-instruct', or leave it unset to use the "
            "GGUF's own template"
        )
    return ChatTemplate(chat_format, named, False, chat_format not in _NO_SYSTEM_ROLE)


@dataclass
class PromptInfo:
    """A rendered prompt: the text, its tokens, and the stops the format adds."""

    text: str
    tokens: list[int]
    stop: list[str]
    template: str
    stopping_criteria: Any = None


# --- loaded models ---------------------------------------------------------------------


@dataclass
class _GGUFSummary:
    context_length: int | None
    architecture: str | None
    block_count: int | None


_gguf_cache: dict[tuple[str, int, int], _GGUFSummary] = {}
_gguf_cache_lock = threading.Lock()


def check_gguf(path: Path) -> _GGUFSummary:
    """Validate the file with the pure-Python GGUF reader before llama.cpp sees it."""
    from saiverse_llm.gguf_file import GGUFError, read_gguf

    st = path.stat()
    cache_key = (str(path), st.st_mtime_ns, st.st_size)
    with _gguf_cache_lock:
        cached = _gguf_cache.get(cache_key)
    if cached is not None:
        return cached
    try:
        info = read_gguf(path)
    except GGUFError as exc:
        raise ModelLoadError(f"{path} is not a usable GGUF file: {exc}", path=str(path)) from exc
    summary = _GGUFSummary(info.context_length, info.architecture, info.block_count)
    with _gguf_cache_lock:
        _gguf_cache[cache_key] = summary
    return summary


@dataclass
class LoadedModel:
    """One ``Llama`` in the pool, with the lock that serialises every call on it."""

    llm: Any
    key: ModelKey
    report: dict[str, Any]
    template: ChatTemplate
    lock: threading.RLock = field(default_factory=threading.RLock)
    closed: bool = False

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self.llm.close()


def usable_n_ctx(llm: Any) -> int:
    """Tokens a prompt plus reply may use. llama.cpp may round n_ctx up (to 256), but
    llama-cpp-python sizes its token buffer by the requested n_ctx: the smaller one counts."""
    actual = int(llm.n_ctx())
    requested = int(getattr(llm.context_params, "n_ctx", 0) or actual)
    return min(actual, requested)


class _TokenBudget:
    """A stopping criterion that enforces max_tokens on every path and counts tokens.

    llama-cpp-python skips its own max_tokens check while byte tokens form incomplete UTF-8,
    so a reply could run past the limit. The criterion is called once per sampled token
    (inside ``Llama.generate``) with the evaluated ids, and once more after the loop with the
    same ids: that last call is recognised (no new id since) and answered False, so it
    cannot turn ``finish_reason`` into "stop"."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sampled = 0
        self.blocked = False
        self._last_len = -1

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        n = len(input_ids)
        if n == self._last_len:
            return False  # the after-loop check, not a new token
        self._last_len = n
        self.sampled += 1
        if self.sampled > self.limit:
            self.blocked = True
            return True
        return False

    def completion_tokens(self, finish_reason: str | None) -> int:
        """Tokens in the reply: samples, less a blocked one and an end-of-generation one."""
        return max(0, self.sampled - self.blocked - (1 if finish_reason == "stop" else 0))


def _unseen(produced: str, emitted: str) -> str:
    """The part of ``produced`` not yet yielded; raises if a retry diverged."""
    if len(produced) <= len(emitted):
        if not emitted.startswith(produced):
            raise RetryDivergedError(
                "a retried stream produced different text than was already yielded "
                f"({produced!r} vs {emitted[: len(produced)]!r}); not repeating or mixing text"
            )
        return ""
    if not produced.startswith(emitted):
        raise RetryDivergedError(
            "a retried stream produced different text than was already yielded "
            f"({produced[: len(emitted)]!r} vs {emitted!r}); not repeating or mixing text"
        )
    return produced[len(emitted) :]


# --- the client ------------------------------------------------------------------------


def _context_cap_from_env() -> int:
    raw = os.environ.get("SAIVERSE_LLM_CONTEXT_CAP", "").strip()
    if not raw:
        return DEFAULT_CONTEXT_CAP
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"$SAIVERSE_LLM_CONTEXT_CAP: bad value {raw!r}; set a positive integer")
    return value


def _check_param(name: str, value: object) -> Any:
    fix = {
        "temperature": "use a number from 0.0 to 2.0",
        "top_p": "use a number from 0.0 to 1.0",
        "max_tokens": "use a positive integer",
        "seed": "use a non-negative integer",
    }
    if name == "max_tokens":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"parameter max_tokens: bad value {value!r}; {fix[name]}")
        return value
    if name == "seed":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"parameter seed: bad value {value!r}; {fix[name]}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"parameter {name}: bad value {value!r}; {fix.get(name, 'use a number')}")
    number = float(value)
    if name == "temperature" and not 0.0 <= number <= 2.0:
        raise ValueError(f"parameter temperature: bad value {value!r}; {fix[name]}")
    if name == "top_p" and not 0.0 <= number <= 1.0:
        raise ValueError(f"parameter top_p: bad value {value!r}; {fix[name]}")
    if name == "top_k":
        return int(number)
    return number


class LlamaCppClient:
    """SAIVerse-compatible llama.cpp client (see the module docstring).

    The first five arguments are SAIVerse's. The keyword-only extras: ``model`` (the key
    usage records name; default the file stem), ``model_path_raw`` (the config's unexpanded
    path, for error messages), ``chat_format`` (a llama-cpp-python format name; default the
    GGUF's own template), ``n_threads``, ``fallback_model`` (a config key, or None for
    Gemini 2.0 Flash) or ``fallback`` (a ready :class:`~saiverse_llm.fallback.Fallback`),
    ``test_model`` (named in the "file not found" fix), ``parameters`` (defaults for
    temperature/top_p/max_tokens/...), ``context_cap`` (see :data:`DEFAULT_CONTEXT_CAP`),
    ``max_retries`` (retries of transient errors, default 1), ``pool`` (default the
    process-wide pool), ``config_dirs`` (where ``fallback_model`` is looked up),
    ``chunk_hook(index, text)`` (called with every streamed chunk, and with the whole reply
    as chunk 0 for ``generate``; an exception it raises is treated like a generation error,
    which is how the retry tests inject failures) and any other ``llama_cpp.Llama`` keyword
    (e.g. ``flash_attn=True``), which becomes part of the pool key.

    Thread-safe: calls on one model are serialised by the model's lock (a stream holds it
    until it ends); usage and tool detection are kept per thread.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        context_length: int | None = None,
        n_gpu_layers: int = -1,
        supports_images: bool = False,
        fallback_on_error: bool = True,
        *,
        model: str | None = None,
        model_path_raw: str | None = None,
        chat_format: str | None = None,
        n_threads: int | None = None,
        fallback_model: str | None = None,
        fallback: Fallback | None = None,
        test_model: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        context_cap: int | None = None,
        max_retries: int = 1,
        pool: ModelPool[Any] | None = None,
        config_dirs: Sequence[Path] | None = None,
        config_source: Path | None = None,
        chunk_hook: Callable[[int, str], None] | None = None,
        **llama_kwargs: Any,
    ) -> None:
        raw = model_path_raw if model_path_raw is not None else os.fspath(model_path)
        self.model_path_raw = raw
        self._path_error: ConfigError | None = None
        try:
            self.model_path = expand_path(os.fspath(model_path))
        except ConfigError as exc:
            self._path_error = exc
            self.model_path = Path(os.fspath(model_path))
        if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or n_gpu_layers < -1:
            raise ValueError(
                f"n_gpu_layers: bad value {n_gpu_layers!r}; use -1 (all), 0 (CPU) or N layers"
            )
        if context_length is not None and (
            isinstance(context_length, bool)
            or not isinstance(context_length, int)
            or context_length < 1
        ):
            raise ValueError(
                f"context_length: bad value {context_length!r}; use a positive integer or None "
                "(None reads the GGUF's trained context)"
            )
        self.context_length = context_length
        self.n_gpu_layers = n_gpu_layers
        self.supports_images = supports_images
        self.fallback_on_error = fallback_on_error
        self.model_name = model or self.model_path.stem
        self.chat_format = chat_format
        self.n_threads = n_threads
        self.fallback_model = fallback_model
        self.test_model = test_model
        self.context_cap = context_cap if context_cap is not None else _context_cap_from_env()
        self.max_retries = max(0, int(max_retries))
        self.config_source = config_source
        self.chunk_hook = chunk_hook
        self._fallback = fallback
        self._config_dirs = list(config_dirs) if config_dirs is not None else None
        self._pool: ModelPool[Any] = pool if pool is not None else default_pool()
        self._llama_kwargs = dict(llama_kwargs)
        self._params: dict[str, Any] = dict(DEFAULT_PARAMETERS)
        self._usage = UsageSlot()
        self._detection = UsageSlot()
        self._grammars: dict[str, Any] = {}
        self._grammar_lock = threading.Lock()
        if supports_images:
            logger.warning(
                "%s: supports_images is true but the llama.cpp client does not accept images; "
                "image parts will be dropped",
                self.model_name,
            )
        if parameters:
            self.configure_parameters(parameters)

    # -- parameters ------------------------------------------------------------------

    def configure_parameters(self, params: Mapping[str, Any] | None) -> None:
        """Set default generation parameters (temperature, top_p, max_tokens, seed and the
        llama.cpp sampling keys). ``None`` values are ignored; unknown keys are logged."""
        if not params:
            return
        for name, value in dict(params).items():
            if isinstance(value, Mapping) and "default" in value:
                value = value["default"]  # SAIVerse's spec form
            if value is None:
                continue
            if name == "max_output_tokens":
                name = "max_tokens"
            if name in {"temperature", "top_p", "max_tokens", "seed"} | SAMPLING_KEYS:
                self._params[name] = _check_param(name, value)
            else:
                logger.info("%s: ignoring unknown parameter %r", self.model_name, name)

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self._params)

    # -- loading -------------------------------------------------------------------------

    def _key(self) -> ModelKey:
        return ModelKey.for_file(
            self.model_path,
            n_ctx=self.context_length or 0,
            n_gpu_layers=self.n_gpu_layers,
            n_threads=self.n_threads,
            chat_format=self.chat_format,
            extra={"context_cap": self.context_cap, **self._llama_kwargs},
        )

    def _expansion_note(self) -> str:
        if self.model_path_raw == str(self.model_path):
            return ""
        return f" (model_path {self.model_path_raw!r} expanded to {self.model_path})"

    def _missing_error(self) -> ModelLoadError:
        where = f" in {self.config_source}" if self.config_source else ""
        if self.test_model:
            fix = f"run `llama-harness models fetch {self.test_model}`"
        else:
            fix = (
                f"download the GGUF file to {self.model_path}, or fix model_path{where} "
                "(~ and $VARS are expanded; ${VAR:-default} works)"
            )
        return ModelLoadError(
            f"model file not found: {self.model_path}{self._expansion_note()}. Fix: {fix}",
            path=str(self.model_path),
        )

    def _resolve_n_ctx(self, summary: _GGUFSummary) -> int:
        trained = summary.context_length
        if self.context_length is not None:
            if trained and self.context_length > trained:
                logger.warning(
                    "%s: context_length %d exceeds the model's trained context %d",
                    self.model_name,
                    self.context_length,
                    trained,
                )
            return self.context_length
        n_ctx = min(trained, self.context_cap) if trained else self.context_cap
        logger.info(
            "%s: context_length not set; using n_ctx=%d (GGUF trained context %s, cap %d; set "
            "context_length in the config to choose)",
            self.model_name,
            n_ctx,
            trained,
            self.context_cap,
        )
        return n_ctx

    def _load_new(self, key: ModelKey) -> LoadedModel:
        path = self.model_path
        if self._path_error is not None:
            raise ModelLoadError(str(self._path_error), path=self.model_path_raw)
        if not path.exists():
            raise self._missing_error()
        if not path.is_file():
            raise ModelLoadError(
                f"model_path is not a file: {path}{self._expansion_note()}. Fix: point "
                "model_path at the .gguf file itself",
                path=str(path),
            )
        summary = check_gguf(path)
        n_ctx = self._resolve_n_ctx(summary)
        llama_cpp = _llama_cpp()
        logger.info(
            "loading %s: path=%s n_ctx=%d n_gpu_layers=%d n_threads=%s chat_format=%s",
            self.model_name,
            path,
            n_ctx,
            self.n_gpu_layers,
            self.n_threads,
            self.chat_format,
        )
        kwargs: dict[str, Any] = {
            "model_path": str(path),
            "n_ctx": n_ctx,
            "n_gpu_layers": self.n_gpu_layers,
            "verbose": False,
            **self._llama_kwargs,
        }
        if self.n_threads is not None:
            kwargs["n_threads"] = self.n_threads
            kwargs.setdefault("n_threads_batch", self.n_threads)
        started = time.perf_counter()
        with _native_log.capture() as lines:
            try:
                llm = llama_cpp.Llama(**kwargs)
            except Exception as exc:
                said = [ln.strip() for ln in lines if "error" in ln.lower() or "fail" in ln.lower()]
                detail = f"; llama.cpp said: {' | '.join(said[-3:])}" if said else ""
                raise ModelLoadError(
                    f"llama.cpp could not load {path}{self._expansion_note()}: {exc}{detail}. "
                    "Fix: check that the file is a complete GGUF for an architecture this "
                    "llama-cpp-python build supports (see saiverse_log.txt)",
                    path=str(path),
                ) from exc
        elapsed = time.perf_counter() - started
        report = parse_load_log(lines)
        if not report["n_layers_total"] and summary.block_count:
            report["n_layers_total"] = summary.block_count + 1
        report.update(
            {
                "model": self.model_name,
                "model_path": str(path),
                "n_ctx": usable_n_ctx(llm),
                "n_ctx_train": summary.context_length,
                "n_gpu_layers_requested": self.n_gpu_layers,
                "n_threads": llm.n_threads if hasattr(llm, "n_threads") else self.n_threads,
                "gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
                "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace"),
                "llama_cpp_version": getattr(llama_cpp, "__version__", "?"),
                "load_seconds": round(elapsed, 3),
            }
        )
        try:
            template = resolve_template(llm, self.chat_format, summary.architecture)
        except Exception:
            llm.close()
            raise
        report["chat_template"] = template.name
        if self.n_gpu_layers != 0 and report["n_layers_offloaded"] == 0:
            why = (
                "this llama_cpp build has no GPU offload (llama_supports_gpu_offload() is "
                "False: a CPU-only build, or no usable GPU/driver). Fix: install a GPU build "
                '(CMAKE_ARGS="-DGGML_CUDA=on"), see `llama-harness doctor`'
                if not report["gpu_offload_supported"]
                else "no GPU device was used"
            )
            logger.warning(
                "%s: n_gpu_layers=%d requested but 0/%d layers were offloaded: %s",
                self.model_name,
                self.n_gpu_layers,
                report["n_layers_total"],
                why,
            )
        logger.info(
            "loaded %s in %.2fs: backend=%s, %d/%d layers offloaded, n_ctx=%d, template=%s",
            self.model_name,
            elapsed,
            report["backend"],
            report["n_layers_offloaded"],
            report["n_layers_total"],
            report["n_ctx"],
            template.name,
        )
        return LoadedModel(llm=llm, key=key, report=report, template=template)

    def load(self) -> LoadedModel:
        """The pooled model, loading it (once per key per process) when needed."""
        key = self._key()
        model: LoadedModel = self._pool.get(key, lambda: self._load_new(key))
        return model

    @contextlib.contextmanager
    def _locked(self) -> Iterator[LoadedModel]:
        """The pooled model with its lock held; never one that was unloaded meanwhile."""
        for _ in range(5):
            model = self.load()
            with model.lock:
                if model.closed:  # evicted/unloaded between load() and the lock
                    continue
                yield model
                return
        raise GenerationError(f"{self.model_name}: the model kept being unloaded while in use")

    def load_report(self) -> dict[str, Any]:
        """Where the model runs: n_layers_offloaded, n_layers_total, backend, devices,
        gpu_offload_supported, n_gpu_layers_requested, n_ctx, buffers, system info."""
        return dict(self.load().report)

    @property
    def llama(self) -> Any:
        """The shared ``llama_cpp.Llama``; calls on it must hold ``client.load().lock``."""
        return self.load().llm

    def unload(self) -> int:
        """Unload every pooled model of this file (and forget a remembered load failure)."""
        return self._pool.unload(self.model_path)

    # -- prompts -------------------------------------------------------------------------

    def _render(
        self, model: LoadedModel, messages: list[Message], tools: list[dict[str, Any]]
    ) -> PromptInfo:
        template = model.template
        msgs = [dict(m) for m in messages]
        if tools and not template.renders_tools:
            instructions = tool_system_prompt(tools)
            if msgs and msgs[0]["role"] == "system":
                msgs[0]["content"] = f"{msgs[0]['content']}\n\n{instructions}".strip()
            else:
                msgs.insert(0, {"role": "system", "content": instructions})
        if not template.system_role:
            msgs = fold_system_messages(msgs)
        try:
            result = template.formatter(messages=msgs, tools=tools or None, tool_choice=None)
        except Exception as exc:
            raise TemplateError(
                f"the chat template ({template.name}) of {self.model_path} rejected the "
                f"messages: {type(exc).__name__}: {exc}"
            ) from exc
        text: str = result.prompt
        tokens: list[int] = model.llm.tokenize(
            text.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stop = result.stop
        stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        return PromptInfo(
            text=text,
            tokens=tokens,
            stop=[s for s in stops if s],
            template=template.name,
            stopping_criteria=result.stopping_criteria,
        )

    def format_prompt(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[object] | None = None
    ) -> PromptInfo:
        """Render ``messages`` exactly as a call would (normalised, through the template)."""
        with self._locked() as model:
            return self._render(model, normalize_messages(messages), normalize_tools(tools))

    # -- generation core -----------------------------------------------------------------

    def _schema_grammar(self, schema: Mapping[str, Any]) -> Any:
        from llama_cpp import llama_grammar

        text = json.dumps(schema, sort_keys=True)
        with self._grammar_lock:
            cached = self._grammars.get(text)
        if cached is not None:
            return cached
        try:
            grammar = llama_grammar.LlamaGrammar.from_json_schema(text, verbose=False)
        except Exception as exc:
            logger.warning(
                "response_schema could not be converted to a grammar (%s); constraining to "
                "generic JSON instead",
                exc,
            )
            grammar = llama_grammar.LlamaGrammar.from_string(llama_grammar.JSON_GBNF, verbose=False)
        with self._grammar_lock:
            self._grammars[text] = grammar
        return grammar

    def _completion_args(
        self, model: LoadedModel, request: Request, seed: int
    ) -> tuple[dict[str, Any], PromptInfo, _TokenBudget]:
        prompt = self._render(model, request.messages, request.tools)
        n_ctx = usable_n_ctx(model.llm)
        if len(prompt.tokens) >= n_ctx:
            raise ContextOverflowError(
                f"{self.model_name}: the prompt has {len(prompt.tokens)} tokens but n_ctx is "
                f"{n_ctx}. Fix: raise context_length in the model config or send less history"
            )
        grammar = request.grammar
        if grammar is None and request.response_schema is not None:
            grammar = self._schema_grammar(request.response_schema)
        from llama_cpp import StoppingCriteriaList

        max_tokens = min(request.max_tokens, n_ctx - len(prompt.tokens))
        budget = _TokenBudget(max_tokens)
        criteria = StoppingCriteriaList([budget])
        if prompt.stopping_criteria is not None:
            criteria.extend(prompt.stopping_criteria)
        args: dict[str, Any] = {
            "prompt": prompt.tokens,
            "max_tokens": max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stop": [*request.stop, *prompt.stop],
            "seed": seed,
            "grammar": grammar,
            "stopping_criteria": criteria,
            **request.extra,
        }
        return args, prompt, budget

    def _parse(self, request: Request, raw: str) -> tuple[str, list[ToolCall]]:
        if not request.tools:
            return raw, []
        parsed = parse_tool_calls(raw, known=tool_names(request.tools))
        return parsed.content, parsed.tool_calls

    def run_local(self, request: Request) -> Reply:
        """Generate a whole reply with the local model (retrying transient errors)."""
        seed = request.seed if request.seed is not None else random.randrange(2**31)
        attempts = 0
        while True:
            attempts += 1
            try:
                with self._locked() as model:
                    args, prompt, _ = self._completion_args(model, request, seed)
                    out = model.llm.create_completion(stream=False, **args)
                choice = out["choices"][0]
                raw = str(choice["text"])
                if self.chunk_hook is not None:
                    self.chunk_hook(0, raw)  # the whole reply is chunk 0
                text, calls = self._parse(request, raw)
                usage = out.get("usage") or {}
                return Reply(
                    text=text,
                    raw=raw,
                    tool_calls=calls,
                    answered_by=self.model_name,
                    prompt_tokens=int(usage.get("prompt_tokens", len(prompt.tokens))),
                    completion_tokens=int(usage.get("completion_tokens", 0)),
                    attempts=attempts,
                    finish_reason=choice.get("finish_reason"),
                )
            except Exception as exc:
                if attempts > self.max_retries or not is_transient(exc):
                    raise
                logger.warning(
                    "%s: transient error (attempt %d of %d): %s: %s; retrying",
                    self.model_name,
                    attempts,
                    self.max_retries + 1,
                    type(exc).__name__,
                    exc,
                )

    def stream_local(self, request: Request) -> Iterator[str | Reply]:
        """Text chunks from the local model, then the final :class:`Reply`.

        The model's lock is held for the whole stream. On a transient error the stream is
        regenerated with the same seed and only text beyond what was already yielded is
        yielded; if the retry diverges, :class:`RetryDivergedError` is raised instead."""
        seed = request.seed if request.seed is not None else random.randrange(2**31)
        emitted = ""
        attempts = 0
        while True:
            attempts += 1
            try:
                with self._locked() as model:
                    if attempts > 1:
                        model.llm.reset()
                    args, prompt, budget = self._completion_args(model, request, seed)
                    known = tool_names(request.tools) if request.tools else None
                    filt = ToolCallStreamFilter(known) if request.tools else None
                    produced = ""
                    raw = ""
                    finish: str | None = None
                    stream = model.llm.create_completion(stream=True, **args)
                    try:
                        for index, chunk in enumerate(stream):
                            choice = chunk["choices"][0]
                            piece = str(choice.get("text") or "")
                            finish = choice.get("finish_reason") or finish
                            if self.chunk_hook is not None:
                                self.chunk_hook(index, piece)
                            raw += piece
                            produced += filt.feed(piece) if filt is not None else piece
                            new = _unseen(produced, emitted)
                            if new:
                                emitted += new
                                yield new
                    finally:
                        stream.close()
                    calls: list[ToolCall] = []
                    if filt is not None:
                        tail, calls = filt.finish()
                        produced += tail
                        new = _unseen(produced, emitted)
                        if new:
                            emitted += new
                            yield new
                    if len(produced) < len(emitted):
                        raise RetryDivergedError(
                            "a retried stream ended before reaching the text already yielded"
                        )
                    completion_tokens = budget.completion_tokens(finish)
                yield Reply(
                    text=produced,
                    raw=raw,
                    tool_calls=calls,
                    answered_by=self.model_name,
                    prompt_tokens=len(prompt.tokens),
                    completion_tokens=completion_tokens,
                    attempts=attempts,
                    finish_reason=finish,
                )
                return
            except Exception as exc:
                if attempts > self.max_retries or not is_transient(exc):
                    raise
                logger.warning(
                    "%s: transient error while streaming (attempt %d of %d, %d chars already "
                    "sent): %s: %s; retrying without repeating them",
                    self.model_name,
                    attempts,
                    self.max_retries + 1,
                    len(emitted),
                    type(exc).__name__,
                    exc,
                )

    # -- requests, fallback, results -----------------------------------------------------

    def _prepare(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[object] | None,
        response_schema: Mapping[str, Any] | None,
        temperature: float | None,
        kwargs: Mapping[str, Any],
    ) -> Request:
        params = dict(self._params)
        if temperature is not None:
            params["temperature"] = _check_param("temperature", temperature)
        extra: dict[str, Any] = {k: params.pop(k) for k in list(params) if k in SAMPLING_KEYS}
        grammar = None
        stop: list[str] = []
        for name, value in kwargs.items():
            if value is None:
                continue
            if name == "max_output_tokens":
                name = "max_tokens"
            if name in {"top_p", "max_tokens", "seed", "temperature"}:
                params[name] = _check_param(name, value)
            elif name in SAMPLING_KEYS:
                extra[name] = _check_param(name, value)
            elif name == "grammar":
                grammar = value
            elif name == "stop":
                stop = [value] if isinstance(value, str) else [str(s) for s in value]
            else:
                logger.debug("%s: ignoring unsupported argument %r", self.model_name, name)
        if response_schema is not None and not isinstance(response_schema, Mapping):
            raise ValueError(
                f"response_schema: bad value {response_schema!r}; pass a JSON-schema dict"
            )
        return Request(
            messages=normalize_messages(messages),
            tools=normalize_tools(tools),
            response_schema=dict(response_schema) if response_schema is not None else None,
            temperature=float(params["temperature"]),
            top_p=float(params["top_p"]),
            max_tokens=int(params["max_tokens"]),
            seed=params.get("seed"),
            stop=stop,
            grammar=grammar,
            extra=extra,
        )

    def _can_fall_back(self, exc: BaseException) -> bool:
        if not self.fallback_on_error:
            return False
        return not isinstance(exc, (MessageError, ToolDefinitionError, ConfigError))

    def _get_fallback(self) -> Fallback:
        if self._fallback is None:
            self._fallback = make_fallback(self.fallback_model, dirs=self._config_dirs)
        return self._fallback

    def _warn_fallback(self, exc: BaseException, fallback: Fallback) -> None:
        logger.warning(
            "%s failed (%s: %s); answering with fallback model %s (fallback_on_error is true)",
            self.model_name,
            type(exc).__name__,
            exc,
            fallback.name,
        )

    def _finish(self, request: Request, reply: Reply) -> str | dict[str, Any]:
        if request.response_schema is not None:
            text = (reply.raw or reply.text).strip()
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                cut = (
                    " (cut off at max_tokens: raise max_tokens)"
                    if reply.finish_reason == "length"
                    else ""
                )
                raise GenerationError(
                    f"{reply.answered_by}: response_schema reply is not valid JSON{cut}: "
                    f"{exc.msg}; reply: {text[:200]!r}"
                ) from exc
            if not isinstance(value, dict):
                raise GenerationError(
                    f"{reply.answered_by}: response_schema reply is a {type(value).__name__}, "
                    "not a JSON object"
                )
            return value
        if request.tools:
            return tool_result(reply.text, reply.tool_calls)
        return reply.text

    def _record(self, reply: Reply, reason: BaseException | None) -> None:
        self._usage.set(
            Usage(
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                model=self.model_name,
                answered_by=reply.answered_by,
                fallback=reason is not None,
                fallback_reason=f"{type(reason).__name__}: {reason}" if reason else None,
                attempts=reply.attempts,
            )
        )

    # -- SAIVerse interface ---------------------------------------------------------------

    def generate(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[object] | None = None,
        response_schema: Mapping[str, Any] | None = None,
        *,
        temperature: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """A str; a dict with ``response_schema``; ``{"type": ...}`` with ``tools``."""
        self._usage.clear()
        self._detection.clear()
        request = self._prepare(messages, tools, response_schema, temperature, kwargs)
        reason: BaseException | None = None
        try:
            reply = self.run_local(request)
            result = self._finish(request, reply)
        except Exception as exc:
            if not self._can_fall_back(exc):
                raise
            fallback = self._get_fallback()
            self._warn_fallback(exc, fallback)
            try:
                reply = fallback.generate(request)
                result = self._finish(request, reply)
            except Exception as fallback_exc:
                raise FallbackError(self.model_name, exc, fallback.name, fallback_exc) from exc
            reason = exc
        self._record(reply, reason)
        return result

    def generate_stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[object] | None = None,
        response_schema: Mapping[str, Any] | None = None,
        *,
        temperature: float | None = None,
        **kwargs: Any,
    ) -> Iterator[str]:
        """Yield text chunks. Tool calls are held back and stored for
        :meth:`consume_tool_detection`; with a schema the JSON text is yielded."""
        self._usage.clear()
        self._detection.clear()
        request = self._prepare(messages, tools, response_schema, temperature, kwargs)
        return self._stream(request)

    def _stream(self, request: Request) -> Iterator[str]:
        self._usage.clear()
        self._detection.clear()
        final: Reply | None = None
        reason: BaseException | None = None
        sent = False
        try:
            for item in self.stream_local(request):
                if isinstance(item, Reply):
                    final = item
                else:
                    sent = True
                    yield item
        except Exception as exc:
            if sent or not self._can_fall_back(exc):
                raise
            fallback = self._get_fallback()
            self._warn_fallback(exc, fallback)
            try:
                for item in fallback.stream(request):
                    if isinstance(item, Reply):
                        final = item
                    else:
                        sent = True
                        yield item
            except Exception as fallback_exc:
                raise FallbackError(self.model_name, exc, fallback.name, fallback_exc) from exc
            reason = exc
        if final is None:  # pragma: no cover - stream_local always ends with a Reply
            raise GenerationError(f"{self.model_name}: the stream ended without a reply")
        if request.response_schema is not None:
            self._finish(request, final)  # raises if the streamed JSON is not valid
        if final.tool_calls:
            self._detection.set(tool_result(final.text, final.tool_calls))
        self._record(final, reason)

    def consume_tool_detection(self) -> dict[str, Any] | None:
        """The tool call detected by the last ``generate_stream`` (read-and-clear)."""
        value: dict[str, Any] | None = self._detection.consume()
        return value

    def consume_usage(self) -> Usage | None:
        """Usage of the last call on this thread (read-and-clear)."""
        value: Usage | None = self._usage.consume()
        return value


def get_llm_client(
    config_key_or_config: str | ModelConfig,
    *,
    dirs: Sequence[Path] | None = None,
    pool: ModelPool[Closable] | None = None,
    **overrides: Any,
) -> LlamaCppClient:
    """A client for a model config (key looked up in the registry, or a ``ModelConfig``),
    with its parameters, chat_format, n_threads and fallback settings applied.
    ``overrides`` replace constructor arguments (e.g. ``fallback_on_error=False``)."""
    if isinstance(config_key_or_config, ModelConfig):
        config = config_key_or_config
    else:
        from saiverse_llm.registry import get_config

        config = get_config(config_key_or_config, dirs)
    params = config.parameters
    kwargs: dict[str, Any] = {
        "context_length": config.context_length,
        "n_gpu_layers": config.n_gpu_layers,
        "supports_images": config.supports_images,
        "fallback_on_error": config.fallback_on_error,
        "model": config.key,
        "model_path_raw": config.model_path_raw,
        "chat_format": config.chat_format,
        "n_threads": config.n_threads,
        "fallback_model": config.fallback_model,
        "test_model": config.test_model,
        "parameters": {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        },
        "config_source": config.source,
        "config_dirs": dirs,
        "pool": pool,
    }
    kwargs.update(overrides)
    return LlamaCppClient(str(config.model_path), **kwargs)
