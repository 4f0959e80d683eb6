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
* ``stream<n>_floor``: the same ratio for the barest loop of the kind the client runs, on
  the same context, in the same round: the engine's compiled loop alone
  (``benchlib.c_floor``: one-token ``llama_decode``, ``llama_get_logits`` and an argmax,
  nothing else) when the client's greedy steady state runs it, else the barest Python loop
  (``benchlib.python_floor``); ``floor_loop`` says which. It is the ratio's ceiling on this
  model, machine and load: llama.cpp's eval timer starts after ``llama_decode`` has checked
  the batch, so even a loop with nothing but decodes stays below 1 (on the tiny model, whose
  token takes ~0.1 ms, by 3-5 %).

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
    c_floor,
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
    floor_loops: set[str] = set()
    prompt = client.format_prompt(MESSAGES).tokens

    def setup() -> None:
        model = client.load()
        compiled = c_floor(model, prompt, n_gen) if model.engine.native else None
        floor_loops.add("C" if compiled is not None else "Python")
        floors.append((compiled or python_floor(model, prompt, n_gen))[0])
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
        floor_loop="/".join(sorted(floor_loops)),
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
