"""The cause catalogue (harness/doctor/causes.yaml) and the doctor's generic evidence evaluator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.doctor import doctor
from harness.doctor.doctor import CatalogueError, evaluate, load_causes, match_causes, parse_causes

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
# Causes issue #12 adds: build failures, run-time failures read from logs, catch-alls.
REQUIRED_12 = {
    "legacy-flag-ignored",
    "nvcc-too-old-for-arch",
    "nvcc-dropped-arch",
    "cuda-arch-native-no-gpu",
    "host-compiler-too-new",
    "vulkan-sdk-missing",
    "vulkan-headers-too-old",
    "cmake-missing-or-too-old",
    "cxx-compiler-missing",
    "cxx-compiler-too-old",
    "no-cuda-device",
    "wsl-libcuda-shadowed",
    "no-gpu-device-visible",
    "no-gpu-here",
    "llama-not-installed",
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
    "legacy-cuda-flag": {
        "env.CMAKE_ARGS": "-DLLAMA_CUBLAS=on",
        **doctor.switch_facts({"env.CMAKE_ARGS": "-DLLAMA_CUBLAS=on"}),
    },
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
    "legacy-flag-ignored": doctor.switch_facts(
        {"install.commands": "CMAKE_ARGS=-DLLAMA_VULKAN=on"}
    ),
    "nvcc-too-old-for-arch": {"log.unsupported_arch_support": "too-new"},
    "nvcc-dropped-arch": {"log.unsupported_arch_support": "dropped"},
    "cuda-arch-native-no-gpu": {
        "user.log": 'CUDA_ARCHITECTURES is set to "native", but no GPU was detected.'
    },
    "host-compiler-too-new": {
        "user.log": "error: #error -- unsupported GNU version! gcc versions later than 13"
    },
    "vulkan-sdk-missing": {"log.vulkan_missing": ["glslc"]},
    "vulkan-headers-too-old": {"user.log": "error: 'LayerSettingEXT' is not a member of 'vk'"},
    "cmake-missing-or-too-old": {"log.cmake_required": "3.21"},
    "cxx-compiler-missing": {"user.log": "  No CMAKE_CXX_COMPILER could be found."},
    "cxx-compiler-too-old": {"log.host_compiler": "GNU 4.8.5"},
    "no-cuda-device": {"user.log": "failed to initialize CUDA: no CUDA-capable device is detected"},
    "wsl-libcuda-shadowed": {"cuda.libcuda_shadowed": True},
    "no-gpu-device-visible": {"user.log": "ggml_vulkan: No devices found."},
    "no-rocm-device": {
        "user.log": "ggml_cuda_init: failed to initialize ROCm: no ROCm-capable device is detected"
    },
    "cuda-vs-integration-missing": {
        "user.log": "-- CUDA Toolkit found\nCMake Error at C:/CMake/Modules/"
        "CMakeDetermineCompilerId.cmake:563 (message):\n  No CUDA toolset found.\n"
    },
    "libcuda-missing-at-link": {
        "user.log": "/usr/bin/ld: warning: libcuda.so.1, needed by bin/libggml-cuda.so, not "
        "found\n/usr/bin/ld: bin/libggml-cuda.so: undefined reference to `cuMemCreate'\n"
    },
    "hip-compiler-not-rocm-clang": {
        "user.log": "-- The HIP compiler identification is unknown\nCMake Error at x.cmake:73 "
        '(message):\n  The HIP compiler\n    "/usr/bin/c++"\n  is not able to compile a '
        "simple test program.\n"
    },
    "rocm-gfx-unsupported": {
        "user.log": "rocBLAS error: Cannot read /opt/rocm/lib/rocblas/library/"
        "TensileLibrary.dat: No such file or directory for GPU arch : gfx1031\n",
        "log.rocm_gfx": "gfx1031",
        "log.rocm_gfx_override": "10.3.0",
    },
    "metal-library-not-found": {
        "user.log": "ggml_metal_init: error: Error Domain=MTLLibraryErrorDomain Code=3 "
        "\"program_source:3:10: fatal error: 'ggml-common.h' file not found\n"
    },
    "out-of-memory": {
        "user.log": "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4096.00 MiB on "
        "device 0: cudaMalloc failed: out of memory\n",
        "log.oom_request": "4.00 GiB",
    },
    "no-gpu-here": {"host.any_gpu": False},
    "llama-not-installed": {
        "llama.installed": False,
        "llama.import_error": "ModuleNotFoundError: No module named 'llama_cpp'",
    },
}


@pytest.fixture(scope="module")
def causes() -> list[doctor.Cause]:
    return load_causes()


def test_catalogue_has_every_required_cause_with_citations(causes: list[doctor.Cause]) -> None:
    ids = {c.id for c in causes}
    assert ids >= REQUIRED | REQUIRED_12, f"missing: {sorted((REQUIRED | REQUIRED_12) - ids)}"
    for cause in causes:
        assert any(
            s.startswith(("https://github.com/abetlen/", "https://github.com/ggml-org/"))
            for s in cause.source
        ) or cause.id in {"n-gpu-layers-zero"}, cause.id
        assert cause.fix and cause.explanation and cause.title


def test_readme_lists_every_cause_with_its_sources(causes: list[doctor.Cause]) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for cause in causes:
        row = next((ln for ln in readme.splitlines() if ln.startswith(f"| `{cause.id}` |")), None)
        assert row is not None, f"README.md does not list cause {cause.id}"
        for source in cause.source:
            assert source in row, f"README.md row of {cause.id} lacks {source}"


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


def test_causes_a_log_can_show_are_matched_from_log_facts_alone() -> None:
    """The same evaluator serves probes and logs: a log read by harness.doctor.build_log is
    enough."""
    log = (
        "-- The CUDA compiler identification is NVIDIA 12.4.131\n"
        "nvcc fatal   : Unsupported gpu architecture 'compute_120'\n"
        "*** CMake build failed\n"
    )
    facts = {**doctor.user_input_facts({}, [], [log]), "llama.installed": False}
    match = next(m for m in match_causes(facts) if m.cause.id == "nvcc-too-old-for-arch")
    assert any("CUDA >= 12.8" in f for f in match.fix)
    assert any("CMAKE_CUDA_ARCHITECTURES=90" in f for f in match.fix)


def test_every_fix_placeholder_is_filled_even_without_an_install_or_a_gpu() -> None:
    """A log from someone else's machine, nothing installed here: no `{...}` may remain."""
    facts: dict[str, Any] = {"llama.installed": False, "host.any_gpu": False}
    hints = doctor.hint_facts(facts)
    for cause in load_causes():
        for command in cause.fix:
            filled = doctor.fill(command, {**hints, "cuda.nvcc_hint": "/usr/bin/nvcc"})
            assert not re.search(r"\{(hint|llama)\.[\w.]+\}", filled), (cause.id, filled)


