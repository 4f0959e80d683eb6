"""Is the installed llama-cpp-python the build the variant asked for?

:func:`verify_build` compares a :class:`harness.build.buildinfo.BuildInfo` (collected in the test
session's interpreter) with a :class:`~harness.build.variants.Variant`: the compiled backends that
``llama_print_system_info()`` reports (``CUDA : ARCHS = 900 | ...``), the ``libggml-*``
libraries in the package, GPU offload support and devices when the GPU is there, the CUDA
architectures against the GPU's compute capability, CPU features a portable build must not
have, and (given the wheel) that pip installed exactly that wheel's libraries. Each problem
carries the likely cause and the fix: a CPU wheel in the cuda session is the classic
"pip reused a cached CPU wheel / CMAKE_ARGS never reached the build".

``python -m harness.build.verify VARIANT [--python PY] [--wheel WHL] [--json]`` (exit 0 / 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.build import toolchain, wheel_cache
from harness.build.buildinfo import BuildInfo, BuildInfoError, collect_in_subprocess
from harness.build.variants import Variant, get_variant, load_registry

_PORTABLE_FORBIDDEN = ("AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8")
_GPU_BACKENDS = {"CUDA", "METAL", "VULKAN", "HIP", "SYCL"}
CACHED_WHEEL_CAUSE = (
    "pip reused a cached CPU wheel (pip keeps the wheel it built and a later `pip install "
    "llama-cpp-python` serves it, ignoring new CMAKE_ARGS), or CMAKE_ARGS never reached the "
    "build (set in another shell, dropped by poetry/uv, Windows quoting)"
)


@dataclass(frozen=True)
class Problem:
    check: str
    message: str
    cause: str = ""
    fix: str = ""


@dataclass
class Verification:
    variant: str
    gpu_present: bool
    problems: list[Problem] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def summary(self) -> str:
        backends = ", ".join(self.facts.get("compiled_backends", [])) or "none"
        if self.ok:
            devices = [d for d in self.facts.get("devices", []) if not d.startswith("CPU:")]
            shown = "; ".join(
                d + (" = a software Vulkan device on the CPU, not a GPU" if _software(d) else "")
                for d in devices
            )
            return (
                f"verified: the installed llama_cpp is a {self.variant} build "
                f"(backends {backends}; {self.facts.get('system_info_head', '')})"
                + (f"; devices: {shown}" if shown else "")
            )
        lines = [f"{self.variant}: the installed llama_cpp does NOT match the variant:"]
        for p in self.problems:
            lines.append(f"  - {p.message}")
            if p.cause:
                lines.append(f"    likely cause: {p.cause}")
            if p.fix:
                lines.append(f"    fix: {p.fix}")
        return "\n".join(lines)


def _software(device: str) -> bool:
    from harness.build.vulkan_devices import is_software_name

    return is_software_name(device)


def _fix_rebuild(variant: Variant) -> str:
    return (
        f"llama-harness build {variant.name} --force, then nox -s test-{variant.name} "
        f'(by hand: CMAKE_ARGS="{variant.cmake_args_str}" pip install --no-cache-dir '
        "--force-reinstall --no-binary llama-cpp-python llama-cpp-python)"
    )


def verify_build(
    variant: Variant,
    info: BuildInfo,
    *,
    gpu_present: bool | None = None,
    wheel: Path | None = None,
    expected_version: str | None = None,
    gpu_arch: Sequence[str] | None = None,
) -> Verification:
    """Every way ``info`` can differ from ``variant``; empty ``problems`` means it matches."""
    if gpu_present is None:
        gpu_present = variant.gpu and not variant.runtime_problems()
    result = Verification(variant=variant.name, gpu_present=gpu_present)
    compiled = set(info.compiled_backends)
    result.facts = {
        "llama_cpp_version": info.llama_cpp_version,
        "package_dir": info.package_dir,
        "compiled_backends": sorted(compiled),
        "backend_libs": list(info.backend_libs),
        "gpu_offload": info.gpu_offload,
        "devices": [f"{d.backend}:{d.name} ({d.description})" for d in info.devices],
        "cuda_archs": list(info.cuda_archs),
        "system_info_head": info.system_info.split("| CPU")[0][:160].strip(),
        "provenance": info.provenance.source,
        "direct_url": info.provenance.direct_url,
    }
    add = result.problems.append
    if not info.installed or info.import_error:
        add(Problem("import", f"llama_cpp does not import in {info.python}: {info.import_error}",
                    "the wheel was not installed into this environment, or its libraries do "
                    "not load here", _fix_rebuild(variant)))  # fmt: skip
        return result
    if expected_version and info.llama_cpp_version != expected_version:
        add(Problem("version",
                    f"llama_cpp {info.llama_cpp_version} is installed, the harness pins "
                    f"{expected_version}", "another llama-cpp-python was installed over the "
                    "variant's wheel", _fix_rebuild(variant)))  # fmt: skip
    want = variant.backend
    lib = wheel_cache.BACKEND_LIBS[want]
    has_lib = any(n.startswith(f"lib{lib}.") for n in info.backend_libs)
    if want not in compiled or not has_lib:
        kind = "a CPU-only build" if not (compiled & (_GPU_BACKENDS | {"BLAS"})) else (
            f"a {'+'.join(sorted(compiled))} build")  # fmt: skip
        add(Problem(
            "backend",
            f"the installed llama_cpp is {kind}, not a {want} build: compiled backends "
            f"{', '.join(sorted(compiled)) or 'none'}; libraries "
            f"{', '.join(info.backend_libs) or 'none'} (no lib{lib}.so); system info "
            f"{info.system_info.strip()[:160]!r}; installed from "
            f"{info.provenance.direct_url or info.provenance.source}",
            CACHED_WHEEL_CAUSE,
            _fix_rebuild(variant),
        ))  # fmt: skip
    if want == "CPU" and compiled & _GPU_BACKENDS:
        add(Problem("backend",
                    f"the {variant.name} session runs a {'+'.join(sorted(compiled))} build",
                    "another variant's wheel was installed into this environment",
                    _fix_rebuild(variant)))  # fmt: skip
    if want == "CUDA" and "CUDA" in compiled:
        if not info.cuda_archs:
            add(Problem("cuda-archs", "system info has no 'CUDA : ARCHS = ...' section",
                        "an unusual CUDA build", _fix_rebuild(variant)))  # fmt: skip
        caps = list(gpu_arch) if gpu_arch is not None else (
            toolchain.gpu_compute_caps() if gpu_present else [])  # fmt: skip
        have = {a // 10 for a in info.cuda_archs}
        missing = [c for c in caps if c.isdigit() and int(c) not in have]
        if missing:
            add(Problem(
                "cuda-archs",
                f"the GPU's compute capability {', '.join(missing)} is not among the build's "
                f"CUDA architectures {info.cuda_archs} (llama.cpp would fail with 'no kernel "
                "image is available for execution on the device')",
                "the wheel was built for another GPU",
                f"LLAMA_HARNESS_CUDA_ARCHITECTURES={';'.join(missing)} llama-harness build "
                f"{variant.name} --force",
            ))  # fmt: skip
    if variant.gpu and gpu_present and want in compiled:
        gpu_devs = [d for d in info.devices if d.backend == want and d.type in ("GPU", "IGPU")]
        if not info.gpu_offload or not gpu_devs:
            init = "; ".join(info.init_log[-4:]) or "no init messages"
            add(Problem(
                "gpu",
                f"a {want} build and a GPU here, but llama_supports_gpu_offload() is "
                f"{info.gpu_offload} and the {want} backend lists "
                f"{len(gpu_devs)} GPU device(s) (init log: {init})",
                "the driver is older than the CUDA runtime, libcuda/cuBLAS are not on the "
                "loader path, or the container was started without the GPU",
                "run `llama-harness doctor --variant " + variant.name + "`",
            ))  # fmt: skip
    defines = wheel_cache.normalise_cmake_args(list(variant.cmake_args))["defines"]
    if want == "CPU" and defines.get("GGML_NATIVE") == "OFF":
        extra = [
            f for f in _PORTABLE_FORBIDDEN
            if info.cpu_features.get(f) and defines.get(f"GGML_{f}") != "ON"
        ]  # fmt: skip
        if extra:
            add(Problem(
                "cpu-features",
                f"the portable {variant.name} variant (GGML_NATIVE=OFF) reports "
                f"{', '.join(f + ' = 1' for f in extra)}: this is a -march=native build",
                "a native build's wheel was installed into this environment",
                _fix_rebuild(variant),
            ))  # fmt: skip
    if wheel is not None:
        expected = wheel_cache.wheel_record_hashes(wheel)
        installed = info.provenance.lib_hashes
        common = sorted(set(expected) & set(installed))
        differ = [p for p in common if installed[p] != expected[p]]
        if differ or (installed and not common):
            shown = ", ".join(differ[:4]) or "no library path in common"
            add(Problem(
                "wheel",
                f"the installed libraries are not the ones in {wheel.name} ({shown})",
                "pip installed another llama-cpp-python build after (or instead of) this wheel",
                f"reinstall: pip install --no-deps --force-reinstall {wheel}",
            ))  # fmt: skip
        result.facts["wheel"] = str(wheel)
    return result


def verify_python(
    variant: Variant,
    python: str,
    *,
    wheel: Path | None = None,
    gpu_present: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[Verification, BuildInfo | None]:
    """Collect the build info in ``python`` (a child process, this environment plus ``env``)
    and verify it."""
    pin = load_registry().sdist.version
    try:
        info = collect_in_subprocess(python, env={**os.environ, **env} if env else None)
    except BuildInfoError as exc:
        result = Verification(variant=variant.name, gpu_present=bool(gpu_present))
        result.problems.append(Problem("import", str(exc), "the build does not load here",
                                       _fix_rebuild(variant)))  # fmt: skip
        return result, None
    return (
        verify_build(variant, info, gpu_present=gpu_present, wheel=wheel, expected_version=pin),
        info,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.build.verify",
        description="Check that the llama_cpp installed in an interpreter matches a variant.",
    )
    parser.add_argument("variant", help="variant name (see `llama-harness variants`)")
    parser.add_argument("--python", default=sys.executable, help="interpreter to inspect")
    parser.add_argument("--wheel", type=Path, help="the wheel that should be installed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    variant = get_variant(args.variant)
    result, _ = verify_python(variant, args.python, wheel=args.wheel, env=variant.runtime_env())
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
