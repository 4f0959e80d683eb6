"""Build a llama-cpp-python wheel for a variant, once.

A build is a list of small typed steps, each taking the previous result::

    resolve_sdist -> unpack_sdist -> check_build_requirements -> plan_build (toolchain
    flags, cache key) -> wheel_cache.lookup (hit: done) -> run_pip_wheel (configure: the
    backend's CMake evidence is checked the moment configure ends; compile with a progress
    bar from ninja's [N/M] lines) -> check_wheel_libraries -> wheel_cache.store

The sdist is unpacked at a stable path and built with a stable ``build-dir`` so compiler
command lines are the same from one build to the next and ccache hits. The full log is kept
at ``logs/<variant>-<key[:12]>.log``; on failure its path and last lines are shown.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness import paths
from harness.build import toolchain, wheel_cache
from harness.build.variants import Registry, SdistPin, Variant, load_registry, platform_tag
from saiverse_llm.atomic import atomic_write_json, publish
from saiverse_llm.download import sha256_file
from saiverse_llm.progress import heartbeat

#: What the CMake configure output must say for each backend (llama.cpp's own messages).
BACKEND_EVIDENCE: dict[str, tuple[str, ...]] = {
    "CPU": (r"Including CPU backend",),
    "CUDA": (r"Including CUDA backend", r"CUDA Toolkit found|Found CUDAToolkit"),
    "METAL": (r"Including METAL backend", r"Metal framework found"),
    "BLAS": (r"Including BLAS backend", r"BLAS found"),
    "VULKAN": (r"Including Vulkan backend", r"Vulkan found"),
}
#: Words whose configure lines are shown as evidence when a backend is missing.
_BACKEND_WORDS = {
    "CPU": r"CPU backend|x86 detected|-march",
    "CUDA": r"cuda|cublas|nvcc",
    "METAL": r"metal",
    "BLAS": r"blas",
    "VULKAN": r"vulkan|glslc",
}
_CMAKE_MESSAGE_RE = re.compile(r"^\s*(--|CMake )|not found|NOT find|error", re.IGNORECASE)
_NINJA_RE = re.compile(r"^\s*\[(\d+)/(\d+)\]")
_CONFIGURE_DONE_RE = re.compile(r"Build files have been written to|^\s*\[1/\d+\]")


class BuildError(RuntimeError):
    """A build failed or cannot start; the message names the cause, the log and the fix."""

    def __init__(self, message: str, *, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


class ConfigureEvidenceError(BuildError):
    """CMake configured the build without the variant's backend."""


@dataclass(frozen=True)
class BuildPlan:
    variant: Variant
    sdist_sha256: str
    version: str
    source: Path
    cmake_args: tuple[str, ...]
    env: Mapping[str, str]
    inputs: Mapping[str, Any]
    key: str
    notes: tuple[str, ...]
    build_dir: Path
    log_path: Path


@dataclass(frozen=True)
class BuiltWheel:
    variant: str
    key: str
    wheel: Path
    cached: bool
    seconds: float
    log: Path | None
    record: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "key": self.key,
            "wheel": str(self.wheel),
            "cached": self.cached,
            "seconds": round(self.seconds, 2),
            "log": str(self.log) if self.log else None,
        }


ProgressFn = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- sdist


def resolve_sdist(pin: SdistPin) -> Path:
    """The pinned sdist in ``sdist_dir()``, downloaded with pip when absent; sha256-checked."""
    target = paths.sdist_dir() / pin.filename
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "-d", tmp, f"llama-cpp-python=={pin.version}"]  # fmt: skip
            # the pin `llama-harness install` puts in a venv's pip.conf does not apply here
            env = {**os.environ, "PIP_CONSTRAINT": os.devnull}
            with heartbeat(f"download llama-cpp-python {pin.version} sdist"):
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            got = Path(tmp) / pin.filename
            if proc.returncode != 0 or not got.is_file():
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-6:])
                raise BuildError(
                    f"cannot download the llama-cpp-python {pin.version} sdist:\n{tail}\n"
                    f"fix: put {pin.filename} into {target.parent} by hand "
                    f"(pip download --no-deps --no-binary :all: llama-cpp-python=={pin.version})"
                )
            _check_sha(got, pin)
            publish(got, target)
    _check_sha(target, pin)
    return target


def _check_sha(path: Path, pin: SdistPin) -> None:
    actual = sha256_file(path)
    if actual != pin.sha256:
        raise BuildError(
            f"{path}: sha256 {actual} does not match the pin {pin.sha256} "
            f"(harness/build/variants.yaml, field sdist.sha256); fix: delete the file to download "
            "it again, or update the pin if you changed the version on purpose"
        )