def test_generic_causes_are_declared_in_the_catalogue(causes: list[doctor.Cause]) -> None:
    assert {c.id for c in causes if c.generic} == {
        "cpu-only-build",
        "no-gpu-here",
        "llama-not-installed",
    }


def test_cpu_only_build_on_a_machine_without_gpu_gives_the_harness_route(
    causes: list[doctor.Cause],
) -> None:
    facts = {**HEALTHY, **POSITIVE["cpu-only-build"], "host.any_gpu": False}
    ids = [m.cause.id for m in match_causes(facts, causes)]
    assert "cpu-only-build" not in ids, "a CUDA rebuild cannot help on a machine without a GPU"
    route = next(m for m in match_causes(facts, causes) if m.cause.id == "no-gpu-here")
    assert any("nox -s build-cuda" in f for f in route.fix)
    assert any("--wheel" in f for f in route.fix)
    assert doctor.verdict(facts).startswith("CPU-only build on a machine with no GPU")


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
        (
            {
                "log.build_failed": True,
                "log.failed_step_label": "CMake configure",
                "log.failed_line": "Could NOT find Vulkan (missing: glslc)",
            },
            "The llama-cpp-python build in the log failed at the CMake configure step: "
            "Could NOT find Vulkan (missing: glslc). Inspected here: CUDA build, all 3/3",
        ),
    ],
)
def test_verdict_line(extra: dict[str, Any], start: str) -> None:
    assert doctor.verdict({**HEALTHY, **extra}).startswith(start)


@pytest.mark.parametrize(
    ("extra", "healthy"),
    [
        ({}, True),
        ({"log.build_failed": True}, False),
        ({"llama.installed": False}, False),
        ({"build.gpu_backends": [], "build.compiled_backends": ["CPU"]}, False),
        ({"probe.offloaded": 1}, False),
        ({"probe.user_offloaded": 0}, False),
        ({"build.gpu_devices": []}, False),
    ],
)
def test_exit_code_is_zero_only_for_a_healthy_build(
    extra: dict[str, Any], healthy: bool, causes: list[doctor.Cause]
) -> None:
    facts = {**HEALTHY, **extra}
    report = doctor.diagnose(facts, {}, causes)
    assert report.healthy is healthy
    assert report.exit_code == (0 if healthy else 1)
