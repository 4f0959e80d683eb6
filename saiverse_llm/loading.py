"""Loading a model: the GGUF check, n_ctx, the ``Llama`` itself, its load report.

:class:`LoadSpec` holds everything that decides what llama.cpp loads (its :meth:`~LoadSpec.key`
is the pool key); :meth:`LoadSpec.load` checks the file with the pure-Python GGUF reader,
picks n_ctx (the config's ``context_length``, else the GGUF's trained context capped at
``context_cap``), loads the ``Llama`` with llama.cpp's log captured and returns a
:class:`LoadedModel` whose ``report`` says where the model runs. The process-wide pool
(:mod:`saiverse_llm.pool`) calls it at most once per key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saiverse_llm import fit
from saiverse_llm.engine import Engine, EngineSettings
from saiverse_llm.native import (
    CapturedLog,
    gpu_free_bytes,
    llama_cpp_module,
    native_log,
    parse_load_log,
    parse_memory_log,
)
from saiverse_llm.pool import ModelKey, ModelLoadError
from saiverse_llm.templates import ChatTemplate, resolve_template
from saiverse_llm.vocab import Vocab

logger = logging.getLogger("saiverse_llm")


@dataclass
class GGUFSummary:
    context_length: int | None
    architecture: str | None
    block_count: int | None


_gguf_cache: dict[tuple[str, int, int], GGUFSummary] = {}
_gguf_cache_lock = threading.Lock()


def check_gguf(path: Path) -> GGUFSummary:
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
    summary = GGUFSummary(info.context_length, info.architecture, info.block_count)
    with _gguf_cache_lock:
        _gguf_cache[cache_key] = summary
    return summary


class LoadedModel:
    """One ``Llama`` in the pool: its load report, chat template and vocabulary, its
    batching :class:`~saiverse_llm.engine.Engine` (every generation on the model is a job
    of it), and a count of the calls using it.

    A model is freed only when nobody uses it: :meth:`close` (the pool evicting or
    unloading it) while a call holds it (:meth:`acquire` ... :meth:`release`, e.g. a stream
    that is still being read) only marks it, and the last :meth:`release` frees it. A
    marked model cannot be acquired again (the caller loads a fresh one)."""

    def __init__(
        self,
        llm: Any,
        key: ModelKey,
        report: dict[str, Any],
        template: ChatTemplate,
        engine_settings: EngineSettings | None = None,
    ) -> None:
        self.llm = llm
        self.key = key
        self.report = report
        self.template = template
        self.vocab = Vocab(llm)
        self.n_ctx = usable_n_ctx(llm)
        self.engine = Engine(
            llm,
            engine_settings or EngineSettings(),
            name=str(report.get("model") or Path(key.path).name),
            n_ctx_seq=self.n_ctx,
        )
        self._state = threading.Lock()
        self._users = 0
        self._close_pending = False
        self.closed = False

    @property
    def lock(self) -> contextlib.AbstractContextManager[None]:
        """``with model.lock:`` uses the ``Llama`` directly (llama-cpp-python's own calls,
        on sequence 0), once no request runs on it: :meth:`Engine.exclusive`."""
        return self.engine.exclusive()

    def generating(self) -> contextlib.AbstractContextManager[None]:
        """The same as :attr:`lock` (the name the generation loop used before the engine)."""
        return self.engine.exclusive()

    @property
    def in_use(self) -> bool:
        with self._state:
            return self._users > 0

    def acquire(self) -> bool:
        """Count one more user; False when the model is closed or about to be."""
        with self._state:
            if self.closed or self._close_pending:
                return False
            self._users += 1
            return True

    def release(self) -> None:
        """One user fewer; frees the model if a close was deferred until now."""
        with self._state:
            self._users -= 1
            free = self._users == 0 and self._close_pending and not self.closed
            if free:
                self.closed = True
        if free:
            logger.info("freeing %s now that its last call has ended", self.key.path)
            self._free()

    def close(self) -> None:
        """Free the model now, or when its last user releases it."""
        with self._state:
            if self.closed:
                return
            if self._users:
                self._close_pending = True
                logger.info(
                    "%s is in use (%d call(s)); freeing it when they end",
                    self.key.path,
                    self._users,
                )
                return
            self.closed = True
        self._free()

    def _free(self) -> None:
        if self.engine.on_scheduler_thread():
            # the last user let go in a finalizer on the scheduler thread (mid-step): free
            # from another thread, once the scheduler has stopped
            threading.Thread(target=self._free, name="saiverse-llm free", daemon=True).start()
            return
        self.engine.close()
        self.llm.close()


def usable_n_ctx(llm: Any) -> int:
    """Tokens a prompt plus reply may use in one sequence. llama.cpp may round a
    sequence's cells up (to 256), but llama-cpp-python sizes its token buffer by the
    requested n_ctx: the smaller one counts."""
    import llama_cpp

    actual = int(llama_cpp.llama_n_ctx_seq(llm.ctx))
    requested = int(getattr(llm.context_params, "n_ctx", 0) or actual)
    return min(actual, requested)


#: Sequences a config without ``n_seq_max`` gets at most (when memory allows, see
#: :func:`auto_n_seq`).
AUTO_N_SEQ_MAX = 4
#: Share of the memory left free after the load that more sequences may take.
AUTO_N_SEQ_SHARE = 0.5


def open_sequences(llm: Any, n_seq: int) -> None:
    """Give ``llm`` a context of ``n_seq`` sequences with its ``n_ctx`` cells each
    (``kv_unified`` off, as ``llama-batched-bench`` runs), in place of the one-sequence
    context ``Llama`` made (freed first). llama-cpp-python has no parameter for it."""
    import llama_cpp
    from llama_cpp import _internals

    params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
    params.n_seq_max = n_seq
    params.n_ctx = n_seq * int(llm.context_params.n_ctx)
    params.kv_unified = False
    llm._ctx.close()
    ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=llm.verbose)
    llm._ctx = llm._stack.enter_context(contextlib.closing(ctx))
    llm.n_tokens = 0


def auto_n_seq(spec: LoadSpec, n_ctx: int, report: dict[str, Any]) -> tuple[int, str]:
    """How many sequences a config without ``n_seq_max`` gets, and why: as many as
    :func:`saiverse_llm.fit.sequences_that_fit` allows (at most :data:`AUTO_N_SEQ_MAX`)
    in half the memory still free after the load (system RAM for a CPU load, the GPU's
    free memory when the KV cache is offloaded); one when that is unknown or short."""
    on_gpu = int(report.get("n_layers_offloaded") or 0) > 0
    if on_gpu:
        free = gpu_free_bytes()
        where = "free GPU memory"
    else:
        free = fit.host_available_bytes()
        where = "free RAM"
    if free is None:
        return 1, f"auto: 1 ({where} unknown; set n_seq_max in the config to batch)"
    try:
        req = fit.request_for(
            spec.path,
            n_ctx=n_ctx,
            n_gpu_layers=spec.n_gpu_layers if on_gpu else 0,
            llama_kwargs=spec.llama_kwargs,
        )
    except (ValueError, OSError) as exc:
        return 1, f"auto: 1 (no memory estimate: {exc})"
    n = fit.sequences_that_fit(
        req.shape,
        req.settings,
        free,
        device="GPU" if on_gpu else "RAM",
        n_gpu_layers=req.n_gpu_layers,
        most=AUTO_N_SEQ_MAX,
        share=AUTO_N_SEQ_SHARE,
    )
    return n, f"auto: {n} of at most {AUTO_N_SEQ_MAX} ({fit.gib(free)} {where} after the load)"


@dataclass(frozen=True)
class LoadSpec:
    """What to load and how: the resolved file, n_ctx inputs, offload, threads, template.

    ``n_seq_max``: sequences decoded together (each with ``context_length`` cells); None
    sizes it from the memory left after the load (:func:`auto_n_seq`).
    ``path_raw`` is the config's unexpanded ``model_path`` (for error messages);
    ``path_error`` is the reason the path could not be expanded, if any; ``fetch_hint``
    (``saiverse-llm fetch KEY``) and ``test_model`` (the ``llama-harness models fetch``
    target) are named in the "file not found" fix."""

    model_name: str
    path: Path
    path_raw: str
    context_length: int | None
    context_cap: int
    n_gpu_layers: int
    n_threads: int | None
    chat_format: str | None
    llama_kwargs: dict[str, Any] = field(default_factory=dict)
    config_source: Path | None = None
    test_model: str | None = None
    fetch_hint: str | None = None
    path_error: str | None = None
    n_seq_max: int | None = None

    def key(self) -> ModelKey:
        """The pool key: everything that changes what llama.cpp loads."""
        return ModelKey.for_file(
            self.path,
            n_ctx=self.context_length or 0,
            n_gpu_layers=self.n_gpu_layers,
            n_threads=self.n_threads,
            chat_format=self.chat_format,
            extra={
                "context_cap": self.context_cap,
                "n_seq_max": self.n_seq_max,
                **self.llama_kwargs,
            },
        )

    def _expansion_note(self) -> str:
        if self.path_raw == str(self.path):
            return ""
        return f" (model_path {self.path_raw!r} expanded to {self.path})"

    def _missing_error(self) -> ModelLoadError:
        where = f" in {self.config_source}" if self.config_source else ""
        offline = f"llama-harness models fetch {self.test_model}" if self.test_model else None
        if self.fetch_hint:
            fix = f"run `{self.fetch_hint}`" + (f" (offline: `{offline}`)" if offline else "")
        elif offline:
            fix = f"run `{offline}`"
        else:
            fix = (
                f"download the GGUF file to {self.path}, or fix model_path{where} "
                "(~ and $VARS are expanded; ${VAR:-default} works)"
            )
        return ModelLoadError(
            f"model file not found: {self.path}{self._expansion_note()}. Fix: {fix}",
            path=str(self.path),
        )

    def _resolve_n_ctx(self, summary: GGUFSummary) -> int:
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

    def load(self) -> LoadedModel:
        """Load the model (no pool: :meth:`ModelPool.get` calls this once per key)."""
        key = self.key()
        path = self.path
        if self.path_error is not None:
            raise ModelLoadError(self.path_error, path=self.path_raw)
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
        llama_cpp = llama_cpp_module()
        available = fit.available_memory(swap=True)
        check_host_memory(
            self,
            n_ctx=n_ctx,
            gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
            available=available[0] if available else None,
            source=available[1] if available else "",
        )
        kwargs: dict[str, Any] = {
            "model_path": str(path),
            "n_ctx": n_ctx,
            "n_gpu_layers": self.n_gpu_layers,
            "verbose": False,
            **self.llama_kwargs,
        }
        n_threads = self.n_threads if self.n_threads is not None else default_n_threads()
        kwargs.setdefault("n_threads", n_threads)
        kwargs.setdefault("n_threads_batch", kwargs["n_threads"])
        logger.info(
            "loading %s: path=%s n_ctx=%d n_gpu_layers=%d n_threads=%d (%s) chat_format=%s",
            self.model_name,
            path,
            n_ctx,
            self.n_gpu_layers,
            kwargs["n_threads"],
            "config" if self.n_threads is not None else "default: physical cores",
            self.chat_format,
        )
        started = time.perf_counter()
        with native_log.capture() as lines:
            try:
                llm = llama_cpp.Llama(**kwargs)
            except Exception as exc:
                raise load_error(self, exc, lines, n_ctx=n_ctx) from exc
        report = parse_load_log(lines)
        n_seq, n_seq_source, context_lines = self._n_seq(llm, n_ctx, report)
        elapsed = time.perf_counter() - started
        memory = parse_memory_log(lines)
        if context_lines:  # the context was made again for n_seq sequences: its buffers
            again = parse_memory_log(context_lines)
            memory.update({kind: mib for kind, mib in again.items() if kind != "model" and mib})
        report["memory_mib"] = memory
        if not report["n_layers_total"] and summary.block_count:
            report["n_layers_total"] = summary.block_count + 1
        report.update(
            {
                "model": self.model_name,
                "model_path": str(path),
                "n_ctx": usable_n_ctx(llm),
                "n_ctx_train": summary.context_length,
                "n_gpu_layers_requested": self.n_gpu_layers,
                "n_threads": int(kwargs["n_threads"]),
                "n_threads_batch": int(kwargs["n_threads_batch"]),
                "n_threads_source": (
                    "config" if self.n_threads is not None else "default (physical cores)"
                ),
                "gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
                "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace"),
                "llama_cpp_version": getattr(llama_cpp, "__version__", "?"),
                "load_seconds": round(elapsed, 3),
                "n_seq_max": n_seq,
                "n_seq_source": n_seq_source,
            }
        )
        try:
            template = resolve_template(llm, self.chat_format, summary.architecture)
        except Exception:
            llm.close()
            raise
        report["chat_template"] = template.name
        if self.n_gpu_layers != 0 and report["n_layers_offloaded"] == 0:
            offload_note(self.model_name, self.n_gpu_layers, report)
        logger.info(
            "loaded %s in %.2fs: backend=%s, %d/%d layers offloaded, n_ctx=%d per sequence, "
            "n_seq_max=%d (%s), template=%s",
            self.model_name,
            elapsed,
            report["backend"],
            report["n_layers_offloaded"],
            report["n_layers_total"],
            report["n_ctx"],
            n_seq,
            n_seq_source,
            template.name,
        )
        return LoadedModel(
            llm=llm,
            key=key,
            report=report,
            template=template,
            engine_settings=EngineSettings(n_seq=n_seq),
        )

    def _n_seq(self, llm: Any, n_ctx: int, report: dict[str, Any]) -> tuple[int, str, CapturedLog]:
        """Open the sequences the config asks for (or :func:`auto_n_seq` sizes); one when
        the larger context cannot be allocated (logged). Returns the count, where it came
        from and llama.cpp's log of the new context (empty when it was kept)."""
        if self.n_seq_max is not None:
            n_seq, source = self.n_seq_max, "config"
        else:
            n_seq, source = auto_n_seq(self, n_ctx, report)
        lines = CapturedLog()
        if n_seq <= 1:
            return 1, source, lines
        try:
            with native_log.capture() as lines:
                open_sequences(llm, n_seq)
        except Exception as exc:
            logger.warning(
                "%s: could not allocate %d sequences of %d tokens (%s%s); running one "
                "sequence. Fix: lower n_seq_max or context_length in the config (saiverse-llm "
                "fit plans it)",
                self.model_name,
                n_seq,
                n_ctx,
                exc,
                _native_detail(lines),
            )
            with native_log.capture() as lines:
                open_sequences(llm, 1)
            return 1, f"{source}: {n_seq} did not fit, 1", lines
        return n_seq, source, lines


