"""Nox sessions: lint, unit tests, and (generated from the variant registry)
build-/test-/bench-<variant> for every llama-cpp-python build variant.

    nox -l                      every session; '*' marks what plain `nox` runs here
    nox                         lint, tests, build/test/bench of each default variant that
                                can run on this machine, then the report
    nox -s test-cpu             build (or reuse) the cpu wheel, install it in its own venv,
                                verify it, exercise it, run tests/client
    nox -t gpu                  every session of the GPU variants
    nox -s test-cuda -- --wheel PATH   test a wheel built elsewhere
    nox -s test-cuda -- --container    run the session in a container (harness.ship.container)
    nox -s build-cuda -- --wheel-out DIR --force

Sessions of a variant whose build tools are missing here are skipped with the reason. A GPU
variant on a machine without its GPU builds, verifies the compiled backend and then stops
with session.skip("<variant>: built OK, no GPU to run on (...)"): nox shows it as skipped
with that reason (not as a pass) and reports/<variant>/status.json records "built-no-gpu".
The registry lives in harness/build/variants.yaml (plus $LLAMA_HARNESS_VARIANTS).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

try:
    from harness import sessions
    from harness.build.variants import Variant
except ImportError as exc:  # pragma: no cover - depends on how nox was installed
    raise SystemExit(
        f"noxfile.py: cannot import the harness ({exc}); nox's own environment needs pyyaml "
        "and rich: `pip install nox pyyaml rich` (or `pipx inject nox pyyaml rich`)"
    ) from exc

try:
    _VARIANTS = sessions.variants()
except ValueError as exc:  # harness.build.variants.VariantError: names file, variant, field, fix
    raise SystemExit(f"noxfile.py: the variant registry is invalid: {exc}") from exc

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = sessions.default_sessions()

PYTHON = "3.11"


@nox.session(python=PYTHON, tags=["lint"])
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) and mypy (strict) over the project."""
    sessions.install(session, "-e", ".[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    sessions.run(session, "mypy")


@nox.session(python=PYTHON, tags=["tests"])
def tests(session: nox.Session) -> None:
    """Unit and harness tests. They need no llama-cpp-python build; when the cpu wheel is
    already in the wheel cache (run `build-cpu` or `test-cpu` first: CI's `tests` job runs
    `nox -s build-cpu` before it, README's test command `test-cpu`) it is installed too, so
    the doctor, verify and exercise tests run against a real build instead of skipping."""
    sessions.install(session, "-e", ".[test]")
    cpu_wheel = sessions.cached_wheel("cpu")
    if cpu_wheel is not None:
        sessions.install(session, str(cpu_wheel))
    sessions.run(session, "pytest", "tests/unit", "tests/harness", *session.posargs)


def _register(variant: Variant) -> None:
    """build-<v> (in nox's own interpreter: it only drives pip wheel), test-<v> and
    bench-<v> (each in its own venv holding exactly that variant's wheel)."""
    tags = variant.tag_list()
    about = variant.description or variant.backend

    def build(session: nox.Session) -> None:
        sessions.run_build_session(session, variant)

    def test(session: nox.Session) -> None:
        sessions.run_test_session(session, variant)

    def bench(session: nox.Session) -> None:
        sessions.run_bench_session(session, variant)

    build.__doc__ = f"Build (or reuse) the {variant.name} wheel: {about}."
    test.__doc__ = f"Verify + exercise + client suite on the {variant.name} build."
    bench.__doc__ = f"pytest-benchmark on the {variant.name} build -> reports/{variant.name}/."
    nox.session(name=f"build-{variant.name}", venv_backend="none", tags=[*tags, "build"])(build)
    nox.session(name=f"test-{variant.name}", python=None, tags=[*tags, "test"])(test)
    nox.session(name=f"bench-{variant.name}", python=None, tags=[*tags, "bench"])(bench)


for _variant in _VARIANTS.values():
    _register(_variant)


@nox.session(venv_backend="none", tags=["report"])
def report(session: nox.Session) -> None:
    """Merge reports/<variant>/bench.json + status.json into the comparison report."""
    sessions.run(session, sys.executable, "-m", "harness.cli", "report", *session.posargs)
