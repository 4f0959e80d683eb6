"""One progress helper: a rich bar in a terminal, plain lines at least every N s elsewhere."""

from __future__ import annotations

import io
import time

import pytest

from saiverse_llm.progress import StepProgress, elapsed_text, heartbeat, use_bar


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_elapsed_text() -> None:
    assert [elapsed_text(s) for s in (0, 42, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]


def test_lines_on_phase_change_and_then_every_interval() -> None:
    out, clock = io.StringIO(), Clock()
    with StepProgress("build cpu", stream=out, bar=False, interval=30, clock=clock) as p:
        p.update(0, None, phase="configure")
        clock.t += 12
        p.update(1, 193, phase="compile")  # new phase: a line at once
        clock.t += 10
        p.update(20, 193)  # 10 s later: quiet
        clock.t += 25
        p.update(57, 193)  # 35 s after the last line: due
        clock.t += 100
    lines = out.getvalue().splitlines()
    assert lines == [
        "build cpu: configure, 0s elapsed",
        "build cpu: compile 1/193 (1%), 12s elapsed",
        "build cpu: compile 57/193 (30%), 47s elapsed",
        "build cpu: compile 57/193 (30%), done in 2m27s",
    ]


def test_silent_work_still_prints_a_line_every_interval() -> None:
    out = io.StringIO()

    def beats() -> list[str]:
        return [
            ln
            for ln in out.getvalue().splitlines()
            if ln.startswith("build cuda: compile 338/339") and "elapsed" in ln
        ]

    with StepProgress("build cuda", stream=out, bar=False, interval=0.05) as p:
        p.update(338, 339, phase="compile")  # then a long link that prints nothing
        deadline = time.monotonic() + 10.0  # a busy machine may run the thread late
        while len(beats()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = out.getvalue().splitlines()
    assert len(beats()) >= 3, lines
    assert "done in" in lines[-1]


def test_failure_says_failed_and_bytes_are_megabytes() -> None:
    out = io.StringIO()
    with (
        pytest.raises(RuntimeError),
        StepProgress("download gemma", stream=out, bar=False, unit="bytes", interval=0) as p,
    ):
        p.update(50_000_000, 253_113_024, phase="get")
        raise RuntimeError("network")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("download gemma: get 50.0 MB/253.1 MB (20%)")
    assert "failed in" in lines[-1]


def test_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMA_HARNESS_PROGRESS", raising=False)
    assert use_bar(io.StringIO()) is False

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert use_bar(Tty()) is True
    monkeypatch.setenv("LLAMA_HARNESS_PROGRESS", "lines")
    assert use_bar(Tty()) is False
    out = Tty()
    monkeypatch.setenv("LLAMA_HARNESS_PROGRESS", "bar")
    with StepProgress("build cpu", stream=out) as p:  # rich draws; no periodic lines
        p.update(5, 10, phase="compile")
    assert "build cpu: compile" in out.getvalue() and "elapsed" not in out.getvalue()


def test_heartbeat_writes_a_line_every_interval_in_a_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMA_HARNESS_PROGRESS", raising=False)
    out = io.StringIO()  # not a terminal: a redirected nox log
    with heartbeat("lint: pip install -e .[dev]", interval=0.05, stream=out):
        time.sleep(0.33)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3
    assert all(ln.startswith("lint: pip install -e .[dev]: still running, ") for ln in lines)
    assert lines[0].endswith("0s elapsed")
    quiet = io.StringIO()
    with heartbeat("quick", interval=5, stream=quiet):  # ends within the interval: no line
        pass
    assert quiet.getvalue() == ""


def test_heartbeat_is_silent_in_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_HARNESS_PROGRESS", "bar")
    out = io.StringIO()
    with heartbeat("x", interval=0.02, stream=out):
        time.sleep(0.1)
    assert out.getvalue() == ""


def test_a_due_line_comes_within_a_second_not_up_to_five_late() -> None:
    """A redirected nox log showed 34 s between two build lines (interval 30): the thread
    looked every 5 s. It looks every second now."""
    out, clock = io.StringIO(), Clock()
    with StepProgress("build cpu", stream=out, bar=False, interval=30, clock=clock) as p:
        p.update(57, 193, phase="compile")
        clock.t += 30  # the interval has passed; the next look must print
        start = time.monotonic()
        while out.getvalue().count("\n") < 2 and time.monotonic() - start < 4.0:
            time.sleep(0.05)
        waited = time.monotonic() - start
    assert out.getvalue().splitlines()[1] == "build cpu: compile 57/193 (30%), 30s elapsed"
    assert waited < 4.0
