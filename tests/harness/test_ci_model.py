"""The workflows as GitHub would run them, modelled call site by call site.

tests/harness/test_workflows.py checks that the workflows are well formed and that their
cheap scripts run. This module checks that they would *work*, with one model per kind of
call site, each derived from the code it calls rather than from a copied list:

* every ``check-status`` use, for every matrix entry of its job, is run here (the action as
  written) on each status its session can write; the statuses come from the
  ``write_status`` calls of ``harness/sessions.py`` (read with ``ast``), and a session's
  success is what the report counts as fine (``harness.bench.report.OK_STATUSES``);
* every runner label (the registry's matrix, literal ``runs-on``, workflow inputs, the docs)
  is checked against THE list of retired labels (``harness.ship.ci_matrix.RETIRED_RUNNER_LABELS``);
* every ``nox -s`` a job runs needs tools (a build session: the variant's ``build_requires``
  from the registry; a bench session also llama-bench's compiler unless the job turns it
  off); the job's image must have them (runner image, container image, plus what
  setup-harness installs);
* the ``if:`` of the self-hosted GPU job and the ``concurrency`` of ci.yml are evaluated
  for each event (a small evaluator of GitHub's expression syntax);
* the caches: the wheel is keyed by the harness's own build key (computed here by the step
  as written), saved right after the build and only when it compiled; the ``tests`` job has
  the cpu wheel before ``nox -s tests``; test and bench of a hosted variant share a job;
* the nightly comparison and history steps run here as written on two reports.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.bench import report as report_mod
from harness.build.variants import Requirement, Variant, load_variants
from harness.paths import PROJECT_ROOT
from harness.ship.ci_matrix import RETIRED_RUNNER_LABELS, compute_matrix

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
ACTIONS = PROJECT_ROOT / ".github" / "actions"
WORKFLOW_FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
SESSIONS_PY = PROJECT_ROOT / "harness" / "sessions.py"
BIN = Path(sys.executable).parent
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}", re.S)


# =========================================================================== helpers


def load_yaml(path: Path) -> dict[Any, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def triggers(wf: Mapping[Any, Any]) -> dict[str, Any]:
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads `on:` as True
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    assert isinstance(on, dict)
    return dict(on)


def run_bash(script: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """A ``run:`` block as GitHub runs it with ``shell: bash``."""
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=PROJECT_ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def variants() -> dict[str, Variant]:
    return load_variants()


@pytest.fixture(scope="module")
def outputs(variants: dict[str, Variant]) -> dict[str, str]:
    """The matrix job's outputs (test_workflows.py checks its script yields exactly these)."""
    return compute_matrix(variants.values()).github_outputs()


def matrix_entries(job: Mapping[str, Any], outputs: Mapping[str, str]) -> list[dict[str, Any]]:
    spec = (job.get("strategy") or {}).get("matrix")
    if spec is None:
        return [{}]
    if isinstance(spec, str):
        m = re.fullmatch(r"\$\{\{\s*fromJSON\(needs\.matrix\.outputs\.(\w+)\)\s*\}\}", spec)
        assert m, spec
        entries: list[dict[str, Any]] = json.loads(outputs[m.group(1)])["include"]
        return entries
    keys = [k for k in spec if k not in ("include", "exclude")]
    combos = [dict(zip(keys, v, strict=True)) for v in itertools.product(*(spec[k] for k in keys))]
    return combos + list(spec.get("include") or [])


def sub_matrix(text: str, entry: Mapping[str, Any]) -> str:
    """``${{ matrix.x }}`` replaced by the entry's value; other expressions left as they are."""

    def repl(m: re.Match[str]) -> str:
        expr = m.group(1)
        if re.fullmatch(r"matrix\.\w+", expr):
            value = entry[expr.split(".", 1)[1]]
            return " ".join(value) if isinstance(value, list) else str(value)
        return m.group(0)

    return EXPR.sub(repl, text)


@dataclass(frozen=True)
class JobRun:
    """One job of one workflow for one matrix entry."""

    workflow: str
    job_id: str
    job: Mapping[str, Any]
    entry: Mapping[str, Any]

    @property
    def where(self) -> str:
        return f"{self.workflow}:{self.job_id}:{self.entry.get('variant') or self.entry}"

    def runs_on(self) -> list[str]:
        raw = self.job["runs-on"]
        if isinstance(raw, str) and raw.strip() == "${{ matrix.runs_on }}":
            value = self.entry["runs_on"]
            return [value] if isinstance(value, str) else list(value)
        if isinstance(raw, list):
            return [sub_matrix(str(x), self.entry) for x in raw]
        return [sub_matrix(str(raw), self.entry)]

    def container(self) -> str:
        c = self.job.get("container")
        if c is None:
            return ""
        image = c.get("image", "") if isinstance(c, dict) else str(c)
        return sub_matrix(str(image), self.entry)

    def env(self) -> dict[str, str]:
        return {k: sub_matrix(str(v), self.entry) for k, v in (self.job.get("env") or {}).items()}

    def steps(self) -> list[Mapping[str, Any]]:
        return list(self.job.get("steps") or [])


def job_runs(outputs: Mapping[str, str]) -> Iterator[JobRun]:
    for path in WORKFLOW_FILES:
        wf = load_yaml(path)
        for job_id, job in wf["jobs"].items():
            for entry in matrix_entries(job, outputs):
                yield JobRun(path.name, job_id, job, entry)


