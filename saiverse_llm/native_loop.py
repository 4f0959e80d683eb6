"""The engine's steady greedy loop, compiled: many decode steps per call from Python.

Between two decodes the Python loop costs a ctypes call into ``llama_decode``, one into
``llama_get_logits`` and a numpy argmax per token: a few microseconds, a few percent of the
rate of a model that decodes a token in ~0.1 ms. ``native_loop.c`` runs those steps in C, up
to a time budget or until something needs Python (an end-of-generation token, a submit, a
cancel), and Python turns the tokens into text once per call (measured on the tiny model, 2
threads: the bare Python loop reached 0.95 of llama.cpp's eval rate, this one 0.96; the
rest is llama_decode's own batch checks outside llama.cpp's timer).

:func:`get` compiles the C file once per machine with the system's C compiler (``$CC``, else
``cc``) into ``$SAIVERSE_LLM_CACHE`` (default ``~/.cache/saiverse-llm``)``/native/<hash>/``,
under a file lock, written atomically with its SHA-256 beside it; later processes load it
once the digest matches (a cut-short file is compiled again, never loaded). No compiler, a
failed compile, a ``llama_batch`` whose layout differs from the one the C code expects, or
``SAIVERSE_LLM_NATIVE_LOOP=0`` leave :func:`get` returning None (with the reason in
:func:`why_not` and one log line): the engine then runs its Python loop, which gives the
same tokens.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from saiverse_llm import cache_dirs
from saiverse_llm.atomic import atomic_output, atomic_write_bytes

logger = logging.getLogger("saiverse_llm")

#: ``SAIVERSE_LLM_NATIVE_LOOP=0`` turns the compiled loop off (the Python loop runs).
ENV_SWITCH = "SAIVERSE_LLM_NATIVE_LOOP"
#: Seconds a compile may take.
COMPILE_TIMEOUT = 120.0
#: Seconds to wait for another process's compile (longer than a compile may take).
LOCK_TIMEOUT = 2 * COMPILE_TIMEOUT + 30.0
_FLAGS = ["-O3", "-shared", "-fPIC"]

#: llama-cpp-python's ``llama_batch`` fields as the C code declares them.
_BATCH_LAYOUT = [
    ("n_tokens", "c_int"),
    ("token", "LP_c_int"),
    ("embd", "LP_c_float"),
    ("pos", "LP_c_int"),
    ("n_seq_id", "LP_c_int"),
    ("seq_id", "LP_LP_c_int"),
    ("logits", "LP_c_byte"),
]

_lock = threading.Lock()
_ready = threading.Event()
_started = False
_loaded: NativeLoop | None = None
_why_not: str | None = None


class NativeLoop:
    """``saiverse_greedy_steps`` of the compiled library, bound to llama-cpp-python's
    ``llama_decode`` and ``llama_get_logits``. One per process (:func:`get`)."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        import llama_cpp

        self.path = path
        self._lib = lib  # keeps the library loaded
        fn = lib.saiverse_greedy_steps
        fn.restype = ctypes.c_int32
        fn.argtypes = [
            ctypes.c_void_p,  # ctx
            ctypes.c_void_p,  # llama_decode
            ctypes.c_void_p,  # llama_get_logits
            ctypes.c_void_p,  # llama_batch *
            ctypes.c_int32,  # k
            ctypes.c_int32,  # n_vocab
            ctypes.c_int32,  # max_steps
            ctypes.c_void_p,  # eog flags [n_vocab]
            ctypes.c_void_p,  # ignore_eos flags [k]
            ctypes.c_void_p,  # knock
            ctypes.c_int32,  # knock_seen
            ctypes.c_void_p,  # out [max_steps * k]
            ctypes.c_void_p,  # rc
            ctypes.c_void_p,  # t_decode
            ctypes.c_void_p,  # step count
        ]
        self._fn = fn
        native = llama_cpp.llama_cpp._lib
        self._decode = ctypes.cast(native.llama_decode, ctypes.c_void_p).value
        self._logits = ctypes.cast(native.llama_get_logits, ctypes.c_void_p).value
        self._rc = ctypes.c_int32()
        self._t_decode = ctypes.c_double()
        self._rc_at = ctypes.addressof(self._rc)
        self._t_at = ctypes.addressof(self._t_decode)

    def steps(
        self,
        ctx: Any,
        batch: Any,
        k: int,
        n_vocab: int,
        max_steps: int,
        eog: np.ndarray[Any, np.dtype[np.uint8]],
        ignore_eos: np.ndarray[Any, np.dtype[np.uint8]],
        knock: ctypes.c_int32,
        knock_seen: int,
        out: ctypes.Array[ctypes.c_int32],
        step_count: ctypes.c_int64,
    ) -> tuple[int, int, float]:
        """Decode up to ``max_steps`` steps of ``batch`` (``k`` rows, one sequence each,
        every row with logits; its token and position arrays advance in place). Returns
        ``(steps, rc, seconds)``: the steps done (their tokens are ``out[:steps * k]``, step
        by step, row by row), ``llama_decode``'s return code when a decode failed (else 0)
        and the seconds spent inside ``llama_decode`` + ``llama_get_logits``.
        ``step_count`` gains one as each step ends (other threads may read it meanwhile).

        Not thread-safe (one caller: the scheduler thread). ``out`` is a ctypes int32 array
        of at least ``max_steps * k``; ``eog`` is ``n_vocab`` flags; ``ignore_eos`` is ``k``."""
        if len(out) < max_steps * k or eog.shape[0] != n_vocab or ignore_eos.shape[0] < k:
            raise ValueError("native loop: an array is too small for the call")
        self._t_decode.value = 0.0
        done = self._fn(
            ctx,
            self._decode,
            self._logits,
            ctypes.addressof(batch),
            k,
            n_vocab,
            max_steps,
            eog.ctypes.data,
            ignore_eos.ctypes.data,
            ctypes.addressof(knock),
            knock_seen,
            ctypes.addressof(out),
            self._rc_at,
            self._t_at,
            ctypes.addressof(step_count),
        )
        return int(done), int(self._rc.value), float(self._t_decode.value)


