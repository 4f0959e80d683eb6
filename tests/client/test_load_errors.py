"""What a failed load says (issue #11, items 7 and 8) and the thread default (issue #14)."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")


def test_out_of_memory_says_so_with_the_size_and_what_to_change(
    make_client: Callable[..., Any],
    deep_kv_gguf: Path,
    huge_context: int,
    ours_only: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A KV cache far beyond memory: the error said "check that the file is a complete
    GGUF". It must say memory ran out, how much was asked for, and what to change.
    (llama.cpp's own failure: the pre-load guard, which refuses this load first, is off.)"""
    monkeypatch.setenv("SAIVERSE_LLM_MEMORY_GUARD", "0")
    client = make_client(deep_kv_gguf, context_length=huge_context)
    with pytest.raises(Exception) as info:
        client.generate([{"role": "user", "content": "hi"}], max_tokens=4)
    message = str(info.value)
    assert "not enough memory" in message
    # the size llama.cpp failed on: the whole KV cache on the CPU (204,800,000,000 bytes =
    # 190.7 GiB); one device buffer of it with all layers offloaded (Vulkan: 47.7 GiB)
    failed = re.findall(r"failed to allocate \S+ buffer of size (\d+)", message)
    expected = f"{int(failed[-1]) / 2**30:.1f} GiB" if failed else "190.7 GiB"
    assert expected in message and "KV cache" in message
    assert "context_length" in message and "quantization" in message
    assert "complete GGUF" not in message
    from saiverse_llm.loading import ModelMemoryError

    assert isinstance(info.value, ModelMemoryError)
    assert info.value.requested_bytes == (int(failed[-1]) if failed else 204_800_000_000)
    assert info.value.n_ctx == huge_context


#: shared/cases/08: the tiny model at 400,000,000 tokens, in a child under a 4 GiB
#: address-space limit (the test's safety net: without the guard llama.cpp writes ~20 GB of
#: per-cell KV state and the OOM killer ends the process). With the guard (the default) the
#: load is refused before llama.cpp is called, from fit's estimate against MemAvailable +
#: SwapFree; with SAIVERSE_LLM_MEMORY_GUARD=0 llama.cpp's per-cell state fails with
#: std::bad_alloc before any KV buffer is asked for.
_CASE_08 = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from saiverse_llm.client import LlamaCppClient
from saiverse_llm.loading import ModelMemoryError
client = LlamaCppClient(sys.argv[1], context_length=400_000_000, n_gpu_layers=0,
                        fallback_on_error=False, n_threads=2)
try:
    client.generate([{"role": "user", "content": "hi"}], max_tokens=4)
except ModelMemoryError as exc:
    print("AVAILABLE", getattr(exc, "available_bytes", None))
    print("REQUESTED", exc.requested_bytes)
    # VmHWM: this process's own peak RSS since exec (getrusage's ru_maxrss carries the
    # forking parent's peak across exec on Linux: a big pytest process read as 4.6 GB here)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
    print("MAXRSS_KIB", int(hwm[0].split()[1]) if hwm else 0)
    print("MEMORY", exc)
    sys.exit(0)
except BaseException as exc:
    print("OTHER", type(exc).__name__, exc)
    sys.exit(3)
