"""Compilers and the CUDA toolchain: identities for the wheel-cache key, CUDA architectures,
and cuBLAS from the ``nvidia-cublas`` PyPI wheel when the CUDA toolkit has none.

``toolchain: cuda`` in a variant makes :func:`cuda_cmake_args` add:

* ``-DCMAKE_CUDA_ARCHITECTURES``: unless the variant sets it, from
  ``$LLAMA_HARNESS_CUDA_ARCHITECTURES``, else the compute capability ``nvidia-smi`` reports,
  else the registry's ``cuda_default_architectures``;
* when the toolkit lacks cuBLAS (this machine's does): ``-DCUDA_cublas_LIBRARY``,
  ``-DCUDA_cublasLt_LIBRARY`` and ``-DCMAKE_CUDA_FLAGS=-I<include>`` pointing into the
  unpacked ``nvidia-cublas`` wheel under ``harness.paths.toolchains_dir()``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from harness import paths
from saiverse_llm import devices
from saiverse_llm.atomic import publish_dir

ARCH_ENV = "LLAMA_HARNESS_CUDA_ARCHITECTURES"
#: Environment variables that change what a build produces (part of the cache key).
BUILD_ENV_VARS = (
    "CC",
    "CXX",
    "CFLAGS",
    "CXXFLAGS",
    "CPPFLAGS",
    "LDFLAGS",
    "CUDACXX",
    "CUDAHOSTCXX",
    "CUDAFLAGS",
    "CUDA_HOME",
    "CUDA_PATH",
    "NVCC_APPEND_FLAGS",
    "NVCC_PREPEND_FLAGS",
    "CMAKE_GENERATOR",
    "CMAKE_TOOLCHAIN_FILE",
    "CMAKE_BUILD_TYPE",
    "CMAKE_OSX_ARCHITECTURES",
    "MACOSX_DEPLOYMENT_TARGET",
    "FORCE_CMAKE",
    "SKBUILD_CMAKE_ARGS",
    "SKBUILD_CMAKE_DEFINE",
    "SKBUILD_CMAKE_BUILD_TYPE",
)


class ToolchainError(RuntimeError):
    """A tool the build needs is missing or unusable; the message names the fix."""


def run_quiet(cmd: list[str], timeout: float = 30.0) -> str | None:
    """stdout+stderr of ``cmd``, or None when it cannot run or fails."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout + proc.stderr


def first_line(text: str | None) -> str:
    if not text:
        return "missing"
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "missing"


def tool_version(name: str) -> str:
    """``<resolved path>: <first line of --version>`` or ``missing``."""
    exe = shutil.which(name)
    if exe is None:
        return "missing"
    return f"{os.path.realpath(exe)}: {first_line(run_quiet([exe, '--version']))}"


def nvcc_path() -> str | None:
    return os.environ.get("CUDACXX") or shutil.which("nvcc")


def nvcc_version() -> str:
    """The "Cuda compilation tools, release 13.0, V13.0.88" line, or ``missing``."""
    exe = nvcc_path()
    if exe is None:
        return "missing"
    text = run_quiet([exe, "--version"]) or ""
    for line in text.splitlines():
        if "release" in line:
            return line.strip()
    return first_line(text)


def cuda_release() -> tuple[int, int] | None:
    match = re.search(r"release (\d+)\.(\d+)", nvcc_version())
    return (int(match.group(1)), int(match.group(2))) if match else None


def compiler_identities(*, cuda: bool) -> dict[str, str]:
    """What compiles the wheel: C/C++ compilers, CMake, Ninja and (CUDA) nvcc."""
    ids = {
        "cc": tool_version(os.environ.get("CC", "cc")),
        "cxx": tool_version(os.environ.get("CXX", "c++")),
        "cmake": tool_version("cmake"),
        "ninja": tool_version("ninja"),
    }
    if cuda:
        ids["nvcc"] = nvcc_version()
    return ids