def unpack_sdist(sdist: Path, pin: SdistPin) -> Path:
    """Unpack once to the stable ``src_dir()/llama_cpp_python-<version>`` (ccache needs it).

    A marker beside the folder records the sdist sha256; a folder without a matching marker
    is checked against the archive's member list and sizes before it is trusted.
    """
    name = pin.filename.removesuffix(".tar.gz")
    dest = paths.src_dir() / name
    marker = paths.src_dir() / f"{name}.unpacked.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent builds (other variants) unpack once, one after the other.
    with FileLock(dest.parent / f".{name}.lock", is_singleton=True):
        if dest.is_dir() and marker.is_file():
            try:
                if json.loads(marker.read_text()).get("sha256") == pin.sha256:
                    return dest
            except (OSError, ValueError):
                pass
        _unpack(sdist, dest, name)
        _write_marker(marker, pin)
    return dest


def _unpack(sdist: Path, dest: Path, name: str) -> None:
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        if dest.is_dir() and _matches(dest, members, name):
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
        try:
            tar.extractall(tmp, filter="data")
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp / name, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _matches(dest: Path, members: list[tarfile.TarInfo], name: str) -> bool:
    for m in members:
        rel = m.name.split("/", 1)[1] if "/" in m.name else ""
        if not rel:
            continue
        path = dest / rel
        try:
            if path.stat().st_size != m.size:
                return False
        except OSError:
            return False
    return True


def _write_marker(marker: Path, pin: SdistPin) -> None:
    atomic_write_json(marker, {"sha256": pin.sha256, "version": pin.version}, indent=None)


# --------------------------------------------------------------------------- plan


def check_build_requirements(variant: Variant) -> None:
    problems = variant.build_problems()
    if problems:
        lines = [f"  - {p.what}: {p.detail}\n    fix: {p.fix}" for p in problems]
        raise BuildError(f"cannot build {variant.name} here:\n" + "\n".join(lines))


def host_cpu_id() -> str:
    """The CPU model and feature flags (for -march=native builds)."""
    text = ""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        out = toolchain.run_quiet(["sysctl", "-n", "machdep.cpu.brand_string"])
        text = out or platform.processor()
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.MULTILINE)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
    ident = (model.group(1) if model else text.strip()[:200]) + "|"
    ident += " ".join(sorted(flags.group(1).split())) if flags else ""
    return hashlib.sha256(ident.encode()).hexdigest()[:16] + " " + ident.split("|")[0]


def is_native(defines: Mapping[str, str]) -> bool:
    """llama.cpp's GGML_NATIVE defaults to ON: -march=native unless switched off."""
    return defines.get("GGML_NATIVE", "ON") != "OFF"


def plan_build(variant: Variant, registry: Registry, source: Path, sdist_sha256: str) -> BuildPlan:
    args = list(variant.cmake_args)
    notes: list[str] = []
    if variant.toolchain == "cuda":
        try:
            extra, cuda_notes = toolchain.cuda_cmake_args(args, registry.cuda_default_architectures)
        except toolchain.ToolchainError as exc:
            raise BuildError(f"cannot build {variant.name}: {exc}") from exc
        args += extra
        notes += cuda_notes
    identities = toolchain.compiler_identities(cuda=variant.toolchain == "cuda")
    if variant.toolchain == "vulkan":
        extra, vk_notes, identities["vulkan_headers"] = _vulkan_toolchain(variant, args, registry)
        args += extra
        notes += vk_notes
    bools = wheel_cache.boolean_options(source)
    defines = wheel_cache.normalise_cmake_args(args, bool_names=bools)["defines"]
    env = {**wheel_cache.relevant_env(toolchain.BUILD_ENV_VARS), **variant.env}
    inputs = wheel_cache.key_inputs(
        sdist_sha256=sdist_sha256,
        version=registry.sdist.version,
        cmake_args=args,
        toolchain=identities,
        platform_tag=platform_tag(),
        env=env,
        host_cpu=host_cpu_id() if is_native(defines) and variant.backend != "METAL" else None,
        bool_names=bools,
    )
    key = wheel_cache.compute_key(inputs)
    return BuildPlan(
        variant=variant,
        sdist_sha256=sdist_sha256,
        version=registry.sdist.version,
        source=source,
        cmake_args=tuple(args),
        env=variant.env,
        inputs=inputs,
        key=key,
        notes=tuple(notes),
        build_dir=paths.build_dir(variant.name),
        log_path=paths.logs_dir() / f"{variant.name}-{key[:12]}.log",
    )


