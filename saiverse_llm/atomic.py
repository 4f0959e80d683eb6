"""Atomic file writes: a reader sees the old file or the complete new one, never a part.

The one home for writing any file that a later run reads (reports, ``status.json``, bench
JSON, ``llama-bench.json``, ``build.json``, cached models, wheels, markers)::

    from saiverse_llm.atomic import atomic_write_json, atomic_write_text, atomic_output

    atomic_write_json(path, doc)            # JSON document (UTF-8, trailing newline)
    atomic_write_text(path, text)           # text
    atomic_copy(src, path)                  # a copy of another file (a wheel, a build.json)
    publish_dir(tmp_folder, path)           # a complete folder (a cache entry, a venv)
    with atomic_output(path) as tmp:        # anything a library writes to a path:
        fig.savefig(tmp)                    #   matplotlib, tarfile, zipfile, a download...

Each writes a temporary file in the target's own folder (same file system, so the rename is
atomic; the name starts with ``.`` and ends in ``.part``, so it never looks like a model, a
report or a wheel), flushes it to disk (``fsync``), gives it normal permissions
(``0o666 & ~umask``), renames it over the target with :func:`os.replace`, then fsyncs the
folder (best effort). An exception, a ``KeyboardInterrupt`` or a ``SIGKILL`` before the
rename leaves the old target untouched (after a ``SIGKILL`` a stray ``.part`` file may stay
behind; nothing reads those).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_copy",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "publish",
    "publish_dir",
    "temp_path_beside",
]

PART_SUFFIX = ".part"


def temp_path_beside(target: str | os.PathLike[str]) -> Path:
    """A new empty temporary file in ``target``'s folder (created with its parents).

    Its name is ``.<target name>.<random>.part``. The caller fills it and then calls
    :func:`publish`, or removes it on failure; :func:`atomic_output` does both.
    """
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PART_SUFFIX, dir=path.parent)
    os.close(fd)
    return Path(name)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """fsync ``tmp``, give it normal permissions, rename it over ``target``, fsync the folder.

    ``tmp`` must be in ``target``'s folder (see :func:`temp_path_beside`). Raises ``OSError``
    from the file system (``tmp`` is then left for the caller to remove).
    """
    tmp_path, target_path = Path(tmp), Path(target)
    with open(tmp_path, "rb+") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp_path, 0o666 & ~_umask())
    os.replace(tmp_path, target_path)
    with contextlib.suppress(OSError):  # a folder fsync is best effort (not on every FS)
        dir_fd = os.open(target_path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; publish it when the block ends normally.

    On any exception (``KeyboardInterrupt`` included) the temporary file is removed, the
    exception propagates and ``target`` keeps its old content (or stays absent).
    """
    tmp = temp_path_beside(target)
    try:
        yield tmp
        publish(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically make ``target`` hold exactly ``data``; returns ``target`` as a Path."""
    with atomic_output(target) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return Path(target)


def atomic_write_text(
    target: str | os.PathLike[str], text: str, *, encoding: str = "utf-8"
) -> Path:
    """Atomically make ``target`` hold ``text`` (UTF-8 by default); returns the path."""
    return atomic_write_bytes(target, text.encode(encoding))


def atomic_write_json(
    target: str | os.PathLike[str],
    obj: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    ensure_ascii: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> Path:
    """Atomically write ``obj`` as a JSON document with a trailing newline (UTF-8).

    The document is fully serialised before the file is touched, so an object that cannot be
    serialised (``TypeError``/``ValueError``) leaves ``target`` as it was.
    """
    text = json.dumps(
        obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=default
    )
    return atomic_write_text(target, text + "\n")


def atomic_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Atomically make ``target`` a copy of ``source`` (content and modification time)."""
    with atomic_output(target) as tmp:
        shutil.copyfile(source, tmp)
        shutil.copystat(source, tmp)
    return Path(target)


def publish_dir(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Put the complete folder ``tmp`` in place as ``target`` (same file system): an existing
    ``target`` is first renamed aside (``.<name>.old-<pid>``), then ``tmp`` is renamed to
    ``target`` and the old folder removed. If that rename fails, the old folder is put back
    and the error raised. Readers never see a half-filled ``target``."""
    src, dest = Path(tmp), Path(target)
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    try:
        os.replace(src, dest)
    except BaseException:
        if old is not None and not dest.exists():
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest
