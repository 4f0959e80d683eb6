"""What an installed ``llama_cpp`` really is.

llama-cpp-python tells little about itself: ``llama_print_system_info()`` (the compiled-in
backends and CPU features), ``llama_supports_gpu_offload()`` and ``llama_max_devices()``. This
module adds what it does not bind: the ggml backend registry and devices (called through
ctypes on ``llama_cpp._ggml.libggml``), the ``libggml-*`` libraries shipped in the package,
the CUDA architectures the build contains, and how pip installed it (wheel tag, direct URL,
the sha256 of each library from the RECORD file, to match against pip's wheel cache).

Importing ``llama_cpp`` prints backend initialisation errors to the C-level stderr (e.g.
``ggml_cuda_init: failed to initialize CUDA: ...``); they are captured into ``init_log``.

Run ``python -m harness.build.buildinfo --json`` where the harness is importable; this module
needs only the standard library and :mod:`saiverse_llm.devices` (the one device probe), and
:func:`collect_in_subprocess` runs both by file path, so any interpreter works (a bare venv
that holds nothing but llama-cpp-python, another Python).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

# Only ``from saiverse_llm.devices import ...``: run by path, the child has that one module
# (devices.child_command loads it), not the saiverse_llm package.
from saiverse_llm.devices import (
    BackendDevice,
    canonical_backend,
    describe_returncode,
    ggml_devices,
)
from saiverse_llm.devices import child_command as _child_command

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DIST_NAMES = ("llama_cpp_python", "llama-cpp-python")

# libggml-<suffix>.so -> backend. CPU variants of a GGML_BACKEND_DL build are
# libggml-cpu-haswell.so, libggml-cpu-skylakex.so, ...
_LIB_RE = re.compile(r"^(?:lib)?ggml-([a-z0-9]+)(?:-[a-z0-9_]+)?\.(?:so|dylib|dll)(?:\.[0-9.]+)?$")
_SHARED_LIB_RE = re.compile(r"\.(?:so|dylib|dll)(?:\.[0-9.]+)?$")
# Lines the backends print while initialising that tell why a device is missing.
_INIT_LOG_RE = re.compile(
    r"ggml_cuda_init|CUDA|cuda|ggml_vulkan|vulkan|ggml_metal|metal|sycl|hip|rocm|"
    r"failed|error|warning|no usable|not found|cannot|illegal|load_backend|register_backend",
    re.IGNORECASE,
)


class BuildInfoError(RuntimeError):
    """Collecting build information in another interpreter failed (crash, timeout, bad output)."""


@dataclass
class Provenance:
    """How pip installed the package, from its ``.dist-info``."""

    dist_info: str | None = None
    version: str | None = None
    installer: str | None = None
    requested: bool | None = None
    wheel_generator: str | None = None
    wheel_tags: list[str] = field(default_factory=list)
    direct_url: str | None = None  # credentials removed
    source: str = "unknown"  # index | file | dir | editable | vcs | unknown
    installed_at: float | None = None  # mtime of the dist-info folder (epoch seconds)
    lib_hashes: dict[str, str] = field(default_factory=dict)  # RECORD path -> "sha256=..."

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        requested = data.get("requested")
        installed_at = data.get("installed_at")
        return cls(
            dist_info=_opt_str(data.get("dist_info")),
            version=_opt_str(data.get("version")),
            installer=_opt_str(data.get("installer")),
            requested=None if requested is None else bool(requested),
            wheel_generator=_opt_str(data.get("wheel_generator")),
            wheel_tags=[str(t) for t in data.get("wheel_tags", [])],
            direct_url=_opt_str(data.get("direct_url")),
            source=str(data.get("source", "unknown")),
            installed_at=None if installed_at is None else float(installed_at),
            lib_hashes={str(k): str(v) for k, v in dict(data.get("lib_hashes", {})).items()},
        )


@dataclass
class BuildInfo:
    """Everything known about one interpreter's ``llama_cpp``."""

    python: str
    python_version: str
    python_machine: str
    platform: str
    llama_cpp_version: str | None = None
    package_dir: str | None = None
    import_error: str | None = None
    system_info: str = ""
    system_info_sections: dict[str, dict[str, str]] = field(default_factory=dict)
    gpu_offload: bool | None = None
    max_devices: int | None = None
    backend_libs: list[str] = field(default_factory=list)
    registries: list[str] = field(default_factory=list)
    devices: list[BackendDevice] = field(default_factory=list)
    compiled_backends: set[str] = field(default_factory=set)
    cuda_archs: list[int] = field(default_factory=list)
    cpu_features: dict[str, bool] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance)
    init_log: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def installed(self) -> bool:
        return self.llama_cpp_version is not None

    @property
    def gpu_devices(self) -> list[BackendDevice]:
        return [d for d in self.devices if d.type in ("GPU", "IGPU")]

    @property
    def gpu_backends(self) -> set[str]:
        return self.compiled_backends - {"CPU", "BLAS", "RPC"}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["compiled_backends"] = sorted(self.compiled_backends)
        data["devices"] = [d.to_dict() for d in self.devices]
        data["provenance"] = self.provenance.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BuildInfo:
        offload = data.get("gpu_offload")
        max_devices = data.get("max_devices")
        sections = {
            str(s): {str(k): str(v) for k, v in dict(kv).items()}
            for s, kv in dict(data.get("system_info_sections", {})).items()
        }
        return cls(
            python=str(data.get("python", "")),
            python_version=str(data.get("python_version", "")),
            python_machine=str(data.get("python_machine", "")),
            platform=str(data.get("platform", "")),
            llama_cpp_version=_opt_str(data.get("llama_cpp_version")),
            package_dir=_opt_str(data.get("package_dir")),
            import_error=_opt_str(data.get("import_error")),
            system_info=str(data.get("system_info", "")),
            system_info_sections=sections,
            gpu_offload=None if offload is None else bool(offload),
            max_devices=None if max_devices is None else int(max_devices),
            backend_libs=[str(x) for x in data.get("backend_libs", [])],
            registries=[str(x) for x in data.get("registries", [])],
            devices=[BackendDevice.from_dict(d) for d in data.get("devices", [])],
            compiled_backends={str(x) for x in data.get("compiled_backends", [])},
            cuda_archs=[int(x) for x in data.get("cuda_archs", [])],
            cpu_features={str(k): bool(v) for k, v in dict(data.get("cpu_features", {})).items()},
            provenance=Provenance.from_dict(dict(data.get("provenance", {}))),
            init_log=[str(x) for x in data.get("init_log", [])],
            errors=[str(x) for x in data.get("errors", [])],
        )


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------------- parsing


