"""saiverse-llm fit against llama.cpp's own planner, ``llama-fit-params --fit-print``.

The tool comes from the cached cpu wheel's build tree (``harness.build.native_tools``: built once
per variant, beside the wheel). It sizes every buffer of a load without allocating
(``no_alloc``), so it also runs on the seed models' header-only GGUFs (real shapes, no
weights). It is run with the client's settings spelled out: ``-b 512 -ub 512 -fa off
--swa-full`` (llama-fit-params defaults to 2048, auto flash attention and a windowed SWA
cache). Its host "model" figure leaves out the CPU_REPACK buffer; so does the comparison.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness import sessions
from harness.bench import fit_table
from harness.build import native_tools
from harness.models import seed_models
from saiverse_llm import fit

MIB = fit.MIB


@pytest.fixture(scope="module")
def fit_params() -> native_tools.NativeTools:
    if sessions.cached_wheel("cpu") is None:
        pytest.skip("no cached cpu wheel: run `nox -s test-cpu` first (llama-fit-params is "
                    "built in its tree)")  # fmt: skip
    try:
        return native_tools.ensure("cpu", ["llama-fit-params"])
    except native_tools.NativeToolsError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"llama-fit-params could not be built: {exc}")


def run_fit_params(tools: native_tools.NativeTools, path: Path, n_ctx: int) -> tuple[int, ...]:
    """Host model, context (KV) and compute MiB that llama-fit-params prints."""
    args = ["-m", str(path), "-c", str(n_ctx), "-b", "512", "-ub", "512", "-fa", "off"]
    args += ["--swa-full", "-ngl", "0", "-fitp", "on"]
    proc = subprocess.run(
        tools.command("llama-fit-params", *args),
        env=tools.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    host = next(line for line in proc.stdout.splitlines() if line.startswith("Host "))
    return tuple(int(v) for v in host.split()[1:4])


CASES = [
    ("llama-3-8b-instruct-q8", 8192),
    ("llama-3-8b-instruct-q4", 32768),
    ("qwen2.5-7b-instruct-q8", 32768),
    ("gemma-2-9b-instruct-q8", 8192),
]


@pytest.mark.parametrize(("key", "n_ctx"), CASES)
def test_seed_shapes(fit_params: native_tools.NativeTools, key: str, n_ctx: int) -> None:
    path = seed_models.ensure_all(fit_table.seed_dir())[key]
    model, kv, compute = run_fit_params(fit_params, path, n_ctx)
    e = fit.estimate(fit.read_shape(path), fit.LoadSettings(n_ctx=n_ctx))
    ours_model = (e.weights_bytes - e.repack_bytes) / MIB
    ours = ours_model + (e.kv_cache_bytes + e.compute_bytes) / MIB
    theirs = model + kv + compute
    assert abs(ours_model - model) <= 1
    assert abs(100 * (ours - theirs) / theirs) < 5


def test_gemma(fit_params: native_tools.NativeTools, gemma_gguf: Path) -> None:
    model, kv, compute = run_fit_params(fit_params, gemma_gguf, 32768)
    e = fit.estimate(fit.read_shape(gemma_gguf), fit.LoadSettings(n_ctx=32768))
    ours = (e.weights_bytes - e.repack_bytes + e.kv_cache_bytes + e.compute_bytes) / MIB
    assert kv == e.kv_cache_bytes // MIB
    assert abs(100 * (ours - (model + kv + compute)) / (model + kv + compute)) < 5
