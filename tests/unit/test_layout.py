"""The project's layout: what a reader (and pytest) takes a module for is what it is."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_product_module_is_named_like_a_test() -> None:
    """``test_*.py`` is a test to readers and tools; product code gets the name of what it
    does (harness/test_models.py became harness/model_manifest.py)."""
    named = [
        p.relative_to(ROOT).as_posix()
        for folder in ("saiverse_llm", "harness")
        for p in (ROOT / folder).rglob("*.py")
        if p.name.startswith("test_")
    ]
    assert not named, f"product modules named like tests: {named}"