# =========================================================================== GitHub expressions


class Expr:
    """A small evaluator of GitHub's expression language: literals, context paths, ``!``,
    ``==``/``!=`` (strings compared case-insensitively), ``&&``/``||`` (returning an operand,
    as GitHub does), parentheses and the functions the workflows use."""

    TOKEN = re.compile(
        r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>\d+(?:\.\d+)?)|(?P<op>==|!=|&&|\|\||!|\(|\)|,|\.|\[|\])"
        r"|(?P<name>[A-Za-z_][\w-]*))"
    )

    def __init__(self, text: str, context: Mapping[str, Any]) -> None:
        text = text.strip()
        m = EXPR.fullmatch(text)
        self.text = m.group(1) if m else text
        self.ctx = context
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(self.text):
            t = self.TOKEN.match(self.text, pos)
            assert t and t.end() > pos, f"cannot read {self.text[pos:]!r}"
            kind = t.lastgroup
            assert kind is not None
            self.tokens.append((kind, t.group(kind)))
            pos = t.end()
            while pos < len(self.text) and self.text[pos].isspace():
                pos += 1
        self.i = 0

    def value(self) -> Any:
        v = self._or()
        assert self.i == len(self.tokens), f"trailing tokens in {self.text!r}"
        return v

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _take(self, op: str | None = None) -> tuple[str, str]:
        tok = self.tokens[self.i]
        assert op is None or tok[1] == op, (op, tok, self.text)
        self.i += 1
        return tok

    def _or(self) -> Any:
        left = self._and()
        while self._peek() == ("op", "||"):
            self._take()
            right = self._and()
            left = left if truthy(left) else right
        return left

    def _and(self) -> Any:
        left = self._cmp()
        while self._peek() == ("op", "&&"):
            self._take()
            right = self._cmp()
            left = right if truthy(left) else left
        return left

    def _cmp(self) -> Any:
        left = self._unary()
        tok = self._peek()
        if tok in (("op", "=="), ("op", "!=")):
            self._take()
            right = self._unary()
            same = norm(left) == norm(right)
            return same if tok[1] == "==" else not same
        return left

    def _unary(self) -> Any:
        if self._peek() == ("op", "!"):
            self._take()
            return not truthy(self._unary())
        return self._primary()

    def _primary(self) -> Any:
        kind, text = self._take()
        if text == "(" and kind == "op":
            v = self._or()
            self._take(")")
            return v
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "num":
            return float(text)
        assert kind == "name", (kind, text, self.text)
        if text in ("true", "false"):
            return text == "true"
        if text == "null":
            return None
        if self._peek() == ("op", "("):
            self._take()
            args: list[Any] = []
            while self._peek() != ("op", ")"):
                args.append(self._or())
                if self._peek() == ("op", ","):
                    self._take()
            self._take(")")
            return self._call(text, args)
        value: Any = self.ctx.get(text)
        while self._peek() in (("op", "."), ("op", "[")):
            if self._take()[1] == ".":
                key = self._take()[1]
            else:
                key = str(self._or())
                self._take("]")
            value = value.get(key) if isinstance(value, Mapping) else None
        return value

    def _call(self, name: str, args: list[Any]) -> Any:
        status = self.ctx.get("__status__", "success")
        if name == "format":
            out = str(args[0])
            for n, a in enumerate(args[1:]):
                out = out.replace("{" + str(n) + "}", "" if a is None else str(a))
            return out
        if name == "success":
            return status == "success"
        if name == "always":
            return True
        if name == "cancelled":
            return status == "cancelled"
        if name == "failure":
            return status == "failure"
        if name == "fromJSON":
            return json.loads(str(args[0]))
        raise AssertionError(f"function {name} not modelled")


def truthy(v: Any) -> bool:
    return v not in (None, False, 0, 0.0, "")


