"""The build-variant registry: ``harness/build/variants.yaml`` plus an optional user file.

A :class:`Variant` names the CMake flags of one llama-cpp-python build, where it builds,
what the build and the run need (each check with the fix to apply when it fails) and the
backend the built library must report. Users add variants (``extends:`` another one) in
``$LLAMA_HARNESS_VARIANTS`` or ``~/.config/llama-harness/variants.yaml`` without touching
code. Every error names the file, the variant, the field, the bad value and the fix.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from saiverse_llm import devices

BUILTIN_FILE = Path(__file__).with_name("variants.yaml")
BACKENDS = ("CPU", "CUDA", "METAL", "VULKAN", "BLAS")
TOOLCHAINS = ("cuda", "vulkan")
PROBES = ("nvidia-gpu", "apple-gpu", "vulkan-device")
_CHECK_KINDS = ("command", "file", "pkg_config", "any_of", "probe", "vulkan_headers")
_VARIANT_FIELDS = {
    "description",
    "cmake_args",
    "backend",
    "gpu",
    "platforms",
    "build_requires",
    "runtime_requires",
    "toolchain",
    "env",
    "configure_evidence",
    "default",
    "tags",
    "extends",
}


class VariantError(ValueError):
    """A variants file is invalid, or a variant name is unknown."""

    def __init__(
        self, message: str, *, file: Path | None = None, variant: str | None = None,
        field: str | None = None, value: object = None, fix: str = "",
    ) -> None:  # fmt: skip
        where = ", ".join(
            part
            for part in (
                f"{file}" if file else "",
                f"variant {variant!r}" if variant else "",
                f"field {field!r}" if field else "",
            )
            if part
        )
        text = f"{where}: {message}" if where else message
        if value is not None:
            text += f" (got {value!r})"
        if fix:
            text += f". Fix: {fix}"
        super().__init__(text)
        self.file = file
        self.variant = variant
        self.field = field
        self.value = value
        self.fix = fix


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    what: str
    detail: str
    fix: str


@dataclass(frozen=True)
class Requirement:
    """One build or runtime check: ``kind`` is command, file, pkg_config, any_of, probe or
    vulkan_headers (``value``: the minimum header version, e.g. ``("1.3.272",)``)."""

    kind: str
    value: tuple[str, ...] = ()
    options: tuple[Requirement, ...] = ()
    what: str = ""
    fix: str = ""

    def label(self) -> str:
        if self.what:
            return self.what
        if self.kind == "any_of":
            return " or ".join(o.label() for o in self.options)
        if self.kind == "pkg_config":
            return f"pkg-config {self.value[0]}"
        if self.kind == "vulkan_headers":
            return f"Vulkan headers >= {self.value[0]}"
        return f"{self.kind} {' | '.join(self.value)}"

    def check(self) -> CheckResult:
        ok, detail = _run_check(self)
        return CheckResult(ok=ok, what=self.label(), detail=detail, fix=self.fix)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        if self.value:
            data["value"] = list(self.value)
        if self.options:
            data["any_of"] = [o.to_dict() for o in self.options]
        if self.what:
            data["what"] = self.what
        if self.fix:
            data["fix"] = self.fix
        return data


@dataclass(frozen=True)
class Variant:
    """One llama-cpp-python build variant."""

    name: str
    backend: str
    gpu: bool
    cmake_args: tuple[str, ...]
    description: str = ""
    platforms: tuple[str, ...] = ("*",)
    build_requires: tuple[Requirement, ...] = ()
    runtime_requires: tuple[Requirement, ...] = ()
    toolchain: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    configure_evidence: tuple[str, ...] = ()
    default: bool = True
    tags: tuple[str, ...] = ()
    source: Path | None = None
    extends: str | None = None

    @property
    def cmake_args_str(self) -> str:
        import shlex

        return shlex.join(self.cmake_args)

    def supports_platform(self, tag: str | None = None) -> bool:
        tag = tag or platform_tag()
        return any(fnmatch.fnmatch(tag, pattern) for pattern in self.platforms)

    def build_problems(self) -> list[CheckResult]:
        """Failed build checks (empty when this machine can build the variant)."""
        problems: list[CheckResult] = []
        if not self.supports_platform():
            problems.append(
                CheckResult(
                    ok=False,
                    what=f"platform {platform_tag()}",
                    detail=f"{self.name} builds on {', '.join(self.platforms)}",
                    fix=f"run it on {', '.join(self.platforms)}",
                )
            )
            return problems
        for req in self.build_requires:
            result = req.check()
            if not result.ok and req.kind == "vulkan_headers":
                result = self._vulkan_headers_check(req, result)
            if not result.ok:
                problems.append(result)
        return problems

    def _vulkan_headers_check(self, req: Requirement, failed: CheckResult) -> CheckResult:
        """Headers given by -DVulkan_INCLUDE_DIR, or (``toolchain: vulkan``) cached or
        fetchable from Debian, satisfy a ``vulkan_headers`` check the system's headers fail."""
        from harness.build import vulkan_headers as vh

        minimum = vh.parse_version(req.value[0])
        explicit = vh.explicit_include(list(self.cmake_args))
        if explicit is not None:
            got = vh.header_version(explicit)
            ok = got is not None and got >= minimum
            shown = vh.format_version(got) if got else "no vulkan/vulkan_core.h"
            return CheckResult(ok=ok, what=failed.what, fix=failed.fix,
                               detail=f"-DVulkan_INCLUDE_DIR={explicit}: {shown}")  # fmt: skip
        if self.toolchain != "vulkan":
            return failed
        cached = vh.cached_headers(minimum)
        if cached is not None:
            return CheckResult(ok=True, what=failed.what, fix=failed.fix,
                               detail=f"{failed.detail}; using {cached.version_str} "
                               f"({cached.source}) from the harness cache")  # fmt: skip
        can, how = vh.can_fetch()
        if can:
            return CheckResult(ok=True, what=failed.what, fix=failed.fix,
                               detail=f"{failed.detail}; the build will {how}")  # fmt: skip
        return CheckResult(ok=False, what=failed.what, fix=failed.fix,
                           detail=f"{failed.detail}; cannot fetch newer ones: {how}")  # fmt: skip

    def runtime_env(self) -> dict[str, str]:
        """What a run of this variant's build needs in its environment: for Vulkan on a
        machine whose only device is a software one (llvmpipe), GGML_VK_VISIBLE_DEVICES
        selecting it (llama.cpp skips CPU-type Vulkan devices otherwise)."""
        if self.backend == "VULKAN":
            from harness.build import vulkan_devices

            return vulkan_devices.runtime_env()
        return {}

    def runtime_problems(self) -> list[CheckResult]:
        """Failed runtime checks (empty when this machine can run the variant's build)."""
        return [r for r in (req.check() for req in self.runtime_requires) if not r.ok]

    def skip_reason(self) -> str | None:
        """Why this variant cannot be built here, in one line, or None."""
        problems = self.build_problems()
        if not problems:
            return None
        p = problems[0]
        if p.what.startswith("platform "):
            return f"{self.name}: builds on {', '.join(self.platforms)}, this is {platform_tag()}"
        return f"{self.name}: needs {p.what} ({p.detail}); fix: {p.fix}"

    def tag_list(self) -> list[str]:
        tags = [self.name, *self.tags]
        tags.append("gpu" if self.gpu else "cpu")
        return sorted(set(tags))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "backend": self.backend,
            "gpu": self.gpu,
            "cmake_args": list(self.cmake_args),
            "platforms": list(self.platforms),
            "build_requires": [r.to_dict() for r in self.build_requires],
            "runtime_requires": [r.to_dict() for r in self.runtime_requires],
            "toolchain": self.toolchain,
            "env": dict(self.env),
            "configure_evidence": list(self.configure_evidence),
            "default": self.default,
            "tags": self.tag_list(),
            "extends": self.extends,
            "source": str(self.source) if self.source else None,
        }


