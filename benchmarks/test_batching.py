"""Continuous batching (issue #19): B concurrent client streams on one model, next to
llama.cpp's ``llama-batched-bench`` at the same B, in the same run.

Each round runs ``llama-batched-bench`` (built once in the wheel's tree,
:mod:`harness.bench.batched_bench`; B = 1, 2, 4, 8 sequences of 64 prompt and 64 generated tokens,
a 256-token context per sequence, the same threads and batch) and then, for each B, B
threads that each read a ``generate_stream`` (temperature 0, exactly 64 tokens,
``ignore_eos``) of a ~64-token prompt of its own, on a client with ``n_seq_max`` 8 and
``context_length`` 256. Per B it records:

* ``batch<B>``: the client's aggregate generation rate: tokens sampled per second over the
  steps in which all B sequences were decoding (the engine's step clock: one
  ``llama_decode`` of B tokens plus B samplers, reply builders and deliveries, while the B
  reader threads run), as ``llama-batched-bench``'s S_TG counts its generation phase;
* ``batch<B>_lbb``: ``llama-batched-bench``'s S_TG at the same B, same round;
* ``batch<B>_ratio``: the two divided, per round (goal >= 0.9 at every B);
* ``batch<B>_ttft``: time to the first chunk of a request that arrives while B - 1 streams
  decode (B = 1: alone), its prompt evaluation included;
* ``batch<B>_join``: decode steps that request waited for a sequence (the engine's own
  count; at most 1).

Both sides run in the same round, so other work on the machine moves them together; every
result records the load, and the report flags busy rows.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from benchlib import BenchEnv, BenchModel, latency_metric, loaded_client, rate_metric

from harness.bench import batched_bench
from harness.bench.llama_bench import BenchSettings

pytest.importorskip("llama_cpp", reason="the benchmarks need a llama-cpp-python build")

from saiverse_llm.client import LlamaCppClient

BATCHES = (1, 2, 4, 8)
N_PROMPT = 64
N_GEN = 64
N_CTX_SEQ = 256
SEED = 1234
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "near", "Kyoto")
#: a join timeout that tells "finished" from "blocked" (never a speed limit)
BLOCKED = 1800.0
#: A round repeats llama-batched-bench and the client's streams (interleaved) until it has
#: lasted this long, at most MAX_REPEATS times, and keeps the medians: a fast model's 64
#: tokens take 5-20 ms, and one hiccup of the host moved a single measurement by half (tiny
#: model, B = 4: llama-batched-bench's S_TG ±50% between rounds). A slow model's round is
#: longer than this: one repeat, as before.
ROUND_SECONDS = 3.0
MAX_REPEATS = 9


@pytest.fixture(scope="module")
def lbb_settings(settings: BenchSettings, bench_env: BenchEnv) -> batched_bench.BatchedSettings:
    return batched_bench.BatchedSettings(
        n_threads=settings.n_threads,
        n_batch=settings.n_batch,
        n_ubatch=settings.n_ubatch,
        n_prompt=N_PROMPT,
        n_gen=N_GEN,
        batches=BATCHES,
        n_ctx_seq=N_CTX_SEQ,
        flash_attn=settings.flash_attn,
        n_gpu_layers=bench_env.n_gpu_layers,
    )


@pytest.fixture(scope="module")
def lbb_tools(bench_env: BenchEnv) -> Any:
    if bench_env.variant == "local":
        pytest.skip(
            "llama-batched-bench is built per variant: set LLAMA_HARNESS_VARIANT to the "
            "installed build's variant (nox -s bench-<variant> sets it)"
        )
    try:
        return batched_bench.build(bench_env.variant)
    except batched_bench.BatchedBenchError as exc:
        pytest.fail(f"llama-batched-bench for {bench_env.variant}: {exc}")


@pytest.fixture(scope="module")
def batch_client(
    bench_model: BenchModel, settings: BenchSettings, bench_env: BenchEnv
) -> Iterator[LlamaCppClient]:
    with loaded_client(
        bench_model, settings, bench_env, context_length=N_CTX_SEQ, n_seq_max=max(BATCHES)
    ) as client:
        yield client


def prompts(client: LlamaCppClient, n: int) -> list[list[dict[str, str]]]:
    """``n`` different conversations whose rendered prompts have at most N_PROMPT tokens
    (as close to it as whole words allow)."""
    words = WORDS
    out = []
    for i in range(n):
        count = 1
        while True:
            text = f"Request {i}: " + " ".join(words[j % len(words)] for j in range(count + 1))
            messages = [{"role": "user", "content": text}]
            if len(client.format_prompt(messages).tokens) > N_PROMPT:
                break
            best, count = messages, count + 1
        out.append(best)
    return out


def run_streams(
    client: LlamaCppClient, convs: list[list[dict[str, str]]], *, max_tokens: int
) -> list[dict[str, float]]:
    """One reader thread per conversation, started together; per stream the submit, first
    and last chunk times and its completion tokens."""
    barrier = threading.Barrier(len(convs))
    out: list[dict[str, float]] = [{} for _ in convs]
    errors: list[BaseException] = []

    def read(i: int) -> None:
        try:
            barrier.wait()
            rec = out[i]
            rec["submit"] = time.perf_counter()
            for _chunk in client.generate_stream(
                convs[i], max_tokens=max_tokens, temperature=0.0, seed=SEED, ignore_eos=True
            ):
                now = time.perf_counter()
                rec.setdefault("first", now)
                rec["last"] = now
            usage = client.consume_usage()
            rec["tokens"] = float(usage.completion_tokens if usage else 0)
        except BaseException as exc:  # re-raised by the caller
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(convs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BLOCKED)
    assert not any(t.is_alive() for t in threads), "a reader thread is still blocked"
    if errors:
        raise errors[0]
    return out


def aggregate_rate(trace: list[tuple[float, int, int, float]], b: int) -> float:
    """Tokens per second over the steps that sampled all ``b`` sequences (from the end of
    the first such entry to the end of the last one; an entry is a step, or a call of the
    compiled loop that ran several: ``Engine.trace``)."""
    full = [i for i, (_, _, rows, _) in enumerate(trace) if rows == b]
    steps = sum(trace[i][1] for i in full)
    # the B readers render and submit their prompts one after another (the GIL), and the
    # first ones decode meanwhile: a quarter of the reply held in one batch is the least
    # that still measures the batch
    assert steps >= N_GEN // 4, f"only {steps} steps decoded all {b} sequences"
    assert len(full) >= 2, f"only {len(full)} trace entries decoded all {b} sequences"
    first, last = full[0], full[-1]
    tokens = sum(n * rows for _, n, rows, _ in trace[first + 1 : last + 1])
    return tokens / (trace[last][0] - trace[first][0])


def client_round(client: LlamaCppClient, b: int) -> float:
    model = client.load()
    engine = model.engine
    engine.flush()  # every prompt evaluated in full, as llama-batched-bench does
    convs = prompts(client, b)
    engine.trace = []
    try:
        streams = run_streams(client, convs, max_tokens=N_GEN)
    finally:
        trace, engine.trace = engine.trace, None
    assert all(s["tokens"] == N_GEN for s in streams), streams
    return aggregate_rate(trace, b)


def ttft_under_load(client: LlamaCppClient, b: int) -> tuple[float, int]:
    """TTFT of a request that arrives while ``b - 1`` streams decode, and the decode steps
    it waited for a sequence."""
    model = client.load()
    engine = model.engine
    engine.flush()
    convs = prompts(client, b)
    stop = threading.Event()
    decoding = threading.Barrier(b, timeout=BLOCKED)

    def background(conv: list[dict[str, str]]) -> None:
        stream = client.generate_stream(
            conv, max_tokens=4 * N_GEN, temperature=0.0, ignore_eos=True
        )
        waited = False
        try:
            for _ in stream:
                if not waited:  # decoding: its first text has arrived (the one chunk sure
                    waited = True  # to come: the compiled loop hands over up to 50 ms of
                    decoding.wait()  # text at a time, a tiny model's whole reply)
                if stop.is_set():
                    break
        finally:
            stream.close()  # type: ignore[attr-defined]
            if not waited:
                decoding.abort()  # the measurement fails instead of waiting for ever

    readers = [threading.Thread(target=background, args=(c,), daemon=True) for c in convs[:-1]]
    for r in readers:
        r.start()
    try:
        decoding.wait()
        t0 = time.perf_counter()
        stream = client.generate_stream(convs[-1], max_tokens=4, temperature=0.0)
        next(stream)
        ttft = time.perf_counter() - t0
        join = int(engine.stats()["last_join_wait"])
        stream.close()  # type: ignore[attr-defined]
    finally:
        stop.set()
        for r in readers:
            r.join(BLOCKED)
    assert engine.wait_idle(BLOCKED)
    return ttft, join


def test_batched_streams(
    benchmark: Any,
    rounds: Callable[[str], tuple[int, int]],
    bench_model: BenchModel,
    settings: BenchSettings,
    batch_client: LlamaCppClient,
    lbb_tools: Any,
    lbb_settings: batched_bench.BatchedSettings,
    extra: Callable[..., dict[str, Any]],
) -> None:
    client = batch_client
    n_rounds, warmup = rounds("batch")
    runs: list[dict[str, float]] = []

    def target() -> None:
        row: dict[str, float] = {}
        lbbs: dict[int, list[float]] = {b: [] for b in BATCHES}
        clients: dict[int, list[float]] = {b: [] for b in BATCHES}
        t0 = time.perf_counter()
        repeats = 0
        while repeats < MAX_REPEATS and (not repeats or time.perf_counter() - t0 < ROUND_SECONDS):
            lbb = batched_bench.run(lbb_tools, bench_model.path, lbb_settings)
            for b in BATCHES:
                lbbs[b].append(float(lbb[b]["speed_tg"]))
                clients[b].append(client_round(client, b))
            repeats += 1
        for b in BATCHES:
            row[f"lbb{b}"] = statistics.median(lbbs[b])
            row[f"client{b}"] = statistics.median(clients[b])
            row[f"ratio{b}"] = row[f"client{b}"] / row[f"lbb{b}"]
        row["repeats"] = float(repeats)
        for b in BATCHES:
            ttft, join = ttft_under_load(client, b)
            row[f"ttft{b}"] = ttft
            row[f"join{b}"] = float(join)
        runs.append(row)

    benchmark.pedantic(target, rounds=n_rounds, warmup_rounds=warmup)
    kept = runs[warmup:] if len(runs) > warmup else runs
    metrics: dict[str, Any] = {}
    for b in BATCHES:
        metrics[f"batch{b}"] = rate_metric([r[f"client{b}"] for r in kept], "t/s")
        metrics[f"batch{b}_lbb"] = rate_metric([r[f"lbb{b}"] for r in kept], "t/s")
        metrics[f"batch{b}_ratio"] = rate_metric([r[f"ratio{b}"] for r in kept], "x")
        metrics[f"batch{b}_ttft"] = latency_metric([r[f"ttft{b}"] for r in kept])
        joins = [r[f"join{b}"] for r in kept]
        metrics[f"batch{b}_join"] = {
            "value": max(joins),
            "stddev": 0.0,
            "unit": "steps",
            "higher_is_better": False,
            "rounds": len(joins),
            "samples": joins,
        }
    report = client.load_report()
    extra(
        bench_model,
        metric="batch",
        n_prompt=N_PROMPT,
        n_gen=N_GEN,
        n_ctx_seq=N_CTX_SEQ,
        n_seq_max=report.get("n_seq_max"),
        batches=list(BATCHES),
        temperature=0.0,
        ignore_eos=True,
        llama_batched_bench=batched_bench.command_text(lbb_settings),
        repeats_per_round=[int(r["repeats"]) for r in kept],
        metrics=metrics,
    )