def norm(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


def evaluate(text: Any, context: Mapping[str, Any]) -> Any:
    """An ``if:`` (bare or wrapped) or a value; a string with several ``${{ }}`` parts is
    interpolated, as GitHub does for e.g. a concurrency group."""
    if isinstance(text, bool):
        return text
    text = str(text).strip()
    single = text.startswith("${{") and text.endswith("}}") and text.count("${{") == 1
    if "${{" in text and not single:
        return EXPR.sub(lambda m: str(Expr(m.group(1), context).value()), text)
    return Expr(text, context).value()


def event_context(
    event: str, *, enabled: bool = True, fork: bool = False, run_id: str = "1001"
) -> dict[str, Any]:
    repo = "owner/repo"
    ctx: dict[str, Any] = {
        "github": {
            "event_name": event,
            "workflow": "CI",
            "run_id": run_id,
            "repository": repo,
            "ref": "refs/pull/7/merge" if event.startswith("pull_request") else "refs/heads/main",
            "event": {},
        },
        "vars": {"ENABLE_GPU_TESTS": "true" if enabled else ""},
        "needs": {"matrix": {"result": "success", "outputs": {"has_gpu": "true"}}},
    }
    if event.startswith("pull_request"):
        head = "someone/repo" if fork else repo
        ctx["github"]["event"] = {
            "pull_request": {"number": 7, "head": {"repo": {"full_name": head}}}
        }
    return ctx


# =========================================================================== 1. status gates


@dataclass(frozen=True)
class Written:
    session: str  # "self" (the session's own name) or a literal kind such as "build"
    status: str


def _statuses_of(node: ast.expr, assigns: Mapping[str, list[ast.expr]]) -> set[str]:
    """The string values an argument can take (literals, if-expressions, local names)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _statuses_of(node.body, assigns) | _statuses_of(node.orelse, assigns)
    if isinstance(node, ast.Name) and node.id in assigns:
        return set().union(*(_statuses_of(v, assigns) for v in assigns[node.id]))
    raise AssertionError(
        f"harness/sessions.py:{node.lineno}: a write_status status this model cannot read "
        f"({ast.unparse(node)}); write a literal, an if-expression of literals or a local "
        "name assigned from those"
    )


def _session_of(node: ast.expr) -> str:
    if isinstance(node, ast.Name) and node.id == "name":
        return "self"
    if isinstance(node, ast.JoinedStr) and node.values:
        first = node.values[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value.rstrip("-")
    raise AssertionError(
        f"harness/sessions.py:{node.lineno}: write_status for session {ast.unparse(node)} "
        "is neither the session's own `name` nor an f-string like f'build-{...}'"
    )


def derive_session_statuses(source: str) -> dict[str, set[str]]:
    """``{"build": {...}, "test": {...}, "bench": {...}}``: what each session can record,
    from every ``write_status(variant, session, status, ...)`` reachable from
    ``run_<kind>_session`` through module-level calls."""
    tree = ast.parse(source)
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}

    def direct(fn: ast.FunctionDef) -> tuple[list[Written], set[str]]:
        assigns: dict[str, list[ast.expr]] = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        assigns.setdefault(target.id, []).append(node.value)
        written: list[Written] = []
        calls: set[str] = set()
        for node in ast.walk(fn):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id == "write_status":
                    assert len(node.args) >= 3, ast.unparse(node)
                    session = _session_of(node.args[1])
                    for status in _statuses_of(node.args[2], assigns):
                        written.append(Written(session, status))
                elif node.func.id in funcs:
                    calls.add(node.func.id)
        return written, calls

    result: dict[str, set[str]] = {}
    for kind in ("build", "test", "bench"):
        seen: set[str] = set()
        todo = [f"run_{kind}_session"]
        statuses: set[str] = set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            written, calls = direct(funcs[name])
            statuses |= {w.status for w in written if w.session in ("self", kind)}
            todo += sorted(calls)
        result[kind] = statuses
    return result


@pytest.fixture(scope="module")
def writable() -> dict[str, set[str]]:
    found = derive_session_statuses(SESSIONS_PY.read_text(encoding="utf-8"))
    # The model must see the statuses the harness documents, or it has gone blind.
    assert {"built", "build-failed"} <= found["build"], found
    assert {"passed", "failed", "built-no-gpu", "verify-failed", "crashed-native"} <= found[
        "test"
    ], found
    assert found["bench"] >= {"passed", "failed"}, found
    return found


def test_the_status_model_reads_sessions_py(writable: dict[str, set[str]]) -> None:
    """The derivation itself: a status written through a local name or an if-expression,
    and a write under another session's name (f'build-...'), land where they belong."""
    src = """
def run_build_session(session, variant):
    name = "build-x"
    write_status(variant.name, name, "built", "")
def run_test_session(session, variant):
    helper(session, variant, "test-x")
def helper(session, variant, name):
    status = "crashed-native" if crash else "failed"
    write_status(variant.name, name, status, "")
    write_status(variant.name, f"build-{variant.name}", "build-failed", "")
def run_bench_session(session, variant):
    write_status(variant.name, name, "passed", "")
"""
    found = derive_session_statuses(src)
    assert found == {
        "build": {"built"},
        "test": {"crashed-native", "failed"},
        "bench": {"passed"},
    }
    assert "build-failed" not in writable["test"] or "build-failed" in writable["build"]


def composite_steps(action: Path) -> list[Mapping[str, Any]]:
    return list(load_yaml(action)["runs"]["steps"])


def run_check_status(
    inputs: Mapping[str, str], reports: Path, summary: Path
) -> subprocess.CompletedProcess[str]:
    """.github/actions/check-status as written, with these inputs."""
    (step,) = [s for s in composite_steps(ACTIONS / "check-status" / "action.yml") if "run" in s]
    defaults = {
        k: str(v.get("default", ""))
        for k, v in (load_yaml(ACTIONS / "check-status" / "action.yml")["inputs"] or {}).items()
    }
    given = {**defaults, **inputs}

    def sub(text: str) -> str:
        return EXPR.sub(lambda m: given[m.group(1).removeprefix("inputs.")], text)

    env = {k: sub(str(v)) for k, v in (step.get("env") or {}).items()}
    env |= {"LLAMA_HARNESS_REPORTS": str(reports), "GITHUB_STEP_SUMMARY": str(summary)}
    return run_bash(sub(step["run"]), env)


def check_status_uses(outputs: Mapping[str, str]) -> Iterator[tuple[JobRun, dict[str, str]]]:
    for run in job_runs(outputs):
        for step in run.steps():
            if step.get("uses") == "./.github/actions/check-status":
                yield run, {k: sub_matrix(str(v), run.entry) for k, v in step["with"].items()}


def test_every_check_status_use_accepts_what_its_session_writes_on_success(
    outputs: dict[str, str], writable: dict[str, set[str]], tmp_path: Path
) -> None:
    """Each call site, for each status its session can write, run through the gate: the
    session's success passes, every other status fails unless the job allows it, and a job
    allows only statuses the session can write. (The build job's gate used to accept only
    "passed", which a build session never writes: every build job failed.)"""
    from harness import sessions

    uses = list(check_status_uses(outputs))
    assert uses, "no check-status use found: the model or the workflows broke"
    sites = {(u.workflow, u.job_id, w["session"].split("-")[0]) for u, w in uses}
    assert ("ci.yml", "build", "build") in sites and ("ci.yml", "gpu", "test") in sites
    problems: list[str] = []
    # The gate's answer depends on the session's kind and the allowed statuses only: run
    # each distinct call once per status (the first call site stands for the others).
    distinct: dict[tuple[str, str], tuple[JobRun, dict[str, str]]] = {}
    for run, given in uses:
        session, variant = given["session"], given["variant"]
        kind = session.split("-", 1)[0]
        assert session == f"{kind}-{variant}", (run.where, given)
        allow = set(given.get("allow", "").split())
        dead = allow - writable[kind]
        if dead:
            problems.append(f"{run.where}: allows {sorted(dead)}, which {session} never writes")
        distinct.setdefault((kind, " ".join(sorted(allow))), (run, given))
    for n, (run, given) in enumerate(distinct.values()):
        session, variant = given["session"], given["variant"]
        kind = session.split("-", 1)[0]
        allow = set(given.get("allow", "").split())
        for status in sorted(writable[kind]):
            reports = tmp_path / f"r{n}-{status}"
            os.environ["LLAMA_HARNESS_REPORTS"] = str(reports)
            sessions.write_status(variant, session, status, f"{status} (model)")
            proc = run_check_status(given, reports, tmp_path / "summary.md")
            passed = proc.returncode == 0
            should = status in report_mod.OK_STATUSES or status in allow
            if passed != should:
                problems.append(
                    f"{run.where}: {session} wrote {status!r}: gate "
                    f"{'passed' if passed else 'failed'} ({proc.stdout.strip()[:120]}"
                    f"{proc.stderr.strip()[:200]})"
                )
    os.environ.pop("LLAMA_HARNESS_REPORTS", None)
    assert not problems, "\n".join(problems)


def test_no_gpu_is_accepted_only_where_the_runner_cannot_have_the_gpu(
    outputs: dict[str, str],
) -> None:
    """built-no-gpu passes only on the hosted macOS VM (its GPU is the paravirtual one),
    never on the self-hosted GPU runner, whose whole point is the GPU."""
    for run, given in check_status_uses(outputs):
        if "built-no-gpu" in given.get("allow", "").split():
            assert run.job_id == "variant", run.where
            assert run.entry["backend"] == "METAL", run.where
            assert all(label.startswith("macos-") for label in run.runs_on()), run.where
        if "self-hosted" in run.runs_on():
            assert not given.get("allow"), f"{run.where}: the GPU runner allows {given}"


# =========================================================================== 2. runner labels


LABEL_RE = re.compile(r"\b((?:macos|ubuntu|windows)-[0-9a-z][\w.-]*[0-9a-z])\b")


def labels_in_text(text: str) -> set[str]:
    return set(LABEL_RE.findall(text))


def test_no_runner_label_anywhere_is_retired(outputs: dict[str, str]) -> None:
    """One list of retired labels (harness/ship/ci_matrix.py) against every label: the matrix the
    registry yields, every literal runs-on, the workflows' inputs and comments, the docs."""
    found: dict[str, set[str]] = {}
    for group in ("test", "build", "gpu"):
        for entry in json.loads(outputs[group])["include"]:
            labels = entry["runs_on"] if isinstance(entry["runs_on"], list) else [entry["runs_on"]]
            for label in labels:
                found.setdefault(label, set()).add(f"matrix:{group}:{entry['variant']}")
    for run in job_runs(outputs):
        for label in run.runs_on():
            if "${{" not in label:
                found.setdefault(label, set()).add(run.where)
    texts = [
        *WORKFLOW_FILES,
        *sorted(ACTIONS.glob("*/action.yml")),
        PROJECT_ROOT / "harness" / "ship" / "ci_matrix.py",
        PROJECT_ROOT / "README.md",
        PROJECT_ROOT / "docs" / "CI.md",
        PROJECT_ROOT / "docker" / "README.md",
    ]
    for path in texts:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if path.name == "ci_matrix.py":  # the retired list itself names them
            text = text.split("RETIRED_RUNNER_LABELS")[0]
        if path.suffix == ".md":  # a section about the retirements may name them
            text = re.sub(r"(?ms)^## [^\n]*retired[^\n]*\n.*?(?=^## |\Z)", "", text)
        for label in labels_in_text(text):
            found.setdefault(label, set()).add(str(path.relative_to(PROJECT_ROOT)))
    assert "ubuntu-latest" in found and "macos-15" in found, sorted(found)
    retired = {
        label: (sorted(where), RETIRED_RUNNER_LABELS[label])
        for label, where in found.items()
        if label in RETIRED_RUNNER_LABELS
    }
    assert not retired, "retired runner labels in use:\n" + "\n".join(
        f"  {label} (retired {n.retired}, use {n.use}; {n.source}) in {where}"
        for label, (where, n) in sorted(retired.items())
    )


def test_the_label_model_finds_labels(outputs: dict[str, str]) -> None:
    assert labels_in_text("runs-on: macos-14 and `macos-13-xlarge`; ubuntu-24.04-arm.") == {
        "macos-14",
        "macos-13-xlarge",
        "ubuntu-24.04-arm",
    }


# =========================================================================== 3. tools vs images

#: What each image has on PATH before any step (runner images: actions/runner-images
#: "Ubuntu2404-Readme.md", "macos-15-arm64-Readme.md", "Windows2025-Readme.md"; the nvidia/cuda
#: images: the devel flavour adds nvcc to the runtime one, neither has cmake, a C++ compiler
#: or Python).
IMAGE_TOOLS: list[tuple[str, frozenset[str]]] = [
    ("ubuntu-", frozenset({"cmake", "c++", "g++", "gcc", "clang++", "ninja", "git", "python3"})),
    ("macos-", frozenset({"cmake", "c++", "clang++", "xcrun", "ninja", "git", "python3"})),
    ("windows-", frozenset({"cmake", "cl", "git", "python"})),
    ("nvidia/cuda:", frozenset()),
]
DEVEL_TOOLS = frozenset({"nvcc"})
#: Commands (and headers / pkg-config names) a distribution package brings.
PACKAGE_PROVIDES: dict[str, frozenset[str]] = {
    "build-essential": frozenset({"c++", "g++", "gcc", "make"}),
    "cmake": frozenset({"cmake"}),
    "ninja-build": frozenset({"ninja"}),
    "ccache": frozenset({"ccache"}),
    "git": frozenset({"git"}),
    "python3": frozenset({"python3"}),
    "glslc": frozenset({"glslc"}),
    # Ubuntu 24.04's libvulkan-dev is 1.3.275 (packages.ubuntu.com, noble)
    "libvulkan-dev": frozenset(
        {
            "pkg_config:vulkan",
            "/usr/include/vulkan/vulkan.h",
            "/usr/lib/x86_64-linux-gnu/libvulkan.so",
            "vulkan_headers:1.3.275",
        }
    ),
    "spirv-headers": frozenset({"/usr/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake"}),
    "libopenblas-dev": frozenset({"pkg_config:openblas", "/usr/include/x86_64-linux-gnu/cblas.h"}),
    "openblas": frozenset({"pkg_config:openblas", "/opt/homebrew/opt/openblas/include/cblas.h"}),
}


def setup_installs(run: JobRun) -> set[str]:
    """What .github/actions/setup-harness installs in this job, as its steps say."""
    for step in run.steps():
        if step.get("uses") == "./.github/actions/setup-harness":
            given = {k: sub_matrix(str(v), run.entry) for k, v in (step.get("with") or {}).items()}
            break
    else:
        return set()
    build = given.get("build", "true") == "true"
    packages = given.get("packages", "").split()
    action = (ACTIONS / "setup-harness" / "action.yml").read_text(encoding="utf-8")
    out: set[str] = set()
    if given.get("container"):
        m = re.search(r"apt-get install [^\n]*python3-pip \$extra", action)
        assert m, "setup-harness no longer installs python3 in containers the modelled way"
        out |= {"git", "python3", "ca-certificates"}
        if build:
            lists = [x for x in re.findall(r'extra="([^"]*)"', action) if x]
            assert lists, "setup-harness's container build packages moved"
            out |= set(lists[0].replace("$PACKAGES", "").split()) | set(packages)
    elif build:
        out |= {"ccache", *packages}
    tools: set[str] = set()
    for pkg in out:
        tools |= PACKAGE_PROVIDES.get(pkg, frozenset({pkg}))
    return tools


def image_tools(run: JobRun) -> set[str]:
    image = run.container() or run.runs_on()[0]
    if "self-hosted" in run.runs_on() and not run.container():
        return {"python3", "git"}  # a bare self-hosted machine: assume nothing more
    for prefix, tools in IMAGE_TOOLS:
        if image.startswith(prefix):
            return set(tools) | (set(DEVEL_TOOLS) if "-devel-" in image else set())
    raise AssertionError(f"{run.where}: no tool inventory for the image {image!r}")


def satisfied(req: Requirement, have: set[str]) -> bool:
    if req.kind == "command":
        return any(v in have for v in req.value)
    if req.kind == "any_of":
        return any(satisfied(o, have) for o in req.options)
    if req.kind == "pkg_config":
        return f"pkg_config:{req.value[0]}" in have
    if req.kind == "file":
        import fnmatch

        return any(fnmatch.fnmatch(h, v) for v in req.value for h in have)
    if req.kind == "vulkan_headers":

        def version(text: str) -> tuple[int, ...]:
            return tuple(int(x) for x in text.split("."))

        return any(
            version(h.split(":", 1)[1]) >= version(req.value[0])
            for h in have
            if h.startswith("vulkan_headers:")
        )
    raise AssertionError(f"requirement kind {req.kind} not modelled")


#: llama-bench is compiled from the sdist with the variant's flags: the build tools again.
def session_needs(
    variant: Variant, kind: str, args: list[str], env: Mapping[str, str]
) -> list[Requirement]:
    given_wheel = "--wheel" in args
    needs: list[Requirement] = []
    if kind == "build" or (kind in ("test", "bench") and not given_wheel):
        needs += list(variant.build_requires)
    if kind == "bench" and env.get("LLAMA_HARNESS_LLAMA_BENCH", "1") != "0":
        needs += [r for r in variant.build_requires if r not in needs]
    return needs


def nox_calls(script: str) -> list[tuple[str, list[str]]]:
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if words[:2] == ["nox", "-s"] and len(words) > 2:
            rest = words[3:]
            out.append((words[2], rest[rest.index("--") + 1 :] if "--" in rest else []))
    return out


def test_every_job_has_the_tools_its_sessions_need(
    outputs: dict[str, str], variants: dict[str, Variant]
) -> None:
    """The GPU job benchmarked in the CUDA *runtime* image, which has no cmake and no
    compiler, so llama-bench could never be built there: this model catches that kind."""
    problems: list[str] = []
    checked = 0
    for run in job_runs(outputs):
        if run.workflow != "ci.yml":
            continue
        have = image_tools(run) | setup_installs(run)
        env = run.env()
        for step in run.steps():
            script = sub_matrix(str(step.get("run", "")), run.entry)
            for name, args in nox_calls(script):
                name = name.replace("$VARIANT", env.get("VARIANT", "$VARIANT"))
                kind, _, vname = name.partition("-")
                if kind not in ("build", "test", "bench") or vname not in variants:
                    continue
                checked += 1
                for req in session_needs(variants[vname], kind, args, env):
                    if not satisfied(req, have):
                        problems.append(
                            f"{run.where}: `nox -s {name}` needs {req.label()}, which "
                            f"{run.container() or run.runs_on()} lacks (has {sorted(have)})"
                        )
    assert checked >= 4, "the model found too few variant sessions"
    assert not problems, "\n".join(sorted(set(problems)))


# =========================================================================== 4. events


def job_if(workflow: str, job_id: str) -> Any:
    return load_yaml(WORKFLOWS / workflow)["jobs"][job_id].get("if", True)


@pytest.mark.parametrize("event", ["pull_request", "pull_request_target"])
@pytest.mark.parametrize("fork", [False, True])
def test_the_gpu_job_never_runs_for_a_pull_request(event: str, fork: bool) -> None:
    """A pull request (from a fork or not) never reaches the self-hosted GPU runner; the
    notice job says why instead. (The old guard let same-repository pull requests through.)"""
    ctx = event_context(event, fork=fork)
    assert truthy(evaluate(job_if("ci.yml", "gpu"), ctx)) is False
    assert truthy(evaluate(job_if("ci.yml", "gpu-disabled"), ctx)) is True


@pytest.mark.parametrize("event", ["push", "schedule", "workflow_dispatch"])
def test_the_gpu_job_runs_on_push_schedule_and_dispatch_when_enabled(event: str) -> None:
    assert truthy(evaluate(job_if("ci.yml", "gpu"), event_context(event))) is True
    assert truthy(evaluate(job_if("ci.yml", "gpu-disabled"), event_context(event))) is False
    off = event_context(event, enabled=False)
    assert truthy(evaluate(job_if("ci.yml", "gpu"), off)) is False
    assert truthy(evaluate(job_if("ci.yml", "gpu-disabled"), off)) is True


def test_self_hosted_jobs_are_guarded_in_every_pull_request_workflow(
    outputs: dict[str, str],
) -> None:
    for run in job_runs(outputs):
        wf = load_yaml(WORKFLOWS / run.workflow)
        events = set(triggers(wf))
        if "self-hosted" not in run.runs_on() or not events & {
            "pull_request",
            "pull_request_target",
        }:
            continue
        for event in events & {"pull_request", "pull_request_target"}:
            ctx = event_context(event)
            assert not truthy(evaluate(run.job.get("if", True), ctx)), run.where
    assert "pull_request_target" not in triggers(load_yaml(WORKFLOWS / "ci.yml"))


def test_docs_state_the_runner_settings_that_protect_the_gpu_machine() -> None:
    text = (PROJECT_ROOT / "docs" / "CI.md").read_text(encoding="utf-8")
    for needle in (
        "--ephemeral",
        "Require approval for all external contributors",
        "private repositor",
        "push, schedule and manual",
    ):
        assert needle in text, f"docs/CI.md does not say {needle!r}"


def concurrency(event: str, **kw: Any) -> tuple[str, bool]:
    conc = load_yaml(WORKFLOWS / "ci.yml")["concurrency"]
    ctx = event_context(event, **kw)
    return str(evaluate(conc["group"], ctx)), truthy(evaluate(conc["cancel-in-progress"], ctx))


def test_only_pull_request_runs_cancel_each_other() -> None:
    """Pushes to main used to cancel each other (and a long CUDA build before its cache was
    saved). Now: a pull request's new push cancels its older run; pushes, nightly and manual
    runs each get their own group (GitHub also replaces a *pending* run of the same group,
    so sharing one group would still drop runs)."""
    group, cancel = concurrency("pull_request")
    assert cancel is True and "pr-7" in group
    assert concurrency("pull_request")[0] == group  # same PR, same group
    for event in ("push", "schedule", "workflow_dispatch"):
        g1, c1 = concurrency(event, run_id="1")
        g2, _ = concurrency(event, run_id="2")
        assert c1 is False, event
        assert g1 != g2, f"{event}: two runs share the group {g1}"


# =========================================================================== 5. caches


def test_wheel_cache_key_is_the_harness_build_key(tmp_path: Path) -> None:
    """The cache key of the wheel is the harness's own key (sdist, flags, compilers, cmake,
    platform, env), computed by the step as written: a runner image with a new compiler gets
    a new key and saves a new entry instead of restoring a stale wheel forever."""
    from harness.build.build import prepare
    from harness.build.variants import get_variant

    steps = composite_steps(ACTIONS / "setup-harness" / "action.yml")
    (key_step,) = [s for s in steps if s.get("id") == "key"]
    out = tmp_path / "out"
    out.write_text("")
    env = {
        "VARIANT": "cpu",
        "CONTAINER": "",
        "GITHUB_OUTPUT": str(out),
        "RUNNER_OS": "Linux",
        "RUNNER_ARCH": "X64",
        "GITHUB_RUN_ID": "42",
        "GITHUB_RUN_ATTEMPT": "1",
    }
    proc = run_bash(key_step["run"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = dict(line.split("=", 1) for line in out.read_text().splitlines())
    key = prepare(get_variant("cpu")).key
    assert got["key"] == key
    assert got["cache-key"] == f"wheel-cpu-Linux-X64-{key}"
    assert got["ccache-key"].endswith("-42-1") and got["ccache-key"].startswith(
        got["ccache-prefix"]
    )
    (restore,) = [s for s in steps if s.get("id") == "wheel"]
    assert restore["uses"].startswith("actions/cache/restore@")
    assert restore["with"]["key"] == "${{ steps.key.outputs.cache-key }}"
    assert "restore-keys" not in restore["with"], "another key's wheel would be refused anyway"
    assert restore["with"]["path"].endswith("/wheels/${{ steps.key.outputs.key }}")


@pytest.mark.parametrize(
    ("status", "cached", "wheel", "ccache"),
    [
        ("built", False, "true", "true"),
        ("built", True, "false", "false"),
        ("build-failed", None, "false", "true"),
    ],
)
def test_save_caches_saves_only_what_a_build_produced(
    status: str, cached: bool | None, wheel: str, ccache: str, tmp_path: Path
) -> None:
    from harness import sessions

    os.environ["LLAMA_HARNESS_REPORTS"] = str(tmp_path / "reports")
    try:
        details = {} if cached is None else {"cached": cached}
        sessions.write_status("cpu", "build-cpu", status, "model", **details)
    finally:
        os.environ.pop("LLAMA_HARNESS_REPORTS", None)
    steps = composite_steps(ACTIONS / "save-caches" / "action.yml")
    (probe,) = [s for s in steps if s.get("id") == "built"]
    out = tmp_path / "out"
    out.write_text("")
    env = {
        "VARIANT": "cpu",
        "GITHUB_OUTPUT": str(out),
        "LLAMA_HARNESS_REPORTS": str(tmp_path / "reports"),
    }
    proc = run_bash(probe["run"], env)
    assert proc.returncode == 0, proc.stderr
    got = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert got == {"wheel": wheel, "ccache": ccache}
    saves = [s for s in steps if str(s.get("uses", "")).startswith("actions/cache/save@")]
    assert {s["if"] for s in saves} == {
        "steps.built.outputs.wheel == 'true'",
        "steps.built.outputs.ccache == 'true'",
    }


def _step_index(steps: list[Mapping[str, Any]], pred: Any) -> int:
    return next(i for i, s in enumerate(steps) if pred(s))


def test_caches_are_saved_right_after_the_build_whatever_follows(outputs: dict[str, str]) -> None:
    """actions/cache saves in its post step only when the whole job succeeded; a failing
    test then threw the compile away. Every job that builds saves right after the build."""
    for run in job_runs(outputs):
        steps = run.steps()
        builds = [
            i
            for i, s in enumerate(steps)
            if any(n.startswith(("build-", "$VARIANT")) and "build" in str(s.get("run", ""))
                   for n, _ in nox_calls(str(s.get("run", ""))))
        ]  # fmt: skip
        if not builds or run.workflow != "ci.yml":
            continue
        save = _step_index(steps, lambda s: s.get("uses") == "./.github/actions/save-caches")
        assert save > builds[0], run.where
        assert "!cancelled()" in str(steps[save].get("if")), run.where
        tests = [
            i for i, s in enumerate(steps) for n, _ in nox_calls(str(s.get("run", "")))
            if n.startswith(("test-", "bench-")) or n in ('test-"$VARIANT"',)
        ]  # fmt: skip
        assert all(save < i for i in tests), run.where


def test_a_hosted_variant_builds_once_and_tests_and_benches_in_the_same_job(
    outputs: dict[str, str],
) -> None:
    """One job per hosted variant: build, test and bench on the same VM and wheel (the old
    separate bench job restored a cache that was never refreshed)."""
    ci = load_yaml(WORKFLOWS / "ci.yml")
    jobs_by_session: dict[str, set[str]] = {}
    for job_id, job in ci["jobs"].items():
        for step in job.get("steps") or []:
            for name, _ in nox_calls(str(step.get("run", ""))):
                jobs_by_session.setdefault(name, set()).add(job_id)
    hosted = {'build-"$VARIANT"', 'test-"$VARIANT"', 'bench-"$VARIANT"'}
    hosted_jobs = {j for s in hosted for j in jobs_by_session.get(s.replace('"', ""), set())}
    assert "variant" in hosted_jobs
    variant_job = ci["jobs"]["variant"]
    runs = [str(s.get("run", "")) for s in variant_job["steps"]]
    order = [
        next(i for i, r in enumerate(runs) if f'nox -s "{k}-$VARIANT"' in r)
        for k in ("build", "test", "bench")
    ]
    assert order == sorted(order)
    assert variant_job["strategy"]["matrix"] == "${{ fromJSON(needs.matrix.outputs.test) }}"
    assert "bench" not in ci["jobs"], "a separate bench job would build or restore again"


def test_the_tests_job_has_the_cpu_wheel_before_nox_tests() -> None:
    """The doctor, verify and exercise tests need the cpu wheel in the harness cache (the
    noxfile's tests session installs it when there); the tests job used to have none, so they
    skipped on GitHub."""
    job = load_yaml(WORKFLOWS / "ci.yml")["jobs"]["tests"]
    steps = job["steps"]
    setup = _step_index(steps, lambda s: s.get("uses") == "./.github/actions/setup-harness")
    assert steps[setup]["with"]["variant"] == "cpu"
    assert steps[setup]["with"].get("build", "true") == "true"
    build = _step_index(
        steps,
        lambda s: (
            ("build-cpu", []) in nox_calls(str(s.get("run", "")).replace("$VARIANT", "cpu"))
            or ('build-"cpu"', []) in nox_calls(str(s.get("run", "")))
        ),
    )
    tests = _step_index(steps, lambda s: ("tests", []) in nox_calls(str(s.get("run", ""))))
    assert setup < build < tests
    noxfile = (PROJECT_ROOT / "noxfile.py").read_text(encoding="utf-8")
    assert 'sessions.cached_wheel("cpu")' in noxfile


# =========================================================================== 6. nightly


def _bench_json(tg: float) -> dict[str, Any]:
    extra = {"variant": "cpu", "model": "tiny", "n_threads": 2}
    metrics = {"tg128": {"value": tg, "stddev": 0.01, "unit": "t/s", "samples": [tg] * 5}}
    return {
        "machine_info": {"node": "runner", "cpu": {"brand_raw": "x"}},
        "benchmarks": [{"name": "t", "extra_info": {**extra, "metrics": metrics}, "stats": {}}],
    }


def test_the_nightly_run_compares_with_the_previous_night_and_keeps_history(
    tmp_path: Path,
) -> None:
    """The report job's nightly steps, run here as written on two nights: the second night
    compares with the first night's report.json (a 30% slower tg128 fails the step) and the
    history grows to two runs with a step-summary table."""
    ci = load_yaml(WORKFLOWS / "ci.yml")
    assert "schedule" in triggers(ci) and triggers(ci)["schedule"][0]["cron"]
    steps = ci["jobs"]["report"]["steps"]
    merge = next(s for s in steps if "nox -s report" in str(s.get("run", "")))
    history = next(s for s in steps if "llama-harness history" in str(s.get("run", "")))
    keep = next(s for s in steps if s.get("with", {}).get("name") == "nightly")
    assert "schedule" in history["if"] and "schedule" in keep["if"]
    assert "history.jsonl" in keep["with"]["path"] and "report.json" in keep["with"]["path"]

    def night(n: int, tg: float) -> subprocess.CompletedProcess[str]:
        work = tmp_path / f"night{n}"
        (work / "reports" / "cpu").mkdir(parents=True)
        (work / "reports" / "cpu" / "bench.json").write_text(json.dumps(_bench_json(tg)))
        env = {
            "RUNNER_TEMP": str(tmp_path / "temp"),
            "LLAMA_HARNESS_REPORTS": str(work / "reports"),
            "GITHUB_STEP_SUMMARY": str(tmp_path / f"summary{n}.md"),
            "GITHUB_SHA": f"{n}" * 40,
            "GITHUB_RUN_ID": str(100 + n),
            "MPLBACKEND": "Agg",
        }
        script = merge["run"].replace("reports", str(work / "reports"))
        proc = run_bash(script, env)
        hist = run_bash(history["run"].replace("reports/report", str(work / "reports/report")), env)
        assert hist.returncode == 0, hist.stdout + hist.stderr
        # what the next night downloads
        previous = tmp_path / "temp" / "previous"
        previous.mkdir(parents=True, exist_ok=True)
        for name in ("report.json", "history.jsonl"):
            (previous / name).write_bytes((work / "reports" / "report" / name).read_bytes())
        return proc

    first = night(1, 100.0)
    assert first.returncode == 0, first.stdout + first.stderr
    second = night(2, 70.0)
    assert second.returncode == 1, "a 30% slower tg128 must fail the nightly comparison"
    summary = (tmp_path / "summary2.md").read_text()
    assert "REGRESSION" in summary
    assert "Benchmark history (last 2 nightly runs)" in summary
    assert "cpu/tiny/tg128" in summary and "-30.0% (worse)" in summary
    lines = (tmp_path / "night2" / "reports" / "report" / "history.jsonl").read_text()
    assert len(lines.splitlines()) == 2