def _vulkan_toolchain(
    variant: Variant, args: list[str], registry: Registry
) -> tuple[list[str], list[str], str]:
    """``toolchain: vulkan``: headers at least the variant's ``vulkan_headers`` check."""
    from harness.build import vulkan_headers

    wanted = [r.value[0] for r in variant.build_requires if r.kind == "vulkan_headers"]
    if not wanted:
        raise BuildError(
            f"{variant.source}: variant {variant.name!r} has toolchain: vulkan but no "
            "`vulkan_headers: MAJOR.MINOR.PATCH` check in build_requires. Fix: add "
            '`- vulkan_headers: "1.3.272"` (what the pinned llama.cpp needs)'
        )
    minimum = max(vulkan_headers.parse_version(w) for w in wanted)
    try:
        return vulkan_headers.vulkan_cmake_args(args, minimum, registry.sdist.version)
    except vulkan_headers.VulkanHeadersError as exc:
        raise BuildError(f"cannot build {variant.name}: {exc}") from exc


# --------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class Evidence:
    ok: bool
    matched: tuple[str, ...]
    missing: tuple[str, ...]
    context: tuple[str, ...]  # configure lines about the backend (shown on failure)


def configure_evidence(variant: Variant, log_text: str) -> Evidence:
    """Did CMake's configure output enable the variant's backend?"""
    patterns = variant.configure_evidence or BACKEND_EVIDENCE[variant.backend]
    lines = log_text.splitlines()
    matched, missing = [], []
    for pattern in patterns:
        hit = next((ln.strip() for ln in lines if re.search(pattern, ln)), None)
        if hit is None:
            missing.append(pattern)
        else:
            matched.append(hit)
    problems = []
    defines = wheel_cache.normalise_cmake_args(list(variant.cmake_args))["defines"]
    if defines.get("GGML_NATIVE") == "OFF":
        native = [ln.strip() for ln in lines if "CPU backend variant" in ln and "native" in ln]
        if native:
            problems.append("-march=native although GGML_NATIVE=OFF")
            matched += native
    words = re.compile(_BACKEND_WORDS.get(variant.backend, variant.backend), re.IGNORECASE)
    context = [
        ln.strip()
        for ln in lines
        if words.search(ln) and len(ln) < 300 and _CMAKE_MESSAGE_RE.search(ln)
    ][:25]
    return Evidence(
        ok=not missing and not problems,
        matched=tuple(matched),
        missing=tuple(missing + problems),
        context=tuple(context),
    )


def evidence_error(
    variant: Variant, ev: Evidence, log: Path, *, configure_failed: bool = False
) -> ConfigureEvidenceError:
    shown = "\n".join(f"    {ln}" for ln in ev.context) or "    (no line mentions it)"
    what = (
        f"CMake could not enable the {variant.backend} backend (configure failed"
        if configure_failed
        else f"CMake configured the build WITHOUT the {variant.backend} backend (it would "
        f"have produced a CPU wheel named {variant.name!r}"
    )
    return ConfigureEvidenceError(
        f"{variant.name}: {what}; expected {', '.join(repr(m) for m in ev.missing)} in the "
        "configure output).\n"
        f"  CMake said:\n{shown}\n"
        f"  CMAKE_ARGS: {shlex.join(variant.cmake_args)}\n"
        f"  full log: {log}\n"
        "  fix: install what the backend needs (see `llama-harness variants`) and check that "
        "the flags above enable it",
        log=log,
    )


# --------------------------------------------------------------------------- run


#: Lines that show CMake's configure step ran (scikit-build-core's "*** Configuring CMake",
#: CMake's "-- ..." status lines and errors); a pip failure before it, such as a dependency
#: conflict, is not a configure failure.
_CONFIGURE_START_RE = re.compile(r"\*\*\* Configuring CMake|^\s*-- |^\s*CMake (Error|Warning)")


def pip_wheel_command(plan: BuildPlan, out_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", str(out_dir),
        f"--config-settings=build-dir={plan.build_dir}", "-v", str(plan.source),
    ]  # fmt: skip


