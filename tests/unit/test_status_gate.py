"""harness/ship/status_gate.py: the success status of each kind of session, allowed statuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import sessions
from harness.ship import status_gate


@pytest.mark.parametrize(
    ("session", "status", "allow", "code", "level"),
    [
        ("build-cuda", "built", "", 0, "notice"),
        ("build-cuda", "passed", "", 1, "error"),
        ("build-cuda", "build-failed", "", 1, "error"),
        ("test-cpu", "passed", "", 0, "notice"),
        ("test-cpu", "built", "", 1, "error"),
        ("test-metal", "built-no-gpu", "built-no-gpu", 0, "warning"),
        ("test-cuda", "built-no-gpu", "", 1, "error"),
        ("bench-cpu", "skipped", "", 1, "error"),
        ("bench-cpu", "missing", "built-no-gpu", 1, "error"),
    ],
)
def test_decide(session: str, status: str, allow: str, code: int, level: str) -> None:
    v = status_gate.decide(session, status, "m", allow.split())
    assert (v.code, v.level) == (code, level)
    assert v.annotation() == f"::{level} title={session}: {status}::m"


def test_every_session_kind_has_a_success_status() -> None:
    assert sessions.SUCCESS == {"build": "built", "test": "passed", "bench": "passed"}
    assert sessions.session_kind("bench-cpu-openblas") == "bench"
    with pytest.raises(ValueError, match="not a variant session"):
        sessions.session_kind("report")


def test_gate_reads_status_json_and_writes_the_summary(tmp_path: Path) -> None:
    folder = tmp_path / "cuda"
    folder.mkdir()
    data = {"sessions": {"build-cuda": {"status": "built", "message": "cache\n hit"}}}
    (folder / "status.json").write_text(json.dumps(data))
    summary = tmp_path / "summary.md"
    v = status_gate.gate(tmp_path, "cuda", "build-cuda", (), summary)
    assert (v.status, v.message, v.code) == ("built", "cache hit", 0)
    missing = status_gate.gate(tmp_path, "cuda", "test-cuda", (), summary)
    assert missing.status == "missing" and missing.code == 1
    assert summary.read_text().count("**") == 4


def test_main_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert status_gate.main(["cpu", "test-cpu", "--reports", str(tmp_path)]) == 1
    assert "::error title=test-cpu: missing::" in capsys.readouterr().out
    assert status_gate.main(["cpu", "report", "--reports", str(tmp_path)]) == 2
    assert "not a variant session" in capsys.readouterr().err
