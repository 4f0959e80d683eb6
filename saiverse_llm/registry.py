"""Where model configs come from: an ordered list of directories, later ones overriding.

Directories, lowest priority first (see :func:`config_dirs`):

1. the project's ``models/`` (shipped configs),
2. the user's directory: ``$SAIVERSE_USER_DATA_DIR/models`` if that variable is set, else
   ``~/.saiverse/user_data/models``,
3. each directory in ``$SAIVERSE_MODELS_PATH`` (``os.pathsep``-separated; the first entry
   has the highest priority, as with ``PATH``).

Every ``*.json`` file in a directory is one model; its name without ``.json`` is the key. A
file in a later directory replaces the same key from an earlier one, even when it is invalid
(an invalid override is shown as invalid rather than silently falling back). A broken file
never hides the others: :func:`discover` returns it as an entry with its error.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from saiverse_llm.config import ConfigError, ModelConfig, load_config_file

log = logging.getLogger(__name__)

#: The checkout (or install) root: ``saiverse_llm/`` lives directly under it.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RegistryEntry:
    """One discovered config file: either ``config`` or ``error`` is set."""

    key: str
    path: Path
    config: ModelConfig | None = None
    error: ConfigError | None = None
    #: Files with the same key that this one overrides (lower-priority directories).
    overrides: tuple[Path, ...] = ()

    @property
    def valid(self) -> bool:
        return self.config is not None


class ModelNotFoundError(LookupError):
    """No config file has the requested key."""

    def __init__(self, key: str, available: Sequence[str], dirs: Sequence[Path]) -> None:
        self.key = key
        self.available = list(available)
        self.dirs = list(dirs)
        close = difflib.get_close_matches(key, self.available, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        searched = ", ".join(str(d) for d in self.dirs) or "(no directories)"
        known = ", ".join(self.available) or "none"
        super().__init__(
            f"no model config named {key!r} (looked for {key}.json in: {searched}).{hint} "
            f"Available: {known}. Fix: create {key}.json in one of those directories, "
            "or run `saiverse-llm list` to see the keys"
        )

    def __str__(self) -> str:
        return str(self.args[0])


def project_models_dir() -> Path:
    """The project's shipped ``models/`` directory."""
    return PROJECT_ROOT / "models"


def user_models_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$SAIVERSE_USER_DATA_DIR/models``, else ``~/.saiverse/user_data/models``."""
    environ = os.environ if env is None else env
    base = environ.get("SAIVERSE_USER_DATA_DIR")
    if base:
        return Path(base).expanduser() / "models"
    return Path.home() / ".saiverse" / "user_data" / "models"


def extra_models_dirs(env: Mapping[str, str] | None = None) -> list[Path]:
    """The directories in ``$SAIVERSE_MODELS_PATH``, highest priority first."""
    environ = os.environ if env is None else env
    raw = environ.get("SAIVERSE_MODELS_PATH", "")
    return [Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip()]


def config_dirs(env: Mapping[str, str] | None = None) -> list[Path]:
    """Config directories, lowest priority first (a later directory overrides an earlier)."""
    dirs = [project_models_dir(), user_models_dir(env)]
    dirs.extend(reversed(extra_models_dirs(env)))
    unique: list[Path] = []
    for d in dirs:
        # A directory listed twice counts once, at its highest priority.
        unique = [u for u in unique if not _same_dir(u, d)] + [d]
    return unique


def search_dirs(extra: Sequence[Path] = ()) -> list[Path]:
    """:func:`config_dirs` plus ``extra`` (``--dir`` arguments, the first given has the
    highest priority)."""
    return [*config_dirs(), *reversed([d.expanduser() for d in extra])]


def _same_dir(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def discover(dirs: Sequence[Path] | None = None) -> dict[str, RegistryEntry]:
    """All config files in ``dirs`` (default :func:`config_dirs`), by key, sorted by key.

    Missing directories are skipped. Later directories override earlier ones.
    """
    search = list(config_dirs() if dirs is None else dirs)
    found: dict[str, RegistryEntry] = {}
    for directory in search:
        for path in _config_files(directory):
            key = path.stem
            previous = found.get(key)
            overrides = (*previous.overrides, previous.path) if previous else ()
            if previous is not None:
                log.info("%s overrides %s", path, previous.path)
            found[key] = _load_entry(key, path, overrides)
    return {key: found[key] for key in sorted(found)}


def _config_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    try:
        files = [
            p
            for p in directory.iterdir()
            if p.suffix.lower() == ".json" and not p.name.startswith(".") and p.is_file()
        ]
    except OSError as exc:
        log.warning("cannot list model configs in %s: %s", directory, exc)
        return []
    return sorted(files)


def _load_entry(key: str, path: Path, overrides: tuple[Path, ...]) -> RegistryEntry:
    try:
        config = load_config_file(path)
    except ConfigError as exc:
        log.warning("invalid model config: %s", exc)
        return RegistryEntry(key=key, path=path, error=exc, overrides=overrides)
    except Exception as exc:  # a bug in the checks must not hide the other configs
        log.error("unexpected error reading the model config %s", path, exc_info=True)
        error = ConfigError(
            f"could not be checked ({type(exc).__name__}: {exc})",
            file=path,
            fix="this is a bug in saiverse_llm: report it with the file and the log",
        )
        return RegistryEntry(key=key, path=path, error=error, overrides=overrides)
    return RegistryEntry(key=key, path=path, config=config, overrides=overrides)


def get_config(key: str, dirs: Sequence[Path] | None = None) -> ModelConfig:
    """The valid config named ``key``.

    Raises :class:`ModelNotFoundError` when no file has that key, and the file's
    :class:`ConfigError` when it is invalid.
    """
    search = list(config_dirs() if dirs is None else dirs)
    files = {path.stem: path for directory in search for path in _config_files(directory)}
    path = files.get(key)
    if path is None:
        raise ModelNotFoundError(key, sorted(files), search)
    return load_config_file(path)


def add_config_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--dir DIR`` (repeatable) on a command that reads configs: extra config directories
    for :func:`search_dirs`, highest priority (``args.dirs``)."""
    parser.add_argument(
        "--dir",
        dest="dirs",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="also read configs from DIR (highest priority; may be repeated)",
    )
