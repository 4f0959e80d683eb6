"""Every command's --help reads well: no literal '%%' (argparse formats only help strings, not
descriptions), a description, and a help text for every option and positional argument, in
both command lines."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from harness.cli import build_parser as harness_parser
from saiverse_llm.cli import build_parser as saiverse_parser


def _commands() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for top, parser in (("llama-harness", harness_parser()), ("saiverse-llm", saiverse_parser())):
        yield top, parser
        stack = [(top, parser)]
        while stack:
            name, p = stack.pop()
            for action in p._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for sub_name, sub in action.choices.items():
                        stack.append((f"{name} {sub_name}", sub))
                        yield f"{name} {sub_name}", sub


COMMANDS = dict(_commands())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_reads_well(name: str) -> None:
    parser = COMMANDS[name]
    text = parser.format_help()
    assert "%%" not in text, f"{name} --help shows a literal %%"
    assert parser.description, f"{name} has no description"
    missing = [
        "/".join(a.option_strings) or a.dest
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        and a.help != argparse.SUPPRESS
        and not (a.help or "").strip()
    ]
    assert not missing, f"{name}: no help text for {missing}"
