"""Concurrent runs on one wheel-cache key, with real processes (no threads, no mocks of the
lock): two ``store()`` calls at once both succeed, and two ``build_wheel()`` of the same key
compile once (the second waits for the first and reuses its wheel).

The builds use a cheap stand-in for the compile step (it writes a small wheel holding the
builder's pid) in a temporary ``LLAMA_HARNESS_CACHE``: llama.cpp is never compiled here and
the shared cache is never touched.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from harness.build import wheel_cache

ROOT = Path(__file__).resolve().parents[2]
WHEEL_NAME = "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
INPUTS: dict[str, Any] = {"schema": 1, "x": "same-key"}


def _store_worker(root: str, wheel: str, barrier: Any, results: Any, slow: bool) -> None:
    if slow:  # widen the race window: every folder rename takes 0.2 s (the lock is real)
        rename = os.replace

        def slow_replace(src: Any, dst: Any, **kwargs: Any) -> None:
            if os.path.isdir(src):
                time.sleep(0.2)
            rename(src, dst, **kwargs)

        os.replace = slow_replace  # type: ignore[assignment]
    barrier.wait()
    try:
        entry = wheel_cache.store(
            Path(wheel), INPUTS, variant="cpu", cmake_args=[], root=Path(root)
        )
        results.put(("ok", str(entry.wheel)))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put((f"{type(exc).__name__}: {exc}", ""))


def _make_wheel(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("llama_cpp/lib/libggml-cpu.so", content * 1000)
    return path


@pytest.mark.parametrize(
    ("same_wheel", "slow", "trials"),
    [(True, False, 12), (False, False, 12), (True, True, 2), (False, True, 2)],
    ids=["identical", "different", "identical-slow-rename", "different-slow-rename"],
)
def test_concurrent_stores_of_one_key_all_succeed(
    tmp_path: Path, same_wheel: bool, slow: bool, trials: int
) -> None:
    """Without the lock the slow-rename cases fail every time (ENOTEMPTY: two processes
    saw no entry and both renamed their folder onto the key); the plain ones only now and then.
    """
    ctx = mp.get_context("fork")
    failures = []
    for trial in range(trials):
        root = tmp_path / f"trial{trial}"
        if trial % 2:  # half the trials start with an existing entry for the key
            wheel_cache.store(
                _make_wheel(tmp_path / "old" / WHEEL_NAME, "old"),
                INPUTS,
                variant="cpu",
                cmake_args=[],
                root=root,
            )
        wheels = [
            _make_wheel(tmp_path / f"w{i}" / WHEEL_NAME, "same" if same_wheel else str(i))
            for i in range(3)
        ]
        barrier = ctx.Barrier(len(wheels))
        results = ctx.Queue()
        procs = [
            ctx.Process(
                target=_store_worker,
                args=(str(root), str(w), barrier, results, slow),
            )
            for w in wheels
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        got = [results.get(timeout=10) for _ in procs]
        failures += [f"trial {trial}: {r[0]}" for r in got if r[0] != "ok"]
        hit = wheel_cache.lookup(INPUTS, root=root).hit
        assert hit is not None, f"trial {trial}: no valid entry after the stores"
        leftovers = [p.name for p in root.iterdir() if p.name.startswith((".tmp-", ".old-"))]
        assert leftovers == [], f"trial {trial}: {leftovers}"
    assert failures == []


def test_storing_the_identical_wheel_again_is_a_success_that_keeps_the_entry(
    tmp_path: Path,
) -> None:
    wheel = _make_wheel(tmp_path / "w" / WHEEL_NAME, "x")
    first = wheel_cache.store(wheel, INPUTS, variant="cpu", cmake_args=[], root=tmp_path / "c")
    stamp = first.wheel.stat().st_mtime_ns
    again = wheel_cache.store(wheel, INPUTS, variant="cpu", cmake_args=[], root=tmp_path / "c")
    assert again.wheel == first.wheel
    assert again.record["stored_at"] == first.record["stored_at"]
    assert again.wheel.stat().st_mtime_ns == stamp  # not rewritten


_FAKE_BUILD = textwrap.dedent(
    """
    import json, os, sys, time, zipfile
    from pathlib import Path
    from harness import paths
    from harness.build import build, wheel_cache
    from harness.build.variants import get_variant

    def prepare(variant, registry=None):
        inputs = {"schema": 1, "fake-build": "one key for both processes"}
        key = wheel_cache.compute_key(inputs)
        return build.BuildPlan(
            variant=variant, sdist_sha256="0" * 64, version="0.3.36",
            source=paths.src_dir(), cmake_args=(), env={}, inputs=inputs, key=key, notes=(),
            build_dir=paths.build_dir(variant.name),
            log_path=paths.logs_dir() / f"{variant.name}-{key[:12]}.log",
        )

    def compile_(plan, out_dir, on_progress=None):  # the cheap stand-in for pip wheel
        with open(os.environ["COMPILES"], "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        waited = Path(os.environ["WAITED"])
        deadline = time.monotonic() + 20
        while not waited.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # "compile" until the other build is seen waiting (or 20 s)
        plan.log_path.parent.mkdir(parents=True, exist_ok=True)
        plan.log_path.write_text("-- Including CPU backend\\n")
        wheel = out_dir / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("llama_cpp/lib/libggml-cpu.so", f"built by {os.getpid()}")
        return wheel

    build.prepare = prepare
    build.run_pip_wheel = compile_
    def say(message):
        print(message, flush=True)
        if "waiting" in message:
            Path(os.environ["WAITED"]).touch()

    Path(os.environ["READY"] + str(os.getpid())).touch()
    go = Path(os.environ["GO"])
    while not go.exists():
        time.sleep(0.01)
    built = build.build_wheel(get_variant("cpu"), progress=False, say=say)
    print("RESULT " + json.dumps({"wheel": str(built.wheel), "cached": built.cached}))
    """
)


def test_two_concurrent_builds_of_one_key_compile_once(tmp_path: Path) -> None:
    compiles = tmp_path / "compiles.txt"
    go = tmp_path / "go"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LLAMA_HARNESS_CACHE": str(tmp_path / "cache"),
        "COMPILES": str(compiles),
        "GO": str(go),
        "WAITED": str(tmp_path / "waited"),
        "READY": str(tmp_path / "ready-"),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FAKE_BUILD],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # both processes imported and wait at the start line
    go.touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [
        json.loads(line.removeprefix("RESULT "))
        for out in outs
        for line in out.splitlines()
        if line.startswith("RESULT ")
    ]
    assert len(compiles.read_text().split()) == 1, f"both processes compiled:\n{outs}"
    assert sorted(r["cached"] for r in results) == [False, True]
    assert results[0]["wheel"] == results[1]["wheel"]
    waited = next(out for out, r in zip(outs, results, strict=True) if r["cached"])
    assert "waiting for it" in waited
