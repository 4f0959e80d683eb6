"""Tables both CLIs print: drawn by rich in a terminal, full-width plain text elsewhere.

Every console made here has rich markup switched off: cells, titles and messages hold
names and paths users chose (a config's ``display_name``, a model file ``a[/]b.gguf``), which
rich would otherwise read as markup (``[bold]`` restyles, ``[/]`` raises ``MarkupError``).
Colour comes from ``Text(..., style=...)`` and column styles, never from ``[red]`` in a
string.

In a terminal rich fits a table to the window. Piped or redirected (CI logs, ``> file``),
rich would assume 80 columns and cut cells ("ll…", "pp5…", half a path). There the table is
printed at its natural width, without colour, as a Markdown-style pipe table that reads in a
log and pastes into an issue::

    print_table(table)            # stdout
    print_table(table, err=True)  # stderr
"""

from __future__ import annotations

import io
import sys
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.table import Table


def message_console(*, err: bool = False, **options: Any) -> Console:
    """The console for messages (not tables): colour in a terminal (``Text`` styles; no
    markup, see the module docstring), and long lines are never wrapped at 80 columns, so a
    path in a log stays one piece."""
    return Console(stderr=err, soft_wrap=True, markup=False, **options)


def is_terminal(stream: IO[str] | None = None) -> bool:
    target = stream if stream is not None else sys.stdout
    try:
        return bool(target.isatty())
    except (AttributeError, ValueError):
        return False


def plain_console(table: Table, stream: IO[str]) -> Console:
    """A console as wide as ``table`` needs, no colour, no terminal tricks."""
    probe = Console(file=stream, width=100_000, no_color=True, force_terminal=False, markup=False)
    width = probe.measure(table).maximum
    return Console(
        file=stream,
        width=max(40, width + 1),
        no_color=True,
        force_terminal=False,
        markup=False,
        emoji=False,
        highlight=False,
        soft_wrap=False,
    )


def print_table(table: Table, *, err: bool = False, stream: IO[str] | None = None) -> None:
    """Print ``table`` to stdout (``err``: stderr, or ``stream``): rich in a terminal,
    full-width plain pipe table otherwise."""
    out = stream if stream is not None else (sys.stderr if err else sys.stdout)
    if is_terminal(out):
        Console(file=out, markup=False).print(table)
        return
    out.write(plain_text(table))
    out.flush()


def plain_text(table: Table) -> str:
    """``table`` as a full-width pipe table (title on its own line above), no colour."""
    table.box = box.MARKDOWN
    title = table.title
    table.title = None
    buf = io.StringIO()
    plain_console(table, buf).print(table)
    lines = [ln.rstrip() for ln in buf.getvalue().splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    head = [str(title)] if title else []
    return "\n".join([*head, *lines]) + "\n"
