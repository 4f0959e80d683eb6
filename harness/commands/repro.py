"""``llama-harness repro CASE.yaml [--fix]``: replay a user's "GPU not detected" report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.text import Text

from harness.doctor import repro
from saiverse_llm.redact import redact_text
from saiverse_llm.tables import message_console
from saiverse_llm.user_errors import UsageError


def run(args: argparse.Namespace) -> int:
    err = message_console(err=True, highlight=False)
    if args.all:
        cases = repro.load_cases(args.dir)
    elif args.cases:
        cases = [repro.load_case(p) for p in args.cases]
    else:
        raise UsageError("no replay case given", "name CASE.yaml file(s) or --all")
    results = []
    for case in cases:
        with err.status(Text(f"replaying {case.id} ...")) as status:  # a str is markup

            def say(message: str, status: Any = status) -> None:
                status.update(Text(message))
                err.print(redact_text(message), markup=False)

            try:
                result = repro.replay(case, fix=args.fix, keep=args.keep, say=say)
            except repro.ReplayError as exc:
                raise UsageError(f"repro {case.id}: {exc}", "see the message") from exc
        results.append(result)
        if not args.json:
            sys.stdout.write(repro.render(result))
            if args.keep and result.workdir:
                sys.stdout.write(f"  kept: {result.workdir}\n")
    if args.json:
        data = [r.to_dict() for r in results]
        sys.stdout.write(redact_text(json.dumps(data, indent=2)) + "\n")
    return 0 if all(r.ok for r in results) else 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "repro",
        help="replay a user's GPU-not-detected report in a fresh venv; --fix applies the fix",
        description=(
            "Replay a case (repro/*.yaml): a fresh venv with its own pip cache, the state "
            "before (cached CPU wheel, package installed), the install commands as the user "
            "ran them (builds stop once CMake has configured), then the doctor. --fix runs "
            "the catalogue's fix for the case's cause and checks the result. Cases that need "
            "a GPU or a CUDA wheel are skipped with the reason. Exit status: 0 all replayed "
            "cases reproduced (and were fixed), 1 otherwise, 2 usage/setup error."
        ),
    )
    parser.add_argument(
        "cases",
        nargs="*",
        type=Path,
        metavar="CASE.yaml",
        help="replay case files to run (or --all)",
    )
    parser.add_argument("--all", action="store_true", help="replay every case in --dir")
    parser.add_argument("--dir", type=Path, default=repro.REPRO_DIR, help="case folder")
    parser.add_argument("--fix", action="store_true", help="also apply and check the fix")
    parser.add_argument("--keep", action="store_true", help="keep the replay folder")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.set_defaults(func=run)
