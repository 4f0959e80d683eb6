"""Tables off a terminal: full width, plain, never cut at 80 columns ("ll…", "pp5…")."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.table import Table
from rich.text import Text

from harness.cli import main as harness_main
from saiverse_llm.tables import print_table

LONG_PATH = "/home/someone/.cache/llama-harness/models/a/very/deep/folder/Meta-Llama-3-8B-Instruct.Q4_K_M.gguf"  # noqa: E501


def test_plain_table_keeps_every_cell_whole() -> None:
    t = Table(title="models")
    for col in ("key", "model_path (resolved)", "file", "llama-bench pp512 t/s"):
        t.add_column(col)
    t.add_row("llama-3-8b-instruct-q4", LONG_PATH, Text("✗", style="red"), "27,702 ±7.6%")
    out = io.StringIO()
    print_table(t, stream=out)
    text = out.getvalue()
    assert "…" not in text and "\x1b[" not in text  # nothing cut, no colour codes
    lines = text.splitlines()
    assert lines[0] == "models"
    row = next(ln for ln in lines if "llama-3-8b-instruct-q4" in ln)
    assert LONG_PATH in row and "27,702 ±7.6%" in row and len(row) > 80
    assert lines[1].startswith("| key") and "llama-bench pp512 t/s" in lines[1]


def test_variants_table_in_a_log_is_full_width(capsys: pytest.CaptureFixture[str]) -> None:
    assert harness_main(["variants"]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("| cpu-openblas"))
    assert "-DGGML_BLAS=ON -DGGML_BLAS_VENDOR=OpenBLAS -DGGML_NATIVE=OFF" in row
    assert "…" not in out


def test_report_in_a_log_is_the_markdown_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """rich's Markdown renderer cut the 14-column tables to 80 columns and turned the
    charts into emoji placeholders; a log gets the Markdown text."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    d = tmp_path / "reports" / "cpu"
    d.mkdir(parents=True)
    common = {"variant": "cpu", "model": "gemma-3-270m", "n_threads": 2, "build_key": "k"}
    benches = [
        {
            "name": f"test_{m}[gemma-3-270m]",
            "extra_info": {**common, "metrics": {m: {"value": v, "stddev": 1.0, "unit": "t/s",
                                                     "higher_is_better": True, "rounds": 5}}},
            "stats": {"mean": 1.0, "stddev": 0.0, "rounds": 5},
        }
        for m, v in (("pp512", 354.0), ("tg128", 43.2))
    ]  # fmt: skip
    (d / "bench.json").write_text(json.dumps({"benchmarks": benches}))
    out_dir = tmp_path / "out"
    assert harness_main(["report", "--reports", str(d.parent), "-o", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (out_dir / "report.md").read_text().strip()
    assert "| variant | pp512 t/s | tg128 t/s |" in out
    assert "![throughput](charts/throughput.png)" in out and "🌆" not in out


def test_messages_in_a_log_are_not_wrapped_at_80_columns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from saiverse_llm.tables import message_console

    message_console(err=True).print(
        f"llama-bench: {LONG_PATH}/tools/bin/llama-bench (key 921936e3)"
    )
    err = capsys.readouterr().err
    assert err == f"llama-bench: {LONG_PATH}/tools/bin/llama-bench (key 921936e3)\n"


NAMES = ("x[/]y", "[bold]B[/bold]", "[red]r", "/m/a[/]b.gguf")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream", [io.StringIO, _Terminal])
def test_names_are_never_read_as_rich_markup(stream: type[io.StringIO]) -> None:
    """A name a user chose ([/] made rich raise MarkupError; [bold] restyled the cell)."""
    from saiverse_llm.progress import StepProgress
    from saiverse_llm.tables import message_console

    t = Table(title=f"check {NAMES[0]}")
    t.add_column("key")
    t.add_column("path")
    for name in NAMES:
        t.add_row(name, f"/models/{name}")
    out = stream()
    print_table(t, stream=out)
    message_console(file=out, width=200).print(f"loading {NAMES[1]} {NAMES[0]}")
    with StepProgress(f"download {NAMES[0]}", stream=out, bar=stream is _Terminal) as bar:
        bar.update(1, 2, phase=NAMES[1])
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    for name in NAMES:
        assert name in text and f"/models/{name}" in text
    assert f"check {NAMES[0]}" in text and f"loading {NAMES[1]} {NAMES[0]}" in text
    assert f"download {NAMES[0]}: {NAMES[1]}" in text
