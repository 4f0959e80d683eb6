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
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

from saiverse_llm import cache_dirs
from saiverse_llm.atomic import atomic_write_json, publish, temp_path_beside
from saiverse_llm.progress import StepProgress

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


class Tasks:
    """Progress of the byte-counting steps of one fetch (a download, assembling or hashing a
    file, a synthesis), shown one at a time: each step is a
    :class:`~saiverse_llm.progress.StepProgress` (a rich bar in a terminal, a line at least
    every 30 s in a log) and adding a step ends the one before.

    ``add_task``/``advance``/``update`` follow rich's ``Progress`` names.
    """

    def __init__(self) -> None:
        self._steps: list[StepProgress] = []
        self._open: int | None = None

    def add_task(self, description: str, total: float | None = None, completed: float = 0) -> int:
        self.end()
        step = StepProgress(description, total=int(total) if total else None, unit="bytes")
        step.__enter__()
        self._steps.append(step)
        self._open = len(self._steps) - 1
        if completed:
            step.update(completed)
        return self._open

    def advance(self, task: int, advance: float = 1) -> None:
        if task == self._open:
            step = self._steps[task]
            step.update(step.done + advance)

    def update(
        self, task: int, *, completed: float | None = None, total: float | None = None
    ) -> None:
        if task == self._open:
            step = self._steps[task]
            step.update(step.done if completed is None else completed, total)

    def end(self, task: int | None = None) -> None:
        """End ``task`` (default: the open one); its last line says "done"."""
        if self._open is not None and task in (None, self._open):
            self._steps[self._open].__exit__(None, None, None)
            self._open = None


_ACTIVE: list[Tasks] = []
_LABELS: list[str] = []  # the file hub_download is fetching (huggingface_hub's desc is a URL)


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[Tasks | None]:
    """Progress for the fetch steps inside the block (:class:`Tasks`), or None when disabled.
    Hub downloads started inside the block report to it."""
    if not enabled:
        yield None
        return
    tasks = Tasks()
    _ACTIVE.append(tasks)
    try:
        yield tasks
    finally:
        _ACTIVE.remove(tasks)
        tasks.end()


class RichTqdm(hf_tqdm):
    """A tqdm that ``huggingface_hub`` drives but that reports to the active :class:`Tasks`
    (a bar in a terminal, lines in a log)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True  # tqdm draws nothing itself
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._tasks: Tasks | None = _ACTIVE[-1] if _ACTIVE else None
        self._task: int | None = None
        if self._tasks is not None:
            desc = _LABELS[-1] if _LABELS else str(kwargs.get("desc") or "file")
            total = kwargs.get("total")
            self._task = self._tasks.add_task(
                f"download {desc}",
                total=float(total) if total else None,
                completed=float(kwargs.get("initial") or 0),
            )

    def update(self, n: float | None = 1) -> bool | None:
        if self._tasks is not None and self._task is not None and n:
            self._tasks.advance(self._task, float(n))
        return None

    def close(self) -> None:
        if self._tasks is not None and self._task is not None:
            self._tasks.end(self._task)
            self._task = None


# --------------------------------------------------------------------------- hub


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hub_cache_dir() -> Path:
    """The Hub cache as ``huggingface_hub`` would pick it, evaluated now: ``$HF_HUB_CACHE``,
    else ``$HF_HOME/hub``, else ``huggingface/hub`` in
    :func:`saiverse_llm.cache_dirs.user_cache_home`."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    return cache_dirs.user_cache_home() / "huggingface" / "hub"


def _remove_from_hub_cache(pointer: Path) -> str:
    """Delete a cached Hub file: the snapshot pointer and the blob it points to."""
    removed: list[str] = []
    blob = pointer.resolve() if pointer.is_symlink() else None
    for p in (pointer, blob):
        if p is not None and (p.exists() or p.is_symlink()):
            p.unlink()
            removed.append(str(p))
    return ", ".join(removed)


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class HubFile:
    """A verified file in the Hub cache.

    ``checked_against`` says what its ``sha256`` was compared with: ``"pinned"`` (the sha256
    the caller gave), ``"hub-lfs"`` (none was given: the Hub's own LFS sha256 of the file,
    which ``huggingface_hub`` uses as the blob name) or ``"none"`` (neither: a non-LFS file
    and no pinned sha256; nothing could be checked).
    """

    path: Path
    sha256: str
    checked_against: str


