"""saiverse_llm.devices: the one home of nvidia-smi and the ggml device probe.

nvidia-smi's answers are fed through the probe's ``run`` parameter (no NVIDIA driver on the
machines these tests run on); the ggml probe runs for real in a child interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from saiverse_llm import devices

ROOT = Path(__file__).resolve().parents[2]

QUERY = "NVIDIA H100 80GB HBM3, 580.95.05, 9.0, 81559 MiB\nNVIDIA L4, 580.95.05, 8.9, 23034 MiB\n"
HEADER = "| NVIDIA-SMI 580.95.05   Driver Version: 580.95.05   CUDA Version: 13.0     |\n"


def _runner(answers: dict[str, subprocess.CompletedProcess[str] | None]) -> devices.Runner:
    def run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str] | None:
        key = cmd[1] if len(cmd) > 1 else ""
        return answers.get(key)

    return run


def _done(stdout: str, code: int = 0, stderr: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(["nvidia-smi"], code, stdout, stderr)


@pytest.fixture
def smi_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices.shutil, "which", lambda name: f"/usr/bin/{name}")


def test_query_reads_every_gpu_and_the_driver_cuda_version(smi_on_path: None) -> None:
    run = _runner({devices._QUERY[0]: _done(QUERY), "": _done(HEADER)})
    smi = devices.query_nvidia(run, header=True)
    assert smi.found and smi.error is None and smi.header_read
    assert [g.name for g in smi.gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert [g.compute_cap_number for g in smi.gpus] == [90, 89]
    assert smi.gpus[0].memory_total == "81559 MiB" and smi.gpus[0].driver == "580.95.05"
    assert smi.cuda_version == "13.0"


def test_a_failing_query_is_an_error_not_an_exception(smi_on_path: None) -> None:
    failed = _done("", 9, "NVIDIA-SMI has failed because it couldn't communicate with the driver")
    smi = devices.query_nvidia(_runner({devices._QUERY[0]: failed}), header=True)
    assert smi.found and smi.gpus == () and not smi.header_read
    assert smi.error is not None and "couldn't communicate" in smi.error
    assert devices.query_nvidia(_runner({}), header=True).error == "timeout"


def test_gpu_lines_keep_only_gpus(smi_on_path: None) -> None:
    listing = "GPU 0: NVIDIA L4 (UUID: GPU-1)\n  MIG 1g.5gb Device 0: (UUID: MIG-1)\n"
    assert devices.nvidia_gpu_lines(_runner({"-L": _done(listing)})) == (
        "GPU 0: NVIDIA L4 (UUID: GPU-1)",
    )
    assert devices.nvidia_gpu_lines(_runner({"-L": _done("", 6)})) == ()


def test_without_nvidia_smi_nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)

    def run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str] | None:
        raise AssertionError(f"ran {cmd}")

    assert devices.query_nvidia(run, header=True) == devices.NvidiaSmi(found=False)
    assert devices.nvidia_gpu_lines(run) == ()


def test_one_module_runs_nvidia_smi() -> None:
    """No product module but saiverse_llm/devices.py names the nvidia-smi command."""
    offenders = []
    for folder in ("saiverse_llm", "harness", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "saiverse_llm" / "devices.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and node.value == "nvidia-smi":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"nvidia-smi run outside saiverse_llm/devices.py: {offenders}"


def test_saiverse_llm_never_imports_harness() -> None:
    """harness depends on saiverse_llm, never the reverse (the device probe is shared)."""
    offenders = []
    for path in sorted((ROOT / "saiverse_llm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(n == "harness" or n.startswith("harness.") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_ggml_devices_in_a_child_interpreter() -> None:
    """The child loads devices.py by path: it answers with the ggml devices the interpreter's
    llama_cpp sees (a CPU device at least), or none without llama_cpp, never an exception."""
    found = devices.backend_devices_in_subprocess(sys.executable, timeout=120)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        assert found == []
    else:
        assert any(d.backend == "CPU" and d.memory_total > 0 for d in found), found


def test_a_missing_interpreter_is_a_probe_error(tmp_path: Path) -> None:
    with pytest.raises(devices.DeviceProbeError, match="cannot run"):
        devices.backend_devices_in_subprocess(str(tmp_path / "no-python"))