def get(*, wait: bool = True) -> NativeLoop | None:
    """The compiled loop, or None when it cannot be had (see :func:`why_not`).

    The first call starts the build (or the load from the cache) on a thread of its own;
    ``wait=False`` never blocks: None until it is ready (the engine asks from the thread
    every model decodes on, which must not stall for a compile or another process's lock).
    Tried once per process; thread-safe."""
    global _started
    with _lock:
        if not _started:
            _started = True
            threading.Thread(
                target=_prepare, name="saiverse-llm native loop build", daemon=True
            ).start()
    if wait:
        _ready.wait()
    return _loaded if _ready.is_set() else None


def _prepare() -> None:
    global _loaded, _why_not
    try:
        _loaded = load()
    except NativeLoopUnavailable as exc:
        _why_not = str(exc)
        logger.info("the compiled decode loop is off (%s); the Python loop runs", exc)
    except Exception as exc:  # a bug or an odd machine: never worse than the Python loop
        _why_not = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "the compiled decode loop failed to load (%s); the Python loop runs", _why_not
        )
    finally:
        _ready.set()


def why_not() -> str | None:
    """Why :func:`get` returned None (None when it has not been asked or succeeded)."""
    return _why_not


class NativeLoopUnavailable(Exception):
    """The compiled loop cannot be used here; the message says why."""


def load() -> NativeLoop:
    """Build (or find in the cache) and load the compiled loop; raises
    :class:`NativeLoopUnavailable` with the reason. Needs ``llama_cpp``."""
    if os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "false", "no", "off"):
        raise NativeLoopUnavailable(f"{ENV_SWITCH}={os.environ[ENV_SWITCH]}")
    import llama_cpp

    layout = [(name, kind.__name__) for name, kind in llama_cpp.llama_batch._fields_]
    if layout != _BATCH_LAYOUT:
        raise NativeLoopUnavailable(
            f"llama_cpp.llama_batch has the layout {layout}, not the one native_loop.c declares"
        )
    path = build()  # a cut-short or altered cached file is compiled again there
    try:
        return NativeLoop(ctypes.CDLL(str(path)), path)
    except (OSError, AttributeError) as exc:  # the compiler's own output does not load
        raise NativeLoopUnavailable(
            f"{path} does not load: {exc}. Fix: delete {path.parent}, or set {ENV_SWITCH}=0"
        ) from exc


