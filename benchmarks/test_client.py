"""The SAIVerse client: warm load from its pool, time to first token and end-to-end tokens/s
through ``generate_stream``, and its overhead over a raw ``Llama.create_chat_completion`` on
the same loaded model with the same parameters.

Every round starts a new conversation (``Llama.reset()`` in the untimed set-up): the prompt is
evaluated in full, not served from the KV cache of the previous round.

The two chat rows (``chat_raw``, ``chat_client``) time the same work: the same prompt tokens
and the same number of completion tokens. The client ends a reply at its template's stop
strings (``alpaca``'s ``"\n### "``, which llama-cpp-python's formatter does not name: on
Gemma 3 270M the client's reply ends after 14 tokens where the raw one runs to 128), and
``create_chat_completion`` has no ``ignore_eos``. So both rows run as configured with
``max_tokens`` set to the shorter of the two sides' replies at ``n_gen`` (each measured once,
untimed, with the rows' seed: a fixed seed on a new conversation gives the same reply every
round). Each row records its completion tokens per round (``completion_tokens``) and the two
uncapped lengths (``completion_tokens_at_n_gen``); the report derives the client overhead only
when every round of both rows generated the same number (harness.bench.report.unequal_work).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from benchlib import (
    BenchEnv,
    BenchModel,
    Recorder,
    bench_client,
    latency_metric,
    mean_std,
    new_conversation,
    perf,
    synchronize,
)

from harness.bench.llama_bench import BenchSettings

pytest.importorskip("llama_cpp", reason="the benchmarks need a llama-cpp-python build")

from saiverse_llm.client import LlamaCppClient
from saiverse_llm.pool import ModelPool

# No system message: Gemma's format has no system role and the raw path would drop it.
MESSAGES = [
    {"role": "user", "content": "Hello! Please introduce yourself."},
    {"role": "assistant", "content": "Hi, I am a persona living in SAIVerse."},
    {"role": "user", "content": "今日はどんな一日でしたか？ Tell me about your day in detail."},
]
CONTEXT_LENGTH = 1024
SEED = 1234
TEMPERATURE = 0.7
TOP_P = 0.9


def _client(
    model: BenchModel, s: BenchSettings, env: BenchEnv, pool: ModelPool[Any]
) -> LlamaCppClient:
    return bench_client(
        model,
        s,
        env,
        pool=pool,
        context_length=CONTEXT_LENGTH,
        parameters={"temperature": TEMPERATURE, "top_p": TOP_P, "max_tokens": s.n_gen},
    )


@pytest.fixture
def pooled(
    bench_model: BenchModel, settings: BenchSettings, bench_env: BenchEnv
) -> Iterator[tuple[LlamaCppClient, ModelPool[Any]]]:
    pool: ModelPool[Any] = ModelPool(max_models=1)
    client = _client(bench_model, settings, bench_env, pool)
    client.load()
    try:
        yield client, pool
    finally:
        pool.unload_all()


def _report_extra(client: LlamaCppClient) -> dict[str, Any]:
    r = client.load_report()
    return {
        "offloaded_layers": f"{r.get('n_layers_offloaded')}/{r.get('n_layers_total')}",
        "client_backend": r.get("backend"),
        "model_buffers_mib": r.get("buffers_mib"),
        "n_ctx": r.get("n_ctx"),
        "chat_template": r.get("chat_template"),
    }


def test_load_warm(
    benchmark: Any,
    rounds: Callable[[str], tuple[int, int]],
    bench_model: BenchModel,
    settings: BenchSettings,
    bench_env: BenchEnv,
    pooled: tuple[LlamaCppClient, ModelPool[Any]],
    extra: Callable[..., dict[str, Any]],
) -> None:
    """A new client for an already loaded model: key, pool lookup, no llama.cpp load."""
    first, pool = pooled
    n_rounds, warmup = rounds("load_warm")
    rec = Recorder(warmup)
    loaded = first.load()

    def target() -> None:
        t0 = time.perf_counter()
        got = _client(bench_model, settings, bench_env, pool).load()
        rec.add(time.perf_counter() - t0)
        assert got is loaded, "the pool loaded the model again"

    benchmark.pedantic(target, rounds=n_rounds, warmup_rounds=warmup)
    extra(
        bench_model,
        metric="load_warm",
        **_report_extra(first),
        metrics={"load_warm": latency_metric(rec.samples)},
    )


def test_stream(
    benchmark: Any,
    rounds: Callable[[str], tuple[int, int]],
    bench_model: BenchModel,
    settings: BenchSettings,
    pooled: tuple[LlamaCppClient, ModelPool[Any]],
    extra: Callable[..., dict[str, Any]],
) -> None:
    """generate_stream: time to the first chunk and completion tokens / total time."""
    client, _pool = pooled
    llm = client.llama
    n_rounds, warmup = rounds("stream")
    ttft: list[float] = []
    totals: list[float] = []
    tokens: list[int] = []
    perfs: list[dict[str, float]] = []

    def target() -> None:
        t0 = time.perf_counter()
        first: float | None = None
        for _chunk in client.generate_stream(MESSAGES, seed=SEED):
            if first is None:
                first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        usage = client.consume_usage()
        synchronize(llm.ctx)
        ttft.append(first if first is not None else total)
        totals.append(total)
        tokens.append(usage.completion_tokens if usage else 0)
        perfs.append(perf(llm.ctx))

    benchmark.pedantic(
        target, setup=lambda: new_conversation(client.load()), rounds=n_rounds, warmup_rounds=warmup
    )
    keep = slice(warmup, None) if len(totals) > warmup else slice(None)
    ttft, totals, tokens, perfs = ttft[keep], totals[keep], tokens[keep], perfs[keep]
    assert min(tokens) > 0, "generate_stream produced no tokens"
    tps = [n / t for n, t in zip(tokens, totals, strict=True)]
    avg, std = mean_std(tps)
    extra(
        bench_model,
        metric="stream",
        max_tokens=settings.n_gen,
        seed=SEED,
        temperature=TEMPERATURE,
        top_p=TOP_P,
        completion_tokens=tokens,
        **_report_extra(client),
        perf_last=perfs[-1] if perfs else {},
        metrics={
            "ttft": latency_metric(ttft),
            "stream": {
                "value": avg,
                "stddev": std,
                "unit": "t/s",
                "higher_is_better": True,
                "rounds": len(tps),
                "samples": tps,
            },
        },
    )


def _raw_chat(loaded: Any, chat_format: str | None, max_tokens: int) -> int:
    """One raw ``Llama.create_chat_completion`` of MESSAGES on ``loaded`` (the client's loaded
    model, ``client.load()``), with the client's parameters and chat format (the GGUF's
    template, or the configured chat_format), on the thread the client decodes on (a second
    decoding thread would slow both). Returns its completion tokens."""

    def raw(llm: Any) -> int:
        saved = llm.chat_format
        if chat_format:
            llm.chat_format = chat_format
        try:
            out = llm.create_chat_completion(
                messages=MESSAGES,
                max_tokens=max_tokens,
                temperature=TEMPERATURE,
                top_p=TOP_P,
                seed=SEED,
            )
        finally:
            llm.chat_format = saved
        return int(out["usage"]["completion_tokens"])

    result: int = loaded.engine.run_exclusive(raw)
    return result


def _client_chat(client: LlamaCppClient, max_tokens: int) -> int:
    """One ``client.generate`` of MESSAGES; its completion tokens."""
    client.generate(MESSAGES, seed=SEED, max_tokens=max_tokens)
    usage = client.consume_usage()
    return usage.completion_tokens if usage else 0


def _reply_lengths(client: LlamaCppClient, bench_model: BenchModel, n_gen: int) -> dict[str, int]:
    """Completion tokens of one untimed reply of each side at ``max_tokens = n_gen``, each on
    a new conversation with the rows' seed: ``{"client": n, "raw": n}``. Both chat rows use
    the smaller as ``max_tokens``, so both generate that many tokens every round."""
    model = client.load()
    new_conversation(model)
    lengths = {"client": _client_chat(client, n_gen)}
    new_conversation(model)
    lengths["raw"] = _raw_chat(model, bench_model.chat_format, n_gen)
    return lengths


def _chat_bench(
    benchmark: Any,
    bench_model: BenchModel,
    settings: BenchSettings,
    client: LlamaCppClient,
    extra: Callable[..., dict[str, Any]],
    *,
    metric: str,
    call: Callable[[int], int],
    n_rounds: int,
    warmup: int,
) -> None:
    """Time ``call(max_tokens)`` (one reply; returns its completion tokens) with ``max_tokens``
    the shorter side's reply (:func:`_reply_lengths`)."""
    lengths = _reply_lengths(client, bench_model, settings.n_gen)
    max_tokens = min(lengths.values())
    llm = client.llama
    rec = Recorder(warmup)
    counts: list[int] = []

    def target() -> None:
        t0 = time.perf_counter()
        n = call(max_tokens)
        rec.add(time.perf_counter() - t0, perf(llm.ctx))
        counts.append(n)

    benchmark.pedantic(
        target, setup=lambda: new_conversation(client.load()), rounds=n_rounds, warmup_rounds=warmup
    )
    kept = counts[warmup:] if len(counts) > warmup else counts
    assert min(kept) > 0, f"{metric}: no tokens generated"
    extra(
        bench_model,
        metric=metric,
        max_tokens=max_tokens,
        n_gen=settings.n_gen,
        completion_tokens_at_n_gen=lengths,
        seed=SEED,
        temperature=TEMPERATURE,
        top_p=TOP_P,
        completion_tokens=kept,
        perf=rec.perf_summary(),
        **_report_extra(client),
        metrics={metric: latency_metric(rec.samples)},
    )


