"""How much other work shared the CPU while a benchmark ran, and how to keep it out.

A benchmark that uses every core is only as good as the machine was quiet. The 1-minute
load average lags and misses short tests, so each measurement takes a :class:`LoadProbe`:
the machine's busy CPU time from ``/proc/stat`` (user, nice, system, irq, softirq and
hypervisor steal) minus this process's own CPU time (``os.times``, children included), over
the measurement's wall time. ``others_cores`` = 1.3 means other processes (or the hypervisor)
kept 1.3 cores busy on average while it ran.

With 2 threads on 2 cores, other work does not just take its share: ggml's threads wait for
each other at every graph node, and one descheduled thread stalls the other (measured here
while the load average was 13: the tiny model's tg128 fell from ~10,000 to 50-300 t/s; the
same run in its own raised-weight scheduling group gave 3,400-4,500).

``isolate()`` (``--isolate``) is what a shared machine allows: a new session (Linux puts it
in its own scheduler autogroup, so ``nice`` values of other sessions stop mattering) with the
group's weight raised (``/proc/self/autogroup``: nice -10, needs root or CAP_SYS_NICE), and
``wait_for_quiet()`` before each measurement. It does not make a busy machine idle: results
are still flagged when others kept cores busy; rerun on an idle machine for final figures.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Other work above this many cores, beyond the cores the benchmark leaves free, flags a result.
BUSY_CORES = 0.25
_STAT = Path("/proc/stat")


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _stat_busy() -> tuple[float, float] | None:
    """(busy seconds incl. steal, steal seconds) of the whole machine, or None off Linux."""
    try:
        fields = _STAT.read_text(encoding="ascii").split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    values += [0] * (8 - len(values))
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    hz = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
    return (user + nice + system + irq + softirq + steal) / hz, steal / hz


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _loadavg() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


@dataclass(frozen=True)
class LoadReading:
    """What shared the machine during one measurement."""

    seconds: float  # wall time measured
    others_cores: float | None  # average cores busy with other work (incl. steal); None: unknown
    steal_cores: float | None  # of which hypervisor steal
    loadavg: list[float] | None  # 1/5/15-min load average at the end
    cores: int  # cores this process may use

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LoadProbe:
    """``probe = LoadProbe(); ...; reading = probe.stop()``: other work during the span."""

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._stat = _stat_busy()
        self._own = _own_cpu()

    def stop(self) -> LoadReading:
        wall = max(1e-9, time.perf_counter() - self._wall)
        stat, own = _stat_busy(), _own_cpu()
        others = steal = None
        if stat is not None and self._stat is not None:
            others = max(0.0, (stat[0] - self._stat[0]) - (own - self._own)) / wall
            steal = max(0.0, stat[1] - self._stat[1]) / wall
        return LoadReading(
            seconds=round(wall, 3),
            others_cores=None if others is None else round(others, 3),
            steal_cores=None if steal is None else round(steal, 3),
            loadavg=_loadavg(),
            cores=usable_cores(),
        )


def busy_reason(load: Any, n_threads: int | None) -> str | None:
    """Why a measurement taken under ``load`` (a LoadReading dict, or a bare loadavg list from
    older results) is not trustworthy, or None when the machine was quiet enough."""
    threads = n_threads or 1
    if isinstance(load, dict):
        cores = int(load.get("cores") or threads)
        spare = max(0, cores - threads)
        others = load.get("others_cores")
        if isinstance(others, int | float):
            if others <= spare + BUSY_CORES:
                return None
            steal = load.get("steal_cores") or 0.0
            why = f"other work kept {others:.2f} of {cores} cores busy while it ran"
            if steal >= 0.1:
                why += f" ({steal:.2f} of them hypervisor steal)"
            return why + f", {threads} benchmark threads"
        load = load.get("loadavg")
    if (
        isinstance(load, list)
        and load
        and isinstance(load[0], int | float)
        and float(load[0]) > threads + 1
    ):
        return f"the 1-min load average was {float(load[0]):.1f} with {threads} benchmark threads"
    return None


# --------------------------------------------------------------------------- isolation


def isolate(nice: int = -10) -> str:
    """Own scheduler group with raised weight (Linux); returns what was done, for the record."""
    done = []
    try:
        os.setsid()
        done.append("new session")
    except (OSError, AttributeError) as exc:
        done.append(f"no new session ({exc})")
    group = Path("/proc/self/autogroup")
    try:
        group.write_text(f"{nice}\n", encoding="ascii")
        done.append(f"autogroup nice {nice}")
    except OSError as exc:
        done.append(f"autogroup weight unchanged ({exc.strerror or exc})")
    return "; ".join(done)


def wait_for_quiet(
    max_wait: float = 120.0, *, n_threads: int | None = None, window: float = 1.0
) -> tuple[float, LoadReading]:
    """Sleep until other work leaves the benchmark's cores free for two windows in a row (or
    ``max_wait`` seconds passed); (seconds waited, the last window's reading)."""
    start = time.perf_counter()
    quiet = 0
    while True:
        probe = LoadProbe()
        time.sleep(window)
        reading = probe.stop()
        if busy_reason(reading.to_dict(), n_threads or reading.cores) is None:
            quiet += 1
        else:
            quiet = 0
        waited = time.perf_counter() - start
        if quiet >= 2 or waited >= max_wait or reading.others_cores is None:
            return waited, reading
