"""Error discipline shared by both command lines (``saiverse-llm`` and ``llama-harness``).

Every command of either CLI, present and future, runs through :func:`run_cli`, so each one:

* prints a problem as ONE line on stderr, ``error: <what>. Fix: <what to do>`` (context
  lines such as a build log's tail may come before it), never a traceback;
* exits 2 for usage errors (a bad option value, an unknown name, a bad environment
  variable: :class:`~saiverse_llm.user_errors.UsageError`, argparse errors through
  :class:`ArgumentParser`), 1 for failures, 130 when interrupted;
* turns an unexpected exception into ``error: internal error (<type>: <message>). Fix:
  this is a bug ...`` naming the log file that holds the traceback;
* writes everything through :class:`~saiverse_llm.redact.RedactingStream`, so no secret
  reaches stdout or stderr.

A command reports a problem by raising :class:`~saiverse_llm.user_errors.UserError` (or
``UsageError``), or one of the error types its CLI lists as known (``known=`` of
:func:`run_cli`: the CLI's domain errors such as ``ConfigError`` or ``BuildError``, whose
messages already name the file and the fix). Option values are checked by argparse with
:func:`int_arg` / :func:`float_arg`, whose bounds come from :mod:`saiverse_llm.config`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from saiverse_llm.redact import RedactingStream, redact_text
from saiverse_llm.user_errors import UserError

__all__ = [
    "ArgumentParser",
    "Known",
    "LogFileHandler",
    "StderrHandler",
    "error_line",
    "error_line_of",
    "float_arg",
    "int_arg",
    "replace_cli_handlers",
    "run_cli",
]

#: Known error types of a CLI -> exit status (1 failure, 2 usage). A key is a class, or its
#: dotted name ("harness.build.build.BuildError") so the CLI need not import every module to list
# it;
#: subclasses count.
Known = Mapping[type[BaseException] | str, int]

#: ``extra={LOG_FILE_ONLY: True}`` on a log record keeps it off the terminal (log files only).
LOG_FILE_ONLY = "log_file_only"

_FIX_RE = re.compile(r"(?:(?:^|[.;:,]\s+|\n\s*|\s+-\s+|\s+\()(?i:fix):\s*)|(?:\n\s*Fix\s+(?=\S))")


class _SubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Sub-commands whose ``--help`` has a description: their one-line ``help`` when none is
    given (argparse would show only the usage)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if kwargs.get("description") is None and kwargs.get("help"):
            kwargs["description"] = kwargs["help"]
        return super().add_parser(name, **kwargs)  # type: ignore[no-any-return]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the CLIs' error line: ``error: <prog>: <problem>. Fix: <fix>``, exit 2.

    Sub-command parsers made with ``add_subparsers()`` are of this class too, so every
    command registered later inherits it (and a description, see :class:`_SubParsers`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubParsers)

    def error(self, message: str) -> NoReturn:
        what, fix = split_fix(message)
        fix = fix or f"see `{self.prog} --help`"
        self.exit(2, error_line(f"{self.prog}: {what}", fix) + "\n")


def _bounds_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"from {low:,} to {high:,}"
    if low is not None:
        return f"at least {low:,}"
    return f"at most {high:,}"


def int_arg(
    low: int | None = None, high: int | None = None, *, extra: Mapping[str, int] | None = None
) -> Callable[[str], int]:
    """An argparse ``type=`` for a whole number within ``low..high`` (either may be None).

    ``extra`` maps words to values (``{"random": -1}``). The error says what the text is and
    the allowed range, e.g. ``0 is below 1; give a whole number from 1 to 4,294,967,295``.
    """

    def parse(text: str) -> int:
        word = text.strip().lower()
        if extra and word in extra:
            return extra[word]
        digits = word[1:] if word[:1] in "+-" else word
        allowed = _bounds_text(low, high)
        if not (digits.isascii() and digits.isdigit()):  # not '²', '٣', '1_000' or '--5'
            text = text if len(text) <= 60 else f"{text[:40]}... ({len(text):,} characters)"
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number. Fix: give a whole number {allowed}"
            )
        if len(digits) > 20:
            raise argparse.ArgumentTypeError(
                f"a {len(digits):,}-digit number is out of range. Fix: give a whole number "
                f"{allowed}"
            )
        value = int(word)
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{value} is out of range. Fix: give a whole number {allowed}"
            )
        return value

    parse.__name__ = "int"  # argparse names the type in some messages
    return parse


def float_arg(low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """An argparse ``type=`` for a finite number within ``low..high``."""

    def parse(text: str) -> float:
        allowed = _bounds_text(low, high)
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number. Fix: give a number {allowed}"
            ) from None
        if (
            not math.isfinite(value)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            raise argparse.ArgumentTypeError(
                f"{text} is out of range. Fix: give a number {allowed}"
            )
        return value

    parse.__name__ = "float"
    return parse


# --------------------------------------------------------------------------- the error line


def split_fix(message: str) -> tuple[str, str]:
    """``(what, fix)`` from a message that may carry its own ``Fix:``/``fix:`` part."""
    matches = list(_FIX_RE.finditer(message))
    if not matches:
        return message.strip(), ""
    last = matches[-1]
    fix = message[last.end() :].strip()
    # "... (fix: run X)": drop the ")" that closes the parenthesis the fix opened, only that
    # one (a fix ending in "(... lists them)" keeps its own closing parenthesis).
    while fix.endswith(")") and fix.count(")") > fix.count("("):
        fix = fix[:-1].rstrip()
    return message[: last.start()].strip(), fix


def _shorten(word: str) -> str:
    """A word of the error line cut to a readable length (a 5,000-digit value, a pasted blob)."""
    if len(word) <= _LONGEST_WORD:
        return word
    return f"{word[:40]}...({len(word):,} characters)"


_LONGEST_WORD = 300


def error_line(what: str, fix: str) -> str:
    """``error: <what>. Fix: <fix>`` on one line (newlines folded, secrets redacted, any word
    over 300 characters cut to its first 40)."""
    flat_what = " ".join(_shorten(w) for w in what.split()).rstrip(" .;:")
    flat_fix = " ".join(_shorten(w) for w in fix.split()).rstrip(" .") or "see the log"
    return redact_text(f"error: {flat_what}. Fix: {flat_fix}")


def _known_code(exc: BaseException, known: Known) -> int:
    """The exit status ``known`` gives ``exc``'s class or nearest base class, else 0."""
    for cls in type(exc).__mro__:
        for key in (cls, f"{cls.__module__}.{cls.__qualname__}"):
            if key in known:
                return known[key]
    return 0


