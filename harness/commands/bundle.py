"""``llama-harness bundle``: offline bundles for hosts without network.

    llama-harness bundle --variant cuda --models tiny,gemma-3-270m -o cuda.tar.gz
    llama-harness bundle --variant cuda --models tiny --slim-only --python-version 3.12 \\
        --max-size 64MiB -o cuda-slim.tar.gz
    llama-harness bundle run cuda.tar.gz -- test-cuda [pytest/nox args]
    llama-harness bundle slim WHEEL -o DIR
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from rich.text import Text

from harness.ship import bundle
from saiverse_llm.cli_errors import ArgumentParser
from saiverse_llm.tables import message_console
from saiverse_llm.user_errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'64MiB', '64M', '67108864' -> bytes (binary units)."""
    match = _SIZE.match(text) if len(text) < 40 else None
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a size. Fix: write e.g. 64MiB or 67108864"
        )
    unit = (match.group(2) or "B").upper()[0]
    factor = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]
    size = float(match.group(1)) * factor
    if not 1 <= size <= 1 << 50:
        raise argparse.ArgumentTypeError(
            f"{text!r} is out of range. Fix: give a size from 1 byte to 1024TiB, e.g. 64MiB"
        )
    return int(size)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bundle",
        help="make or run an offline bundle (wheel, project, dependency wheels, test models)",
        description=(
            "Write one archive that installs and runs a variant's tests on a host with no "
            "network, or (bundle run) verify, install and run such an archive."
        ),
    )
    parser.add_argument("--variant", help="build variant whose wheel to carry (e.g. cpu, cuda)")
    parser.add_argument(
        "--models",
        default="tiny",
        help="comma list of test models to carry (default: tiny)",
    )
    parser.add_argument("-o", "--output", type=Path, help="archive to write (.tar.gz)")
    parser.add_argument("--wheel", type=Path, help="carry this wheel instead of the cached one")
    parser.add_argument(
        "--no-slim", action="store_true", help="carry the wheel as built (no de-duplication)"
    )
    parser.add_argument(
        "--slim-only",
        action="store_true",
        help="minimal bundle for hosts that already have numpy, jinja2, pytest, ...: carries "
        f"the wheel, the project and only {', '.join(bundle.SLIM_ONLY_DEPS)}",
    )
    parser.add_argument(
        "--python-version",
        help="target host's Python (e.g. 3.12) for the dependency wheels (default: this one)",
    )
    parser.add_argument(
        "--with",
        dest="extra",
        action="append",
        default=[],
        metavar="REQ",
        help="also carry this requirement (repeatable)",
    )
    parser.add_argument(
        "--extras",
        default="test",
        help="project extras whose dependencies a full bundle carries (default: test, what "
        "the test sessions install); '' for none",
    )
    parser.add_argument(
        "--max-size", type=parse_size, help="fail when the archive is larger (e.g. 64MiB)"
    )
    parser.set_defaults(func=_make)
    sub = parser.add_subparsers(dest="bundle_command", metavar="{run,slim}")

    run = sub.add_parser(
        "run",
        help="verify a bundle, install it offline into a fresh venv and run a session",
        description=RUN_DESCRIPTION,
        usage="llama-harness bundle run FILE [--workdir DIR] [--reports DIR] [--no-isolate] "
        "-- SESSION [ARGS...]",
    )
    # Everything after `run` is parsed by _run_options(): argparse's nested sub-parsers do
    # not keep what follows `--`, and the session's own arguments must pass through intact.
    run.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        metavar="FILE [OPTIONS] -- SESSION [ARGS...]",
        help="FILE: archive or extracted folder; OPTIONS: --workdir DIR (extract + venv here), "
        "--reports DIR (default WORKDIR/reports), --no-isolate (keep the network namespace); "
        "SESSION: e.g. test-cpu, test-cuda, bench-cuda",
    )
    run.set_defaults(func=_run)

    slim = sub.add_parser(
        "slim",
        help="write a slimmed copy of a llama-cpp-python wheel (one copy of each library)",
    )
    slim.add_argument("wheel", type=Path, help="the llama_cpp_python-*.whl to slim")
    slim.add_argument(
        "-o", "--output-dir", type=Path, required=True, help="where to write the slimmed wheel"
    )
    slim.set_defaults(func=_slim)


def _make(args: argparse.Namespace) -> int:
    console = message_console(err=True)
    if not args.variant or not args.output:
        raise UsageError(
            "bundle needs --variant and -o FILE", "give both (or use `bundle run FILE`)"
        )
    spec = bundle.BundleSpec(
        variant=args.variant,
        output=args.output,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        wheel=args.wheel,
        slim=not args.no_slim,
        slim_only=args.slim_only,
        python_version=args.python_version,
        extra_requirements=tuple(args.extra),
        project_extras=args.extras,
        max_size=args.max_size,
    )
    with console.status("bundle") as status:

        def step(message: str) -> None:
            console.log(message)
            status.update(Text(message))  # a str would be read as rich markup

        report = bundle.build_bundle(spec, step=step)
    if report.slim is not None:
        console.print(
            f"wheel slimmed: {bundle.human_size(report.slim.original_size)} -> "
            f"{bundle.human_size(report.slim.size)} ({len(report.slim.removed)} entries removed)"
        )
    console.print(f"{report.path}: {bundle.human_size(report.size)}, sha256 {report.sha256}")
    print(report.path)
    return 0


RUN_DESCRIPTION = (
    "Checks every sha256, installs from the bundle alone (pip config ignored, PIP_NO_INDEX=1, "
    "no network namespace when unshare allows) and runs the session with HF_HUB_OFFLINE=1. "
    "Arguments after the session go to nox (full bundles) or pytest (slim-only bundles)."
)


def _run_options() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="llama-harness bundle run",
        usage="%(prog)s FILE [--workdir DIR] [--reports DIR] [--no-isolate] -- SESSION [ARGS...]",
        description=RUN_DESCRIPTION,
    )
    parser.add_argument("file", type=Path, help="bundle archive, or a folder it was extracted to")
    parser.add_argument("--workdir", type=Path, help="where to extract and make the venv")
    parser.add_argument("--reports", type=Path, help="report folder (default: WORKDIR/reports)")
    parser.add_argument(
        "--no-isolate", action="store_true", help="do not drop the network namespace"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    split = argv.index("--") if "--" in argv else len(argv)
    options = _run_options().parse_args(argv[:split])
    rest = argv[split + 1 :]
    if not rest:
        _run_options().error("name the session after --, e.g. bundle run FILE -- test-cpu")
    spec = bundle.RunSpec(
        bundle=options.file,
        session=rest[0],
        posargs=tuple(rest[1:]),
        workdir=options.workdir,
        isolate_network=not options.no_isolate,
        reports=options.reports,
    )
    return bundle.run_bundle(spec)


def _slim(args: argparse.Namespace) -> int:
    result = bundle.slim_wheel(args.wheel, args.output_dir)
    message_console(err=True).print(
        f"{bundle.human_size(result.original_size)} -> {bundle.human_size(result.size)}; "
        f"libraries kept: {', '.join(result.kept_libs)}"
    )
    print(result.path)
    return 0
