"""The CI matrix as a pure function of the variant registry (harness/ship/ci_matrix.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from harness.ship.ci_matrix import (
    CUDA_BUILD_IMAGE,
    CUDA_RUNTIME_IMAGE,
    GPU_RUNS_ON,
    HOSTED_PYTHON,
    HOSTED_RUNNERS,
    RETIRED_RUNNER_LABELS,
    CIMatrix,
    MatrixError,
    VariantSpec,
    compute_matrix,
    format_github_outputs,
)


def spec(
    name: str,
    backend: str = "CPU",
    *,
    gpu: bool = False,
    platforms: tuple[str, ...] = ("linux-*", "darwin-*"),
    default: bool = True,
    ci: Mapping[str, Any] | None = None,
) -> VariantSpec:
    return VariantSpec(name, backend, gpu, platforms, default, dict(ci or {}))


def only(matrix: CIMatrix, group: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = matrix.to_json()[group]["include"]
    assert len(entries) == 1, entries
    return entries[0]


def test_cpu_variant_is_built_and_tested_on_ubuntu() -> None:
    matrix = compute_matrix([spec("cpu")])
    entry = only(matrix, "test")
    assert entry["variant"] == "cpu"
    assert entry["runs_on"] == "ubuntu-latest"
    assert entry["platform"] == "linux-x86_64"
    assert entry["container"] == ""
    assert entry["python"] == HOSTED_PYTHON
    assert entry["allow_status"] == ""
    assert entry["experimental"] is False
    assert matrix.build == () and matrix.gpu == ()


def test_metal_runs_on_hosted_apple_silicon() -> None:
    matrix = compute_matrix([spec("metal", "METAL", gpu=True, platforms=("darwin-arm64",))])
    entry = only(matrix, "test")
    assert entry["runs_on"] == "macos-15"
    assert entry["platform"] == "darwin-arm64"
    # The macOS VM's GPU is the paravirtual one: a verified build that found no GPU warns.
    assert entry["allow_status"] == "built-no-gpu"
    assert matrix.build == () and matrix.gpu == ()


def test_cuda_compiles_in_a_devel_container_and_tests_on_the_gpu_runner() -> None:
    matrix = compute_matrix(
        [spec("cuda", "CUDA", gpu=True, platforms=("linux-x86_64", "linux-aarch64", "windows-*"))]
    )
    assert matrix.test == ()
    build = only(matrix, "build")
    assert build["runs_on"] == "ubuntu-latest"
    assert build["container"] == CUDA_BUILD_IMAGE
    assert build["container"].startswith("nvidia/cuda:") and "-devel-" in build["container"]
    # The container's Python (apt python3 of Ubuntu 24.04), not setup-python's.
    assert build["python"] == "3.12"
    gpu = only(matrix, "gpu")
    assert gpu["runs_on"] == list(GPU_RUNS_ON) == ["self-hosted", "gpu"]
    assert gpu["container"] == CUDA_RUNTIME_IMAGE
    assert "--gpus all" in gpu["container_options"]
    # The runtime image and the devel image carry the same CUDA version.
    assert (
        build["container"].split(":")[1].split("-")[0]
        == gpu["container"].split(":")[1].split("-")[0]
    )


def test_vulkan_runs_on_llvmpipe_in_a_hosted_job_and_on_the_gpu_runner() -> None:
    """Mesa's llvmpipe is a Vulkan device on the CPU: a plain ubuntu runner runs the variant
    (compile, offload every layer, correct answers); the GPU runner measures a real GPU."""
    matrix = compute_matrix([spec("vulkan", "VULKAN", gpu=True, platforms=("linux-*",))])
    hosted = only(matrix, "test")
    assert hosted["runs_on"] == "ubuntu-latest" and hosted["device"] == "Mesa llvmpipe"
    assert {"mesa-vulkan-drivers", "vulkan-tools", "glslc"} <= set(hosted["packages"].split())
    assert hosted["allow_status"] == "", "the software device is installed: no GPU is a failure"
    build = only(matrix, "build")
    assert build["container"] == ""
    assert {"glslc", "libvulkan-dev", "spirv-headers"} <= set(build["packages"].split())
    gpu = only(matrix, "gpu")
    assert gpu["runs_on"] == ["self-hosted", "gpu"]
    assert gpu["container"] == "" and gpu["python"] == HOSTED_PYTHON
    # On the GPU runner a session that finds no GPU is a failure, never accepted.
    assert gpu["allow_status"] == ""


def test_blas_packages_follow_the_runner_os() -> None:
    linux = only(compute_matrix([spec("blas", "BLAS")]), "test")
    mac = only(compute_matrix([spec("blas", "BLAS", platforms=("darwin-arm64",))]), "test")
    assert linux["packages"] == "libopenblas-dev"
    assert mac["runs_on"] == "macos-15" and mac["packages"] == "openblas"


@pytest.mark.parametrize(
    ("platforms", "runner", "platform"),
    [
        (("linux-*", "darwin-*", "windows-*"), "ubuntu-latest", "linux-x86_64"),
        (("darwin-*",), "macos-15", "darwin-arm64"),
        (("linux-aarch64",), "ubuntu-24.04-arm", "linux-aarch64"),
        (("darwin-x86_64",), "macos-15-intel", "darwin-x86_64"),
        (("windows-*",), "windows-latest", "windows-x86_64"),
        (("*",), "ubuntu-latest", "linux-x86_64"),
    ],
)
def test_runner_from_platform_globs(platforms: tuple[str, ...], runner: str, platform: str) -> None:
    entry = only(compute_matrix([spec("v", platforms=platforms)]), "test")
    assert (entry["runs_on"], entry["platform"]) == (runner, platform)


def test_a_platform_no_runner_has_is_an_error_naming_variant_and_field() -> None:
    with pytest.raises(MatrixError) as err:
        compute_matrix([spec("bsd", platforms=("freebsd-*",))])
    assert err.value.variant == "bsd"
    assert err.value.field == "platforms"
    assert err.value.value == ["freebsd-*"]
    assert "HOSTED_RUNNERS" in err.value.fix and "linux-x86_64" in str(err.value)


def test_unknown_gpu_backend_is_an_error() -> None:
    with pytest.raises(MatrixError) as err:
        compute_matrix([spec("sycl", "SYCL", gpu=True)])
    assert (err.value.variant, err.value.field, err.value.value) == ("sycl", "backend", "SYCL")
    assert "BACKEND_PROFILES" in err.value.fix


def test_variants_kept_out_of_plain_nox_are_experimental() -> None:
    entry = only(compute_matrix([spec("cpu-native", default=False)]), "test")
    assert entry["experimental"] is True


def test_ci_overrides() -> None:
    matrix = compute_matrix(
        [
            spec(
                "cuda-a100",
                "CUDA",
                gpu=True,
                ci={
                    "gpu_runs_on": ["self-hosted", "gpu", "a100"],
                    "container": "nvidia/cuda:12.4.1-devel-ubuntu22.04",
                    "experimental": True,
                },
            ),
            spec("cpu-big", ci={"runs_on": "ubuntu-latest-8-cores"}),
        ]
    )
    assert only(matrix, "gpu")["runs_on"] == ["self-hosted", "gpu", "a100"]
    assert only(matrix, "build")["container"] == "nvidia/cuda:12.4.1-devel-ubuntu22.04"
    assert only(matrix, "build")["experimental"] is True
    assert only(matrix, "test")["runs_on"] == "ubuntu-latest-8-cores"


@pytest.mark.parametrize(
    ("ci", "field"),
    [
        ({"runner": "x"}, "ci.runner"),
        ({"runs_on": 3}, "ci.runs_on"),
        ({"runs_on": []}, "ci.runs_on"),
        ({"container": ["a"]}, "ci.container"),
        ({"experimental": "yes"}, "ci.experimental"),
    ],
)
def test_bad_ci_overrides_are_errors(ci: dict[str, Any], field: str) -> None:
    with pytest.raises(MatrixError) as err:
        compute_matrix([spec("v", ci=ci)])
    assert err.value.field == field
    assert err.value.variant == "v"


def test_duplicate_names_are_an_error() -> None:
    with pytest.raises(MatrixError, match="unique"):
        compute_matrix([spec("cpu"), spec("cpu")])


def test_registry_order_is_kept_and_each_variant_lands_once() -> None:
    specs = [
        spec("cpu"),
        spec("cuda", "CUDA", gpu=True),
        spec("metal", "METAL", gpu=True, platforms=("darwin-arm64",)),
        spec("vulkan", "VULKAN", gpu=True),
    ]
    matrix = compute_matrix(specs)
    assert matrix.variants == ("cpu", "cuda", "metal", "vulkan")
    # vulkan twice: on llvmpipe in a hosted job, and built for the GPU runner
    assert [e.variant for e in matrix.test] == ["cpu", "metal", "vulkan"]
    assert [e.variant for e in matrix.build] == ["cuda", "vulkan"]
    assert [e.variant for e in matrix.gpu] == ["cuda", "vulkan"]


def test_github_outputs_are_single_line_json_with_flags() -> None:
    matrix = compute_matrix([spec("cpu"), spec("cuda", "CUDA", gpu=True)])
    outputs = matrix.github_outputs()
    assert outputs["has_test"] == "true"
    assert outputs["has_build"] == "true"
    assert outputs["has_gpu"] == "true"
    assert outputs["gpu_variants"] == "cuda"
    assert json.loads(outputs["variants"]) == ["cpu", "cuda"]
    for group in ("test", "build", "gpu"):
        assert json.loads(outputs[group]) == matrix.to_json()[group]
    text = format_github_outputs(outputs)
    lines = text.splitlines()
    assert len(lines) == len(outputs)
    parsed = dict(line.split("=", 1) for line in lines)
    assert parsed == outputs


def test_empty_groups_are_flagged_false() -> None:
    outputs = compute_matrix([spec("cpu")]).github_outputs()
    assert outputs["has_build"] == "false" and outputs["has_gpu"] == "false"
    assert json.loads(outputs["gpu"]) == {"include": []}
    assert outputs["gpu_variants"] == ""


def test_multiline_output_values_are_refused() -> None:
    with pytest.raises(ValueError, match="spans lines"):
        format_github_outputs({"x": "a\nb"})


def test_reads_registry_variants() -> None:
    """The real registry (harness/build/variants.yaml): every variant placed exactly once."""
    variants_mod = pytest.importorskip(
        "harness.build.variants", reason="harness.build.variants not written yet"
    )
    variants = variants_mod.load_variants()
    matrix = compute_matrix(variants.values())
    assert list(matrix.variants) == list(variants)
    placed = {e.variant for e in matrix.test} | {e.variant for e in matrix.build}
    assert placed == set(variants), "every variant gets a CI job"
    assert {e.variant for e in matrix.gpu} == {e.variant for e in matrix.build}
    by_name = {e.variant: e for e in (*matrix.test, *matrix.build)}
    for name, variant in variants.items():
        assert by_name[name].backend == variant.backend.upper()
        hosted = not variant.gpu or variant.backend.upper() in {"CPU", "BLAS", "METAL", "VULKAN"}
        assert (name in {e.variant for e in matrix.test}) == hosted, name
    if "cpu" in variants:
        assert by_name["cpu"].runs_on == "ubuntu-latest"
    if "metal" in variants:
        assert by_name["metal"].runs_on == "macos-15"
    if "cuda" in variants:
        assert by_name["cuda"].container.startswith("nvidia/cuda:")
        assert "cuda" in {e.variant for e in matrix.gpu}


def test_no_hosted_runner_label_is_retired() -> None:
    """Every label the matrix places variants on still gets runners."""
    for platform, label in HOSTED_RUNNERS:
        assert label not in RETIRED_RUNNER_LABELS, (platform, label)


@pytest.mark.parametrize(
    ("ci", "field", "label", "use"),
    [
        ({"runs_on": "macos-14"}, "ci.runs_on", "macos-14", "macos-15"),
        ({"runs_on": ["macos-13"]}, "ci.runs_on", "macos-13", "macos-15-intel"),
        ({"gpu_runs_on": ["self-hosted", "ubuntu-20.04"]}, "ci.gpu_runs_on", "ubuntu-20.04", ""),
    ],
)
def test_a_retired_runner_label_is_an_error_with_the_replacement(
    ci: dict[str, Any], field: str, label: str, use: str
) -> None:
    backend = "CUDA" if "gpu_runs_on" in ci else "CPU"
    with pytest.raises(MatrixError) as err:
        compute_matrix([spec("v", backend, gpu=backend == "CUDA", ci=ci)])
    assert (err.value.variant, err.value.field, err.value.value) == ("v", field, label)
    assert "retired" in err.value.fix and RETIRED_RUNNER_LABELS[label].source in err.value.fix
    assert RETIRED_RUNNER_LABELS[label].use in err.value.fix and use in err.value.fix


def test_retired_labels_carry_a_date_a_replacement_and_a_source() -> None:
    for label, notice in RETIRED_RUNNER_LABELS.items():
        assert label == label.lower()
        assert notice.use not in RETIRED_RUNNER_LABELS, (label, notice.use)
        assert len(notice.retired) == 10 and notice.retired[4] == "-", notice
        assert notice.source.startswith("https://github."), notice
