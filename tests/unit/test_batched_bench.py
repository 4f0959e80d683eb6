"""llama-batched-bench's command line and output (no build needed)."""

from __future__ import annotations

from pathlib import Path

from harness.bench import batched_bench
from harness.build.native_tools import NativeTools

JSONL = """
main: n_kv_max = 2048, n_batch = 512
{"n_kv_max": 2048, "pp": 64, "tg": 64, "pl": 1, "t_tg": 1.2, "speed_tg": 51.9}
llama_perf_context_print: load time = 1 ms
{"n_kv_max": 2048, "pp": 64, "tg": 64, "pl": 8, "t_tg": 5.0, "speed_tg": 101.9}
{"n_kv_max": 2048, "pp": 64, "tg": 64, "pl": 1, "t_tg": 1.3, "speed_tg": 49.0}
{"broken
"""


def test_results_are_read_by_batch_size_from_the_json_lines() -> None:
    records = batched_bench.parse(JSONL)
    assert sorted(records) == [1, 8]
    assert records[8]["speed_tg"] == 101.9
    assert records[1]["speed_tg"] == 51.9  # the first run of B = 1 (the repeat may be lost)


def test_the_command_matches_the_clients_engine(tmp_path: Path) -> None:
    """One KV stream of n_ctx_seq cells per sequence (-c is n_ctx_seq times the largest B,
    the cache not unified), llama.cpp's library default swa_full, flash attention off,
    the same threads for generation and batches."""
    tools = NativeTools(variant="cpu", key="k", directory=tmp_path, info={"tools": {
        "llama-batched-bench": {}}})  # fmt: skip
    s = batched_bench.BatchedSettings(n_threads=2, batches=(1, 2, 4, 8), n_ctx_seq=256)
    cmd = batched_bench.command(tools, Path("m.gguf"), s)
    assert cmd[0] == str(tmp_path / "bin" / "llama-batched-bench")
    text = " ".join(cmd[1:])
    assert "-c 2048 " in text and "-npl 1,2,4,8,1 " in text and "-npp 64 -ntg 64" in text
    assert "-fa off --swa-full" in text and "-t 2 -tb 2" in text
    assert "-kvu" not in text
    assert text.endswith("--output-format jsonl")
    assert batched_bench.command_text(s).startswith("llama-batched-bench -m MODEL -c 2048")