def build_env(plan: BuildPlan) -> dict[str, str]:
    env = dict(os.environ)
    env.update(plan.env)
    # No constraint file applies to building the wheel: `llama-harness install` pins
    # llama-cpp-python to one wheel through the venv's pip.conf, and pip would refuse to build
    # the sdist in that venv ("ResolutionImpossible: ... (constraint) llama-cpp-python").
    # PIP_CONSTRAINT from the environment replaces the pip.conf value (an empty value would be
    # ignored): an empty file, no constraint.
    env["PIP_CONSTRAINT"] = os.devnull
    env["CMAKE_ARGS"] = shlex.join(plan.cmake_args)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
    return env


def run_pip_wheel(
    plan: BuildPlan,
    out_dir: Path,
    progress: ProgressFn | None = None,
    *,
    command: list[str] | None = None,
) -> Path:
    """Configure + compile with ``pip wheel``; stop at once when configure lacks the backend.

    ``command`` replaces the pip command line (tests use a script that prints a log).
    """
    plan.log_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(plan.build_dir, ignore_errors=True)  # no stale CMakeCache; ccache makes it cheap
    plan.build_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = command or pip_wheel_command(plan, out_dir)
    env = build_env(plan)
    tail: list[str] = []
    checked = False
    log_lines: list[str] = []
    with plan.log_path.open("w", encoding="utf-8") as log:
        log.write(f"# llama-harness build {plan.variant.name} key {plan.key}\n")
        log.write(f"# CMAKE_ARGS={env['CMAKE_ARGS']}\n# {shlex.join(cmd)}\n")
        for note in plan.notes:
            log.write(f"# {note}\n")
        log.write("# inputs: " + json.dumps(plan.inputs, sort_keys=True) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            errors="replace", bufsize=1,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            if progress:
                progress("configure", 0, 0)
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip("\n"))
                del tail[:-40]
                if not checked:
                    log_lines.append(line)
                    if _CONFIGURE_DONE_RE.search(line):
                        checked = True
                        ev = configure_evidence(plan.variant, "".join(log_lines))
                        if not ev.ok:
                            proc.terminate()
                            proc.wait()
                            log.write(f"# stopped: configure lacks {ev.missing}\n")
                            raise evidence_error(plan.variant, ev, plan.log_path)
                match = _NINJA_RE.match(line)
                if match and progress:
                    progress("compile", int(match.group(1)), int(match.group(2)))
            rc = proc.wait()
        except BaseException:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise
    cmake_ran = any(_CONFIGURE_START_RE.search(line) for line in log_lines)
    if rc != 0 and not checked and cmake_ran:  # configure failed: show the backend's evidence
        ev = configure_evidence(plan.variant, "".join(log_lines))
        if not ev.ok:
            raise evidence_error(plan.variant, ev, plan.log_path, configure_failed=True)
    if rc != 0:
        last = "\n".join(f"    {ln[:300]}" for ln in tail[-25:])
        raise BuildError(
            f"{plan.variant.name}: pip wheel failed with exit code {rc}.\n  last lines:\n{last}\n"
            f"  full log: {plan.log_path}",
            log=plan.log_path,
        )
    if not checked:
        ev = configure_evidence(plan.variant, "".join(log_lines))
        if not ev.ok:
            raise evidence_error(plan.variant, ev, plan.log_path)
    wheels = sorted(out_dir.glob("llama_cpp_python-*.whl"))
    if len(wheels) != 1:
        raise BuildError(
            f"{plan.variant.name}: expected one llama_cpp_python wheel in {out_dir}, found "
            f"{[w.name for w in wheels]}; see {plan.log_path}",
            log=plan.log_path,
        )
    _mark_tree(plan)
    return wheels[0]


TREE_MARKER = "llama-harness-tree.json"  # harness.build.native_tools builds tools in this tree


def _mark_tree(plan: BuildPlan) -> None:
    """Record which key built ``plan.build_dir`` (the tools are only built in a tree of the
    same key)."""
    if plan.build_dir.is_dir():
        record = {"key": plan.key, "variant": plan.variant.name, "source": str(plan.source)}
        atomic_write_json(plan.build_dir / TREE_MARKER, record, indent=None)


