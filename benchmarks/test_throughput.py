"""pp / tg tokens per second as llama-bench defines them, and cold model load time.

Through llama-cpp-python's own ``Llama.eval`` (the path every completion takes) on the
installed build, so ``harness / llama-bench`` shows what the Python binding costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from benchlib import (
    BenchEnv,
    BenchModel,
    Recorder,
    clear_kv,
    latency_metric,
    open_llama,
    peak_bandwidth_gbps,
    percent_metric,
    perf,
    random_tokens,
    synchronize,
    throughput_metric,
)

from harness.bench.llama_bench import BenchSettings
from saiverse_llm.engine import run_on_decode_thread

pytest.importorskip("llama_cpp", reason="the benchmarks need a llama-cpp-python build")


def _c_side(n: int, ms: float) -> float | None:
    return n / (ms / 1000.0) if ms > 0 else None


def test_pp(
    benchmark: Any,
    rounds: Callable[[str], tuple[int, int]],
    bench_model: BenchModel,
    settings: BenchSettings,
    bench_env: BenchEnv,
    extra: Callable[..., dict[str, Any]],
) -> None:
    """pp<n_prompt>: one eval of n_prompt tokens in n_batch batches, fresh KV cache."""
    n = settings.n_prompt
    loaded = open_llama(
        bench_model.path, n_ctx=n, s=settings, n_gpu_layers=bench_env.n_gpu_layers, swa_full=False
    )
    llm = loaded.llm
    try:
        tokens = random_tokens(llm, n)
        n_rounds, warmup = rounds("pp")
        rec = Recorder(warmup)

        def timed() -> None:
            t0 = time.perf_counter()
            llm.eval(tokens)
            synchronize(llm.ctx)
            rec.add(time.perf_counter() - t0, perf(llm.ctx))

        def target() -> None:
            run_on_decode_thread(timed)  # where the client decodes: one OpenMP team

        benchmark.pedantic(
            target, setup=lambda: clear_kv(llm), rounds=n_rounds, warmup_rounds=warmup
        )
        metric = throughput_metric(n, rec.samples)
        c = rec.perf_summary()
        assert c.get("n_p_eval") == n, f"llama.cpp counted {c.get('n_p_eval')} prompt tokens"
        extra(
            bench_model,
            metric=f"pp{n}",
            n_prompt=n,
            n_gen=0,
            n_ctx=n,
            offloaded_layers=loaded.offloaded,
            model_buffers_mib=loaded.buffers_mib,
            perf=c,
            wall_ms=sum(rec.samples) / len(rec.samples) * 1000.0,
            c_side_tps=_c_side(n, c.get("t_p_eval_ms", 0.0)),
            metrics={f"pp{n}": metric},
        )
    finally:
        llm.close()


def test_tg(
    benchmark: Any,
    rounds: Callable[[str], tuple[int, int]],
    bench_model: BenchModel,
    settings: BenchSettings,
    bench_env: BenchEnv,
    extra: Callable[..., dict[str, Any]],
) -> None:
    """tg<n_gen>: n_gen single-token evals, each synchronized, fresh KV cache."""
    n = settings.n_gen
    loaded = open_llama(
        bench_model.path, n_ctx=n, s=settings, n_gpu_layers=bench_env.n_gpu_layers, swa_full=False
    )
    llm = loaded.llm
    try:
        tokens = random_tokens(llm, n, seed=1)
        n_rounds, warmup = rounds("tg")
        rec = Recorder(warmup)
        ctx = llm.ctx

        def timed() -> None:
            t0 = time.perf_counter()
            for tok in tokens:
                llm.eval([tok])
                synchronize(ctx)
            rec.add(time.perf_counter() - t0, perf(ctx))

        def target() -> None:
            run_on_decode_thread(timed)  # where the client decodes: one OpenMP team

        benchmark.pedantic(
            target, setup=lambda: clear_kv(llm), rounds=n_rounds, warmup_rounds=warmup
        )
        metric = throughput_metric(n, rec.samples)
        c = rec.perf_summary()
        assert c.get("n_eval") == n, f"llama.cpp counted {c.get('n_eval')} generated tokens"
        metrics: dict[str, Any] = {f"tg{n}": metric}
        more: dict[str, Any] = {}
        if bench_env.backend not in ("CPU", "BLAS"):
            gpu_name = (bench_env.gpu or {}).get("name")
            peak = peak_bandwidth_gbps(gpu_name)
            achieved = bench_model.weight_bytes_per_token * metric["value"] / 1e9
            more = {"achieved_bw_gbps": achieved, "peak_bw_gbps": peak}
            if peak:
                metrics["tg_bw_fraction"] = percent_metric(
                    [
                        bench_model.weight_bytes_per_token * ts / 1e9 / peak * 100
                        for ts in metric["samples"]
                    ]
                )
        extra(
            bench_model,
            metric=f"tg{n}",
            n_prompt=0,
            n_gen=n,
            n_ctx=n,
            offloaded_layers=loaded.offloaded,
            model_buffers_mib=loaded.buffers_mib,
            perf=c,
            wall_ms=sum(rec.samples) / len(rec.samples) * 1000.0,
            c_side_tps=_c_side(n, c.get("t_eval_ms", 0.0)),
            metrics=metrics,
            **more,
        )
    finally:
        llm.close()


def test_load_cold(
    benchmark: Any,
    rounds: Callable[[str], tuple[int, int]],
    bench_model: BenchModel,
    settings: BenchSettings,
    bench_env: BenchEnv,
    extra: Callable[..., dict[str, Any]],
) -> None:
    """A fresh ``Llama(...)`` (model + context) each round; the file is in the page cache."""
    n_rounds, warmup = rounds("load_cold")
    rec = Recorder(warmup)
    offloaded: list[str] = []

    def target() -> Any:
        loaded = open_llama(
            bench_model.path,
            n_ctx=settings.n_prompt,
            s=settings,
            n_gpu_layers=bench_env.n_gpu_layers,
        )
        rec.add(loaded.load_s)
        offloaded.append(loaded.offloaded)
        return loaded

    holder: list[Any] = []

    def run() -> None:
        holder.append(target())

    def teardown() -> None:
        while holder:
            holder.pop().llm.close()

    benchmark.pedantic(run, teardown=teardown, rounds=n_rounds, warmup_rounds=warmup)
    extra(
        bench_model,
        metric="load_cold",
        n_ctx=settings.n_prompt,
        offloaded_layers=offloaded[-1] if offloaded else None,
        metrics={"load_cold": latency_metric(rec.samples)},
    )
