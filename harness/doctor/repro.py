"""Replays of users' "GPU not detected" reports (``llama-harness repro CASE.yaml [--fix]``).

A case (``repro/*.yaml``) describes a user's setup: the llama-cpp-python version, the state
before (a CPU wheel in pip's cache, the package already installed), the environment and the
install commands exactly as the user ran them, the runtime ``Llama()`` keyword arguments,
the cause the doctor must name and checks for the symptom and for the fixed result.

The replay builds a fresh venv under a temp folder, with its own pip cache and pip reading
nothing but a local "index" (the pinned sdist plus a wheelhouse of its build and runtime
dependencies), recreates the state, runs the commands in bash, runs the doctor there and
checks the symptom. ``--fix`` then runs the catalogue's fix for the expected cause (its
commands, or its runtime keyword arguments) and checks the result.

Builds stop right after CMake has configured and generated (the step that decides which
backends get compiled): seconds, not a 20-minute CUDA compile. The log then says which
backends ("-- Including CUDA backend") the finished build would contain.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness import paths
from harness.doctor import doctor
from saiverse_llm import devices
from saiverse_llm.atomic import atomic_copy, atomic_write_text, publish_dir
from saiverse_llm.redact import redact_text

REPRO_DIR = paths.PROJECT_ROOT / "repro"
REQUIREMENTS = ("gpu", "no-gpu", "cpu-wheel", "cuda-wheel", "cmake", "nvcc", "vulkan-sdk")
# Install commands that configure CUDA: only those get this machine's CUDA site arguments.
CUDA_SWITCH_RE = re.compile(r"GGML_CUDA|LLAMA_CUBLAS|LLAMA_CUDA|GGML_CUBLAS")
STATES_PIP_CACHE = (None, "cpu-wheel")
STATES_INSTALLED = (None, "cpu-wheel", "cuda-wheel")
# What the replay venv needs to import llama_cpp and to build the sdist in isolation.
WHEELHOUSE_PACKAGES = (
    "numpy", "diskcache", "jinja2", "markupsafe", "typing-extensions",
    "scikit-build-core", "pathspec", "packaging",
)  # fmt: skip
CONFIGURED_RE = re.compile(r"^\s*-- Build files have been written to", re.M)
Say = Callable[[str], None]


class CaseError(ValueError):
    """A malformed case file; names the file, the field, the bad value and the fix."""

    def __init__(self, file: Path, field: str, value: object, fix: str) -> None:
        self.file, self.field, self.value, self.fix = file, field, value, fix
        super().__init__(f"{file}: {field}: bad value {value!r}; fix: {fix}")


class ReplayError(RuntimeError):
    """The replay could not set up its environment (missing sdist, pip failure, ...)."""


@dataclass(frozen=True)
class Case:
    path: Path
    id: str
    title: str
    cause: str
    source: tuple[str, ...]
    version: str
    requires: tuple[str, ...] = ()
    fix_requires: tuple[str, ...] = ()
    pip_cache: str | None = None
    installed: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    install: tuple[str, ...] = ()
    kwargs: Mapping[str, Any] | None = None
    probe: bool = False
    symptom: Any = None
    fixed: Any = None
    story: str = ""
    hide: tuple[str, ...] = ()  # tools the user does not have (hidden from PATH and CMake)


# --------------------------------------------------------------------------- case files


def parse_case(data: Any, path: Path) -> Case:
    if not isinstance(data, dict):
        raise CaseError(path, "(top level)", data, "a case is a YAML mapping")

    def need_str(key: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            raise CaseError(path, key, value, f"set `{key}:` to a non-empty string")
        return value.strip()

    def str_list(key: str, allowed: Sequence[str] | None = None) -> tuple[str, ...]:
        value = data.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CaseError(path, key, value, f"make `{key}:` a list of strings")
        if allowed is not None:
            bad = [v for v in value if v not in allowed]
            if bad:
                raise CaseError(path, key, bad, f"use only {', '.join(allowed)}")
        return tuple(value)

    cause = need_str("cause")
    known = {c.id for c in doctor.load_causes()}
    if cause not in known:
        raise CaseError(path, "cause", cause, f"name a cause of {doctor.CAUSES_FILE.name}")
    state = data.get("state") or {}
    if not isinstance(state, dict):
        raise CaseError(path, "state", state, "use a mapping {pip_cache: ..., installed: ...}")
    if state.get("pip_cache") not in STATES_PIP_CACHE:
        raise CaseError(path, "state.pip_cache", state.get("pip_cache"), "use cpu-wheel or null")
    if state.get("installed") not in STATES_INSTALLED:
        raise CaseError(
            path, "state.installed", state.get("installed"), "use cpu-wheel, cuda-wheel or null"
        )
    env = data.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise CaseError(path, "env", env, "use a mapping of NAME: string value")
    runtime = data.get("runtime") or {}
    if not isinstance(runtime, dict):
        raise CaseError(path, "runtime", runtime, "use a mapping {kwargs: {...}, probe: bool}")
    kwargs = runtime.get("kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise CaseError(path, "runtime.kwargs", kwargs, "give Llama() keyword arguments")
    expect = data.get("expect") or {}
    if not isinstance(expect, dict) or "symptom" not in expect:
        raise CaseError(path, "expect.symptom", None, "add the checks that show the symptom")
    for key in ("symptom", "fixed"):
        if key in expect:
            try:
                doctor._check_node(expect[key], f"expect.{key}", path)
            except doctor.CatalogueError as exc:
                raise CaseError(path, exc.field, exc.value, exc.fix) from exc
    version = str(data.get("llama_cpp_python", "")).strip()
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise CaseError(path, "llama_cpp_python", version, "give the version, e.g. 0.3.36")
    return Case(
        path=path,
        id=need_str("id"),
        title=need_str("title"),
        cause=cause,
        source=str_list("source"),
        version=version,
        requires=str_list("requires", REQUIREMENTS),
        fix_requires=str_list("fix_requires", REQUIREMENTS),
        pip_cache=state.get("pip_cache"),
        installed=state.get("installed"),
        env={str(k): v for k, v in env.items()},
        install=str_list("install"),
        kwargs=dict(kwargs) if kwargs is not None else None,
        probe=bool(runtime.get("probe", False)),
        symptom=expect["symptom"],
        fixed=expect.get("fixed"),
        story=str(data.get("story", "")).strip(),
        hide=_hide_list(data, path),
    )


def _hide_list(data: Mapping[str, Any], path: Path) -> tuple[str, ...]:
    value = data.get("hide", [])
    if not isinstance(value, list) or not all(
        isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.+-]+", v) for v in value
    ):
        raise CaseError(path, "hide", value, "list tool names, e.g. hide: [glslc]")
    return tuple(value)


def load_case(path: str | os.PathLike[str]) -> Case:
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CaseError(file, "file", str(file), f"cannot read it ({exc})") from exc
    except yaml.YAMLError as exc:
        raise CaseError(file, "yaml", str(exc).splitlines()[0], "fix the YAML syntax") from exc
    return parse_case(data, file)


def load_cases(folder: Path = REPRO_DIR) -> list[Case]:
    return [load_case(p) for p in sorted(folder.glob("*.yaml"))]


# --------------------------------------------------------------------------- requirements


def find_wheel(kind: str) -> Path | None:
    """A built llama-cpp-python wheel of ``kind`` (cpu, cuda): ``LLAMA_HARNESS_<KIND>_WHEEL``,
    else the newest one in the harness's wheel cache."""
    from harness.build import wheel_cache

    override = os.environ.get(f"LLAMA_HARNESS_{kind.upper()}_WHEEL")
    if override:
        return Path(override) if Path(override).is_file() else None
    entry = wheel_cache.newest(kind)
    return entry.wheel if entry is not None else None


