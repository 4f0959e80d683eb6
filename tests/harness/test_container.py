"""Container mode (harness/ship/container.py): plans, build contexts, tags, engine errors, and real
runs through the Docker SDK when an engine is reachable (``scripts/docker-engine.sh start``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import paths
from harness.ship import container
from harness.ship.container import ContainerError

ROOT = paths.PROJECT_ROOT
BASE_IMAGE = os.environ.get("LLAMA_HARNESS_BASE_IMAGE", "local/bookworm-minbase")


# --------------------------------------------------------------------------- no engine needed


def test_split_posargs_drops_container_and_takes_the_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    wheel.write_bytes(b"PK")
    args = container.split_posargs(["--container", "-k", "chat", "--wheel", str(wheel), "-x"])
    assert args.wheel == wheel
    assert args.inner == ("-k", "chat", "-x")
    assert container.split_posargs([f"--wheel={wheel}"]).wheel == wheel


def test_split_posargs_rejects_a_missing_wheel(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match="no such file"):
        container.split_posargs(["--wheel", str(tmp_path / "nope.whl")])
    with pytest.raises(ContainerError, match="needs a path"):
        container.split_posargs(["--wheel"])


def test_plan_cpu_uses_the_registry_flags() -> None:
    plan = container.plan_image("cpu", env={})
    assert plan.dockerfile.name == "Dockerfile.cpu"
    assert plan.buildargs["CMAKE_ARGS"] == "-DGGML_NATIVE=OFF"
    assert plan.buildargs["LLAMA_CPP_PYTHON_VERSION"] == "0.3.36"
    assert len(plan.buildargs["LLAMA_CPP_PYTHON_SHA256"]) == 64
    assert not plan.gpu


def test_plan_cuda_takes_architectures_and_keeps_the_registry_flags() -> None:
    plan = container.plan_image("cuda", env={"LLAMA_HARNESS_CUDA_ARCHITECTURES": "90"})
    assert plan.dockerfile.name == "Dockerfile.cuda"
    assert plan.gpu
    assert plan.buildargs["CUDA_ARCHITECTURES"] == "90"
    assert "-DGGML_CUDA=on" in plan.buildargs["CMAKE_ARGS"]
    # GGML_CUDA_NO_VMM=ON as in the registry: ggml-cuda must not link the driver library,
    # which the image build (no GPU, no driver) does not have.
    assert "-DGGML_CUDA_NO_VMM=ON" in plan.buildargs["CMAKE_ARGS"]


def test_plan_blas_adds_openblas_packages() -> None:
    plan = container.plan_image("cpu-openblas", env={})
    assert plan.buildargs["EXTRA_BUILD_PACKAGES"] == "libopenblas-dev"
    assert "-DGGML_BLAS=ON" in plan.buildargs["CMAKE_ARGS"]


def test_plan_overrides_from_the_environment() -> None:
    env = {
        "LLAMA_HARNESS_BASE_IMAGE": "local/bookworm-minbase",
        "LLAMA_HARNESS_DOCKER_BUILD_ARGS": "PYTHON_VERSION=3.11 CMAKE_BUILD_PARALLEL_LEVEL=2",
    }
    plan = container.plan_image("cpu", env=env)
    assert plan.buildargs["BASE_IMAGE"] == "local/bookworm-minbase"
    assert plan.buildargs["CMAKE_BUILD_PARALLEL_LEVEL"] == "2"
    with pytest.raises(ContainerError, match="KEY=VALUE"):
        container.plan_image("cpu", env={"LLAMA_HARNESS_DOCKER_BUILD_ARGS": "oops"})


def test_metal_has_no_container_and_says_so() -> None:
    with pytest.raises(ContainerError, match="Metal has no container"):
        container.plan_image("metal", env={})
    with pytest.raises(ContainerError, match=r"unknown variant 'nonesuch'; known: .*cpu"):
        container.plan_image("nonesuch", env={})


def _fake_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    (cache / "sdist").mkdir(parents=True)
    (cache / "sdist" / "llama_cpp_python-0.3.36.tar.gz").write_bytes(b"sdist bytes")
    monkeypatch.setenv("LLAMA_HARNESS_CACHE", str(cache))
    return cache


def test_stage_context_carries_project_sdist_wheel_and_certs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_cache(tmp_path, monkeypatch)
    certs = tmp_path / "ca"
    certs.mkdir()
    (certs / "corp.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    wheel = tmp_path / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    wheel.write_bytes(b"wheel")
    plan = container.plan_image("cpu", env={})
    ctx = container.stage_context(plan, tmp_path / "ctx", wheel=wheel, ca_dirs=[certs])
    assert (ctx / "pyproject.toml").is_file()
    assert (ctx / "docker" / "Dockerfile.cpu").is_file()
    assert (ctx / "docker/sdist/llama_cpp_python-0.3.36.tar.gz").read_bytes() == b"sdist bytes"
    assert (ctx / "docker/wheels" / wheel.name).read_bytes() == b"wheel"
    assert (ctx / "docker/certs/corp.crt").is_file()
    assert not (ctx / ".venv").exists() and not (ctx / ".git").exists()


def test_image_tag_follows_dockerfile_args_and_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_cache(tmp_path, monkeypatch)
    plan = container.plan_image("cpu", env={})
    ctx = container.stage_context(plan, tmp_path / "ctx", ca_dirs=[])
    tag = container.image_tag(plan, ctx)
    assert tag.startswith("llama-harness/cpu:")
    assert container.image_tag(plan, ctx) == tag
    other = container.plan_image("cpu", env={"LLAMA_HARNESS_BASE_IMAGE": "local/x"})
    assert container.image_tag(other, ctx) != tag
    (ctx / "docker/wheels/llama_cpp_python-0.3.36-py3-none-any.whl").write_bytes(b"w")
    assert container.image_tag(plan, ctx) != tag


def test_container_command_runs_the_session_on_the_image_wheel() -> None:
    cmd = container.container_command("test-cpu", ["-k", "chat"])
    assert cmd[:2] == ["bash", "-c"]
    assert 'nox -s "$0" -- --wheel /opt/llama/llama_cpp_python-*.whl "$@"' in cmd[2]
    assert cmd[3:] == ["test-cpu", "-k", "chat"]


def test_no_engine_error_names_docker_host_and_the_fix(tmp_path: Path) -> None:
    sock = tmp_path / "missing.sock"
    with pytest.raises(ContainerError) as info:
        container.connect(env={"DOCKER_HOST": f"unix://{sock}"})
    text = str(info.value)
    assert str(sock) in text
    assert "scripts/docker-engine.sh start" in text and "DOCKER_HOST" in text


def test_run_session_reports_a_missing_engine_as_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'missing.sock'}")
    assert container.run_session_in_container("cpu", "test-cpu", ["--container"]) == 2
    err = capsys.readouterr().err  # the error line goes to stderr (saiverse_llm.cli_errors)
    assert "no Docker engine answers" in err and err.startswith("error: ")


# --------------------------------------------------------------------------- a real engine


@pytest.fixture(scope="module")
def engine() -> Any:
    try:
        return container.connect()
    except ContainerError as exc:
        pytest.skip(f"no Docker engine reachable ({exc}); start one: scripts/docker-engine.sh")


@pytest.fixture(scope="module")
def base_image(engine: Any) -> str:
    if container.image_exists(engine, BASE_IMAGE):
        return BASE_IMAGE
    script = ROOT / "scripts" / "make-base-image.sh"
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        pytest.skip(f"base image {BASE_IMAGE} missing and debootstrap/root unavailable: {script}")
    subprocess.run([str(script), BASE_IMAGE], check=True, capture_output=True)
    return BASE_IMAGE


def _leftovers(engine: Any) -> list[Any]:
    found: list[Any] = engine.containers.list(all=True, filters={"label": "llama-harness"})
    return found


@pytest.mark.docker
def test_run_container_streams_logs_and_propagates_the_exit_status(
    engine: Any, base_image: str
) -> None:
    lines: list[str] = []
    script = 'echo "gpu-requested=$LLAMA_HARNESS_CONTAINER_GPU_REQUESTED"; test -f /.dockerenv'
    code = container.run_container(
        engine, base_image, ["bash", "-c", script + " && exit 7"], gpu=False, log=lines.append
    )
    assert code == 7
    assert lines == ["gpu-requested=0"]
    assert _leftovers(engine) == []


@pytest.mark.docker
def test_gpu_request_without_nvidia_runtime_says_how_to_fix(engine: Any, base_image: str) -> None:
    if container.has_nvidia_runtime(engine):
        pytest.skip("this engine has the NVIDIA runtime; the failure path cannot be shown here")
    with pytest.raises(ContainerError) as info:
        container.run_container(engine, base_image, ["true"], gpu=True)
    text = str(info.value)
    assert 'could not select device driver "" with capabilities: [[gpu]]' in text
    assert "no 'nvidia' runtime" in text and "nvidia-container-toolkit" in text
    assert _leftovers(engine) == []


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "reports"
    monkeypatch.setenv("LLAMA_HARNESS_REPORTS", str(folder))
    yield folder


@pytest.mark.docker
@pytest.mark.slow
def test_cpu_image_builds_with_the_classic_builder_and_runs_test_cpu(
    engine: Any, base_image: str, reports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path: Dockerfile.cpu on the debootstrap base, `test-cpu` inside, no network.

    First run: apt + a 4-minute llama-cpp-python compile + the wheelhouse; later runs reuse
    the image (the tag is the hash of the Dockerfile, build args and context).
    """
    monkeypatch.setenv("LLAMA_HARNESS_BASE_IMAGE", base_image)
    code = container.run_session_in_container("cpu", "test-cpu", ["--container"])
    assert code == 0
    assert any(reports.rglob("*")), "the session wrote nothing into the mounted report folder"
    assert _leftovers(engine) == []
