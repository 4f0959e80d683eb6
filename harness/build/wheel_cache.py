"""The wheel cache: ``wheels/<key>/<wheel>`` plus ``wheels/<key>/build.json``.

The key is the sha256 of every input that changes what a build produces (:func:`key_inputs`):
the sdist sha256, the normalised CMake flags, the compilers and their versions (nvcc for CUDA
variants), CMake, the platform, the host CPU for ``-march=native`` builds and the build
environment variables. ``build.json`` stores those inputs next to the wheel and its sha256;
a lookup recomputes both and refuses an entry whose stored inputs differ from the request
(a key collision or an edited file) or whose wheel changed. A wheel built with other flags
is never served: that is exactly the "pip reused a cached CPU wheel" bug.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from harness import paths
from saiverse_llm.atomic import atomic_copy, atomic_write_json, publish_dir
from saiverse_llm.download import sha256_file

SCHEMA = 1
_TRUE = {"on", "true", "yes", "y"}
_FALSE = {"off", "false", "no", "n"}
#: CMake options known to be booleans, used when the source tree is not at hand.
_KNOWN_BOOL_OPTIONS = frozenset(
    {
        "GGML_NATIVE", "GGML_CUDA", "GGML_METAL", "GGML_VULKAN", "GGML_BLAS", "GGML_HIP",
        "GGML_SYCL", "GGML_OPENMP", "GGML_CCACHE", "GGML_CUDA_NO_VMM", "GGML_CUDA_F16",
        "GGML_CUDA_FA_ALL_QUANTS", "GGML_CUDA_GRAPHS", "GGML_AVX", "GGML_AVX2", "GGML_AVX512",
        "GGML_FMA", "GGML_F16C", "GGML_AMX_INT8", "GGML_AMX_TILE", "GGML_AMX_BF16",
        "GGML_BACKEND_DL", "GGML_CPU_ALL_VARIANTS", "GGML_METAL_EMBED_LIBRARY", "GGML_LTO",
        "BUILD_SHARED_LIBS", "LLAMA_CURL", "LLAMA_BUILD_TESTS", "LLAMA_BUILD_EXAMPLES",
        "LLAMA_BUILD_SERVER", "LLAMA_BUILD_TOOLS", "LLAVA_BUILD",
    }
)  # fmt: skip
_OPTION_RE = re.compile(r"^\s*option\(\s*([A-Za-z0-9_]+)", re.MULTILINE)
_DEFINE_RE = re.compile(r"^-D([A-Za-z_][A-Za-z0-9_.+-]*)(?::([A-Za-z]+))?=(.*)$", re.DOTALL)


class CacheError(RuntimeError):
    """A wheel cannot be stored or imported; the message says why and what to do."""


@cache
def boolean_options(source: Path | None = None) -> frozenset[str]:
    """Names declared with CMake ``option()`` in the source tree (plus a built-in list)."""
    names = set(_KNOWN_BOOL_OPTIONS)
    if source is not None and source.is_dir():
        for pattern in ("CMakeLists.txt", "*.cmake"):
            for path in source.rglob(pattern):
                try:
                    names.update(_OPTION_RE.findall(path.read_text(errors="replace")))
                except OSError:
                    continue
    return frozenset(names)


def _normalise_value(name: str, value: str, bool_names: frozenset[str]) -> str:
    low = value.strip().lower()
    if low in _TRUE:
        return "ON"
    if low in _FALSE:
        return "OFF"
    if name in bool_names and low in {"1", "0"}:
        return "ON" if low == "1" else "OFF"
    return value.strip()


def normalise_cmake_args(
    args: str | Sequence[str], *, bool_names: frozenset[str] | None = None
) -> dict[str, Any]:
    """``{"defines": {NAME: VALUE}, "other": [...]}`` for a CMAKE_ARGS string or list.

    Parsed with shlex; ``-DNAME=V``, ``-DNAME:TYPE=V`` and ``-D NAME=V`` are the same define;
    a later duplicate wins; booleans are spelled ON/OFF whatever the case (``on``, ``True``,
    and ``1``/``0`` for names CMake declares with ``option()``). Defines are sorted by name;
    other flags (``-G Ninja``) keep their order.
    """
    bools = bool_names if bool_names is not None else boolean_options()
    tokens = shlex.split(args) if isinstance(args, str) else list(args)
    defines: dict[str, str] = {}
    other: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "-D" and i + 1 < len(tokens):
            tok = "-D" + tokens[i + 1]
            i += 1
        match = _DEFINE_RE.match(tok)
        if match:
            name, _type, value = match.groups()
            defines.pop(name, None)  # a later duplicate wins
            defines[name] = _normalise_value(name, value, bools)
        else:
            other.append(tok)
        i += 1
    return {"defines": dict(sorted(defines.items())), "other": other}


def relevant_env(names: Iterable[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    src = os.environ if env is None else env
    return {name: src[name] for name in sorted(names) if src.get(name)}


def key_inputs(
    *,
    sdist_sha256: str,
    version: str,
    cmake_args: Sequence[str],
    toolchain: Mapping[str, str],
    platform_tag: str,
    env: Mapping[str, str],
    host_cpu: str | None = None,
    bool_names: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Everything that changes the wheel a build produces.

    The wheel is tagged ``py3-none-<platform>`` (it loads its libraries with ctypes), so the
    Python version is not an input. ``host_cpu`` is set for ``-march=native`` builds, whose
    machine code depends on the CPU that compiled them.
    """
    return {
        "schema": SCHEMA,
        "llama_cpp_python": version,
        "sdist_sha256": sdist_sha256,
        "cmake_args": normalise_cmake_args(list(cmake_args), bool_names=bool_names),
        "toolchain": dict(sorted(toolchain.items())),
        "platform": platform_tag,
        "host_cpu": host_cpu,
        "env": dict(sorted(env.items())),
    }