def _has_gpu() -> bool:
    return bool(devices.nvidia_gpu_lines())


def _has_vulkan_sdk() -> bool:
    headers = ("/usr/include/vulkan/vulkan.hpp", "/usr/local/include/vulkan/vulkan.hpp")
    return shutil.which("glslc") is not None and any(Path(h).is_file() for h in headers)


def missing_requirements(needs: Sequence[str]) -> list[str]:
    """Why each requirement in ``needs`` is not met here (empty: all met)."""
    reasons: list[str] = []
    for need in needs:
        if need == "gpu" and not _has_gpu():
            reasons.append("needs an NVIDIA GPU (nvidia-smi -L lists none here)")
        elif need == "no-gpu" and _has_gpu():
            reasons.append("shows the no-GPU symptom, but this machine has a GPU")
        elif need in ("cpu-wheel", "cuda-wheel") and find_wheel(need.split("-")[0]) is None:
            kind = need.split("-")[0]
            reasons.append(
                f"needs a built {kind} wheel (none in the wheel cache {paths.wheels_dir()}); "
                f"fix: `llama-harness build {kind}` or set LLAMA_HARNESS_{kind.upper()}_WHEEL"
            )
        elif need == "cmake" and shutil.which("cmake") is None:
            reasons.append("needs cmake on PATH")
        elif need == "nvcc" and shutil.which("nvcc") is None:
            reasons.append("needs the CUDA toolkit (nvcc) on PATH")
        elif need == "vulkan-sdk" and not _has_vulkan_sdk():
            reasons.append(
                "needs the Vulkan SDK (glslc and vulkan/vulkan.hpp); fix: apt-get install "
                "libvulkan-dev glslc"
            )
        elif need.startswith("sdist-"):
            version = need.removeprefix("sdist-")
            path = paths.sdist_file(version)
            if not path.is_file():
                reasons.append(
                    f"needs the llama-cpp-python {version} sdist at {path}; fix: `pip download "
                    f"--no-deps --no-binary :all: llama-cpp-python=={version} -d {path.parent}`"
                )
    return reasons