@dataclass(frozen=True)
class SdistPin:
    version: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class Registry:
    variants: dict[str, Variant]
    sdist: SdistPin
    cuda_default_architectures: str
    files: tuple[Path, ...]


# --------------------------------------------------------------------------- checks


def platform_tag() -> str:
    """``<os>-<machine>`` of this Python, e.g. ``linux-x86_64``, ``darwin-arm64``."""
    system = sys.platform
    if system.startswith("linux"):
        system = "linux"
    elif system == "win32":
        system = "windows"
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "aarch64": "aarch64", "arm64": "arm64"}.get(machine, machine)
    if system == "windows" and machine == "x86_64":
        machine = "amd64"
    return f"{system}-{machine}"


def _quiet(cmd: Sequence[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None


@cache
def nvidia_gpus() -> tuple[str, ...]:
    """GPU lines from ``nvidia-smi -L`` (empty without a driver or GPU)."""
    return devices.nvidia_gpu_lines(_quiet)


def _probe_nvidia_gpu() -> tuple[bool, str]:
    if not devices.nvidia_smi_found():
        return False, "nvidia-smi not found (no NVIDIA driver)"
    gpus = nvidia_gpus()
    if not gpus:
        return False, "nvidia-smi lists no GPU"
    return True, "; ".join(gpus)


#: What macOS virtual machines (GitHub's hosted macOS runners among them) show as their GPU.
#: llama.cpp there logs "GPU name: Apple Paravirtual device", "simdgroup reduction support =
#: false" and skips most Metal kernels; runs hang or fail (llama.cpp issues #8617, #6628).
APPLE_VM_GPU = "Apple Paravirtual device"


def apple_gpu_verdict(machine: str, vm: bool, displays: str) -> tuple[bool, str]:
    """Whether Metal has a real Apple GPU here, from the machine (``platform.machine()``),
    whether macOS runs in a VM (``sysctl kern.hv_vmm_present``) and the
    ``system_profiler SPDisplaysDataType`` text."""
    if machine != "arm64":
        return False, f"Python runs as {machine} (Rosetta?), Metal needs arm64"
    if APPLE_VM_GPU.lower() in displays.lower() or vm:
        return False, (
            f"macOS runs in a virtual machine whose GPU is the {APPLE_VM_GPU} (no simdgroup "
            "or MPS support; GitHub's hosted macOS runners are such VMs): llama.cpp's Metal "
            "kernels do not run there (llama.cpp#8617); use a physical Apple Silicon Mac"
        )
    return True, "Apple Silicon"


def _probe_apple_gpu() -> tuple[bool, str]:
    if sys.platform != "darwin":
        return False, f"not macOS ({sys.platform})"
    hv = _quiet(["sysctl", "-n", "kern.hv_vmm_present"])
    vm = hv is not None and hv.returncode == 0 and hv.stdout.strip() == "1"
    displays = _quiet(["system_profiler", "SPDisplaysDataType"], timeout=30)
    text = displays.stdout if displays is not None and displays.returncode == 0 else ""
    return apple_gpu_verdict(platform.machine(), vm, text)


def _probe_vulkan_device() -> tuple[bool, str]:
    from harness.build import vulkan_devices

    return vulkan_devices.probe()


_PROBE_FUNCS: dict[str, Callable[[], tuple[bool, str]]] = {
    "nvidia-gpu": _probe_nvidia_gpu,
    "apple-gpu": _probe_apple_gpu,
    "vulkan-device": _probe_vulkan_device,
}


def _run_check(req: Requirement) -> tuple[bool, str]:
    if req.kind == "command":
        for name in req.value:
            found = shutil.which(name)
            if found:
                return True, found
        return False, f"{' / '.join(req.value)} not found on PATH"
    if req.kind == "file":
        for pattern in req.value:
            hits = sorted(glob.glob(os.path.expandvars(os.path.expanduser(pattern))))
            if hits:
                return True, hits[0]
        return False, f"no file matches {', '.join(req.value)}"
    if req.kind == "pkg_config":
        if shutil.which("pkg-config") is None:
            return False, "pkg-config not found"
        proc = _quiet(["pkg-config", "--exists", req.value[0]])
        if proc is not None and proc.returncode == 0:
            return True, f"pkg-config {req.value[0]}"
        return False, f"pkg-config does not know {req.value[0]}"
    if req.kind == "any_of":
        details = []
        for option in req.options:
            ok, detail = _run_check(option)
            if ok:
                return True, detail
            details.append(detail)
        return False, "; ".join(details)
    if req.kind == "probe":
        return _PROBE_FUNCS[req.value[0]]()
    if req.kind == "vulkan_headers":
        from harness.build import vulkan_headers as vh

        have = vh.system_headers()
        minimum = vh.parse_version(req.value[0])
        if have is not None and have.version >= minimum:
            return True, f"{have.version_str} in {have.include}"
        return False, vh.too_old_message(have, minimum, "")
    raise AssertionError(f"unknown check kind {req.kind}")


# --------------------------------------------------------------------------- parsing


def _parse_requirement(raw: object, *, file: Path, variant: str, field_name: str) -> Requirement:
    def err(message: str, value: object = None, fix: str = "") -> VariantError:
        return VariantError(message, file=file, variant=variant, field=field_name, value=value,
                            fix=fix)  # fmt: skip

    if not isinstance(raw, Mapping):
        raise err(
            "each check must be a mapping", raw, "write e.g. `- command: nvcc` with `fix: ...`"
        )
    kinds = [k for k in _CHECK_KINDS if k in raw]
    unknown = set(raw) - set(_CHECK_KINDS) - {"fix", "what"}
    if unknown:
        raise err(
            f"unknown key(s) {', '.join(sorted(map(str, unknown)))} in a check",
            dict(raw),
            f"use one of {', '.join(_CHECK_KINDS)} plus fix/what",
        )
    if len(kinds) != 1:
        raise err(
            "a check needs exactly one of " + ", ".join(_CHECK_KINDS),
            dict(raw),
            "split it into one check per line, or group alternatives under any_of",
        )
    kind = kinds[0]
    fix = raw.get("fix", "")
    what = raw.get("what", "")
    if not isinstance(fix, str) or not isinstance(what, str):
        raise err("fix and what must be strings", dict(raw), "quote the text")
    value = raw[kind]
    if kind == "any_of":
        if not isinstance(value, list) or not value:
            raise err("any_of needs a non-empty list of checks", value, "list the alternatives")
        options = tuple(
            _parse_requirement(o, file=file, variant=variant, field_name=field_name) for o in value
        )
        return Requirement(kind="any_of", options=options, what=what, fix=fix)
    values: list[object] = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise err(f"{kind} needs a non-empty string (or list of strings)", value, "quote it")
    if kind == "vulkan_headers":
        from harness.build.vulkan_headers import parse_version

        try:
            parse_version(str(values[0]))
        except ValueError:
            raise err("vulkan_headers needs a version MAJOR.MINOR.PATCH", values[0],
                      'write e.g. vulkan_headers: "1.3.272"') from None  # fmt: skip
    if kind == "probe" and values[0] not in PROBES:
        raise err(f"unknown probe {values[0]!r}", values[0], f"use one of {', '.join(PROBES)}")
    return Requirement(kind=kind, value=tuple(str(v) for v in values), what=what, fix=fix)


def _str_list(raw: object, *, file: Path, variant: str, field_name: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        import shlex

        return tuple(shlex.split(raw))
    if not isinstance(raw, list) or not all(isinstance(v, str | int | float) for v in raw):
        raise VariantError(
            "must be a list of strings",
            file=file,
            variant=variant,
            field=field_name,
            value=raw,
            fix="write it as [a, b] or one item per line with '- '",
        )
    return tuple(str(v) for v in raw)


def _merge(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """``extends``: child fields replace the base's, except cmake_args / tags / env which add."""
    merged = dict(base)
    merged.pop("extends", None)
    for key, value in child.items():
        if key == "cmake_args":
            merged[key] = [*base.get("cmake_args", []), *value]
        elif key == "tags":
            merged[key] = sorted({*base.get("tags", []), *value})
        elif key == "env":
            merged[key] = {**base.get("env", {}), **value}
        else:
            merged[key] = value
    return merged


def _build_variant(name: str, data: Mapping[str, Any], *, file: Path) -> Variant:
    def err(field_name: str, message: str, value: object, fix: str) -> VariantError:
        return VariantError(message, file=file, variant=name, field=field_name, value=value,
                            fix=fix)  # fmt: skip

    unknown = set(data) - _VARIANT_FIELDS
    if unknown:
        bad = sorted(map(str, unknown))[0]
        raise err(bad, "unknown field", bad, f"use one of {', '.join(sorted(_VARIANT_FIELDS))}")
    backend = data.get("backend")
    if not isinstance(backend, str) or backend.upper() not in BACKENDS:
        raise err("backend", "unknown or missing backend", backend, f"use one of {BACKENDS}")
    gpu = data.get("gpu", False)
    if not isinstance(gpu, bool):
        raise err("gpu", "must be true or false", gpu, "write gpu: true or gpu: false")
    default = data.get("default", True)
    if not isinstance(default, bool):
        raise err("default", "must be true or false", default, "write default: false")
    toolchain = data.get("toolchain")
    if toolchain is not None and toolchain not in TOOLCHAINS:
        raise err("toolchain", "unknown toolchain", toolchain, f"use one of {TOOLCHAINS}")
    env = data.get("env", {}) or {}
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) for k, v in env.items()
    ):
        raise err("env", "must map names to strings", env, 'write env: {CC: "gcc-12"}')
    cmake_args = _str_list(data.get("cmake_args", []), file=file, variant=name,
                           field_name="cmake_args")  # fmt: skip
    for arg in cmake_args:
        if arg.startswith("-D") and "=" not in arg and arg != "-D":
            raise err("cmake_args", "a -D flag needs NAME=VALUE", arg, "write e.g. -DGGML_CUDA=on")
    platforms = _str_list(data.get("platforms", ["*"]), file=file, variant=name,
                          field_name="platforms")  # fmt: skip
    evidence = _str_list(data.get("configure_evidence", []), file=file, variant=name,
                         field_name="configure_evidence")  # fmt: skip
    for pattern in evidence:
        import re

        try:
            re.compile(pattern)
        except re.error as exc:
            raise err("configure_evidence", f"bad regular expression: {exc}", pattern,
                      "escape special characters") from exc  # fmt: skip
    reqs = {}
    for key in ("build_requires", "runtime_requires"):
        raw = data.get(key, []) or []
        if not isinstance(raw, list):
            raise err(key, "must be a list of checks", raw, "write one '- command: ...' per line")
        reqs[key] = tuple(
            _parse_requirement(r, file=file, variant=name, field_name=key) for r in raw
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise err("description", "must be a string", description, "quote it")
    return Variant(
        name=name,
        backend=backend.upper(),
        gpu=gpu,
        cmake_args=cmake_args,
        description=description,
        platforms=platforms,
        build_requires=reqs["build_requires"],
        runtime_requires=reqs["runtime_requires"],
        toolchain=toolchain,
        env={str(k): str(v) for k, v in env.items()},
        configure_evidence=evidence,
        default=default,
        tags=_str_list(data.get("tags", []), file=file, variant=name, field_name="tags"),
        source=file,
        extends=data.get("extends"),
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise VariantError(
            f"cannot read the variants file: {exc.strerror}",
            file=path,
            fix="check the path ($LLAMA_HARNESS_VARIANTS) and its permissions",
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise VariantError(
            f"not valid YAML: {exc}", file=path, fix="fix the YAML syntax at the line shown"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise VariantError(
            "the file must be a mapping with a `variants:` section",
            file=path,
            value=type(data).__name__,
            fix="start the file with `variants:`",
        )
    unknown = set(data) - {"variants", "sdist", "cuda_default_architectures"}
    if unknown:
        raise VariantError(
            f"unknown top-level key(s) {', '.join(sorted(map(str, unknown)))}",
            file=path,
            fix="use variants, sdist or cuda_default_architectures",
        )
    variants = data.get("variants", {}) or {}
    if not isinstance(variants, dict):
        raise VariantError(
            "`variants` must map names to variant definitions",
            file=path,
            field="variants",
            value=variants,
            fix="write `variants:` then `  name:` with its fields indented below",
        )
    for name, body in variants.items():
        if (
            not isinstance(name, str)
            or not name
            or not all(c.isalnum() or c in "-_." for c in name)
        ):
            raise VariantError(
                "a variant name must be letters, digits, '-', '_' or '.'",
                file=path,
                value=name,
                fix="rename it, e.g. cuda-sm90",
            )
        if not isinstance(body, dict):
            raise VariantError(
                "a variant must be a mapping of fields",
                file=path,
                variant=name,
                value=body,
                fix="indent its fields (backend, cmake_args, ...) below the name",
            )
    return data


def user_file() -> Path | None:
    """The user's variants file: ``$LLAMA_HARNESS_VARIANTS`` or ~/.config/llama-harness/."""
    env = os.environ.get("LLAMA_HARNESS_VARIANTS")
    if env:
        return Path(env).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    candidate = Path(config_home) / "llama-harness" / "variants.yaml"
    return candidate if candidate.is_file() else None


def load_registry(files: Sequence[Path] | None = None) -> Registry:
    """Read the built-in file then the user file; later files add or replace variants."""
    paths = list(files) if files is not None else [BUILTIN_FILE]
    if files is None:
        extra = user_file()
        if extra is not None:
            paths.append(extra)
    raw: dict[str, tuple[dict[str, Any], Path]] = {}
    sdist: dict[str, Any] = {}
    sdist_file: Path | None = None
    cuda_default = "75;80;86;89;90"
    for path in paths:
        data = _read_yaml(path)
        if "sdist" in data:
            sdist, sdist_file = data["sdist"], path
        if "cuda_default_architectures" in data:
            cuda_default = str(data["cuda_default_architectures"])
        for name, body in (data.get("variants") or {}).items():
            raw[name] = (body, path)

    def resolve(name: str, chain: tuple[str, ...]) -> dict[str, Any]:
        body, path = raw[name]
        parent = body.get("extends")
        if parent is None:
            return dict(body)
        if not isinstance(parent, str) or parent not in raw:
            raise VariantError(
                "extends an unknown variant",
                file=path,
                variant=name,
                field="extends",
                value=parent,
                fix=f"use one of {', '.join(sorted(raw))}",
            )
        if parent in chain:
            raise VariantError(
                "extends forms a cycle: " + " -> ".join([*chain, parent]),
                file=path,
                variant=name,
                field="extends",
                value=parent,
                fix="remove one of the extends",
            )
        return _merge(resolve(parent, (*chain, parent)), body)

    variants = {
        name: _build_variant(name, resolve(name, (name,)), file=path)
        for name, (_, path) in raw.items()
    }
    pin = _parse_sdist(sdist, sdist_file)
    return Registry(
        variants=variants,
        sdist=pin,
        cuda_default_architectures=cuda_default,
        files=tuple(paths),
    )


def _parse_sdist(data: object, file: Path | None) -> SdistPin:
    fix = "write sdist: {version: X.Y.Z, filename: llama_cpp_python-X.Y.Z.tar.gz, sha256: ...}"
    if not isinstance(data, Mapping):
        raise VariantError("missing or bad `sdist` pin", file=file, field="sdist", value=data,
                           fix=fix)  # fmt: skip
    values = {}
    for key in ("version", "filename", "sha256"):
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise VariantError("missing value", file=file, field=f"sdist.{key}", value=value,
                               fix=fix)  # fmt: skip
        values[key] = value
    sha = values["sha256"].lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise VariantError("not a sha256 hex digest", file=file, field="sdist.sha256",
                           value=values["sha256"], fix="paste the 64-hex-digit sha256")  # fmt: skip
    return SdistPin(version=values["version"], filename=values["filename"], sha256=sha)


def load_variants(files: Sequence[Path] | None = None) -> dict[str, Variant]:
    """All variants by name (built-in file, then the user file)."""
    return load_registry(files).variants


def get_variant(name: str, files: Sequence[Path] | None = None) -> Variant:
    variants = load_variants(files)
    if name not in variants:
        raise VariantError(
            "unknown variant",
            value=name,
            fix=f"use one of {', '.join(sorted(variants))} (see `llama-harness variants`)",
        )
    return variants[name]
