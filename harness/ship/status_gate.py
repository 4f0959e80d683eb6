"""CI's status gate: does ``reports/<variant>/status.json`` say the session did its job?

nox exits 0 for a skipped session, so a GPU runner that cannot see its GPU ("built OK, no
GPU to run on") or a variant whose build tools are missing would look green. Each variant
job of ``.github/workflows/ci.yml`` therefore ends its sessions with
``.github/actions/check-status``, which runs ``llama-harness gate VARIANT SESSION``:

* the session's success status (:data:`harness.sessions.SUCCESS`: ``built`` for
  ``build-<v>``, ``passed`` for ``test-<v>``/``bench-<v>``) passes with a notice;
* a status the job allows (``--allow``, e.g. ``built-no-gpu`` for Metal on a hosted macOS
  VM) passes with a warning;
* anything else, or no status at all, fails the job with an error annotation.

Each check adds one line to the step summary (``$GITHUB_STEP_SUMMARY``). The action runs
``python -m harness.ship.status_gate`` (the same as ``llama-harness gate``, without importing
every other command).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import paths
from harness.sessions import SUCCESS, session_kind


@dataclass(frozen=True)
class Verdict:
    session: str
    status: str
    message: str
    level: str  # notice | warning | error (GitHub workflow command)
    code: int  # the gate's exit status

    def annotation(self) -> str:
        """The workflow command GitHub turns into an annotation."""
        return f"::{self.level} title={self.session}: {self.status}::{self.message}"

    def summary_line(self) -> str:
        return f"\n**{self.session}**: `{self.status}` {self.message}\n"


def read_status(reports: Path, variant: str, session: str) -> tuple[str, str]:
    """(status, message) the session recorded; ("missing", why) when there is none."""
    path = reports / variant / "status.json"
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))["sessions"][session]
        status, message = str(entry["status"]), str(entry.get("message", ""))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        status, message = "missing", f"{path} has no status for {session} ({exc!r})"
    return status, " ".join(message.split())


def decide(session: str, status: str, message: str, allow: Iterable[str] = ()) -> Verdict:
    """The verdict for one recorded status (see the module docstring)."""
    if status == SUCCESS[session_kind(session)]:
        return Verdict(session, status, message, "notice", 0)
    if status in set(allow):
        return Verdict(session, status, message, "warning", 0)
    return Verdict(session, status, message, "error", 1)


def gate(
    reports: Path,
    variant: str,
    session: str,
    allow: Iterable[str] = (),
    summary: Path | None = None,
) -> Verdict:
    """Read, decide, and append the verdict to the step summary when one is given."""
    status, message = read_status(reports, variant, session)
    verdict = decide(session, status, message, allow)
    if summary is not None:
        with summary.open("a", encoding="utf-8") as fh:
            fh.write(verdict.summary_line())
    return verdict


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``llama-harness gate`` / ``python -m harness.ship.status_gate``."""
    p.add_argument("variant", help="variant name, e.g. cpu")
    p.add_argument("session", help="session name, e.g. test-cpu or build-cuda")
    p.add_argument(
        "--allow",
        default="",
        metavar="STATUSES",
        help="space-separated statuses accepted with a warning, e.g. 'built-no-gpu'",
    )
    p.add_argument(
        "--reports",
        type=Path,
        default=None,
        help="reports folder (default: $LLAMA_HARNESS_REPORTS or ./reports)",
    )


DESCRIPTION = (
    "Read <reports>/VARIANT/status.json and exit 0 when SESSION recorded its success status "
    "(build-<v>: built; test-<v>, bench-<v>: passed) or a status given with --allow (a "
    "warning), else 1. Prints a GitHub annotation and appends one line to "
    "$GITHUB_STEP_SUMMARY when set. .github/actions/check-status runs it."
)


def run(args: argparse.Namespace) -> int:
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    try:
        verdict = gate(
            args.reports or paths.reports_dir(),
            args.variant,
            args.session,
            args.allow.split(),
            Path(summary) if summary else None,
        )
    except ValueError as exc:
        print(f"error: session {args.session!r}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write the step summary {summary}: {exc}", file=sys.stderr)
        return 1
    print(verdict.annotation())
    return verdict.code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.ship.status_gate", description=DESCRIPTION
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
