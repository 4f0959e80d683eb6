"""How much more memory this process's cgroup (its container) may use.

A container's memory limit (``docker run --memory``, a Kubernetes limit, a systemd
``MemoryMax``) is a cgroup limit that ``/proc/meminfo`` does not show: ``MemAvailable`` is
the whole machine's. A process that goes past the limit is ended by the kernel's OOM killer
as surely as one that goes past the machine's RAM, so the memory checks
(:func:`saiverse_llm.fit.available_memory`) take the smaller of the two.

Read from the cgroup file system (``root``, default ``/sys/fs/cgroup``), for the process's
own cgroup (``/proc/self/cgroup``) and every cgroup above it that has a limit:

* cgroup v2 (``0::/path``; one hierarchy at the root): ``memory.max`` ("max": no limit),
  ``memory.current``, ``inactive_file`` of ``memory.stat``;
* cgroup v1 (a ``memory`` controller line; its hierarchy at ``<root>/memory``):
  ``memory.limit_in_bytes`` (about 2**63: no limit), ``memory.usage_in_bytes``,
  ``total_inactive_file`` of ``memory.stat``.

The room at one level is its limit minus what its processes use that the kernel cannot
drop (usage minus inactive file cache, as ``docker stats`` and the kubelet count it). A
container sees its own cgroup as the root, where the path in ``/proc/self/cgroup`` does not
exist: then the root's files are read. Missing or unreadable files mean no limit known.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 writes "no limit" as the largest page count times the page size (~2**63)
_NO_LIMIT = 2**62


class _Files(NamedTuple):
    limit: str
    usage: str
    inactive: str  # the key in memory.stat


_V2 = _Files("memory.max", "memory.current", "inactive_file")
_V1 = _Files("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def memory_headroom(root: Path | None = None, self_cgroup: Path | None = None) -> int | None:
    """Bytes this process's cgroups can still take before one reaches its memory limit (the
    smallest room of its cgroup and those above it), or None when none has a limit or the
    files cannot be read (no cgroups, another OS). ``root``: the cgroup file system (default
    :data:`CGROUP_ROOT`); ``self_cgroup``: the process's cgroup list (default
    :data:`SELF_CGROUP`)."""
    root = CGROUP_ROOT if root is None else root
    v1_path, v2_path = _own_paths(SELF_CGROUP if self_cgroup is None else self_cgroup)
    if v1_path is not None and (root / "memory").is_dir():
        return _room(root / "memory", v1_path, _V1)
    return _room(root, v2_path or "/", _V2)


def _own_paths(self_cgroup: Path) -> tuple[str | None, str | None]:
    """(v1 memory cgroup path, v2 cgroup path) of the process, None where absent."""
    v1: str | None = None
    v2: str | None = None
    try:
        text = self_cgroup.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v1, v2


def _room(base: Path, path: str, files: _Files) -> int | None:
    own = base / path.lstrip("/")
    folder = own if path.strip("/") and own.is_dir() else base
    room: int | None = None
    while True:
        limit = _read_bytes(folder / files.limit)
        usage = _read_bytes(folder / files.usage)
        if limit is not None and usage is not None:
            used = max(0, usage - _stat(folder / "memory.stat", files.inactive))
            here = max(0, limit - used)
            room = here if room is None else min(room, here)
        if folder == base or base not in folder.parents:
            return room
        folder = folder.parent


def _read_bytes(path: Path) -> int | None:
    """A byte count from a cgroup file; None for "max", no limit, or a missing file."""
    try:
        value = int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):  # "max" is a ValueError
        return None
    return value if 0 <= value < _NO_LIMIT else None


def _stat(path: Path, key: str) -> int:
    """``key``'s value in a ``memory.stat`` file (0 when absent)."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return 0
    for line in lines:
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0
