"""llama.cpp's own ``llama-bench``, built from the same sdist as the Python package.

Parity is only meaningful when both sides run the same machine code with the same settings,
so ``llama-bench`` is compiled from ``vendor/llama.cpp`` of the pinned llama-cpp-python sdist
with the variant's CMAKE_ARGS plus what llama-cpp-python's own CMakeLists forces (shared
libraries, ``LLAMA_CURL=OFF``, Release), and run with llama-cpp-python's defaults spelled out:
``-fa 0`` (llama-bench defaults to ``auto``), ``-b 512 -ub 512`` (llama-bench: 2048/512) and an
explicit ``-t`` (llama-bench: physical cores; llama-cpp-python: cpu_count // 2).

Steps (each takes the previous result):
``cmake_args_for(variant)`` -> ``build_key(...)`` -> ``build(...)`` (cached under
``cache_root()/llama-bench/<key>/`` with a ``build.json`` holding the binary's sha256; compiled
in the stable ``build_dir("llama-bench-<variant>")`` with ccache launchers, so a rebuild after a
wiped cache takes about a second) -> ``run(...)`` per model -> ``write_results(...)`` to
``reports_dir()/<variant>/llama-bench.json``, which :mod:`harness.report` reads.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import paths

#: What llama-cpp-python's CMakeLists.txt forces, plus "llama-bench only" switches.
BASE_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_COMMON=ON",
)
TOOL_CMAKE_ARGS = (
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
)
KEY_VERSION = 1
ENV_THREADS = "LLAMA_HARNESS_N_THREADS"


class LlamaBenchError(RuntimeError):
    """Building or running llama-bench failed; the message names the cause and the fix."""


# --------------------------------------------------------------------------- settings


def default_threads() -> int:
    """Cores this process may run on (``sched_getaffinity``), the thread count both sides use."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise LlamaBenchError(
            f"${name}={raw!r} is not an integer; fix: set it to a whole number >= {minimum} "
            f"or unset it (default {default})"
        ) from None
    if value < minimum:
        raise LlamaBenchError(f"${name}={value} must be >= {minimum}; fix: unset it or raise it")
    return value


