"""The benchmark history of the nightly CI run: one JSON line per run, and its table.

The scheduled (nightly) run of ``.github/workflows/ci.yml`` downloads the previous night's
``nightly`` artifact (``report.json`` + ``history.jsonl``), compares this run's report with
that ``report.json`` (``llama-harness report --compare``), then runs ``llama-harness history``:
:func:`entry` turns this run's ``report.json`` into one line, :func:`append` adds it to the
previous history (keeping the last :data:`KEEP` runs), and :func:`render_markdown` writes the
table of the last runs that goes into the step summary. The new ``history.jsonl`` travels in
the next ``nightly`` artifact.

A line: ``{"generated_at", "commit", "run", "runner", "figures": {"variant/model/metric":
value}}`` with the comparable figures only (throughput, latency; not ratios).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.bench.report import ReportError, load_baseline, metric_spec, runner_text

KEEP = 90  # runs kept in history.jsonl (about three months of nights)
SHOW = 10  # runs shown in the table


def entry(report_json: Path, *, commit: str = "", run: str = "") -> dict[str, Any]:
    """One history line from a ``report.json`` written by ``llama-harness report``."""
    rs = load_baseline(report_json)
    try:
        doc = json.loads(report_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # load_baseline read it already; a race at most
        raise ReportError(f"{report_json}: unreadable ({exc})") from exc
    machine = doc.get("machine") if isinstance(doc.get("machine"), dict) else {}
    figures = {
        f"{m.variant}/{m.model}/{m.metric}": m.value
        for m in rs.measurements
        if metric_spec(m.metric).comparable and math.isfinite(m.value)
    }
    return {
        "generated_at": str(doc.get("generated_at", "")),
        "commit": commit,
        "run": run,
        "runner": machine.get("runner"),
        "figures": dict(sorted(figures.items())),
    }


def read(path: Path | None) -> list[dict[str, Any]]:
    """The lines of a history file; a missing file is an empty history, a bad line an error."""
    if path is None or not path.is_file():
        return []
    out: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReportError(
                f"{path}:{number}: not JSON ({exc.msg}); fix: delete that line or the file "
                "(the history starts again)"
            ) from exc
        if not isinstance(item, dict) or not isinstance(item.get("figures"), dict):
            raise ReportError(f"{path}:{number}: field 'figures' missing; fix: delete the line")
        out.append(item)
    return out


def append(history: Sequence[Mapping[str, Any]], new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``history`` plus ``new``, the last :data:`KEEP` lines."""
    return [dict(h) for h in [*history, new]][-KEEP:]


def to_text(history: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(h, sort_keys=True) + "\n" for h in history)


def _cell(value: object, unit: str) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "—"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:,.3g}" if value < 1000 else f"{value:,.0f}"


def render_markdown(history: Sequence[Mapping[str, Any]], *, last: int = SHOW) -> str:
    """The last runs side by side: one row per figure, one column per run (oldest first)."""
    runs = list(history)[-last:]
    lines = [f"## Benchmark history (last {len(runs)} nightly runs)", ""]
    if not runs:
        return "\n".join([*lines, "No history yet.", ""])
    runners = {runner_text(r.get("runner")) for r in runs} - {""}
    if runners:
        lines += [f"Measured on: {'; '.join(sorted(runners))}.", ""]
    heads = [
        f"{str(r.get('generated_at', ''))[:10]} {str(r.get('commit', ''))[:7]}".strip()
        for r in runs
    ]
    lines.append("| figure | " + " | ".join(heads) + " | change vs previous |")
    lines.append("| --- |" + " --- |" * (len(runs) + 1))
    names = sorted({k for r in runs for k in r["figures"]})
    for name in names:
        spec = metric_spec(name.rsplit("/", 1)[-1])
        values = [r["figures"].get(name) for r in runs]
        change = "—"
        have = [v for v in values if isinstance(v, int | float)]
        if len(have) >= 2 and have[-2] and isinstance(values[-1], int | float):
            pct = (have[-1] - have[-2]) / abs(have[-2]) * 100
            better = pct > 0 if spec.higher_is_better else pct < 0
            change = f"{pct:+.1f}% ({'better' if better else 'worse'})" if pct else "0%"
        cells = " | ".join(_cell(v, spec.unit) for v in values)
        unit = f" ({spec.unit})" if spec.unit not in ("", "s") else ""
        lines.append(f"| {name}{unit} | {cells} | {change} |")
    lines.append("")
    return "\n".join(lines)
