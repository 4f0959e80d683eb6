"""The doctor reads users' logs: every log of the corpus (tests/doctor_logs/, each written by
us to paraphrase a cited public report) must give its cause, that cause's specific fix and a
non-zero exit status, both against an interpreter with the cpu build installed and against a
bare venv without llama-cpp-python. The coverage figure is printed.

Nothing is mocked: the machine and interpreter facts come from the real collection (a child
interpreter runs harness.build.buildinfo); only the log differs from run to run. The command line is
exercised end to end on a few logs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.doctor import build_log, doctor

ROOT = Path(__file__).resolve().parents[2]
CORPUS_DIR = ROOT / "tests" / "doctor_logs"
CORPUS = sorted(CORPUS_DIR.glob("*.yaml"))
ENTRY_KEYS = {"source", "expect", "fix", "step", "absent", "install", "log"}


def load_entry(path: Path) -> dict[str, Any]:
    entry = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(entry, dict) and set(entry) <= ENTRY_KEYS, f"{path.name}: keys {entry}"
    assert str(entry.get("source", "")).startswith("https://github.com/"), path.name
    assert isinstance(entry.get("log"), str) and entry["log"].strip(), path.name
    assert isinstance(entry.get("fix"), list) and entry["fix"], path.name
    assert entry.get("step") in (None, *build_log.STEPS), path.name
    assert isinstance(entry.get("absent", []), list), path.name
    return entry


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A venv with nothing in it: no llama-cpp-python, not even pip."""
    root = tmp_path_factory.mktemp("bare-venv")
    venv.EnvBuilder(with_pip=False).create(root)
    return str(root / "bin" / "python")


def _cpu_python() -> str:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip(
            "needs the cpu build in this interpreter (`nox -s tests` installs it when the wheel "
            "cache has one: run `nox -s build-cpu` or `test-cpu` first)"
        )
    return sys.executable


@pytest.fixture(scope="module", params=["cpu-build", "no-llama-cpp-python"])
def interpreter(request: pytest.FixtureRequest, bare_python: str) -> tuple[str, str]:
    if request.param == "cpu-build":
        return request.param, _cpu_python()
    return request.param, bare_python


def check_entry(
    entry: dict[str, Any], base: dict[str, Any], info: Any
) -> tuple[list[str], list[str]]:
    """(problems, cause ids named) for one corpus log on top of an interpreter's facts."""
    commands = [entry["install"]] if entry.get("install") else []
    facts = {**base, **doctor.user_input_facts(base, commands, [entry["log"]])}
    report = doctor.diagnose(facts, {}, info=info)
    problems: list[str] = []
    match = next((m for m in report.matches if m.cause.id == entry["expect"]), None)
    if match is None:
        problems.append(f"cause {entry['expect']} not named (named: {report.cause_ids})")
    else:
        fixes = "\n".join(match.fix)
        problems += [f"fix lacks {s!r}: {match.fix}" for s in entry["fix"] if s not in fixes]
        if "{" in fixes and "}" in fixes and "${" not in fixes:
            problems.append(f"unfilled placeholder in the fix: {match.fix}")
    wrong = [c for c in entry.get("absent", []) if c in report.cause_ids]
    if wrong:
        problems.append(f"named {wrong}, which the log contradicts")
    if report.exit_code == 0:
        problems.append("exit status 0")
    if entry.get("step") and report.facts.get("log.failed_step") != entry["step"]:
        problems.append(f"step {report.facts.get('log.failed_step')!r}, not {entry['step']!r}")
    text = doctor.render_text(report)
    if "causes below" in text:
        problems.append("the text says 'the causes below'")
    return problems, report.cause_ids


def test_corpus_is_large_cited_and_names_real_causes() -> None:
    ids = {c.id for c in doctor.load_causes()}
    entries = [load_entry(p) for p in CORPUS]
    assert len(entries) >= 25
    unknown = {e["expect"] for e in entries} - ids
    unknown |= {c for e in entries for c in e.get("absent", [])} - ids
    assert not unknown, f"corpus names causes the catalogue lacks: {unknown}"
    build_causes = {
        "nvcc-too-old-for-arch",
        "host-compiler-too-new",
        "vulkan-sdk-missing",
        "vulkan-headers-too-old",
        "cmake-missing-or-too-old",
        "cxx-compiler-missing",
        "legacy-flag-ignored",
        "driver-older-than-runtime",
        "no-cuda-device",
        "wsl-libcuda-shadowed",
        "no-gpu-device-visible",
        "n-gpu-layers-zero",
    }
    assert build_causes <= {e["expect"] for e in entries}


