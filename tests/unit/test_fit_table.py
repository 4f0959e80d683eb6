"""The README's fit table is what `llama-harness fit-table` generates from saiverse-llm fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.bench import fit_table
from harness.cli import main
from harness.models import seed_models
from harness.paths import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"


@pytest.fixture(scope="module")
def table() -> str:
    return fit_table.render(seed_models.ensure_all(fit_table.seed_dir()))


def test_readme_table_is_fits_output(table: str) -> None:
    readme = README.read_text(encoding="utf-8")
    assert fit_table.section(readme) == table, (
        "README.md's fit table is out of date: run `llama-harness fit-table --write`"
    )
    assert len(table.splitlines()) == 2 + len(seed_models.SEED_MODELS)
    header = table.splitlines()[0]
    assert all(f"| {gib} GiB |" in header + "|" for gib in fit_table.VRAM_GIB)


def test_check_fails_on_a_stale_table(table: str, tmp_path: Path) -> None:
    readme = README.read_text(encoding="utf-8")
    stale = tmp_path / "README.md"
    stale.write_text(readme.replace("✓ all layers", "✓", 1), encoding="utf-8")
    assert main(["fit-table", "--check", "--readme", str(stale)]) == 1
    assert main(["fit-table", "--write", "--readme", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == readme
    assert main(["fit-table", "--check", "--readme", str(stale)]) == 0


def test_missing_markers_are_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "README.md"
    bare.write_text("# no table here\n", encoding="utf-8")
    assert main(["fit-table", "--write", "--readme", str(bare)]) == 1
    assert "has no generated fit table" in capsys.readouterr().err
    with pytest.raises(fit_table.FitTableError, match="llama-harness fit-table --write"):
        fit_table.replace_section("# nothing\n", "| x |\n")


def test_cells() -> None:
    # The row of the 8 GiB column for Llama 3 8B Q8 says what to change, concretely.
    files = seed_models.ensure_all(fit_table.seed_dir())
    rows = {r[0]: r for r in fit_table.rows(files)}
    llama_q8 = rows["Llama 3 8B Q8"]
    assert llama_q8[3] == "Q8_0, ctx 8192"
    assert llama_q8[8] == "24/33 layers; Q5_K_M fits"
    assert llama_q8[9] == "✓ all layers"
