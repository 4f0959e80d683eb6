"""n_gpu_layers on a CPU-only build: a WARNING to install the cuda variant only where a GPU
is present; on a machine with no GPU, once at INFO that n_gpu_layers is ignored (the
README's cpu path printed the cuda advice on every `check` and `chat`)."""

from __future__ import annotations

import logging

import pytest

from saiverse_llm import loading

CPU_BUILD = {"gpu_offload_supported": False, "n_layers_total": 19}


@pytest.fixture(autouse=True)
def _fresh_once() -> None:
    loading._cpu_only_noted.clear()


def test_no_gpu_and_a_cpu_build_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="saiverse_llm")
    level, message = loading.offload_note("gemma-3-270m", -1, CPU_BUILD, gpus=())
    assert level == logging.INFO
    assert "CPU-only" in message and "n_gpu_layers=-1 is ignored" in message
    assert "install" not in message
    again, _ = loading.offload_note("gemma-3-270m", -1, CPU_BUILD, gpus=())
    assert again == logging.DEBUG  # once per process
    levels = [r.levelno for r in caplog.records if "CPU-only" in r.getMessage()]
    assert levels == [logging.INFO, logging.DEBUG]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_gpu_and_a_cpu_build_still_warns_to_install_a_gpu_build(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpu = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)",)
    level, message = loading.offload_note("gemma-3-270m", -1, CPU_BUILD, gpus=gpu)
    assert level == logging.WARNING
    assert "llama-harness install cuda" in message and "NVIDIA H100" in message
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_a_gpu_build_that_offloaded_nothing_warns() -> None:
    report = {"gpu_offload_supported": True, "n_layers_total": 19}
    level, message = loading.offload_note("m", 99, report, gpus=())
    assert level == logging.WARNING and "no GPU device was used" in message
