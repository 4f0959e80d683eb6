"""saiverse_llm.fit against llama.cpp's own accounting, recorded; no llama_cpp needed.

The recorded figures come from the cpu wheel of llama-cpp-python 0.3.36 on x86-64 (the load
log's "model/KV/compute buffer size" lines, MiB with two decimals) and from
``llama-fit-params --fit-print`` of the same build (whole MiB, host model figure without the
CPU_REPACK buffer, which that tool leaves out). tests/client/test_fit_memory.py and
tests/harness/test_fit_vs_fit_params.py measure the same figures live.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness.bench import fit_table
from harness.models import seed_models
from harness.models.synth import synthesize
from saiverse_llm import fit
from saiverse_llm.cli import main
from saiverse_llm.gguf_file import read_gguf
from saiverse_llm.native import parse_memory_log
from saiverse_llm.registry import get_config

MIB = fit.MIB


def _pct(ours: float, theirs: float) -> float:
    return 100.0 * (ours - theirs) / theirs


@pytest.fixture(scope="session")
def seed_files() -> dict[str, Path]:
    return seed_models.ensure_all(fit_table.seed_dir())


# ----------------------------------------------------------------- Gemma 3 270M (SWA)

# (n_ctx, settings) -> llama.cpp's load log: model CPU_Mapped, CPU_REPACK, KV, compute (MiB)
GEMMA_LOADS = [
    (32768, {}, 235.16, 12.66, 576.0, 514.5),
    (2048, {}, 235.16, 12.66, 36.0, 514.5),
    (512, {}, 235.16, 12.66, 9.0, 515.75),
    (80000, {}, 235.16, 12.66, 1408.5, 948.76),
    (2048, {"swa_full": False}, 235.16, 12.66, 21.0, 514.5),
    (32768, {"swa_full": False}, 235.16, 12.66, 111.0, 514.5),
    (2048, {"flash_attn": True}, 235.16, 12.66, 36.0, 514.5),
]


def test_gemma_weights_are_the_files_tensor_bytes(gemma_gguf: Path) -> None:
    info = read_gguf(gemma_gguf)
    e = fit.estimate_file(gemma_gguf)
    assert e.weights_bytes == info.tensor_bytes
    assert abs(_pct(e.weights_bytes, info.tensor_bytes)) < 3
    assert e.settings.n_ctx == 32768  # the trained context
    assert sum(layer.sliding_window for layer in e.layers) == 15  # every 6th layer is global
    assert e.tied_copy_bytes > 0  # no output.weight: token_embd doubles as the output


@pytest.mark.parametrize(("n_ctx", "settings", "mapped", "repack", "kv", "compute"), GEMMA_LOADS)
def test_gemma_matches_the_load_log(
    gemma_gguf: Path,
    n_ctx: int,
    settings: dict[str, bool],
    mapped: float,
    repack: float,
    kv: float,
    compute: float,
) -> None:
    e = fit.estimate(fit.read_shape(gemma_gguf), fit.LoadSettings(n_ctx=n_ctx, **settings))
    model = mapped + (repack if fit._cpu_repacks() else 0.0)
    assert e.kv_cache_bytes / MIB == pytest.approx(kv, abs=0.01)
    assert (e.weights_bytes + e.repack_bytes) / MIB == pytest.approx(model, abs=0.01)
    ours = (e.weights_bytes + e.repack_bytes + e.kv_cache_bytes + e.compute_bytes) / MIB
    assert abs(_pct(ours, model + kv + compute)) < 5
    assert abs(_pct(e.compute_bytes / MIB, compute)) < 5


# ----------------------------------------------------------------- synthesized shapes

SHAPES = {
    "gqa-f16": dict(n_embd=512, n_layer=2, n_ff=1536, n_head=8, n_head_kv=2, dtype="f16"),
    "gqa-q8_0": dict(n_embd=1024, n_layer=2, n_ff=4096, n_head=16, n_head_kv=4, dtype="q8_0"),
    "mqa-f32": dict(n_embd=768, n_layer=3, n_ff=2048, n_head=6, n_head_kv=1, dtype="f32"),
    "mha-f16": dict(n_embd=512, n_layer=2, n_ff=1536, n_head=8, n_head_kv=8, dtype="f16"),
    "wide-ffn": dict(n_embd=512, n_layer=2, n_ff=8192, n_head=8, n_head_kv=8, dtype="f16"),
}
# shape, n_ctx, flash_attn -> load log MiB: model, KV, compute
SYNTH_LOADS = [
    ("gqa-f16", 512, False, 12.82, 0.5, 14.51),
    ("gqa-f16", 4096, False, 12.82, 4.0, 77.51),
    ("gqa-f16", 16384, False, 12.82, 16.0, 293.51),
    ("gqa-q8_0", 512, False, 32.22, 1.0, 32.01),
    ("gqa-q8_0", 16384, False, 32.22, 32.0, 555.01),
    ("mqa-f32", 256, False, 73.69, 0.38, 9.5),
    ("mqa-f32", 4096, False, 73.69, 6.0, 64.01),
    ("mha-f16", 4096, True, 14.32, 16.0, 17.01),
    ("mha-f16", 16384, True, 14.32, 64.0, 29.01),
    ("wide-ffn", 512, False, 53.32, 2.0, 54.01),
    ("wide-ffn", 16384, True, 53.32, 64.0, 68.01),
]


@pytest.fixture(scope="module")
def synth_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fit-synth")
    return {
        name: synthesize(root / f"{name}.gguf", preset="small", n_ctx=32768, **options)  # type: ignore[arg-type]
        for name, options in SHAPES.items()
    }


@pytest.mark.parametrize(("shape", "n_ctx", "fa", "model", "kv", "compute"), SYNTH_LOADS)
def test_synthesized_models_match_the_load_log(
    synth_files: dict[str, Path],
    shape: str,
    n_ctx: int,
    fa: bool,
    model: float,
    kv: float,
    compute: float,
) -> None:
    path = synth_files[shape]
    e = fit.estimate(fit.read_shape(path), fit.LoadSettings(n_ctx=n_ctx, flash_attn=fa))
    assert e.weights_bytes == read_gguf(path).tensor_bytes
    assert e.weights_bytes / MIB == pytest.approx(model, abs=0.01)
    assert e.kv_cache_bytes / MIB == pytest.approx(kv, abs=0.01)
    ours = (e.weights_bytes + e.kv_cache_bytes + e.compute_bytes) / MIB
    assert abs(_pct(ours, model + kv + compute)) < 5
    # the compute estimate alone errs on the safe side by at most one activation tensor
    assert -1 < _pct(e.compute_bytes / MIB, compute) < 7


# ----------------------------------------------------------------- the seed's models

# key, n_ctx, flash_attn -> llama-fit-params --fit-print: Host model, context, compute (MiB)
FIT_PARAMS = [
    ("llama-3-8b-instruct-q8", 8192, False, 8137, 1024, 572),
    ("llama-3-8b-instruct-q8", 32768, False, 8137, 4096, 2156),
    ("llama-3-8b-instruct-q8", 8192, True, 8137, 1024, 266),
    ("llama-3-8b-instruct-q4", 8192, False, 1481, 1024, 572),
    ("qwen2.5-7b-instruct-q8", 8192, False, 7717, 448, 501),
    ("qwen2.5-7b-instruct-q8", 32768, False, 7717, 1792, 1893),
    ("qwen2.5-7b-instruct-q4", 8192, False, 1483, 448, 501),
    ("gemma-2-9b-instruct-q8", 8192, False, 9366, 2688, 514),
    ("gemma-2-9b-instruct-q8", 32768, False, 9366, 10752, 1205),
]


@pytest.mark.parametrize(("key", "n_ctx", "fa", "model", "kv", "compute"), FIT_PARAMS)
def test_seed_shapes_match_llama_fit_params(
    seed_files: dict[str, Path],
    key: str,
    n_ctx: int,
    fa: bool,
    model: int,
    kv: int,
    compute: int,
) -> None:
    e = fit.estimate(fit.read_shape(seed_files[key]), fit.LoadSettings(n_ctx=n_ctx, flash_attn=fa))
    if e.repack_bytes and not fit._cpu_repacks():  # pragma: no cover - non-x86 hosts
        pytest.skip("recorded on x86-64, where llama-fit-params leaves the repacked Q4_K out")
    # llama-fit-params counts the host model without the CPU_REPACK buffer (on x86 the Q4_K
    # matrices of a Q4_K_M file): compare like with like.
    ours_model = (e.weights_bytes - e.repack_bytes) / MIB
    assert int(ours_model) == model
    assert e.kv_cache_bytes / MIB == kv
    ours = ours_model + (e.kv_cache_bytes + e.compute_bytes) / MIB
    assert abs(_pct(ours, model + kv + compute)) < 5


# Sizes the model pages list for the real files (GB = 1e9 bytes).
PUBLISHED_SIZES_GB = {
    "llama-3-8b-instruct-q8": 8.54,
    "llama-3-8b-instruct-q4": 4.92,
    "qwen2.5-7b-instruct-q8": 8.10,
    "qwen2.5-7b-instruct-q4": 4.68,
    "gemma-2-9b-instruct-q8": 9.83,
}


def test_seed_shapes_have_the_real_files_sizes(seed_files: dict[str, Path]) -> None:
    for key, gb in PUBLISHED_SIZES_GB.items():
        info = read_gguf(seed_files[key])  # the tensor table is consistent with the size
        assert info.file_size / 1e9 == pytest.approx(gb, rel=0.01), key
        assert info.tensor_bytes / 1e9 == pytest.approx(gb, rel=0.01), key
        # sparse: the weights were never written
        assert seed_files[key].stat().st_blocks * 512 < 64 * MIB


def test_kv_cache_by_hand(seed_files: dict[str, Path]) -> None:
    llama = fit.read_shape(seed_files["llama-3-8b-instruct-q8"])
    e = fit.estimate(llama, fit.LoadSettings(n_ctx=8000))  # padded to 8192 cells
    assert e.settings.kv_size == 8192
    # 32 layers x 8192 cells x (8 KV heads x 128) x (K + V) x f16
    assert e.kv_cache_bytes == 32 * 8192 * 8 * 128 * 2 * 2
    q8 = fit.estimate(llama, fit.LoadSettings(n_ctx=8192, type_k="Q8_0", flash_attn=True))
    assert q8.kv_cache_bytes == 32 * 8192 * (8 * 128 // 32 * 34 + 8 * 128 * 2)
    gemma2 = fit.read_shape(seed_files["gemma-2-9b-instruct-q8"])
    assert gemma2.swa == tuple(il % 2 == 0 for il in range(42))  # pattern 2: odd layers global
    full = fit.estimate(gemma2, fit.LoadSettings(n_ctx=8192))
    assert full.kv_cache_bytes == 42 * 8192 * 8 * 256 * 2 * 2
    windowed = fit.estimate(gemma2, fit.LoadSettings(n_ctx=8192, swa_full=False))
    swa_cells = 4096 + 512  # window + n_ubatch, padded to 256
    assert windowed.kv_cache_bytes == (21 * 8192 + 21 * swa_cells) * 8 * 256 * 2 * 2


# ----------------------------------------------------------------- plans

GIB = fit.GIB


def _plan(seed_files: dict[str, Path], key: str, n_ctx: int, vram_gib: float) -> fit.Plan:
    shape = fit.read_shape(seed_files[key])
    return fit.plan(shape, fit.LoadSettings(n_ctx=n_ctx), int(vram_gib * GIB))


def test_too_small_vram_gives_concrete_layers_and_quantization(
    seed_files: dict[str, Path],
) -> None:
    p = _plan(seed_files, "llama-3-8b-instruct-q8", 8192, 8)
    assert not p.fits
    assert p.n_gpu_layers == 24
    assert p.estimate.split(24).device_bytes <= 7 * GIB < p.estimate.split(25).device_bytes
    assert p.quantization is not None and p.quantization.file_type == "Q5_K_M"
    text = p.advice()
    assert "n_gpu_layers=24 (of 33)" in text and "Q5_K_M" in text
    data = p.to_dict()
    for key in (
        "weights_bytes",
        "kv_cache_bytes",
        "compute_bytes",
        "total_bytes",
        "n_gpu_layers",
        "context_length",
        "layers",
    ):
        assert key in data
    assert data["n_gpu_layers"] == 24 and data["context_length"] == 8192
    assert len(data["layers"]) == 32 and data["layers"][0]["kv_cache_bytes"] == 32 * MIB


def test_a_shorter_context_is_offered_when_it_is_enough(seed_files: dict[str, Path]) -> None:
    p = _plan(seed_files, "qwen2.5-7b-instruct-q4", 32768, 8)
    assert not p.fits
    assert p.context_length is not None and 2048 <= p.context_length < 32768
    assert p.context_length % 256 == 0
    at = fit.estimate(p.estimate.shape, fit.LoadSettings(n_ctx=p.context_length))
    above = fit.estimate(p.estimate.shape, fit.LoadSettings(n_ctx=p.context_length + 256))
    assert at.split(-1).device_bytes <= 7 * GIB < above.split(-1).device_bytes
    assert f"context_length={p.context_length} with all layers on the GPU" in p.advice()


def test_fits_and_nothing_fits(seed_files: dict[str, Path]) -> None:
    assert _plan(seed_files, "llama-3-8b-instruct-q8", 8192, 10).fits
    tiny = _plan(seed_files, "gemma-2-9b-instruct-q8", 8192, 1.5)
    assert not tiny.fits and tiny.n_gpu_layers == 0 and tiny.quantization is None
    assert "nothing fits in 1.50 GiB of VRAM" in tiny.advice()
    assert "Q2_K needs" in tiny.advice()


def test_output_layer_goes_to_the_gpu_first(seed_files: dict[str, Path]) -> None:
    e = fit.estimate(
        fit.read_shape(seed_files["gemma-2-9b-instruct-q8"]), fit.LoadSettings(n_ctx=4096)
    )
    one = e.split(1)  # llama.cpp: il >= n_layer + 1 - n_gpu_layers -> the output layer only
    assert one.device_weights == e.output_layer_bytes + e.tied_copy_bytes
    assert one.device_kv == 0
    assert e.split(-1).host_bytes < e.split(0).host_bytes
    assert e.split(0).device_bytes == 0


def test_ram_plan_for_a_cpu_only_load(gemma_gguf: Path) -> None:
    shape = fit.read_shape(gemma_gguf)
    p = fit.plan(shape, fit.LoadSettings(n_ctx=32768), 2 * GIB, device="RAM", margin_bytes=0)
    assert p.fits and p.n_gpu_layers == 0
    small = fit.plan(shape, fit.LoadSettings(n_ctx=32768), GIB, device="RAM", margin_bytes=0)
    assert not small.fits and small.context_length is not None
    assert "free RAM" in small.advice()


def test_advice_without_a_memory_size(seed_files: dict[str, Path]) -> None:
    text = fit.advice(seed_files["qwen2.5-7b-instruct-q8"], n_ctx=32768)
    assert "context_length=4096 needs" in text
    assert "n_gpu_layers" in text and "Q6_K weights" in text
    assert fit.advice("/nonexistent/model.gguf").startswith("no memory estimate (")


def test_advice_for_a_cpu_load_that_ran_out_of_memory(tiny_gguf: Path) -> None:
    # shared/cases/08-kv-alloc-failure: context_length 400,000,000 on the CPU
    text = fit.advice(tiny_gguf, n_ctx=400_000_000, n_gpu_layers=0, memory_bytes=4 * GIB)
    assert "KV cache 190.73 GiB" in text and "free RAM" in text
    # the largest context that fits, but never beyond the trained 2048
    assert text.endswith("Use context_length=2048.")


def test_quantization_types_follow_llama_quantize(seed_files: dict[str, Path]) -> None:
    q4 = {n: t for n, _dims, t in fit.read_shape(seed_files["llama-3-8b-instruct-q4"]).tensors}
    assert q4["output.weight"] == "Q6_K" and q4["token_embd.weight"] == "Q4_K"
    assert q4["blk.0.attn_v.weight"] == "Q6_K" and q4["blk.4.attn_v.weight"] == "Q4_K"
    assert q4["blk.0.ffn_down.weight"] == "Q6_K" and q4["blk.0.attn_q.weight"] == "Q4_K"
    assert sum(1 for n, t in q4.items() if n.endswith("ffn_down.weight") and t == "Q6_K") == 16
    gemma = fit.read_shape(seed_files["gemma-2-9b-instruct-q8"]).with_quantization("Q4_K_M")
    types = {n: t for n, _d, t in gemma.tensors}
    assert types["token_embd.weight"] == "Q6_K"  # tied: quantized like an output tensor


def test_parse_size() -> None:
    assert fit.parse_size("8") == 8 * GIB
    assert fit.parse_size("7.5GiB") == int(7.5 * GIB)
    assert fit.parse_size("8 GB") == 8 * GIB
    assert fit.parse_size("8192M") == 8 * GIB
    for bad in ("", "abc", "-1", "0", "8T", "nan", "1e400", "inf"):
        with pytest.raises(ValueError, match=r"not a memory size\. Fix: "):
            fit.parse_size(bad)
    assert fit.parse_size("65536G") == fit.MAX_SIZE
    for huge in ("1e30", "65537GiB", "99999999999999999999"):
        with pytest.raises(ValueError, match=r"more memory than any GPU or machine has\. Fix: "):
            fit.parse_size(huge)
    with pytest.raises(ValueError, match="less memory than"):
        fit.parse_size("0.0001")


def test_parse_memory_log() -> None:
    lines = [
        "load_tensors:   CPU_Mapped model buffer size =   235.16 MiB",
        "load_tensors:   CPU_REPACK model buffer size =    12.66 MiB",
        "llama_context:        CPU  output buffer size =     1.00 MiB",
        "llama_kv_cache:        CPU KV buffer size =    96.00 MiB",
        "llama_kv_cache:        CPU KV buffer size =   480.00 MiB",
        "sched_reserve:        CPU compute buffer size =   514.50 MiB",
    ]
    mem = parse_memory_log(lines)
    assert mem == {
        "model": {"CPU_Mapped": 235.16, "CPU_REPACK": 12.66},
        "kv": {"CPU": 576.0},
        "compute": {"CPU": 514.5},
        "output": {"CPU": 1.0},
    }


def test_unsupported_architectures_say_so(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(path, "mamba")
    w.add_block_count(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with pytest.raises(fit.FitError, match="recurrent state"):
        fit.read_shape(path)


@pytest.mark.parametrize(
    ("arch", "words"),
    [
        ("foo", "not one llama.cpp knows"),  # llama.cpp: "unknown model architecture: 'foo'"
        ("bert", "no KV cache"),  # an embedding model: create_memory gives it none
    ],
)
def test_architectures_llama_cpp_cannot_load_or_has_no_kv_cache_for(
    tmp_path: Path, arch: str, words: str
) -> None:
    """A GGUF llama.cpp refuses (or plans no KV cache for) is an error, never a plan."""
    import gguf

    path = tmp_path / f"{arch}.gguf"
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with pytest.raises(fit.FitError, match=words):
        fit.read_shape(path)


# ----------------------------------------------------------------- the command


@pytest.fixture(autouse=True)
def _only_project_configs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Config lookups see the project's models/ only, never a user's own configs."""
    monkeypatch.setenv("SAIVERSE_USER_DATA_DIR", str(tmp_path / "user-data"))
    monkeypatch.delenv("SAIVERSE_MODELS_PATH", raising=False)


