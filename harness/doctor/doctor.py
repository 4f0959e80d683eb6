"""The "GPU not detected" doctor.

It collects facts about the machine, the Python interpreter and the llama-cpp-python build
it runs (:mod:`harness.build.buildinfo` in that interpreter), NVIDIA driver / CUDA toolkit state,
the build environment (CMAKE_ARGS and legacy flags), pip's wheel cache, optional user logs
and install commands, and an offload probe (load a small model with ``n_gpu_layers=-1`` and
count "offloaded N/M layers"). It then evaluates the cause catalogue
(``harness/doctor/causes.yaml``) against the facts with one generic evaluator and reports a
one-line verdict followed by the matched causes, their evidence, explanation and fix.

Every output goes through :mod:`saiverse_llm.redact`: secrets never appear.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.build import buildinfo
from harness.build.buildinfo import BuildInfo, BuildInfoError
from harness.doctor import build_log, legacy_flags
from harness.doctor.prefilter import search
from saiverse_llm import devices
from saiverse_llm.devices import Runner
from saiverse_llm.redact import redact_obj, redact_text

CAUSES_FILE = Path(__file__).with_name("causes.yaml")
STEP_NAMES = build_log.STEP_LABELS
DEFAULT_VERSION = "0.3.36"
SEVERITIES = ("error", "warning", "info")
OPS = (
    "equals",
    "not_equals",
    "contains",
    "lacks",
    "matches",
    "in",
    "gt",
    "ge",
    "lt",
    "le",
    "present",
    "empty",
)
# Environment variables the doctor records (values redacted before any output).
ENV_FACTS = (
    "CMAKE_ARGS",
    "FORCE_CMAKE",
    "LLAMA_CUBLAS",
    "LLAMA_CUDA",
    "GGML_CUBLAS",
    "GGML_CUDA",
    "LLAMA_METAL",
    "SKBUILD_CMAKE_ARGS",
    "SKBUILD_CMAKE_DEFINE",
    "CUDACXX",
    "CUDA_HOME",
    "CUDA_PATH",
    "GGML_VK_VISIBLE_DEVICES",
    "CUDAToolkit_ROOT",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
    "PIP_NO_CACHE_DIR",
    "PIP_CACHE_DIR",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "LLAMA_CPP_LIB",
    "LLAMA_CPP_LIB_PATH",
    "PATH",
)
GPU_FLAG_RE = re.compile(r"-D\s*(GGML_(CUDA|METAL|VULKAN|HIP|SYCL|MUSA|OPENCL)|LLAMA_CUBLAS)")
# llama.cpp CPU feature (system info) -> /proc/cpuinfo flag
CPU_FLAG_NAMES = {
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}

Facts = dict[str, Any]


class CatalogueError(ValueError):
    """The cause catalogue is malformed; names the file, the cause, the field and the fix."""

    def __init__(self, file: Path, field: str, value: object, fix: str) -> None:
        self.file, self.field, self.value, self.fix = file, field, value, fix
        super().__init__(f"{file}: {field}: bad value {value!r}; fix: {fix}")


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class Cause:
    id: str
    title: str
    severity: str
    evidence: Any
    explanation: str
    fix: tuple[str, ...]
    source: tuple[str, ...]
    fix_runtime: Mapping[str, Any] = field(default_factory=dict)
    replay: str | None = None
    generic: bool = False  # a catch-all ("CPU-only build"): listed after the specific causes


def _check_node(node: Any, where: str, file: Path) -> None:
    if isinstance(node, list):
        if not node:
            raise CatalogueError(file, where, node, "give at least one check")
        for i, child in enumerate(node):
            _check_node(child, f"{where}[{i}]", file)
        return
    if not isinstance(node, dict):
        raise CatalogueError(file, where, node, "use a mapping {fact: NAME, OP: VALUE} or all/any")
    if set(node) & {"all", "any"}:
        if len(node) != 1:
            raise CatalogueError(file, where, node, "all/any must be the only key of its mapping")
        key = next(iter(node))
        _check_node(node[key], f"{where}.{key}", file)
        return
    if "not" in node:
        if len(node) != 1:
            raise CatalogueError(file, where, node, "`not` must be the only key of its mapping")
        _check_node(node["not"], f"{where}.not", file)
        return
    if not isinstance(node.get("fact"), str):
        raise CatalogueError(file, f"{where}.fact", node.get("fact"), "name a fact (a string)")
    ops = [k for k in node if k != "fact"]
    if len(ops) != 1 or ops[0] not in OPS:
        raise CatalogueError(file, where, ops, f"use exactly one operator of {', '.join(OPS)}")
    if ops[0] == "matches":
        try:
            re.compile(str(node["matches"]))
        except re.error as exc:
            raise CatalogueError(file, f"{where}.matches", node["matches"], str(exc)) from exc


def parse_causes(data: Any, file: Path = CAUSES_FILE) -> list[Cause]:
    if not isinstance(data, dict) or not isinstance(data.get("causes"), list):
        raise CatalogueError(file, "causes", data, "the file must hold `causes:` with a list")
    out: list[Cause] = []
    seen: set[str] = set()
    for i, raw in enumerate(data["causes"]):
        where = f"causes[{i}]"
        if not isinstance(raw, dict):
            raise CatalogueError(file, where, raw, "each cause is a mapping")
        cid = raw.get("id")
        if not isinstance(cid, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", cid):
            raise CatalogueError(file, f"{where}.id", cid, "use a lower-case-dashed id")
        if cid in seen:
            raise CatalogueError(file, f"{where}.id", cid, "ids must be unique")
        seen.add(cid)
        where = f"cause {cid}"
        for key in ("title", "explanation"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise CatalogueError(file, f"{where}.{key}", raw.get(key), f"write the {key}")
        severity = raw.get("severity", "error")
        if severity not in SEVERITIES:
            raise CatalogueError(file, f"{where}.severity", severity, f"one of {SEVERITIES}")
        if "evidence" not in raw:
            raise CatalogueError(file, f"{where}.evidence", None, "add the evidence to look for")
        _check_node(raw["evidence"], f"{where}.evidence", file)
        fix = raw.get("fix")
        if not isinstance(fix, list) or not fix or not all(isinstance(c, str) for c in fix):
            raise CatalogueError(file, f"{where}.fix", fix, "list the exact fix command(s)")
        source = raw.get("source")
        if (
            not isinstance(source, list)
            or not source
            or not all(isinstance(s, str) and s.startswith("https://") for s in source)
        ):
            raise CatalogueError(
                file, f"{where}.source", source, "cite the public report(s) as https URLs"
            )
        fix_runtime = raw.get("fix_runtime", {})
        if not isinstance(fix_runtime, dict):
            raise CatalogueError(file, f"{where}.fix_runtime", fix_runtime, "use a mapping")
        generic = raw.get("generic", False)
        if not isinstance(generic, bool):
            raise CatalogueError(file, f"{where}.generic", generic, "use true or false")
        out.append(
            Cause(
                id=cid,
                title=raw["title"].strip(),
                severity=severity,
                evidence=raw["evidence"],
                explanation=" ".join(raw["explanation"].split()),
                fix=tuple(fix),
                source=tuple(source),
                fix_runtime=dict(fix_runtime),
                replay=raw.get("replay"),
                generic=generic,
            )
        )
    return out


def load_causes(path: Path | None = None) -> list[Cause]:
    file = path or CAUSES_FILE
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogueError(file, "file", str(file), f"cannot read it: {exc}") from exc
    except yaml.YAMLError as exc:
        raise CatalogueError(file, "yaml", str(exc).splitlines()[0], "fix the YAML syntax") from exc
    return parse_causes(data, file)


def get_cause(cause_id: str, causes: Sequence[Cause] | None = None) -> Cause:
    for cause in causes if causes is not None else load_causes():
        if cause.id == cause_id:
            return cause
    raise KeyError(f"no cause {cause_id!r} in {CAUSES_FILE}")


# --------------------------------------------------------------------------- evaluation


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or (hasattr(value, "__len__") and len(value) == 0)


def _check(op: str, value: Any, arg: Any) -> bool:
    if op == "present":
        return (not _is_empty(value)) == bool(arg)
    if value is None:
        return False
    if op == "empty":
        return _is_empty(value) == bool(arg)
    if op == "equals":
        return bool(value == arg)
    if op == "not_equals":
        return bool(value != arg)
    if op in ("contains", "lacks"):
        if isinstance(value, str):
            found = str(arg).lower() in value.lower()
        elif isinstance(value, list | tuple | set | dict):
            found = arg in value
        else:
            found = False
        return found if op == "contains" else not found
    if op == "matches":
        pattern = re.compile(str(arg), re.IGNORECASE | re.MULTILINE)
        items = value if isinstance(value, list | tuple | set) else [value]
        return any(search(pattern, str(v)) for v in items)
    if op == "in":
        return value in arg if isinstance(arg, list) else False
    if op in ("gt", "ge", "lt", "le"):
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        results = {"gt": value > arg, "ge": value >= arg, "lt": value < arg, "le": value <= arg}
        return bool(results[op])
    raise ValueError(f"unknown operator {op!r}")


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."


def evaluate(node: Any, facts: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """Evaluate an evidence node; returns (matched, the checks that held, as readable lines)."""
    if isinstance(node, list):
        node = {"all": node}
    if "all" in node:
        hits: list[str] = []
        for child in node["all"]:
            ok, child_hits = evaluate(child, facts)
            if not ok:
                return False, []
            hits += child_hits
        return True, hits
    if "any" in node:
        hits = []
        matched = False
        for child in node["any"]:
            ok, child_hits = evaluate(child, facts)
            if ok:
                matched = True
                hits += child_hits
        return matched, hits
    if "not" in node:
        ok, _ = evaluate(node["not"], facts)
        return (not ok), ([f"not ({_describe(node['not'])})"] if not ok else [])
    name = node["fact"]
    op = next(k for k in node if k != "fact")
    value = facts.get(name)
    ok = _check(op, value, node[op])
    return ok, (
        [f"{name} {op} {_show(node[op])} (found: {_found(op, value, node[op])})"] if ok else []
    )


def _found(op: str, value: Any, arg: Any) -> str:
    """What to show as the evidence: the matching line of a long text, not the whole text."""
    if isinstance(value, str) and ("\n" in value or len(value) > 160):
        if op == "matches":
            pattern = re.compile(str(arg), re.IGNORECASE)
            line = next((ln for ln in value.splitlines() if search(pattern, ln)), None)
            if line is not None:
                return _show(line.strip())
        if op == "contains":
            line = next((ln for ln in value.splitlines() if str(arg).lower() in ln.lower()), None)
            if line is not None:
                return _show(line.strip())
        if op == "lacks":
            return f"no such line in {len(value.splitlines())} lines"
    return _show(value)


def _describe(node: Any) -> str:
    if isinstance(node, dict) and "fact" in node:
        op = next(k for k in node if k != "fact")
        return f"{node['fact']} {op} {_show(node[op])}"
    return _show(node)


@dataclass
class Match:
    cause: Cause
    evidence: list[str]
    fix: list[str]


def fill(template: str, facts: Mapping[str, Any]) -> str:
    """Replace ``{fact.name}`` placeholders with fact values (unknown ones stay visible)."""

    def repl(m: re.Match[str]) -> str:
        value = facts.get(m.group(1))
        if value is None or value == "":
            return m.group(0)
        return ";".join(map(str, value)) if isinstance(value, list) else str(value)

    return re.sub(r"\{([a-zA-Z_][\w.]*)\}", repl, template)


def match_causes(facts: Mapping[str, Any], causes: Sequence[Cause] | None = None) -> list[Match]:
    """Causes whose evidence holds, specific ones first (catalogue order), generic ones last."""
    found: list[Match] = []
    for cause in causes if causes is not None else load_causes():
        ok, hits = evaluate(cause.evidence, facts)
        if ok:
            values = {**hint_facts(facts), **facts}
            found.append(Match(cause, hits, [fill(c, values) for c in cause.fix]))
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(found, key=lambda m: (m.cause.generic, rank[m.cause.severity]))


# --------------------------------------------------------------------------- fact collection


_run = devices.run_quiet


def host_facts(run: Runner = _run) -> Facts:
    facts: Facts = {
        "os.system": platform.system(),
        "os.release": platform.release(),
        "os.machine": platform.machine(),
        "cpu.count": os.cpu_count(),
    }
    osr = Path("/etc/os-release")
    if osr.exists():
        m = re.search(r'^PRETTY_NAME="?([^"\n]*)', osr.read_text(errors="replace"), re.M)
        facts["os.pretty"] = m.group(1) if m else None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        text = cpuinfo.read_text(errors="replace")
        model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
        flags = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.M)
        facts["cpu.model"] = model.group(1).strip() if model else None
        facts["cpu.flags"] = sorted(set(flags.group(1).split())) if flags else None
    if platform.system() == "Darwin":
        brand = run(["sysctl", "-n", "machdep.cpu.brand_string"])
        feats = run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"])
        arm = run(["sysctl", "-n", "hw.optional.arm64"])
        facts["cpu.model"] = brand.stdout.strip() if brand and brand.returncode == 0 else None
        if feats and feats.returncode == 0:
            facts["cpu.flags"] = sorted({f.lower() for f in feats.stdout.split()})
        facts["host.arm64_capable"] = bool(arm and arm.stdout.strip() == "1")
    else:
        facts["host.arm64_capable"] = platform.machine() in ("aarch64", "arm64")
    cgroup = Path("/proc/1/cgroup")
    in_container = Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()
    if not in_container and cgroup.exists():
        in_container = bool(
            re.search(r"docker|kubepods|containerd|podman|lxc", cgroup.read_text(errors="replace"))
        )
    facts["container.detected"] = in_container
    facts["container.nvidia_devices"] = bool(glob.glob("/dev/nvidia[0-9]*"))
    return facts


def nvidia_facts(run: Runner = _run) -> Facts:
    """``nvidia.*`` facts from :func:`saiverse_llm.devices.query_nvidia`."""
    smi = devices.query_nvidia(run, header=True)
    facts: Facts = {"nvidia.smi_found": smi.found}
    if not smi.found:
        return facts
    if smi.error is not None:
        facts["nvidia.error"] = smi.error
        return facts
    if smi.gpus:
        facts["nvidia.driver_version"] = smi.gpus[-1].driver
    caps = [c for c in (g.compute_cap_number for g in smi.gpus) if c is not None]
    facts["nvidia.gpus"] = [g.name for g in smi.gpus]
    facts["nvidia.compute_caps"] = caps
    facts["nvidia.arch_hint"] = ";".join(str(c) for c in sorted(set(caps))) or None
    if smi.header_read:
        facts["nvidia.cuda_version"] = smi.cuda_version
    return facts


def _libcuda_loadable() -> tuple[bool | None, str | None]:
    if sys.platform == "darwin":
        return None, None
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(name)
    except OSError as exc:
        return False, str(exc)
    return True, None


def _cuda_runtime_major(package_dir: str | None) -> int | None:
    if not package_dir:
        return None
    for lib in sorted(Path(package_dir).glob("lib/libggml-cuda*")):
        try:
            with lib.open("rb") as fh:
                head = fh.read(8 << 20)
        except OSError:
            continue
        m = re.search(rb"libcudart\.so\.(\d+)", head)
        if m:
            return int(m.group(1))
    return None


def arch_match(archs: Sequence[int], caps: Sequence[int]) -> str | None:
    """``exact`` / ``same-major`` / ``ptx-only`` / ``none`` for the least-served GPU."""
    if not archs or not caps:
        return None
    worst = "exact"
    order = ("exact", "same-major", "ptx-only", "none")
    for cap in caps:
        target = cap * 10  # __CUDA_ARCH_LIST__ uses 900 for compute capability 9.0
        if target in archs:
            level = "exact"
        elif any(a // 100 == target // 100 and a <= target for a in archs):
            level = "same-major"
        elif any(a <= target for a in archs):
            level = "ptx-only"
        else:
            level = "none"
        if order.index(level) > order.index(worst):
            worst = level
    return worst


def cuda_facts(info: BuildInfo | None, nvidia: Mapping[str, Any], run: Runner = _run) -> Facts:
    loadable, error = _libcuda_loadable()
    facts: Facts = {"cuda.libcuda_loadable": loadable, "cuda.libcuda_error": error}
    nvcc = shutil.which("nvcc")
    facts["cuda.nvcc_found"] = nvcc is not None
    candidates = [nvcc] if nvcc else sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True)
    facts["cuda.nvcc_hint"] = candidates[0] if candidates else "/usr/local/cuda/bin/nvcc"
    if nvcc:
        out = run([nvcc, "--version"])
        m = re.search(r"release ([\d.]+), V([\d.]+)", out.stdout if out else "")
        facts["cuda.nvcc_version"] = m.group(2) if m else None
    runtime = _cuda_runtime_major(info.package_dir if info else None)
    facts["cuda.runtime_major"] = runtime
    version = nvidia.get("nvidia.cuda_version")
    driver_major = int(str(version).split(".")[0]) if version else None
    facts["cuda.driver_major"] = driver_major
    facts["cuda.driver_older_than_runtime"] = (
        driver_major < runtime if driver_major is not None and runtime is not None else None
    )
    facts["cuda.arch_match"] = arch_match(
        info.cuda_archs if info else [], nvidia.get("nvidia.compute_caps") or []
    )
    return facts


def _libcuda_paths(run: Runner) -> list[str]:
    """Where the loader finds libcuda.so.1 (``ldconfig -p`` order), empty when nowhere."""
    if sys.platform != "linux" or shutil.which("ldconfig") is None:
        return []
    out = run(["ldconfig", "-p"])
    if out is None or out.returncode != 0:
        return []
    return re.findall(r"^\s*libcuda\.so\.1 \([^)]*\) => (\S+)", out.stdout, re.M)


def gpu_presence_facts(
    host: Mapping[str, Any], nvidia: Mapping[str, Any], run: Runner = _run
) -> Facts:
    """Is there any GPU this machine could offload to, whatever the build?

    ``host.gpu_evidence`` lists what was found (nvidia-smi GPUs, /dev/nvidia*, DRM render
    nodes, /dev/kfd, WSL's /dev/dxg, Apple Silicon); ``host.any_gpu`` is False only when none.
    On WSL2 the driver's libcuda lives in /usr/lib/wsl/lib; a Linux driver package installed
    inside the distribution puts another libcuda.so.1 first on the loader path
    (``cuda.libcuda_shadowed``), and CUDA then reports "no CUDA-capable device is detected".
    """
    evidence: list[str] = [f"nvidia-smi: {g}" for g in nvidia.get("nvidia.gpus") or []]
    for pattern in ("/dev/nvidia[0-9]*", "/dev/dri/renderD*", "/dev/kfd", "/dev/dxg"):
        evidence += sorted(glob.glob(pattern))
    if host.get("os.system") == "Darwin" and host.get("host.arm64_capable"):
        evidence.append("Apple Silicon GPU (Metal)")
    release = str(host.get("os.release") or "").lower()
    wsl = "microsoft" in release or Path("/usr/lib/wsl/lib").is_dir()
    paths = _libcuda_paths(run) if wsl else []
    return {
        "host.gpu_evidence": evidence,
        "host.any_gpu": bool(evidence),
        "host.wsl": wsl,
        "cuda.libcuda_paths": paths or None,
        "cuda.libcuda_shadowed": (
            not paths[0].startswith("/usr/lib/wsl/") if wsl and paths else None
        ),
    }


def env_facts(env: Mapping[str, str]) -> Facts:
    return {f"env.{name}": env.get(name) for name in ENV_FACTS}


def vulkan_facts(info: BuildInfo | None) -> Facts:
    """The machine's Vulkan devices (vulkaninfo), for a build with the Vulkan backend:
    ``vulkan.devices``, ``vulkan.software_only`` (only llvmpipe & co.: correct, not a GPU)."""
    if info is None or "VULKAN" not in info.compiled_backends:
        return {}
    from harness.build import vulkan_devices

    devices, why = vulkan_devices.list_devices()
    return {
        "vulkan.devices": [d.describe() for d in devices],
        "vulkan.list_error": why or None,
        "vulkan.software_only": vulkan_devices.software_only(),
        "vulkan.software_devices": [d.name for d in devices if d.software],
    }


def _unloaded(lib: str, registries: set[str]) -> bool:
    """A backend library in the package whose backend never registered (GGML_BACKEND_DL)."""
    backend = buildinfo.backend_of_lib(lib)
    if backend is None:
        return False
    if lib.startswith("libggml-cpu-"):
        return "CPU" not in registries
    return backend != "CPU" and backend not in registries


def build_facts(info: BuildInfo | None, crash: str | None, host: Mapping[str, Any]) -> Facts:
    facts: Facts = {"build.crash": crash, "llama.installed": bool(info and info.installed)}
    if info is None:
        return facts
    facts.update(
        {
            "llama.version": info.llama_cpp_version or info.provenance.version,
            "llama.import_error": info.import_error,
            "llama.package_dir": info.package_dir,
            "python.executable": info.python,
            "python.version": info.python_version,
            "python.machine": info.python_machine,
        }
    )
    if not info.installed:
        if info.backend_libs:  # the package is there but does not import: what it holds
            facts["build.backend_libs"] = info.backend_libs
            facts["build.compiled_backends"] = sorted(info.compiled_backends)
        return facts
    registries = {devices.canonical_backend(r) for r in info.registries}
    unloaded = [lib for lib in info.backend_libs if _unloaded(lib, registries)]
    host_flags = host.get("cpu.flags")
    missing = None
    if isinstance(host_flags, list) and host.get("os.system") == "Linux":
        missing = [
            feat
            for feat, on in info.cpu_features.items()
            if on and feat in CPU_FLAG_NAMES and CPU_FLAG_NAMES[feat] not in host_flags
        ]
    facts.update(
        {
            "build.compiled_backends": sorted(info.compiled_backends),
            "build.gpu_backends": sorted(info.gpu_backends),
            "build.gpu_offload": info.gpu_offload,
            "build.max_devices": info.max_devices,
            "build.system_info": info.system_info,
            "build.cuda_archs": info.cuda_archs,
            "build.backend_libs": info.backend_libs,
            "build.registries": info.registries,
            "build.devices": [f"{d.name} ({d.type}, {d.description})" for d in info.devices],
            "build.gpu_devices": [d.description or d.name for d in info.gpu_devices],
            "build.unloaded_backend_libs": unloaded,
            "build.init_log": "\n".join(info.init_log),
            "build.cpu_features": sorted(k for k, v in info.cpu_features.items() if v),
            "build.cpu_features_missing_on_host": missing,
            "provenance.source": info.provenance.source,
            "provenance.installer": info.provenance.installer,
            "provenance.wheel_tags": info.provenance.wheel_tags,
            "provenance.wheel_generator": info.provenance.wheel_generator,
            "provenance.direct_url": info.provenance.direct_url,
        }
    )
    return facts


def pip_cache_dir(python: str, env: Mapping[str, str] | None = None) -> Path | None:
    try:
        proc = subprocess.run(
            [python, "-m", "pip", "cache", "dir"],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return Path(proc.stdout.strip().splitlines()[-1])


def _wheel_libs(wheel: Path) -> dict[str, str]:
    try:
        with zipfile.ZipFile(wheel) as zf:
            record = next((n for n in zf.namelist() if n.endswith(".dist-info/RECORD")), None)
            text = zf.read(record).decode("utf-8", "replace") if record else ""
    except (OSError, zipfile.BadZipFile):
        return {}
    libs: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.rsplit(",", 2)
        if len(parts) == 3 and parts[0].startswith("llama_cpp/lib/") and parts[1]:
            libs[parts[0]] = parts[1]
    return libs


def pip_cache_facts(cache: Path | None, info: BuildInfo | None) -> Facts:
    facts: Facts = {"pip_cache.dir": str(cache) if cache else None}
    if cache is None:
        return facts
    wheels = sorted((cache / "wheels").rglob("llama_cpp_python-*.whl"))
    installed = info.provenance.lib_hashes if info else {}
    entries: list[dict[str, Any]] = []
    matched_backends: list[str] | None = None
    for wheel in wheels:
        libs = _wheel_libs(wheel)
        backends = sorted({b for b in (buildinfo.backend_of_lib(Path(p).name) for p in libs) if b})
        same = any(installed.get(path) == digest for path, digest in libs.items())
        if same:
            matched_backends = backends
        entries.append(
            {
                "file": str(wheel),
                "version": wheel.name.split("-")[1],
                "backends": backends,
                "matches_installed": same,
            }
        )
    facts.update(
        {
            "pip_cache.wheels": entries,
            "pip_cache.llama_wheels": len(entries),
            "pip_cache.cpu_only_wheels": sum(1 for e in entries if e["backends"] == ["CPU"]),
            "pip_cache.matches_installed": (matched_backends is not None) if installed else None,
            "pip_cache.installed_wheel_backends": matched_backends,
        }
    )
    return facts


_PIP_RE = re.compile(r"(^|\s)(\S*/)?(pip3?|python3?(\.\d+)?\s+-m\s+pip)\s+install\b")


def install_facts(commands: Sequence[str]) -> Facts:
    """Static analysis of the install commands a user ran (shell lines)."""
    if not commands:
        return {"install.commands": None}
    text = "\n".join(commands)
    unexported = False
    exported = False
    assigned = False
    for segment in re.split(r"\n|;|&&|\|\|", text):
        seg = segment.strip()
        if re.match(r"^(export|declare\s+-x|setenv)\s+CMAKE_ARGS\b", seg) or re.match(
            r"^(set|\$env:)\s*CMAKE_ARGS\s*=", seg, re.I
        ):
            exported = True
        elif re.fullmatch(r"CMAKE_ARGS=(\"[^\"]*\"|'[^']*'|\S*)", seg):
            assigned = True
        elif _PIP_RE.search(seg) and "CMAKE_ARGS=" not in seg and assigned and not exported:
            unexported = True
    frontend = None
    for name in ("poetry", "uv", "pipenv", "pdm", "conda"):
        if re.search(rf"(^|\s){name}\s+(add|install|sync|pip|lock)\b", text, re.M):
            frontend = name
            break
    if frontend is None and _PIP_RE.search(text):
        frontend = "pip"
    return {
        "install.commands": text,
        "install.unexported_cmake_args": unexported,
        "install.sudo_pip": bool(
            re.search(r"\bsudo\s+(?!-E\b|--preserve-env)(-\S+\s+)*\S*(pip3?|python3?)\b", text)
        ),
        "install.frontend": frontend,
    }


def switch_facts(facts: Mapping[str, Any]) -> Facts:
    """The CMake switches the user asked for, from every source the doctor has.

    ``cmake.switches``: NAME -> VALUE from ``-D`` assignments in the user's log, install
    commands and CMAKE_ARGS (that order; the last wins), plus names CMake reported as unused
    (they were set). ``cmake.legacy_<status>``: switched-on old names by what the pinned sdist
    does with them (:mod:`harness.doctor.legacy_flags`). ``request.gpu_backends``: the GPU backends
    asked for (legacy names count as their replacement).
    """
    switches: dict[str, str] = {}
    for name in facts.get("log.cmake_unused") or []:
        switches.setdefault(name, "ON")
    for text in (facts.get("user.log"), facts.get("install.commands"), facts.get("env.CMAKE_ARGS")):
        switches.update(legacy_flags.defines(text))
    on = [name for name, value in switches.items() if legacy_flags.is_on(value)]
    by_status = legacy_flags.classify(on)
    out: Facts = {"cmake.switches": switches or None}
    for status, names in by_status.items():
        out[f"cmake.legacy_{status}"] = names
    out["request.gpu_backends"] = legacy_flags.requested_gpu_backends(switches)
    return out


def runtime_facts(kwargs: Mapping[str, Any] | None) -> Facts:
    if kwargs is None:
        return {"runtime.kwargs": None}
    return {
        "runtime.kwargs": dict(kwargs),
        "runtime.n_gpu_layers": int(kwargs.get("n_gpu_layers", 0)),
    }


def probe_facts(runs: Mapping[str, Mapping[str, Any]]) -> Facts:
    """Facts from probe runs keyed ``gpu`` (n_gpu_layers=-1), ``cpu`` (0) and ``user``."""
    facts: Facts = {"probe.ran": bool(runs)}
    gpu, cpu, user = runs.get("gpu"), runs.get("cpu"), runs.get("user")
    main = gpu or user or cpu
    if main:
        facts["probe.error"] = main.get("error")
        facts["probe.crash"] = main.get("crash")
        facts["probe.offloaded"] = main.get("offloaded")
        facts["probe.total"] = main.get("total")
        facts["probe.log"] = main.get("log")
    if gpu:
        facts["probe.gpu_tps"] = gpu.get("tokens_per_s")
    if cpu:
        facts["probe.cpu_tps"] = cpu.get("tokens_per_s")
    if facts.get("probe.gpu_tps") and facts.get("probe.cpu_tps"):
        facts["probe.speedup"] = facts["probe.gpu_tps"] / facts["probe.cpu_tps"]
    if user:
        facts["runtime.unknown_kwargs"] = user.get("unknown_kwargs")
        facts["probe.effective_n_gpu_layers"] = user.get("effective_n_gpu_layers")
        facts["probe.user_offloaded"] = user.get("offloaded")
    return facts


def hint_facts(facts: Mapping[str, Any]) -> Facts:
    """Values the fix commands are filled with.

    ``hint.gpu_cmake_flag``: the GPU switch the user asked for (a legacy name becomes its
    replacement), else Metal on macOS, else CUDA. ``hint.llama_version``: the installed
    version, else the one in the log, else the pinned one. ``hint.legacy_replacement``: the
    current switches for the old ones used. ``hint.variant``: the harness variant that fits.
    ``hint.container_driver``: what a CUDA image needs (the refused one's, from the log, else
    this project's).
    """
    from harness.ship import images

    requested = list(facts.get("request.gpu_backends") or [])
    darwin = facts.get("os.system") == "Darwin"
    backend = requested[0] if requested else ("METAL" if darwin else "CUDA")
    switch = next((k for k, v in legacy_flags.GPU_SWITCHES.items() if v == backend), "GGML_CUDA")
    old = [
        name
        for status in legacy_flags.STATUSES
        if status != "mapped"
        for name in facts.get(f"cmake.legacy_{status}") or []
    ]
    variant = {"CUDA": "cuda", "VULKAN": "vulkan", "METAL": "metal"}.get(backend, "cpu")
    if not requested and not facts.get("nvidia.gpus") and not darwin:
        variant = "cpu"
    arch = facts.get("nvidia.arch_hint")
    if not arch and facts.get("log.unsupported_arch_support") == "dropped":
        arch = str(facts.get("log.unsupported_arch"))
    for key in ("log.gpu_compute_caps", "log.cuda_archs"):
        if not arch and facts.get(key):
            arch = ";".join(str(a) for a in facts[key])
    arch = arch or "90"
    gxx = facts.get("log.host_gxx") or "g++-12"
    required = facts.get("log.required_cuda")
    return {
        "hint.cuda_arch": arch,
        "hint.arch_min_cuda": facts.get("log.arch_min_cuda") or "12.8",
        "hint.arch_fallback": facts.get("log.arch_fallback")
        or "$(nvcc --list-gpu-arch | tail -n1 | cut -d_ -f2)",
        "hint.host_gxx": gxx,
        "hint.host_gxx_version": gxx.rsplit("-", 1)[-1],
        "hint.driver_cuda": facts.get("cuda.driver_major")
        or "$(nvidia-smi | sed -n 's/.*CUDA Version: \\([0-9]*\\).*/\\1/p')",
        "hint.gpu_cmake_flag": f"-D{switch}=on",
        "hint.llama_version": facts.get("llama.version")
        or facts.get("log.llama_version")
        or DEFAULT_VERSION,
        "hint.legacy_replacement": legacy_flags.replacement_args(old) or f"-D{switch}=on",
        "hint.variant": variant,
        "hint.rocm_gfx": facts.get("log.rocm_gfx") or "gfx1030",
        "hint.rocm_gfx_override": facts.get("log.rocm_gfx_override") or "10.3.0",
        "hint.oom_request": facts.get("log.oom_request") or "a buffer",
        "hint.python": facts.get("python.executable") or sys.executable,
        "hint.container_driver": images.refused_requirement(str(required))
        if required
        else images.driver_requirement(),
    }


# --------------------------------------------------------------------------- the doctor


#: The doctor's steps, in order, as its progress names them.
DOCTOR_STEPS = (
    "inspecting llama_cpp",
    "reading the machine",
    "reading the logs",
    "probing offload",
    "matching causes",
)


@dataclass
class DoctorOptions:
    python: str = sys.executable
    probe: bool = True
    model: Path | None = None
    kwargs: Mapping[str, Any] | None = None  # the user's Llama() keyword arguments
    commands: Sequence[str] = ()  # install commands as the user ran them
    logs: Sequence[str] = ()  # install / runtime output the user attached
    env: Mapping[str, str] | None = None  # the environment to inspect (default os.environ)
    pip_env: Mapping[str, str] | None = None  # environment for `pip cache dir`
    probe_tokens: int = 16
    # told each step as it starts: (what, steps done, steps in all); see DOCTOR_STEPS
    progress: Callable[[str, int, int], None] | None = None

    def step(self, what: str) -> None:
        """Tell ``progress`` (if any) that step ``what`` (one of DOCTOR_STEPS) starts."""
        if self.progress is not None:
            self.progress(what, DOCTOR_STEPS.index(what), len(DOCTOR_STEPS))


@dataclass
class DoctorReport:
    verdict: str
    facts: Facts
    matches: list[Match]
    build: BuildInfo | None
    probes: dict[str, dict[str, Any]]
    env: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        data = {
            "verdict": self.verdict,
            "healthy": self.healthy,
            "causes": [
                {
                    "id": m.cause.id,
                    "title": m.cause.title,
                    "severity": m.cause.severity,
                    "evidence": m.evidence,
                    "explanation": m.cause.explanation,
                    "fix": m.fix,
                    "source": list(m.cause.source),
                    "replay": m.cause.replay,
                }
                for m in self.matches
            ],
            "facts": self.facts,
            "build": self.build.to_dict() if self.build else None,
            "probes": self.probes,
        }
        # plain JSON types first (a Path or a version object is a string), then redacted
        return dict(redact_obj(json.loads(json.dumps(data, default=str)), self.env))

    @property
    def cause_ids(self) -> list[str]:
        return [m.cause.id for m in self.matches]

    @property
    def healthy(self) -> bool:
        """True only for an importable GPU build that offloads, with no failed build in the
        log and no cause of severity error."""
        return is_healthy(self.facts, self.matches)

    @property
    def exit_code(self) -> int:
        """0 healthy, 1 anything else (a failed build in the log, llama-cpp-python missing or
        crashing, a CPU-only build, no GPU device, partial offload, an error cause)."""
        return 0 if self.healthy else 1


def is_healthy(facts: Mapping[str, Any], matches: Sequence[Match]) -> bool:
    """See :attr:`DoctorReport.healthy`."""
    if facts.get("log.build_failed") or any(m.cause.severity == "error" for m in matches):
        return False
    if not facts.get("llama.installed") or facts.get("build.crash"):
        return False
    if not facts.get("build.gpu_backends") or not facts.get("build.gpu_offload"):
        return False
    if not facts.get("build.gpu_devices"):
        return False
    if facts.get("probe.ran"):
        total = facts.get("probe.total")
        if facts.get("probe.error") or (total and facts.get("probe.offloaded") != total):
            return False
        user = facts.get("probe.user_offloaded")
        if user is not None and total and user < total:
            return False
    return True


def default_probe_model() -> Path:
    from harness.models.model_manifest import ensure_model

    return ensure_model("tiny")


def verdict(facts: Mapping[str, Any]) -> str:
    """One readable line: the failed build in the user's log (when there is one), then what
    the inspected build is and whether it uses the GPU."""
    here = _build_verdict(facts)
    if not facts.get("log.build_failed"):
        line = facts.get("log.failed_line")
        if line and facts.get("log.failed_step") in ("import", "runtime"):
            return (
                f"The log shows a failure at {facts.get('log.failed_step_label')}: {line}. "
                f"Inspected here: {here}"
            )
        return here
    step = facts.get("log.failed_step_label")
    where = f"at the {step} step" if step else "(the log does not show at which step)"
    line = facts.get("log.failed_line")
    return (
        f"The llama-cpp-python build in the log failed {where}"
        + (f": {line}" if line else "")
        + f". Inspected here: {here}"
    )


def _no_gpu_here(facts: Mapping[str, Any]) -> bool:
    return facts.get("host.any_gpu") is False


def _build_verdict(facts: Mapping[str, Any]) -> str:
    if facts.get("build.crash"):
        return (
            f"llama_cpp crashes on import ({facts['build.crash']}): the library cannot run "
            "on this machine"
        )
    if not facts.get("llama.installed"):
        error = facts.get("llama.import_error") or "not installed"
        return f"llama-cpp-python is not importable by {facts.get('python.executable')}: {error}"
    gpu_backends = facts.get("build.gpu_backends") or []
    if not gpu_backends:
        origin = facts.get("provenance.direct_url") or facts.get("provenance.source")
        detail = (
            f"(backends: {', '.join(facts.get('build.compiled_backends') or ['CPU'])}"
            + (f"; installed from {origin}" if origin else "")
            + ")"
        )
        if _no_gpu_here(facts):
            return (
                "CPU-only build on a machine with no GPU: no NVIDIA driver or device and no "
                f"other GPU device node here, so nothing can be offloaded {detail}"
            )
        return f"CPU-only build: this llama-cpp-python was compiled without a GPU backend {detail}"
    kind = "/".join(gpu_backends)
    devices = facts.get("build.gpu_devices") or []
    software = facts.get("vulkan.software_devices") or []
    if software and facts.get("vulkan.software_only") and not devices:
        return (
            f"{kind} build; the only Vulkan device here is {software[0]}, a software Vulkan "
            "device (Mesa, runs on the CPU): correct, but not a GPU. llama.cpp skips it "
            "unless GGML_VK_VISIBLE_DEVICES=0 selects it"
        )
    if not facts.get("build.gpu_offload") or not devices:
        why = []
        if kind == "CUDA" or "CUDA" in gpu_backends:
            if facts.get("cuda.libcuda_loadable") is False:
                why.append("libcuda.so.1 does not load")
            if not facts.get("nvidia.smi_found"):
                why.append("no nvidia-smi")
        init = [ln for ln in str(facts.get("build.init_log") or "").splitlines() if ln.strip()]
        if init:
            why.append(init[0].strip())
        detail = "; ".join(why) or "no GPU device registered"
        if _no_gpu_here(facts):
            detail += "; this machine has no GPU at all"
        return (
            f"{kind} build, but no NVIDIA driver / no GPU: {detail}"
            if "CUDA" in kind
            else (f"{kind} build, but no GPU device is available: {detail}")
        )
    offloaded, total = facts.get("probe.offloaded"), facts.get("probe.total")
    name = devices[0]
    if any(str(name).startswith(s) or s in str(name) for s in software):
        name = f"{name} (a software Vulkan device on the CPU: correct, but not a GPU)"
    if facts.get("probe.ran") and facts.get("probe.error"):
        return f"{kind} build with {name}, but the offload probe failed: {facts['probe.error']}"
    if facts.get("probe.ran") and total:
        speed = ""
        gpu_tps, cpu_tps = facts.get("probe.gpu_tps"), facts.get("probe.cpu_tps")
        if gpu_tps and cpu_tps:
            speed = f" ({gpu_tps:.0f} tok/s vs {cpu_tps:.0f} tok/s with n_gpu_layers=0"
            if gpu_tps < cpu_tps:
                speed += "; on a tiny probe model per-token overhead dominates, --model compares"
            speed += ")"
        user = facts.get("probe.user_offloaded")
        if user is not None and offloaded == total and user < total:
            return (
                f"{kind} build works (all {offloaded}/{total} layers offload to {name} with "
                f"n_gpu_layers=-1), but your Llama() arguments offload {user}/{total}"
            )
        if offloaded == total:
            return f"{kind} build, all {offloaded}/{total} layers offloaded to {name}{speed}"
        return f"{kind} build, only {offloaded}/{total} layers offloaded to {name}{speed}"
    return f"{kind} build with {len(devices)} GPU device(s) ({name}); offload probe not run"


def collect_facts(
    options: DoctorOptions,
) -> tuple[Facts, BuildInfo | None, dict[str, dict[str, Any]]]:
    env = dict(os.environ if options.env is None else options.env)
    facts: Facts = {}
    options.step("inspecting llama_cpp")
    host = host_facts()
    facts.update(host)
    info: BuildInfo | None = None
    crash: str | None = None
    try:
        info = buildinfo.collect_in_subprocess(options.python, env=options.pip_env)
    except BuildInfoError as exc:
        m = re.search(r"killed by (SIG\w+)", str(exc))
        crash = m.group(1) if m else None
        facts["build.error"] = str(exc)
    facts["python.executable"] = options.python
    facts.update(build_facts(info, crash, host))
    facts.update(vulkan_facts(info))
    if host.get("os.system") == "Darwin":
        facts["python.translated"] = bool(
            host.get("host.arm64_capable") and facts.get("python.machine") == "x86_64"
        )
    options.step("reading the machine")
    nv = nvidia_facts()
    facts.update(nv)
    facts.update(cuda_facts(info, nv))
    facts.update(env_facts(env))
    facts.update(pip_cache_facts(pip_cache_dir(options.python, options.pip_env), info))
    facts.update(gpu_presence_facts(host, nv))
    options.step("reading the logs")
    facts.update(user_input_facts(facts, options.commands, options.logs))
    facts.update(runtime_facts(options.kwargs))
    options.step("probing offload")
    probes: dict[str, dict[str, Any]] = {}
    wants_probe = (options.probe or options.kwargs is not None) and bool(info and info.installed)
    model: Path | None = options.model
    if wants_probe and model is None:
        try:
            model = default_probe_model()
        except Exception as exc:  # no model, no probe: say why instead of failing
            facts["probe.error"] = f"no probe model: {exc}"
            wants_probe = False
    if wants_probe and model is not None and options.probe and info is not None:
        run_env = options.pip_env

        def probe(kwargs: Mapping[str, Any]) -> dict[str, Any]:
            return buildinfo.probe_in_subprocess(
                options.python, model, kwargs, tokens=options.probe_tokens, env=run_env
            )

        probes["gpu"] = probe({"n_gpu_layers": -1})
        if info.gpu_offload:
            probes["cpu"] = probe({"n_gpu_layers": 0})
        if options.kwargs is not None:
            probes["user"] = probe(options.kwargs)
        facts["probe.model"] = str(model)
    elif wants_probe and model is not None and options.kwargs is not None:
        probes["user"] = buildinfo.probe_in_subprocess(
            options.python, model, options.kwargs, tokens=2, env=options.pip_env
        )
    error = facts.get("probe.error")
    facts.update(probe_facts(probes))
    facts["probe.error"] = facts.get("probe.error") or error
    facts.update(hint_facts(facts))
    return facts, info, probes


def user_input_facts(
    facts: Mapping[str, Any], commands: Sequence[str], logs: Sequence[str]
) -> Facts:
    """Facts from what the user tells the doctor: install commands and attached logs, read
    on top of the machine/interpreter ``facts`` (the switches combine CMAKE_ARGS from both)."""
    out: Facts = {}
    out.update(install_facts(commands))
    out.update(build_log.log_facts(build_log.joined(logs)))
    out.update(switch_facts({**facts, **out}))
    return out


def diagnose(
    facts: Mapping[str, Any],
    env: Mapping[str, str],
    causes: Sequence[Cause] | None = None,
    info: BuildInfo | None = None,
    probes: dict[str, dict[str, Any]] | None = None,
) -> DoctorReport:
    """Verdict and matching causes for a set of facts (hints are filled in here)."""
    full: Facts = {**facts, **hint_facts(facts)}
    return DoctorReport(
        verdict=verdict(full),
        facts=full,
        matches=match_causes(full, causes),
        build=info,
        probes=probes or {},
        env=env,
    )


def run_doctor(options: DoctorOptions, causes: Sequence[Cause] | None = None) -> DoctorReport:
    facts, info, probes = collect_facts(options)
    env = dict(os.environ if options.env is None else options.env)
    options.step("matching causes")
    return diagnose(facts, env, causes, info, probes)


# --------------------------------------------------------------------------- rendering

_SUMMARY_FACTS = (
    ("OS", "os.pretty"),
    ("CPU", "cpu.model"),
    ("Python", "python.executable"),
    ("Python version / arch", ("python.version", "python.machine")),
    ("llama-cpp-python", "llama.version"),
    ("installed from", ("provenance.source", "provenance.direct_url")),
    ("wheel", ("provenance.wheel_tags", "provenance.wheel_generator")),
    ("backends in the build", "build.compiled_backends"),
    ("backend libraries", "build.backend_libs"),
    ("GPU offload supported", "build.gpu_offload"),
    ("ggml devices", "build.devices"),
    ("CUDA archs in the build", "build.cuda_archs"),
    ("CPU features in the build", "build.cpu_features"),
    ("system info", "build.system_info"),
    ("backend init log", "build.init_log"),
    ("NVIDIA GPUs", "nvidia.gpus"),
    ("driver / CUDA (nvidia-smi)", ("nvidia.driver_version", "nvidia.cuda_version")),
    ("GPU compute capability", "nvidia.compute_caps"),
    ("arch match", "cuda.arch_match"),
    ("libcuda.so.1 loads", ("cuda.libcuda_loadable", "cuda.libcuda_error")),
    ("nvcc", ("cuda.nvcc_found", "cuda.nvcc_version")),
    ("CUDA runtime of the build", "cuda.runtime_major"),
    ("CMAKE_ARGS", "env.CMAKE_ARGS"),
    (
        "FORCE_CMAKE / legacy flags",
        ("env.FORCE_CMAKE", "env.LLAMA_CUBLAS", "env.LLAMA_CUDA", "env.GGML_CUBLAS"),
    ),
    ("container", ("container.detected", "container.nvidia_devices")),
    ("pip cache", ("pip_cache.dir", "pip_cache.llama_wheels", "pip_cache.matches_installed")),
    ("probe", ("probe.offloaded", "probe.total", "probe.gpu_tps", "probe.cpu_tps")),
)


def _fact_text(facts: Mapping[str, Any], key: str | tuple[str, ...]) -> str | None:
    keys = (key,) if isinstance(key, str) else key
    values = [facts.get(k) for k in keys]
    if all(v is None or v == "" or v == [] for v in values):
        return None
    shown = []
    for v in values:
        if isinstance(v, float):
            shown.append(f"{v:.1f}")
        elif isinstance(v, list):
            shown.append(", ".join(map(str, v)) or "-")
        else:
            shown.append("-" if v is None else str(v))
    return " / ".join(shown)


_NO_MATCH = (
    "No known cause matched. The facts below are what the doctor saw; --markdown FILE writes "
    "them into a report you can attach to an issue."
)


def log_summary(facts: Mapping[str, Any]) -> list[str]:
    """What the attached log shows, in a few lines (empty without a log)."""
    if not facts.get("user.log"):
        return []
    kinds = ", ".join(STEP_NAMES.get(k, k) for k in facts.get("log.kinds") or [])
    out = [
        f"The log shows: {kinds}."
        if kinds
        else "The log shows no pip, CMake, compiler or llama.cpp lines the doctor knows."
    ]
    if facts.get("log.build_failed") or facts.get("log.failed_line"):
        step = facts.get("log.failed_step_label") or "unknown step"
        out.append(f"Failing step: {step}: {facts.get('log.failed_line')}")
    if facts.get("log.offload_total"):
        seen = ", ".join(facts.get("log.runtime_gpu_backends") or []) or "no GPU backend"
        out.append(
            f"Run time in the log: offloaded {facts.get('log.offloaded')}/"
            f"{facts.get('log.offload_total')} layers to GPU ({seen} seen)"
        )
    return out


def render_text(report: DoctorReport) -> str:
    lines = [report.verdict, ""]
    summary = log_summary(report.facts)
    if summary:
        lines += [*summary, ""]
    if report.matches:
        lines.append("Causes found:")
        for i, m in enumerate(report.matches, 1):
            lines.append(f"{i}. [{m.cause.severity}] {m.cause.title} ({m.cause.id})")
            lines += [f"   evidence: {e}" for e in m.evidence]
            lines.append(f"   why: {m.cause.explanation}")
            lines += [f"   fix: {c}" for c in m.fix]
            lines.append(f"   reported in: {', '.join(m.cause.source)}")
            if m.cause.replay:
                lines.append(f"   replay: llama-harness repro {m.cause.replay} --fix")
        lines.append("")
    else:
        lines += [_NO_MATCH, ""]
    lines.append("Facts:")
    for label, key in _SUMMARY_FACTS:
        text = _fact_text(report.facts, key)
        if text is not None:
            for j, part in enumerate(text.splitlines() or [""]):
                lines.append(f"  {label + ':' if j == 0 else '':28} {part}")
    lines += _detail_lines(report)
    return redact_text("\n".join(lines), report.env) + "\n"


def _detail_lines(report: DoctorReport) -> list[str]:
    """The pip-cache wheels and each probe run, one line each."""
    lines: list[str] = []
    for wheel in report.facts.get("pip_cache.wheels") or []:
        same = " (identical to the installed libraries)" if wheel["matches_installed"] else ""
        lines.append(
            f"  pip cache wheel:             {Path(wheel['file']).name} "
            f"[{', '.join(wheel['backends']) or '?'}]{same}"
        )
    for name, run in report.probes.items():
        if run.get("error"):
            lines.append(f"  probe {name:5}                {run['kwargs']}: {run['error']}")
            continue
        total = run.get("total")
        layers = f"{run.get('offloaded')}/{total} layers offloaded" if total else "no offload"
        tps = run.get("tokens_per_s")
        speed = f", {tps:.1f} tok/s" if isinstance(tps, float) else ""
        lines.append(f"  probe {name:5}                {run.get('kwargs')}: {layers}{speed}")
    return lines


def render_markdown(report: DoctorReport) -> str:
    out = ["# llama-harness doctor", "", f"**Verdict:** {report.verdict}", ""]
    summary = log_summary(report.facts)
    if summary:
        out += ["## The log", "", *[f"- {line}" for line in summary], ""]
    if report.matches:
        out += ["## Causes", ""]
        for m in report.matches:
            out += [f"### {m.cause.title} (`{m.cause.id}`, {m.cause.severity})", ""]
            out += ["Evidence:", ""] + [f"- `{e}`" for e in m.evidence] + [""]
            out += [m.cause.explanation, "", "Fix:", "", "```sh", *m.fix, "```", ""]
            out += ["Reported in: " + ", ".join(m.cause.source), ""]
    else:
        out += [_NO_MATCH, ""]
    out += ["## Facts", "", "| fact | value |", "| --- | --- |"]
    for label, key in _SUMMARY_FACTS:
        text = _fact_text(report.facts, key)
        if text is not None:
            cell = text.replace("|", "\\|").replace("\n", "<br>")
            out.append(f"| {label} | {cell} |")
    out += ["", "<details><summary>all facts (JSON)</summary>", "", "```json"]
    out.append(json.dumps(report.to_dict()["facts"], indent=2, sort_keys=True, default=str))
    out += ["```", "", "</details>", ""]
    return redact_text("\n".join(out), report.env)


def render_json(report: DoctorReport) -> str:
    """The report as JSON; each string is redacted before it is serialised (redacting the
    serialised text would read a log's escaped newlines as part of a secret's value and
    swallow the lines after it)."""
    return json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str)
