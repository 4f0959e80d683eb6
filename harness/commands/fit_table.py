"""``llama-harness fit-table``: the README's table of the seed's models against VRAM sizes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.paths import PROJECT_ROOT


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "fit-table",
        help="the README table of the seed's models against 8-24 GiB of VRAM, from fit",
        description=(
            "Write the header-only GGUFs of the seed's five recommended models (real shapes, "
            "no weights, sparse files in <tmp>/llama-harness-seed-shapes/), run saiverse-llm fit "
            "on each with its config in models/ for 8, 10, 12, 16 and 24 GiB of VRAM, and "
            "print the Markdown table. --write puts it into README.md between the "
            "fit-table markers; --check exits 1 when README.md differs."
        ),
    )
    p.add_argument(
        "--readme",
        type=Path,
        default=PROJECT_ROOT / "README.md",
        metavar="FILE",
        help="the README to write or check (default: the project's README.md)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="update the README section")
    mode.add_argument("--check", action="store_true", help="exit 1 if the README differs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.bench import fit_table
    from saiverse_llm.atomic import atomic_write_text

    table = fit_table.generate()
    if not (args.write or args.check):
        sys.stdout.write(table)
        return 0
    try:
        readme = args.readme.read_text(encoding="utf-8")
        updated = fit_table.replace_section(readme, table)
    except (OSError, fit_table.FitTableError) as exc:
        print(f"error: {args.readme}: {exc}", file=sys.stderr)
        return 1
    if args.check:
        if updated != readme:
            print(
                f"error: {args.readme}: the fit table is out of date. Fix: run "
                "`llama-harness fit-table --write`",
                file=sys.stderr,
            )
            return 1
        print(f"{args.readme}: fit table up to date")
        return 0
    if updated != readme:
        atomic_write_text(args.readme, updated)
    print(f"{args.readme}: fit table written")
    return 0