def case_requirements(case: Case) -> list[str]:
    needs = list(case.requires)
    for state in (case.pip_cache, case.installed):
        if state and state not in needs:
            needs.append(state)
    if any(_builds(cmd) for cmd in case.install) and "cmake" not in needs:
        needs.append("cmake")
    if case.pip_cache or case.install:
        needs.append(f"sdist-{case.version}")
    return needs


def _builds(cmd: str) -> bool:
    return "--no-cache-dir" in cmd or "--force-reinstall" in cmd or "--no-binary" in cmd


# --------------------------------------------------------------------------- environment


def sdist_path(version: str) -> Path:
    path = paths.sdist_file(version)
    if not path.is_file():
        raise ReplayError(
            f"{path}: the llama-cpp-python {version} sdist is missing; fix: `pip download "
            f"--no-deps --no-binary :all: llama-cpp-python=={version} -d {paths.sdist_dir()}`"
        )
    return path


def ensure_wheelhouse(say: Say | None = None) -> Path:
    """Wheels of the replay venvs' dependencies, downloaded once with pip (temp, rename)."""
    root = paths.repro_dir() / "wheelhouse"
    if (root / ".complete").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    if say:
        say(f"downloading the replay wheelhouse into {root}")
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".wheelhouse-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "-d", tmp,
               *WHEELHOUSE_PACKAGES]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-10:])
            raise ReplayError(
                f"`pip download {' '.join(WHEELHOUSE_PACKAGES)}` failed:\n{tail}\nfix: make "
                "PyPI (or a local index in pip's config) reachable once"
            )
        atomic_write_text(Path(tmp) / ".complete", time.strftime("%Y-%m-%dT%H:%M:%S"))
        publish_dir(tmp, root)
        Path(tmp).mkdir()  # let TemporaryDirectory clean up an empty folder
    return root


@dataclass
class ReplayEnv:
    root: Path
    python: Path
    env: dict[str, str]  # the environment commands run in
    site_args: list[str]  # site toolchain CMake args (cuBLAS location), not the user's
    plain_env: dict[str, str] = field(default_factory=dict)  # the same without `hide`


def _cuda_site_args() -> list[str]:
    """What this machine adds to configure a CUDA build (not part of any user's report).

    cuBLAS from the unpacked ``nvidia-cublas`` wheel when the toolkit has none (see
    :mod:`harness.build.toolchain`); without a GPU, an explicit architecture (``native`` needs a
    GPU) and ``GGML_CUDA_NO_VMM=ON`` (VMM links the driver library, absent without a driver).
    """
    if shutil.which("nvcc") is None:
        return []
    try:
        from harness.build import toolchain

        extra, _notes = toolchain.cuda_cmake_args(["-DCMAKE_CUDA_ARCHITECTURES=90"], "90")
    except Exception as exc:  # say why; the configure step then shows what is missing
        print(f"repro: no cuBLAS location for CUDA configure steps: {exc}", file=sys.stderr)
        extra = []
    if not _has_gpu():
        extra += ["-DCMAKE_CUDA_ARCHITECTURES=90", "-DGGML_CUDA_NO_VMM=ON"]
    return extra


