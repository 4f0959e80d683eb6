"""Client logic that needs no llama_cpp: the retry policy and the load-log parser."""

from __future__ import annotations

import pytest

from saiverse_llm.errors import (
    ContextOverflowError,
    RetryDivergedError,
    TransientError,
    is_transient,
)
from saiverse_llm.generation import unseen
from saiverse_llm.native import parse_load_log
from saiverse_llm.pool import ModelLoadError
from saiverse_llm.tools import ToolCallError


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RuntimeError("llama_decode returned 1"), False),  # no KV slot: the cache is full
        (RuntimeError("llama_decode returned -1"), False),  # invalid batch
        (RuntimeError("llama_decode returned 2"), True),  # aborted
        (RuntimeError("llama_decode returned -3"), True),  # compute failure
        (RuntimeError("one-off failure"), True),
        (TransientError("x"), True),
        (ValueError("Requested tokens (300) exceed context window of 256"), False),
        (ContextOverflowError("x"), False),
        (ModelLoadError("x"), False),
        (ToolCallError("bad", "raw"), False),
        (RetryDivergedError("x"), False),
        (MemoryError(), False),
        (OSError("disk"), False),
    ],
)
def test_retry_policy(exc: BaseException, expected: bool) -> None:
    assert is_transient(exc) is expected


def test_unseen_skips_what_was_sent_and_refuses_divergence() -> None:
    assert unseen("alp", "alpha") == ""
    assert unseen("alpha be", "alpha") == " be"
    with pytest.raises(RetryDivergedError):
        unseen("alto", "alpha")
    with pytest.raises(RetryDivergedError):
        unseen("beta gamma", "alpha")


CUDA_LOG = """\
llama_model_load_from_file_impl: using device CUDA0 (NVIDIA H100 80GB HBM3) (0000:00:05.0) - \
80000 MiB free
load_tensors: layer   0 assigned to device CUDA0, is_swa = 0
load_tensors: layer   1 assigned to device CUDA0, is_swa = 0
load_tensors: layer   2 assigned to device CUDA0, is_swa = 0
load_tensors: offloading output layer to GPU
load_tensors: offloading 2 repeating layers to GPU
load_tensors: offloaded 3/3 layers to GPU
load_tensors:        CUDA0 model buffer size =     2.16 MiB
load_tensors:   CPU_Mapped model buffer size =     0.09 MiB
""".splitlines()


def test_parse_cuda_load_log() -> None:
    report = parse_load_log(CUDA_LOG)
    assert report["n_layers_offloaded"] == 3
    assert report["n_layers_total"] == 3
    assert report["backend"] == "CUDA"
    assert report["devices"] == [{"name": "CUDA0", "description": "NVIDIA H100 80GB HBM3"}]
    assert report["buffers_mib"] == {"CUDA0": 2.16, "CPU_Mapped": 0.09}


def test_parse_partial_offload() -> None:
    lines = [
        "load_tensors: layer   0 assigned to device CPU, is_swa = 0",
        "load_tensors: layer   1 assigned to device Metal, is_swa = 0",
        "load_tensors: layer   2 assigned to device Metal, is_swa = 0",
    ]
    report = parse_load_log(lines)
    assert (report["n_layers_offloaded"], report["n_layers_total"]) == (2, 3)
    assert report["backend"] == "METAL"


def test_offloaded_line_without_devices_counts_zero() -> None:
    # A GPU build that found no device still prints "offloaded N/M": nothing ran on a GPU.
    report = parse_load_log(["load_tensors: offloaded 3/3 layers to GPU"])
    assert report["n_layers_offloaded"] == 0
    assert report["backend"] == "CPU"


def test_cpu_only_log() -> None:
    lines = [f"load_tensors: layer {i} assigned to device CPU, is_swa = 0" for i in range(4)]
    report = parse_load_log(lines)
    assert (report["n_layers_offloaded"], report["n_layers_total"], report["backend"]) == (
        0,
        4,
        "CPU",
    )


def test_missing_llama_cpp_points_to_llama_harness_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from saiverse_llm.native import llama_cpp_module

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> ImportError
    with pytest.raises(ModelLoadError) as info:
        llama_cpp_module()
    message = str(info.value)
    assert f"llama-harness install cpu --python {sys.executable}" in message
    assert "Fix:" in message and "nox -s" not in message
