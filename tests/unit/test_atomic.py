"""saiverse_llm.atomic: an interrupted write leaves the old file (or nothing), never a part.

Three kinds of check:

* the helper itself, including a real ``SIGKILL`` of a child process in the middle of a write;
* every writer whose output a later run reads (status.json, report.md/json, llama-bench.json,
  build.json of the wheel cache, the sdist marker, the model cache's verified stamp and a
  synthesized model) interrupted at the moment its data would be flushed: the old file must
  be intact;
* a scan of the source tree: a new ``write_text``/``open(..., "w")`` writer fails this test
  with the fix (use :mod:`saiverse_llm.atomic`), so the rule outlives this change.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from saiverse_llm import atomic
from saiverse_llm.atomic import (
    atomic_copy,
    atomic_output,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)

ROOT = Path(__file__).resolve().parents[2]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(atomic.PART_SUFFIX))


# --------------------------------------------------------------------------- the helper


def test_writes_replace_the_file_and_leave_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "doc.json"
    atomic_write_json(target, {"a": "日本語", "b": [1, 2]})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": "日本語", "b": [1, 2]}
    assert target.read_text(encoding="utf-8").endswith("}\n")
    atomic_write_text(target, "second\n")
    assert target.read_text() == "second\n"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    source = tmp_path / "src.bin"
    source.write_bytes(b"copy me")
    atomic_copy(source, target)
    assert target.read_bytes() == b"copy me"
    assert _leftovers(target.parent) == []


def test_permissions_follow_the_umask_not_mkstemp(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # mkstemp alone would give 0o600


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_inside_the_block_keeps_the_old_file(
    tmp_path: Path, error: BaseException
) -> None:
    target = tmp_path / "status.json"
    target.write_text("OLD")
    with pytest.raises(type(error)), atomic_output(target) as tmp:
        tmp.write_text("NEW, but only half of it")
        raise error
    assert target.read_text() == "OLD"
    assert _leftovers(tmp_path) == []


def test_an_unserialisable_document_never_touches_the_file(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    target.write_text("OLD")
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})
    assert target.read_text() == "OLD"
    assert _leftovers(tmp_path) == []


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from saiverse_llm.atomic import atomic_output
    target = sys.argv[1]
    with atomic_output(target) as tmp, open(tmp, "wb") as fh:
        fh.write(b"N" * 1_000_000)
        fh.flush()
        print("half", flush=True)
        time.sleep(60)  # killed here, with half the new content on disk
        fh.write(b"N" * 1_000_000)
    """
)


@pytest.mark.parametrize("existing", [True, False])
def test_sigkill_mid_write_leaves_the_old_file_or_nothing(tmp_path: Path, existing: bool) -> None:
    target = tmp_path / "report.json"
    if existing:
        target.write_bytes(b"OLD COMPLETE CONTENT")
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == b"half"
    # The new content is half written to the temporary file right now.
    parts = _leftovers(tmp_path)
    assert len(parts) == 1 and (tmp_path / parts[0]).stat().st_size == 1_000_000
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    if existing:
        assert target.read_bytes() == b"OLD COMPLETE CONTENT"
    else:
        assert not target.exists()


# --------------------------------------------------------------------------- every writer


class _Interrupted(BaseException):
    pass


@pytest.fixture
def interrupt_flush(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """After calling it, the next ``os.fsync`` of a regular file raises: the moment a writer's
    data would reach the disk, as if the process was interrupted (Ctrl-C, OOM kill)."""

    def arm() -> None:
        real = os.fsync

        def fsync(fd: int) -> None:
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                real(fd)
                return
            raise _Interrupted

        monkeypatch.setattr(os, "fsync", fsync)

    return arm


def _assert_kept(path: Path, old: bytes) -> None:
    assert path.read_bytes() == old, f"{path} was changed by an interrupted write"
    assert _leftovers(path.parent) == [], f"temporary files left in {path.parent}"


def test_status_json_survives_an_interrupted_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt_flush: Callable[[], None]
) -> None:
    from harness import sessions

    monkeypatch.setenv("LLAMA_HARNESS_REPORTS", str(tmp_path))
    path = sessions.write_status("cpu", "test-cpu", "passed", "ok")
    old = path.read_bytes()
    interrupt_flush()
    with pytest.raises(_Interrupted):
        sessions.write_status("cpu", "bench-cpu", "failed", "new")
    _assert_kept(path, old)


def test_llama_bench_json_survives_an_interrupted_write(
    tmp_path: Path, interrupt_flush: Callable[[], None]
) -> None:
    from harness.bench.llama_bench import write_results

    path = write_results({"runs": [1]}, tmp_path / "cpu" / "llama-bench.json")
    old = path.read_bytes()
    interrupt_flush()
    with pytest.raises(_Interrupted):
        write_results({"runs": [1, 2, 3]}, path)
    _assert_kept(path, old)


def test_report_files_survive_an_interrupted_write(
    tmp_path: Path, interrupt_flush: Callable[[], None]
) -> None:
    from harness.bench.report import write_report

    reports = tmp_path / "reports"
    (reports / "cpu").mkdir(parents=True)
    bench = {
        "machine_info": {},
        "commit_info": {},
        "benchmarks": [
            {
                "name": "test_tg",
                "group": "tg128",
                "extra_info": {"metric": "tg128", "unit": "tokens/s", "value": 50.0},
                "stats": {"mean": 1.0, "stddev": 0.0, "rounds": 3, "min": 1.0, "max": 1.0},
            }
        ],
    }
    (reports / "cpu" / "bench.json").write_text(json.dumps(bench))
    out = tmp_path / "out"
    result = write_report(reports, out, charts=False)
    olds = {p: p.read_bytes() for p in (result.markdown, result.json)}
    interrupt_flush()
    with pytest.raises(_Interrupted):
        write_report(reports, out, charts=False)
    for path, old in olds.items():
        _assert_kept(path, old)