@contextlib.contextmanager
def build_lock(variant: str, *, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold ``build/<variant>.lock`` while the variant's build tree is written (a wheel build
    wipes it; the native tools are compiled in it). Waits for another process's build."""
    from filelock import FileLock, Timeout

    path = paths.build_dir(variant).with_name(f"{variant}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=1)
    except Timeout:
        (say or (lambda m: print(m, file=sys.stderr)))(
            f"{variant}: waiting for another build of this variant to finish (lock {path})"
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def compile_wheel(
    plan: BuildPlan, out_dir: Path, *, label: str | None = None, command: list[str] | None = None
) -> Path:
    """:func:`run_pip_wheel` with progress: a bar in a terminal, else a line at least every
    30 s ("build cpu: compile 57/193 (30%), 1m30s elapsed")."""
    from saiverse_llm.progress import StepProgress

    with StepProgress(label or f"build {plan.variant.name}") as bar:
        bar.set_phase("configure")
        return run_pip_wheel(plan, out_dir, lambda phase, done, total: bar.update(
            done, total or None, phase=phase), command=command)  # fmt: skip


def check_wheel_libraries(variant: Variant, wheel: Path, log: Path | None = None) -> list[str]:
    """The wheel must ship the backend's library (libggml-cuda.so for CUDA, ...)."""
    libs = wheel_cache.wheel_libraries(wheel)
    want = wheel_cache.BACKEND_LIBS[variant.backend]
    if not any(n.startswith(f"lib{want}.") for n in libs):
        raise BuildError(
            f"{wheel.name}: no lib{want}.* inside (libraries: {', '.join(libs) or 'none'}): "
            f"this is not a {variant.backend} build, it will not be cached or used for "
            f"{variant.name}; fix: rebuild with `llama-harness build {variant.name} --force` "
            f"and check the configure output{f' in {log}' if log else ''}",
            log=log,
        )
    return libs


# --------------------------------------------------------------------------- entry points


def prepare(variant: Variant, registry: Registry | None = None) -> BuildPlan:
    """resolve_sdist -> unpack_sdist -> check_build_requirements -> plan_build."""
    reg = registry or load_registry()
    sdist = resolve_sdist(reg.sdist)
    source = unpack_sdist(sdist, reg.sdist)
    check_build_requirements(variant)
    return plan_build(variant, reg, source, reg.sdist.sha256)


def build_wheel(
    variant: Variant,
    *,
    force: bool = False,
    progress: bool = True,
    registry: Registry | None = None,
    on_progress: ProgressFn | None = None,
    say: Callable[[str], None] | None = None,
) -> BuiltWheel:
    """The variant's wheel: from the cache when the key matches, else built and cached."""
    start = time.monotonic()
    tell = say or (lambda msg: print(msg, file=sys.stderr))
    plan = prepare(variant, registry)
    for note in plan.notes:
        tell(f"{variant.name}: {note}")
    # One build per key at a time, across processes: a second `build` of the same key waits
    # here and then takes the first one's wheel from the cache.
    with wheel_cache.holding(plan.key, say=tell):
        if not force:
            found = wheel_cache.lookup(plan.inputs)
            if found.hit is not None:
                check_wheel_libraries(variant, found.hit.wheel)  # same flags, other backend?
                tell(f"{variant.name}: {found.reason}: {found.hit.wheel}")
                return BuiltWheel(
                    variant=variant.name,
                    key=plan.key,
                    wheel=found.hit.wheel,
                    cached=True,
                    seconds=time.monotonic() - start,
                    log=Path(found.hit.record["build_log"])
                    if found.hit.record.get("build_log")
                    else None,
                    record=found.hit.record,
                )
            tell(f"{variant.name}: {found.reason}; building (log: {plan.log_path})")
        return _build_and_store(plan, variant, start, progress, on_progress, tell)


def _build_and_store(
    plan: BuildPlan,
    variant: Variant,
    start: float,
    progress: bool,
    on_progress: ProgressFn | None,
    tell: Callable[[str], None],
) -> BuiltWheel:
    before = toolchain.ccache_counters()
    with (
        build_lock(variant.name, say=tell),
        tempfile.TemporaryDirectory(prefix=f"llama-harness-{variant.name}-") as tmp,
    ):
        if on_progress is None and progress:
            wheel = compile_wheel(plan, Path(tmp))
        else:
            wheel = run_pip_wheel(plan, Path(tmp), on_progress)
        libs = check_wheel_libraries(variant, wheel, plan.log_path)
        ev = configure_evidence(variant, plan.log_path.read_text(errors="replace"))
        seconds = time.monotonic() - start
        after = toolchain.ccache_counters()
        ccache = {k: after[k] - before[k] for k in after} if before is not None and after else None
        entry = wheel_cache.store(
            wheel,
            plan.inputs,
            variant=variant.name,
            cmake_args=plan.cmake_args,
            extra={
                "build_log": str(plan.log_path),
                "build_seconds": round(seconds, 1),
                "libraries": libs,
                "configure_evidence": list(ev.matched),
                "notes": list(plan.notes),
                "provenance": "built",
                "ccache": ccache,  # counter deltas; concurrent builds count too
            },
        )
    cc = f" (ccache: {ccache['hits']} hits, {ccache['misses']} misses)" if ccache else ""
    tell(f"{variant.name}: built in {seconds:.0f} s{cc}, cached as {entry.key[:12]}")
    return BuiltWheel(
        variant=variant.name,
        key=entry.key,
        wheel=entry.wheel,
        cached=False,
        seconds=seconds,
        log=plan.log_path,
        record=entry.record,
    )


def import_wheel(
    wheel: Path, variant: Variant | None, registry: Registry | None = None
) -> wheel_cache.CachedWheel:
    """Add a wheel built elsewhere to the cache.

    With its ``build.json`` beside it (a copied cache entry), the recorded inputs and key are
    kept after checking the wheel's sha256. Without one, ``variant`` is required: the wheel
    must ship that variant's backend library, and it is filed under the key this machine
    computes for the variant (``provenance: imported``: the flags are the importer's claim,
    the backend libraries were checked).
    """
    if not wheel.is_file() or not wheel.name.startswith("llama_cpp_python-"):
        raise BuildError(
            f"{wheel}: not a llama_cpp_python wheel file; fix: pass the .whl that "
            "`llama-harness build` printed"
        )
    meta = wheel.parent / "build.json"
    digest = sha256_file(wheel)
    if meta.is_file():
        record = _read_build_json(meta)
        if record.get("wheel") == wheel.name:
            if record.get("wheel_sha256") != digest:
                raise BuildError(f"{wheel}: sha256 does not match {meta}; the file changed")
            inputs = record.get("inputs", {})
            if wheel_cache.compute_key(inputs) != record.get("key"):
                raise BuildError(f"{meta}: its key does not match its inputs (edited?)")
            if variant is not None and record.get("variant") != variant.name:
                raise BuildError(
                    f"{meta}: the wheel was built for {record.get('variant')!r}, not "
                    f"{variant.name!r}; fix: import it as {record.get('variant')}"
                )
            extra = {k: v for k, v in record.items() if k not in _STORE_FIELDS}
            extra["imported_from"] = str(wheel)
            return wheel_cache.store(
                wheel, inputs, variant=str(record.get("variant")),
                cmake_args=record.get("cmake_args", []), extra=extra,
            )  # fmt: skip
    if variant is None:
        raise BuildError(
            f"{wheel}: no build.json beside it, so the variant is unknown; fix: "
            "`llama-harness build VARIANT --import WHEEL`"
        )
    version = wheel.name.split("-")[1]
    reg = registry or load_registry()
    if version != reg.sdist.version:
        raise BuildError(
            f"{wheel}: llama-cpp-python {version}, the harness pins {reg.sdist.version} "
            "(harness/build/variants.yaml sdist.version); fix: build the pinned version"
        )
    libs = check_wheel_libraries(variant, wheel)
    plan = prepare(variant, reg)
    return wheel_cache.store(
        wheel,
        plan.inputs,
        variant=variant.name,
        cmake_args=plan.cmake_args,
        extra={
            "provenance": "imported",
            "imported_from": str(wheel),
            "libraries": libs,
            "notes": [
                "imported without build.json: CMake flags asserted by the importer; "
                f"checked: the wheel ships lib{wheel_cache.BACKEND_LIBS[variant.backend]}",
                *plan.notes,
            ],
        },
    )


def _read_build_json(meta: Path) -> dict[str, Any]:
    """The ``build.json`` beside an imported wheel, checked to be a cache record."""
    fix = (
        "copy the build.json that `llama-harness build --wheel-out` wrote with the wheel, or "
        "remove it and import with a VARIANT (`llama-harness build VARIANT --import WHEEL`)"
    )
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise BuildError(f"{meta}: not a readable build.json ({exc}); fix: {fix}") from exc
    if not isinstance(record, dict):
        raise BuildError(f"{meta}: not a JSON object (a {type(record).__name__}); fix: {fix}")
    for name, kind in (("wheel", str), ("wheel_sha256", str), ("key", str), ("inputs", dict)):
        if name in record and not isinstance(record[name], kind):
            raise BuildError(f"{meta}: field {name!r} is not a {kind.__name__}; fix: {fix}")
    return record


_STORE_FIELDS = {"schema", "key", "variant", "wheel", "wheel_sha256", "size", "cmake_args",
                 "inputs", "stored_at"}  # fmt: skip
