"""The doctor against real builds: the llama_cpp of this interpreter (when there is one), a
crashing interpreter, and the CUDA wheel on a machine without a driver (when the wheel is
here). Nothing is mocked: the doctor runs `python -m harness.build.buildinfo` in a child."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from harness.build import buildinfo
from harness.doctor import doctor, repro

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {
    "GEMINI_API_KEY": "AIzaSyD-doctor-test-secret-0123456789xyz",
    "HF_TOKEN": "hf_DoctorTestTokenValue0123456789",
    "MY_SERVICE_TOKEN": "svc-token-5be1e2",
    "DB_PASSWORD": "correct-horse-battery",
    "PIP_INDEX_URL": "https://carol:pipsecretpw@pypi.example/simple",
}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "doctor", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        check=False,
    )


def _fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


# --------------------------------------------------------------------------- no llama_cpp needed


def test_a_crashing_interpreter_becomes_a_readable_error(tmp_path: Path) -> None:
    fake = _fake_python(tmp_path, "echo 'Illegal instruction' >&2; kill -ILL $$")
    with pytest.raises(buildinfo.BuildInfoError) as info:
        buildinfo.collect_in_subprocess(fake)
    message = str(info.value)
    assert "killed by SIGILL" in message
    assert fake in message
    assert "Illegal instruction" in message


def test_garbage_output_is_reported(tmp_path: Path) -> None:
    fake = _fake_python(tmp_path, "echo not json")
    with pytest.raises(buildinfo.BuildInfoError, match="no valid JSON"):
        buildinfo.collect_in_subprocess(fake)


def test_missing_interpreter_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(buildinfo.BuildInfoError, match="interpreter not found"):
        buildinfo.collect_in_subprocess(str(tmp_path / "nope" / "python"))


def test_doctor_turns_a_sigill_into_the_cpu_instructions_cause(tmp_path: Path) -> None:
    fake = _fake_python(tmp_path, "kill -ILL $$")
    report = doctor.run_doctor(doctor.DoctorOptions(python=fake, probe=False))
    assert report.verdict.startswith("llama_cpp crashes on import (SIGILL)")
    assert "cpu-instructions-unsupported" in report.cause_ids


def test_unknown_variant_names_the_nox_session() -> None:
    proc = _cli("--variant", "no-such-variant", "--no-probe")
    assert proc.returncode == 2
    assert "nox -s test-no-such-variant" in proc.stderr


def test_system_info_parsing_of_a_cuda_build() -> None:
    text = "CUDA : ARCHS = 750,860,900 | NO_VMM = 1 | CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 0 | "
    sections = buildinfo.parse_system_info(text)
    assert buildinfo.parse_cuda_archs(sections) == [750, 860, 900]
    assert buildinfo.parse_cpu_features(sections) == {"SSE3": True, "AVX2": True, "AMX_INT8": False}
    assert buildinfo.compiled_backends_of(sections, ["libggml-cuda.so"], ["CUDA", "CPU"]) == {
        "CPU",
        "CUDA",
    }
    assert buildinfo.backend_of_lib("libggml-cpu-haswell.so") == "CPU"
    assert buildinfo.backend_of_lib("libggml-base.so") is None
    assert buildinfo.canonical_backend("MTL") == "METAL"


# --------------------------------------------------------------------------- this interpreter


@pytest.fixture(scope="module")
def installed() -> buildinfo.BuildInfo:
    pytest.importorskip("llama_cpp", reason="needs a llama-cpp-python build in this venv")
    return buildinfo.collect_in_subprocess(sys.executable)


def test_buildinfo_describes_the_installed_build(installed: buildinfo.BuildInfo) -> None:
    assert installed.installed
    assert installed.package_dir and Path(installed.package_dir).is_dir()
    assert "CPU" in installed.compiled_backends
    assert any(d.type == "CPU" for d in installed.devices), installed.devices
    assert "libggml-cpu.so" in installed.backend_libs or any(
        lib.startswith("libggml-cpu") for lib in installed.backend_libs
    )
    assert installed.provenance.version == installed.llama_cpp_version
    assert installed.provenance.lib_hashes, "RECORD hashes of the libraries are needed"
    if "CUDA" in installed.system_info:
        assert "CUDA" in installed.compiled_backends and installed.cuda_archs
    else:
        assert installed.gpu_offload is False or installed.gpu_backends
    again = buildinfo.BuildInfo.from_dict(json.loads(json.dumps(installed.to_dict())))
    assert again == installed


def test_probe_reports_effective_layers_and_swallowed_kwargs(
    installed: buildinfo.BuildInfo, tiny_gguf: Path
) -> None:
    typo = buildinfo.probe_in_subprocess(sys.executable, tiny_gguf, {"n_gpu_layer": -1}, tokens=2)
    assert typo["unknown_kwargs"] == ["n_gpu_layer"]
    assert typo["effective_n_gpu_layers"] == 0
    right = buildinfo.probe_in_subprocess(sys.executable, tiny_gguf, {"n_gpu_layers": -1}, tokens=2)
    assert right["unknown_kwargs"] == []
    assert right["effective_n_gpu_layers"] == -1
    assert right["tokens"] == 2
    if not installed.gpu_offload:
        assert right["offload_logged"] is False and right["offloaded"] == 0


def test_doctor_cli_verdict_on_this_build(installed: buildinfo.BuildInfo, tmp_path: Path) -> None:
    md = tmp_path / "report.md"
    proc = _cli("--json", "--markdown", str(md), "--tokens", "2")
    assert proc.returncode in (0, 1), proc.stderr
    data = json.loads(proc.stdout)
    ids = [c["id"] for c in data["causes"]]
    if not installed.gpu_backends:
        assert proc.returncode == 1
        if data["facts"]["host.any_gpu"]:
            assert data["verdict"].startswith("CPU-only build: this llama-cpp-python was compiled")
            assert "cpu-only-build" in ids
        else:  # honest on a machine without a GPU: no CUDA rebuild advice, the harness route
            assert data["verdict"].startswith("CPU-only build on a machine with no GPU")
            assert "cpu-only-build" not in ids
            assert "no-gpu-here" in ids
            route = next(c for c in data["causes"] if c["id"] == "no-gpu-here")
            assert any("nox -s build-cuda" in f for f in route["fix"])
    assert data["facts"]["probe.ran"] is True
    assert md.read_text().startswith("# llama-harness doctor")


def test_secrets_never_reach_any_doctor_output(
    installed: buildinfo.BuildInfo, tmp_path: Path
) -> None:
    log = tmp_path / "pip.log"
    log.write_text(
        f"Using HF_TOKEN={SECRETS['HF_TOKEN']}\nLooking in indexes: {SECRETS['PIP_INDEX_URL']}\n"
        "Requirement already satisfied: llama-cpp-python in /x\n"
    )
    env = {
        **os.environ,
        **SECRETS,
        "CMAKE_ARGS": f"-DGGML_CUDA=on -DDOWNLOAD_TOKEN={SECRETS['MY_SERVICE_TOKEN']}",
    }
    md = tmp_path / "report.md"
    text = _cli("--no-probe", "--log", str(log), env=env)
    as_json = _cli("--no-probe", "--json", "--markdown", str(md), "--log", str(log), env=env)
    outputs = {"text": text.stdout, "json": as_json.stdout, "markdown": md.read_text()}
    for kind, out in outputs.items():
        assert out.strip(), f"{kind} output is empty: {text.stderr or as_json.stderr}"
        for secret in [*SECRETS.values(), "pipsecretpw"]:
            assert secret not in out, f"{secret!r} leaked into the {kind} output"
        assert "-DGGML_CUDA=on" in out  # the harmless part of CMAKE_ARGS is still shown
    data = json.loads(as_json.stdout)
    assert "already-installed" in [c["id"] for c in data["causes"]] or installed.gpu_backends


# --------------------------------------------------------------------------- the CUDA wheel


def test_cuda_wheel_without_driver_says_so() -> None:
    """The CUDA build on a machine without an NVIDIA driver: imports, no offload, says why."""
    case = repro.load_case(ROOT / "repro" / "cuda-build-no-driver.yaml")
    missing = repro.missing_requirements(repro.case_requirements(case))
    if missing:
        pytest.skip("; ".join(missing))
    if shutil.which("cmake") is None:
        pytest.skip("needs cmake")
    result = repro.replay(case)
    assert result.symptom is not None and result.symptom.report is not None
    report = result.symptom.report
    assert report.verdict.startswith("CUDA build, but no NVIDIA driver / no GPU"), report.verdict
    assert "no-driver-or-gpu" in report.cause_ids
    assert report.facts["build.cuda_archs"], "the CUDA archs of the build are read"
    assert report.facts["probe.offloaded"] == 0