def ccache_counters() -> dict[str, int] | None:
    """ccache's hit/miss counters (``ccache --print-stats``), or None without ccache."""
    if shutil.which("ccache") is None:
        return None
    text = run_quiet(["ccache", "--print-stats"])
    if not text:
        return None
    stats = {}
    for line in text.splitlines():
        name, _, value = line.partition("\t")
        if value.strip().isdigit():
            stats[name.strip()] = int(value)
    hits = stats.get("direct_cache_hit", 0) + stats.get("preprocessed_cache_hit", 0)
    return {"hits": hits, "misses": stats.get("cache_miss", 0)}


# --------------------------------------------------------------------------- architectures


def gpu_compute_caps() -> list[str]:
    """Compute capabilities from nvidia-smi as CMake architectures ("9.0" -> "90")."""
    caps = [g.compute_cap_number for g in devices.query_nvidia().gpus]
    return sorted({str(c) for c in caps if c is not None})


def cuda_architectures(default: str) -> tuple[str, str]:
    """(architectures, where they came from) for a variant that does not set them."""
    env = os.environ.get(ARCH_ENV, "").strip()
    if env:
        if not re.fullmatch(r"[0-9a-z;,-]+", env):
            raise ToolchainError(
                f"${ARCH_ENV}={env!r} is not a CMake architecture list; fix: use e.g. "
                f"{ARCH_ENV}=90 or {ARCH_ENV}='86;90'"
            )
        return env.replace(",", ";"), f"${ARCH_ENV}"
    caps = gpu_compute_caps()
    if caps:
        return ";".join(caps), "nvidia-smi compute_cap"
    return default, "default list (no GPU found; set $LLAMA_HARNESS_CUDA_ARCHITECTURES)"


#: Which nvcc releases compile for a GPU architecture (CMake's number: 120 = compute
#: capability 12.0): arch -> (first CUDA release that knows it, or None when older than
#: CUDA 11; the last CUDA major release that still compiles for it, or None: still current).
#: From NVIDIA's CUDA Toolkit release notes (sm_80 11.0, sm_86 11.1, sm_87 11.4, sm_89 and
#: sm_90 11.8, sm_100/sm_120 12.8, sm_103/sm_121 12.9, sm_101 renamed sm_110 in 13.0;
#: Kepler sm_35/37 dropped in 12.0; Maxwell, Pascal and Volta dropped in 13.0), the same
#: minimums in the vendored ggml-cuda CMakeLists.txt comments, and `nvcc --list-gpu-arch`
#: of nvcc 13.0.88 on the build machine (lowest: compute_75).
CUDA_ARCH_RELEASES: dict[int, tuple[tuple[int, int] | None, int | None]] = {
    35: (None, 11),
    37: (None, 11),
    50: (None, 12),
    52: (None, 12),
    53: (None, 12),
    60: (None, 12),
    61: (None, 12),
    62: (None, 12),
    70: (None, 12),
    72: (None, 12),
    75: (None, None),
    80: ((11, 0), None),
    86: ((11, 1), None),
    87: ((11, 4), None),
    89: ((11, 8), None),
    90: ((11, 8), None),
    100: ((12, 8), None),
    101: ((12, 8), 12),
    103: ((12, 9), None),
    110: ((13, 0), None),
    120: ((12, 8), None),
    121: ((12, 9), None),
}


def arch_number(text: str) -> int | None:
    """The architecture number in ``compute_120a`` / ``sm_90`` / ``120a-real`` / ``8.6``."""
    m = re.search(r"(?:compute_|sm_)?(\d+)\.(\d)\b", text)
    if m and "_" not in text:
        return int(m.group(1)) * 10 + int(m.group(2))
    m = re.search(r"(?:compute_|sm_)?(\d{2,3})", text)
    return int(m.group(1)) if m else None


