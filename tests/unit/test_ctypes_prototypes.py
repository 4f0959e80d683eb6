"""One home for each ctypes prototype of our own: ``llama_get_logits_ith`` returning a plain
address is declared in ``saiverse_llm.sampling.logits_function`` and nowhere else (the
benchmarks' Python floor had a copy)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWN = {"llama_get_logits_ith": ROOT / "saiverse_llm" / "sampling.py"}


def declared(tree: ast.AST) -> set[str]:
    """C functions a module looks up by name for a prototype of its own: the
    ``prototype(("name", lib))`` form of ctypes."""
    return {
        node.elts[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Tuple)
        and len(node.elts) == 2
        and isinstance(node.elts[0], ast.Constant)
        and node.elts[0].value in OWN
    }


def test_each_own_prototype_is_declared_once() -> None:
    where = {
        (name, p.relative_to(ROOT).as_posix())
        for folder in ("saiverse_llm", "harness", "benchmarks", "tests")
        for p in sorted((ROOT / folder).rglob("*.py"))
        for name in declared(ast.parse(p.read_text(encoding="utf-8")))
    }
    assert where == {(n, p.relative_to(ROOT).as_posix()) for n, p in OWN.items()}