def _describe(
    exc: BaseException, known: Known, log_file: Path | None
) -> tuple[int, str, str, list[str]]:
    """(exit status, what, fix, context lines) for an exception a command raised."""
    if isinstance(exc, UserError):
        what, fix, code = exc.what, exc.fix, exc.exit_code
    else:
        code = _known_code(exc, known)
        if code:
            fix_attr = getattr(exc, "fix", None)
            if isinstance(fix_attr, str) and fix_attr:
                text = str(exc)
                what = text.split(f". Fix: {fix_attr}")[0].split(f"; {fix_attr}")[0]
                fix = fix_attr
            else:
                what, fix = split_fix(str(exc))
                fix = fix or "see the message above"
        elif isinstance(exc, OSError):
            code = 1
            name = exc.filename if exc.filename is not None else ""
            what = f"{exc.strerror or exc}" + (f": {name}" if name else "")
            fix = (
                "check that the path exists, that you may read and write there, and that "
                "the disk has room"
            )
        else:
            where = f"; the traceback is in {log_file}" if log_file else ""
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            what = f"internal error ({type(exc).__name__}{': ' + first if first else ''})"
            fix = f"this is a bug: please report it with the command you ran{where}"
            return 1, what, fix, []
    lines = [ln for ln in what.splitlines() if ln.strip()]
    head = lines[0] if lines else type(exc).__name__
    return code, head, fix, lines[1:]


def error_line_of(exc: BaseException) -> str:
    """The error line of a known error raised by a command (after its context lines, if the
    message has several), for commands that report several problems and go on (e.g.
    ``models fetch A B``); the exit status is theirs to choose."""
    _, what, fix, context = _describe(exc, {type(exc): 1}, None)
    return "\n".join([*(redact_text(f"  {line}") for line in context), error_line(what, fix)])


def report_error(
    exc: BaseException, *, known: Known, logger: logging.Logger, log_file: Path | None
) -> int:
    """Log ``exc`` (with its traceback, to the log file only) and print its error line."""
    code, what, fix, context = _describe(exc, known, log_file)
    logger.debug("command failed", exc_info=exc)
    if code == 1 and what.startswith("internal error"):
        logger.error("internal error", exc_info=exc, extra={LOG_FILE_ONLY: True})
    for line in context:
        print(redact_text(f"  {line}"), file=sys.stderr)
    print(error_line(what, fix), file=sys.stderr)
    return code


