"""Helpers of the throughput benchmarks: settings, provenance, loading, timing, metrics.

What is measured, and how, mirrors llama.cpp's ``llama-bench`` (tools/llama-bench):

* pp<N>: one ``Llama.eval`` of N random tokens (BOS first when the vocab adds one) in
  batches of n_batch, on a fresh KV cache in a context of exactly N tokens, then
  ``llama_synchronize``; tokens/s = N / time per round, averaged (llama-bench's avg_ts).
* tg<N>: N single-token ``Llama.eval`` calls, each followed by ``llama_synchronize``, on a
  fresh KV cache in a context of N tokens.
* flash attention off, n_batch = n_ubatch = 512, ``swa_full=False``, an explicit n_threads
  (llama-bench's own defaults differ: ``-fa auto -b 2048 -t <physical cores>``).

Shapes come from :class:`harness.bench.llama_bench.BenchSettings`, so ``llama-harness llama-bench``
runs exactly the same test. ``llama_cpp`` is imported inside functions only: importing this
module never needs a build.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import paths
from harness.bench.llama_bench import BenchSettings

if TYPE_CHECKING:
    from saiverse_llm.client import LlamaCppClient

GPU_MODEL = "synth-1b"  # ~1 GB f16 synthesized model: tg as a fraction of memory bandwidth
DEFAULT_MODELS = "tiny,gemma-3-270m"

# Peak DRAM bandwidth in GB/s, matched in order against nvidia-smi's name (first hit wins).
PEAK_BANDWIDTH_GBPS: list[tuple[str, float]] = [
    ("GH200", 4000.0),
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM5, "NVIDIA H100 80GB HBM3"
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),  # 40 GB
    ("L40S", 864.0),
    ("L40", 864.0),
    ("L4", 300.0),
    ("A10G", 600.0),
    ("A10", 600.0),
    ("T4", 320.0),
    ("RTX 4090", 1008.0),
    ("RTX 3090", 936.0),
    ("V100", 900.0),
]


def peak_bandwidth_gbps(gpu_name: str | None) -> float | None:
    env = os.environ.get("LLAMA_HARNESS_PEAK_BW_GBPS", "").strip()
    if env:
        return float(env)
    if not gpu_name:
        return None
    for pattern, bw in PEAK_BANDWIDTH_GBPS:
        if pattern.lower() in gpu_name.lower():
            return bw
    return None


# --- environment and provenance ----------------------------------------------------------------


def nvidia_smi() -> dict[str, str] | None:
    """Name, driver and memory of the first GPU, or None (the report's own query)."""
    from harness.bench.report import gpu_info

    gpus = gpu_info()
    return gpus[0] if gpus else None


def vulkan_device(descriptions: list[str]) -> dict[str, str] | None:
    """The first Vulkan device ggml registered (its description), marked ``software: yes``
    for llvmpipe and other CPU implementations of Vulkan; None without one."""
    from harness.build.vulkan_devices import is_software_name

    if not descriptions:
        return None
    name = descriptions[0]
    return {"name": name, "driver": "Vulkan", "software": "yes" if is_software_name(name) else "no"}


def build_key() -> tuple[str | None, dict[str, Any] | None]:
    """(build key, build.json) from $LLAMA_HARNESS_BUILD_KEY and $LLAMA_HARNESS_BUILD_JSON or
    the build.json beside $LLAMA_HARNESS_WHEEL (the wheel cache keeps them together)."""
    key = os.environ.get("LLAMA_HARNESS_BUILD_KEY") or None
    meta: Any = None
    bj = os.environ.get("LLAMA_HARNESS_BUILD_JSON")
    wheel = os.environ.get("LLAMA_HARNESS_WHEEL")
    if not bj and wheel:
        bj = str(Path(wheel).parent / "build.json")
    if bj and Path(bj).is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            meta = json.loads(Path(bj).read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        meta = None
    if meta is not None and not key:
        key = str(meta.get("key") or meta.get("build_key") or "") or None
    return key, meta


@dataclass(frozen=True)
class BenchEnv:
    variant: str
    n_gpu_layers: int
    require_gpu: bool
    build_key: str | None
    cmake_args: Any
    llama_cpp_version: str
    compiled_backends: list[str]
    gpu_offload: bool
    devices: list[str]
    gpu: dict[str, str] | None

    @property
    def backend(self) -> str:
        """The backend the weights run on: a GPU backend only when it can really offload."""
        gpu = [b for b in self.compiled_backends if b not in ("CPU", "BLAS", "RPC")]
        if gpu and self.gpu_offload and self.n_gpu_layers != 0:
            return gpu[0]
        return "BLAS" if "BLAS" in self.compiled_backends else "CPU"


def model_names() -> list[str]:
    """The models of this run: $LLAMA_HARNESS_MODELS (default tiny and Gemma 3 270M), plus
    the ~1 GB GPU model with LLAMA_HARNESS_REQUIRE_GPU=1; the reduced set keeps only the
    models of :data:`REDUCED_MODELS` (and never adds the GPU model)."""
    raw = os.environ.get("LLAMA_HARNESS_MODELS", DEFAULT_MODELS)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if bench_set() == "reduced":
        return [n for n in names if n in REDUCED_MODELS] or list(REDUCED_MODELS)
    if os.environ.get("LLAMA_HARNESS_REQUIRE_GPU") == "1" and GPU_MODEL not in names:
        names.append(GPU_MODEL)
    return names


# --- benchmark sets ----------------------------------------------------------------------------
# "full" (the default) runs every benchmark. "reduced" is for a device too slow for the full
# set, a software device above all: Mesa's llvmpipe runs the Vulkan build on the CPU at
# ~46 tokens/s on the tiny model and ~1.5 on Gemma 3 270M, so the 2,048-token stream and the
# ~1 GB GPU model would take most of an hour. It runs the tiny model only and streams at most
# REDUCED_STREAM_LENGTHS tokens; every result records ``bench_set`` and the report says
# "reduced set" in the row. `nox -s bench-<variant>` selects it by itself when the variant's
# only device is a software one (harness.sessions.client_env); LLAMA_HARNESS_BENCH_SET=full
# or =reduced overrides that.
BENCH_SETS = ("full", "reduced")
REDUCED_MODELS = ("tiny",)
FULL_STREAM_LENGTHS = (128, 512, 2048)
REDUCED_STREAM_LENGTHS = (128, 512)


class BenchSetError(ValueError):
    """$LLAMA_HARNESS_BENCH_SET names no benchmark set."""


def bench_set() -> str:
    """``"full"`` or ``"reduced"``, from $LLAMA_HARNESS_BENCH_SET (default full).

    Raises BenchSetError for any other value (the message names the variable and the fix)."""
    raw = os.environ.get("LLAMA_HARNESS_BENCH_SET", "").strip().lower() or "full"
    if raw not in BENCH_SETS:
        raise BenchSetError(
            f"$LLAMA_HARNESS_BENCH_SET={raw!r} is not a benchmark set; fix: "
            f"{' or '.join(BENCH_SETS)}"
        )
    return raw


def stream_lengths() -> tuple[int, ...]:
    """Tokens per round of the streaming benchmark (test_streaming) in this benchmark set."""
    return REDUCED_STREAM_LENGTHS if bench_set() == "reduced" else FULL_STREAM_LENGTHS


# --- models ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchModel:
    name: str
    path: Path
    sha256: str
    size: int
    chat_format: str | None
    n_layer: int | None
    weight_bytes_per_token: int  # bytes of weights one decode step reads

    def extra(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "model_path": str(self.path),
            "model_sha256": self.sha256,
            "model_size": self.size,
            "weight_bytes_per_token": self.weight_bytes_per_token,
        }


def weight_bytes_per_token(path: Path) -> tuple[int, int | None]:
    """Bytes of weights one decode step reads: every tensor but the token embedding (a row
    lookup), unless the embedding doubles as the output matrix (no ``output.weight``)."""
    from saiverse_llm.gguf_file import read_gguf

    info = read_gguf(path)
    names = {t.name for t in info.tensors}
    total = sum(
        t.nbytes
        for t in info.tensors
        if not (t.name == "token_embd.weight" and "output.weight" in names)
    )
    return total, info.block_count


def synth_gpu_model() -> Path:
    """The ~1 GB bandwidth model (deterministic; written once into the model cache)."""
    from harness.models.synth import synthesize

    target = paths.models_dir() / "synth-1b-s0.gguf"
    if not target.is_file():
        synthesize(target, preset="1b", seed=0)
    return target


# --- loading with the load log captured -----------------------------------------------------


@dataclass
class Loaded:
    llm: Any
    load_s: float
    offloaded: str  # "X/Y" layers on a GPU, as llama.cpp's load log says
    buffers_mib: dict[str, float]


def open_llama(path: Path, *, n_ctx: int, s: BenchSettings, n_gpu_layers: int, **kw: Any) -> Loaded:
    """A ``Llama`` with the benchmark settings. llama.cpp's load log is captured through the
    client's process-wide log hook (one llama.cpp log callback per process) and parsed with
    the client's parser: layers really offloaded, weight buffer per device."""
    from saiverse_llm.native import llama_cpp_module, native_log, parse_load_log

    llama_cpp = llama_cpp_module()  # installs the log hook once
    t0 = time.perf_counter()
    with native_log.capture() as lines:
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=s.n_batch,
            n_ubatch=s.n_ubatch,
            n_threads=s.n_threads,
            n_threads_batch=s.n_threads,
            n_gpu_layers=n_gpu_layers,
            flash_attn=s.flash_attn,
            verbose=False,
            **kw,
        )
    load_s = time.perf_counter() - t0
    r = parse_load_log(lines)
    total = r["n_layers_total"] or "?"
    return Loaded(
        llm=llm,
        load_s=load_s,
        offloaded=f"{r['n_layers_offloaded']}/{total}",
        buffers_mib=dict(r["buffers_mib"]),
    )


# --- measuring -------------------------------------------------------------------------------


def perf(ctx: Any) -> dict[str, float]:
    """llama.cpp's own timers for the context (C side; call after a synchronize)."""
    import llama_cpp

    d = llama_cpp.llama_perf_context(ctx)
    return {
        "t_p_eval_ms": float(d.t_p_eval_ms),
        "t_eval_ms": float(d.t_eval_ms),
        "n_p_eval": int(d.n_p_eval),
        "n_eval": int(d.n_eval),
    }


def synchronize(ctx: Any) -> None:
    import llama_cpp

    llama_cpp.llama_synchronize(ctx)


def random_tokens(llm: Any, n: int, *, seed: int = 0) -> list[int]:
    """llama-bench's input: BOS first when the vocab adds one, then random token ids."""
    import llama_cpp

    rng = random.Random(seed)
    n_vocab = int(llm.n_vocab())
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    out = [rng.randrange(n_vocab) for _ in range(n)]
    if n and llama_cpp.llama_vocab_get_add_bos(vocab):
        out[0] = int(llama_cpp.llama_vocab_bos(vocab))
    return out


def clear_kv(llm: Any) -> None:
    """Fresh KV cache (like llama-bench's llama_memory_clear) and zeroed perf counters."""
    import llama_cpp

    mem = llama_cpp.llama_get_memory(llm.ctx)
    if mem is not None:
        llama_cpp.llama_memory_clear(mem, False)
    llm.reset()
    llama_cpp.llama_perf_context_reset(llm.ctx)


def new_conversation(target: Any) -> None:
    """Forget the previous prompts (the next completion evaluates its prompt in full) and
    zero the perf counters. ``target``: a client's loaded model (``client.load()``: its
    engine's cached prefixes are dropped too) or a bare ``Llama``."""
    import llama_cpp

    engine = getattr(target, "engine", None)
    llm = getattr(target, "llm", target)
    if engine is not None:
        engine.flush()
    llm.reset()
    llama_cpp.llama_perf_context_reset(llm.ctx)


def _bare_loop(
    model: Any, prompt: list[int], name: str, run: Callable[[Any, int], float]
) -> tuple[float, float]:
    """The frame of :func:`python_floor` and :func:`c_floor`: on the engine's scheduler
    thread (``Engine.run_exclusive``: the thread every decode runs on; a decode on another
    thread would give the process a second OpenMP team and slow every later decode, see
    ``saiverse_llm.engine._Scheduler``), sequence 0 of the model's own context is cleared,
    ``prompt`` decoded and llama.cpp's perf counters reset; then ``run(ctx, n_vocab)``
    decodes from there and returns its wall seconds; the sequence and counters are cleared
    again afterwards. Returns ``(ratio, c_rate)``: llama.cpp's eval seconds over those
    wall seconds (``llama_perf_context``, as ``stream<n>_ratio`` measures the client), and
    the C-side eval rate in t/s. ``name`` prefixes the errors."""
    import llama_cpp

    def loop(llm: Any) -> tuple[float, float]:
        ctx = llm.ctx
        mem = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_seq_rm(mem, 0, -1, -1)
        llm.reset()
        try:
            ids = (llama_cpp.llama_token * len(prompt))(*prompt)
            if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(ids, len(prompt))):
                raise RuntimeError(f"{name}: the prompt did not decode")
            llama_cpp.llama_synchronize(ctx)
            llama_cpp.llama_perf_context_reset(ctx)
            wall = run(ctx, int(llm.n_vocab()))
            p = llama_cpp.llama_perf_context(ctx)
        finally:
            llama_cpp.llama_memory_seq_rm(mem, 0, -1, -1)
            llm.reset()
            llama_cpp.llama_perf_context_reset(ctx)
        t_eval = float(p.t_eval_ms) / 1000.0
        return t_eval / wall, int(p.n_eval) / t_eval

    result: tuple[float, float] = model.engine.run_exclusive(loop)
    return result


