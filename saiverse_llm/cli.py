"""``saiverse-llm``: the command line of the SAIVerse llama.cpp provider.

One sub-command per ``register_<name>(subparsers)`` function listed in :data:`SUBCOMMANDS`;
each sets ``func`` (taking the parsed ``argparse.Namespace``, returning an exit code).

Every run logs to ``saiverse_log.txt`` (``--log-file``, else ``$SAIVERSE_LOG_FILE``, else
``./saiverse_log.txt``) like SAIVerse itself, at INFO (``--debug`` or
``SAIVERSE_LOG_LEVEL=DEBUG`` for DEBUG), rotated at 1 MB with 3 old files kept, and prints
warnings on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias, cast

from rich.console import Console
from rich.table import Table
from rich.text import Text

from saiverse_llm import __version__, fit
from saiverse_llm.cli_errors import (
    ArgumentParser,
    LogFileHandler,
    StderrHandler,
    replace_cli_handlers,
    run_cli,
)
from saiverse_llm.config import ConfigError, ModelConfig
from saiverse_llm.fallback import fallback_cycles
from saiverse_llm.fetch import register_fetch
from saiverse_llm.fit_command import register_fit
from saiverse_llm.gguf_file import GGUFError, read_gguf
from saiverse_llm.model_commands import (
    RUN_ERRORS,
    register_chat,
    register_check,
)
from saiverse_llm.redact import RedactingFormatter
from saiverse_llm.registry import (
    ModelNotFoundError,
    RegistryEntry,
    add_config_dir_argument,
    discover,
    project_models_dir,
    search_dirs,
    user_models_dir,
)
from saiverse_llm.tables import message_console, print_table

log = logging.getLogger(__name__)

DEFAULT_LOG_FILE = "saiverse_log.txt"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The log file rotates at this size and keeps this many old files (saiverse_log.txt.1 ...).
LOG_MAX_BYTES = 1_000_000
LOG_BACKUPS = 3

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


# ---------------------------------------------------------------------------------------------
# Logging


def log_file_path(path: Path | str | None = None) -> Path:
    """``path``, else ``$SAIVERSE_LOG_FILE``, else ``./saiverse_log.txt``."""
    if path:
        return Path(path).expanduser()
    env = os.environ.get("SAIVERSE_LOG_FILE")
    return Path(env).expanduser() if env else Path(DEFAULT_LOG_FILE)


def log_level(debug: bool = False) -> int:
    """DEBUG when asked (``debug``), else ``$SAIVERSE_LOG_LEVEL`` (DEBUG, INFO, WARNING, ERROR),
    else INFO."""
    if debug:
        return logging.DEBUG
    name = os.environ.get("SAIVERSE_LOG_LEVEL", "").strip().upper()
    level = logging.getLevelName(name) if name else logging.INFO
    return level if isinstance(level, int) else logging.INFO


def setup_logging(
    path: Path | str | None = None, *, verbose: bool = False, debug: bool = False
) -> Path | None:
    """Log ``saiverse_llm`` to a rotating file and warnings (or all, ``verbose``) to stderr.

    The file is :func:`log_file_path` of ``path``, appended to at :func:`log_level` (INFO by
    default; DEBUG, which includes llama.cpp's own log, with ``debug``/``verbose`` or
    ``SAIVERSE_LOG_LEVEL=DEBUG``). It rotates at :data:`LOG_MAX_BYTES` and keeps
    :data:`LOG_BACKUPS` old files (``saiverse_log.txt.1`` ...). Returns the file's path, or
    ``None`` when it cannot be opened (then a warning says why and only stderr is used).
    Calling it again replaces the handlers it installed before.
    """
    root = logging.getLogger()
    level = log_level(debug or verbose)
    root.setLevel(level)
    logging.getLogger("saiverse_llm").setLevel(level)
    for chatty in ("httpx", "httpx2", "huggingface_hub"):  # one INFO line per HTTP request
        logging.getLogger(chatty).setLevel(level if level == logging.DEBUG else logging.WARNING)

    stderr = StderrHandler("%(levelname)s: %(message)s")
    stderr.setLevel(logging.DEBUG if verbose else logging.WARNING)
    replace_cli_handlers(stderr)

    file = log_file_path(path)
    try:
        if file.parent != Path():
            file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = LogFileHandler(
            file, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
    except OSError as exc:
        log.warning(
            "cannot write the log file %s (%s); logging to stderr only. Fix: pass "
            "--log-file PATH or set SAIVERSE_LOG_FILE to a writable file",
            file,
            exc.strerror or exc,
        )
        return None
    file_handler.setLevel(level)
    file_handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    replace_cli_handlers(stderr, file_handler)
    return file


# ---------------------------------------------------------------------------------------------
# list


def register_list(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "list",
        help="list the model configs (what SAIVerse's model dropdown would show)",
        description=(
            "List every model config found in the config directories: key, display name, "
            "provider, resolved GGUF path and whether that file exists, context length and "
            "GPU layers, and the memory a load needs (saiverse-llm fit's estimate: total, and "
            "the GPU part with the config's n_gpu_layers). Invalid configs are listed with "
            "their reason. Directories, lowest "
            "priority first: the project's models/, $SAIVERSE_USER_DATA_DIR/models (or "
            "~/.saiverse/user_data/models), $SAIVERSE_MODELS_PATH, then --dir."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_config_dir_argument(parser)
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 if any config is invalid"
    )
    parser.set_defaults(func=cmd_list)


def dangling_fallbacks(entries: dict[str, RegistryEntry]) -> dict[str, str]:
    """Keys whose ``fallback_model`` names no valid config, with a message for each."""
    result: dict[str, str] = {}
    for key, entry in entries.items():
        target = entry.config.fallback_model if entry.config else None
        if target is None:
            continue
        if target == key:
            result[key] = "fallback_model names this config itself (a failure would retry it)"
            continue
        other = entries.get(target)
        if other is None or not other.valid:
            state = "is invalid" if other is not None else "does not exist"
            result[key] = f"fallback_model {target!r} {state}"
    return result


def live_fallbacks(entries: dict[str, RegistryEntry]) -> dict[str, str]:
    """Key -> its ``fallback_model`` key, for valid configs with ``fallback_on_error`` whose
    fallback is another valid config (the edges :func:`fallback_cycles` walks)."""
    edges: dict[str, str] = {}
    for key, entry in entries.items():
        cfg = entry.config
        if cfg is None or not cfg.fallback_on_error or cfg.fallback_model in (None, key):
            continue
        target = entries.get(cfg.fallback_model or "")
        if target is not None and target.valid:
            edges[key] = target.key
    return edges


def cmd_list(args: argparse.Namespace) -> int:
    dirs = search_dirs(args.dirs)
    entries = discover(dirs)
    notes = dangling_fallbacks(entries)
    log.info(
        "list: %d configs (%d invalid) from %s",
        len(entries),
        sum(1 for e in entries.values() if not e.valid),
        ", ".join(map(str, dirs)),
    )
    for key, note in notes.items():
        log.warning("%s: %s", entries[key].path, note)
    for cycle in fallback_cycles(live_fallbacks(entries)):
        loop = " -> ".join([*cycle, cycle[0]])
        log.warning(
            "fallback_model cycle %s (%s): a failure is answered by the next config only, never "
            "around the loop. Fix: point one of these fallback_model fields elsewhere or remove it",
            loop,
            ", ".join(str(entries[key].path) for key in cycle),
        )
        for key in cycle:
            notes.setdefault(key, f"fallback_model cycle {loop}")
    invalid = [e for e in entries.values() if not e.valid]
    if args.json:
        print(json.dumps(_list_json(dirs, entries, notes), indent=2, ensure_ascii=False))
    else:
        _print_table(dirs, entries, notes)
    return 1 if args.strict and invalid else 0


def _origin(path: Path) -> str:
    parent = path.parent.resolve()
    if parent == project_models_dir().resolve():
        return "project"
    if parent == user_models_dir().resolve():
        return "user"
    return str(path.parent)


def _entry_json(entry: RegistryEntry, note: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "key": entry.key,
        "valid": entry.valid,
        "config_file": str(entry.path),
        "origin": _origin(entry.path),
        "overrides": [str(p) for p in entry.overrides],
    }
    if entry.config is not None:
        item.update(entry.config.to_dict())
        item["model_exists"] = entry.config.model_path.is_file()
        item["note"] = note
        if entry.config.context_length is None and item["model_exists"]:
            item["gguf_context_length"], item["gguf_error"] = gguf_context(entry.config)
        item["fit"], item["fit_error"] = (
            config_footprint(entry.config) if item["model_exists"] else (None, None)
        )
    elif entry.error is not None:
        err = entry.error
        item["error"] = {
            "message": str(err),
            "field": err.field,
            "value": err.value,
            "problem": err.problem,
            "fix": err.fix,
        }
    return item


def _list_json(
    dirs: Sequence[Path], entries: dict[str, RegistryEntry], notes: dict[str, str]
) -> dict[str, Any]:
    return {
        "dirs": [{"path": str(d), "exists": d.is_dir()} for d in dirs],
        "models": [_entry_json(e, notes.get(k)) for k, e in entries.items()],
    }


def _console() -> Console:
    # Piped output: lines are never wrapped at 80 columns (the table: saiverse_llm.tables)
    return message_console()


def _print_table(
    dirs: Sequence[Path], entries: dict[str, RegistryEntry], notes: dict[str, str]
) -> None:
    console = _console()
    table = Table(title="SAIVerse llama.cpp models", title_justify="left")
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("display name")
    table.add_column("provider")
    table.add_column("model_path (resolved)", overflow="fold")
    table.add_column("file", justify="center")
    table.add_column("context", justify="right")
    table.add_column("GPU layers", justify="right")
    table.add_column("memory (fit)", justify="right")
    table.add_column("from")
    for key, entry in entries.items():
        origin = _origin(entry.path)
        if entry.overrides:
            origin += " (overrides " + ", ".join(_origin(p) for p in entry.overrides) + ")"
        cfg = entry.config
        if cfg is None:
            err = entry.error
            reason = f"{err.field}: {err.problem}" if err and err.field else "see below"
            table.add_row(
                key,
                Text("INVALID: " + (reason if err else "unknown error"), style="red"),
                "-",
                str(entry.path),
                Text("-", style="red"),
                "-",
                "-",
                "-",
                origin,
            )
            continue
        exists = cfg.model_path.is_file()
        display = Text(cfg.display_name)
        if key in notes:
            display.append(f"\n(warning: {notes[key]})", style="yellow")
        table.add_row(
            key,
            display,
            cfg.provider,
            str(cfg.model_path),
            Text("✓", style="green") if exists else Text("✗", style="red"),
            _context_cell(cfg, exists),
            _gpu_layers(cfg.n_gpu_layers),
            _memory_cell(cfg, exists),
            origin,
        )
    print_table(table)
    valid = sum(1 for e in entries.values() if e.valid)
    present = sum(1 for e in entries.values() if e.config and e.config.model_path.is_file())
    invalid = len(entries) - valid
    summary = (
        f"{len(entries)} configs: {valid} valid, {invalid} invalid; {present} model files present"
    )
    console.print(Text(summary, style="red" if invalid else ""))
    for entry in entries.values():
        if entry.error is not None:
            console.print(Text(f"✗ {entry.error}", style="red"), soft_wrap=True)
    console.print("Searched (lowest priority first):")
    for d in dirs:
        console.print(f"  {d}" + ("" if d.is_dir() else "  (missing)"), highlight=False)


def gguf_context(cfg: ModelConfig) -> tuple[int | None, str | None]:
    """The GGUF's trained context length (used when the config has none), or its problem."""
    try:
        info = read_gguf(cfg.model_path)
    except GGUFError as exc:
        log.warning("%s: model_path: %s", cfg.source or cfg.key, exc)
        return None, str(exc)
    return info.context_length, None


