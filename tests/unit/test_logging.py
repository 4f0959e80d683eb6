"""saiverse-llm's log file: INFO by default, DEBUG when asked, rotated by size."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from saiverse_llm import cli


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.level, logging.getLogger("saiverse_llm").level)
    yield
    for handler in [h for h in root.handlers if getattr(h, "cli_handler", False)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(saved[0])
    logging.getLogger("saiverse_llm").setLevel(saved[1])


def _emit() -> None:
    log = logging.getLogger("saiverse_llm.test")
    log.debug("a debug line")
    log.info("an info line")


def test_info_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAIVERSE_LOG_LEVEL", raising=False)
    path = cli.setup_logging(tmp_path / "log.txt")
    assert path is not None
    _emit()
    text = path.read_text()
    assert "an info line" in text and "a debug line" not in text


@pytest.mark.parametrize("how", ["flag", "env", "verbose"])
def test_debug_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    monkeypatch.delenv("SAIVERSE_LOG_LEVEL", raising=False)
    if how == "env":
        monkeypatch.setenv("SAIVERSE_LOG_LEVEL", "debug")
    path = cli.setup_logging(tmp_path / "log.txt", debug=how == "flag", verbose=how == "verbose")
    assert path is not None
    _emit()
    assert "a debug line" in path.read_text()


def _file_level() -> int:
    files = [
        h
        for h in logging.getLogger().handlers
        if getattr(h, "cli_handler", False) and isinstance(h, logging.FileHandler)
    ]
    assert len(files) == 1
    return files[0].level


def test_debug_flag_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAIVERSE_LOG_LEVEL", raising=False)
    monkeypatch.setenv("SAIVERSE_USER_DATA_DIR", str(tmp_path / "user"))
    log = str(tmp_path / "cli.txt")
    assert cli.main(["list", "--json", "--debug", "--log-file", log]) == 0
    assert _file_level() == logging.DEBUG
    assert cli.main(["list", "--json", "--log-file", log]) == 0
    assert _file_level() == logging.INFO


def test_log_file_rotates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "LOG_MAX_BYTES", 2_000)
    path = cli.setup_logging(tmp_path / "saiverse_log.txt")
    assert path is not None
    log = logging.getLogger("saiverse_llm.test")
    for i in range(200):
        log.info("line %d %s", i, "x" * 60)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "saiverse_log.txt", "saiverse_log.txt.1", "saiverse_log.txt.2", "saiverse_log.txt.3"
    ]  # fmt: skip
    assert all(p.stat().st_size <= 2_100 for p in tmp_path.iterdir())
    assert "line 199" in path.read_text()
