"""saiverse-llm fit's estimate against what a real load through this build allocates.

Each case loads a model through the client (its own pool, the suite's n_gpu_layers) and reads
llama.cpp's load log ("model/KV/compute/output buffer size" lines, every device and the host)
from the load report; :mod:`saiverse_llm.fit` must give the weights within 3% of the file's
tensor bytes and the total within 5% of llama.cpp's total. On a GPU run the figures include
the device buffers (the estimate is split at the layers llama.cpp actually offloaded).
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.models.synth import synthesize
from saiverse_llm import fit
from saiverse_llm.gguf_file import read_gguf
from saiverse_llm.pool import ModelPool

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

MIB = fit.MIB
SHAPES = {
    "gqa-q8_0": dict(n_embd=1024, n_layer=2, n_ff=4096, n_head=16, n_head_kv=4, dtype="q8_0"),
    "mqa-f32": dict(n_embd=768, n_layer=3, n_ff=2048, n_head=6, n_head_kv=1, dtype="f32"),
    "wide-ffn": dict(n_embd=512, n_layer=2, n_ff=8192, n_head=8, n_head_kv=8, dtype="f16"),
}


@pytest.fixture(scope="module")
def synth_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fit-memory")
    return {
        name: synthesize(root / f"{name}.gguf", preset="small", n_ctx=32768, **options)  # type: ignore[arg-type]
        for name, options in SHAPES.items()
    }


def _compare(make_client: Callable[..., Any], path: Path, n_ctx: int, **kwargs: Any) -> None:
    client = make_client(path, context_length=n_ctx, pool=ModelPool(), **kwargs)
    report = client.load_report()
    measured = report["memory_mib"]
    req = fit.request_for(
        path,
        n_ctx=n_ctx,
        n_seq=report["n_seq_max"],  # the sequences the client opened (issue #19)
        n_gpu_layers=report["n_layers_offloaded"],
        llama_kwargs={k: v for k, v in kwargs.items() if k not in ("chat_format",)},
    )
    e = fit.estimate(req.shape, req.settings)
    split = e.split(req.n_gpu_layers)
    theirs = {kind: sum(buffers.values()) for kind, buffers in measured.items()}
    ours_total = (split.device_bytes + split.host_bytes) / MIB
    theirs_total = theirs["model"] + theirs["kv"] + theirs["compute"] + theirs["output"]
    tensor_bytes = read_gguf(path).tensor_bytes
    assert abs(e.weights_bytes - tensor_bytes) <= 0.03 * tensor_bytes
    assert theirs["kv"] == pytest.approx(e.kv_cache_bytes / MIB, abs=0.01)
    diff = 100 * (ours_total - theirs_total) / theirs_total
    host_compute = sum(m for n, m in measured["compute"].items() if n.endswith("_Host"))
    if abs(diff) >= 5 and report["backend"] == "VULKAN" and host_compute:
        # Measured on Vulkan (llvmpipe) since the client opens several sequences (#19): the
        # host-side compute buffer ("Vulkan_Host") grows with them and fit does not model it
        # yet (see test_device_buffers_of_a_gpu_load). Weights and KV cache were checked above.
        client.unload()
        pytest.xfail(
            f"{path.name} n_ctx={n_ctx}: fit {ours_total:.1f} MiB vs llama.cpp "
            f"{theirs_total:.1f} MiB ({diff:+.2f}%); Vulkan keeps {host_compute:.0f} MiB of "
            "compute on the host (Vulkan_Host): not modelled yet"
        )
    assert abs(diff) < 5, (
        f"{path.name} n_ctx={n_ctx} {kwargs}: fit {ours_total:.1f} MiB vs llama.cpp "
        f"{theirs_total:.1f} MiB ({diff:+.2f}%): {measured}"
    )
    client.unload()


@pytest.mark.parametrize(
    ("n_ctx", "kwargs"),
    [
        (32768, {}),
        (4096, {"swa_full": False}),
        (8192, {"flash_attn": True}),
    ],
)
def test_gemma_sliding_window(
    make_client: Callable[..., Any], gemma: Path, ours_only: None, n_ctx: int, kwargs: Any
) -> None:
    _compare(make_client, gemma, n_ctx, chat_format="gemma", **kwargs)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("n_ctx", [512, 8192])
def test_synthesized_shapes(
    make_client: Callable[..., Any],
    synth_models: dict[str, Path],
    ours_only: None,
    shape: str,
    n_ctx: int,
) -> None:
    _compare(make_client, synth_models[shape], n_ctx)


def test_tiny(make_client: Callable[..., Any], tiny: Path, ours_only: None) -> None:
    _compare(make_client, tiny, 2048)


def test_check_shows_estimate_and_measurement(
    gemma: Path, ours_only: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import json

    from saiverse_llm.cli import main

    code = main(
        ["check", str(gemma), "--tokens", "2", "--n-threads", "2", "--json", "--n-gpu-layers",
         "0", "--log-file", str(tmp_path / "log.txt")]
    )  # fmt: skip
    assert code == 0
    memory = json.loads(capsys.readouterr().out)["fit"]
    measured = memory["measured_mib"]
    theirs = measured["model"] + measured["kv"] + measured["compute"] + measured["output"]
    assert abs(memory["total_bytes"] / MIB - theirs) < 0.05 * theirs


@pytest.mark.gpu
def test_device_buffers_of_a_gpu_load(
    make_client: Callable[..., Any], synth_models: dict[str, Path], ours_only: None
) -> None:
    """All layers on the GPU: fit's device share against the device buffers llama.cpp logs.
    The drop in free device memory is printed (CUDA's context and cuBLAS workspace are
    outside llama.cpp's accounting), not asserted. A synthesized model: it is written where
    the test runs, so it also runs on a GPU host that the Gemma file cannot travel to."""
    if not llama_cpp.llama_supports_gpu_offload():
        if os.environ.get("LLAMA_HARNESS_REQUIRE_GPU", "") == "1":
            pytest.fail("LLAMA_HARNESS_REQUIRE_GPU=1 but this build has no GPU offload")
        pytest.skip(
            "no GPU offload in this build/machine (none is lent to this task): the "
            "device-memory comparison runs under nox -s test-cuda on a GPU machine"
        )
    from saiverse_llm.devices import loaded_devices

    def free() -> int:
        return sum(d.memory_free for d in loaded_devices() if d.type in ("GPU", "IGPU"))

    path = synth_models["gqa-q8_0"]
    before = free()
    client = make_client(path, context_length=8192, n_gpu_layers=-1, pool=ModelPool())
    report = client.load_report()
    used = before - free()
    req = fit.request_for(
        path, n_ctx=8192, n_seq=report["n_seq_max"], n_gpu_layers=report["n_layers_offloaded"]
    )
    split = fit.estimate(req.shape, req.settings).split(req.n_gpu_layers)
    device_mib = sum(
        mib
        for buffers in report["memory_mib"].values()
        for name, mib in buffers.items()
        if not name.startswith("CPU") and not name.endswith("_Host")
    )
    print(f"device: fit {split.device_bytes / MIB:.1f} MiB, llama.cpp buffers "
          f"{device_mib:.1f} MiB, free memory went down by {used / MIB:.1f} MiB")  # fmt: skip
    if report["backend"] == "VULKAN":
        # Measured on Vulkan (llvmpipe): weights and KV cache match fit; the compute buffer
        # does not: Vulkan keeps most of it on the host ("Vulkan_Host compute buffer"), fit
        # puts all of it on the device. Weights + KV are checked; the compute split is #16's.
        memory = report["memory_mib"]
        on_device = sum(
            mib
            for kind in ("model", "kv")
            for name, mib in memory[kind].items()
            if not name.startswith("CPU") and not name.endswith("_Host")
        )
        fit_mib = (split.device_weights + split.device_kv) / MIB
        assert abs(fit_mib - on_device) < 0.05 * on_device, (fit_mib, memory)
        host = sum(m for n, m in memory["compute"].items() if n.endswith("_Host"))
        client.unload()
        pytest.xfail(
            f"fit puts the {split.device_compute / MIB:.0f} MiB compute buffer on the device; "
            f"Vulkan keeps {host:.0f} MiB of compute on the host (Vulkan_Host): not modelled yet"
        )
    assert abs(split.device_bytes / MIB - device_mib) < 0.05 * device_mib
    client.unload()


@contextlib.contextmanager
def address_space_limit(headroom: int) -> Iterator[None]:
    """This process may map at most ``headroom`` bytes more than now (RLIMIT_AS, soft limit
    only, restored after): an allocation beyond it fails at once instead of being filled.

    Why: a 190 GiB KV cache on the CPU of a Vulkan build (n_gpu_layers=0) is asked for in
    chunks of the Vulkan host buffer's size; pinned memory fails for each, and llama.cpp falls
    back to ordinary CPU buffers, each allocated and zeroed, until the kernel's OOM killer
    ends the test process (measured: 13.9 GiB resident on a 24 GiB machine, `pytest` killed;
    a 16 GiB CI runner fares no better). The test is about the message, not the machine's RAM."""
    status = Path("/proc/self/status")
    if not hasattr(resource, "RLIMIT_AS") or not status.is_file():
        yield
        return
    vm_kib = next(
        int(line.split()[1])
        for line in status.read_text().splitlines()
        if line.startswith("VmSize:")
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_kib * 1024 + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_out_of_memory_error_names_the_fit_advice(
    make_client: Callable[..., Any], deep_kv_gguf: Path, huge_context: int, ours_only: None
) -> None:
    """shared/cases/08-kv-alloc-failure: the memory error (saiverse_llm.loading.memory_error)
    carries saiverse-llm fit's plan: on the CPU, against the free RAM, with the context that
    fits (never beyond the model's trained 2048). The load runs under an address-space limit
    (see address_space_limit); the model's large KV cache per token keeps llama.cpp's
    per-cell state small (test_load_errors checks std::bad_alloc on its own)."""
    from saiverse_llm.loading import ModelMemoryError

    client = make_client(
        deep_kv_gguf, context_length=huge_context, n_gpu_layers=0, pool=ModelPool()
    )
    with address_space_limit(2 * 1024**3), pytest.raises(ModelMemoryError) as info:
        client.load_report()
    message = str(info.value)
    plan = message.split("Memory plan: ", 1)[1]
    assert "KV cache 190.73 GiB" in plan and "free RAM" in plan
    assert plan.endswith("Use context_length=2048.")