def hub_download(
    repo_id: str,
    filename: str,
    *,
    revision: str,
    sha256: str | None,
    size: int | None = None,
    offline: bool | None = None,
) -> HubFile:
    """Fetch ``filename`` from ``repo_id`` at ``revision`` into the Hub cache and verify it.

    With ``sha256`` the bytes must match it; without, they must match the Hub's LFS sha256
    (the ETag of an LFS file; see :class:`HubFile`). Raises :class:`ChecksumError` when the
    bytes are wrong (the bad copy is removed from the cache first) and :class:`DownloadError`
    for anything else (offline with an empty cache, network or HTTP errors, an interrupted
    transfer).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    local_only = hub_offline() if offline is None else offline
    endpoint = os.environ.get("HF_ENDPOINT") or None
    where = f"{endpoint or 'https://huggingface.co'}/{repo_id} ({filename}@{revision})"
    _LABELS.append(filename.rsplit("/", 1)[-1])
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
    finally:
        _LABELS.pop()

    blob_name = cached.resolve().name
    lfs = blob_name if _HEX64.match(blob_name) else None
    want, against = (sha256, "pinned") if sha256 else (lfs, "hub-lfs" if lfs else "none")
    actual_size = cached.stat().st_size
    if size is not None and actual_size != size:
        actual = None
    else:
        actual = sha256_file(cached, progress=_hash_progress(cached.name, actual_size))
    if want is not None and actual != want:
        removed = _remove_from_hub_cache(cached)
        got = f"sha256 {actual}" if actual is not None else f"{actual_size} bytes"
        expected = f"sha256 {want}" if actual is not None else f"{size} bytes"
        whose = "" if against == "pinned" else " (the Hub's LFS sha256)"
        raise ChecksumError(
            f"{where}: downloaded file has {got}, expected {expected}{whose}; removed it from "
            f"the Hub cache ({removed}). The upstream file changed or the transfer was "
            "corrupted: check the revision and sha256 (test-model manifest or the config's "
            "source), then fetch again."
        )
    assert actual is not None
    return HubFile(path=cached, sha256=actual, checked_against=against)


def _hash_progress(name: str, size: int) -> Callable[[int], None] | None:
    """Progress for hashing a big file (several GB take a minute) in the active display."""
    if not _ACTIVE or size < 512 * 1024 * 1024:
        return None
    display = _ACTIVE[-1]
    task = display.add_task(f"sha256 {name}", total=float(size))
    return lambda n: display.advance(task, float(n))


# --------------------------------------------------------------------------- verified copies


def _stamp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.verified")


def _stamp(target: Path) -> dict[str, Any]:
    st = target.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def mark_verified(target: Path, sha256: str) -> None:
    """Record beside ``target`` that its bytes have ``sha256`` (a hidden stamp file naming
    the size, mtime and inode: any change to the file invalidates it)."""
    atomic_write_json(_stamp_path(target), {"sha256": sha256, **_stamp(target)}, indent=None)


def stamped_sha256(target: Path) -> str | None:
    """The sha256 recorded by :func:`mark_verified` if the file is unchanged since, else None."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        stamp = json.loads(_stamp_path(target).read_text(encoding="utf-8"))
        sha = stamp.pop("sha256")
        if stamp == _stamp(target) and isinstance(sha, str):
            return sha
    return None


def forget_verified(target: Path) -> None:
    _stamp_path(target).unlink(missing_ok=True)


@dataclass(frozen=True)
class Fetched:
    """One file :func:`fetch_file` put in place (or found there already)."""

    path: Path
    sha256: str
    checked_against: str  # "pinned", "hub-lfs", "none", or "local" (already there, stamped)
    downloaded: bool


def fetch_file(
    repo_id: str,
    filename: str,
    target: Path,
    *,
    revision: str,
    sha256: str | None = None,
    size: int | None = None,
    offline: bool | None = None,
    force: bool = False,
) -> Fetched:
    """Make ``target`` a verified copy of ``filename`` from the Hub repo ``repo_id``.

    A file already at ``target`` is kept when a stamp (or, with ``sha256``, a fresh hash)
    shows it has the right bytes; one with the wrong bytes is moved aside to
    ``<name>.corrupt``, never overwritten in place. Otherwise the file is downloaded through
    :func:`hub_download` (verified there) and put at ``target`` atomically (hard link or copy
    through a temporary file). ``force`` downloads again whatever is there.
    """
    target = target.expanduser()
    if target.is_file() and not force:
        known = stamped_sha256(target)
        if known is not None and (sha256 is None or known == sha256):
            return Fetched(target, known, "local", downloaded=False)
        if sha256 is not None and sha256_file(target) == sha256:
            mark_verified(target, sha256)
            return Fetched(target, sha256, "local", downloaded=False)
    hub = hub_download(repo_id, filename, revision=revision, sha256=sha256, size=size,
                       offline=offline)  # fmt: skip
    if target.is_file():
        if stamped_sha256(target) == hub.sha256 or sha256_file(target) == hub.sha256:
            mark_verified(target, hub.sha256)
            return Fetched(target, hub.sha256, hub.checked_against, downloaded=False)
        quarantine(target)
    forget_verified(target)
    place(hub.path, target)
    mark_verified(target, hub.sha256)
    return Fetched(target, hub.sha256, hub.checked_against, downloaded=True)