def parse_system_info(text: str) -> dict[str, dict[str, str]]:
    """``"CUDA : ARCHS = 900 | NO_VMM = 1 | CPU : AVX2 = 1 | "`` -> {section: {key: value}}."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.split("|"):
        token = raw.strip()
        if not token:
            continue
        if " : " in token or token.endswith(" :"):
            name, _, token = token.partition(":")
            current = sections.setdefault(name.strip(), {})
            token = token.strip()
            if not token:
                continue
        if current is None:
            current = sections.setdefault("", {})
        key, sep, value = token.partition("=")
        current[key.strip()] = value.strip() if sep else ""
    return sections


def backend_of_lib(filename: str) -> str | None:
    """``libggml-cuda.so`` -> ``CUDA``; ``libggml-cpu-haswell.so`` -> ``CPU``; others None."""
    match = _LIB_RE.match(filename)
    if not match:
        return None
    suffix = match.group(1)
    if suffix == "base":
        return None
    return canonical_backend(suffix)


def parse_cuda_archs(sections: Mapping[str, Mapping[str, str]]) -> list[int]:
    """The ``ARCHS`` feature of the CUDA (or ROCm/MUSA) section: ``"750,800,860"`` -> ints."""
    for name, kv in sections.items():
        if canonical_backend(name) in ("CUDA", "HIP", "MUSA") and "ARCHS" in kv:
            return sorted({int(a) for a in re.findall(r"\d+", kv["ARCHS"])})
    return []


def parse_cpu_features(sections: Mapping[str, Mapping[str, str]]) -> dict[str, bool]:
    """CPU section flags such as ``AVX2 = 1`` -> {"AVX2": True}; non-boolean values skipped."""
    features: dict[str, bool] = {}
    for name, kv in sections.items():
        if canonical_backend(name) != "CPU":
            continue
        for key, value in kv.items():
            if value in ("0", "1"):
                features[key] = value == "1"
    return features


def compiled_backends_of(
    sections: Mapping[str, Mapping[str, str]], libs: list[str], registries: list[str]
) -> set[str]:
    found = {canonical_backend(s) for s in sections if s}
    found.update(b for b in (backend_of_lib(lib) for lib in libs) if b)
    found.update(canonical_backend(r) for r in registries)
    return found


def redact_url(url: str) -> str:
    """Drop ``user:password@`` from a URL (pip records it in direct_url.json)."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", url)


