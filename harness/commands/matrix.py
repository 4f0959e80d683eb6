"""``llama-harness matrix``: the GitHub Actions matrix computed from the variant registry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness.ship.ci_matrix import CIMatrix, compute_matrix, format_github_outputs, retired
from saiverse_llm.user_errors import UsageError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "matrix",
        help="print the CI matrix computed from the variant registry",
        description=(
            "Print the GitHub Actions matrix of the variant registry (harness/build/variants.yaml "
            "plus the user file): which variants build and test on hosted runners, which "
            "compile there and test on the self-hosted `gpu` runner. ci.yml runs "
            '`llama-harness matrix --github-output "$GITHUB_OUTPUT"` in its first job.'
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the matrix as one JSON document")
    parser.add_argument(
        "--github-output",
        metavar="FILE",
        type=Path,
        help="append the job outputs (test, build, gpu, has_*, variants) to FILE "
        '(in a workflow: "$GITHUB_OUTPUT")',
    )
    parser.add_argument(
        "--check-label",
        metavar="LABEL",
        help="only check a runner label: exit 2 with the retirement notice and the label to "
        "use when GitHub retired it (repro.yml checks its `runner` input this way)",
    )
    parser.set_defaults(func=run)


def load_matrix() -> CIMatrix:
    """The matrix of the registry this checkout (and the user's variants file) defines."""
    from harness.build.variants import load_variants

    return compute_matrix(load_variants().values())


def run(args: argparse.Namespace) -> int:
    if args.check_label is not None:
        notice = retired(args.check_label)
        if notice is None:
            print(f"runner label {args.check_label!r}: not retired")
            return 0
        raise UsageError(
            f"runner label {args.check_label!r}: GitHub retired these runners on "
            f"{notice.retired} ({notice.source}), a job on it never starts",
            f"use {notice.use!r}",
        )
    matrix = load_matrix()  # MatrixError / VariantError: the error line of harness.cli
    if args.github_output is not None:
        text = format_github_outputs(matrix.github_outputs())
        with args.github_output.open("a", encoding="utf-8") as fh:
            fh.write(text)
    if args.json:
        print(json.dumps(matrix.to_json(), indent=2))
    else:
        print_table(matrix)
    return 0


def _runs_on(value: object) -> str:
    return ", ".join(value) if isinstance(value, tuple) else str(value)


def print_table(matrix: CIMatrix) -> None:
    from rich.table import Table

    from saiverse_llm.tables import print_table

    table = Table(title="CI matrix (from the variant registry)")
    for column in ("job", "variant", "backend", "runs-on", "container", "packages"):
        table.add_column(column)
    for job, entries in (("variant", matrix.test), ("build", matrix.build), ("gpu", matrix.gpu)):
        for e in entries:
            name = e.variant + (f" (on {e.device})" if e.device else "")
            name += " (experimental)" if e.experimental else ""
            container = e.container + (f" {e.container_options}" if e.container_options else "")
            table.add_row(
                job, name, e.backend, _runs_on(e.runs_on), container or "-", e.packages or "-"
            )
    print_table(table)
