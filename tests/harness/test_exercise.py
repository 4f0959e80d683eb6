"""exercise(): a child killed by a signal becomes a readable "crashed in native code"."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.build.exercise import MARK, exercise, interpret, signal_of

# The child says what llama_print_system_info() of an AMX -march=native build says, then
# dies the way that build dies on its first decode.
AMX_INFO = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | "
CRASH_AFTER_LOAD = f"""
import json, os, signal, sys
print({MARK!r} + json.dumps({{"kind": "system_info", "system_info": {AMX_INFO!r}}}), flush=True)
print({MARK!r} + json.dumps({{"kind": "loaded", "seconds": 0.1}}), flush=True)
os.kill(os.getpid(), signal.SIGSEGV)
"""
PLAIN_SEGV = """
import os, signal
os.kill(os.getpid(), signal.SIGSEGV)
"""
FAILS = """
import sys
print("llama_model_load: error loading model: tensor data is not within file bounds",
      file=sys.stderr)
sys.exit(1)
"""


def test_sigsegv_child_is_reported_with_signal_cause_and_traceback(tmp_path: Path) -> None:
    result = exercise(sys.executable, tmp_path / "m.gguf", snippet=CRASH_AFTER_LOAD)
    assert result.status == "crashed" and not result.ok
    assert result.returncode == -signal.SIGSEGV
    assert result.signal == "SIGSEGV"
    assert result.message == "crashed in native code: SIGSEGV (signal 11) on the first decode"
    assert "ggml-org/llama.cpp#20824" in result.cause and "AMX" in result.cause
    assert "-DGGML_NATIVE=OFF" in result.fix
    # faulthandler in the child wrote the Python traceback to stderr
    assert any("Segmentation fault" in line for line in result.stderr_tail)
    summary = result.summary()
    assert "likely cause" in summary and "last stderr lines" in summary


def test_crash_without_amx_evidence_gets_a_generic_cause(tmp_path: Path) -> None:
    result = exercise(sys.executable, tmp_path / "m.gguf", snippet=PLAIN_SEGV)
    assert result.status == "crashed"
    assert result.message.endswith("while importing llama_cpp")
    assert "20824" not in result.cause and "native code" in result.cause


def test_failing_child_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    result = exercise(sys.executable, tmp_path / "m.gguf", snippet=FAILS)
    assert result.status == "failed" and result.signal is None
    assert "exit code 1" in result.message
    assert any("not within file bounds" in line for line in result.stderr_tail)


def test_shell_style_signal_exit_codes() -> None:
    proc = subprocess.run(["sh", "-c", "kill -SEGV $$"], check=False)
    assert signal_of(proc.returncode) == signal.SIGSEGV
    assert signal_of(128 + 4) == signal.SIGILL and signal_of(1) is None and signal_of(0) is None
    ill = interpret(128 + 4, "", "")
    assert ill.status == "crashed" and "SIGILL (signal 4)" in ill.message
    assert "instructions this CPU lacks" in ill.cause


def test_cli_exit_code_for_a_crash(tmp_path: Path) -> None:
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -c '{PLAIN_SEGV.strip()}'\n")
    script.chmod(0o755)
    proc = subprocess.run(
        [sys.executable, "-m", "harness.build.exercise", "--python", str(script), "--model",
         str(tmp_path / "m.gguf"), "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout)["status"] == "crashed"


def test_real_build_decodes_the_tiny_model(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="needs a real llama-cpp-python build in this venv")
    from harness.models.synth import synthesize

    model = synthesize(tmp_path / "tiny-q8_0.gguf", preset="tiny", dtype="q8_0")
    result = exercise(sys.executable, model, n_tokens=4)
    if result.status == "crashed":
        pytest.fail(f"the venv's llama_cpp crashed: {result.summary()}")
    assert result.ok, result.summary()
    assert result.stages == ["system_info", "loaded", "decoded"]
    assert result.completion_tokens is not None and 1 <= result.completion_tokens <= 5
    assert "CPU" in result.system_info


def _decoded_stdout() -> str:
    events = [{"kind": "system_info", "system_info": "CPU : AVX2 = 1 | "}, {"kind": "loaded"},
              {"kind": "decoded", "completion_tokens": 8}]  # fmt: skip
    return "".join(f"{MARK}{json.dumps(e)}\n" for e in events)


def test_the_offloaded_layers_are_counted_from_the_load_log() -> None:
    """The session's exercise says how many layers reached the GPU backend (llvmpipe: 3/3);
    a GPU session fails when n_gpu_layers=-1 left some on the CPU."""
    log = "\n".join(
        [
            "llama_model_load_from_file_impl: using device Vulkan0 (llvmpipe) - 2048 MiB free",
            "load_tensors: layer   0 assigned to device Vulkan0, is_swa = 0",
            "load_tensors: layer   1 assigned to device Vulkan0, is_swa = 0",
            "load_tensors: layer   2 assigned to device Vulkan0, is_swa = 0",
            "load_tensors: offloaded 3/3 layers to GPU",
        ]
    )
    result = interpret(0, _decoded_stdout(), log)
    assert result.ok and result.all_offloaded
    assert (result.offloaded_layers, result.total_layers, result.offload_backend) == (
        3,
        3,
        "VULKAN",
    )
    assert (
        result.message == "loaded the model (offloaded 3/3 layers to VULKAN) and decoded 8 tokens"
    )
    partial = interpret(
        0,
        _decoded_stdout(),
        log.replace("layer   2 assigned to device Vulkan0", "layer   2 assigned to device CPU"),
    )
    assert partial.ok and not partial.all_offloaded and partial.offloaded_layers == 2
    cpu = interpret(0, _decoded_stdout(), "load_tensors: offloaded 0/3 layers to GPU")
    assert (
        cpu.message
        == "loaded the model (0/3 layers offloaded: all on the CPU) and decoded 8 tokens"
    )
    assert not interpret(0, _decoded_stdout(), "").all_offloaded  # the log did not say
