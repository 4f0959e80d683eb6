"""The pre-load memory guard (:func:`saiverse_llm.loading.check_host_memory`): a load whose
system memory clearly exceeds MemAvailable + SwapFree is refused before llama.cpp runs
(shared/cases/08: 400,000,000 tokens of context got the process OOM-killed); normal loads
never are. Pure decision, no llama_cpp: the figures come from saiverse_llm.fit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harness.models.synth import synthesize
from saiverse_llm import fit
from saiverse_llm.loading import (
    MEMORY_GUARD_ENV,
    LoadSpec,
    ModelMemoryError,
    check_host_memory,
    host_load_bytes,
)

GIB = fit.GIB


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("guard") / "tiny.gguf", preset="tiny", seed=0)


def _spec(path: Path, *, n_gpu_layers: int = 0, **llama_kwargs: object) -> LoadSpec:
    return LoadSpec(
        model_name="tiny",
        path=path,
        path_raw=str(path),
        context_length=None,
        context_cap=8192,
        n_gpu_layers=n_gpu_layers,
        n_threads=None,
        chat_format=None,
        llama_kwargs=dict(llama_kwargs),
    )


def test_a_context_far_beyond_memory_is_refused_with_the_sizes_and_the_fix(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MEMORY_GUARD_ENV, raising=False)
    available = 16 * GIB
    with pytest.raises(ModelMemoryError) as info:
        check_host_memory(
            _spec(tiny_gguf), n_ctx=400_000_000, gpu_offload=False, available=available
        )
    err = info.value
    assert err.available_bytes == available
    assert err.requested_bytes is not None and err.requested_bytes > 100 * available
    text = str(err)
    assert f"{available:,} bytes" in text and f"{err.requested_bytes:,} bytes" in text
    assert "before llama.cpp" in text
    assert "context_length" in text and "quantization" in text and MEMORY_GUARD_ENV in text
    assert "Use context_length=" in text  # fit's plan: a context that fits
    assert "complete GGUF" not in text


@pytest.mark.parametrize("n_ctx", [512, 2048, 32768])
def test_normal_loads_are_never_refused(
    tiny_gguf: Path, n_ctx: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MEMORY_GUARD_ENV, raising=False)
    check_host_memory(_spec(tiny_gguf), n_ctx=n_ctx, gpu_offload=False, available=1 * GIB)


def test_mmapped_weights_do_not_count_and_unmapped_ones_do(tiny_gguf: Path) -> None:
    mapped = host_load_bytes(_spec(tiny_gguf), n_ctx=2048, gpu_offload=False)
    unmapped = host_load_bytes(_spec(tiny_gguf, use_mmap=False), n_ctx=2048, gpu_offload=False)
    assert mapped is not None and unmapped is not None
    assert mapped["weights_bytes"] == 0 and unmapped["weights_bytes"] > 0
    assert unmapped["host_bytes"] == mapped["host_bytes"] + unmapped["weights_bytes"]


def test_an_offloaded_kv_cache_is_not_system_memory(tiny_gguf: Path) -> None:
    """With GPU offload and all layers on the GPU the KV cache and most of the compute
    buffer are the GPU's business (the KQ masks stay in system memory); on a CPU-only build
    the same config (n_gpu_layers -1) keeps everything in system memory."""
    spec = _spec(tiny_gguf, n_gpu_layers=-1)
    gpu = host_load_bytes(spec, n_ctx=1_000_000, gpu_offload=True)
    cpu = host_load_bytes(spec, n_ctx=1_000_000, gpu_offload=False)
    assert gpu is not None and cpu is not None
    assert gpu["host_bytes"] < cpu["host_bytes"] / 4
    between = cpu["host_bytes"] // 2
    check_host_memory(spec, n_ctx=1_000_000, gpu_offload=True, available=between)
    with pytest.raises(ModelMemoryError):
        check_host_memory(spec, n_ctx=1_000_000, gpu_offload=False, available=between)


def test_only_clearly_impossible_loads_are_refused(tiny_gguf: Path) -> None:
    need = host_load_bytes(_spec(tiny_gguf), n_ctx=1_000_000, gpu_offload=False)
    assert need is not None
    # a little short of the estimate: still tried (the estimate has an error, swap helps)
    check_host_memory(
        _spec(tiny_gguf), n_ctx=1_000_000, gpu_offload=False, available=need["host_bytes"] - 1
    )
    with pytest.raises(ModelMemoryError):
        check_host_memory(
            _spec(tiny_gguf),
            n_ctx=1_000_000,
            gpu_offload=False,
            available=need["host_bytes"] // 2,
        )


def test_the_guard_can_be_turned_off_and_is_skipped_without_meminfo(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(tiny_gguf)
    check_host_memory(spec, n_ctx=400_000_000, gpu_offload=False, available=None)  # not Linux
    monkeypatch.setenv(MEMORY_GUARD_ENV, "0")
    check_host_memory(spec, n_ctx=400_000_000, gpu_offload=False, available=GIB)


def test_available_memory_is_memavailable_plus_swapfree(tmp_path: Path) -> None:
    text = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    if not text:
        pytest.skip("no /proc/meminfo")
    values = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in text.splitlines() if line}
    found = fit.available_memory(swap=True, cgroup_root=tmp_path / "no-cgroups")
    assert found is not None and found[1] == "MemAvailable + SwapFree"
    limit = found[0]
    expected = values["MemAvailable"] + values["SwapFree"]
    assert abs(limit - expected) < 512 * fit.MIB  # both read a moving figure


def test_the_guard_names_a_container_limit_that_is_the_smaller(
    tiny_gguf: Path,
    fake_cgroup: Callable[[int, int], tuple[Path, Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cgroup v2 memory.max below the machine's free memory is what the guard compares
    with, and the message says so (fake cgroup root; the real load path is
    tests/client/test_load_errors.py)."""
    monkeypatch.delenv(MEMORY_GUARD_ENV, raising=False)
    root, own = fake_cgroup(64 * fit.MIB, 60 * fit.MIB)
    found = fit.available_memory(swap=False, cgroup_root=root, self_cgroup=own)
    if found is None:
        pytest.skip("no /proc/meminfo")
    assert found[0] == 4 * fit.MIB
    with pytest.raises(ModelMemoryError) as info:
        check_host_memory(
            _spec(tiny_gguf), n_ctx=65_536, gpu_offload=False, available=found[0], source=found[1]
        )
    assert "(the room under this container's cgroup memory limit)" in str(info.value)
    check_host_memory(_spec(tiny_gguf), n_ctx=65_536, gpu_offload=False, available=64 * GIB)
