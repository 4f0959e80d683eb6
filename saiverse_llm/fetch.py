"""``saiverse-llm fetch MODEL``: download a model's GGUF from the config's ``source``.

The config's ``source`` (:class:`saiverse_llm.config.ModelSource`) names the Hugging Face
repo, the file (or the parts of a split model), the revision and the sha256. The file is
downloaded through ``huggingface_hub`` (its cache, ``HF_HOME``, ``HF_ENDPOINT``,
``HF_HUB_OFFLINE`` and ``HF_TOKEN`` apply), checked, and put at the config's ``model_path``
atomically by :func:`saiverse_llm.download.fetch_file`, the same code
``llama-harness models fetch`` uses for the test models.

A config without a sha256 is still checked: against the Hub's own LFS sha256 of the file
(the ETag ``huggingface_hub`` stores the blob under). The value is then printed, to be
pinned in the config.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from saiverse_llm.config import ModelConfig
from saiverse_llm.download import DownloadError, Fetched, fetch_file, progress_bars
from saiverse_llm.registry import add_config_dir_argument

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

log = logging.getLogger(__name__)

Say = Callable[[str], None]


class FetchError(RuntimeError):
    """A model cannot be fetched; the message names the config, the field and the fix."""


def fetch_command(key: str) -> str:
    """The command that fetches the model of config ``key``."""
    return f"saiverse-llm fetch {key}"


def fetch_model(
    config: ModelConfig,
    *,
    progress: bool = False,
    offline: bool | None = None,
    force: bool = False,
) -> list[Fetched]:
    """Download and verify every file of ``config``'s model into place (see the module doc).

    Returns one :class:`~saiverse_llm.download.Fetched` per file, the first at
    ``config.model_path``. Raises :class:`FetchError` when the config has no ``source`` and
    :class:`~saiverse_llm.download.DownloadError` (or its ``ChecksumError``) when a download
    or a check fails; nothing unverified is left at ``model_path`` then.
    """
    source = config.model_source
    where = str(config.source) if config.source else f"model config {config.key!r}"
    if source is None:
        raise FetchError(
            f"{where}: source: not set, so there is nothing to download {config.model_path} "
            'from. Fix: add "source": {"repo_id": "owner/name", "filename": "<file>.gguf", '
            '"revision": "<commit>", "sha256": "<sha256>"} to the config, or put the GGUF '
            "at model_path yourself"
        )
    results: list[Fetched] = []
    with progress_bars(progress):
        for file, target in zip(source.files, config.model_files(), strict=True):
            log.info(
                "fetch %s: %s %s@%s -> %s",
                config.key,
                source.repo_id,
                file.filename,
                source.revision,
                target,
            )
            results.append(
                fetch_file(
                    source.repo_id,
                    file.filename,
                    target,
                    revision=source.revision,
                    sha256=file.sha256,
                    offline=offline,
                    force=force,
                )
            )
    return results


# --------------------------------------------------------------------------- command


def register_fetch(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "fetch",
        help="download a model's GGUF from the config's source (verified, atomic)",
        description=(
            'Download the GGUF file(s) named in MODEL\'s config ("source": repo_id, filename, '
            "revision, sha256) from the Hugging Face Hub into the config's model_path. The "
            "bytes are checked against the config's sha256 (or, when it has none, the Hub's "
            "own LFS sha256) before the file is put in place; a file already there with the "
            "right bytes is kept. huggingface_hub's settings apply (HF_HOME, HF_ENDPOINT, "
            "HF_HUB_OFFLINE, HF_TOKEN for gated repos)."
        ),
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="config key(s)")
    add_config_dir_argument(parser)
    parser.add_argument(
        "--offline",
        action="store_true",
        help="use only the Hub cache, never the network (like HF_HUB_OFFLINE=1)",
    )
    parser.add_argument("--force", action="store_true", help="download again even if present")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=cmd_fetch)


def cmd_fetch(args: argparse.Namespace) -> int:
    from saiverse_llm.registry import config_dirs, get_config

    status = 0
    dirs: Sequence[Path] = [*config_dirs(), *reversed([d.expanduser() for d in args.dirs])]
    for key in args.models:
        config = get_config(key, dirs=dirs)  # ConfigError / ModelNotFoundError: exit 2
        try:
            fetched = fetch_model(
                config,
                progress=not args.quiet,
                offline=True if args.offline else None,
                force=args.force,
            )
        except FetchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
            continue
        except DownloadError as exc:
            log.info("fetch %s failed: %s", key, exc)
            print(
                f"error: {key}: {exc}. Fix: the cause above, then rerun `{fetch_command(key)}`",
                file=sys.stderr,
            )
            status = max(status, 1)
            continue
        for item in fetched:
            how = {
                "pinned": "sha256 matches the config",
                "hub-lfs": "sha256 matches the Hub's LFS sha256; the config pins none",
                "none": "NOT verified: the config pins no sha256 and the Hub gave none",
                "local": "already there, sha256 checked",
            }[item.checked_against]
            print(f"{item.path}  sha256 {item.sha256}  ({how})")
        if config.model_source is not None and not config.model_source.pinned:
            shas = [f.sha256 for f in fetched]
            value = shas[0] if len(shas) == 1 else shas
            print(
                f"note: pin it: set source.sha256 in {config.source or key} to {value!r}".replace(
                    "'", '"'
                ),
                file=sys.stderr,
            )
    return status