# --- n_gpu_layers on a build or machine without a GPU ---------------------------------

_cpu_only_noted = threading.Event()


def offload_note(
    model_name: str,
    n_gpu_layers: int,
    report: dict[str, Any],
    gpus: tuple[str, ...] | None = None,
) -> tuple[int, str]:
    """Log why ``n_gpu_layers`` (not 0) offloaded nothing, and return (level, message).

    A CPU-only build on a machine with no GPU (``gpus``: :func:`saiverse_llm.devices.
    machine_gpus`, probed when None) is the right build: INFO, once per process, that
    n_gpu_layers is ignored (the embedded config asks for -1 so that GPU builds use the GPU).
    A CPU-only build where a GPU is present: WARNING, install a GPU build. A GPU build that
    offloaded nothing: WARNING."""
    total = report.get("n_layers_total")
    if report.get("gpu_offload_supported"):
        level, message = logging.WARNING, "no GPU device was used"
    else:
        if gpus is None:
            from saiverse_llm.devices import machine_gpus

            gpus = machine_gpus()
        if not gpus:
            message = (
                f"{model_name}: this llama_cpp build is CPU-only and this machine has no GPU: "
                f"n_gpu_layers={n_gpu_layers} is ignored and all {total} layers run on the CPU"
            )
            level = logging.DEBUG if _cpu_only_noted.is_set() else logging.INFO
            _cpu_only_noted.set()
            logger.log(level, "%s", message)
            return level, message
        level, message = (
            logging.WARNING,
            (
                "this llama_cpp build has no GPU offload (llama_supports_gpu_offload() is "
                f"False: a CPU-only build) but this machine has a GPU ({gpus[0]}). Fix: install "
                f"a GPU build into this Python (`llama-harness install cuda --python "
                f"{sys.executable}`, or metal/vulkan), or set n_gpu_layers 0 to run on the CPU on "
                "purpose; `llama-harness doctor` says why"
            ),
        )
    message = (
        f"{model_name}: n_gpu_layers={n_gpu_layers} requested but 0/{total} layers were "
        f"offloaded: {message}"
    )
    logger.log(level, "%s", message)
    return level, message


