"""llama-bench parity plumbing: settings, the command line, the build cache and its key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from harness import llama_bench
from harness.llama_bench import BenchSettings, BuildPlan, LlamaBenchError


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
    with pytest.raises(LlamaBenchError, match=r"\$LLAMA_HARNESS_N_THREADS='two' is not an integer"):
        BenchSettings.from_env({"LLAMA_HARNESS_N_THREADS": "two"})
    with pytest.raises(LlamaBenchError, match=r"must be >= 1"):
        BenchSettings.from_env({"LLAMA_HARNESS_BENCH_REPS": "0"})


def _fake_build(root: Path, key: str, content: bytes = b"\x7fELF fake") -> Path:
    d = root / "llama-bench" / key
    (d / "bin").mkdir(parents=True)
    (d / "lib").mkdir()
    binary = d / "bin" / "llama-bench"
    binary.write_bytes(content)
    info = {"key": key, "binary_sha256": hashlib.sha256(content).hexdigest()}
    (d / "build.json").write_text(json.dumps(info))
    return binary


def test_cached_build_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_HARNESS_CACHE", str(tmp_path))
    assert llama_bench.cached("cpu-0123") is None
    binary = _fake_build(tmp_path, "cpu-0123")
    found = llama_bench.cached("cpu-0123")
    assert found is not None and found.binary == binary
    binary.write_bytes(b"tampered")  # a changed binary is not trusted
    assert llama_bench.cached("cpu-0123") is None


def test_command_spells_out_llama_cpp_python_defaults(tmp_path: Path) -> None:
    binary = _fake_build(tmp_path, "cpu-1")
    b = llama_bench.LlamaBenchBuild("cpu-1", binary.parent.parent, binary, binary.parent, {})
    s = BenchSettings(n_threads=2, reps=7)
    cmd = llama_bench.command(b, Path("/m/x.gguf"), s, n_gpu_layers=-1)
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


def _plan(**changes: object) -> BuildPlan:
    base: dict[str, object] = {
        "variant": "cpu",
        "version": "0.3.36",
        "source": Path("/src/vendor/llama.cpp"),
        "cmake_args": ("-DGGML_NATIVE=OFF",),
        "env": {},
        "notes": (),
        "cuda": False,
        "wheel_key": "a" * 64,
    }
    base.update(changes)
    return BuildPlan(**base)  # type: ignore[arg-type]


def test_key_follows_the_wheel_key() -> None:
    k1 = llama_bench.build_key(_plan())
    assert k1.startswith("cpu-") and k1 == llama_bench.build_key(_plan())
    assert llama_bench.build_key(_plan(wheel_key="b" * 64)) != k1


def test_cmake_args_variant_flags_and_tools_win(tmp_path: Path) -> None:
    args = llama_bench.full_cmake_args(
        _plan(cmake_args=("-DGGML_CUDA=on",), cuda=True), ccache="cc"
    )
    assert args.index("-DBUILD_SHARED_LIBS=ON") < args.index("-DGGML_CUDA=on")
    assert args[-5:] == list(llama_bench.TOOL_CMAKE_ARGS)
    assert "-DCMAKE_CUDA_COMPILER_LAUNCHER=cc" in args
    assert not any("LAUNCHER" in a for a in llama_bench.full_cmake_args(_plan(), ccache=None))


def test_results_written_atomically(tmp_path: Path) -> None:
    out = tmp_path / "cpu" / "llama-bench.json"
    llama_bench.write_results({"variant": "cpu", "runs": []}, out)
    assert json.loads(out.read_text()) == {"variant": "cpu", "runs": []}
    assert [p.name for p in out.parent.iterdir()] == ["llama-bench.json"]
