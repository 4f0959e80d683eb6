"""n_gpu_layers reaches llama.cpp as given, and the client reports where layers really run.

GPU assertions run when the build and the machine support offload; with
LLAMA_HARNESS_REQUIRE_GPU=1 they must run and pass (a build without offload fails them)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

REQUIRE_GPU = os.environ.get("LLAMA_HARNESS_REQUIRE_GPU", "") == "1"
GPU_OK = bool(llama_cpp.llama_supports_gpu_offload())


def gpu_or_skip() -> None:
    if GPU_OK:
        return
    if REQUIRE_GPU:
        pytest.fail(
            "LLAMA_HARNESS_REQUIRE_GPU=1 but llama_supports_gpu_offload() is False: this build "
            f"has no usable GPU backend ({llama_cpp.llama_print_system_info().decode().strip()})"
        )
    pytest.skip("this llama_cpp build/machine has no GPU offload (llama_supports_gpu_offload())")


@pytest.mark.parametrize("requested", [0, 1, -1])
def test_n_gpu_layers_reaches_llama_cpp(
    make_client: Callable[..., Any], tiny: Path, fresh_pool: Any, requested: int, ours_only: None
) -> None:
    client = make_client(tiny, n_gpu_layers=requested, pool=fresh_pool)
    llm = client.llama
    expected = 0x7FFFFFFF if requested == -1 else requested  # llama-cpp-python's "all"
    assert llm.model_params.n_gpu_layers == expected
    report = client.load_report()
    assert report["n_gpu_layers_requested"] == requested


def test_load_report_describes_the_cpu_run(
    make_client: Callable[..., Any], tiny: Path, fresh_pool: Any, ours_only: None
) -> None:
    report = make_client(tiny, n_gpu_layers=0, pool=fresh_pool).load_report()
    assert report["n_layers_offloaded"] == 0
    assert report["n_layers_total"] == 3  # 2 blocks + output layer
    assert report["backend"] == "CPU"
    assert report["gpu_offload_supported"] == GPU_OK
    assert report["layer_devices"] == ["CPU"] * 3


def test_without_gpu_offload_a_warning_says_why(
    make_client: Callable[..., Any],
    tiny: Path,
    fresh_pool: Any,
    caplog: pytest.LogCaptureFixture,
    ours_only: None,
) -> None:
    """A CPU-only build: where the machine has a GPU, a WARNING says to install a GPU build;
    on a machine without one n_gpu_layers is ignored, said at INFO (once per process)."""
    from saiverse_llm import loading
    from saiverse_llm.devices import machine_gpus

    if GPU_OK:
        pytest.skip("this build offloads; the no-GPU warning does not apply")
    loading._cpu_only_noted.clear()
    with caplog.at_level(logging.INFO, logger="saiverse_llm"):
        report = make_client(tiny, n_gpu_layers=-1, pool=fresh_pool).load_report()
    assert report["n_layers_offloaded"] == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if machine_gpus():
        assert any("llama_supports_gpu_offload() is False" in w for w in warnings), warnings
    else:
        assert not [w for w in warnings if "offloaded" in w], warnings
        assert "is CPU-only and this machine has no GPU" in caplog.text


def test_all_layers_on_the_gpu(
    make_client: Callable[..., Any], tiny: Path, fresh_pool: Any, ours_only: None
) -> None:
    gpu_or_skip()
    client = make_client(tiny, n_gpu_layers=-1, pool=fresh_pool)
    report = client.load_report()
    assert report["n_layers_total"] > 0
    assert report["n_layers_offloaded"] == report["n_layers_total"], report
    assert report["backend"] != "CPU"
    assert client.generate([{"role": "user", "content": "hi"}], max_tokens=8, seed=1) is not None


def test_partial_offload(
    make_client: Callable[..., Any], tiny: Path, fresh_pool: Any, ours_only: None
) -> None:
    gpu_or_skip()
    report = make_client(tiny, n_gpu_layers=1, pool=fresh_pool).load_report()
    assert report["n_layers_offloaded"] == 1, report