def build() -> Path:
    """The compiled library's path: from the cache, or compiled now with ``$CC`` (else
    ``cc``; it may hold arguments, as in ``ccache gcc``) under a file lock and published
    atomically with its SHA-256 beside it (one compile per machine, however many processes
    ask at once; a cached file whose digest does not match, cut short or altered, is
    compiled again rather than loaded). Raises :class:`NativeLoopUnavailable` (no
    compiler, a failed compile (one that exits 0 but leaves no non-empty library, ELF on
    Linux, e.g. ``CC=true``, too: nothing is published), an unwritable cache, Windows)."""
    if sys.platform == "win32":
        raise NativeLoopUnavailable("not built on Windows")
    source = resources.files("saiverse_llm").joinpath("native_loop.c").read_bytes()
    cc = os.environ.get("CC") or "cc"
    try:
        words = shlex.split(cc)
    except ValueError as exc:
        raise NativeLoopUnavailable(f"CC={cc!r} does not parse: {exc}") from exc
    found = shutil.which(words[0]) if words else None
    if found is None:
        raise NativeLoopUnavailable(f"no C compiler: {cc!r} is not on PATH (set CC)")
    command = [found, *words[1:]]
    parts = [source, *(w.encode() for w in [*command, *_FLAGS, platform.machine()])]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    folder = cache_dirs.saiverse_cache_dir() / "native" / key
    path = folder / "native_loop.so"
    if _intact(path):
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / ".lock"), timeout=LOCK_TIMEOUT):
            if not _intact(path):
                _compile(command, source, folder, path)
    except NativeLoopUnavailable:
        raise
    except Exception as exc:  # an unwritable cache, a lock timeout, ...
        raise NativeLoopUnavailable(f"{folder}: {exc}") from exc
    return path


def _compile(command: list[str], source: bytes, folder: Path, path: Path) -> None:
    src = folder / "native_loop.c"
    atomic_write_bytes(src, source)
    with atomic_output(path) as tmp:
        try:  # a session of its own: a timeout stops the driver and all it started (cc1, as)
            proc = subprocess.Popen(
                [*command, *_FLAGS, "-o", str(tmp), str(src)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise NativeLoopUnavailable(f"{command[0]} failed to run: {exc}") from exc
        with proc:
            try:
                stdout, stderr = proc.communicate(timeout=COMPILE_TIMEOUT)
            except BaseException as exc:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                if isinstance(exc, subprocess.TimeoutExpired):
                    raise NativeLoopUnavailable(f"{command[0]} failed to run: {exc}") from exc
                raise
        if proc.returncode != 0:
            lines = (stderr or stdout).strip().splitlines()
            raise NativeLoopUnavailable(
                f"{command[0]} exited {proc.returncode}: {lines[-1] if lines else 'no output'}"
            )
        missing = _not_a_library(tmp)
        if missing is not None:  # CC=true, or a wrapper that wrote something else
            raise NativeLoopUnavailable(
                f"the compiler `{shlex.join(command)}` exited 0 but wrote no library "
                f"({missing}). Fix: set CC to a C compiler (cc, gcc or clang)"
            )
        # the digest goes first: a library in place always has its digest beside it
        atomic_write_bytes(_digest_path(path), _digest(tmp).encode())


def _not_a_library(path: Path) -> str | None:
    """Why the compiler's output ``path`` cannot be the shared library (missing, empty, not
    ELF on Linux), or None when it may be."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        return f"its output file cannot be read: {exc.strerror or exc}"
    if not head:
        return "its output file is empty"
    if sys.platform.startswith("linux") and head != b"\x7fELF":
        return f"its output file is not ELF: it starts with {head!r}"
    return None


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(path: Path) -> bool:
    """Whether ``path`` is the library a compile here published: its SHA-256 is the one
    written beside it. A cut-short or altered file is never handed to ``dlopen``, which maps
    an ELF file's segments by its headers: a truncated one kills the process (SIGBUS)."""
    try:
        return _digest_path(path).read_text().strip() == _digest(path)
    except OSError:  # missing (not built yet, or built before digests were kept)
        return False