# --- threads ---------------------------------------------------------------------------


def default_n_threads() -> int:
    """Threads for a model whose config sets no ``n_threads``: the physical cores this
    process may run on, as llama.cpp's own tools choose (``cpu_get_num_math``); hyper-
    threads share a core's vector units and slow token generation down. Linux reads the
    core siblings of each allowed CPU from sysfs; elsewhere llama.cpp's fallback is used
    (logical CPUs, halved above 4). llama-cpp-python's own default is ``cpu_count // 2``
    (1 thread on 2 cores)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores: set[str] = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topology / "thread_siblings_list").read_text().strip())
        except OSError:
            cores.clear()
            break
    if cores:
        return len(cores)
    n = len(cpus) or os.cpu_count() or 4
    return n if n <= 4 else n // 2


# --- load failures ---------------------------------------------------------------------

_ALLOC_SIZE_RE = re.compile(r"(?:failed to allocate|allocate) \w*\s*buffer of size (\d+)")
_ALLOC_MIB_RE = re.compile(r"allocating ([\d.]+) MiB on device (\d+)")
#: llama.cpp's words for running out of memory; ``std::bad_alloc`` is a host allocation of
#: its own (e.g. the KV cache's per-cell state, sized by n_ctx) that failed.
_MEMORY_RE = re.compile(
    r"failed to allocate|out of memory|ErrorOutOfDeviceMemory|unable to allocate|"
    r"cannot allocate|insufficient memory|std::bad_alloc",
    re.IGNORECASE,
)
#: Lines of llama.cpp's load log kept in a load error (the last ones, in order).
MAX_NATIVE_LINES = 8


class ModelMemoryError(ModelLoadError):
    """Loading ran out of memory (host RAM or GPU memory), or would have
    (:func:`check_host_memory` refused it before llama.cpp was called). ``requested_bytes``
    is the allocation that failed (None when llama.cpp did not say) or the system memory the
    load needs, ``what`` what it was for; ``available_bytes`` is what the machine had
    (:func:`saiverse_llm.fit.available_memory` with swap) when the load was refused
    beforehand, else None."""

    def __init__(
        self,
        message: str,
        *,
        path: str,
        requested_bytes: int | None,
        what: str,
        n_ctx: int,
        n_gpu_layers: int,
        available_bytes: int | None = None,
    ) -> None:
        super().__init__(message, path=path)
        self.requested_bytes = requested_bytes
        self.available_bytes = available_bytes
        self.what = what
        self.n_ctx = n_ctx
        self.n_gpu_layers = n_gpu_layers


def _native_detail(lines: CapturedLog) -> str:
    said = list(dict.fromkeys(lines.problems))[-MAX_NATIVE_LINES:]
    return f"; llama.cpp said: {' | '.join(s[:300] for s in said)}" if said else ""


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"  # pragma: no cover - the loop always returns


def load_error(
    spec: LoadSpec, exc: BaseException, lines: CapturedLog, *, n_ctx: int
) -> ModelLoadError:
    """The error for a failed ``Llama(...)``: :func:`memory_error` when llama.cpp ran out
    of memory, else the file/architecture error, with llama.cpp's own warning and error
    lines (the line that explains it, e.g. "tensor 'output.weight' has offset ...")."""
    if any(_MEMORY_RE.search(line) for line in lines.problems):
        return memory_error(spec, lines, n_ctx=n_ctx)
    return ModelLoadError(
        f"llama.cpp could not load {spec.path}{spec._expansion_note()}: {exc}"
        f"{_native_detail(lines)}. Fix: check that the file is a complete GGUF for an "
        "architecture this llama-cpp-python build supports (see saiverse_log.txt)",
        path=str(spec.path),
    )


def _memory_plan(spec: LoadSpec, *, n_ctx: int, on_device: bool) -> str:
    """saiverse-llm fit's advice for this load: planned against the free system memory when
    the model runs on the CPU (n_gpu_layers=0, or a build without GPU offload), else what it
    needs and what each remedy changes (the free VRAM is not known here)."""
    try:
        gpu = on_device or bool(llama_cpp_module().llama_supports_gpu_offload())
    except (ModelLoadError, AttributeError):
        gpu = on_device
    return fit.advice(
        spec.path,
        n_ctx=n_ctx,
        n_gpu_layers=spec.n_gpu_layers if gpu else 0,
        llama_kwargs=spec.llama_kwargs,
    )


def _memory_fixes(spec: LoadSpec, *, n_ctx: int, weights_first: bool = False) -> str:
    """The guide's remedies for a memory error, joined with "; or "."""
    where = f" in {spec.config_source}" if spec.config_source else ""
    fixes = [f"lower context_length{where} (now {n_ctx}; the KV cache grows with it, e.g. 4096)"]
    if spec.n_gpu_layers != 0:
        fixes.append(
            f"lower n_gpu_layers (now {spec.n_gpu_layers}) so that some layers stay in system "
            "RAM when the GPU is full"
        )
    fixes.append("use a smaller quantization of the model (e.g. Q4_K_M instead of Q8_0)")
    if weights_first:
        fixes.reverse()
    return "; or ".join(fixes)


