"""``llama-harness gate VARIANT SESSION``: CI's status gate (harness/ship/status_gate.py)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from harness.ship import status_gate

    p = subparsers.add_parser(
        "gate",
        help="fail unless a session's status.json says it did its job (CI status gate)",
        description=status_gate.DESCRIPTION,
    )
    status_gate.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.ship import status_gate

    return status_gate.run(args)