def release_tuple(version: str | None) -> tuple[int, int] | None:
    """``"12.4.131"`` / ``"12.4"`` -> (12, 4); None when there is no version."""
    m = re.match(r"\s*(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def arch_support(arch: int, release: tuple[int, int] | None) -> str | None:
    """``ok`` / ``too-new`` (the nvcc predates the architecture) / ``dropped`` (this nvcc no
    longer compiles for it) / None (architecture or release unknown)."""
    known = CUDA_ARCH_RELEASES.get(arch)
    if known is None or release is None:
        return None
    first, last_major = known
    if first is not None and release < first:
        return "too-new"
    if last_major is not None and release[0] > last_major:
        return "dropped"
    return "ok"


#: Embedded (Jetson/Thor/GB10) architectures: never suggested as a fallback for a desktop or
#: data-centre GPU.
TEGRA_ARCHS = frozenset({53, 62, 72, 87, 101, 110, 121})


def fallback_arch(release: tuple[int, int] | None, below: int) -> int | None:
    """The newest non-Tegra architecture <= ``below`` that nvcc ``release`` compiles for: PTX
    built for it is JIT-compiled by the driver on newer GPUs (slower first start, same
    results)."""
    if release is None:
        return None
    usable = [
        a
        for a in CUDA_ARCH_RELEASES
        if a <= below and a not in TEGRA_ARCHS and arch_support(a, release) == "ok"
    ]
    return max(usable) if usable else None


# --------------------------------------------------------------------------- cuBLAS


@dataclass(frozen=True)
class Cublas:
    lib: Path  # folder with libcublas.so and libcublasLt.so
    include: Path  # folder with cublas_v2.h
    source: str  # "toolkit" or "nvidia-cublas wheel <version>"


def _toolkit_roots() -> list[Path]:
    roots: list[Path] = []
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            roots.append(Path(os.environ[env]))
    exe = nvcc_path()
    if exe:
        roots.append(Path(os.path.realpath(exe)).parent.parent)
        # a wrapper script (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`)
        try:
            head = Path(exe).read_bytes()[:400].decode("utf-8", "replace")
        except OSError:
            head = ""
        match = re.search(r"(/\S+)/bin/nvcc", head)
        if match:
            roots.append(Path(match.group(1)))
    roots += [Path(p) for p in sorted(glob.glob("/usr/local/cuda*"))]
    return list(dict.fromkeys(roots))


def toolkit_cublas() -> Cublas | None:
    """cuBLAS inside the CUDA toolkit (or the system), if it is complete."""
    for root in _toolkit_roots():
        libs = [root / "lib64", root / "lib", *map(Path, glob.glob(str(root / "targets/*/lib")))]
        incs = [root / "include", *map(Path, glob.glob(str(root / "targets/*/include")))]
        lib = next((d for d in libs if (d / "libcublas.so").exists()), None)
        inc = next((d for d in incs if (d / "cublas_v2.h").exists()), None)
        if lib and inc and (lib / "libcublasLt.so").exists():
            return Cublas(lib=lib, include=inc, source=f"toolkit {root}")
    return None


def _wheel_cublas_dir(root: Path, major: int) -> Cublas | None:
    base = root / "nvidia" / f"cu{major}"
    if not base.is_dir():
        base = root / "nvidia" / "cublas"
    lib, inc = base / "lib", base / "include"
    if (
        (lib / "libcublas.so").exists()
        and (lib / "libcublasLt.so").exists()
        and (inc / "cublas_v2.h").exists()
    ):
        return Cublas(lib=lib, include=inc, source=f"nvidia-cublas wheel {root.name}")
    return None


def cached_wheel_cublas(major: int) -> Cublas | None:
    """An ``nvidia-cublas`` wheel already unpacked under toolchains_dir() for CUDA ``major``."""
    for root in sorted(paths.toolchains_dir().glob("nvidia-cublas*"), reverse=True):
        found = _wheel_cublas_dir(root, major)
        if found:
            return found
    return None


def _link_unversioned(lib: Path) -> None:
    """The wheel ships libcublas.so.13; CMake wants libcublas.so."""
    for name in ("libcublas", "libcublasLt"):
        target = lib / f"{name}.so"
        if target.exists():
            continue
        versioned = sorted(lib.glob(f"{name}.so.*"))
        if versioned:
            target.symlink_to(versioned[0].name)


def fetch_cublas(major: int, minor: int) -> Cublas:
    """Download the ``nvidia-cublas`` wheel matching CUDA ``major.minor`` with pip, unpack it
    under toolchains_dir() (temp folder, then rename) and add the unversioned links."""
    package = "nvidia-cublas" if major >= 13 else f"nvidia-cublas-cu{major}"
    spec = f"{package}=={major}.{minor}.*"
    dest_root = paths.toolchains_dir()
    dest_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_root, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "-d", tmp, spec]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-8:])
            raise ToolchainError(
                f"the CUDA toolkit has no cuBLAS and `pip download {spec}` failed:\n{tail}\n"
                "fix: install cuBLAS with the toolkit (apt-get install libcublas-dev-"
                f"{major}-{minor}) or make PyPI reachable so the harness can fetch {package}"
            )
        return unpack_cublas_wheel(wheels[0], dest_root, major)


