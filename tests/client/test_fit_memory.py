"""saiverse-llm fit's estimate against what a real load through this build allocates.

Each case loads a model through the client (its own pool, the suite's n_gpu_layers) and reads
llama.cpp's load log ("model/KV/compute/output buffer size" lines, every device and the host)
from the load report; :mod:`saiverse_llm.fit` must give the weights within 3% of the file's
tensor bytes and the total within 5% of llama.cpp's total. On a GPU run the figures include
the device buffers (the estimate is split at the layers llama.cpp actually offloaded).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.synth import synthesize
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
