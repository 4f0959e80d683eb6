"""Building the compiled steady loop (``saiverse_llm.native_loop.build``): once per machine,
from the cache afterwards, one compile however many processes ask at once, and a one-line
reason (never a traceback, never a half-written library) when it cannot be built.

These tests run the real C compiler on the real source; the loop's results against the
Python loop are checked on a real build in ``tests/client/test_native_loop.py``.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saiverse_llm import cache_dirs, native_loop
from saiverse_llm.native_loop import NativeLoopUnavailable

CC = shutil.which(os.environ.get("CC") or "cc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler on this machine")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(cache_dirs.ENV_CACHE, str(tmp_path / "cache"))
    return tmp_path / "cache"


def counting_cc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$CC``: the real compiler, each call logged to the returned file."""
    log = tmp_path / "cc.log"
    script = tmp_path / "counting-cc"
    script.write_text(f'#!/bin/sh\necho "$$" >> "{log}"\nexec "{CC}" "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    return log


@needs_cc
def test_it_is_compiled_once_and_then_taken_from_the_cache(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = counting_cc(tmp_path, monkeypatch)
    first = native_loop.build()
    again = native_loop.build()
    assert first == again and first.is_file()
    assert cache in first.parents
    assert len(log.read_text().split()) == 1
    lib = ctypes.CDLL(str(first))
    assert lib.saiverse_greedy_steps
    assert not [p for p in first.parent.iterdir() if p.name.endswith(".part")]


@needs_cc
def test_processes_asking_at_once_share_one_compile(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = counting_cc(tmp_path, monkeypatch)
    code = "from saiverse_llm import native_loop; print(native_loop.build())"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    paths = {p.communicate(timeout=300)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(paths) == 1 and Path(paths.pop()).is_file()
    assert len(log.read_text().split()) == 1


def test_no_compiler_is_a_one_line_reason(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(NativeLoopUnavailable, match=r"no C compiler: '/nonexistent/cc'.*set CC"):
        native_loop.build()


def test_a_failed_compile_leaves_nothing_behind(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "broken-cc"
    script.write_text('#!/bin/sh\necho "native_loop.c:1: error: boom" >&2\nexit 1\n')
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    why = re.escape("exited 1: native_loop.c:1: error: boom")
    with pytest.raises(NativeLoopUnavailable, match=why):
        native_loop.build()
    built = list(cache.rglob("*.so")) + list(cache.rglob("*.part"))
    assert built == []


@pytest.mark.parametrize(
    ("compiler", "why"),
    [
        ("true", "its output file is empty"),  # exits 0, writes nothing
        (  # writes a text file where -o says
            '#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && o=$2; shift; done\n'
            'printf "not a library" > "$o"\n',
            "not ELF",
        ),
    ],
    ids=["writes-nothing", "writes-no-elf"],
)
def test_a_compiler_that_exits_0_without_a_library_publishes_nothing(
    compiler: str, why: str, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``CC=true`` (or a wrapper that writes something else) exits 0: the empty or foreign
    file was published as the library, with a matching digest, so every later process found
    it "intact", failed to load it and fell back, and the bad file stayed in the cache."""
    if compiler.startswith("#!"):
        script = tmp_path / "odd-cc"
        script.write_text(compiler)
        script.chmod(0o755)
        compiler = str(script)
    if sys.platform != "linux" and why == "not ELF":
        pytest.skip("the ELF check is Linux's")
    monkeypatch.setenv("CC", compiler)
    with pytest.raises(NativeLoopUnavailable) as caught:
        native_loop.build()
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(rf"exited 0 but wrote no library \(.*{why}.*\)\. Fix: set CC", message)
    left = [p for p in cache.rglob("*") if p.suffix in (".so", ".part", ".sha256")]
    assert left == []


def test_it_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native_loop.ENV_SWITCH, "0")
    with pytest.raises(NativeLoopUnavailable, match=f"{native_loop.ENV_SWITCH}=0"):
        native_loop.load()


@needs_cc
def test_cc_may_hold_arguments(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``CC="ccache gcc"`` style: the first word is the program, the rest are its
    arguments (and part of the cache key)."""
    monkeypatch.setenv("CC", f"{CC} -DSAIVERSE_NATIVE_TEST=1")
    with_args = native_loop.build()
    monkeypatch.setenv("CC", str(CC))
    plain = native_loop.build()
    assert with_args != plain
    assert ctypes.CDLL(str(with_args)).saiverse_greedy_steps


@needs_cc
def test_a_cached_library_that_does_not_load_is_built_again(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = native_loop.build()
    path.write_bytes(b"not a shared library")
    with pytest.raises(OSError):
        ctypes.CDLL(str(path))
    assert native_loop.build() == path
    assert ctypes.CDLL(str(path)).saiverse_greedy_steps


@needs_cc
def test_a_truncated_cached_library_is_built_again_not_loaded(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached library cut short (a full disk, an interrupted copy of the cache) is an
    ELF file whose segments reach past its end: loading it killed the process with SIGBUS
    (dlopen maps it, the loader touches the missing pages), before any fallback could run.
    ``build`` must notice it and compile again."""
    log = counting_cc(tmp_path, monkeypatch)
    path = native_loop.build()
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 4])
    code = (
        "import ctypes; from saiverse_llm import native_loop; "
        "print(ctypes.CDLL(str(native_loop.build())).saiverse_greedy_steps)"
    )
    here = str(Path(__file__).resolve().parents[2])  # this checkout's saiverse_llm
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert len(log.read_text().split()) == 2  # the first build, and the one that repaired it
    assert path.stat().st_size == len(whole)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_compile_past_its_time_leaves_no_process_behind(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compiler that hangs is stopped after ``COMPILE_TIMEOUT`` with a one-line reason,
    and so is everything it started (``cc`` runs ``cc1``, ``as``, ``ld``): killing only the
    driver left its children running, holding a core, after the loop gave up on them."""
    pid_file = tmp_path / "child.pid"
    script = tmp_path / "hanging-cc"
    script.write_text(f'#!/bin/sh\nsleep 300 &\necho $! > "{pid_file}"\nwait\n')
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    monkeypatch.setattr(native_loop, "COMPILE_TIMEOUT", 1.0)
    with pytest.raises(NativeLoopUnavailable, match="timed out"):
        native_loop.build()
    child = int(pid_file.read_text())
    for _ in range(50):  # the kill is delivered at once; give the kernel a moment to reap
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break  # a zombie: dead, waiting for init to reap it
        time.sleep(0.1)
    else:
        os.kill(child, 9)
        pytest.fail(f"the compiler's child {child} was still running after the timeout")
    assert list(cache.rglob("*.so")) == []