def python_floor(model: Any, prompt: list[int], n_gen: int) -> tuple[float, float]:
    """The fastest stream a Python caller can drive on ``model`` (a client's loaded model):
    a bare loop of one-token ``llama_decode`` calls and a numpy argmax of the logits,
    nothing else (no sampler object, no text, no second thread), for ``n_gen`` tokens
    after ``prompt`` on the model's own context (sequence 0), run as :func:`_bare_loop`
    says.

    Returns ``(ratio, c_rate)`` (:func:`_bare_loop`). The ratio is the ceiling of a stream
    whose every token passes through Python, on this model, machine and load: on a model
    that decodes a token in ~0.1 ms, a ctypes call and an argmax are already a few percent
    of it (the client's greedy steady state decodes in C, ``saiverse_llm.native_loop``,
    and can pass it)."""
    import ctypes

    import llama_cpp
    import numpy as np

    from saiverse_llm.sampling import logits_function

    def run(ctx: Any, n_vocab: int) -> float:
        logits_at = logits_function()
        decode = llama_cpp.llama_decode
        one = (llama_cpp.llama_token * 1)()
        batch = llama_cpp.llama_batch_get_one(one, 1)
        views: dict[int, Any] = {}
        t0 = time.perf_counter()
        for _ in range(n_gen):
            address = logits_at(ctx, -1)
            view = views.get(address)
            if view is None:
                view = np.ctypeslib.as_array((ctypes.c_float * n_vocab).from_address(address))
                views[address] = view
            one[0] = int(view.argmax())
            if decode(ctx, batch):
                raise RuntimeError("python_floor: a decode failed")
        llama_cpp.llama_synchronize(ctx)
        return time.perf_counter() - t0

    return _bare_loop(model, prompt, "python_floor", run)


