"""Careful file I/O and Hub downloads.

Every file the harness produces or fetches goes through the same steps
(:mod:`saiverse_llm.atomic`): write to a temporary name beside the target, check its sha256,
then rename it into place (``os.replace`` is atomic on one file system). A crash or an
interrupted download therefore never leaves a partial or unverified file under a name a later
run would use.

Hub downloads go through :func:`huggingface_hub.hf_hub_download` (its cache, ``HF_HOME``,
``HF_HUB_CACHE``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``). The environment is read at call
time, not at import time, so tests and users can switch endpoints and offline mode freely.
A cached Hub file whose sha256 is wrong is removed from the Hub cache (blob and pointer),
never handed on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from huggingface_hub.utils.tqdm import tqdm as hf_tqdm
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from saiverse_llm.atomic import publish, temp_path_beside

_CHUNK = 4 * 1024 * 1024
_TRUE = {"1", "true", "yes", "on"}


class DownloadError(RuntimeError):
    """A download or a check of a downloaded file failed; the message says what to do."""


class ChecksumError(DownloadError):
    """A file's sha256 (or size) is not what the manifest says."""


# --------------------------------------------------------------------------- files


def sha256_file(
    path: str | os.PathLike[str], *, progress: Callable[[int], None] | None = None
) -> str:
    """Hex sha256 of a file, read in chunks; ``progress(n)`` is called with each chunk size."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
            if progress is not None:
                progress(len(block))
    return digest.hexdigest()


def quarantine(path: Path) -> Path:
    """Move a bad file aside to ``<name>.corrupt`` (replacing an older one) and return it."""
    bad = path.with_name(path.name + ".corrupt")
    os.replace(path, bad)
    return bad


def place(source: Path, target: Path) -> None:
    """Make ``target`` a verified copy of ``source``: a hard link when both live on one file
    system, else a copy through a temporary file. Never a symlink into a cache that may be
    cleaned."""
    source = source.resolve()  # the Hub cache's snapshot entry is a relative symlink
    tmp = temp_path_beside(target)
    try:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                while block := src.read(_CHUNK):
                    dst.write(block)
        publish(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- progress


def make_progress() -> Progress:
    """The harness's download/synthesis progress bar (rich, to stderr)."""
    from rich.console import Console

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


_ACTIVE: list[Progress] = []


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[Progress | None]:
    """A rich progress display for the duration of the block (or None when disabled)."""
    if not enabled:
        yield None
        return
    progress = make_progress()
    _ACTIVE.append(progress)
    try:
        with progress:
            yield progress
    finally:
        _ACTIVE.remove(progress)


class RichTqdm(hf_tqdm):
    """A tqdm that ``huggingface_hub`` drives but that draws with the active rich progress."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True  # tqdm draws nothing itself
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._rich: Progress | None = _ACTIVE[-1] if _ACTIVE else None
        self._task: TaskID | None = None
        if self._rich is not None:
            desc = str(kwargs.get("desc") or "download")
            total = kwargs.get("total")
            self._task = self._rich.add_task(
                desc, total=float(total) if total else None, completed=kwargs.get("initial", 0)
            )

    def update(self, n: float | None = 1) -> bool | None:
        if self._rich is not None and self._task is not None and n:
            self._rich.advance(self._task, float(n))
        return None

    def close(self) -> None:
        if self._rich is not None and self._task is not None:
            self._rich.refresh()


# --------------------------------------------------------------------------- hub


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hub_cache_dir() -> Path:
    """The Hub cache as ``huggingface_hub`` would pick it, evaluated now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _remove_from_hub_cache(pointer: Path) -> str:
    """Delete a cached Hub file: the snapshot pointer and the blob it points to."""
    removed: list[str] = []
    blob = pointer.resolve() if pointer.is_symlink() else None
    for p in (pointer, blob):
        if p is not None and (p.exists() or p.is_symlink()):
            p.unlink()
            removed.append(str(p))
    return ", ".join(removed)


def hub_download(
    repo_id: str,
    filename: str,
    *,
    revision: str,
    sha256: str,
    size: int | None = None,
    offline: bool | None = None,
) -> Path:
    """Fetch ``filename`` from ``repo_id`` at ``revision`` into the Hub cache and verify it.

    Returns the cached path. Raises :class:`ChecksumError` when the bytes are wrong (the bad
    copy is removed from the cache first) and :class:`DownloadError` for anything else
    (offline with an empty cache, network or HTTP errors, an interrupted transfer).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    local_only = hub_offline() if offline is None else offline
    endpoint = os.environ.get("HF_ENDPOINT") or None
    where = f"{endpoint or 'https://huggingface.co'}/{repo_id} ({filename}@{revision})"
    try:
        cached = Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=hub_cache_dir(),
                endpoint=endpoint,
                local_files_only=local_only,
                tqdm_class=RichTqdm,
            )
        )
    except LocalEntryNotFoundError as exc:
        if local_only:
            raise DownloadError(
                f"{where}: not in the Hub cache {hub_cache_dir()} and offline mode is on "
                "(HF_HUB_OFFLINE=1 or --offline)"
            ) from exc
        raise DownloadError(
            f"{where}: the Hub cannot be reached and the file is not in the Hub cache "
            f"{hub_cache_dir()} ({exc.__cause__ or type(exc).__name__}); without network use "
            "--offline or HF_HUB_OFFLINE=1 to go straight to the other sources"
        ) from exc
    except Exception as exc:  # network, HTTP, interrupted transfer, disk errors
        raise DownloadError(f"{where}: {type(exc).__name__}: {exc}") from exc

    actual_size = cached.stat().st_size
    actual = sha256_file(cached) if size is None or actual_size == size else None
    if actual != sha256:
        removed = _remove_from_hub_cache(cached)
        got = f"sha256 {actual}" if actual is not None else f"{actual_size} bytes"
        want = f"sha256 {sha256}" if actual is not None else f"{size} bytes"
        raise ChecksumError(
            f"{where}: downloaded file has {got}, expected {want}; removed it from the Hub "
            f"cache ({removed}). The upstream file changed or the transfer was corrupted: "
            "check the manifest's revision and sha256, then fetch again."
        )
    return cached
