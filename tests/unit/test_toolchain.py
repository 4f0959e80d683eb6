"""cuBLAS from the ``nvidia-cublas`` wheel: unpacking a freshly downloaded wheel must give
CMake the unversioned libraries it links against (the wheel ships only ``.so.13``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from harness.build import toolchain


def _fake_cublas_wheel(folder: Path, *, with_lib: bool = True) -> Path:
    wheel = folder / "nvidia_cublas-13.0.2.14-py3-none-manylinux_2_27_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        if with_lib:
            zf.writestr("nvidia/cu13/lib/libcublas.so.13", b"\x7fELF cublas")
            zf.writestr("nvidia/cu13/lib/libcublasLt.so.13", b"\x7fELF cublasLt")
        zf.writestr("nvidia/cu13/include/cublas_v2.h", "/* header */\n")
        zf.writestr("nvidia_cublas-13.0.2.14.dist-info/METADATA", "Name: nvidia-cublas\n")
    return wheel


def test_fresh_wheel_unpacks_with_unversioned_links(tmp_path: Path) -> None:
    dest = tmp_path / "toolchains"
    dest.mkdir()
    found = toolchain.unpack_cublas_wheel(_fake_cublas_wheel(tmp_path), dest, 13)
    assert found.lib == dest / "nvidia-cublas-13.0.2.14" / "nvidia" / "cu13" / "lib"
    assert (found.lib / "libcublas.so").resolve() == (found.lib / "libcublas.so.13").resolve()
    assert (found.lib / "libcublasLt.so").read_bytes() == b"\x7fELF cublasLt"
    assert (found.include / "cublas_v2.h").is_file()
    # nothing half-unpacked is left beside the result
    assert [p.name for p in dest.iterdir()] == ["nvidia-cublas-13.0.2.14"]


def test_wheel_without_the_library_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "toolchains"
    dest.mkdir()
    with pytest.raises(toolchain.ToolchainError, match=r"no nvidia/cu13/lib/libcublas\.so"):
        toolchain.unpack_cublas_wheel(_fake_cublas_wheel(tmp_path, with_lib=False), dest, 13)
    assert list(dest.iterdir()) == []
