"""What ``noxfile.py``'s generated ``build-/test-/bench-<variant>`` sessions do.

A test session::

    wheel (the cache / a fresh build / --wheel PATH) -> install it into the session's own
    venv by path (--no-deps), its runtime deps, the project, and a constraint file pinning
    llama-cpp-python to that exact file for every later pip call -> verify the installed
    build against the variant (harness.build.verify) -> GPU variant without a GPU: stop, status
    "built-no-gpu" -> exercise it in a child process (harness.build.exercise: a native crash becomes
    "crashed in native code: SIGSEGV ...", status "crashed-native") -> pytest tests/client

Each outcome is written to ``reports_dir()/<variant>/status.json`` (read by the report):
``{"variant", "status", "message", "sessions": {"test-cpu": {...}, ...}}``, where the
top-level status is the worst of the test/bench/build sessions' statuses.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import paths
from harness.build.install import RUNTIME_DEPS, write_constraints
from harness.build.variants import Registry, Variant, load_registry
from saiverse_llm.atomic import (
    atomic_copy,
    atomic_write_json,
    publish,
    temp_path_beside,
)
from saiverse_llm.progress import heartbeat
from saiverse_llm.redact import redact_obj

if TYPE_CHECKING:  # nox is only needed by the noxfile that calls these helpers
    from nox import Session as NoxSession

#: Worst first: the top-level status of status.json is the worst session status.
SEVERITY = (
    "crashed-native",
    "build-failed",
    "verify-failed",
    "failed",
    "built-no-gpu",
    "skipped",
    "passed",
    "built",
)
#: The status each kind of session writes when it did its job (build-<v>: "built",
#: test-<v>/bench-<v>: "passed"). CI's status gate accepts exactly this, plus what a job
#: allows explicitly (harness/ship/status_gate.py).
SUCCESS = {"build": "built", "test": "passed", "bench": "passed"}


def session_kind(session: str) -> str:
    """``build`` / ``test`` / ``bench`` of a variant session name such as ``test-cpu``."""
    kind = session.split("-", 1)[0]
    if kind not in SUCCESS or "-" not in session:
        raise ValueError(
            f"{session!r} is not a variant session; fix: use build-<variant>, test-<variant> "
            "or bench-<variant>"
        )
    return kind


# --------------------------------------------------------------------------- registry


@cache
def registry() -> Registry:
    return load_registry()


def variants() -> dict[str, Variant]:
    return registry().variants


def gpu_present(variant: Variant) -> bool:
    return variant.gpu and not variant.runtime_problems()


def runnable_here(variant: Variant) -> bool:
    """Builds here and (GPU variants) has its GPU here: cheap checks, safe at import time."""
    return not variant.build_problems() and not variant.runtime_problems()


def default_sessions(extra_first: Sequence[str] = ("lint", "tests")) -> list[str]:
    """Plain ``nox``: lint, tests, build/test/bench of every default variant runnable here,
    then the report."""
    names = list(extra_first)
    for v in variants().values():
        if v.default and runnable_here(v):
            names += [f"build-{v.name}", f"test-{v.name}", f"bench-{v.name}"]
    names.append("report")
    return names


# --------------------------------------------------------------------------- posargs


@dataclass
class SessionOptions:
    wheel: Path | None = None
    wheel_out: Path | None = None
    container: bool = False
    force: bool = False
    isolate: bool = False
    rest: list[str] = field(default_factory=list)


def parse_posargs(posargs: Iterable[str]) -> SessionOptions:
    """``--wheel PATH``, ``--wheel-out DIR``, ``--container``, ``--force``, ``--isolate``
    (bench: own scheduler group, wait for a quiet machine, harness.bench.machine_load); the rest is
    for pytest."""
    opts = SessionOptions()
    items = list(posargs)
    i = 0
    while i < len(items):
        arg = items[i]
        for flag in ("--wheel", "--wheel-out"):
            if arg.startswith(flag + "="):
                items[i : i + 1] = [flag, arg.split("=", 1)[1]]
                arg = flag
        if arg in ("--wheel", "--wheel-out"):
            if i + 1 >= len(items):
                raise ValueError(f"{arg} needs a path: nox -s test-<variant> -- {arg} PATH")
            value = Path(items[i + 1]).expanduser().resolve()
            if arg == "--wheel":
                opts.wheel = value
            else:
                opts.wheel_out = value
            i += 2
            continue
        if arg == "--container":
            opts.container = True
        elif arg == "--force":
            opts.force = True
        elif arg == "--isolate":
            opts.isolate = True
        else:
            opts.rest.append(arg)
        i += 1
    return opts


# --------------------------------------------------------------------------- status.json


def status_path(variant: str) -> Path:
    return paths.reports_dir() / variant / "status.json"


def write_status(variant: str, session: str, status: str, message: str, **details: Any) -> Path:
    """Record one session's outcome (:func:`saiverse_llm.atomic.atomic_write_json`)."""
    path = status_path(variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    sessions = data.get("sessions") if isinstance(data.get("sessions"), dict) else {}
    assert isinstance(sessions, dict)
    sessions[session] = {
        "status": status,
        "message": message,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **details,
    }
    worst_name, worst = min(
        sessions.items(),
        key=lambda kv: (
            SEVERITY.index(kv[1].get("status")) if kv[1].get("status") in SEVERITY else 0
        ),
    )
    data.update(
        {
            "variant": variant,
            "status": worst.get("status"),
            "message": worst.get("message"),
            "session": worst_name,
            "sessions": sessions,
        }
    )
    return atomic_write_json(path, redact_obj(data), sort_keys=True, default=str, ensure_ascii=True)


# --------------------------------------------------------------------------- steps


def obtain_wheel(
    session: NoxSession, variant: Variant, opts: SessionOptions, name: str
) -> tuple[Path, str | None]:
    """(wheel, cache key) from --wheel, the cache, or a build."""
    from harness.build import wheel_cache
    from harness.build.build import BuildError, build_wheel, check_wheel_libraries

    if opts.wheel is not None:
        if not opts.wheel.is_file():
            session.error(f"--wheel {opts.wheel}: no such file")
        meta = opts.wheel.parent / "build.json"
        key = None
        if meta.is_file():
            try:
                key = json.loads(meta.read_text()).get("key")
            except ValueError:
                key = None
        backends = wheel_cache.wheel_backends(opts.wheel)
        try:
            check_wheel_libraries(variant, opts.wheel)
        except BuildError as exc:
            write_status(variant.name, name, "verify-failed", str(exc))
            session.error(f"--wheel {opts.wheel}: {exc}")
        session.log(f"{variant.name}: testing the given wheel {opts.wheel} "
                    f"(libraries for {', '.join(sorted(backends)) or 'no backend'})")  # fmt: skip
        return opts.wheel, key
    try:
        built = build_wheel(variant, force=opts.force, say=session.log)
    except BuildError as exc:
        write_status(variant.name, f"build-{variant.name}", "build-failed", str(exc),
                     log=str(exc.log) if exc.log else None)  # fmt: skip
        session.error(str(exc))
        raise  # unreachable: session.error raises
    return built.wheel, built.key


def cached_wheel(variant: str) -> Path | None:
    """The newest already-built wheel of ``variant`` (sha256 re-checked), or None: no build."""
    from harness.build import wheel_cache

    entry = wheel_cache.newest(variant)
    return entry.wheel if entry is not None else None


def install(session: NoxSession, *args: str) -> None:
    """``session.install(*args)``; in a log, a line every 30 s while pip works (nox shows
    nothing of a pip run that succeeds, and one can take minutes on a cold cache)."""
    with heartbeat(f"{session.name}: pip install {_short(args)}"):
        session.install(*args)


def run(session: NoxSession, *args: str, **kwargs: Any) -> Any:
    """``session.run(*args, **kwargs)``; in a log, a line every 30 s while it runs (pytest
    prints nothing between test files; one file can take minutes)."""
    with heartbeat(f"{session.name}: {_short(args)}"):
        return session.run(*args, **kwargs)


def _short(args: Sequence[str], width: int = 60) -> str:
    text = " ".join(Path(a).name if os.sep in a else a for a in args)
    return text if len(text) <= width else text[: width - 3] + "..."


def session_python(session: NoxSession) -> str:
    exe = "python.exe" if sys.platform == "win32" else "python"
    return str(Path(session.bin) / exe)


def install_wheel(session: NoxSession, wheel: Path, *, extras: str = "test") -> Path:
    """Install the variant's wheel by path, its runtime deps, and the project; return the
    constraint file (also set as PIP_CONSTRAINT for the rest of the session)."""
    from saiverse_llm.download import sha256_file

    venv = Path(session.bin).parent
    constraints = write_constraints(venv, wheel, python=session_python(session))
    marker = venv / "llama-harness-wheel.json"
    digest = sha256_file(wheel)
    try:
        same = json.loads(marker.read_text()).get("sha256") == digest
    except (OSError, ValueError):
        same = False
    if not same:
        marker.unlink(missing_ok=True)
        install(session, "--no-deps", "--force-reinstall", str(wheel))
    install(session, "-c", str(constraints), *RUNTIME_DEPS)
    install(session, "-c", str(constraints), "-e", f".[{extras}]" if extras else ".")
    atomic_write_json(marker, {"wheel": str(wheel), "sha256": digest}, indent=None)
    session.env["PIP_CONSTRAINT"] = str(constraints)
    return constraints


def exercise_model() -> Path:
    """A tiny q8_0 model: quantized, so an AMX -march=native build crashes on it like on a
    real model (an f32 model never reaches the AMX path)."""
    from harness.models.synth import synthesize

    path = paths.models_dir() / "exercise-tiny-q8_0.gguf"
    if not path.is_file():
        synthesize(path, preset="tiny", dtype="q8_0", seed=0)
    return path


def client_env(variant: Variant, key: str | None, wheel: Path) -> dict[str, str]:
    gpu = gpu_present(variant)
    env = {
        **variant.runtime_env(),
        "LLAMA_HARNESS_VARIANT": variant.name,
        "LLAMA_HARNESS_N_GPU_LAYERS": "-1" if variant.gpu else "0",
        "LLAMA_HARNESS_WHEEL": str(wheel),
    }
    if key:
        env["LLAMA_HARNESS_BUILD_KEY"] = key
    if gpu:
        env["LLAMA_HARNESS_REQUIRE_GPU"] = "1"
    if software_device(variant):
        # llvmpipe runs Gemma 3 270M at ~1.5 tok/s: the suite and benchmarks use the tiny
        # model, and the benchmarks their reduced set (no 2,048-token stream, no ~1 GB GPU
        # model; benchmarks/benchlib.py); either variable set by the caller wins
        if not os.environ.get("LLAMA_HARNESS_MODELS"):
            env["LLAMA_HARNESS_MODELS"] = "tiny"
        if not os.environ.get("LLAMA_HARNESS_BENCH_SET"):
            env["LLAMA_HARNESS_BENCH_SET"] = "reduced"
    return env


def software_device(variant: Variant) -> bool:
    """The variant runs on a software Vulkan device here (llvmpipe): correct, not a GPU."""
    if variant.backend != "VULKAN":
        return False
    from harness.build import vulkan_devices

    return vulkan_devices.software_only()


def _container(session: NoxSession, variant: Variant, name: str, opts: SessionOptions) -> None:
    try:
        from harness.ship import container  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        session.error(
            "--container: harness/ship/container.py is not available in this checkout; run the "
            "session without --container, or update the project"
        )
        return
    posargs = [a for a in session.posargs if a != "--container"]
    code = int(container.run_session_in_container(variant.name, name, posargs))
    if code != 0:
        session.error(f"{name} in a container failed with exit code {code}")


def run_build_session(session: NoxSession, variant: Variant) -> None:
    name = f"build-{variant.name}"
    opts = parse_posargs(session.posargs)
    if opts.container:
        _container(session, variant, name, opts)
        return
    reason = variant.skip_reason()
    if reason:
        session.skip(reason)
    from harness.build.build import BuildError, build_wheel

    try:
        built = build_wheel(variant, force=opts.force, say=session.log)
    except BuildError as exc:
        write_status(variant.name, name, "build-failed", str(exc),
                     log=str(exc.log) if exc.log else None)  # fmt: skip
        session.error(str(exc))
        return
    wheel = built.wheel
    if opts.wheel_out:
        opts.wheel_out.mkdir(parents=True, exist_ok=True)
        wheel = atomic_copy(built.wheel, opts.wheel_out / built.wheel.name)
        meta = built.wheel.parent / "build.json"
        if meta.is_file():
            atomic_copy(meta, opts.wheel_out / "build.json")
    write_status(variant.name, name, "built",
                 f"{'cache hit' if built.cached else 'built'} in {built.seconds:.1f} s",
                 wheel=str(built.wheel), key=built.key, cached=built.cached)  # fmt: skip
    session.log(f"{variant.name}: {'cache hit' if built.cached else 'built'} in "
                f"{built.seconds:.1f} s (key {built.key[:12]})")  # fmt: skip
    print(wheel)


@dataclass
class Prepared:
    """The session's venv holds the variant's verified, exercised wheel."""

    wheel: Path
    key: str | None
    python: str
    details: dict[str, Any]


def _prepare_and_check(
    session: NoxSession, variant: Variant, name: str, opts: SessionOptions
) -> Prepared:
    """wheel -> install -> verify -> (GPU variant without GPU: stop) -> exercise."""
    from harness.build.exercise import exercise
    from harness.build.verify import verify_python

    if opts.wheel is None:
        reason = variant.skip_reason()
        if reason:
            write_status(variant.name, name, "skipped", reason)
            session.skip(reason)
    wheel, key = obtain_wheel(session, variant, opts, name)
    details: dict[str, Any] = {"wheel": str(wheel), "key": key}
    install_wheel(session, wheel)
    python = session_python(session)
    gpu = gpu_present(variant)
    extra_env = variant.runtime_env()
    for name, value in extra_env.items():
        session.log(f"{variant.name}: {name}={value} (the only Vulkan device here is a "
                    "software one; llama.cpp skips it unless selected)")  # fmt: skip
    result, _info = verify_python(variant, python, wheel=wheel, gpu_present=gpu, env=extra_env)
    details["verification"] = result.to_dict()
    if not result.ok:
        write_status(variant.name, name, "verify-failed", result.summary(), **details)
        session.error(result.summary())
    session.log(result.summary())
    if variant.gpu and not gpu:
        why = "; ".join(f"{p.what}: {p.detail}" for p in variant.runtime_problems())
        msg = (
            f"{variant.name}: built OK, no GPU to run on ({why}). The compiled "
            f"{variant.backend} backend was verified; run `nox -s {name} -- --wheel {wheel}` "
            "on a machine with the GPU"
        )
        write_status(variant.name, name, "built-no-gpu", msg, **details)
        session.skip(msg)
    ex = exercise(python, exercise_model(), n_gpu_layers=-1 if variant.gpu else 0,
                  env=extra_env)  # fmt: skip
    details["exercise"] = ex.to_dict()
    if not ex.ok:
        status = "crashed-native" if ex.status == "crashed" else "failed"
        write_status(variant.name, name, status, ex.summary(), **details)
        session.error(f"{variant.name}: {ex.summary()}")
    session.log(f"{variant.name}: exercise: {ex.message}")
    if variant.gpu and not ex.all_offloaded:
        # n_gpu_layers=-1 on a GPU that is present: every layer must reach it (counted from
        # llama.cpp's load log), else the session would test the CPU under a GPU's name
        got = (f"{ex.offloaded_layers}/{ex.total_layers}" if ex.total_layers
               else "an unknown number of")  # fmt: skip
        msg = (f"{variant.name}: n_gpu_layers=-1 offloaded {got} layers to "
               f"{variant.backend}, not all of them; run `llama-harness doctor --variant "
               f"{variant.name}` for the cause")  # fmt: skip
        write_status(variant.name, name, "failed", msg, **details)
        session.error(msg)
    return Prepared(wheel=wheel, key=key, python=python, details=details)


@dataclass
class Started:
    """A test/bench session past its checks: its name, options, prepared venv and the
    environment the suite runs with."""

    name: str
    opts: SessionOptions
    ready: Prepared
    env: dict[str, str]


def start_run(session: NoxSession, variant: Variant, kind: str) -> Started | None:
    """``test``/``bench`` sessions begin the same way: options -> (``--container``: the whole
    session in a container, None) -> :func:`_prepare_and_check` -> the client environment."""
    name = f"{kind}-{variant.name}"
    opts = parse_posargs(session.posargs)
    if opts.container:
        _container(session, variant, name, opts)
        return None
    ready = _prepare_and_check(session, variant, name, opts)
    return Started(name, opts, ready, client_env(variant, ready.key, ready.wheel))


def run_test_session(session: NoxSession, variant: Variant) -> None:
    started = start_run(session, variant, "test")
    if started is None:
        return
    name, opts, ready, env = started.name, started.opts, started.ready, started.env
    _run_pytest(session, variant, name, ["tests/client", *opts.rest], env, ready)
    run_agree(session, variant, name, env, ready)


#: The build every other variant's numbers are compared with (``llama-harness agree``).
AGREE_REFERENCE = "cpu"


def agree_models(env: Mapping[str, str]) -> list[str]:
    """The models ``agree`` runs on in a test session: those of LLAMA_HARNESS_MODELS (the
    client suite's list, default tiny and Gemma 3 270M) that agree knows."""
    raw = env.get("LLAMA_HARNESS_MODELS") or os.environ.get("LLAMA_HARNESS_MODELS")
    names = [m.strip() for m in (raw or "tiny,gemma-3-270m").split(",") if m.strip()]
    return [m for m in names if m in ("tiny", "gemma-3-270m")]


def run_agree(
    session: NoxSession, variant: Variant, name: str, env: Mapping[str, str], ready: Prepared
) -> None:
    """``llama-harness agree cpu <variant>=<this session's python>`` on each model: the
    session fails with the numbers when the build's distributions are outside the limits
    of harness/bench/agree-thresholds.yaml. Skipped (and said) without a reference wheel."""
    if variant.name == AGREE_REFERENCE:
        session.log(f"agree: {variant.name} is the reference build; nothing to compare")
        return
    if cached_wheel(AGREE_REFERENCE) is None:
        msg = (f"agree: skipped, no {AGREE_REFERENCE} wheel in the harness cache to compare "
               f"with (run `nox -s build-{AGREE_REFERENCE}` first)")  # fmt: skip
        session.log(msg)
        write_status(variant.name, name, "passed", msg, **ready.details)
        return
    for model in agree_models(env):
        cmd = ["python", "-m", "harness.cli", "agree", AGREE_REFERENCE,
               f"{variant.name}={ready.python}", "--model", model]  # fmt: skip
        try:
            run(session, *cmd, env=dict(env))
        except Exception as exc:  # nox.command.CommandFailed: agree printed the numbers
            write_status(variant.name, name, "failed",
                         f"agree {AGREE_REFERENCE} {variant.name} on {model}: outside the "
                         f"limits or failed ({exc}); see reports/{variant.name}/"
                         f"agree-{AGREE_REFERENCE}-{model}.json", **ready.details)  # fmt: skip
            raise


def run_bench_session(session: NoxSession, variant: Variant) -> None:
    started = start_run(session, variant, "bench")
    if started is None:
        return
    name, opts, ready, env = started.name, started.opts, started.ready, started.env
    out = paths.reports_dir() / variant.name / "bench.json"
    if opts.isolate:
        env["LLAMA_HARNESS_ISOLATE"] = "1"
    # pytest-benchmark writes its JSON in place: give it a temporary file beside bench.json
    # and publish that only when it is a complete JSON document.
    tmp = temp_path_beside(out)
    try:
        args = ["benchmarks/", f"--benchmark-json={tmp}", *opts.rest]
        try:
            _run_pytest(session, variant, name, args, env, ready)
        finally:
            if _is_json_document(tmp):
                publish(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    if os.environ.get("LLAMA_HARNESS_LLAMA_BENCH", "1") != "0":
        # llama.cpp's own llama-bench, same sdist + CMAKE_ARGS + settings -> parity in the report
        try:
            run(session, "python", "-m", "harness.cli", "llama-bench", "--variant",
                variant.name, env=dict(env))  # fmt: skip
        except Exception as exc:  # nox.command.CommandFailed: the session failed, say so
            write_status(variant.name, name, "failed", f"llama-bench failed: {exc}",
                         **ready.details)  # fmt: skip
            raise


def _is_json_document(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return True


def _run_pytest(
    session: NoxSession,
    variant: Variant,
    name: str,
    args: list[str],
    env: Mapping[str, str],
    ready: Prepared,
) -> None:
    command = "pytest " + " ".join(args)
    try:
        run(session, "pytest", *args, env=dict(env))
    except Exception as exc:  # nox.command.CommandFailed
        write_status(variant.name, name, "failed", f"{command} failed: {exc}", **ready.details)
        raise
    write_status(variant.name, name, "passed", f"{command} passed", **ready.details)