def test_wheel_cache_build_json_is_never_partial(
    tmp_path: Path, interrupt_flush: Callable[[], None]
) -> None:
    import zipfile

    from harness.build import wheel_cache

    wheel = tmp_path / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("x.txt", "x")
    root = tmp_path / "wheels"
    interrupt_flush()
    with pytest.raises(_Interrupted):
        wheel_cache.store(wheel, {"schema": 1}, variant="cpu", cmake_args=[], root=root)
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == []
    assert wheel_cache.lookup({"schema": 1}, root=root).hit is None


def test_sdist_marker_survives_an_interrupted_write(
    tmp_path: Path, interrupt_flush: Callable[[], None]
) -> None:
    from harness.build.build import _write_marker
    from harness.build.variants import SdistPin

    marker = tmp_path / "llama_cpp_python-0.3.36.unpacked.json"
    marker.write_text('{"sha256": "old"}\n')
    pin = SdistPin(version="0.3.36", sha256="a" * 64, filename="llama_cpp_python-0.3.36.tar.gz")
    interrupt_flush()
    with pytest.raises(_Interrupted):
        _write_marker(marker, pin)
    _assert_kept(marker, b'{"sha256": "old"}\n')


def test_model_cache_survives_an_interrupted_synthesis(
    tmp_path: Path, interrupt_flush: Callable[[], None]
) -> None:
    from harness.models.synth import synthesize

    target = tmp_path / "models" / "tiny.gguf"
    target.parent.mkdir()
    target.write_bytes(b"GGUF old complete model")
    interrupt_flush()
    with pytest.raises(_Interrupted):
        synthesize(target, preset="tiny", seed=0)
    _assert_kept(target, b"GGUF old complete model")


def test_model_cache_stamp_survives_an_interrupted_write(
    tmp_path: Path, interrupt_flush: Callable[[], None]
) -> None:
    from saiverse_llm import download

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    download.mark_verified(model, "a" * 64)
    stamp = download._stamp_path(model)
    old = stamp.read_bytes()
    interrupt_flush()
    with pytest.raises(_Interrupted):
        download.mark_verified(model, "b" * 64)
    _assert_kept(stamp, old)


# --------------------------------------------------------------------------- no new writers

#: Writes that need no atomicity, with the reason. Everything else that writes a file under
#: saiverse_llm/, harness/ or benchmarks/ must go through saiverse_llm.atomic.
_ALLOWED = {
    ("harness/build/build.py", "plan.log_path.open("): "a build log, streamed while pip runs",
    ("harness/build/native_tools.py", "log_path.open("): "a build log, streamed while cmake runs",
    ("harness/bench/report.py", "step_summary.open("): "appends to $GITHUB_STEP_SUMMARY (GitHub's)",
    ("harness/commands/matrix.py", "github_output.open("): "appends to $GITHUB_OUTPUT (GitHub's)",
    ("harness/ship/status_gate.py", "summary.open("): "appends to $GITHUB_STEP_SUMMARY (GitHub's)",
    ("harness/commands/history.py", "open(summary, "): "appends to $GITHUB_STEP_SUMMARY",
    ("harness/models/model_manifest.py", "open(tmp, "): "fills the temporary file of atomic_output",
    ("saiverse_llm/download.py", "open(tmp, "): "fills the temporary file of temp_path_beside",
    ("saiverse_llm/atomic.py", "open(tmp, "): "the helper itself",
    (
        "harness/bench/machine_load.py",
        "group.write_text(",
    ): "a kernel setting (/proc/self/autogroup), not a file",
    ("harness/bench/agree_child.py", 'Path(args.out) / "meta.json").write_text('): "runs in a "
    "variant's bare venv without the project; writes into a fresh folder read after it exits",
}
_WRITE_RE = re.compile(
    r"\.write_text\(|\.write_bytes\(|json\.dump\(|"
    r"(?:\bopen|\.open)\([^)\n]*[\"'](?:w|a|x)[bt+]*[\"']"
)


def test_every_file_writer_uses_the_atomic_helper() -> None:
    offenders = []
    for folder in ("saiverse_llm", "harness", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not _WRITE_RE.search(line) or line.lstrip().startswith("#"):
                    continue
                if any(rel == f and snippet in line for f, snippet in _ALLOWED):
                    continue
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, (
        "files written in place (a crash leaves a partial file a later run reads):\n  "
        + "\n  ".join(offenders)
        + "\nFix: use saiverse_llm.atomic (atomic_write_text / atomic_write_json / "
        "atomic_output / atomic_copy), or add the line to _ALLOWED here with the reason"
    )


# --------------------------------------------------------------------------- folders


def test_publish_dir_replaces_a_folder_whole(tmp_path: Path) -> None:
    from saiverse_llm.atomic import publish_dir

    target = tmp_path / "entry"
    target.mkdir()
    (target / "old.txt").write_text("old")
    new = tmp_path / ".entry.tmp"
    new.mkdir()
    (new / "new.txt").write_text("new")
    assert publish_dir(new, target) == target
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # nothing left aside


def test_publish_dir_puts_the_old_folder_back_when_the_rename_fails(tmp_path: Path) -> None:
    from saiverse_llm.atomic import publish_dir

    target = tmp_path / "entry"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(FileNotFoundError):
        publish_dir(tmp_path / "missing", target)
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