# --------------------------------------------------------------------------- the runner


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler for the current ``sys.stderr`` (looked up at each record, so it follows the
    redacting wrapper :func:`run_cli` installs), one redacted line per record, never a
    traceback (the log file keeps those)."""

    cli_handler = True

    def __init__(self, fmt: str) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(OneLineFormatter(fmt))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, LOG_FILE_ONLY, False):
            return  # its error line is printed by report_error; the log file gets the record
        self.stream = sys.stderr
        super().emit(record)


class LogFileHandler(logging.handlers.RotatingFileHandler):
    """The CLIs' rotating log file. A write that fails (a full disk, a log on a removed
    drive) prints ONE warning line on stderr and stops logging to the file; the standard
    handler would print '--- Logging error ---' and a traceback for every record."""

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if self.broken:
            return
        self.broken = True
        exc = sys.exc_info()[1]
        reason = (exc.strerror if isinstance(exc, OSError) else None) or exc or "unknown"
        with contextlib.suppress(Exception):
            sys.stderr.write(
                f"warning: cannot write the log file {self.baseFilename} ({reason}); its "
                "later lines are dropped. Fix: free space there, or pass --log-file / set "
                "SAIVERSE_LOG_FILE or LLAMA_HARNESS_CACHE to a writable place\n"
            )
        stream, self.stream = self.stream, None
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.close()


def replace_cli_handlers(*handlers: logging.Handler) -> None:
    """Make ``handlers`` the root logger's command-line handlers, closing those a previous
    :func:`run_cli` of either CLI installed (marked ``cli_handler``)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "cli_handler", False):
            root.removeHandler(old)
            old.close()
    for handler in handlers:
        handler.cli_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)


class OneLineFormatter(logging.Formatter):
    """For log handlers on a terminal: the message only, redacted, never a traceback (the
    log file keeps those)."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return redact_text(super().format(record))
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_START = re.compile(r"^(?:\x1b\[[0-9;]*m)*error:(?:\x1b\[[0-9;]*m)*\s*", re.IGNORECASE)


def normalize_error_line(line: str, default_fix: str) -> str:
    """A stderr line a command printed itself as ``error: ...`` in the one format:
    ``error: <what>. Fix: <fix>`` (a ``; fix:`` or ``(fix: ...)`` part becomes the Fix; a
    line without one gets ``default_fix``). Other lines pass unchanged. This is how commands
    that print their own error lines (new ones included) keep the CLIs' format."""
    start = _ERROR_START.match(line)
    if start is None:
        return line
    body = _ANSI.sub("", line[start.end() :]).strip()
    if not body:
        return line
    if ". Fix: " in body:
        return "error: " + body
    what, fix = split_fix(body)
    return error_line(what, fix or default_fix)


@contextlib.contextmanager
def redacted_output(default_fix: dict[str, str] | None = None) -> Iterator[None]:
    """Route stdout and stderr through :class:`RedactingStream` for the block; stderr lines
    that start with ``error:`` are put in the one format (:func:`normalize_error_line`, with
    ``default_fix["fix"]`` as read at each line)."""
    fix = default_fix if default_fix is not None else {"fix": "see the command's --help"}
    saved = sys.stdout, sys.stderr
    out = RedactingStream(sys.stdout)
    err = RedactingStream(sys.stderr, lambda line: normalize_error_line(line, fix["fix"]))
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            out.flush()
            err.flush()
        sys.stdout, sys.stderr = saved


def run_cli(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    known: Known,
    logger: logging.Logger,
    setup: Callable[[argparse.Namespace], Path | None] | None = None,
) -> int:
    """Parse ``argv``, run the chosen command's ``func(args) -> int`` with the error discipline
    of this module, and return the exit status.

    ``setup(args)`` runs first (logging) and returns the log file named in internal-error
    lines. ``SystemExit`` raised by a command passes through.
    """
    default_fix = {"fix": f"see `{parser.prog} --help`"}
    with redacted_output(default_fix):
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version, or an argparse error (already printed)
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        except Exception as exc:  # an argument type function that failed (a bug)
            return report_error(exc, known=known, logger=logger, log_file=None)
        func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
        if func is None:
            parser.print_help()
            return 2
        command = getattr(args, "command", None)
        if command:
            default_fix["fix"] = f"see `{parser.prog} {command} --help`"
        log_file: Path | None = None
        try:
            if setup is not None:
                log_file = setup(args)
            return int(func(args) or 0)
        except KeyboardInterrupt:
            print(error_line("interrupted", "run the command again"), file=sys.stderr)
            return 130
        except BrokenPipeError:
            # Output piped into `head` and the like: not an error.
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return 0
        except Exception as exc:
            return report_error(exc, known=known, logger=logger, log_file=log_file)