def c_floor(model: Any, prompt: list[int], n_gen: int) -> tuple[float, float] | None:
    """The fastest stream any caller can drive on ``model`` (a client's loaded model) with
    this build: one call of the engine's own compiled loop
    (:meth:`saiverse_llm.native_loop.NativeLoop.steps`: one-token ``llama_decode``,
    ``llama_get_logits`` and an argmax per step, nothing else: no text, no second thread)
    for ``n_gen`` tokens after ``prompt`` on the model's own context (sequence 0), run as
    :func:`_bare_loop` says.

    Returns ``(ratio, c_rate)`` (:func:`_bare_loop`), or None when the compiled loop is off
    or could not be built here (``saiverse_llm.native_loop.why_not``). The ratio is the
    ceiling of ``stream<n>_ratio`` for the client's greedy steady state on this model,
    machine and load: what llama.cpp's eval timer leaves out of every ``llama_decode``
    (the batch's checks before ``t_compute_start_us``) and the argmax."""
    import ctypes

    import llama_cpp
    import numpy as np

    from saiverse_llm import native_loop

    compiled = native_loop.get(wait=True)
    if compiled is None:
        return None

    def run(ctx: Any, n_vocab: int) -> float:
        batch = llama_cpp.llama_batch_init(1, 0, 1)
        try:
            first = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), (n_vocab,))
            batch.n_tokens = 1
            batch.token[0] = int(first.argmax())
            batch.pos[0] = len(prompt)
            batch.n_seq_id[0] = 1
            batch.seq_id[0][0] = 0
            batch.logits[0] = 1
            no_eog = np.zeros(n_vocab, dtype=np.uint8)  # decode exactly n_gen steps
            ignore = np.ones(1, dtype=np.uint8)
            out = (ctypes.c_int32 * n_gen)()
            knock, steps = ctypes.c_int32(0), ctypes.c_int64(0)
            t0 = time.perf_counter()
            done, rc, _ = compiled.steps(
                ctx, batch, 1, n_vocab, n_gen, no_eog, ignore, knock, 0, out, steps
            )
            wall = time.perf_counter() - t0
        finally:
            llama_cpp.llama_batch_free(batch)
        if rc or done != n_gen:
            raise RuntimeError(f"c_floor: the loop stopped after {done} steps (rc {rc})")
        return wall

    return _bare_loop(model, prompt, "c_floor", run)