def make_env(case: Case, root: Path, say: Say | None = None) -> ReplayEnv:
    """A fresh venv with the runtime deps, a private pip cache and a local-only pip.

    ``LLAMA_HARNESS_REPRO_SYSTEM_SITE=1`` creates it with ``--system-site-packages`` (for a
    host without network whose Python already has numpy/jinja2: only llama-cpp-python and
    diskcache then come from the wheelhouse).
    """
    needs_sdist = bool(case.pip_cache or case.install)
    sdist = sdist_path(case.version) if needs_sdist else None
    wheelhouse = ensure_wheelhouse(say)
    venv = root / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    venv_cmd = [base, "-m", "venv", str(venv)]
    if os.environ.get("LLAMA_HARNESS_REPRO_SYSTEM_SITE") == "1":
        venv_cmd.append("--system-site-packages")
        # Debian's python without python3-venv has no ensurepip: use the system's pip
        if subprocess.run([*venv_cmd], capture_output=True, check=False).returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            venv_cmd.append("--without-pip")
    _check_run(venv_cmd, "create the replay venv")
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if "--system-site-packages" in venv_cmd and sys.prefix != sys.base_prefix:
        # made from inside a venv: "system" means the base Python, so also link this
        # interpreter's own site-packages (where numpy & co. live) with a .pth file
        site_dir = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        import site

        parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
        atomic_write_text(Path(site_dir) / "_replay_parent_site.pth", "\n".join(parents) + "\n")
    env = {
        "PATH": f"{python.parent}{os.pathsep}{case.env.get('PATH', os.environ.get('PATH', ''))}",
        "HOME": str(root / "home"),
        "LANG": "C.UTF-8",
        "VIRTUAL_ENV": str(venv),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_CACHE_DIR": str(root / "pip-cache"),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": f"{sdist.parent} {wheelhouse}" if sdist else str(wheelhouse),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "PIP_VERBOSE": "1",
    }
    for name in ("LLAMA_HARNESS_CACHE", "CCACHE_DIR", "LD_LIBRARY_PATH"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    # pip's build folders (the unpacked sdist, ~217 MB) go inside the replay's root: a build
    # stopped once CMake has configured never gets to clean them up, and the root is removed
    # after the replay (left in the system's temp folder, every replay leaked one).
    env["TMPDIR"] = str(root / "tmp")
    (root / "tmp").mkdir(exist_ok=True)
    (root / "home").mkdir(exist_ok=True)
    cuda = any(CUDA_SWITCH_RE.search(c) for c in case.install)
    site_args = _cuda_site_args() if cuda else []
    if site_args:
        env["SKBUILD_CMAKE_ARGS"] = ";".join(site_args)
    env.update({k: v for k, v in case.env.items() if k != "PATH"})
    deps = ["numpy", "diskcache", "jinja2", "typing-extensions"]
    _check_run([str(python), "-m", "pip", "install", "-q", *deps], "install runtime deps", env)
    plain = dict(env)
    if case.hide:
        env = hide_tools(case.hide, env, root, site_args)
    return ReplayEnv(root=root, python=python, env=env, site_args=site_args, plain_env=plain)


def hide_tools(
    tools: Sequence[str], env: Mapping[str, str], root: Path, site_args: Sequence[str]
) -> dict[str, str]:
    """``env`` as on a machine without ``tools``.

    Every PATH folder that holds one of them is replaced by ``root/shadow-bin`` (links to
    everything else in it), and CMake is told to ignore those folders (``CMAKE_IGNORE_PATH``,
    set by a file included before every ``project()``): CMake also searches /usr/bin and
    /bin on its own, whatever PATH says.
    """
    system = ("/usr/local/bin", "/usr/bin", "/bin")
    path = env.get("PATH", "").split(os.pathsep)
    candidates = list(dict.fromkeys([*path, *system]))
    hold = {
        os.path.realpath(d) for d in candidates if d and any((Path(d) / t).exists() for t in tools)
    }
    if not hold:
        return dict(env)
    ignored = [d for d in candidates if d and os.path.realpath(d) in hold]
    shadow = root / "shadow-bin"
    shadow.mkdir(parents=True, exist_ok=True)
    for folder in sorted(hold):
        for entry in Path(folder).iterdir():
            if entry.name not in tools and not (shadow / entry.name).exists():
                (shadow / entry.name).symlink_to(entry)
    new_path: list[str] = []
    for d in path:
        d = str(shadow) if d in ignored else d
        if d not in new_path:
            new_path.append(d)
    include = root / "hide-tools.cmake"
    atomic_write_text(
        include,
        "# written by the replay: these folders hold tools the user does not have\n"
        + "".join(f'list(APPEND CMAKE_IGNORE_PATH "{d}")\n' for d in ignored),
    )
    out = dict(env)
    out["PATH"] = os.pathsep.join(new_path)
    out["SKBUILD_CMAKE_ARGS"] = ";".join([*site_args, f"-DCMAKE_PROJECT_INCLUDE_BEFORE={include}"])
    return out


def _check_run(cmd: Sequence[str], what: str, env: Mapping[str, str] | None = None) -> None:
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, env=dict(env) if env else None, check=False
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-12:])
        raise ReplayError(f"could not {what}: `{' '.join(cmd)}` failed:\n{tail}")


