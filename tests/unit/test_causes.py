"""The cause catalogue (harness/causes.yaml) and the doctor's generic evidence evaluator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import doctor
from harness.doctor import CatalogueError, evaluate, load_causes, match_causes, parse_causes

ROOT = Path(__file__).resolve().parents[2]

# Causes the issue requires (#6), by catalogue id.
REQUIRED = {
    "cached-cpu-wheel",
    "already-installed",
    "cmake-args-not-forwarded",
    "legacy-cuda-flag",
    "force-cmake-ignored",
    "nvcc-not-found",
    "missing-cuda-arch",
    "driver-older-than-runtime",
    "no-driver-or-gpu",
    "cuda-libs-not-found",
    "container-without-gpus",
    "n-gpu-layers-zero",
    "n-gpu-layers-misspelled",
    "blas-0-misread",
    "rosetta-x86-python",
    "backend-dl-not-loaded",
    "cpu-instructions-unsupported",
}

# A healthy CUDA installation on an H100: no cause of any severity may match it.
HEALTHY: dict[str, Any] = {
    "llama.installed": True,
    "llama.version": "0.3.36",
    "os.system": "Linux",
    "python.machine": "x86_64",
    "host.arm64_capable": False,
    "build.crash": None,
    "build.compiled_backends": ["CPU", "CUDA"],
    "build.gpu_backends": ["CUDA"],
    "build.gpu_offload": True,
    "build.system_info": "CUDA : ARCHS = 900 | USE_GRAPHS = 1 | CPU : AVX2 = 1 | ",
    "build.cuda_archs": [900],
    "build.gpu_devices": ["NVIDIA H100 80GB HBM3"],
    "build.unloaded_backend_libs": [],
    "build.init_log": "ggml_cuda_init: found 1 CUDA devices:",
    "build.cpu_features": ["AVX", "AVX2", "FMA"],
    "build.cpu_features_missing_on_host": [],
    "nvidia.smi_found": True,
    "nvidia.compute_caps": [90],
    "cuda.libcuda_loadable": True,
    "cuda.nvcc_found": True,
    "cuda.driver_older_than_runtime": False,
    "cuda.arch_match": "exact",
    "container.detected": True,
    "container.nvidia_devices": True,
    "pip_cache.matches_installed": False,
    "install.unexported_cmake_args": False,
    "install.sudo_pip": False,
    "install.frontend": "pip",
    "install.commands": 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --no-cache-dir llama-cpp-python',
    "env.CMAKE_ARGS": "-DGGML_CUDA=on",
    "runtime.n_gpu_layers": -1,
    "runtime.unknown_kwargs": [],
    "probe.ran": True,
    "probe.offloaded": 3,
    "probe.total": 3,
    "probe.effective_n_gpu_layers": -1,
    "user.log": "load_tensors: offloaded 3/3 layers to GPU",
}

# For every cause: facts as public reports show them (on top of HEALTHY).
POSITIVE: dict[str, dict[str, Any]] = {
    "cpu-only-build": {"build.compiled_backends": ["CPU"], "build.gpu_backends": []},
    "cached-cpu-wheel": {
        "build.compiled_backends": ["CPU"],
        "build.gpu_backends": [],
        "pip_cache.matches_installed": True,
    },
    "already-installed": {
        "build.gpu_backends": [],
        "user.log": "Requirement already satisfied: llama-cpp-python in ./venv/lib/python3.11",
    },
    "cmake-args-not-forwarded": {
        "build.gpu_backends": [],
        "install.unexported_cmake_args": True,
    },
    "legacy-cuda-flag": {"env.CMAKE_ARGS": "-DLLAMA_CUBLAS=on"},
    "force-cmake-ignored": {"env.FORCE_CMAKE": "1"},
    "nvcc-not-found": {"user.log": "CMake Error: CUDA Toolkit not found\n"},
    "missing-cuda-arch": {"cuda.arch_match": "none", "nvidia.compute_caps": [61]},
    "driver-older-than-runtime": {"cuda.driver_older_than_runtime": True},
    "no-driver-or-gpu": {"cuda.libcuda_loadable": False},
    "container-without-gpus": {"container.nvidia_devices": False},
    "container-driver-too-old": {
        "user.log": "docker: Error response from daemon: failed to create task for container: "
        "... stderr: Auto-detected mode as 'legacy'\nnvidia-container-cli: requirement error: "
        "unsatisfied condition: cuda>=12.8, please update your driver to a newer version, or "
        "use an earlier cuda container: unknown"
    },
    "cuda-libs-not-found": {
        "llama.import_error": "RuntimeError: Failed to load shared library '/v/llama_cpp/lib/"
        "libllama.so': libcudart.so.12: cannot open shared object file: No such file"
    },
    "n-gpu-layers-zero": {"runtime.n_gpu_layers": 0},
    "n-gpu-layers-misspelled": {"runtime.unknown_kwargs": ["n_gpu_layer"]},
    "blas-0-misread": {"user.log": "AVX = 1 | AVX2 = 1 | BLAS = 0 | SSE3 = 1"},
    "rosetta-x86-python": {"os.system": "Darwin", "host.arm64_capable": True},
    "backend-dl-not-loaded": {"build.unloaded_backend_libs": ["libggml-cuda.so"]},
    "cpu-instructions-unsupported": {"build.crash": "SIGILL"},
    "amx-native-crash": {"build.cpu_features": ["AVX2", "AMX_INT8"], "build.crash": "SIGSEGV"},
    # measured here: the vulkan build on a machine whose only Vulkan device is Mesa llvmpipe
    "vulkan-software-device-only": {
        "build.gpu_backends": ["VULKAN"],
        "vulkan.software_only": True,
        "vulkan.software_devices": ["llvmpipe (LLVM 15.0.6, 256 bits)"],
    },
}


@pytest.fixture(scope="module")
def causes() -> list[doctor.Cause]:
    return load_causes()


def test_catalogue_has_every_required_cause_with_citations(causes: list[doctor.Cause]) -> None:
    ids = {c.id for c in causes}
    assert ids >= REQUIRED, f"missing: {sorted(REQUIRED - ids)}"
    for cause in causes:
        assert any(
            s.startswith(("https://github.com/abetlen/", "https://github.com/ggml-org/"))
            for s in cause.source
        ) or cause.id in {"n-gpu-layers-zero"}, cause.id
        assert cause.fix and cause.explanation and cause.title


def test_every_cause_has_a_positive_example_here(causes: list[doctor.Cause]) -> None:
    assert {c.id for c in causes} == set(POSITIVE)


def test_healthy_gpu_setup_matches_no_cause(causes: list[doctor.Cause]) -> None:
    assert [m.cause.id for m in match_causes(HEALTHY, causes)] == []


@pytest.mark.parametrize("cause_id", sorted(POSITIVE))
def test_each_cause_matches_its_reported_facts(cause_id: str, causes: list[doctor.Cause]) -> None:
    facts = {**HEALTHY, **POSITIVE[cause_id]}
    matched = match_causes(facts, causes)
    assert cause_id in [m.cause.id for m in matched]
    match = next(m for m in matched if m.cause.id == cause_id)
    assert match.evidence, "a match must show the evidence it rests on"
    for command in match.fix:
        assert "{llama." not in command and "{hint." not in command, command


def test_generic_cause_comes_after_specific_ones(causes: list[doctor.Cause]) -> None:
    facts = {**HEALTHY, **POSITIVE["cached-cpu-wheel"]}
    ids = [m.cause.id for m in match_causes(facts, causes)]
    assert ids.index("cached-cpu-wheel") < ids.index("cpu-only-build")


def test_replay_files_named_by_causes_exist_and_name_them(causes: list[doctor.Cause]) -> None:
    for cause in causes:
        if cause.replay:
            case = yaml.safe_load((ROOT / cause.replay).read_text())
            assert case["cause"] == cause.id, cause.replay


# --------------------------------------------------------------------------- the evaluator


@pytest.mark.parametrize(
    ("node", "facts", "expected"),
    [
        ({"fact": "a", "equals": 1}, {"a": 1}, True),
        ({"fact": "a", "equals": 1}, {"a": 2}, False),
        ({"fact": "a", "not_equals": 1}, {"a": 2}, True),
        ({"fact": "a", "contains": "CUDA"}, {"a": ["CPU", "CUDA"]}, True),
        ({"fact": "a", "contains": "CUDA"}, {"a": ["CPU"]}, False),
        ({"fact": "a", "contains": "cuda"}, {"a": "CUDA : ARCHS"}, True),
        ({"fact": "a", "lacks": "CUDA"}, {"a": ["CPU"]}, True),
        ({"fact": "a", "lacks": "CUDA"}, {"a": None}, False),
        ({"fact": "a", "matches": r"GGML_CUDA=on"}, {"a": "-DGGML_CUDA=on"}, True),
        ({"fact": "a", "matches": r"^x$"}, {"a": ["y", "x"]}, True),
        ({"fact": "a", "in": ["uv", "poetry"]}, {"a": "uv"}, True),
        ({"fact": "a", "gt": 0}, {"a": 3}, True),
        ({"fact": "a", "gt": 0}, {"a": True}, False),
        ({"fact": "a", "le": 2}, {"a": 3}, False),
        ({"fact": "a", "present": True}, {"a": []}, False),
        ({"fact": "a", "present": False}, {}, True),
        ({"fact": "a", "empty": True}, {"a": []}, True),
        ({"fact": "a", "empty": True}, {}, False),
        ([{"fact": "a", "equals": 1}, {"fact": "b", "equals": 2}], {"a": 1, "b": 3}, False),
        ({"any": [{"fact": "a", "equals": 1}, {"fact": "b", "equals": 2}]}, {"b": 2}, True),
        ({"not": {"fact": "a", "equals": 1}}, {"a": 2}, True),
        ({"not": {"fact": "a", "equals": 1}}, {"a": 1}, False),
    ],
)
def test_evaluator_operators(node: Any, facts: dict[str, Any], expected: bool) -> None:
    assert evaluate(node, facts)[0] is expected


def test_evidence_shows_the_matching_line_not_the_whole_log() -> None:
    log = "line one\nRequirement already satisfied: llama-cpp-python in /x\nline three"
    ok, hits = evaluate({"fact": "user.log", "matches": "already satisfied"}, {"user.log": log})
    assert ok
    assert hits == [
        "user.log matches already satisfied (found: Requirement already satisfied: "
        "llama-cpp-python in /x)"
    ]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"causes": "x"}, "causes"),
        ({"causes": [{"id": "Bad Id"}]}, "causes[0].id"),
        ({"causes": [{"id": "a", "title": "t", "explanation": "e", "evidence": {}}]}, "a.evidence"),
        (
            {
                "causes": [
                    {
                        "id": "a",
                        "title": "t",
                        "explanation": "e",
                        "evidence": {"fact": "x", "bogus": 1},
                        "fix": ["f"],
                        "source": ["https://x"],
                    }
                ]
            },
            "cause a.evidence",
        ),
        (
            {
                "causes": [
                    {
                        "id": "a",
                        "title": "t",
                        "explanation": "e",
                        "evidence": {"fact": "x", "matches": "("},
                        "fix": ["f"],
                        "source": ["https://x"],
                    }
                ]
            },
            "matches",
        ),
        (
            {
                "causes": [
                    {
                        "id": "a",
                        "title": "t",
                        "explanation": "e",
                        "evidence": {"fact": "x", "equals": 1},
                        "fix": ["f"],
                        "source": ["http://insecure"],
                    }
                ]
            },
            "source",
        ),
        (
            {
                "causes": [
                    {
                        "id": "a",
                        "title": "t",
                        "explanation": "e",
                        "evidence": {"fact": "x", "equals": 1},
                        "source": ["https://x"],
                    }
                ]
            },
            "fix",
        ),
    ],
)
def test_malformed_catalogue_names_the_field(data: Any, field: str, tmp_path: Path) -> None:
    with pytest.raises(CatalogueError) as info:
        parse_causes(data, tmp_path / "causes.yaml")
    assert field in info.value.field
    assert str(tmp_path / "causes.yaml") in str(info.value)
    assert "fix:" in str(info.value)


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    one = {
        "id": "a",
        "title": "t",
        "explanation": "e",
        "evidence": {"fact": "x", "equals": 1},
        "fix": ["f"],
        "source": ["https://x"],
    }
    with pytest.raises(CatalogueError, match="unique"):
        parse_causes({"causes": [one, one]}, tmp_path / "c.yaml")


# --------------------------------------------------------------------------- fact helpers


@pytest.mark.parametrize(
    ("commands", "unexported", "sudo", "frontend"),
    [
        (['CMAKE_ARGS="-DGGML_CUDA=on"', "pip install llama-cpp-python"], True, False, "pip"),
        (['CMAKE_ARGS="-DGGML_CUDA=on"; pip install llama-cpp-python'], True, False, "pip"),
        (['CMAKE_ARGS="-DGGML_CUDA=on" && python -m pip install x'], True, False, "pip"),
        (['CMAKE_ARGS="-DGGML_CUDA=on" pip install llama-cpp-python'], False, False, "pip"),
        (
            ['export CMAKE_ARGS="-DGGML_CUDA=on"', "pip install llama-cpp-python"],
            False,
            False,
            "pip",
        ),
        (
            ['CMAKE_ARGS="-DGGML_CUDA=on"', "export CMAKE_ARGS", "pip install x"],
            False,
            False,
            "pip",
        ),
        (["sudo pip install llama-cpp-python"], False, True, "pip"),
        (["sudo -E pip install llama-cpp-python"], False, False, "pip"),
        (["poetry add llama-cpp-python"], False, False, "poetry"),
        (["uv pip install llama-cpp-python"], False, False, "uv"),
    ],
)
def test_install_command_analysis(
    commands: list[str], unexported: bool, sudo: bool, frontend: str
) -> None:
    facts = doctor.install_facts(commands)
    assert facts["install.unexported_cmake_args"] is unexported
    assert facts["install.sudo_pip"] is sudo
    assert facts["install.frontend"] == frontend


@pytest.mark.parametrize(
    ("archs", "caps", "expected"),
    [
        ([900], [90], "exact"),
        ([800], [86], "same-major"),
        ([750], [86], "ptx-only"),
        ([900], [61], "none"),
        ([610, 900], [61, 90], "exact"),
        ([], [90], None),
    ],
)
def test_arch_match(archs: list[int], caps: list[int], expected: str | None) -> None:
    assert doctor.arch_match(archs, caps) == expected


def test_log_facts_read_the_configure_step() -> None:
    log = "-- Including CPU backend\n-- CUDA Toolkit found\n-- Including CUDA backend\n"
    facts = doctor.log_facts(log)
    assert facts["log.configured_backends"] == ["CPU", "CUDA"]
    assert facts["log.configured_gpu_backends"] == ["CUDA"]
    cpu_only = doctor.log_facts("-- Including CPU backend\n")
    assert cpu_only["log.configured_gpu_backends"] == []
    error = doctor.log_facts("CMake Error at x.txt:1 (message):\n  LLAMA_CUBLAS is deprecated\n")
    assert "LLAMA_CUBLAS is deprecated" in error["log.cmake_error"]


def test_fill_uses_facts_and_keeps_unknown_placeholders() -> None:
    assert doctor.fill("pip install x=={llama.version}", {"llama.version": "0.3.36"}) == (
        "pip install x==0.3.36"
    )
    assert doctor.fill("A={nvidia.arch_hint}", {}) == "A={nvidia.arch_hint}"
    assert doctor.fill("A={x}", {"x": [75, 86]}) == "A=75;86"


@pytest.mark.parametrize(
    ("extra", "start"),
    [
        ({"build.compiled_backends": ["CPU"], "build.gpu_backends": []}, "CPU-only build"),
        (
            {
                "build.gpu_offload": False,
                "build.gpu_devices": [],
                "cuda.libcuda_loadable": False,
                "build.init_log": "ggml_cuda_init: failed to initialize CUDA: CUDA driver version "
                "is insufficient for CUDA runtime version",
            },
            "CUDA build, but no NVIDIA driver / no GPU",
        ),
        ({}, "CUDA build, all 3/3 layers offloaded to NVIDIA H100 80GB HBM3"),
        ({"probe.offloaded": 1}, "CUDA build, only 1/3 layers offloaded"),
        (
            {"probe.user_offloaded": 0},
            "CUDA build works (all 3/3 layers offload to NVIDIA H100 80GB HBM3 with "
            "n_gpu_layers=-1), but your Llama() arguments offload 0/3",
        ),
        ({"llama.installed": False, "llama.import_error": "No module"}, "llama-cpp-python is not"),
        ({"build.crash": "SIGILL"}, "llama_cpp crashes on import (SIGILL)"),
    ],
)
def test_verdict_line(extra: dict[str, Any], start: str) -> None:
    assert doctor.verdict({**HEALTHY, **extra}).startswith(start)