def compute_key(inputs: Mapping[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class CachedWheel:
    key: str
    wheel: Path
    record: dict[str, Any]

    @property
    def variant(self) -> str:
        return str(self.record.get("variant", ""))


@dataclass(frozen=True)
class Lookup:
    """A cache answer: ``hit`` with the wheel, or a miss with the ``reason``."""

    hit: CachedWheel | None
    reason: str


def entry_dir(key: str, root: Path | None = None) -> Path:
    return (root or paths.wheels_dir()) / key


def lookup(inputs: Mapping[str, Any], *, root: Path | None = None) -> Lookup:
    """The cached wheel for exactly these inputs, after checking build.json and the wheel."""
    key = compute_key(inputs)
    folder = entry_dir(key, root)
    meta_path = folder / "build.json"
    if not meta_path.is_file():
        return Lookup(None, f"no cached wheel for key {key[:12]}")
    try:
        record = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        return Lookup(None, f"{meta_path}: unreadable ({exc}); it will be rebuilt")
    if not isinstance(record, dict):
        return Lookup(None, f"{meta_path}: not a JSON object; it will be rebuilt")
    stored = record.get("inputs")
    if stored != json.loads(json.dumps(dict(inputs))):
        diff = describe_difference(stored if isinstance(stored, dict) else {}, dict(inputs))
        return Lookup(
            None,
            f"{meta_path}: refused, its recorded build inputs differ from this build's "
            f"({diff}); the entry was edited or the key collided; it will be rebuilt",
        )
    if record.get("key") != key:
        return Lookup(None, f"{meta_path}: refused, key field {record.get('key')!r} != {key}")
    wheel = folder / str(record.get("wheel", ""))
    if not record.get("wheel") or not wheel.is_file():
        return Lookup(None, f"{folder}: build.json names {record.get('wheel')!r}, not there")
    actual = sha256_file(wheel)
    if actual != record.get("wheel_sha256"):
        return Lookup(
            None,
            f"{wheel}: refused, sha256 {actual[:16]}... does not match build.json "
            f"({str(record.get('wheel_sha256'))[:16]}...); the file changed",
        )
    return Lookup(CachedWheel(key=key, wheel=wheel, record=record), f"cache hit {key[:12]}")


def describe_difference(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    diffs = []
    for name in sorted(set(stored) | set(wanted)):
        if stored.get(name) != wanted.get(name):
            diffs.append(f"{name}: {stored.get(name)!r} != {wanted.get(name)!r}")
    text = "; ".join(diffs) or "no difference"
    return text if len(text) < 400 else text[:400] + "..."


def key_lock(key: str, root: Path | None = None) -> FileLock:
    """The inter-process lock of one cache key: ``<wheels>/.locks/<key>.lock`` (``filelock``).

    Re-entrant within a process (one lock object per path), exclusive between processes: a
    second ``llama-harness build`` / ``nox -s build-<variant>`` of the same key waits for the
    first and then finds its wheel.
    """
    folder = (root or paths.wheels_dir()) / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(folder / f"{key}.lock", is_singleton=True)


@contextlib.contextmanager
def holding(
    key: str, root: Path | None = None, *, say: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold :func:`key_lock` for the block; ``say`` is told when another process holds it."""
    lock = key_lock(key, root)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if say is not None:
            say(
                f"another process is building or storing key {key[:12]}; waiting for it "
                f"(lock {lock.lock_file}), then its wheel is reused"
            )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _identical_entry(folder: Path, key: str, wheel_name: str, digest: str) -> CachedWheel | None:
    """The entry in ``folder`` when it already holds this very wheel (same key and sha256)."""
    try:
        record = json.loads((folder / "build.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if record.get("key") != key or record.get("wheel") != wheel_name:
        return None
    if record.get("wheel_sha256") != digest:
        return None
    stored = folder / wheel_name
    if not stored.is_file() or sha256_file(stored) != digest:
        return None
    return CachedWheel(key=key, wheel=stored, record=record)


def store(
    wheel: Path,
    inputs: Mapping[str, Any],
    *,
    variant: str,
    cmake_args: Sequence[str],
    extra: Mapping[str, Any] | None = None,
    root: Path | None = None,
) -> CachedWheel:
    """Copy ``wheel`` into the cache under the key of ``inputs``.

    Under the key's lock (:func:`key_lock`): an entry that already holds this very wheel (same
    key, same sha256) is returned as it is; otherwise the wheel and its ``build.json`` are
    written to a temporary folder (:mod:`saiverse_llm.atomic`, checksummed) which is then
    renamed into place, replacing an older entry of the key. Concurrent stores of one key
    from several processes therefore all succeed, one after the other.
    """
    key = compute_key(inputs)
    base = root or paths.wheels_dir()
    base.mkdir(parents=True, exist_ok=True)
    final = entry_dir(key, root)
    digest = sha256_file(wheel)
    with holding(key, root):
        same = _identical_entry(final, key, wheel.name, digest)
        if same is not None:
            return same
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=base))
        try:
            target = atomic_copy(wheel, tmp / wheel.name)
            if sha256_file(target) != digest:
                raise CacheError(
                    f"{wheel}: changed while it was copied into the cache; fix: run the build again"
                )
            record: dict[str, Any] = {
                "schema": SCHEMA,
                "key": key,
                "variant": variant,
                "wheel": wheel.name,
                "wheel_sha256": digest,
                "size": target.stat().st_size,
                "cmake_args": list(cmake_args),
                "inputs": json.loads(json.dumps(dict(inputs))),
                "stored_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **dict(extra or {}),
            }
            atomic_write_json(tmp / "build.json", record, sort_keys=True, ensure_ascii=True)
            publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return CachedWheel(key=key, wheel=final / wheel.name, record=record)


def entries(root: Path | None = None) -> list[CachedWheel]:
    """Every readable entry (no checks; use :func:`lookup` before serving one)."""
    base = root or paths.wheels_dir()
    found = []
    for meta in sorted(base.glob("*/build.json")):
        try:
            record = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("wheel"):
            found.append(
                CachedWheel(
                    key=meta.parent.name, wheel=meta.parent / record["wheel"], record=record
                )
            )
    return found


def newest(variant: str, root: Path | None = None) -> CachedWheel | None:
    """The most recently stored wheel of ``variant`` whose file still has the sha256 its
    build.json records, or None. This does not check that the entry matches this machine's
    build inputs (that is :func:`lookup`): it is for "any built wheel of this variant"
    (bundles, replays, tests that need a real build)."""
    mine = [e for e in entries(root) if e.variant == variant and e.wheel.is_file()]
    mine.sort(key=lambda e: str(e.record.get("stored_at", "")), reverse=True)
    for entry in mine:
        if sha256_file(entry.wheel) == entry.record.get("wheel_sha256"):
            return entry
    return None


# --------------------------------------------------------------------------- wheel contents

_LIB_RE = re.compile(r"(?:^|/)lib(ggml-[a-z0-9]+|ggml|llama|mtmd)[^/]*\.(?:so|dylib|dll)")
BACKEND_LIBS = {
    "CPU": "ggml-cpu",
    "CUDA": "ggml-cuda",
    "METAL": "ggml-metal",
    "VULKAN": "ggml-vulkan",
    "BLAS": "ggml-blas",
}


def wheel_libraries(wheel: Path) -> list[str]:
    """Shared library names (``libggml-cuda.so``...) inside a wheel."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise CacheError(
            f"{wheel}: not a readable wheel ({exc}); fix: rebuild or re-copy it"
        ) from exc
    return sorted({Path(n).name for n in names if _LIB_RE.search(n)})


def wheel_backends(wheel: Path) -> set[str]:
    libs = wheel_libraries(wheel)
    return {b for b, lib in BACKEND_LIBS.items() if any(n.startswith(f"lib{lib}.") for n in libs)}


def wheel_record_hashes(wheel: Path) -> dict[str, str]:
    """RECORD path -> ``sha256=...`` for the shared libraries in the wheel (to compare with
    what pip installed, see harness.build.buildinfo's provenance.lib_hashes)."""
    with zipfile.ZipFile(wheel) as zf:
        record_name = next((n for n in zf.namelist() if n.endswith(".dist-info/RECORD")), None)
        if record_name is None:
            return {}
        text = zf.read(record_name).decode("utf-8", "replace")
    hashes = {}
    for line in text.splitlines():
        parts = line.rsplit(",", 2)
        if len(parts) == 3 and parts[1] and _LIB_RE.search(parts[0]):
            hashes[parts[0]] = parts[1]
    return hashes