def test_cli_json(
    seed_files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = str(tmp_path / "log.txt")
    path = str(seed_files["llama-3-8b-instruct-q8"])
    assert main(["fit", path, "--vram", "8", "--json", "--log-file", log]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] is False and data["n_gpu_layers"] == 24
    assert data["memory_bytes"] == 8 * GIB and data["memory_source"] == "--vram"
    assert main(["fit", path, "--vram", "12", "--json", "--log-file", log]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] is True and data["n_gpu_layers"] == -1
    assert main(["fit", path, "--vram", "12", "--context", "2048", "--log-file", log]) == 0
    out = capsys.readouterr().out
    assert "context_length 2048" in out and "fits:" in out


def test_cli_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = str(tmp_path / "log.txt")
    # argparse errors are an error line and status 2 (saiverse_llm.cli_errors), not SystemExit
    assert main(["fit", "x.gguf", "--vram", "lots", "--log-file", log]) == 2
    assert "not a memory size" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "missing.gguf"), "--vram", "8", "--log-file", log]) == 1
    assert "error:" in capsys.readouterr().err
    assert main(["fit", "llama-3-8b-instruct-q8", "--vram", "8", "--log-file", log]) == 1
    assert "model file not found" in capsys.readouterr().err
    assert main(["fit", "no-such-config", "--log-file", log]) == 2