def unpack_cublas_wheel(wheel: Path, dest_root: Path, major: int) -> Cublas:
    """Unpack an ``nvidia-cublas`` wheel into ``dest_root/<package>-<version>`` (temp folder,
    then rename) with the unversioned ``libcublas.so``/``libcublasLt.so`` links CMake needs."""
    package, version = wheel.name.split("-")[:2]
    with tempfile.TemporaryDirectory(dir=dest_root, prefix=".unpack-") as tmp:
        unpack = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(unpack)
        for lib in (unpack / "nvidia" / f"cu{major}" / "lib", unpack / "nvidia" / "cublas" / "lib"):
            if lib.is_dir():
                _link_unversioned(lib)
        if _wheel_cublas_dir(unpack, major) is None:
            raise ToolchainError(
                f"{wheel.name} has no nvidia/cu{major}/lib/libcublas.so*; fix: set "
                "CUDA_HOME to a toolkit with cuBLAS"
            )
        final = dest_root / f"{package.replace('_', '-')}-{version}"
        publish_dir(unpack, final)
    result = _wheel_cublas_dir(final, major)
    assert result is not None
    return result


def ensure_cublas() -> Cublas:
    """cuBLAS for the build: the toolkit's, else an unpacked (or freshly fetched) wheel."""
    found = toolkit_cublas()
    if found:
        return found
    release = cuda_release()
    if release is None:
        raise ToolchainError(
            "nvcc not found: the CUDA toolkit is needed to build the cuda variant; fix: "
            "install the CUDA toolkit and put its bin/ on PATH (or set CUDACXX)"
        )
    cached = cached_wheel_cublas(release[0])
    if cached:
        return cached
    return fetch_cublas(*release)


def _has_define(args: list[str], name: str) -> str | None:
    value = None
    for arg in args:
        match = re.match(rf"-D{re.escape(name)}(?::[A-Za-z]+)?=(.*)$", arg)
        if match:
            value = match.group(1)
    return value


def cuda_cmake_args(args: list[str], default_archs: str) -> tuple[list[str], list[str]]:
    """(extra CMake args, notes) for a ``toolchain: cuda`` variant."""
    extra: list[str] = []
    notes: list[str] = []
    if _has_define(args, "CMAKE_CUDA_ARCHITECTURES") is None:
        archs, source = cuda_architectures(default_archs)
        extra.append(f"-DCMAKE_CUDA_ARCHITECTURES={archs}")
        notes.append(f"CUDA architectures {archs} ({source})")
    cublas = ensure_cublas()
    notes.append(f"cuBLAS from {cublas.source}")
    if not cublas.source.startswith("toolkit"):
        extra += [
            f"-DCUDA_cublas_LIBRARY={cublas.lib / 'libcublas.so'}",
            f"-DCUDA_cublasLt_LIBRARY={cublas.lib / 'libcublasLt.so'}",
        ]
        flags = _has_define(args, "CMAKE_CUDA_FLAGS")
        include = f"-I{cublas.include}"
        extra.append(f"-DCMAKE_CUDA_FLAGS={flags + ' ' + include if flags else include}")
    return extra, notes
