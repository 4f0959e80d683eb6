"""Progress for long work, readable in a terminal and in a redirected log.

One helper for every long step (compiling a wheel, compiling llama.cpp's tools, a
download)::

    with StepProgress("build cpu") as bar:
        bar.update(57, 193, phase="compile")     # steps done, steps in all (None: unknown)

* In a terminal (stderr is a TTY): a rich bar, "build cpu: compile ━━━━ 57/193 0:01:30".
* Anywhere else (CI, ``nox ... > log``): plain lines on stderr, one when the phase changes
  and then at least every ``interval`` seconds (default 30; ``$LLAMA_HARNESS_PROGRESS_INTERVAL``)
  while the work runs, even when the tool prints nothing::

      build cpu: compile 57/193 (30%), 1m30s elapsed

``$LLAMA_HARNESS_PROGRESS=lines`` (or ``bar``) forces one form. Bytes (``unit="bytes"``) are
shown as MB.

For a child command that prints nothing for minutes (``pip install`` in a nox session, a test
file under pytest), :func:`heartbeat` prints ``<label>: still running, 1m00s elapsed`` every
``interval`` seconds in a log, and nothing in a terminal (the child's own output is there).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import IO, Any, Literal

DEFAULT_INTERVAL = 30.0
Unit = Literal["steps", "bytes"]


def elapsed_text(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: a duration in words a log reader takes in at a glance."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _amount(value: float, unit: Unit) -> str:
    return f"{value / 1e6:.1f} MB" if unit == "bytes" else str(int(value))


def _env_interval() -> float:
    raw = os.environ.get("LLAMA_HARNESS_PROGRESS_INTERVAL", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL
    # nan, inf or a negative would mean never a line (or nonsense): the default instead
    return value if 0 <= value <= 86400 else DEFAULT_INTERVAL


def use_bar(stream: IO[str] | None = None) -> bool:
    """A rich bar when ``stream`` (default stderr) is a terminal, unless
    ``$LLAMA_HARNESS_PROGRESS`` says ``lines`` or ``bar``."""
    forced = os.environ.get("LLAMA_HARNESS_PROGRESS", "").strip().lower()
    if forced in ("lines", "bar"):
        return forced == "bar"
    target = stream if stream is not None else sys.stderr
    try:
        return bool(target.isatty())
    except (AttributeError, ValueError):
        return False


class StepProgress:
    """Steps done out of a total, with the elapsed time; a bar or periodic lines.

    ``label`` names the work ("build cpu"). ``update(done, total, phase=...)`` may be called
    from any thread and as often as wanted (every log line): lines are rate-limited. In lines
    mode a background thread wakes every ``interval`` seconds and repeats the last state when
    nothing was printed in that time, so a long silent step (a big link) still shows life.
    ``say(text)`` prints a message above the bar (or as a line).
    """

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        unit: Unit = "steps",
        interval: float | None = None,
        stream: IO[str] | None = None,
        bar: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.unit: Unit = unit
        self.interval = _env_interval() if interval is None else interval
        self.stream = stream if stream is not None else sys.stderr
        self.bar = use_bar(self.stream) if bar is None else bar
        self.clock = clock
        self.phase = ""
        self.done = 0.0
        self.total: float | None = total
        self._start = clock()
        self._last_line = -1.0e18
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rich: Any = None
        self._task: Any = None

    # -------------------------------------------------------------- context

    def __enter__(self) -> StepProgress:
        self._start = self.clock()
        if self.bar:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            count = DownloadColumn() if self.unit == "bytes" else MofNCompleteColumn()
            self._rich = Progress(
                # the label and phase hold names (variants, models, files): never markup
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                count,
                TimeElapsedColumn(),
                console=Console(file=self.stream, markup=False),
                transient=False,
            )
            self._rich.__enter__()
            self._task = self._rich.add_task(self._description(), total=self.total)
        else:
            self._thread = threading.Thread(target=self._heartbeat, daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._rich is not None:
            self._rich.__exit__(exc_type, exc, tb)
            return
        if exc_type is None:
            self._print(self._state_text(final="done"))
        elif not issubclass(exc_type, KeyboardInterrupt):
            self._print(self._state_text(final="failed"))

    # -------------------------------------------------------------- updates

    def update(self, done: float, total: float | None = None, *, phase: str | None = None) -> None:
        """``done`` of ``total`` (None keeps the known total); ``phase`` names the step."""
        with self._lock:
            new_phase = phase is not None and phase != self.phase
            if phase is not None:
                self.phase = phase
            self.done = done
            if total is not None:
                self.total = total
            if self._rich is not None:
                self._rich.update(
                    self._task, completed=done, total=self.total, description=self._description()
                )
                return
            now = self.clock()
            due = now - self._last_line >= self.interval
        if new_phase or due:
            self._print(self._state_text())

    def set_phase(self, phase: str) -> None:
        self.update(self.done, phase=phase)

    def say(self, text: str) -> None:
        """A message of its own (above the bar in a terminal)."""
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        else:
            self._write(text)

    # -------------------------------------------------------------- internals

    def _description(self) -> str:
        return f"{self.label}: {self.phase}" if self.phase else self.label

    def _state_text(self, final: str | None = None) -> str:
        parts = [self._description()]
        if self.total:
            pct = 100.0 * self.done / self.total if self.total else 0.0
            parts.append(
                f"{_amount(self.done, self.unit)}/{_amount(self.total, self.unit)} ({pct:.0f}%)"
            )
        elif self.done:
            parts.append(_amount(self.done, self.unit))
        text = " ".join(parts)
        took = elapsed_text(self.clock() - self._start)
        if final:
            return f"{text}, {final} in {took}"
        return f"{text}, {took} elapsed"

    def _print(self, text: str) -> None:
        with self._lock:
            self._last_line = self.clock()
        self._write(text)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(self.interval, 1.0) if self.interval > 0 else 1.0):
            with self._lock:
                due = self.clock() - self._last_line >= self.interval
            if due:
                self._print(self._state_text())


@contextlib.contextmanager
def heartbeat(
    label: str, *, interval: float | None = None, stream: IO[str] | None = None
) -> Iterator[None]:
    """While the ``with`` block runs, write ``<label>: still running, <elapsed> elapsed`` to
    ``stream`` (default stderr) every ``interval`` seconds (default 30,
    ``$LLAMA_HARNESS_PROGRESS_INTERVAL``), so a redirected log never goes silent for longer.
    Nothing is written when a progress bar would be used (a terminal), nor when the block
    ends within ``interval``."""
    target = stream if stream is not None else sys.stderr
    every = _env_interval() if interval is None else interval
    if use_bar(target) or every <= 0:
        yield
        return
    start = time.monotonic()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            took = elapsed_text(time.monotonic() - start)
            with contextlib.suppress(OSError, ValueError):
                target.write(f"{label}: still running, {took} elapsed\n")
                target.flush()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