def test_every_corpus_log_gets_its_cause_fix_and_a_failing_exit(
    interpreter: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    label, python = interpreter
    base, info, _ = doctor.collect_facts(doctor.DoctorOptions(python=python, probe=False, env={}))
    assert bool(base.get("llama.installed")) is (label == "cpu-build")
    failures: list[str] = []
    covered: set[str] = set()
    for path in CORPUS:
        entry = load_entry(path)
        problems, _named = check_entry(entry, base, info)
        if problems:
            failures.append(f"{path.name}: " + "; ".join(problems))
        else:
            covered.add(entry["expect"])
    ok = len(CORPUS) - len(failures)
    catalogue = len(doctor.load_causes())
    with capsys.disabled():
        print(
            f"\ndoctor log corpus [{label}]: {ok}/{len(CORPUS)} logs "
            f"({100 * ok / len(CORPUS):.0f}%) named their cause with its fix and exited 1; "
            f"{len(covered)} of {catalogue} catalogue causes covered by the corpus"
        )
    assert not failures, "\n".join(failures)


def test_a_healthy_log_is_not_reported_as_a_failed_build(bare_python: str) -> None:
    """The check can fail the other way: a clean GPU run names no log cause."""
    base, info, _ = doctor.collect_facts(
        doctor.DoctorOptions(python=bare_python, probe=False, env={})
    )
    log = (
        "ggml_cuda_init: found 1 CUDA devices:\n"
        "  Device 0: NVIDIA H100 80GB HBM3, compute capability 9.0, VMM: yes\n"
        "load_tensors: offloaded 29/29 layers to GPU\n"
    )
    facts = {**base, **doctor.user_input_facts(base, [], [log])}
    report = doctor.diagnose(facts, {}, info=info)
    assert report.facts["log.build_failed"] is False
    assert set(report.cause_ids) <= {"llama-not-installed", "no-gpu-here"}


# --------------------------------------------------------------------------- the CLI


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "doctor", "--no-probe", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("name", ["37-case12-vulkan-sdk-missing", "38-case13-nvcc-124-native-120"])
def test_cli_log_exit_code_and_cause(
    name: str, interpreter: tuple[str, str], tmp_path: Path
) -> None:
    entry = load_entry(CORPUS_DIR / f"{name}.yaml")
    log = tmp_path / "pip-install.log"
    log.write_text(entry["log"])
    args = ["--python", interpreter[1], "--log", str(log), "--install-cmd", entry["install"]]
    text = _cli(*args)
    as_json = _cli(*args, "--json")
    assert text.returncode == 1, text.stderr
    assert as_json.returncode == 1, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["healthy"] is False
    assert entry["expect"] in [c["id"] for c in data["causes"]]
    assert "Failing step:" in text.stdout
    assert "causes below" not in text.stdout
    assert data["verdict"].startswith("The llama-cpp-python build in the log failed at the")


def test_cli_without_llama_cpp_python_exits_1_and_names_the_install_command(
    bare_python: str,
) -> None:
    proc = _cli("--python", bare_python)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "llama-not-installed" in proc.stdout
    assert f"llama-harness install cpu --python {bare_python}" in proc.stdout
    assert "No known cause matched" not in proc.stdout


@pytest.mark.parametrize("kind", ["missing", "empty", "directory", "binary"])
def test_cli_a_log_that_is_not_a_text_log_is_a_usage_error_with_the_fix(
    kind: str, tmp_path: Path
) -> None:
    """One line on stderr, 'error: <what>. Fix: <what to do>', exit 2, nothing on stdout."""
    path = tmp_path / f"{kind}.log"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 100)
    proc = _cli("--log", str(path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --log {path}: "), proc.stderr
    assert ". Fix: " in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_cli_json_of_a_log_with_secrets_is_valid_and_complete(tmp_path: Path) -> None:
    """stdout passes through the redacting stream: the JSON must stay JSON, the secrets go,
    the log's other lines stay (they were swallowed up to the next quote)."""
    log = tmp_path / "run.log"
    log.write_text(
        "print_info: BOS token        = 2 '<bos>'\n"
        "export HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz123456\n"
        "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected\n"
        'curl -H "Authorization: Bearer sk-proj-ABCDEFGHIJKLMNOPQRSTUV0123" https://x/simple\n'
        "load_tensors: offloaded 0/29 layers to GPU\n"
    )
    proc = _cli("--log", str(log), "--json")
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert "hf_abcdefghij" not in proc.stdout and "sk-proj-ABC" not in proc.stdout
    lines = data["facts"]["user.log"].splitlines()
    assert lines[0] == "print_info: BOS token        = 2 '<bos>'"
    assert "load_tensors: offloaded 0/29 layers to GPU" in lines
    assert "no-cuda-device" in [c["id"] for c in data["causes"]]


def test_cli_shows_its_steps_as_progress(
    tmp_path: Path, bare_python: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long --log run is never silent: each step is a progress line off a terminal (and a
    line every 30 s while one lasts; a bar in a terminal), on stderr, the report unchanged."""
    entry = load_entry(CORPUS_DIR / "38-case13-nvcc-124-native-120.yaml")
    log = tmp_path / "pip-install.log"
    log.write_text(entry["log"])
    monkeypatch.setenv("LLAMA_HARNESS_PROGRESS", "lines")
    proc = _cli("--python", bare_python, "--log", str(log))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    for n, step in enumerate(doctor.DOCTOR_STEPS):
        assert any(ln.startswith(f"doctor: {step} {n}/5 ") for ln in lines), proc.stderr
    assert lines[-1].startswith("doctor: matching causes 5/5 (100%), done in"), proc.stderr
    assert "Failing step:" in proc.stdout and "doctor:" not in proc.stdout