@dataclass(frozen=True)
class BenchSettings:
    """The llama-bench test shape, shared by benchmarks/ and the llama-bench run.

    Environment overrides: ``LLAMA_HARNESS_N_THREADS``, ``LLAMA_HARNESS_N_BATCH`` (also
    n_ubatch), ``LLAMA_HARNESS_N_PROMPT``, ``LLAMA_HARNESS_N_GEN``, ``LLAMA_HARNESS_BENCH_REPS``.
    """

    n_threads: int
    n_batch: int = 512
    n_ubatch: int = 512
    n_prompt: int = 512
    n_gen: int = 128
    reps: int = 5
    flash_attn: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BenchSettings:
        env = os.environ if env is None else env
        n_batch = _env_int(env, "LLAMA_HARNESS_N_BATCH", 512)
        return cls(
            n_threads=_env_int(env, ENV_THREADS, default_threads()),
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_prompt=_env_int(env, "LLAMA_HARNESS_N_PROMPT", 512),
            n_gen=_env_int(env, "LLAMA_HARNESS_N_GEN", 128),
            reps=_env_int(env, "LLAMA_HARNESS_BENCH_REPS", 5),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- build


@dataclass(frozen=True)
class BuildPlan:
    variant: str
    version: str
    source: Path  # vendor/llama.cpp inside the unpacked sdist
    cmake_args: tuple[str, ...]  # the wheel's effective args (incl. toolchain additions)
    env: Mapping[str, str]
    notes: tuple[str, ...]
    cuda: bool
    wheel_key: str  # the wheel-cache key of the same variant: same inputs, same code


@dataclass(frozen=True)
class LlamaBenchBuild:
    key: str
    directory: Path
    binary: Path
    lib_dir: Path
    info: Mapping[str, Any]


def cache_dir() -> Path:
    return paths.cache_root() / "llama-bench"


def plan(variant: str = "cpu") -> BuildPlan:
    """The variant's wheel build plan (harness.build.prepare: pinned sdist, unpacked at its
    stable path, effective CMake args incl. the CUDA toolchain's) turned into a llama-bench
    plan over the same sources and flags."""
    from harness.build import BuildError, prepare
    from harness.variants import VariantError, get_variant

    try:
        wp = prepare(get_variant(variant))
    except (BuildError, VariantError) as exc:
        raise LlamaBenchError(f"cannot plan llama-bench for {variant!r}: {exc}") from exc
    source = wp.source / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").is_file():
        raise LlamaBenchError(
            f"{source}/CMakeLists.txt not found in the unpacked sdist; fix: delete {wp.source} "
            "so the next run unpacks it again"
        )
    args = wp.cmake_args
    cuda = any(re.match(r"-DGGML_CUDA(:BOOL)?=(on|1|true|yes)$", a, re.I) for a in args)
    return BuildPlan(
        variant=variant,
        version=wp.version,
        source=source,
        cmake_args=tuple(args),
        env=dict(wp.env),
        notes=tuple(wp.notes),
        cuda=cuda,
        wheel_key=wp.key,
    )


def full_cmake_args(p: BuildPlan, *, ccache: str | None) -> list[str]:
    args = [*BASE_CMAKE_ARGS, "-DGGML_CCACHE=OFF"]
    if ccache:
        args += [f"-DCMAKE_C_COMPILER_LAUNCHER={ccache}", f"-DCMAKE_CXX_COMPILER_LAUNCHER={ccache}"]
        if p.cuda:
            args.append(f"-DCMAKE_CUDA_COMPILER_LAUNCHER={ccache}")
    return [*args, *p.cmake_args, *TOOL_CMAKE_ARGS]


def build_key(p: BuildPlan) -> str:
    """The wheel's key (sdist, CMake args, toolchain, env) plus llama-bench's own switches."""
    payload = {
        "key_version": KEY_VERSION,
        "what": "llama-bench",
        "wheel_key": p.wheel_key,
        "base": list(BASE_CMAKE_ARGS),
        "tool": list(TOOL_CMAKE_ARGS),
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return f"{p.variant}-{hashlib.sha256(blob).hexdigest()[:16]}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def cached(key: str) -> LlamaBenchBuild | None:
    """A cached build whose binary still matches the sha256 in its build.json."""
    d = cache_dir() / key
    meta_path = d / "build.json"
    binary = d / "bin" / "llama-bench"
    if not meta_path.is_file() or not binary.is_file():
        return None
    try:
        info = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(info, dict) or info.get("binary_sha256") != _sha256(binary):
        return None
    return LlamaBenchBuild(key=key, directory=d, binary=binary, lib_dir=d / "lib", info=info)


Reporter = Callable[[int, int, str], None]


def _stream(
    cmd: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Any, report: Reporter | None
) -> int:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    assert proc.stdout is not None
    step = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)")
    for line in proc.stdout:
        log.write(line)
        m = step.match(line)
        if m and report is not None:
            report(int(m.group(1)), int(m.group(2)), m.group(3)[:80])
    return proc.wait()


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def build(
    variant: str = "cpu",
    *,
    force: bool = False,
    jobs: int | None = None,
    report: Reporter | None = None,
    say: Callable[[str], None] | None = None,
) -> LlamaBenchBuild:
    """Build (or reuse) llama-bench for ``variant``; returns the cached, verified binary."""
    p = plan(variant)
    key = build_key(p)
    if not force:
        found = cached(key)
        if found is not None:
            if say:
                say(f"llama-bench {key}: cached at {found.directory}")
            return found
    for tool in ("cmake",):
        if shutil.which(tool) is None:
            raise LlamaBenchError(f"{tool} not found on PATH; fix: pip install cmake")
    ninja = shutil.which("ninja")
    ccache = shutil.which("ccache")
    bdir = paths.build_dir(f"llama-bench-{variant}")
    bdir.mkdir(parents=True, exist_ok=True)
    log_path = paths.logs_dir() / f"llama-bench-{variant}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(p.env)
    if jobs:
        env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(jobs)
    configure = ["cmake", "-S", str(p.source), "-B", str(bdir)]
    generator_file = bdir / "CMakeCache.txt"
    if ninja and not generator_file.exists():
        configure += ["-G", "Ninja"]
    configure += full_cmake_args(p, ccache=ccache)
    compile_cmd = ["cmake", "--build", str(bdir), "--target", "llama-bench"]
    if jobs:
        compile_cmd += ["-j", str(jobs)]
    started = time.monotonic()
    with log_path.open("w", encoding="utf-8") as log:
        if say:
            say(f"configuring llama-bench ({variant}) in {bdir}; log: {log_path}")
        rc = _stream(configure, cwd=bdir, env=env, log=log, report=None)
        if rc != 0:
            raise LlamaBenchError(
                f"cmake configure of llama-bench ({variant}) failed (exit {rc}); last lines of "
                f"{log_path}:\n{_tail(log_path)}\nfix: see the log; `rm -r {bdir}` if the build "
                "folder is stale"
            )
        if say:
            say(f"compiling llama-bench ({variant})")
        rc = _stream(compile_cmd, cwd=bdir, env=env, log=log, report=report)
        if rc != 0:
            raise LlamaBenchError(
                f"compiling llama-bench ({variant}) failed (exit {rc}); last lines of "
                f"{log_path}:\n{_tail(log_path)}\nfix: see the log"
            )
    seconds = time.monotonic() - started
    return _publish(p, key, bdir / "bin", seconds=seconds, configure=configure, log=log_path)


def _publish(
    p: BuildPlan, key: str, bin_dir: Path, *, seconds: float, configure: list[str], log: Path
) -> LlamaBenchBuild:
    """Copy the binary and its shared libraries into the cache: temp folder, then rename."""
    binary = bin_dir / "llama-bench"
    if not binary.is_file():
        raise LlamaBenchError(f"{binary} missing after the build; fix: see {log}")
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        (tmp / "bin").mkdir()
        (tmp / "lib").mkdir()
        shutil.copy2(binary, tmp / "bin" / "llama-bench")
        libs = []
        for lib in sorted(bin_dir.glob("*.so*")):
            shutil.copy2(lib, tmp / "lib" / lib.name, follow_symlinks=True)
            libs.append(lib.name)
        from harness import toolchain

        info = {
            "key": key,
            "variant": p.variant,
            "sdist_version": p.version,
            "wheel_key": p.wheel_key,
            "source": str(p.source),
            "cmake_args": list(p.cmake_args),
            "configure": configure,
            "notes": list(p.notes),
            "toolchain": toolchain.compiler_identities(cuda=p.cuda),
            "libs": libs,
            "binary_sha256": _sha256(tmp / "bin" / "llama-bench"),
            "build_seconds": round(seconds, 1),
            "built_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        final = root / key
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    found = cached(key)
    assert found is not None
    return found


# --------------------------------------------------------------------------- run


def command(b: LlamaBenchBuild, model: Path, s: BenchSettings, *, n_gpu_layers: int) -> list[str]:
    return [
        str(b.binary),
        "-m", str(model),
        "-p", str(s.n_prompt),
        "-n", str(s.n_gen),
        "-b", str(s.n_batch),
        "-ub", str(s.n_ubatch),
        "-t", str(s.n_threads),
        "-fa", "1" if s.flash_attn else "0",
        "-ngl", str(n_gpu_layers),
        "-r", str(s.reps),
        "-o", "json",
    ]  # fmt: skip


def run(
    b: LlamaBenchBuild,
    model: Path,
    s: BenchSettings,
    *,
    n_gpu_layers: int = 0,
    timeout: float = 1800.0,
) -> list[dict[str, Any]]:
    """Run llama-bench once on ``model``; its ``-o json`` records (pp and tg)."""
    cmd = command(b, model, s, n_gpu_layers=n_gpu_layers)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        x for x in (str(b.lib_dir), env.get("LD_LIBRARY_PATH", "")) if x
    )
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise LlamaBenchError(
            f"llama-bench on {model} ran over {timeout:.0f} s; fix: lower "
            "LLAMA_HARNESS_BENCH_REPS or use a smaller model"
        ) from None
    if proc.returncode != 0:
        from harness.buildinfo import describe_returncode

        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise LlamaBenchError(
            f"llama-bench on {model} failed: {describe_returncode(proc.returncode)}\n{tail}\n"
            f"command: {' '.join(cmd)}"
        )
    try:
        records = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise LlamaBenchError(
            f"llama-bench printed no JSON ({exc.msg}); stdout starts {proc.stdout[:200]!r}"
        ) from exc
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise LlamaBenchError(f"llama-bench JSON is not a list of records: {proc.stdout[:200]!r}")
    return records


def run_models(
    variant: str,
    models: Mapping[str, Path],
    s: BenchSettings,
    *,
    n_gpu_layers: int = 0,
    b: LlamaBenchBuild | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build (cached) and run llama-bench on every model; the llama-bench.json document."""
    from harness.download import sha256_file

    b = b or build(variant, say=say)
    runs = []
    for name, path in models.items():
        if say:
            args = command(b, path, s, n_gpu_layers=n_gpu_layers)[3:]
            say(f"llama-bench {variant} on {name}: {' '.join(args)}")
        records = run(b, path, s, n_gpu_layers=n_gpu_layers)
        runs.append(
            {
                "model": name,
                "model_path": str(path),
                "model_sha256": sha256_file(path),
                "model_size": path.stat().st_size,
                "results": records,
            }
        )
    return {
        "variant": variant,
        "build_key": b.key,
        "binary": str(b.binary),
        "binary_sha256": b.info.get("binary_sha256"),
        "wheel_key": b.info.get("wheel_key"),
        "cmake_args": b.info.get("cmake_args"),
        "settings": s.to_dict(),
        "n_gpu_layers": n_gpu_layers,
        "command": " ".join(command(b, Path("MODEL"), s, n_gpu_layers=n_gpu_layers)[1:]),
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "runs": runs,
    }


def write_results(doc: Mapping[str, Any], path: Path) -> Path:
    """Write ``doc`` atomically (temp file beside it, then rename)."""
    from harness.download import publish, temp_path_beside

    tmp = temp_path_beside(path)
    try:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def results_path(variant: str) -> Path:
    return paths.reports_dir() / variant / "llama-bench.json"