def mean_std(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(xs) / n
    if n < 2:
        return mean, 0.0
    return mean, (sum((x - mean) ** 2 for x in xs) / (n - 1)) ** 0.5


def throughput_metric(n_tokens: int, samples_s: list[float]) -> dict[str, Any]:
    """llama-bench's avg_ts / stddev_ts: mean and sample stddev of n / t per repetition."""
    ts = [n_tokens / t for t in samples_s if t > 0]
    avg, std = mean_std(ts)
    return {
        "value": avg,
        "stddev": std,
        "unit": "t/s",
        "higher_is_better": True,
        "rounds": len(ts),
        "samples": ts,
    }


def latency_metric(samples_s: list[float]) -> dict[str, Any]:
    avg, std = mean_std(samples_s)
    return {
        "value": avg,
        "stddev": std,
        "unit": "s",
        "higher_is_better": False,
        "rounds": len(samples_s),
        "samples": samples_s,
    }


def percent_metric(values: list[float]) -> dict[str, Any]:
    avg, std = mean_std(values)
    return {
        "value": avg,
        "stddev": std,
        "unit": "%",
        "higher_is_better": True,
        "rounds": len(values),
    }


class Recorder:
    """Per-round wall times taken inside a pytest-benchmark target, warm-up rounds dropped."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self._samples: list[float] = []
        self._perf: list[dict[str, float]] = []

    def add(self, seconds: float, perf_data: dict[str, float] | None = None) -> None:
        self._samples.append(seconds)
        if perf_data is not None:
            self._perf.append(perf_data)

    def _measured(self, xs: list[Any]) -> list[Any]:
        # --benchmark-disable runs the target once, without warm-up: keep that sample
        return xs[self.warmup :] if len(xs) > self.warmup else xs

    @property
    def samples(self) -> list[float]:
        return self._measured(self._samples)

    def perf_summary(self) -> dict[str, float]:
        data = self._measured(self._perf)
        if not data:
            return {}
        return {k: sum(p[k] for p in data) / len(data) for k in data[0]}


def bench_client(
    model: BenchModel,
    settings: BenchSettings,
    env: BenchEnv,
    *,
    pool: Any,
    context_length: int,
    **extra: Any,
) -> LlamaCppClient:
    """A :class:`~saiverse_llm.client.LlamaCppClient` of ``model`` with the run's settings
    (threads, n_batch, n_ubatch, flash attention, n_gpu_layers) on ``pool`` (a
    :class:`~saiverse_llm.pool.ModelPool`), not loaded yet. ``extra``: more client
    arguments (e.g. ``n_seq_max``, ``parameters``). The one place the benchmarks build a
    client, so every benchmark runs the settings its report states."""
    from saiverse_llm.client import LlamaCppClient

    return LlamaCppClient(
        str(model.path),
        context_length=context_length,
        n_gpu_layers=env.n_gpu_layers,
        fallback_on_error=False,
        model=model.name,
        chat_format=model.chat_format,
        n_threads=settings.n_threads,
        pool=pool,
        n_batch=settings.n_batch,
        n_ubatch=settings.n_ubatch,
        flash_attn=settings.flash_attn,
        **extra,
    )


@contextlib.contextmanager
def loaded_client(
    model: BenchModel, settings: BenchSettings, env: BenchEnv, *, context_length: int, **extra: Any
) -> Iterator[LlamaCppClient]:
    """:func:`bench_client`, loaded, in a pool of its own, unloaded afterwards."""
    from saiverse_llm.pool import ModelPool

    pool: ModelPool[Any] = ModelPool(max_models=1)
    client = bench_client(model, settings, env, pool=pool, context_length=context_length, **extra)
    client.load()
    try:
        yield client
    finally:
        pool.unload_all()


def rate_metric(values: list[float], unit: str) -> dict[str, Any]:
    """A throughput metric for the report (higher is better): the mean of ``values`` (one
    per round, in ``unit``, e.g. "t/s"), its standard deviation and the samples."""
    avg, std = mean_std(values)
    return {
        "value": avg,
        "stddev": std,
        "unit": unit,
        "higher_is_better": True,
        "rounds": len(values),
        "samples": values,
    }