def test_chat_raw(
    benchmark: Any,
    rounds: Callable[[str], tuple[int, int]],
    bench_model: BenchModel,
    settings: BenchSettings,
    pooled: tuple[LlamaCppClient, ModelPool[Any]],
    extra: Callable[..., dict[str, Any]],
) -> None:
    """Raw ``Llama.create_chat_completion`` on the client's loaded model, same parameters
    and chat format as the client (the GGUF's template, or the configured chat_format)."""
    client, _pool = pooled
    n_rounds, warmup = rounds("chat")
    loaded = client.load()

    def call(max_tokens: int) -> int:
        return _raw_chat(loaded, bench_model.chat_format, max_tokens)

    _chat_bench(
        benchmark,
        bench_model,
        settings,
        client,
        extra,
        metric="chat_raw",
        call=call,
        n_rounds=n_rounds,
        warmup=warmup,
    )


def test_chat_client(
    benchmark: Any,
    rounds: Callable[[str], tuple[int, int]],
    bench_model: BenchModel,
    settings: BenchSettings,
    pooled: tuple[LlamaCppClient, ModelPool[Any]],
    extra: Callable[..., dict[str, Any]],
) -> None:
    """``client.generate`` (messages normalised, template, tool parsing, usage) end to end."""
    client, _pool = pooled
    n_rounds, warmup = rounds("chat")

    def call(max_tokens: int) -> int:
        return _client_chat(client, max_tokens)

    _chat_bench(
        benchmark,
        bench_model,
        settings,
        client,
        extra,
        metric="chat_client",
        call=call,
        n_rounds=n_rounds,
        warmup=warmup,
    )
