"""verify_build(): the installed build must be the variant's build."""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import pytest

from harness.build.buildinfo import (
    BuildInfo,
    collect_in_subprocess,
    compiled_backends_of,
    parse_cpu_features,
    parse_cuda_archs,
    parse_system_info,
)
from harness.build.variants import get_variant
from harness.build.verify import CACHED_WHEEL_CAUSE, verify_build

# From FACTS.md: the CUDA wheel on a machine without a driver.
CUDA_INFO = (
    "CUDA : ARCHS = 900 | NO_VMM = 1 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | "
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
CPU_INFO = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
NATIVE_INFO = CPU_INFO + "AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | "


def info_from(
    system_info: str,
    libs: list[str],
    *,
    offload: bool = False,
    devices: list[dict[str, object]] | None = None,
) -> BuildInfo:
    sections = parse_system_info(system_info)
    return BuildInfo.from_dict(
        {
            "python": sys.executable,
            "llama_cpp_version": "0.3.36",
            "package_dir": "/venv/site-packages/llama_cpp",
            "system_info": system_info,
            "system_info_sections": sections,
            "gpu_offload": offload,
            "backend_libs": libs,
            "devices": devices or [],
            "compiled_backends": sorted(compiled_backends_of(sections, libs, [])),
            "cuda_archs": parse_cuda_archs(sections),
            "cpu_features": parse_cpu_features(sections),
            "provenance": {"source": "index"},
        }
    )


CPU_LIBS = ["libggml-base.so", "libggml-cpu.so", "libggml.so"]
CUDA_LIBS = [*CPU_LIBS, "libggml-cuda.so"]


def test_cpu_build_in_the_cuda_session_is_caught_with_cause_and_fix() -> None:
    result = verify_build(get_variant("cuda"), info_from(CPU_INFO, CPU_LIBS), gpu_present=False)
    assert not result.ok
    problem = result.problems[0]
    assert problem.check == "backend"
    assert "CPU-only build, not a CUDA build" in problem.message
    assert "libggml-cuda.so" in problem.message
    assert problem.cause == CACHED_WHEEL_CAUSE and "cached CPU wheel" in problem.cause
    assert "llama-harness build cuda --force" in problem.fix
    assert "does NOT match" in result.summary()


def test_cuda_build_without_gpu_verifies_the_compiled_backend() -> None:
    result = verify_build(get_variant("cuda"), info_from(CUDA_INFO, CUDA_LIBS), gpu_present=False)
    assert result.ok, result.summary()
    assert result.facts["cuda_archs"] == [900]
    assert "verified" in result.summary()


def test_cuda_build_with_a_gpu_must_offload() -> None:
    variant = get_variant("cuda")
    no_offload = verify_build(variant, info_from(CUDA_INFO, CUDA_LIBS), gpu_present=True,
                              gpu_arch=["90"])  # fmt: skip
    assert [p.check for p in no_offload.problems] == ["gpu"]
    gpu = {"name": "CUDA0", "description": "NVIDIA H100", "type": "GPU", "backend": "CUDA",
           "memory_free": 1, "memory_total": 2}  # fmt: skip
    good = info_from(CUDA_INFO, CUDA_LIBS, offload=True, devices=[gpu])
    assert verify_build(variant, good, gpu_present=True, gpu_arch=["90"]).ok
    wrong_arch = verify_build(variant, good, gpu_present=True, gpu_arch=["80"])
    assert [p.check for p in wrong_arch.problems] == ["cuda-archs"]
    assert "no kernel image" in wrong_arch.problems[0].message
    assert "LLAMA_HARNESS_CUDA_ARCHITECTURES=80" in wrong_arch.problems[0].fix


def test_native_build_in_the_portable_cpu_session_is_caught() -> None:
    result = verify_build(get_variant("cpu"), info_from(NATIVE_INFO, CPU_LIBS), gpu_present=False)
    assert [p.check for p in result.problems] == ["cpu-features"]
    assert "AMX_INT8 = 1" in result.problems[0].message
    assert verify_build(get_variant("cpu-native"), info_from(NATIVE_INFO, CPU_LIBS)).ok


def test_gpu_build_in_the_cpu_session_and_wrong_version() -> None:
    result = verify_build(get_variant("cpu"), info_from(CUDA_INFO, CUDA_LIBS),
                          expected_version="0.3.99")  # fmt: skip
    assert {p.check for p in result.problems} == {"backend", "version"}


def test_not_installed() -> None:
    info = BuildInfo.from_dict({"python": "/x/python", "import_error": "No module named llama_cpp"})
    result = verify_build(get_variant("cpu"), info)
    assert [p.check for p in result.problems] == ["import"]


def _wheel_with(tmp_path: Path, files: dict[str, bytes]) -> Path:
    path = tmp_path / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    rows = []
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
            rows.append(f"{name},sha256={hashlib.sha256(data).hexdigest()},{len(data)}")
        zf.writestr("llama_cpp_python-0.3.36.dist-info/RECORD", "\n".join(rows))
    return path


def test_installed_libraries_must_be_the_wheels(tmp_path: Path) -> None:
    lib = "llama_cpp/lib/libggml-cpu.so"
    wheel = _wheel_with(tmp_path, {lib: b"the cpu library"})
    info = info_from(CPU_INFO, CPU_LIBS)
    info.provenance.lib_hashes[lib] = f"sha256={hashlib.sha256(b'the cpu library').hexdigest()}"
    assert verify_build(get_variant("cpu"), info, wheel=wheel).ok
    info.provenance.lib_hashes[lib] = "sha256=" + hashlib.sha256(b"another build").hexdigest()
    result = verify_build(get_variant("cpu"), info, wheel=wheel)
    assert [p.check for p in result.problems] == ["wheel"]
    assert "--force-reinstall" in result.problems[0].fix


def test_real_installed_cpu_build_is_not_a_cuda_build() -> None:
    pytest.importorskip("llama_cpp", reason="needs a real llama-cpp-python build in this venv")
    info = collect_in_subprocess(sys.executable)
    if "CUDA" in info.compiled_backends:
        pytest.skip("this venv holds a CUDA build; the check needs a CPU-only one")
    result = verify_build(get_variant("cuda"), info, gpu_present=False)
    assert not result.ok and result.problems[0].check == "backend"
    assert "not a CUDA build" in result.problems[0].message
    assert "CPU" in result.facts["compiled_backends"]
    assert verify_build(get_variant("cpu-native"), info, gpu_present=False).ok
    if not info.cpu_features.get("AMX_INT8"):
        assert verify_build(get_variant("cpu"), info, gpu_present=False).ok
