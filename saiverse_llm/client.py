"""``LlamaCppClient``: SAIVerse's llama.cpp provider, without the original's known defects.

Interface (SAIVerse's ``LLMClient``)::

    client = LlamaCppClient("~/models/x.gguf", context_length=8192, n_gpu_layers=-1)
    text = client.generate(messages)                                   # str
    data = client.generate(messages, response_schema=schema)           # dict (parsed JSON)
    out = client.generate(messages, tools=tools)  # {"type": "text"|"tool_call"|"both", ...}
    for chunk in client.generate_stream(messages): ...                 # text chunks
    client.consume_tool_detection(); client.consume_usage()            # read-and-clear

How a call runs: messages are normalised (:mod:`saiverse_llm.messages`); the model is taken
from the process-wide pool (:mod:`saiverse_llm.pool`), loaded once per key by
:mod:`saiverse_llm.loading`; the prompt is rendered with the model's chat template
(:mod:`saiverse_llm.templates`), and the request's :class:`~saiverse_llm.generation.Generation`
is a job of the model's batching engine (:mod:`saiverse_llm.engine`: concurrent calls on one
model are decoded together, each with its own sampler, stop strings and limits); tool calls
and ``response_schema`` replies are handled by
:mod:`saiverse_llm.tools` and :mod:`saiverse_llm.schema`. Transient errors are retried
(:func:`~saiverse_llm.errors.is_transient`); a retried stream never repeats text it already
yielded. Failures fall back (:mod:`saiverse_llm.fallback`) when ``fallback_on_error`` is
true, with a WARNING and the answering model in the usage (:mod:`saiverse_llm.usage`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from saiverse_llm.config import (
    CONTEXT_LENGTH_RANGE,
    DEFAULT_CONTEXT_CAP,
    MAX_TOKENS_RANGE,
    N_GPU_LAYERS_RANGE,
    N_SEQ_MAX_RANGE,
    N_THREADS_RANGE,
    SEED_RANGE,
    TEMPERATURE_RANGE,
    TOP_P_RANGE,
    ConfigError,
    ModelConfig,
    expand_path,
)
from saiverse_llm.engine import Job
from saiverse_llm.errors import (
    ContextOverflowError,
    GenerationError,
    RetryDivergedError,
    TemplateError,
    TransientError,
    is_transient,
)
from saiverse_llm.fallback import Fallback, FallbackError, LocalGenerator, make_fallback
from saiverse_llm.generation import Generation, ReplyBuilder, split_stops, unseen
from saiverse_llm.loading import LoadedModel, LoadSpec
from saiverse_llm.messages import Message, MessageError, normalize_messages, replace_surrogates
from saiverse_llm.pool import Closable, ModelLoadError, ModelPool, default_pool
from saiverse_llm.request import Reply, Request
from saiverse_llm.sampling import Sampler, SamplingParams
from saiverse_llm.schema import (
    SchemaError,
    SchemaMismatchError,
    check_schema,
    normalize_schema,
    schema_grammar,
    validate_reply,
)
from saiverse_llm.templates import PromptInfo, render_prompt
from saiverse_llm.tools import (
    ToolCallStreamFilter,
    ToolDefinitionError,
    normalize_tools,
    tool_names,
    tool_result,
)
from saiverse_llm.usage import Usage, UsageSlot, UsageTotals
from saiverse_llm.user_errors import ParameterError, env_int

__all__ = [
    "DEFAULT_CONTEXT_CAP",
    "DEFAULT_PARAMETERS",
    "SAMPLING_KEYS",
    "ContextOverflowError",
    "GenerationError",
    "LlamaCppClient",
    "ModelLoadError",
    "RetryDivergedError",
    "SchemaError",
    "SchemaMismatchError",
    "TemplateError",
    "TransientError",
    "get_llm_client",
    "is_transient",
]

logger = logging.getLogger("saiverse_llm")

DEFAULT_PARAMETERS: dict[str, Any] = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 2048}

#: Sampling kwargs passed through to llama.cpp's sampler (per call or via
#: ``configure_parameters``).
SAMPLING_KEYS = frozenset(
    {
        "top_k",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "ignore_eos",
    }
)


def _context_cap_from_env() -> int:
    cap = env_int(
        "SAIVERSE_LLM_CONTEXT_CAP",
        default=DEFAULT_CONTEXT_CAP,
        bounds=CONTEXT_LENGTH_RANGE,
        fix="set it to a whole number of tokens such as 8192, or unset it",
    )
    assert cap is not None
    return cap


def _check_int(name: str, value: object, bounds: tuple[int, int], fix: str) -> int:
    """``value`` if it is an int within ``bounds`` (the C type it ends in, see
    :mod:`saiverse_llm.config`), else :class:`ParameterError`."""
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ParameterError(f"{name}: bad value {value!r} (allowed: {low}..{high:,})", fix)
    return value


def _check_param(name: str, value: object) -> Any:
    fix = {
        "temperature": "use a number from 0.0 to 2.0",
        "top_p": "use a number from 0.0 to 1.0",
        "max_tokens": "use a positive integer",
        "seed": "use a non-negative integer (or leave it unset for a random seed)",
    }
    if name == "max_tokens":
        return _check_int("parameter max_tokens", value, MAX_TOKENS_RANGE, fix[name])
    if name == "ignore_eos":
        if not isinstance(value, bool):
            raise ParameterError(f"parameter ignore_eos: bad value {value!r}", "use true or false")
        return value
    if name == "seed":
        return _check_int("parameter seed", value, SEED_RANGE, fix[name])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(
            f"parameter {name}: bad value {value!r}", fix.get(name, "use a number")
        )
    number = float(value)
    ranges = {"temperature": TEMPERATURE_RANGE, "top_p": TOP_P_RANGE}
    if name in ranges and not ranges[name][0] <= number <= ranges[name][1]:
        raise ParameterError(f"parameter {name}: bad value {value!r}", fix[name])
    if not math.isfinite(number):
        raise ParameterError(f"parameter {name}: bad value {value!r}", "use a finite number")
    if name == "top_k":
        return int(number)
    return number


def _check_stop(value: object) -> list[str]:
    """``stop`` as a list of strings: a string, or a list or tuple of strings (None, handled
    by the caller, means no stop strings); anything else is a :class:`ParameterError`.
    UTF-16 surrogates are read as messages' are (:func:`replace_surrogates`: a pair is its
    character, a lone one U+FFFD), with a warning."""
    if isinstance(value, str):
        stops = [value]
    else:
        fix = "pass a string, a list of strings, or None for no stop strings"
        if not isinstance(value, (list, tuple)):
            raise ParameterError(
                f"parameter stop: bad value {value!r} (not a string or a list)", fix
            )
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ParameterError(
                    f"parameter stop: bad value {item!r} at stop[{index}] (not a string)", fix
                )
        stops = list(value)
    fixed: list[str] = replace_surrogates(stops)
    if fixed != stops:
        logger.warning(
            "parameter stop: UTF-16 surrogate(s) read as the characters they encode, a lone "
            "one as U+FFFD (not encodable as UTF-8)"
        )
    return fixed


class LlamaCppClient:
    """SAIVerse-compatible llama.cpp client (see the module docstring).

    The first five arguments are SAIVerse's. The keyword-only extras: ``model`` (the key
    usage records name; default the file stem), ``model_path_raw`` (the config's unexpanded
    path, for error messages), ``chat_format`` (a llama-cpp-python format name; default the
    GGUF's own template), ``n_threads``, ``fallback_model`` (a config key, or None for
    Gemini 2.0 Flash) or ``fallback`` (a ready :class:`~saiverse_llm.fallback.Fallback`),
    ``test_model`` and ``fetch_hint`` (the commands named in the "file not found" fix, e.g.
    ``saiverse-llm fetch KEY``), ``parameters`` (defaults for
    temperature/top_p/max_tokens/...), ``context_cap`` (see :data:`DEFAULT_CONTEXT_CAP`),
    ``max_retries`` (retries of transient errors, default 1), ``pool`` (default the
    process-wide pool), ``config_dirs`` (where ``fallback_model`` is looked up),
    ``chunk_hook(index, text)`` (called with every streamed chunk, and with the whole reply
    as chunk 0 for ``generate``; a chunk is one token's text, or, for greedy requests in
    the compiled loop, the text of up to ``chunk_seconds`` of decoding, so how much text a
    chunk index holds depends on timing there; an exception it raises is treated like a
    generation error, which is how the retry tests inject failures; it runs on the model's
    scheduler thread, so keep it short), ``n_seq_max`` (sequences of ``context_length``
    tokens each decoded together; None sizes it from free memory,
    :func:`saiverse_llm.loading.auto_n_seq`) and any other ``llama_cpp.Llama`` keyword
    (e.g. ``flash_attn=True``), which becomes part of the pool key.

    Thread-safe: concurrent calls on one model run as one batch (up to ``n_seq_max`` at a
    time, the others wait their turn); a stream nobody reads blocks no one; usage and tool
    detection are kept per thread.
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
        fetch_hint: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        context_cap: int | None = None,
        max_retries: int = 1,
        pool: ModelPool[Any] | None = None,
        config_dirs: Sequence[Path] | None = None,
        config_source: Path | None = None,
        chunk_hook: Callable[[int, str], None] | None = None,
        n_seq_max: int | None = None,
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
        _check_int("n_gpu_layers", n_gpu_layers, N_GPU_LAYERS_RANGE,
                   "use -1 (all), 0 (CPU) or N layers")  # fmt: skip
        if context_length is not None:
            _check_int("context_length", context_length, CONTEXT_LENGTH_RANGE,
                       "use a number of tokens, or None (the GGUF's trained context)")  # fmt: skip
        if n_threads is not None:
            _check_int("n_threads", n_threads, N_THREADS_RANGE,
                       "use the number of physical cores, or None for the default")  # fmt: skip
        if n_seq_max is not None:
            _check_int("n_seq_max", n_seq_max, N_SEQ_MAX_RANGE,
                       "use the number of requests to decode together, or None (sized from "
                       "free memory)")  # fmt: skip
        self.n_seq_max = n_seq_max
        self.context_length = context_length
        self.n_gpu_layers = n_gpu_layers
        self.supports_images = supports_images
        self.fallback_on_error = fallback_on_error
        self.model_name = model or self.model_path.stem
        self.chat_format = chat_format
        self.n_threads = n_threads
        self.fallback_model = fallback_model
        self.test_model = test_model
        self.fetch_hint = fetch_hint
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
        self._totals = UsageTotals()
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

    def load_spec(self) -> LoadSpec:
        """What this client loads (its :meth:`LoadSpec.key` is the pool key)."""
        return LoadSpec(
            model_name=self.model_name,
            path=self.model_path,
            path_raw=self.model_path_raw,
            context_length=self.context_length,
            context_cap=self.context_cap,
            n_gpu_layers=self.n_gpu_layers,
            n_threads=self.n_threads,
            chat_format=self.chat_format,
            llama_kwargs=dict(self._llama_kwargs),
            config_source=self.config_source,
            test_model=self.test_model,
            fetch_hint=self.fetch_hint,
            path_error=str(self._path_error) if self._path_error is not None else None,
            n_seq_max=self.n_seq_max,
        )

    def load(self) -> LoadedModel:
        """The pooled model, loading it (once per key per process) when needed."""
        spec = self.load_spec()
        model: LoadedModel = self._pool.get(spec.key(), spec.load)
        return model

    @contextlib.contextmanager
    def _using(self) -> Iterator[LoadedModel]:
        """The pooled model, counted as in use (the pool cannot free it under us); never one
        that was unloaded meanwhile."""
        for _ in range(5):
            model = self.load()
            if not model.acquire():  # evicted/unloaded between load() and now
                continue
            try:
                yield model
            finally:
                model.release()
            return
        raise GenerationError(f"{self.model_name}: the model kept being unloaded while in use")

    def load_report(self) -> dict[str, Any]:
        """Where the model runs: n_layers_offloaded, n_layers_total, backend, devices,
        gpu_offload_supported, n_gpu_layers_requested, n_ctx, buffers, system info."""
        return dict(self.load().report)

    @property
    def llama(self) -> Any:
        """The shared ``llama_cpp.Llama``; calls that decode on it must hold
        ``client.load().lock`` (they wait until no request runs on the model)."""
        return self.load().llm

    def unload(self) -> int:
        """Unload every pooled model of this file (and forget a remembered load failure)."""
        return self._pool.unload(self.model_path)

    # -- prompts -------------------------------------------------------------------------

    def _render(
        self, model: LoadedModel, messages: list[Message], tools: list[dict[str, Any]]
    ) -> PromptInfo:
        return render_prompt(
            model.llm,
            model.template,
            messages,
            tools,
            source=str(self.model_path),
            vocab=model.vocab,
        )

    def format_prompt(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[object] | None = None
    ) -> PromptInfo:
        """Render ``messages`` exactly as a call would (normalised, through the template)."""
        with self._using() as model:
            return self._render(model, normalize_messages(messages), normalize_tools(tools))

    # -- generation core -----------------------------------------------------------------

    def _generation(
        self,
        model: LoadedModel,
        request: Request,
        seed: int,
        on_text: Callable[[int, str], None] | None,
    ) -> tuple[Generation, PromptInfo]:
        """The per-request state for ``request`` on ``model``: prompt, sampler, reply."""
        prompt = self._render(model, request.messages, request.tools)
        n_ctx = model.n_ctx
        if len(prompt.tokens) >= n_ctx:
            raise ContextOverflowError(
                f"{self.model_name}: the prompt has {len(prompt.tokens)} tokens but n_ctx is "
                f"{n_ctx}. Fix: raise context_length in the model config or send less history"
            )
        grammar = request.grammar
        if grammar is None and request.response_schema is not None:
            grammar = schema_grammar(request.response_schema)
        extra = dict(request.extra)
        ignore_eos = bool(extra.pop("ignore_eos", False))
        params = SamplingParams(
            temperature=request.temperature,
            top_p=request.top_p,
            seed=seed,
            grammar=grammar,
            ignore_eos=ignore_eos,
            **extra,
        )
        stops, stop_tokens = split_stops(model.vocab, [*request.stop, *prompt.stop])
        reply = ReplyBuilder(
            model.vocab,
            max_tokens=min(request.max_tokens, n_ctx - len(prompt.tokens)),
            stop=stops,
            stop_tokens=stop_tokens,
            tool_filter=ToolCallStreamFilter(tool_names(request.tools)) if request.tools else None,
            ignore_eos=ignore_eos,
            on_text=on_text,
        )
        return Generation(prompt.tokens, Sampler(model.vocab, params), reply), prompt

    def _reply(self, gen: Generation, prompt: PromptInfo, text: str, attempts: int) -> Reply:
        return Reply(
            text=text,
            raw=gen.reply.raw,
            tool_calls=gen.reply.tool_calls,
            answered_by=self.model_name,
            prompt_tokens=len(prompt.tokens),
            completion_tokens=gen.reply.n_tokens,
            attempts=attempts,
            finish_reason=gen.reply.finish_reason,
            cached_tokens=gen.cached_tokens,
        )

    def _retry_or_raise(self, exc: Exception, attempts: int, sent: int | None) -> None:
        if attempts > self.max_retries or not is_transient(exc):
            raise exc
        where = "" if sent is None else f" while streaming, {sent} chars already sent"
        logger.warning(
            "%s: transient error (attempt %d of %d%s): %s: %s; retrying%s",
            self.model_name,
            attempts,
            self.max_retries + 1,
            where,
            type(exc).__name__,
            exc,
            "" if sent is None else " without repeating them",
        )

    def run_local(self, request: Request) -> Reply:
        """Generate a whole reply with the local model (retrying transient errors).

        The same loop as :meth:`stream_local` (one engine job), read to the end."""
        seed = request.seed if request.seed is not None else random.randrange(2**31)
        attempts = 0
        while True:
            attempts += 1
            try:
                with self._using() as model:
                    gen, prompt = self._generation(model, request, seed, None)
                    job = self._submit(model, gen)
                    try:
                        text = job.result()
                    finally:
                        job.cancel()  # nothing when it ended; frees it on an interrupt
                if self.chunk_hook is not None:
                    self.chunk_hook(0, gen.reply.raw)  # the whole reply is chunk 0
                return self._reply(gen, prompt, text, attempts)
            except Exception as exc:
                self._retry_or_raise(exc, attempts, None)

    @staticmethod
    def _submit(model: LoadedModel, gen: Generation) -> Job:
        try:
            return model.engine.submit(gen)
        except BaseException:
            gen.close()
            raise

    def stream_local(
        self, request: Request, *, on_cancel: Callable[[Reply], None] | None = None
    ) -> Generator[str | Reply, None, None]:
        """Text chunks from the local model, then the final :class:`Reply`.

        The request is a job of the model's engine, decoded beside other calls; closing
        the stream (or dropping it) cancels the job and frees its sequence. On a transient
        error the stream is regenerated with the same seed and only text beyond what was
        already yielded is yielded; if the retry diverges, :class:`RetryDivergedError` is
        raised instead. When the consumer closes the stream early, ``on_cancel`` gets the
        usage so far (``finish_reason`` "cancelled")."""
        seed = request.seed if request.seed is not None else random.randrange(2**31)
        emitted = ""
        attempts = 0
        while True:
            attempts += 1
            try:
                with self._using() as model:
                    gen, prompt = self._generation(model, request, seed, self.chunk_hook)
                    job = self._submit(model, gen)
                    produced = ""
                    try:
                        if not emitted:  # the first attempt: nothing to compare with
                            for piece in job.chunks():
                                emitted += piece
                                yield piece
                            produced = emitted
                        else:
                            for piece in job.chunks():
                                produced += piece
                                new = unseen(produced, emitted)
                                if new:
                                    emitted += new
                                    yield new
                    except GeneratorExit:
                        if on_cancel is not None:
                            partial = self._reply(gen, prompt, emitted, attempts)
                            partial.finish_reason = "cancelled"
                            on_cancel(partial)
                        raise
                    finally:
                        job.cancel()
                    if len(produced) < len(emitted):
                        raise RetryDivergedError(
                            "a retried stream ended before reaching the text already yielded"
                        )
                yield self._reply(gen, prompt, produced, attempts)
                return
            except Exception as exc:
                self._retry_or_raise(exc, attempts, len(emitted))

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
                stop = _check_stop(value)
            else:
                logger.debug("%s: ignoring unsupported argument %r", self.model_name, name)
        if extra.get("ignore_eos") and (grammar is not None or response_schema is not None):
            # the grammar's only way out is an end-of-generation token, which ignore_eos masks:
            # llama.cpp's grammar sampler then throws through ctypes and the process aborts
            raise ParameterError(
                "parameter ignore_eos: true with a grammar or response_schema",
                "drop ignore_eos (a grammar ends the reply itself; max_tokens still caps it)",
            )
        schema: dict[str, Any] | None = None
        if response_schema is not None:
            if not isinstance(response_schema, Mapping):
                raise SchemaError(
                    f"response_schema: bad value {response_schema!r}; pass a JSON-schema dict"
                )
            schema = normalize_schema(response_schema)
            check_schema(schema)
        return Request(
            messages=normalize_messages(messages),
            tools=normalize_tools(tools),
            response_schema=schema,
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
        return not isinstance(exc, (MessageError, ToolDefinitionError, ConfigError, SchemaError))

    def _get_fallback(self) -> Fallback:
        if self._fallback is None:
            self._fallback = make_fallback(
                self.fallback_model, dirs=self._config_dirs, local_factory=_local_fallback
            )
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
                raise SchemaMismatchError(
                    f"{reply.answered_by}: response_schema reply is a {type(value).__name__}, "
                    "not a JSON object"
                )
            validate_reply(request.response_schema, value, model=reply.answered_by)
            return value
        if request.tools:
            return tool_result(reply.text, reply.tool_calls)
        return reply.text

    def _record(self, reply: Reply, reason: BaseException | None) -> None:
        usage = Usage(
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            model=self.model_name,
            answered_by=reply.answered_by,
            fallback=reason is not None,
            fallback_reason=f"{type(reason).__name__}: {reason}" if reason else None,
            attempts=reply.attempts,
            cached_tokens=reply.cached_tokens,
            finish_reason=reply.finish_reason,
        )
        self._usage.set(usage)
        self._totals.add(usage)

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
            local = self.stream_local(request, on_cancel=lambda r: self._record(r, None))
            with contextlib.closing(local):
                for item in local:
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
        """Usage of the last call on this thread, read-and-clear (per call, not a sum; see
        :mod:`saiverse_llm.usage`). None when nothing was recorded since the last read."""
        value: Usage | None = self._usage.consume()
        return value

    def total_usage(self) -> UsageTotals:
        """Cumulative usage of every call this client recorded (all threads); a copy."""
        return self._totals.snapshot()


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
        "n_seq_max": config.n_seq_max,
        "fallback_model": config.fallback_model,
        "test_model": config.test_model,
        "fetch_hint": f"saiverse-llm fetch {config.key}" if config.model_source else None,
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


def _local_fallback(key: str, dirs: Sequence[Path] | None) -> LocalGenerator:
    """A fallback model config's client; the fallback itself never falls back (no chains)."""
    from saiverse_llm.registry import get_config

    return get_llm_client(get_config(key, dirs), fallback_on_error=False)