print("LOADED")
sys.exit(4)
"""


def test_a_failed_host_allocation_is_a_memory_error_too(tiny: Path, ours_only: None) -> None:
    """shared/cases/08 under a memory limit: llama.cpp's "failed to initialize the context:
    std::bad_alloc" was reported as a damaged file ("check that the file is a complete
    GGUF"). It is running out of memory, with what to change."""
    out = subprocess.run(
        [sys.executable, "-c", _CASE_08, str(tiny)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "SAIVERSE_LLM_MEMORY_GUARD": "0"},  # llama.cpp's own failure
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    message = out.stdout
    assert "bad_alloc" in message  # llama.cpp's own line reached the error
    assert "not enough memory" in message and "the context" in message
    assert "context_length" in message and "complete GGUF" not in message


def test_a_load_far_beyond_memory_is_refused_before_llama_cpp(tiny: Path, ours_only: None) -> None:
    """shared/cases/08: LlamaCppClient(tiny, context_length=400_000_000).generate() got the
    process OOM-killed. It is refused before llama.cpp allocates anything, naming the bytes
    needed, the bytes available and what to change."""
    env = {k: v for k, v in os.environ.items() if k != "SAIVERSE_LLM_MEMORY_GUARD"}
    out = subprocess.run(
        [sys.executable, "-c", _CASE_08, str(tiny)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    fields = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert fields["AVAILABLE"] != "None", out.stdout  # refused by the guard, not by llama.cpp
    available, requested = int(fields["AVAILABLE"]), int(fields["REQUESTED"])
    assert requested > available
    assert int(fields["MAXRSS_KIB"]) < 1024 * 1024  # nothing near the KV state was touched
    message = fields["MEMORY"]
    assert f"{requested:,} bytes" in message and f"{available:,} bytes" in message
    assert "before llama.cpp" in message and "bad_alloc" not in message
    assert "context_length" in message and "quantization" in message
    assert "complete GGUF" not in message


def test_the_guard_takes_a_container_memory_limit_below_the_machine_s(
    tiny: Path,
    ours_only: None,
    fake_cgroup: Callable[[int, int], tuple[Path, Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inside a container whose cgroup allows 2 MiB more (memory.max), a load that fits the
    machine's MemAvailable but not the container is refused, naming the container's limit
    (before, the guard read /proc/meminfo only and the OOM killer ended the process)."""
    from saiverse_llm import cgroup_memory
    from saiverse_llm.client import LlamaCppClient
    from saiverse_llm.loading import MEMORY_GUARD_ENV, ModelMemoryError

    monkeypatch.delenv(MEMORY_GUARD_ENV, raising=False)
    root, own = fake_cgroup(10 * 2**20, 8 * 2**20)
    monkeypatch.setattr(cgroup_memory, "CGROUP_ROOT", root)
    monkeypatch.setattr(cgroup_memory, "SELF_CGROUP", own)
    client = LlamaCppClient(
        str(tiny), context_length=4096, n_gpu_layers=0, fallback_on_error=False, n_threads=2
    )
    with pytest.raises(ModelMemoryError) as info:
        client.generate([{"role": "user", "content": "hi"}], max_tokens=2)
    available = info.value.available_bytes
    assert available is not None and available >= 2 * 2**20
    assert "cgroup memory limit" in str(info.value) and "before llama.cpp" in str(info.value)


def overlapping_copy(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose output.weight data offset points into the previous tensor:
    llama.cpp refuses it with "tensor 'output.weight' has offset ..., expected ..."."""
    from saiverse_llm.gguf_file import read_gguf

    data = bytearray(src.read_bytes())
    info = read_gguf(src)
    names = [t.name for t in info.tensors]
    i = names.index("output.weight")
    target, previous = info.tensors[i], info.tensors[i - 1]
    name = target.name.encode()
    pos = data.index(struct.pack("<Q", len(name)) + name, 0, info.data_offset)
    at = pos + 8 + len(name) + 4 + 8 * len(target.dims) + 4
    assert struct.unpack_from("<Q", data, at)[0] == target.offset
    struct.pack_into("<Q", data, at, previous.offset)
    dst.write_bytes(bytes(data))
    return dst


def test_the_native_line_that_explains_a_failed_load_reaches_the_error(
    make_client: Callable[..., Any], tiny: Path, tmp_path: Path, ours_only: None
) -> None:
    """The explaining line went only to saiverse_log.txt: the error kept the last three
    lines with "error" or "fail" in them."""
    bad = overlapping_copy(tiny, tmp_path / "overlap.gguf")
    with pytest.raises(Exception) as info:
        make_client(bad).generate([{"role": "user", "content": "hi"}], max_tokens=4)
    message = str(info.value)
    assert "output.weight" in message and "offset" in message, message


def test_threads_default_to_the_physical_cores(
    make_client: Callable[..., Any], tiny: Path, fresh_pool: Any, ours_only: None
) -> None:
    from saiverse_llm.loading import default_n_threads

    client = make_client(tiny, n_threads=None, pool=fresh_pool)
    report = client.load_report()
    assert report["n_threads"] == report["n_threads_batch"] == default_n_threads()
    assert report["n_threads_source"] == "default (physical cores)"
    assert 1 <= report["n_threads"] <= len(os.sched_getaffinity(0))
    assert report["n_threads"] >= max(1, (os.cpu_count() or 1) // 2)  # never fewer than
    configured = make_client(tiny, n_threads=1, pool=fresh_pool).load_report()
    assert (configured["n_threads"], configured["n_threads_source"]) == (1, "config")
