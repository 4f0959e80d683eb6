"""``llama-harness``: one sub-command per module in :mod:`harness.commands`.

Each module there defines ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).

Every command runs through :func:`saiverse_llm.cli_errors.run_cli`: a problem is one line
``error: <what>. Fix: <what to do>`` on stderr (exit 2 for usage, 1 for failures), never a
traceback, and nothing printed shows a secret. A command reports a problem by raising
:class:`saiverse_llm.user_errors.UserError` or one of :data:`KNOWN_ERRORS`; anything else is
an internal error whose traceback goes to the harness log (``<cache>/logs/llama-harness.log``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import logging.handlers
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from harness import __version__, commands, paths
from saiverse_llm.cli_errors import (
    ArgumentParser,
    LogFileHandler,
    StderrHandler,
    replace_cli_handlers,
    run_cli,
)
from saiverse_llm.redact import RedactingFormatter

log = logging.getLogger("harness.cli")

LOG_NAME = "llama-harness.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Errors the harness raises on purpose, by dotted class name (subclasses count), with their
#: exit status: 2 when what the user gave is wrong (a variant name, a config, a manifest, a
#: replay case), 1 when the work failed. Their messages name the file and the fix.
KNOWN_ERRORS: dict[type[BaseException] | str, int] = {
    "harness.build.variants.VariantError": 2,
    "harness.build.native_tools.UnknownToolError": 2,
    "harness.models.model_manifest.ManifestError": 2,
    "harness.doctor.repro.CaseError": 2,
    "harness.ship.ci_matrix.MatrixError": 2,
    "harness.doctor.doctor.CatalogueError": 2,
    "saiverse_llm.config.ConfigError": 2,
    "saiverse_llm.registry.ModelNotFoundError": 2,
    "harness.build.build.BuildError": 1,
    "harness.build.wheel_cache.CacheError": 1,
    "harness.build.toolchain.ToolchainError": 1,
    "harness.build.native_tools.NativeToolsError": 1,
    "harness.bench.llama_bench.LlamaBenchError": 1,
    "harness.build.buildinfo.BuildInfoError": 1,
    "harness.ship.bundle.BundleError": 1,
    "harness.ship.container.ContainerError": 1,
    "harness.download.DownloadError": 1,
    "harness.models.model_manifest.ModelFetchError": 1,
    "harness.models.synth.SynthError": 1,
    "harness.doctor.repro.ReplayError": 1,
    "harness.bench.report.ReportError": 2,  # a results file or folder given is wrong
    "saiverse_llm.gguf_file.GGUFError": 1,
    "saiverse_llm.pool.ModelLoadError": 1,
}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="llama-harness",
        description="Build, verify, test and benchmark llama-cpp-python variants.",
        epilog="Exit status: 0 done, 1 failed, 2 usage error (a bad option, name or setting).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Sub-command parsers are ArgumentParser (cli_errors) too: they inherit the error line.
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND"),
    )
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def setup_logging(args: argparse.Namespace) -> Path | None:
    """Warnings on stderr (one line each) and everything at INFO to the rotating harness log
    ``<cache>/logs/llama-harness.log`` (1 MiB x 3), both redacted. Returns the log's path, or
    None when it cannot be written (then stderr only)."""
    logging.getLogger().setLevel(logging.INFO)
    console = StderrHandler("%(message)s")
    console.setLevel(logging.WARNING)
    replace_cli_handlers(console)
    path = paths.logs_dir() / LOG_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = LogFileHandler(path, maxBytes=1024 * 1024, backupCount=3, encoding="utf-8")
    except OSError as exc:
        log.warning(
            "cannot write the harness log %s (%s); logging to stderr only. Fix: set "
            "LLAMA_HARNESS_CACHE to a writable folder",
            path,
            exc.strerror or exc,
        )
        return None
    handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    replace_cli_handlers(console, handler)
    log.info("llama-harness %s", getattr(args, "command", None) or "(no command)")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``llama-harness``: error lines instead of tracebacks, exit 2 usage / 1 failure."""
    return run_cli(build_parser(), argv, known=KNOWN_ERRORS, logger=log, setup=setup_logging)


if __name__ == "__main__":
    sys.exit(main())