def plant_cached_wheel(renv: ReplayEnv, wheel: Path, sdist: Path) -> Path:
    """Put ``wheel`` where pip's wheel cache keeps the wheel it built from ``sdist``'s link.

    That is the state after an earlier plain ``pip install llama-cpp-python``: the next
    install of the same sdist link reuses the cached wheel instead of building.
    """
    code = (
        "import sys\n"
        "from pip._internal.cache import SimpleWheelCache\n"
        "from pip._internal.models.link import Link\n"
        "try:\n    cache = SimpleWheelCache(sys.argv[1])\n"
        "except TypeError:\n"
        "    from pip._internal.models.format_control import FormatControl\n"
        "    cache = SimpleWheelCache(sys.argv[1], FormatControl())\n"
        "print(cache.get_path_for_link(Link(sys.argv[2])))\n"
    )
    proc = subprocess.run(
        [str(renv.python), "-c", code, renv.env["PIP_CACHE_DIR"], sdist.resolve().as_uri()],
        capture_output=True,
        text=True,
        env=renv.env,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ReplayError(f"could not compute pip's wheel-cache folder: {proc.stderr[-400:]}")
    folder = Path(proc.stdout.strip())
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_copy(wheel, folder / wheel.name)


@dataclass
class CommandResult:
    command: str
    returncode: int | None
    stopped_after_configure: bool
    seconds: float
    log: str

    @property
    def outcome(self) -> str:
        if self.stopped_after_configure:
            return "configured (stopped before compiling)"
        if self.returncode == 0:
            return "ok"
        return f"failed (exit {self.returncode})"


def run_command(
    command: str, renv: ReplayEnv, *, timeout: float = 900.0, say: Say | None = None
) -> CommandResult:
    """Run one shell line in the replay venv; stop a build once CMake has generated."""
    start = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=renv.root,
        env=renv.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    stopped = False
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if CONFIGURED_RE.search(line):
            stopped = True
            os.killpg(proc.pid, signal.SIGTERM)
            break
        if time.monotonic() - start > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            lines.append(f"\n[replay] killed after {timeout:.0f} s\n")
            break
    try:
        code: int | None = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    if stopped:
        code = None
    result = CommandResult(command, code, stopped, time.monotonic() - start, "".join(lines))
    if say:
        say(f"$ {command}  -> {result.outcome} in {result.seconds:.1f} s")
    return result


# --------------------------------------------------------------------------- the replay


@dataclass
class Phase:
    """The symptom run or the fix run: commands, doctor report, the check of the case."""

    name: str
    commands: list[CommandResult]
    report: doctor.DoctorReport | None
    ok: bool
    evidence: list[str]
    kwargs: Mapping[str, Any] | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "evidence": self.evidence,
            "kwargs": dict(self.kwargs) if self.kwargs is not None else None,
            "note": self.note,
            "commands": [
                {"command": c.command, "outcome": c.outcome, "seconds": round(c.seconds, 1)}
                for c in self.commands
            ],
            "verdict": self.report.verdict if self.report else None,
            "causes": self.report.cause_ids if self.report else [],
        }


