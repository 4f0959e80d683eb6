"""Helpers behind the generated Nox sessions: posargs, status.json, the default job."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness import sessions


def test_parse_posargs_splits_harness_options_from_pytest_args(tmp_path: Path) -> None:
    wheel = tmp_path / "x.whl"
    opts = sessions.parse_posargs(["--wheel", str(wheel), "-k", "chat", "--container", "-x"])
    assert opts.wheel == wheel.resolve() and opts.container
    assert opts.rest == ["-k", "chat", "-x"]
    opts = sessions.parse_posargs([f"--wheel-out={tmp_path}", "--force"])
    assert opts.wheel_out == tmp_path.resolve() and opts.force and opts.wheel is None
    assert not opts.isolate
    opts = sessions.parse_posargs(["--isolate", "-k", "tg"])
    assert opts.isolate and opts.rest == ["-k", "tg"]
    with pytest.raises(ValueError, match="--wheel needs a path"):
        sessions.parse_posargs(["--wheel"])


def test_status_json_keeps_each_session_and_shows_the_worst(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_HARNESS_REPORTS", str(tmp_path))
    sessions.write_status("cuda", "build-cuda", "built", "cache hit in 2.0 s")
    path = sessions.write_status("cuda", "test-cuda", "built-no-gpu", "cuda: built OK, no GPU")
    data = json.loads(path.read_text())
    assert path == tmp_path / "cuda" / "status.json"
    assert data["status"] == "built-no-gpu" and data["session"] == "test-cuda"
    assert set(data["sessions"]) == {"build-cuda", "test-cuda"}
    sessions.write_status("cuda", "bench-cuda", "crashed-native", "SIGSEGV")
    assert json.loads(path.read_text())["status"] == "crashed-native"
    sessions.write_status("cuda", "bench-cuda", "passed", "ok")
    assert json.loads(path.read_text())["status"] == "built-no-gpu"
    assert not list(tmp_path.glob("cuda/*.tmp*"))


def test_default_job_runs_only_what_this_machine_can_run() -> None:
    names = sessions.default_sessions()
    assert names[:2] == ["lint", "tests"] and names[-1] == "report"
    variants = sessions.variants()
    for v in variants.values():
        expected = v.default and sessions.runnable_here(v)
        assert (f"test-{v.name}" in names) == expected, v.name
    assert "test-cpu-native" not in names  # opt-in: crashes on AMX CPUs


def test_client_env_for_gpu_and_cpu_variants(tmp_path: Path) -> None:
    variants = sessions.variants()
    cpu = sessions.client_env(variants["cpu"], "k" * 64, tmp_path / "w.whl")
    assert cpu["LLAMA_HARNESS_N_GPU_LAYERS"] == "0" and "LLAMA_HARNESS_REQUIRE_GPU" not in cpu
    assert cpu["LLAMA_HARNESS_VARIANT"] == "cpu" and cpu["LLAMA_HARNESS_BUILD_KEY"] == "k" * 64
    cuda = sessions.client_env(variants["cuda"], None, tmp_path / "w.whl")
    assert cuda["LLAMA_HARNESS_N_GPU_LAYERS"] == "-1"
    assert ("LLAMA_HARNESS_REQUIRE_GPU" in cuda) == sessions.gpu_present(variants["cuda"])


def test_constraint_file_pins_the_exact_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    wheel.write_bytes(b"")
    path = sessions.write_constraints(tmp_path, wheel)
    first = path.read_text().splitlines()[0]
    assert first == f"llama-cpp-python @ {wheel.resolve().as_uri()}"


def test_a_failed_llama_bench_fails_the_bench_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The benchmarks pass and write "passed"; llama-bench then fails (found under act: it
    ran over its timeout on a loaded machine): status.json must say "failed", or the report
    and CI's status gate would show a failed session as passed."""
    monkeypatch.setenv("LLAMA_HARNESS_REPORTS", str(tmp_path))
    monkeypatch.delenv("LLAMA_HARNESS_LLAMA_BENCH", raising=False)
    ready = sessions.Prepared(wheel=tmp_path / "w.whl", key="k", python="python", details={})
    monkeypatch.setattr(sessions, "_prepare_and_check", lambda *a: ready)
    monkeypatch.setattr(sessions, "client_env", lambda *a: {})

    def benchmarks_pass(session: object, variant: object, name: str, *rest: object) -> None:
        sessions.write_status("cpu", name, "passed", "pytest benchmarks/ passed")

    monkeypatch.setattr(sessions, "_run_pytest", benchmarks_pass)

    class Session:
        name = "bench-cpu"
        posargs: tuple[str, ...] = ()

        def run(self, *args: object, **kw: object) -> None:
            raise RuntimeError("Command python -m harness.cli llama-bench failed")

    with pytest.raises(RuntimeError):
        sessions.run_bench_session(Session(), sessions.variants()["cpu"])  # type: ignore[arg-type]
    entry = json.loads((tmp_path / "cpu" / "status.json").read_text())["sessions"]["bench-cpu"]
    assert entry["status"] == "failed" and "llama-bench failed" in entry["message"]


class _Session:
    """The two nox.Session members harness.sessions.install/run use."""

    name = "tests"

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def install(self, *args: str) -> None:
        time.sleep(0.25)  # a pip run that prints nothing
        self.calls.append(("install", args))

    def run(self, *args: str, **kwargs: object) -> str:
        time.sleep(0.25)
        self.calls.append(("run", args))
        return "out"


def test_session_commands_show_life_in_a_log(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLAMA_HARNESS_PROGRESS", "lines")
    monkeypatch.setenv("LLAMA_HARNESS_PROGRESS_INTERVAL", "0.05")
    session = _Session()
    sessions.install(session, "-e", ".[test]")  # type: ignore[arg-type]
    assert sessions.run(session, "pytest", "/a/long/path/tests/unit") == "out"  # type: ignore[arg-type]
    assert session.calls == [
        ("install", ("-e", ".[test]")),
        ("run", ("pytest", "/a/long/path/tests/unit")),
    ]
    err = capsys.readouterr().err
    assert "tests: pip install -e .[test]: still running, " in err
    assert "tests: pytest unit: still running, " in err