#: ``SAIVERSE_LLM_MEMORY_GUARD=0`` turns :func:`check_host_memory` off (load anyway).
MEMORY_GUARD_ENV = "SAIVERSE_LLM_MEMORY_GUARD"
#: A load is refused only when its system-memory estimate exceeds what the machine can give
#: by this factor: only clearly impossible loads are refused, never one the estimate
#: (within a few percent of llama.cpp's own figures, tests/unit/test_fit.py) might fit.
MEMORY_GUARD_SLACK = 1.25


def host_load_bytes(spec: LoadSpec, *, n_ctx: int, gpu_offload: bool) -> dict[str, int] | None:
    """The anonymous system memory a load of ``spec`` at ``n_ctx`` allocates, from
    :mod:`saiverse_llm.fit`: the KV cache and compute buffer kept on the CPU (all of them
    for a CPU load: ``n_gpu_layers`` 0 or a build without GPU offload), the CPU repack and
    the output buffer; the weights only with ``use_mmap=False`` (mmapped weights are
    file-backed pages the kernel can drop). Keys: ``host_bytes`` and ``weights_bytes``
    (what of it is weights). None when fit cannot estimate the file."""
    ngl = spec.n_gpu_layers if gpu_offload else 0
    try:
        req = fit.request_for(
            spec.path,
            n_ctx=n_ctx,
            n_seq=spec.n_seq_max,
            n_gpu_layers=ngl,
            llama_kwargs=spec.llama_kwargs,
        )
    except (ValueError, OSError) as exc:  # GGUFError, FitError
        logger.debug("%s: no memory estimate before the load: %s", spec.model_name, exc)
        return None
    split = fit.estimate(req.shape, req.settings).split(ngl)
    mmapped = bool(spec.llama_kwargs.get("use_mmap", True))
    weights = 0 if mmapped else split.host_weights
    return {"host_bytes": split.host_bytes - split.host_weights + weights, "weights_bytes": weights}