@dataclass
class ReplayResult:
    case: Case
    skipped: str | None = None
    symptom: Phase | None = None
    fix: Phase | None = None
    fix_skipped: str | None = None
    workdir: Path | None = None

    @property
    def cause_named(self) -> bool:
        return bool(self.symptom and self.symptom.report) and self.case.cause in (
            self.symptom.report.cause_ids if self.symptom and self.symptom.report else []
        )

    @property
    def ok(self) -> bool:
        if self.skipped:
            return True
        good = bool(self.symptom and self.symptom.ok and self.cause_named)
        if self.fix is not None:
            good = good and self.fix.ok
        return good

    def to_dict(self) -> dict[str, Any]:
        return {
            "case": self.case.id,
            "file": str(self.case.path),
            "expected_cause": self.case.cause,
            "cause_named": self.cause_named,
            "skipped": self.skipped,
            "symptom": self.symptom.to_dict() if self.symptom else None,
            "fix": self.fix.to_dict() if self.fix else None,
            "fix_skipped": self.fix_skipped,
            "ok": self.ok,
        }


def _diagnose(
    case: Case,
    renv: ReplayEnv,
    commands: Sequence[CommandResult],
    install_lines: Sequence[str],
    kwargs: Mapping[str, Any] | None,
) -> doctor.DoctorReport:
    user_env = {k: v for k, v in case.env.items()}
    options = doctor.DoctorOptions(
        python=str(renv.python),
        probe=case.probe,
        kwargs=kwargs,
        commands=list(install_lines),
        logs=[c.log for c in commands],
        env=user_env,
        pip_env=renv.env,
        probe_tokens=4,
    )
    return doctor.run_doctor(options)


def _fix_kwargs(case: Case, cause: doctor.Cause, unknown: Sequence[str]) -> dict[str, Any] | None:
    """The case's Llama() kwargs with the cause's runtime fix applied (None: no runtime part)."""
    if case.kwargs is None and not cause.fix_runtime:
        return None
    kwargs = dict(case.kwargs or {})
    runtime = dict(cause.fix_runtime)
    if runtime.pop("drop_unknown_kwargs", False):
        kwargs = {k: v for k, v in kwargs.items() if k not in unknown}
    kwargs.update(runtime)
    return kwargs


