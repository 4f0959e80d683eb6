"""The benchmark report: merging variants, parity, regressions, Markdown, charts, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.bench import report
from harness.cli import main as cli_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE_FIGURES = {"pp512": 1000.0, "tg128": 100.0, "load_cold": 0.5}


def _metric(value: float, stddev: float, unit: str, higher: bool) -> dict[str, Any]:
    return {
        "value": value,
        "stddev": stddev,
        "unit": unit,
        "higher_is_better": higher,
        "rounds": 10,
    }


def bench_doc(variant: str, model: str, figures: dict[str, float]) -> dict[str, Any]:
    """A pytest-benchmark JSON document shaped like the one benchmarks/ writes."""
    benches: list[dict[str, Any]] = []
    common = {
        "variant": variant,
        "model": model,
        "model_sha256": "ab" * 32,
        "model_size": 1234,
        "n_threads": 2,
        "n_batch": 512,
        "n_ubatch": 512,
        "llama_cpp_version": "0.3.36",
        "backend": variant.upper(),
        "build_key": f"key-{variant}",
    }
    for name, value in figures.items():
        if name.startswith(("pp", "tg")):
            extra = {**common, "metrics": {name: _metric(value, value * 0.01, "t/s", True)}}
            stats = {"mean": 1.0, "stddev": 0.01, "rounds": 10}
        else:
            # a latency: read from pytest-benchmark's own stats
            extra = {**common, "metric": name}
            stats = {"mean": value, "stddev": value * 0.02, "rounds": 10}
        benches.append({"name": f"test_{name}[{model}]", "extra_info": extra, "stats": stats})
    return {"machine_info": {"node": "n", "cpu": {"brand_raw": "Test CPU"}}, "benchmarks": benches}


def write_variant(root: Path, variant: str, doc: dict[str, Any] | None, **files: Any) -> Path:
    d = root / variant
    d.mkdir(parents=True, exist_ok=True)
    if doc is not None:
        (d / "bench.json").write_text(json.dumps(doc))
    for name, content in files.items():
        (d / (name.replace("_", "-") + ".json")).write_text(json.dumps(content))
    return d


def llama_bench_doc(model: str, pp: float, tg: float) -> dict[str, Any]:
    def rec(n_prompt: int, n_gen: int, ts: float) -> dict[str, Any]:
        return {
            "n_prompt": n_prompt,
            "n_gen": n_gen,
            "n_threads": 2,
            "n_batch": 512,
            "n_ubatch": 512,
            "avg_ts": ts,
            "stddev_ts": ts * 0.01,
            "samples_ts": [ts] * 5,
            "model_filename": f"/m/{model}.gguf",
        }

    return {
        "variant": "cpu",
        "build_key": "lb-key",
        "runs": [{"model": model, "results": [rec(512, 0, pp), rec(0, 128, tg)]}],
    }


@pytest.fixture
def two_sets(tmp_path: Path) -> tuple[Path, Path]:
    base = tmp_path / "base"
    cur = tmp_path / "cur"
    write_variant(
        base, "cpu", bench_doc("cpu", "tiny", {"pp512": 1000, "tg128": 100, "load_cold": 0.5})
    )
    # tg128 10% slower (regression), pp512 1% slower (noise), load 20% slower (regression),
    write_variant(
        cur, "cpu", bench_doc("cpu", "tiny", {"pp512": 990, "tg128": 90, "load_cold": 0.6})
    )
    return base, cur


def test_known_regression_is_flagged_and_noise_is_not(two_sets: tuple[Path, Path]) -> None:
    base, cur = two_sets
    regs = report.compare(report.collect(cur), report.collect(base), threshold_pct=5.0)
    by_metric = {r.metric: r for r in regs}
    assert by_metric["tg128"].regressed
    assert by_metric["tg128"].change_pct == pytest.approx(10.0)
    assert by_metric["load_cold"].regressed  # lower is better: 0.5 s -> 0.6 s is worse
    assert by_metric["load_cold"].change_pct == pytest.approx(20.0)
    assert not by_metric["pp512"].regressed
    assert by_metric["pp512"].change_pct == pytest.approx(1.0)


def test_improvement_is_not_a_regression(two_sets: tuple[Path, Path]) -> None:
    base, cur = two_sets
    # swap: the current run is the faster one
    regs = report.compare(report.collect(base), report.collect(cur), threshold_pct=5.0)
    assert not any(r.regressed for r in regs)
    assert {r.metric for r in regs} == {"pp512", "tg128", "load_cold"}


def test_threshold_is_respected(two_sets: tuple[Path, Path]) -> None:
    base, cur = two_sets
    regs = report.compare(report.collect(cur), report.collect(base), threshold_pct=15.0)
    assert [r.metric for r in regs if r.regressed] == ["load_cold"]


def test_cli_compare_exits_nonzero_on_regression(
    two_sets: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, cur = two_sets
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    out = tmp_path / "out"
    args = ["report", "--reports", str(cur), "-o", str(out), "--no-charts"]
    assert cli_main([*args, "--compare", str(base)]) == 1
    text = (out / "report.md").read_text()
    assert "**REGRESSION**" in text
    doc = json.loads((out / "report.json").read_text())
    flagged = {r["metric"] for r in doc["comparison"]["results"] if r["regressed"]}
    assert flagged == {"tg128", "load_cold"}
    # against itself nothing regresses; a previous report.json works as a baseline too
    assert cli_main([*args, "--compare", str(cur)]) == 0
    assert cli_main([*args, "--compare", str(out / "report.json")]) == 0
    assert cli_main([*args, "--compare", str(base), "--threshold", "25"]) == 0


def test_markdown_table_ratio_status_and_parity(tmp_path: Path) -> None:
    root = tmp_path / "reports"
    passed = {"variant": "cpu", "status": "passed", "message": "pytest benchmarks/ passed"}
    write_variant(
        root, "cpu", bench_doc("cpu", "tiny", {"pp512": 1000, "tg128": 100}), status=passed
    )
    write_variant(root, "cuda", bench_doc("cuda", "tiny", {"pp512": 4000, "tg128": 250}))
    # the status.json written by the nox sessions (harness/sessions.py)
    no_gpu = {"variant": "metal", "status": "built-no-gpu", "message": "no driver"}
    write_variant(root, "metal", None, status=no_gpu)
    write_variant(root, "vulkan", None, status={"status": "crashed-native"})
    (root / "cpu" / "llama-bench.json").write_text(json.dumps(llama_bench_doc("tiny", 1020, 125)))
    rs = report.collect(root)
    text = report.render_markdown(rs, machine=report.machine_info())
    lines = text.splitlines()
    tiny = lines[lines.index("## tiny") : lines.index("## Parity with llama-bench")]
    header = next(line for line in tiny if line.startswith("| variant |"))
    assert header.startswith("| variant | pp512 t/s | llama-bench pp512 t/s | parity pp512 |")
    cuda_row = next(line for line in tiny if line.startswith("| cuda |"))
    assert "| 4,000 ±1.0% (×4.00) |" in cuda_row
    assert "| 250 ±1.0% (×2.50) |" in cuda_row
    cpu_row = next(line for line in tiny if line.startswith("| cpu |"))
    assert "| 1,000 ±1.0% |" in cpu_row
    assert "(×" not in cpu_row  # no ratio of cpu to itself
    assert any(line.startswith("| cpu | passed | CPU |") for line in lines)
    # variants that did not run stay visible with their status
    assert any(line.startswith("| metal | built-no-gpu: no driver |") for line in lines)
    assert any(line.startswith("| vulkan | crashed-native |") for line in lines)
    assert any(line.startswith("| metal (built-no-gpu) |") for line in lines)
    # parity rows: harness / llama-bench, flagged below the 0.97 goal
    pp = next(line for line in lines if line.startswith("| cpu | tiny | pp512 |"))
    assert "1,020" in pp and pp.rstrip().endswith("0.980 | load not recorded |")
    tg = next(line for line in lines if line.startswith("| cpu | tiny | tg128 |"))
    assert tg.rstrip().endswith("0.800 ⚠ | load not recorded |")
    assert any("below the 0.97 goal" in line for line in lines)
    parity = rs.get("cpu", "tiny", "parity_tg128")
    assert parity is not None and parity.value == pytest.approx(0.8)


def chat_doc(raw: float, client: float, tokens: dict[str, list[int]]) -> dict[str, Any]:
    """The two chat rows of benchmarks/test_client.py with the completion tokens of each
    measured round (``tokens``: "raw" / "client" -> counts; a missing key: not recorded)."""
    doc = bench_doc("cpu", "gemma-3-270m", {"chat_raw": raw, "chat_client": client})
    for bench, side in zip(doc["benchmarks"], ("raw", "client"), strict=True):
        if side in tokens:
            bench["extra_info"]["completion_tokens"] = tokens[side]
    return doc


def test_client_overhead_is_derived(tmp_path: Path) -> None:
    root = tmp_path / "reports"
    write_variant(root, "cpu", chat_doc(0.2, 0.21, {"raw": [128] * 5, "client": [128] * 5}))
    rs = report.collect(root)
    m = rs.get("cpu", "gemma-3-270m", "client_overhead")
    assert m is not None and m.value == pytest.approx(5.0)
    assert not rs.refused


@pytest.mark.parametrize(
    ("tokens", "why"),
    [
        # Gemma 3 270M before the fix: the alpaca template's stop string ended the client's
        # reply at 14 tokens, the raw reply ran to max_tokens (the cell read -85%)
        (
            {"raw": [128] * 5, "client": [14] * 5},
            "the client's replies had 14 completion tokens and the raw Llama's 128",
        ),
        ({"raw": [128, 129, 128], "client": [128] * 3}, "raw Llama's 128-129"),
        ({"raw": [128] * 5}, "not recorded for chat_client"),
        ({}, "not recorded for chat_raw and chat_client"),
    ],
)
def test_client_overhead_is_na_unless_both_rows_generated_the_same_tokens(
    tmp_path: Path, tokens: dict[str, list[int]], why: str
) -> None:
    """client / raw - 1 is the client's overhead only for equal work: a reply of another
    length gives no figure; the cell reads n/a and a note says why."""
    root = tmp_path / "reports"
    write_variant(root, "cpu", chat_doc(3.19, 0.48, tokens))
    rs = report.collect(root)
    assert rs.get("cpu", "gemma-3-270m", "client_overhead") is None
    assert why in rs.refused[("cpu", "gemma-3-270m", "client_overhead")]
    lines = report.render_markdown(rs).splitlines()
    header = next(line for line in lines if "client overhead" in line)
    row = lines[lines.index(header) + 2]
    assert row.startswith("| cpu |")
    assert row.split("|")[header.split("|").index(" client overhead ")].strip() == "n/a"
    note = next(line for line in lines if "client overhead n/a" in line)
    assert why in note and "cpu/gemma-3-270m" in note
    assert "completion_tokens" not in next(line for line in lines if line.startswith("Settings"))


def test_pngs_json_and_step_summary_written(tmp_path: Path) -> None:
    root = tmp_path / "reports"
    write_variant(
        root, "cpu", bench_doc("cpu", "tiny", {"pp512": 1000, "tg128": 100, "load_cold": 0.5})
    )
    write_variant(root, "cuda", bench_doc("cuda", "tiny", {"pp512": 4000, "tg128": 250}))
    (root / "cpu" / "llama-bench.json").write_text(json.dumps(llama_bench_doc("tiny", 1020, 101)))
    summary = tmp_path / "summary.md"
    summary.write_text("previous step\n")
    out = report.write_report(root, tmp_path / "out", step_summary=summary)
    names = sorted(p.name for p in out.charts)
    assert names == ["latency.png", "parity.png", "throughput.png"]
    for p in out.charts:
        assert p.read_bytes()[:8] == PNG_MAGIC
        assert p.stat().st_size > 5000
    assert "![throughput](charts/throughput.png)" in out.text
    doc = json.loads(out.json.read_text())
    assert doc["schema"] == report.SCHEMA
    assert doc["machine"]["cpu"]
    assert doc["variants"]["cpu"]["provenance"]["models"]["tiny"]["sha256"] == "ab" * 32
    assert doc["variants"]["cpu"]["provenance"]["build_key"] == "key-cpu"
    assert doc["comparison"] is None
    assert summary.read_text().startswith("previous step\n# llama-harness benchmark report")
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left behind


def test_bad_input_names_file_and_field(tmp_path: Path) -> None:
    root = tmp_path / "reports"
    d = root / "cpu"
    d.mkdir(parents=True)
    (d / "bench.json").write_text("{not json")
    with pytest.raises(report.ReportError, match=r"cpu/bench\.json: not valid JSON"):
        report.collect(root)
    (d / "bench.json").write_text(json.dumps({"benchmarks": [{"extra_info": {}, "stats": {}}]}))
    with pytest.raises(report.ReportError, match=r"benchmarks\[0\]\.stats\.mean"):
        report.collect(root)
    (d / "bench.json").write_text(json.dumps({"results": []}))
    with pytest.raises(report.ReportError, match="'benchmarks' missing"):
        report.collect(root)
    (d / "bench.json").unlink()
    (d / "status.json").write_text(json.dumps({"state": "x"}))
    with pytest.raises(report.ReportError, match="field 'status'"):
        report.collect(root)


def test_empty_reports_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    with pytest.raises(report.ReportError, match="nox -s bench-"):
        report.write_report(tmp_path / "r", tmp_path / "out")
    assert cli_main(["report", "--reports", str(tmp_path / "missing")]) == 2


def test_results_taken_on_a_busy_machine_are_flagged(tmp_path: Path) -> None:
    root = tmp_path / "reports"
    doc = bench_doc("cpu", "tiny", {"tg128": 100.0, "pp512": 1000.0})
    doc["benchmarks"][0]["extra_info"]["loadavg"] = [3.9, 2.0, 1.0]  # 2 threads + other work
    doc["benchmarks"][1]["extra_info"]["loadavg"] = [2.2, 2.0, 1.0]  # just the benchmark
    write_variant(root, "cpu", doc)
    notes = report.collect(root).notes
    assert [n for n in notes if "under load" in n] == [
        "cpu/tiny: measured under load (tg128 t/s): the 1-min load average was 3.9 with 2 "
        "benchmark threads. Threads that must wait for each other at every step lose far more "
        "than their share, so these figures and the parity ratios from them are not the "
        "build's speed; rerun on an idle machine (`nox -s bench-cpu` with nothing else "
        "running), or with `nox -s bench-cpu -- --isolate` (own scheduler group, waits for "
        "quiet; still flagged when the machine stays busy)"
    ]


def _load(others: float, cores: int = 2) -> dict[str, Any]:
    return {"seconds": 5.0, "others_cores": others, "steal_cores": 0.0, "loadavg": [0.5, 0.5, 0.5],
            "cores": cores}  # fmt: skip


def test_every_row_measured_under_load_is_flagged(tmp_path: Path) -> None:
    """The tiny rows (harness busy) and the gemma rows (llama-bench busy) are both flagged,
    in the model tables and the parity table, each with a note saying why and what to do;
    the quiet row is not. (Only the gemma rows were flagged before, by load average.)"""
    root = tmp_path / "reports"
    doc = bench_doc("cpu", "tiny", {"pp512": 1000.0, "tg128": 100.0})
    for b in doc["benchmarks"]:
        b["extra_info"]["load"] = _load(1.3)  # the 1-min load average missed the burst
    gemma = bench_doc("cpu", "gemma", {"pp512": 354.0, "tg128": 43.0})
    for b in gemma["benchmarks"]:
        b["extra_info"]["load"] = _load(0.05)
    quiet = bench_doc("cpu", "other", {"tg128": 50.0})
    quiet["benchmarks"][0]["extra_info"]["load"] = _load(0.6, cores=16)  # 14 spare cores
    doc["benchmarks"] += gemma["benchmarks"] + quiet["benchmarks"]
    lb = llama_bench_doc("tiny", 1010, 101)
    lb["runs"][0]["load"] = _load(0.0)
    lb_g = llama_bench_doc("gemma", 350, 44)["runs"][0]
    lb_g["load"] = _load(1.8)
    lb["runs"].append(lb_g)
    write_variant(root, "cpu", doc, llama_bench=lb)
    out = report.write_report(root, tmp_path / "out", charts=False)
    rows = [ln for ln in out.text.splitlines() if ln.startswith("| cpu")]
    flagged = [ln.split("|")[1].strip() for ln in rows if "⚠ under load" in ln.split("|")[1]]
    assert flagged == ["cpu ⚠ under load", "cpu ⚠ under load"]  # gemma and tiny, not other
    parity = {(ln.split("|")[2].strip(), ln.split("|")[3].strip()): ln.split("|")[7].strip()
              for ln in rows if ln.count("|") == 8}  # fmt: skip
    assert parity[("tiny", "tg128")] == "⚠ under load (harness)"
    assert parity[("gemma", "pp512")] == "⚠ under load (llama-bench)"
    notes = [n for n in out.text.splitlines() if "measured under load" in n]
    assert len(notes) == 2
    assert "cpu/tiny" in notes[1] and "other work kept 1.30 of 2 cores busy" in notes[1]
    assert "cpu/gemma" in notes[0] and "1.80 of 2 cores" in notes[0] and "--isolate" in notes[0]


def test_low_parity_is_explained_from_llama_cpps_own_timer(tmp_path: Path) -> None:
    root = tmp_path / "reports"
    doc = bench_doc("cpu", "gemma", {"pp512": 320.0, "tg128": 48.6})
    doc["benchmarks"][0]["extra_info"]["c_side_tps"] = 352.0  # python costs the difference
    doc["benchmarks"][1]["extra_info"]["c_side_tps"] = 49.0  # llama.cpp itself slower
    write_variant(root, "cpu", doc, llama_bench=llama_bench_doc("gemma", 354.0, 60.3))
    notes = report.collect(root).notes
    pp = next(n for n in notes if "pp512: parity" in n)
    tg = next(n for n in notes if "tg128: parity" in n)
    assert "the gap is Python's cost, 145.45 ms per 512 tokens" in pp
    assert "tg128: parity 0.806" in tg and "the time is lost inside llama.cpp" in tg


def test_change_within_the_noise_is_not_a_regression(tmp_path: Path) -> None:
    base, cur = tmp_path / "base", tmp_path / "cur"
    noisy_base = bench_doc("cpu", "tiny", {"tg128": 100.0})
    noisy_cur = bench_doc("cpu", "tiny", {"tg128": 90.0})
    for doc in (noisy_base, noisy_cur):  # 10 % slower, but each run spreads by ±8
        doc["benchmarks"][0]["extra_info"]["metrics"]["tg128"]["stddev"] = 8.0
    write_variant(base, "cpu", noisy_base)
    write_variant(cur, "cpu", noisy_cur)
    (r,) = report.compare(report.collect(cur), report.collect(base), threshold_pct=5.0)
    assert r.change_pct == pytest.approx(10.0)
    assert r.sigmas == pytest.approx(10.0 / (2**0.5 * 8.0))
    assert not r.regressed
    (r,) = report.compare(report.collect(cur), report.collect(base), min_sigmas=0.0)
    assert r.regressed


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_latency_chart_fits_a_readme_with_units_per_panel(tmp_path: Path) -> None:
    """Five latency panels used to sit in one 2530x484 row, in raw seconds (the pool's
    69 µs as 7e-5), one error bar below zero."""
    root = tmp_path / "reports"
    lat = {"load_cold": 0.497, "load_warm": 69e-6, "ttft": 0.157, "chat_raw": 3.19,
           "chat_client": 3.24}  # fmt: skip
    write_variant(root, "cpu", bench_doc("cpu", "gemma-3-270m", lat))
    tiny = {"load_cold": 0.0143, "load_warm": 55e-6, "ttft": 0.0044, "chat_raw": 0.0323,
            "chat_client": 0.032}  # fmt: skip
    doc = bench_doc("cpu", "tiny", tiny)
    doc["benchmarks"][1]["stats"]["stddev"] = 80e-6  # spread larger than the mean
    write_variant(root, "cpu-b", doc)
    charts = report.render_charts(report.collect(root), tmp_path / "charts")
    width, height = _png_size(next(c for c in charts if c.name == "latency.png"))
    assert width <= 1000 and height <= 1300, (width, height)
    assert report.time_unit([0.497, 0.0143]) == ("ms", 1e3)
    assert report.time_unit([69e-6, 55e-6]) == ("µs", 1e6)
    assert report.time_unit([3.19, 0.032]) == ("s", 1.0)
    lower, upper = report.error_bars([55.0, 10.0], [80.0, 1.0], log=False)
    assert lower == [55.0, 1.0] and upper == [80.0, 1.0]  # never below zero
    lower, _ = report.error_bars([55.0], [80.0], log=True)
    assert 55.0 - lower[0] > 0  # stays above the bottom of a log axis


def test_streaming_rows_have_their_own_table(tmp_path: Path) -> None:
    """benchmarks/test_streaming.py: stream t/s next to the C-side eval rate of the same run,
    the ratio (flagged below 0.95), the floor of the same rounds (with its loop when
    recorded), llama-bench tg,
    TTFT, threads and load."""
    root = tmp_path / "reports"
    doc = bench_doc("cpu", "tiny", {"tg128": 100})
    for n, (stream, c_side) in {128: (98.0, 100.0), 2048: (80.0, 100.0)}.items():
        extra = {
            **doc["benchmarks"][0]["extra_info"],
            "metric": f"stream{n}",
            "loadavg": [0.5, 0.4, 0.3],
            **({"floor_loop": "C"} if n == 128 else {}),
            "metrics": {
                f"stream{n}": _metric(stream, 1.0, "t/s", True),
                f"stream{n}_c": _metric(c_side, 1.0, "t/s", True),
                f"stream{n}_ratio": _metric(stream / c_side, 0.01, "x", True),
                f"stream{n}_ttft": _metric(0.012, 0.001, "s", False),
                f"stream{n}_floor": _metric(0.96 if n == 128 else 0.93, 0.002, "x", True),
            },
        }
        doc["benchmarks"].append({"name": f"test_stream_rate[{n}]", "extra_info": extra})
    write_variant(root, "cpu", doc)
    (root / "cpu" / "llama-bench.json").write_text(json.dumps(llama_bench_doc("tiny", 1000, 105)))
    lines = report.render_markdown(report.collect(root)).splitlines()
    tiny = lines[lines.index("## tiny") : lines.index("## Parity with llama-bench")]
    assert not any("stream128" in line for line in tiny)  # not a column of the model table
    start = next(i for i, line in enumerate(lines) if line.startswith("## Streaming"))
    rows = [line for line in lines[start:] if line.startswith("| cpu | tiny |")]
    assert rows[0].startswith(
        "| cpu | tiny | 128 | 98.0 ±1.0% | 100 ±1.0% | 0.980 ±0.010 | 0.960 ±0.002 (C) |"
    )
    assert "105 ±1.0% (tg128)" in rows[0] and "| 2 | 0.50 |" in rows[0]
    assert (
        rows[1].startswith("| cpu | tiny | 2048 |") and "0.800 ±0.010 ⚠ | 0.930 ±0.002 |" in rows[1]
    )


def test_a_variant_without_bench_json_names_no_private_path(tmp_path: Path) -> None:
    """The report is published (docs/report-cpu, CI): it names the variant's folder, never
    the absolute path of the machine that wrote it."""
    root = tmp_path / "reports"
    write_variant(root, "cpu", bench_doc("cpu", "tiny", {"pp512": 1000, "tg128": 100}))
    write_variant(root, "cpu-native", None, status={"status": "passed"})
    text = report.render_markdown(report.collect(root), machine=report.machine_info())
    row = next(line for line in text.splitlines() if line.startswith("| cpu-native |"))
    assert "no-bench: cpu-native/bench.json missing (`nox -s bench-cpu-native` writes it)" in row
    assert str(tmp_path) not in text


def test_batching_rows_have_their_own_table(tmp_path: Path) -> None:
    """benchmarks/test_batching.py: B client streams next to llama-batched-bench's S_TG of
    the same round, the ratio (flagged below 0.9), TTFT, join steps, threads and load."""
    root = tmp_path / "reports"
    doc = bench_doc("cpu", "gemma-3-270m", {"tg128": 50})
    metrics: dict[str, Any] = {}
    for b, (ours, lbb) in {1: (50.0, 52.0), 8: (85.0, 100.0)}.items():
        metrics[f"batch{b}"] = _metric(ours, 1.0, "t/s", True)
        metrics[f"batch{b}_lbb"] = _metric(lbb, 1.0, "t/s", True)
        metrics[f"batch{b}_ratio"] = _metric(ours / lbb, 0.01, "x", True)
        metrics[f"batch{b}_ttft"] = _metric(0.25, 0.01, "s", False)
        metrics[f"batch{b}_join"] = _metric(1.0 if b > 1 else 0.0, 0.0, "steps", False)
    extra = {
        **doc["benchmarks"][0]["extra_info"],
        "metric": "batch",
        "loadavg": [0.7, 0.4, 0.3],
        "llama_batched_bench": "llama-batched-bench -m MODEL -npl 1,8",
        "metrics": metrics,
    }
    doc["benchmarks"].append({"name": "test_batched_streams[gemma-3-270m]", "extra_info": extra})
    write_variant(root, "cpu", doc)
    lines = report.render_markdown(report.collect(root)).splitlines()
    model = lines[lines.index("## gemma-3-270m") : lines.index("## gemma-3-270m") + 6]
    assert not any("batch8" in line for line in model)  # not a column of the model table
    start = next(i for i, line in enumerate(lines) if line.startswith("## Batching"))
    assert "`llama-batched-bench -m MODEL -npl 1,8`" in lines[start + 2]
    rows = [line for line in lines[start:] if line.startswith("| cpu | gemma-3-270m |")]
    assert rows[0].startswith("| cpu | gemma-3-270m | 1 | 50.0 ±2.0% | 52.0 ±1.9% | 0.962 ±0.010 |")
    assert rows[0].endswith("| 250.0 ms ±4.0% | 0 | 2 | 0.70 |")
    assert rows[1].startswith("| cpu | gemma-3-270m | 8 |") and "0.850 ±0.010 ⚠" in rows[1]
