"""Streaming at the decoder's speed: ``generate_stream`` tokens/s at 128, 512 and 2,048
tokens (128 and 512 in the reduced benchmark set, see benchlib.bench_set), next to
llama.cpp's own eval rate in the same run (issue #11).

Each round starts a new conversation (the prompt is evaluated in full), streams exactly
``n`` tokens (temperature 0, ``ignore_eos``: a random model's EOS cannot cut it short) and
measures, at the consumer of the stream:

* ``stream<n>``: tokens/s from the first chunk to the last (the steady streaming rate);
* ``stream<n>_c``: llama.cpp's eval rate over the same window (``llama_perf_context``:
  ``n_eval`` / ``t_eval``, counters reset when the first chunk arrives), i.e. what the
  decoder alone would give;
* ``stream<n>_ratio``: the two divided, per round (the share of the window spent decoding;
  the target is >= 0.95 at every length, flat in length);
* ``stream<n>_ttft``: time to the first chunk (prompt evaluation included);
* ``stream<n>_floor``: the same ratio for the barest loop Python can drive on the same
  context, in the same round (``benchlib.python_floor``: one-token ``llama_decode`` and an
  argmax, nothing else), the ceiling of a stream whose every token passes through Python on
  this model and machine (on the tiny model a token decodes in ~0.1 ms, and one ctypes call
  and an argmax are a few percent of that); the client's greedy steady state decodes in C
  (``saiverse_llm.native_loop``) and can pass it.

Both rates come from the same run, so competing work on the machine moves them together;
the load is recorded with every result. llama-bench's tg for the same build and threads is
in the report beside them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from benchlib import (
    BenchEnv,
    BenchModel,
    latency_metric,
    loaded_client,
    new_conversation,
    python_floor,
    rate_metric,
    stream_lengths,
)

from harness.bench.llama_bench import BenchSettings

llama_cpp = pytest.importorskip("llama_cpp", reason="the benchmarks need a llama-cpp-python build")

from saiverse_llm.client import LlamaCppClient  # noqa: E402

LENGTHS = stream_lengths()
MESSAGES = [{"role": "user", "content": "Tell me a long story about a cat in Kyoto."}]
SEED = 1234


@pytest.fixture(scope="module")
def stream_client(
    bench_model: BenchModel, settings: BenchSettings, bench_env: BenchEnv
) -> Iterator[LlamaCppClient]:
    with loaded_client(
        bench_model, settings, bench_env, context_length=max(LENGTHS) + 256
    ) as client:
        yield client


@pytest.mark.parametrize("n_gen", LENGTHS)
def test_stream_rate(
    benchmark: Any,
    rounds: Callable[[str], tuple[int, int]],
    bench_model: BenchModel,
    settings: BenchSettings,
    stream_client: LlamaCppClient,
    extra: Callable[..., dict[str, Any]],
    n_gen: int,
) -> None:
    client = stream_client
    llm = client.llama
    n_rounds, warmup = rounds("stream_len")
    runs: list[dict[str, float]] = []
    floors: list[float] = []
    prompt = client.format_prompt(MESSAGES).tokens

    def setup() -> None:
        model = client.load()
        floors.append(python_floor(model, prompt, n_gen)[0])
        new_conversation(model)

    def target() -> None:
        t0 = time.perf_counter()
        first = last = None
        for _chunk in client.generate_stream(
            MESSAGES, max_tokens=n_gen, temperature=0.0, seed=SEED, ignore_eos=True
        ):
            last = time.perf_counter()
            if first is None:
                first = last
                llama_cpp.llama_perf_context_reset(llm.ctx)  # count the window only
        usage = client.consume_usage()
        llama_cpp.llama_synchronize(llm.ctx)
        perf = llama_cpp.llama_perf_context(llm.ctx)
        assert usage is not None and usage.completion_tokens == n_gen, usage
        assert first is not None and last is not None and last > first
        window = last - first
        t_eval = float(perf.t_eval_ms) / 1000.0
        runs.append(
            {
                "ttft": first - t0,
                "stream": int(perf.n_eval) / window,
                "c_side": int(perf.n_eval) / t_eval if t_eval > 0 else float("nan"),
                "ratio": t_eval / window,
                "n_eval": float(perf.n_eval),
                "e2e": n_gen / (last - t0),
            }
        )

    benchmark.pedantic(target, setup=setup, rounds=n_rounds, warmup_rounds=warmup)
    kept = runs[warmup:] if len(runs) > warmup else runs
    kept_floors = floors[warmup:] if len(floors) > warmup else floors
    report = client.load_report()
    extra(
        bench_model,
        metric=f"stream{n_gen}",
        max_tokens=n_gen,
        seed=SEED,
        temperature=0.0,
        ignore_eos=True,
        n_ctx=report.get("n_ctx"),
        chat_template=report.get("chat_template"),
        sampler_route="greedy",
        n_eval_window=[r["n_eval"] for r in kept],
        e2e_tps=[r["e2e"] for r in kept],
        metrics={
            f"stream{n_gen}": rate_metric([r["stream"] for r in kept], "t/s"),
            f"stream{n_gen}_c": rate_metric([r["c_side"] for r in kept], "t/s"),
            f"stream{n_gen}_ratio": rate_metric([r["ratio"] for r in kept], "x"),
            f"stream{n_gen}_ttft": latency_metric([r["ttft"] for r in kept]),
            f"stream{n_gen}_floor": rate_metric(kept_floors, "x"),
        },
    )