# --------------------------------------------------------------------------- collecting


@contextlib.contextmanager
def capture_fd2() -> Iterator[list[str]]:
    """Capture what C code writes to file descriptor 2 (the llama.cpp/ggml log) into a list."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            lines.extend(line for line in text.splitlines() if line.strip())


def collect_provenance() -> Provenance:
    dist: metadata.Distribution | None = None
    for name in DIST_NAMES:
        try:
            dist = metadata.distribution(name)
            break
        except metadata.PackageNotFoundError:
            continue
    if dist is None:
        return Provenance()
    prov = Provenance(version=dist.version)
    path = getattr(dist, "_path", None)
    if isinstance(path, Path):
        prov.dist_info = str(path)
        with contextlib.suppress(OSError):
            prov.installed_at = path.stat().st_mtime
    prov.installer = (dist.read_text("INSTALLER") or "").strip() or None
    prov.requested = dist.read_text("REQUESTED") is not None
    wheel = dist.read_text("WHEEL") or ""
    for line in wheel.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Generator":
            prov.wheel_generator = value.strip()
        elif key.strip() == "Tag":
            prov.wheel_tags.append(value.strip())
    direct = dist.read_text("direct_url.json")
    if direct:
        try:
            info = json.loads(direct)
        except json.JSONDecodeError:
            info = {}
        url = str(info.get("url", ""))
        prov.direct_url = redact_url(url) if url else None
        if "vcs_info" in info:
            prov.source = "vcs"
        elif "dir_info" in info:
            prov.source = "editable" if info["dir_info"].get("editable") else "dir"
        elif "archive_info" in info:
            prov.source = "file" if url.startswith("file:") else "url"
    else:
        prov.source = "index"
    for f in dist.files or []:
        if f.hash is not None and f.parts[0] == "llama_cpp" and _SHARED_LIB_RE.search(f.name):
            prov.lib_hashes[str(f)] = f"{f.hash.mode}={f.hash.value}"
    return prov


def _package_libs(package_dir: Path) -> list[str]:
    names: set[str] = set()
    for folder in (package_dir / "lib", package_dir):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.is_file() and (backend_of_lib(p.name) or p.name.startswith(("libggml", "ggml"))):
                names.add(p.name)
    # One name per library: the unversioned one when present, else the versioned one (a
    # slimmed wheel, harness/ship/bundle.py, keeps only libggml-cpu.so.0, the name the loader asks).
    by_stem: dict[str, str] = {}
    for name in sorted(names, key=len):
        by_stem.setdefault(re.sub(r"(\.(?:so|dylib|dll))(?:\.[0-9.]+)+$", r"\1", name), name)
    return sorted(by_stem.values())


def collect_build_info() -> BuildInfo:
    """Inspect the ``llama_cpp`` importable by this interpreter (never raises on its absence)."""
    info = BuildInfo(
        python=sys.executable,
        python_version=platform.python_version(),
        python_machine=platform.machine(),
        platform=platform.platform(),
    )
    fresh_import = "llama_cpp" not in sys.modules
    try:
        if fresh_import:
            with capture_fd2() as log:
                try:
                    import llama_cpp
                finally:
                    info.init_log.extend(log)
        else:
            import llama_cpp
    except Exception as exc:  # a broken library: OSError, RuntimeError from the loader
        info.import_error = f"{type(exc).__name__}: {exc}"
        info.provenance = collect_provenance()
        # What the package would contain, read without importing it.
        import importlib.util

        spec = importlib.util.find_spec("llama_cpp") if "llama_cpp" not in sys.modules else None
        if spec is not None and spec.origin:
            package_dir = Path(spec.origin).resolve().parent
            info.package_dir = str(package_dir)
            info.backend_libs = _package_libs(package_dir)
            info.compiled_backends = compiled_backends_of({}, info.backend_libs, [])
        return info

    info.llama_cpp_version = str(getattr(llama_cpp, "__version__", "unknown"))
    package_dir = Path(llama_cpp.__file__).resolve().parent
    info.package_dir = str(package_dir)
    info.backend_libs = _package_libs(package_dir)
    with capture_fd2() as log:
        try:
            raw = llama_cpp.llama_print_system_info()
            info.system_info = raw.decode("utf-8", "replace") if raw else ""
            info.gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
            info.max_devices = int(llama_cpp.llama_max_devices())
        except Exception as exc:
            info.errors.append(f"llama_cpp introspection failed: {type(exc).__name__}: {exc}")
        try:
            from llama_cpp import _ggml

            info.registries, info.devices = ggml_devices(_ggml.libggml)
        except Exception as exc:
            info.errors.append(f"ggml device enumeration failed: {type(exc).__name__}: {exc}")
    info.init_log.extend(log)
    info.system_info_sections = parse_system_info(info.system_info)
    info.cuda_archs = parse_cuda_archs(info.system_info_sections)
    info.cpu_features = parse_cpu_features(info.system_info_sections)
    info.compiled_backends = compiled_backends_of(
        info.system_info_sections, info.backend_libs, info.registries
    )
    info.provenance = collect_provenance()
    return info


def _child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    return dict(os.environ if env is None else env)


def child_command(python: str, *args: str) -> list[str]:
    """``python -m harness.build.buildinfo ARGS``, but by file path: this module needs only the
    standard library and :mod:`saiverse_llm.devices` (loaded by path too), so it runs in any
    interpreter (a bare venv holding nothing but llama-cpp-python, another Python version)
    without putting the project, or the site-packages it is installed in, on that
    interpreter's ``sys.path``."""
    return _child_command(python, __file__, *args)


