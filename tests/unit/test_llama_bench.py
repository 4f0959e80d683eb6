"""llama-bench parity plumbing: settings, the command line, the build cache and its key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.bench import llama_bench
from harness.bench.llama_bench import BenchSettings
from harness.build.native_tools import NativeTools
from saiverse_llm.user_errors import SettingError


def test_settings_defaults_match_llama_cpp_python() -> None:
    s = BenchSettings.from_env({})
    assert (s.n_batch, s.n_ubatch, s.n_prompt, s.n_gen, s.flash_attn) == (512, 512, 512, 128, False)
    assert s.n_threads == llama_bench.default_threads() >= 1


def test_settings_from_env_and_errors() -> None:
    env = {
        "LLAMA_HARNESS_N_THREADS": "3",
        "LLAMA_HARNESS_N_BATCH": "256",
        "LLAMA_HARNESS_N_GEN": "64",
    }
    s = BenchSettings.from_env(env)
    assert (s.n_threads, s.n_batch, s.n_ubatch, s.n_gen) == (3, 256, 256, 64)
    with pytest.raises(SettingError, match=r"\$LLAMA_HARNESS_N_THREADS='two' is not a whole"):
        BenchSettings.from_env({"LLAMA_HARNESS_N_THREADS": "two"})
    with pytest.raises(SettingError, match=r"is outside 1\.\.1,000"):
        BenchSettings.from_env({"LLAMA_HARNESS_BENCH_REPS": "0"})
    with pytest.raises(SettingError, match=r"is outside 1\.\.512"):  # GGML_MAX_N_THREADS
        BenchSettings.from_env({"LLAMA_HARNESS_N_THREADS": "513"})


def test_command_spells_out_llama_cpp_python_defaults(tmp_path: Path) -> None:
    b = NativeTools("cpu", "k" * 64, tmp_path, {"tools": {"llama-bench": {"sha256": "x"}}})
    s = BenchSettings(n_threads=2, reps=7)
    cmd = llama_bench.command(b, Path("/m/x.gguf"), s, n_gpu_layers=-1)
    assert cmd[0] == str(tmp_path / "bin" / "llama-bench")
    pairs = dict(zip(cmd[1::2], cmd[2::2], strict=True))
    assert pairs == {
        "-m": "/m/x.gguf",
        "-p": "512",
        "-n": "128",
        "-b": "512",
        "-ub": "512",
        "-t": "2",
        "-fa": "0",
        "-ngl": "-1",
        "-r": "7",
        "-o": "json",
    }


def test_results_written_atomically(tmp_path: Path) -> None:
    out = tmp_path / "cpu" / "llama-bench.json"
    llama_bench.write_results({"variant": "cpu", "runs": []}, out)
    assert json.loads(out.read_text()) == {"variant": "cpu", "runs": []}
    assert [p.name for p in out.parent.iterdir()] == ["llama-bench.json"]