def test_cli_hostile_arguments(
    tiny_gguf: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Every bad argument is one 'error: ... Fix: ...' line: a directory, a context beyond
    what llama.cpp's n_ctx (uint32) holds, an absurd --vram; a config whose file is missing
    names the command that downloads it."""
    log = str(tmp_path / "log.txt")
    for args in (
        [str(tmp_path)],
        [str(tiny_gguf), "--context", "4294967296"],
        [str(tiny_gguf), "--vram", "1e30"],
        [str(tiny_gguf), "--margin", "1e30"],
    ):
        assert main(["fit", *args, "--log-file", log]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and ". Fix: " in err[0], err
        assert "see `saiverse-llm fit --help`" not in err[0]  # the fix says what to give
    assert main(["fit", "llama-3-8b-instruct-q8", "--log-file", log]) == 1
    assert "saiverse-llm fetch llama-3-8b-instruct-q8" in capsys.readouterr().err


def test_a_context_beyond_the_trained_one_is_planned_with_a_warning(
    tiny_gguf: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trained = fit.read_shape(tiny_gguf).n_ctx_train
    log = str(tmp_path / "log.txt")
    args = ["fit", str(tiny_gguf), "--vram", "8", "--context", str(trained * 4)]
    assert main([*args, "--json", "--log-file", log]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["context_length"] == trained * 4
    assert any(f"beyond the {trained} tokens" in note for note in data["notes"])
    assert main([*args, "--log-file", log]) == 0
    assert f"warning: context_length {trained * 4} is beyond" in capsys.readouterr().out
    assert main([*args[:-1], str(trained), "--json", "--log-file", log]) == 0
    assert not any("beyond" in n for n in json.loads(capsys.readouterr().out)["notes"])


def test_list_shows_the_footprint(
    gemma_gguf: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["list", "--json", "--log-file", str(tmp_path / "log.txt")]) == 0
    models = {m["key"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    gemma = models["gemma-3-270m"]
    assert gemma["model_exists"]
    assert gemma["fit"]["total_bytes"] == fit.footprint(get_config("gemma-3-270m"))["total_bytes"]
    assert gemma["fit"]["context_length"] == get_config("gemma-3-270m").context_length == 8192
    assert fit.footprint(gemma_gguf)["context_length"] == 8192
    assert models["llama-3-8b-instruct-q8"]["fit"] is None  # no file here
    assert main(["list", "--log-file", str(tmp_path / "log.txt")]) == 0
    out = capsys.readouterr().out
    assert "memory (fit)" in out and fit.footprint_text(gemma["fit"]) in out


def test_cli_without_vram_plans_for_this_machine(
    gemma_gguf: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = str(tmp_path / "log.txt")
    assert main(["fit", str(gemma_gguf), "--cpu", "--json", "--log-file", log]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["device"] == "RAM" and data["n_gpu_layers"] == 0
    assert data["memory_source"] == "free system memory (MemAvailable)"
    assert data["host_bytes"] == data["total_bytes"]
    # without --vram: the GPU the installed build sees, else free RAM
    main(["fit", str(gemma_gguf), "--json", "--log-file", log])
    data = json.loads(capsys.readouterr().out)
    assert data["device"] in ("GPU", "RAM")
    if data["device"] == "GPU":  # pragma: no cover - machines with a GPU
        assert "free memory" in data["memory_source"]


def test_quantized_kv_cache(
    seed_files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # llama-fit-params -fa on -ctk q8_0 -ctv q8_0 -c 8192: Host 8137 544 274 (MiB)
    path = seed_files["llama-3-8b-instruct-q8"]
    settings = fit.LoadSettings.from_llama_kwargs(
        8192, {"flash_attn": True, "type_k": 8, "type_v": 8}
    )
    e = fit.estimate(fit.read_shape(path), settings)
    assert e.kv_cache_bytes / MIB == 544
    ours = (e.weights_bytes + e.kv_cache_bytes + e.compute_bytes) / MIB
    assert abs(_pct(ours, 8137 + 544 + 274)) < 5
    with pytest.raises(fit.FitError, match="quantized V cache without flash attention"):
        fit.LoadSettings.from_llama_kwargs(8192, {"type_v": 8})
    with pytest.raises(fit.FitError, match="not a KV cache type"):
        fit.LoadSettings.from_llama_kwargs(8192, {"type_k": 99})
    assert fit.LoadSettings.from_llama_kwargs(8192, {"type_k": 0}).type_k == "F32"
    log = str(tmp_path / "log.txt")
    assert main(["fit", str(path), "--vram", "8", "--cache-type", "q8_0", "--log-file", log]) == 2
    assert "add --flash-attn" in capsys.readouterr().err


# ----------------------------------------------------------------- sequences (issue #19)


def test_sequences_multiply_the_kv_cache_not_the_compute_buffer(
    tiny_gguf: Path, gemma_gguf: Path
) -> None:
    """n_seq sequences (KV not unified) get n_seq streams of cells; llama.cpp reserves the
    worst-case graph for one stream. Measured with the cpu build (load log, n_seq_max 4):
    tiny at 2048 tokens: KV 4.00 MiB, compute 21.51 MiB (one sequence: 1.00, 21.51);
    Gemma 3 270M at 8192: KV 576.0 MiB, compute 514.5 MiB (one: 144.0, 514.5)."""
    measured = ((tiny_gguf, 2048, 4.0, 21.51), (gemma_gguf, 8192, 576.0, 514.5))
    for path, n_ctx, kv, compute in measured:
        req = fit.request_for(path, n_ctx=n_ctx, n_seq=4, n_gpu_layers=0)
        e = fit.estimate(req.shape, req.settings)
        assert abs(_pct(e.kv_cache_bytes / fit.MIB, kv)) < 1
        assert abs(_pct(e.compute_bytes / fit.MIB, compute)) < 1
        one = fit.estimate(req.shape, fit.LoadSettings(n_ctx=n_ctx))
        assert e.kv_cache_bytes == 4 * one.kv_cache_bytes
        assert e.to_dict()["kv_cells"] == 4 * one.to_dict()["kv_cells"]


def test_sequences_that_fit_the_memory_left(seed_files: dict[str, Path]) -> None:
    """Llama 3 8B at 8192 tokens: 1 GiB of KV cache per sequence. More sequences may take
    half the memory still free after a one-sequence load (minus the margin)."""
    shape = fit.read_shape(seed_files["llama-3-8b-instruct-q8"])
    settings = fit.LoadSettings(n_ctx=8192)

    def fits(free_gib: float, most: int = 4) -> int:
        return fit.sequences_that_fit(shape, settings, int(free_gib * GIB), most=most)

    assert fits(1.5) == 1  # short: one sequence stays the default
    assert fits(4.0) == 2  # (4 - 1) / 2 = 1.5 GiB: room for one more
    assert fits(8.0) == 4
    assert fits(64.0) == 4 and fits(64.0, most=8) == 8
    gpu = fit.sequences_that_fit(shape, settings, int(8 * GIB), device="GPU", n_gpu_layers=-1)
    assert gpu == 4
    plan = fit.plan(shape, replace(settings, n_seq=4), 16 * GIB)
    assert "context_length 8192 x 4 sequences" in plan.advice()
