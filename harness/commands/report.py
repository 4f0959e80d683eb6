"""``llama-harness report``: merge every variant's benchmark results into one report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness import paths
from saiverse_llm.cli_errors import float_arg
from saiverse_llm.tables import message_console


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "report",
        help="merge <reports>/<variant>/bench.json into Markdown, PNG charts and JSON",
        description=(
            "Merge the pytest-benchmark JSON (bench.json), llama-bench JSON and status.json of "
            "every variant under the reports folder into report.md (variants x metrics, ratio to "
            "cpu, spread), charts/*.png and report.json (full provenance). Appends the Markdown "
            "to $GITHUB_STEP_SUMMARY when set. With --compare, exits 1 when a figure is worse "
            "than the baseline by more than --threshold percent."
        ),
    )
    p.add_argument(
        "--reports",
        type=Path,
        default=None,
        help="folder holding <variant>/bench.json (default: $LLAMA_HARNESS_REPORTS or ./reports)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="where to write report.md, report.json and charts/ (default: <reports>/report)",
    )
    p.add_argument(
        "--compare",
        metavar="BASELINE",
        type=Path,
        default=None,
        help="a previous report.json, a pytest-benchmark JSON file or a reports folder",
    )
    p.add_argument(
        "--threshold",
        metavar="PCT",
        type=float_arg(0.0, 1000.0),
        default=5.0,
        help="regression threshold in percent for --compare (default: 5)",
    )
    p.add_argument(
        "--sigmas",
        type=float_arg(0.0, 100.0),
        default=2.0,
        help="with --compare, a change must also exceed this many combined stddevs of the two "
        "runs to count (default: 2; 0 = threshold only)",
    )
    p.add_argument(
        "--baseline",
        metavar="VARIANT",
        default="cpu",
        help="the variant the (xN) ratios are taken against (default: cpu)",
    )
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markdown import Markdown
    from rich.text import Text

    from harness.bench.report import write_report
    from saiverse_llm.tables import is_terminal

    console = message_console(err=True)
    reports: Path = args.reports or paths.reports_dir()
    out: Path = args.output or reports / "report"
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    with console.status(Text(f"collecting results from {reports}")):  # a str is markup
        result = write_report(
            reports,
            out,
            baseline=args.compare,
            threshold_pct=args.threshold,
            charts=not args.no_charts,
            step_summary=Path(summary) if summary else None,
            baseline_variant=args.baseline,
            min_sigmas=args.sigmas,
        )
    if is_terminal(sys.stdout):
        Console().print(Markdown(result.text))
    else:  # CI logs, files: the Markdown itself, full width (rich would cut it to 80 columns)
        sys.stdout.write(result.text + "\n")
    console.print(f"wrote {result.markdown}, {result.json}")
    for c in result.charts:
        console.print(f"chart {c}")
    if result.failed:
        assert result.regressions is not None
        bad = [r for r in result.regressions if r.regressed]
        console.print(
            Text(
                f"{len(bad)} regression(s) beyond {args.threshold:g}% against {args.compare}",
                style="red",
            )
        )
        return 1
    return 0
