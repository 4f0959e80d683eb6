"""What else ran during a benchmark: others' cores from /proc/stat, and the flag rule."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.bench import machine_load
from harness.bench.machine_load import busy_reason


def _reading(others: float, cores: int = 2, steal: float = 0.0) -> dict[str, object]:
    return {"seconds": 3.0, "others_cores": others, "steal_cores": steal, "loadavg": [9.0],
            "cores": cores}  # fmt: skip


def test_busy_when_others_take_the_benchmarks_cores() -> None:
    assert busy_reason(_reading(0.1), 2) is None
    why = busy_reason(_reading(1.3, steal=0.4), 2)
    assert why == (
        "other work kept 1.30 of 2 cores busy while it ran (0.40 of them hypervisor steal), "
        "2 benchmark threads"
    )
    # others on the cores the benchmark leaves free do not count; the load average is
    # not consulted when the direct measure exists (it lags: 9.0 here)
    assert busy_reason(_reading(3.0, cores=16), 4) is None
    assert busy_reason(_reading(12.5, cores=16), 4) is not None
    # results written before the probe existed: the load average rule
    assert busy_reason([3.9, 2.0, 1.0], 2) is not None
    assert busy_reason([2.2, 2.0, 1.0], 2) is None
    assert busy_reason(None, 2) is None


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux /proc/stat")
def test_probe_sees_another_process() -> None:
    spin = [sys.executable, "-c", "import time\nt = time.time() + 1.5\nwhile time.time() < t: pass"]
    probe = machine_load.LoadProbe()
    other = subprocess.Popen(spin)  # not waited for within the span: "other work"
    time.sleep(1.0)
    reading = probe.stop()
    other.wait()
    assert reading.others_cores is not None and reading.others_cores > 0.3
    assert reading.cores >= 1 and reading.loadavg is not None


def test_wait_for_quiet_gives_up_after_max_wait() -> None:
    waited, reading = machine_load.wait_for_quiet(0.0, window=0.05)
    assert waited < 1.0 and reading.seconds > 0