def replay(
    case: Case,
    *,
    fix: bool = False,
    keep: bool = False,
    say: Say | None = None,
    workdir: Path | None = None,
) -> ReplayResult:
    """Replay ``case``; with ``fix`` also apply its cause's fix from the catalogue."""
    result = ReplayResult(case)
    missing = missing_requirements(case_requirements(case))
    if missing:
        result.skipped = "; ".join(missing)
        return result
    root = Path(tempfile.mkdtemp(prefix=f"repro-{case.id}-", dir=workdir))
    result.workdir = root
    try:
        if say:
            say(f"[{case.id}] fresh venv in {root}")
        renv = make_env(case, root, say)
        if case.pip_cache:
            wheel = find_wheel(case.pip_cache.split("-")[0])
            assert wheel is not None
            planted = plant_cached_wheel(renv, wheel, sdist_path(case.version))
            if say:
                say(f"[{case.id}] state: pip's cache holds {planted.name}")
        if case.installed:
            wheel = find_wheel(case.installed.split("-")[0])
            assert wheel is not None
            _check_run(
                [str(renv.python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                f"pre-install {wheel.name}",
                renv.env,
            )
            if say:
                say(f"[{case.id}] state: {wheel.name} already installed")
        commands = [run_command(c, renv, say=say) for c in case.install]
        report = _diagnose(case, renv, commands, case.install, case.kwargs)
        ok, evidence = doctor.evaluate(case.symptom, report.facts)
        result.symptom = Phase("symptom", commands, report, ok, evidence, case.kwargs)
        if fix:
            result.fix, result.fix_skipped = _apply_fix(case, renv, say, report.facts)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return result


def _apply_fix(
    case: Case, renv: ReplayEnv, say: Say | None, symptom: Mapping[str, Any]
) -> tuple[Phase | None, str | None]:
    """Run the catalogue's fix, filled with the symptom run's facts (so a hint such as the
    replacement of a legacy switch comes from what the user ran). A hidden tool is the
    missing package the fix installs: the fix runs with it visible again."""
    missing = missing_requirements(case.fix_requires)
    if missing:
        return None, "the fix " + "; ".join(missing)
    cause = doctor.get_cause(case.cause)
    unknown = symptom.get("runtime.unknown_kwargs") or []
    facts_for_fill = {
        **symptom,
        "llama.version": case.version,
        "cuda.nvcc_hint": shutil.which("nvcc"),
    }
    facts_for_fill.update(doctor.hint_facts({**facts_for_fill, "os.system": platform.system()}))
    if case.hide:
        renv.env = dict(renv.plain_env)
    commands = [doctor.fill(c, facts_for_fill) for c in cause.fix]
    runnable = [c for c in commands if not c.lstrip().startswith("#")]
    results = [run_command(c, renv, say=say) for c in runnable]
    kwargs = _fix_kwargs(case, cause, unknown)
    report = _diagnose(case, renv, results, runnable, kwargs)
    if case.fixed is None:
        return Phase("fix", results, report, False, [], kwargs, "no `expect.fixed` check"), None
    ok, evidence = doctor.evaluate(case.fixed, report.facts)
    note = ""
    if renv.site_args and any("GGML_CUDA" in c for c in runnable):
        note = "site toolchain args added via SKBUILD_CMAKE_ARGS: " + " ".join(renv.site_args)
    return Phase("fix", results, report, ok, evidence, kwargs, note), None


# --------------------------------------------------------------------------- output


def render(result: ReplayResult) -> str:
    case = result.case
    out = [f"case {case.id}: {case.title}", f"  expected cause: {case.cause}"]
    if case.source:
        out.append(f"  reported in: {', '.join(case.source)}")
    if result.skipped:
        out.append(f"  SKIPPED: {result.skipped}")
        return redact_text("\n".join(out)) + "\n"
    for phase in (result.symptom, result.fix):
        if phase is None:
            continue
        out.append(f"  -- {phase.name} --")
        if phase.kwargs is not None:
            out.append(f"  Llama() kwargs: {json.dumps(dict(phase.kwargs))}")
        for c in phase.commands:
            out.append(f"  $ {c.command}")
            out.append(f"    -> {c.outcome} ({c.seconds:.1f} s)")
            for line in _highlights(c.log):
                out.append(f"       | {line}")
        if phase.note:
            out.append(f"  note: {phase.note}")
        if any(c.stopped_after_configure for c in phase.commands):
            out.append(
                "  (builds were stopped after CMake configure: the configure log shows the "
                "backends the build would contain; the installed package is unchanged)"
            )
        if phase.report:
            out.append(f"  doctor: {phase.report.verdict}")
            out.append(f"  doctor names: {', '.join(phase.report.cause_ids) or '(nothing)'}")
        state = "reproduced" if phase.name == "symptom" else "fixed"
        out.append(f"  {state}: {'yes' if phase.ok else 'NO'}")
        out += [f"    {e}" for e in phase.evidence]
    if result.fix_skipped:
        out.append(f"  fix not replayed here: {result.fix_skipped}")
    if result.symptom and result.symptom.report:
        out.append(f"  doctor named the expected cause: {'yes' if result.cause_named else 'NO'}")
    out.append(f"  result: {'OK' if result.ok else 'FAILED'}")
    return redact_text("\n".join(out)) + "\n"


_HIGHLIGHT_RE = re.compile(
    r"Requirement already satisfied: llama|Processing .*llama_cpp_python|Building wheel for llama"
    r"|Successfully installed|CMake Error|is deprecated|Could not find|Including \w+ backend"
    r"|CUDA Toolkit|Using cached|ERROR:|Removed .*llama_cpp_python",
    re.IGNORECASE,
)


def _highlights(log: str, limit: int = 10) -> list[str]:
    picked = [ln.strip() for ln in log.splitlines() if _HIGHLIGHT_RE.search(ln)]
    unique = list(dict.fromkeys(picked))
    return [ln if len(ln) < 160 else ln[:157] + "..." for ln in unique[:limit]]
