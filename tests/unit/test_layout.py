"""The project's layout: what a reader (and pytest) takes a module for is what it is."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_product_module_is_named_like_a_test() -> None:
    """``test_*.py`` is a test to readers and tools; product code gets the name of what it
    does (harness/test_models.py became harness/models/model_manifest.py)."""
    named = [
        p.relative_to(ROOT).as_posix()
        for folder in ("saiverse_llm", "harness")
        for p in (ROOT / folder).rglob("*.py")
        if p.name.startswith("test_")
    ]
    assert not named, f"product modules named like tests: {named}"


def test_every_cache_folder_is_named_in_paths() -> None:
    """One cache layout: a module asks harness.paths for a folder (``paths.venvs_dir()``),
    never builds one from the cache root itself."""
    offenders = [
        f"{p.relative_to(ROOT).as_posix()}:{n}"
        for folder in ("saiverse_llm", "harness", "benchmarks")
        for p in sorted((ROOT / folder).rglob("*.py"))
        if p != ROOT / "harness" / "paths.py"
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if "cache_root() /" in line
    ]
    assert not offenders, f"cache folders outside harness/paths.py: {offenders}"


def test_harness_is_grouped_by_stage() -> None:
    """The folder names show the flow: harness/ holds the stage packages, the flow
    (sessions.py), the cache layout (paths.py) and the thin CLI, nothing else."""
    top = {
        p.name for p in (ROOT / "harness").iterdir() if not p.name.startswith((".", "__pycache__"))
    }
    stages = {"build", "models", "bench", "doctor", "ship"}
    assert top == stages | {
        "__init__.py",
        "py.typed",
        "paths.py",
        "sessions.py",
        "cli.py",
        "commands",
    }
    for stage in stages:
        assert (ROOT / "harness" / stage / "__init__.py").is_file(), stage
