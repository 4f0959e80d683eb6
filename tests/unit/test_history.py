"""harness/bench/history.py and the runner marks of harness/bench/report.py (hosted-runner
figures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.bench import history, report


def bench(tg: float, runner: dict[str, str] | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {"variant": "cpu", "model": "tiny", "n_threads": 2}
    if runner is not None:
        extra["runner"] = runner
    metrics = {
        "tg128": {"value": tg, "stddev": 0.5, "unit": "t/s", "samples": [tg] * 3},
        "ttft": {"value": 0.004, "stddev": 0.0001, "unit": "s", "higher_is_better": False},
    }
    return {"benchmarks": [{"name": "t", "extra_info": {**extra, "metrics": metrics}}]}


HOSTED = {
    "GITHUB_ACTIONS": "true",
    "RUNNER_ENVIRONMENT": "github-hosted",
    "RUNNER_NAME": "GitHub Actions 12",
    "RUNNER_OS": "Linux",
    "RUNNER_ARCH": "X64",
    "ImageOS": "ubuntu24",
    "ImageVersion": "20261110.1",
}


def test_runner_info_outside_and_inside_ci() -> None:
    assert report.runner_info({}) is None
    info = report.runner_info(HOSTED)
    assert info is not None and info["environment"] == "github-hosted"
    assert report.runner_text(info) == "GitHub-hosted runner (ubuntu24 20261110.1)"
    act = report.runner_info({"GITHUB_ACTIONS": "true", "ACT": "true"})
    assert act is not None and report.runner_text(act) == "act runner"


def test_hosted_runner_figures_are_marked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    (tmp_path / "cpu").mkdir()
    info = report.runner_info(HOSTED)
    (tmp_path / "cpu" / "bench.json").write_text(json.dumps(bench(100.0, info)))
    out = report.write_report(tmp_path, tmp_path / "report", charts=False)
    assert "GitHub-hosted runner (ubuntu24 20261110.1)" in out.text
    assert "cpu: measured on GitHub-hosted runners" in out.text


def test_history_entry_append_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    lines: list[dict[str, Any]] = []
    for night, tg in enumerate((100.0, 90.0), 1):
        reports = tmp_path / f"n{night}"
        (reports / "cpu").mkdir(parents=True)
        (reports / "cpu" / "bench.json").write_text(json.dumps(bench(tg)))
        out = report.write_report(reports, reports / "report", charts=False)
        lines = history.append(lines, history.entry(out.json, commit=f"{night}" * 40, run="7"))
    assert [x["figures"]["cpu/tiny/tg128"] for x in lines] == [100.0, 90.0]
    table = history.render_markdown(lines)
    assert "Benchmark history (last 2 nightly runs)" in table
    assert "| cpu/tiny/tg128 (t/s) | 100 | 90 | -10.0% (worse) |" in table
    assert "| cpu/tiny/ttft | 4.0 ms | 4.0 ms | 0% |" in table
    path = tmp_path / "h.jsonl"
    path.write_text(history.to_text(lines))
    assert history.read(path) == lines
    assert len(history.append(lines * 60, lines[0])) == history.KEEP


def test_a_damaged_history_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text('{"figures": {}}\nnot json\n')
    with pytest.raises(report.ReportError, match=r"h.jsonl:2: not JSON"):
        history.read(path)
    assert history.read(tmp_path / "missing.jsonl") == []