def _context_cell(cfg: ModelConfig, exists: bool) -> Text:
    if cfg.context_length is not None:
        return Text(str(cfg.context_length))
    if not exists:
        return Text("from GGUF")
    n_ctx, problem = gguf_context(cfg)
    if problem is not None:
        return Text("bad GGUF", style="red")
    return Text(f"{n_ctx} (GGUF)" if n_ctx else "? (GGUF)")


def config_footprint(cfg: ModelConfig) -> tuple[dict[str, Any] | None, str | None]:
    """``saiverse-llm fit``'s memory figures for the config as written, or the problem."""
    try:
        return fit.footprint(cfg), None
    except (GGUFError, fit.FitError) as exc:
        log.info("%s: no memory estimate: %s", cfg.source or cfg.key, exc)
        return None, str(exc)


def _memory_cell(cfg: ModelConfig, exists: bool) -> Text:
    if not exists:
        return Text("-")
    fp, _problem = config_footprint(cfg)  # the problem is logged
    if fp is None:
        return Text("?", style="yellow")
    return Text(fit.footprint_text(fp))


def _gpu_layers(n: int) -> str:
    if n == -1:
        return "all (-1)"
    if n == 0:
        return "0 (CPU)"
    return str(n)


# ---------------------------------------------------------------------------------------------
# Entry point

