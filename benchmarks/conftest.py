"""Fixtures of the throughput benchmarks (``nox -s bench-<variant>``); helpers in benchlib.

Environment (set by ``nox -s bench-<variant>``): LLAMA_HARNESS_VARIANT, LLAMA_HARNESS_N_GPU_LAYERS
(default 0; -1 for GPU variants), LLAMA_HARNESS_REQUIRE_GPU=1 (fail, not skip, without GPU
offload; adds the ~1 GB "synth-1b" model), LLAMA_HARNESS_MODELS (default "tiny,gemma-3-270m"),
LLAMA_HARNESS_BENCH_SET (``full``, the default, or ``reduced``: tiny model only, streams of at
most 512 tokens; the session picks ``reduced`` on a software device such as llvmpipe, see
benchlib.bench_set),
LLAMA_HARNESS_BUILD_KEY or LLAMA_HARNESS_BUILD_JSON (the wheel's build.json),
LLAMA_HARNESS_PEAK_BW_GBPS, LLAMA_HARNESS_BENCH_ROUNDS and the BenchSettings variables
(LLAMA_HARNESS_N_THREADS, _N_BATCH, _N_PROMPT, _N_GEN); LLAMA_HARNESS_ISOLATE=1
(``nox -s bench-<variant> -- --isolate``: own scheduler group, wait for a quiet machine before
each test, at most LLAMA_HARNESS_ISOLATE_WAIT seconds, default 120).

Every result records what else ran meanwhile (``load``: cores other work kept busy during
the test, from /proc/stat, plus the load average; harness.bench.machine_load); the report flags
every row measured while other work competed for the benchmark's cores.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from benchlib import (
    GPU_MODEL,
    BenchEnv,
    BenchModel,
    BenchSetError,
    bench_set,
    build_key,
    model_names,
    nvidia_smi,
    synth_gpu_model,
    vulkan_device,
    weight_bytes_per_token,
)

from harness.bench import machine_load
from harness.bench.llama_bench import BenchSettings
from harness.bench.report import runner_info

# --- reuse the shared model fixtures of tests/conftest.py (tiny_gguf, gemma_gguf) -----------
_spec = importlib.util.spec_from_file_location(
    "_shared_test_fixtures", Path(__file__).resolve().parent.parent / "tests" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)
tiny_gguf = _shared.tiny_gguf
gemma_gguf = _shared.gemma_gguf


# --- rounds: pytest-benchmark pedantic (rounds, warm-up rounds) per kind of benchmark --------
# llama-bench itself uses 5 repetitions after one warm-up run; 10 rounds + 1 warm-up here.
# Measured tg128 coefficient of variation on this machine (2 cores "Intel(R) Xeon(R)
# Processor", cpu build, 2 threads), Nov 2026:
#   gemma-3-270m: 1.1 % (idle machine), 3.5 % (two of ten rounds hit by another job: 40 vs
#                 44 t/s), 22-24 % while other jobs kept the load average at 2-3;
#   tiny (12 ms per round): 1.8-9.5 % idle.
#   H100 host, cuda build, synth-1b: 2.4 %; tiny 0.7 %.
# The spread is set by competing work, not by the round count (more rounds do not shrink a
# stddev), so every result records the load average and the report flags busy runs.
# LLAMA_HARNESS_BENCH_ROUNDS=N overrides every count (N rounds, 1 warm-up).
ROUNDS: dict[str, tuple[int, int]] = {
    "pp": (10, 1),
    "tg": (10, 1),
    "load_cold": (5, 1),
    "load_warm": (20, 2),
    "stream": (5, 1),
    "stream_len": (3, 1),  # test_streaming: 128/512/2,048 tokens per round
    "batch": (3, 1),  # test_batching: llama-batched-bench + B = 1, 2, 4, 8 streams per round
    "chat": (5, 1),
}


@pytest.fixture(scope="session")
def rounds() -> Callable[[str], tuple[int, int]]:
    """``rounds(kind) -> (rounds, warmup_rounds)``."""
    raw = os.environ.get("LLAMA_HARNESS_BENCH_ROUNDS", "").strip()
    override: int | None = None
    if raw:
        try:
            override = max(1, int(raw))
        except ValueError:
            pytest.fail(f"$LLAMA_HARNESS_BENCH_ROUNDS={raw!r} is not an integer; fix: e.g. 2")

    def get(kind: str) -> tuple[int, int]:
        return (override, 1) if override is not None else ROUNDS[kind]

    return get


def pytest_configure(config: pytest.Config) -> None:
    try:
        bench_set()
    except BenchSetError as exc:
        raise pytest.UsageError(str(exc)) from exc


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model_name" in metafunc.fixturenames:
        metafunc.parametrize("model_name", model_names(), scope="session")


@pytest.fixture(scope="session")
def bench_env() -> BenchEnv:
    pytest.importorskip("llama_cpp", reason="the benchmarks need a llama-cpp-python build")
    from harness.build.buildinfo import collect_build_info

    info = collect_build_info()
    key, meta = build_key()
    raw_ngl = os.environ.get("LLAMA_HARNESS_N_GPU_LAYERS", "").strip() or "0"
    try:
        ngl = int(raw_ngl)
    except ValueError:
        pytest.fail(f"$LLAMA_HARNESS_N_GPU_LAYERS={raw_ngl!r} is not an integer; fix: -1, 0 or N")
    require_gpu = os.environ.get("LLAMA_HARNESS_REQUIRE_GPU") == "1"
    if require_gpu and not info.gpu_offload:
        pytest.fail(
            "LLAMA_HARNESS_REQUIRE_GPU=1 but llama_supports_gpu_offload() is False: this "
            f"llama_cpp ({info.package_dir}) has backends {sorted(info.compiled_backends)}; "
            "fix: run `llama-harness doctor` for the cause"
        )
    return BenchEnv(
        variant=os.environ.get("LLAMA_HARNESS_VARIANT", "local"),
        n_gpu_layers=ngl,
        require_gpu=require_gpu,
        build_key=key,
        cmake_args=(meta or {}).get("cmake_args"),
        llama_cpp_version=str(info.llama_cpp_version),
        compiled_backends=sorted(info.compiled_backends),
        gpu_offload=bool(info.gpu_offload),
        devices=[f"{d.name} ({d.type})" for d in info.devices],
        gpu=nvidia_smi()
        or vulkan_device([d.description for d in info.devices if d.backend == "VULKAN"]),
    )


@pytest.fixture(scope="session")
def bench_model(request: pytest.FixtureRequest, model_name: str) -> BenchModel:
    from saiverse_llm.download import sha256_file

    if model_name == "tiny":
        path: Path = request.getfixturevalue("tiny_gguf")
    elif model_name == "gemma-3-270m":
        path = request.getfixturevalue("gemma_gguf")
    elif model_name == GPU_MODEL:
        path = synth_gpu_model()
    else:
        from harness.models.model_manifest import ensure_model

        path = ensure_model(model_name, offline=True)
    chat_format: str | None = None
    with contextlib.suppress(Exception):
        from harness.models.model_manifest import get_model

        chat_format = get_model(model_name).chat_format
    wbytes, n_layer = weight_bytes_per_token(path)
    return BenchModel(
        name=model_name,
        path=path,
        sha256=sha256_file(path),
        size=path.stat().st_size,
        chat_format=chat_format,
        n_layer=n_layer,
        weight_bytes_per_token=wbytes,
    )


@pytest.fixture(scope="session")
def settings() -> BenchSettings:
    return BenchSettings.from_env()


def _isolate_wait() -> float | None:
    """Seconds to wait for a quiet machine before each test (None: not isolating)."""
    if os.environ.get("LLAMA_HARNESS_ISOLATE", "").strip() not in ("1", "true", "yes"):
        return None
    raw = os.environ.get("LLAMA_HARNESS_ISOLATE_WAIT", "").strip()
    try:
        return float(raw) if raw else 120.0
    except ValueError:
        pytest.fail(f"$LLAMA_HARNESS_ISOLATE_WAIT={raw!r} is not a number; fix: seconds, e.g. 60")


@pytest.fixture(scope="session")
def isolation() -> str | None:
    """``--isolate``: this process gets its own scheduler group with a raised weight."""
    return machine_load.isolate() if _isolate_wait() is not None else None


@pytest.fixture(autouse=True)
def load_probe(isolation: str | None, settings: BenchSettings) -> machine_load.LoadProbe:
    """What else ran during this test (started after the wait for quiet, with --isolate)."""
    wait = _isolate_wait()
    if wait is not None:
        machine_load.wait_for_quiet(wait, n_threads=settings.n_threads)
    return machine_load.LoadProbe()


@pytest.fixture
def extra(
    benchmark: Any,
    bench_env: BenchEnv,
    settings: BenchSettings,
    load_probe: machine_load.LoadProbe,
    isolation: str | None,
) -> Callable[..., dict[str, Any]]:
    """Fill ``benchmark.extra_info`` with the provenance every result carries."""

    def fill(model: BenchModel, **more: Any) -> dict[str, Any]:
        info: dict[str, Any] = {
            "variant": bench_env.variant,
            "build_key": bench_env.build_key,
            "cmake_args": bench_env.cmake_args,
            "llama_cpp_version": bench_env.llama_cpp_version,
            "backend": bench_env.backend,
            "compiled_backends": bench_env.compiled_backends,
            "gpu_offload_supported": bench_env.gpu_offload,
            "devices": bench_env.devices,
            "gpu": bench_env.gpu,
            "n_gpu_layers": bench_env.n_gpu_layers,
            "n_threads": settings.n_threads,
            "n_batch": settings.n_batch,
            "n_ubatch": settings.n_ubatch,
            "flash_attn": settings.flash_attn,
            # "full" or "reduced" (a software device: tiny model, short streams; the report
            # says so in the row)
            "bench_set": bench_set(),
            # other work during the test (cores kept busy, load average): the report flags
            # results taken while it competed for the benchmark's cores
            "load": load_probe.stop().to_dict(),
            "isolation": isolation,
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "usable_cores": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else None,
            # the CI runner (GitHub-hosted VMs are shared and noisy: the report marks them)
            "runner": runner_info(),
            **model.extra(),
        }
        info.update(more)
        benchmark.extra_info.update(info)
        return info

    return fill
