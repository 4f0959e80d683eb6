"""The benchmark sets of benchmarks/ (LLAMA_HARNESS_BENCH_SET): the reduced set a software
device runs, and how the report labels its rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.bench import report

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import benchlib


def test_full_set_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LLAMA_HARNESS_BENCH_SET", "LLAMA_HARNESS_MODELS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLAMA_HARNESS_REQUIRE_GPU", "1")
    assert benchlib.bench_set() == "full"
    assert benchlib.stream_lengths() == (128, 512, 2048)
    assert benchlib.model_names() == ["tiny", "gemma-3-270m", benchlib.GPU_MODEL]


def test_reduced_set_runs_the_tiny_model_and_short_streams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLAMA_HARNESS_BENCH_SET", "Reduced")
    monkeypatch.setenv("LLAMA_HARNESS_REQUIRE_GPU", "1")
    monkeypatch.setenv("LLAMA_HARNESS_MODELS", "tiny,gemma-3-270m")
    assert benchlib.bench_set() == "reduced"
    assert benchlib.stream_lengths() == (128, 512)
    assert benchlib.model_names() == ["tiny"]  # no Gemma, no ~1 GB GPU model
    monkeypatch.setenv("LLAMA_HARNESS_MODELS", "gemma-3-270m")
    assert benchlib.model_names() == ["tiny"]


def test_an_unknown_set_names_the_variable_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_HARNESS_BENCH_SET", "quick")
    with pytest.raises(
        benchlib.BenchSetError, match=r"LLAMA_HARNESS_BENCH_SET='quick'.*full or reduced"
    ):
        benchlib.bench_set()


def _doc(variant: str, bench_set: str, gpu: dict[str, str] | None) -> dict[str, object]:
    common = {"variant": variant, "model": "tiny", "n_threads": 2, "bench_set": bench_set,
              "gpu": gpu, "backend": "VULKAN" if gpu else "CPU"}  # fmt: skip
    metric = {"value": 46.0, "stddev": 0.5, "unit": "t/s", "higher_is_better": True, "rounds": 3}
    return {
        "benchmarks": [
            {"name": "test_tg[tiny]", "extra_info": {**common, "metrics": {"tg128": metric}}},
            {
                "name": "test_stream_rate[128]",
                "extra_info": {**common, "metric": "stream128", "metrics": {"stream128": metric}},
            },
        ]
    }


def test_the_report_labels_a_reduced_software_run(tmp_path: Path) -> None:
    llvmpipe = {"name": "llvmpipe (LLVM 15.0.6, 256 bits)", "driver": "Vulkan", "software": "yes"}
    for variant, doc in {"cpu": _doc("cpu", "full", None),
                         "vulkan": _doc("vulkan", "reduced", llvmpipe)}.items():  # fmt: skip
        (tmp_path / variant).mkdir()
        (tmp_path / variant / "bench.json").write_text(json.dumps(doc))
    lines = report.render_markdown(report.collect(tmp_path)).splitlines()
    assert any(
        line.startswith("| vulkan | ok | VULKAN |") and "not a GPU" in line for line in lines
    )
    rows = [line for line in lines if line.startswith("| vulkan (")]
    assert rows[0].startswith(
        "| vulkan (software device; reduced set: tiny model only, streams of 128 and 512 "
        "tokens, no 2,048) | "
    )
    assert any(r.startswith("| vulkan (software device; reduced set) | tiny | 128 |") for r in rows)
    assert any(line.startswith("| cpu | ") and "reduced" not in line for line in lines)
