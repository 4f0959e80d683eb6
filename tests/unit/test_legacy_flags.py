"""The legacy-switch table (harness/doctor/legacy_flags.py) against the vendored CMake of the pinned
sdist: a new sdist that maps, drops or starts reading an old name fails here."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import yaml

from harness import paths
from harness.doctor import legacy_flags

ROOT = Path(__file__).resolve().parents[2]


def _pin() -> dict[str, str]:
    data = yaml.safe_load((ROOT / "harness" / "build" / "variants.yaml").read_text())
    sdist: dict[str, str] = data["sdist"]
    return sdist


def test_table_was_checked_against_the_pinned_sdist() -> None:
    """Changing the pin without re-deriving the table fails even without the sdist at hand."""
    assert _pin()["version"] == legacy_flags.CHECKED_AGAINST, (
        "the sdist pin changed: run tests/unit/test_legacy_flags.py with the new sdist "
        "unpacked and update harness/doctor/legacy_flags.py (TABLE, CHECKED_AGAINST)"
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned sdist's CMake files: the unpacked tree, else extracted from the tarball."""
    pin = _pin()
    unpacked = paths.src_dir() / f"llama_cpp_python-{pin['version']}"
    if (unpacked / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        return unpacked
    tarball = paths.sdist_dir() / pin["filename"]
    if not tarball.is_file():
        pytest.skip(f"needs the pinned sdist ({tarball} or {unpacked}); `nox -s build-cpu`")
    dest = tmp_path_factory.mktemp("sdist")
    with tarfile.open(tarball) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.isfile() and (m.name.endswith("CMakeLists.txt") or m.name.endswith(".cmake"))
        ]
        tar.extractall(dest, members=members, filter="data")
    return next(dest.iterdir())


def test_every_entry_matches_what_the_vendored_cmake_does(source: Path) -> None:
    derived = legacy_flags.derive_from_source(source)
    table = {n: (f.status, f.replacement) for n, f in legacy_flags.TABLE.items()}
    wrong = {n: (table[n], derived[n]) for n in table if table[n] != derived[n]}
    assert not wrong, f"table vs vendored CMake (name: (table, derived)): {wrong}"


def test_ggml_names_are_read_by_ggml_so_cmake_never_warns(source: Path) -> None:
    """Why GGML_CUBLAS & co. leave no trace at all (LegacyFlag.warned)."""
    assert legacy_flags.reads_all_ggml_variables(source)
    assert not legacy_flags.TABLE["GGML_CUBLAS"].warned
    assert legacy_flags.TABLE["LLAMA_VULKAN"].warned


def test_derivation_sees_a_changed_mapping(tmp_path: Path) -> None:
    """The check can fail: a sdist that maps LLAMA_VULKAN is reported as different."""
    cmake = tmp_path / "vendor" / "llama.cpp" / "CMakeLists.txt"
    cmake.parent.mkdir(parents=True)
    cmake.write_text(
        "llama_option_depr(FATAL_ERROR LLAMA_CUBLAS GGML_CUDA)\n"
        "llama_option_depr(WARNING LLAMA_VULKAN GGML_VULKAN)\n"
        'option(GGML_VULKAN "x" OFF)\n'
    )
    derived = legacy_flags.derive_from_source(tmp_path)
    assert derived["LLAMA_VULKAN"] == ("mapped", "GGML_VULKAN")
    assert derived["LLAMA_CUBLAS"] == ("fatal", "GGML_CUDA")
    assert derived["LLAMA_HIPBLAS"] == ("silent", None)  # GGML_HIP is no option there


def test_switches_in_command_lines() -> None:
    text = 'CMAKE_ARGS="-DLLAMA_VULKAN=on -DGGML_NATIVE:BOOL=OFF -D LLAMA_CUBLAS=1" pip install x'
    switches = legacy_flags.defines(text)
    assert switches == {"LLAMA_VULKAN": "on", "GGML_NATIVE": "OFF", "LLAMA_CUBLAS": "1"}
    on = [n for n, v in switches.items() if legacy_flags.is_on(v)]
    by_status = legacy_flags.classify(on)
    assert by_status["silent"] == ["LLAMA_VULKAN"]
    assert by_status["fatal"] == ["LLAMA_CUBLAS"]
    assert legacy_flags.replacement_args(["LLAMA_VULKAN", "LLAMA_HIPBLAS"]) == (
        "-DGGML_VULKAN=on -DGGML_HIP=on"
    )
    assert legacy_flags.requested_gpu_backends(switches) == ["VULKAN", "CUDA"]
    assert legacy_flags.requested_gpu_backends({"LLAMA_CUBLAS": "OFF"}) == []
