"""``llama-harness history REPORT_JSON``: add a run to the benchmark history, show the table."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "history",
        help="append a report.json to a benchmark history (JSON lines) and print its table",
        description=(
            "Read REPORT_JSON (written by `llama-harness report`), add one line with its "
            "comparable figures to the history read from --previous, write the result to --out "
            "(the last 90 runs) and print a Markdown table of the last --last runs, one column "
            "per run. The table is also appended to $GITHUB_STEP_SUMMARY when set. The nightly "
            "CI run keeps the history in its `nightly` artifact (docs/CI.md)."
        ),
    )
    p.add_argument("report_json", type=Path, metavar="REPORT_JSON", help="this run's report.json")
    p.add_argument(
        "--previous", type=Path, default=None, help="the history so far (missing: a new history)"
    )
    p.add_argument("--out", type=Path, required=True, help="where to write the new history")
    p.add_argument("--commit", default="", help="the commit measured (e.g. $GITHUB_SHA)")
    p.add_argument("--run", default="", help="the CI run id (e.g. $GITHUB_RUN_ID)")
    p.add_argument("--last", type=int, default=10, help="runs shown in the table (default: 10)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.bench import history
    from harness.bench.report import ReportError
    from saiverse_llm.atomic import atomic_write_text

    if args.last < 1:
        print(f"error: --last must be >= 1, got {args.last}", file=sys.stderr)
        return 2
    if not args.report_json.is_file():
        print(
            f"error: {args.report_json}: no such file; fix: run `llama-harness report` first",
            file=sys.stderr,
        )
        return 2
    try:
        lines = history.append(
            history.read(args.previous),
            history.entry(args.report_json, commit=args.commit, run=args.run),
        )
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, history.to_text(lines))
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc}; fix: check the folder", file=sys.stderr)
        return 1
    table = history.render_markdown(lines, last=args.last)
    print(table)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(table + "\n")
    return 0