#: Sub-command registrars, in ``--help`` order. Add ``register_<name>`` functions here.
SUBCOMMANDS: list[Callable[[Subparsers], None]] = [
    register_list,
    register_check,
    register_chat,
    register_fit,
    register_fetch,
]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="saiverse-llm",
        description="The SAIVerse llama.cpp provider: model configs, checks and chat.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_common_options(parser, default_log_file=None, default_verbose=False)
    # Sub-command parsers are ArgumentParser (cli_errors) too: they inherit the error line.
    sub = cast("Subparsers", parser.add_subparsers(dest="command", metavar="COMMAND"))
    for register in SUBCOMMANDS:
        register(sub)
    for command_parser in sub.choices.values():
        # Also accepted after the command (`saiverse-llm list --log-file x`); SUPPRESS keeps
        # a value given before the command.
        _add_common_options(
            command_parser, default_log_file=argparse.SUPPRESS, default_verbose=argparse.SUPPRESS
        )
    return parser


def _add_common_options(
    parser: argparse.ArgumentParser, *, default_log_file: Any, default_verbose: Any
) -> None:
    parser.add_argument(
        "--log-file",
        type=Path,
        default=default_log_file,
        metavar="PATH",
        help=f"log file (default: $SAIVERSE_LOG_FILE or ./{DEFAULT_LOG_FILE})",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default_verbose,
        help="write DEBUG lines (llama.cpp's own log included) to the log file; default INFO "
        "(or $SAIVERSE_LOG_LEVEL)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default_verbose,
        help="print debug logs on stderr too (implies --debug)",
    )


#: Errors the commands raise on purpose (messages name the file, the field and the fix), with
#: their exit status: 2 for what the user gave (a config, a key, a value), 1 for failures.
#: Anything else is an internal error (see saiverse_llm.cli_errors).
KNOWN_ERRORS: dict[type[BaseException] | str, int] = {
    ConfigError: 2,
    ModelNotFoundError: 2,
    GGUFError: 1,
    **dict.fromkeys(RUN_ERRORS, 1),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``saiverse-llm``: error lines instead of tracebacks, exit 2 usage / 1 failure."""

    def setup(args: argparse.Namespace) -> Path | None:
        return setup_logging(args.log_file, verbose=args.verbose, debug=args.debug)

    return run_cli(build_parser(), argv, known=KNOWN_ERRORS, logger=log, setup=setup)


if __name__ == "__main__":
    sys.exit(main())
