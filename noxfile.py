"""Nox sessions: lint, unit tests, and (generated from the variant registry)
build-/test-/bench-<variant> for every llama-cpp-python build variant."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

PYTHON = "3.11"


@nox.session(python=PYTHON, tags=["lint"])
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) and mypy (strict) over the project."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(python=PYTHON, tags=["tests"])
def tests(session: nox.Session) -> None:
    """Unit and harness tests that need no llama-cpp-python build."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/unit", "tests/harness", *session.posargs)