def keep_init_lines(stderr: str) -> list[str]:
    """The lines of a child's stderr that tell about backend initialisation."""
    return [ln for ln in stderr.splitlines() if ln.strip() and _INIT_LOG_RE.search(ln)]


def collect_in_subprocess(
    python: str, *, timeout: float = 180.0, env: Mapping[str, str] | None = None
) -> BuildInfo:
    """Run ``python -m harness.build.buildinfo --json`` in another interpreter and parse its answer.

    Raises :class:`BuildInfoError` naming the interpreter when the child crashes (e.g. an
    ``Illegal instruction`` while loading the library), times out or prints no JSON.
    """
    cmd = child_command(python, "--json")
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_child_env(env),
            check=False,
        )
    except FileNotFoundError as exc:
        raise BuildInfoError(
            f"{python}: interpreter not found ({exc}); fix: pass the path of an existing "
            "python (e.g. .nox/test-<variant>/bin/python, created by `nox -s test-<variant>`)"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise BuildInfoError(
            f"{python} -m harness.build.buildinfo did not finish within {timeout:.0f} s"
        ) from exc
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    if proc.returncode != 0:
        raise BuildInfoError(
            f"{python} -m harness.build.buildinfo {describe_returncode(proc.returncode)} while "
            f"importing/inspecting llama_cpp (a native crash in the library if killed by a "
            f"signal: SIGILL means the build uses CPU instructions this CPU lacks).\n"
            f"stderr tail:\n{tail}"
        )
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise BuildInfoError(
            f"{python} -m harness.build.buildinfo printed no valid JSON ({exc}); "
            f"stdout starts {proc.stdout[:200]!r}; stderr tail:\n{tail}"
        ) from exc
    info = BuildInfo.from_dict(data)
    for line in keep_init_lines(proc.stderr):
        if line not in info.init_log:
            info.init_log.append(line)
    return info


# --------------------------------------------------------------------------- offload probe

_OFFLOAD_RE = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_ALL_LAYERS = 0x7FFFFFFF  # what llama-cpp-python stores for n_gpu_layers=-1


def run_probe(model: str, kwargs: Mapping[str, Any], tokens: int = 16) -> dict[str, Any]:
    """Load ``model`` with ``Llama(**kwargs)``, count offloaded layers, time ``tokens`` tokens.

    Runs in the interpreter under test (``python -m harness.build.buildinfo --probe``). Returns what
    llama.cpp logged ("offloaded N/M layers to GPU"), the n_gpu_layers value that reached
    llama.cpp, the keyword arguments ``Llama()`` does not know (it swallows them), and tokens/s.
    """
    import inspect
    import time

    import llama_cpp

    params = inspect.signature(llama_cpp.Llama.__init__).parameters
    known = {
        n
        for n, p in params.items()
        if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    args = dict(kwargs)
    args.setdefault("n_ctx", 256)
    args.setdefault("verbose", True)
    result: dict[str, Any] = {
        "model": model,
        "kwargs": dict(kwargs),
        "unknown_kwargs": sorted(set(kwargs) - known),
    }
    with capture_fd2() as log:
        llm = llama_cpp.Llama(model_path=model, **args)
    text = "\n".join(log)
    matches = list(_OFFLOAD_RE.finditer(text))
    match = matches[-1] if matches else None
    result["offload_logged"] = match is not None
    result["offloaded"] = int(match.group(1)) if match else 0
    result["total"] = int(match.group(2)) if match else None
    raw = int(llm.model_params.n_gpu_layers)
    result["effective_n_gpu_layers"] = -1 if raw >= _ALL_LAYERS else raw
    result["log"] = [ln for ln in log if _INIT_LOG_RE.search(ln) or "offload" in ln][-40:]
    prompt = llm.tokenize(b"The quick brown fox")
    with capture_fd2():
        # Warm up first: the first decode on a GPU pays for cuBLAS handles and kernel
        # loading, which would otherwise make the GPU look slower than the CPU.
        for i, _tok in enumerate(llm.generate(prompt, top_k=1, temp=0.0)):
            if i >= 1:
                break
        start = time.perf_counter()
        count = 0
        for _tok in llm.generate(prompt, top_k=1, temp=0.0):
            count += 1
            if count >= tokens:
                break
        elapsed = time.perf_counter() - start
        llm.close()
    result["tokens"] = count
    result["seconds"] = elapsed
    result["tokens_per_s"] = count / elapsed if elapsed > 0 else None
    return result


def probe_in_subprocess(
    python: str,
    model: str | os.PathLike[str],
    kwargs: Mapping[str, Any],
    *,
    tokens: int = 16,
    timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """:func:`run_probe` in another interpreter; a crash becomes ``{"crash": "SIGSEGV", ...}``."""
    cmd = child_command(
        python, "--probe", str(model), "--kwargs", json.dumps(dict(kwargs)), "--tokens", str(tokens)
    )
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=_child_env(env), check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"the probe did not finish within {timeout:.0f} s", "kwargs": dict(kwargs)}
    if proc.returncode != 0:
        out: dict[str, Any] = {
            "error": f"the probe {describe_returncode(proc.returncode)}",
            "stderr_tail": proc.stderr.strip().splitlines()[-15:],
            "kwargs": dict(kwargs),
        }
        if proc.returncode < 0:
            with contextlib.suppress(ValueError):
                out["crash"] = signal.Signals(-proc.returncode).name
        return out
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {
            "error": f"the probe printed no JSON: {proc.stdout[:200]!r}",
            "kwargs": dict(kwargs),
        }
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.build.buildinfo",
        description="Describe the llama_cpp installed in this interpreter.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (default: text)")
    parser.add_argument("--probe", metavar="MODEL", help="load MODEL and report offloaded layers")
    parser.add_argument("--kwargs", default="{}", help="Llama() keyword arguments as JSON")
    parser.add_argument("--tokens", type=int, default=16, help="tokens to generate (default 16)")
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(run_probe(args.probe, json.loads(args.kwargs), args.tokens)))
        return 0
    info = collect_build_info()
    if args.json:
        print(json.dumps(info.to_dict(), indent=2, sort_keys=True))
        return 0
    print(f"python        {info.python} ({info.python_version}, {info.python_machine})")
    if not info.installed:
        print(f"llama_cpp     not importable: {info.import_error or 'not installed'}")
        return 1
    print(f"llama_cpp     {info.llama_cpp_version} at {info.package_dir}")
    print(f"backends      {', '.join(sorted(info.compiled_backends)) or '-'}")
    print(f"gpu offload   {info.gpu_offload}")
    print(f"cuda archs    {', '.join(map(str, info.cuda_archs)) or '-'}")
    for dev in info.devices:
        print(f"device        {dev.name} [{dev.type}/{dev.backend}] {dev.description}")
    print(f"system info   {info.system_info}")
    for line in info.init_log:
        print(f"init log      {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