def check_host_memory(
    spec: LoadSpec,
    *,
    n_ctx: int,
    gpu_offload: bool,
    available: int | None,
    source: str = "MemAvailable + SwapFree",
) -> None:
    """Refuse a load whose system memory (:func:`host_load_bytes`) is more than
    :data:`MEMORY_GUARD_SLACK` times ``available`` (:func:`saiverse_llm.fit.available_memory`
    with swap: MemAvailable + SwapFree, or the room under the container's cgroup memory
    limit when smaller; ``source`` says which, for the message; None: not Linux, no check) BEFORE
    llama.cpp is called: llama.cpp writes its per-cell KV state (~48 bytes per cell) before
    any buffer fails, and the kernel's OOM killer ends the process (or another one).
    ``SAIVERSE_LLM_MEMORY_GUARD=0`` turns the check off. Raises :class:`ModelMemoryError`
    naming the bytes needed, the bytes available and what to change."""
    if available is None or os.environ.get(MEMORY_GUARD_ENV, "").strip() == "0":
        return
    need = host_load_bytes(spec, n_ctx=n_ctx, gpu_offload=gpu_offload)
    if need is None or need["host_bytes"] <= available * MEMORY_GUARD_SLACK:
        return
    requested = need["host_bytes"]
    on_cpu = not gpu_offload or spec.n_gpu_layers == 0
    what = "the KV cache and compute buffers" + (" (and weights)" if need["weights_bytes"] else "")
    plan = fit.advice(
        spec.path,
        n_ctx=n_ctx,
        n_gpu_layers=0 if on_cpu else spec.n_gpu_layers,
        llama_kwargs=spec.llama_kwargs,
        memory_bytes=available if on_cpu else None,
        device="RAM" if on_cpu else None,
    )
    raise ModelMemoryError(
        f"not enough memory to load {spec.model_name} ({spec.path}): {what} at n_ctx={n_ctx} "
        f"(n_gpu_layers={spec.n_gpu_layers}{'' if gpu_offload else ', a CPU-only build'}) "
        f"need {_size(requested)} ({requested:,} bytes) of system memory, and this machine "
        f"has {_size(available)} ({available:,} bytes) available ({source}); "
        "the load was refused before llama.cpp was called. Fix: "
        + _memory_fixes(spec, n_ctx=n_ctx)
        + f" (or set {MEMORY_GUARD_ENV}=0 to try anyway). Memory plan: "
        + plan,
        path=str(spec.path),
        requested_bytes=requested,
        what=what,
        n_ctx=n_ctx,
        n_gpu_layers=spec.n_gpu_layers,
        available_bytes=available,
    )


def memory_error(spec: LoadSpec, lines: CapturedLog, *, n_ctx: int) -> ModelMemoryError:
    """Loading ran out of memory: say so, how much was asked for and for what, and what to
    change (the guide's steps for memory errors: context_length, n_gpu_layers, a smaller
    quantization). The one place this message is made; memory planning (``saiverse-llm
    fit``) adds its estimate here."""
    problems = lines.problems
    requested: int | None = None
    device = ""
    for line in problems:
        if m := _ALLOC_SIZE_RE.search(line):
            requested = int(m.group(1))
        elif m := _ALLOC_MIB_RE.search(line):
            requested = int(float(m.group(1)) * 1024 * 1024)
            device = f" on device {m.group(2)}"
    text = " ".join(problems).lower()
    if "kv cache" in text or "kv_cache" in text:
        what = "the KV cache"
    elif "compute" in text:
        what = "the compute buffers"
    elif "model buffer" in text or "load_tensors" in text or "weights" in text:
        what = "the model weights"
    elif "bad_alloc" in text and "context" in text:
        what = "the context (its KV cache state grows with context_length)"
    else:
        what = "a buffer"
    asked = f" {_size(requested)}" if requested is not None else " memory"
    return ModelMemoryError(
        f"not enough memory to load {spec.model_name} ({spec.path}): llama.cpp could not "
        f"allocate{asked} for {what}{device} (n_ctx={n_ctx}, n_gpu_layers={spec.n_gpu_layers})"
        f"{_native_detail(lines)}. Fix: "
        + _memory_fixes(spec, n_ctx=n_ctx, weights_first=what == "the model weights")
        + ". Memory plan: "
        + _memory_plan(spec, n_ctx=n_ctx, on_device=bool(device)),
        path=str(spec.path),
        requested_bytes=requested,
        what=what,
        n_ctx=n_ctx,
        n_gpu_layers=spec.n_gpu_layers,
    )
