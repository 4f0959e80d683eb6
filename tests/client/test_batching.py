"""Concurrent requests on one model share the decoder (issue #19): continuous batching.

Every call is a job of the model's engine (``saiverse_llm.engine``). These tests run the
real build on the tiny model (f32 weights: the CPU backend computes a row the same way
whatever else is in the batch, so a request's text must not change when it runs beside
others). Texts that must not cross between sequences are forced with GBNF grammars.

No wall-clock limits: a join timeout here only tells "finished" from "blocked".
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from weather_tool import WEATHER_TOOLS

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

#: Long enough to tell a blocked call from a slow machine; a blocked call never ends.
BLOCKED = 300.0


def forced(text: str) -> Any:
    return llama_cpp.LlamaGrammar.from_string(f"root ::= {json.dumps(text)}", verbose=False)


def ask(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Tell me about topic number {i}, please."}]


LONG = [{"role": "user", "content": " ".join(f"word{i}" for i in range(60))}]


@pytest.fixture
def batched(
    make_client: Callable[..., Any], tiny: Path, fresh_pool: Any, ours_only: None
) -> Callable[..., Any]:
    """``batched(n_seq_max, loop=..., max_unread=..., **kwargs)``: a tiny-model client on a
    pool of its own, one thread (these tests check scheduling, not speed: one thread keeps
    them quick on a machine other jobs keep busy). ``loop``: "native" (the compiled steady
    loop, the default where it builds) or "python" (the engine's Python loop);
    ``max_unread``, ``chunk_seconds``: the engine's pause threshold and the compiled
    loop's time per call (it hands text over in pieces of up to 50 ms of decoding, so a
    tiny model's reply may be 2 pieces: tests that need a stream to pause set both small)."""

    def make(
        n_seq_max: int | None = 4,
        *,
        loop: str = "native",
        max_unread: int | None = None,
        chunk_seconds: float | None = None,
        **kwargs: Any,
    ) -> Any:
        kwargs.setdefault("context_length", 768)
        kwargs.setdefault("n_threads", 1)
        client = make_client(tiny, pool=fresh_pool, n_seq_max=n_seq_max, **kwargs)
        engine = client.load().engine
        engine.native = loop == "native"
        if engine.native:
            from saiverse_llm import native_loop

            native_loop.get()  # built before the test runs (else the Python loop runs)
        if max_unread is not None:
            engine.settings = dataclasses.replace(engine.settings, max_unread=max_unread)
        if chunk_seconds is not None:
            engine.settings = dataclasses.replace(engine.settings, chunk_seconds=chunk_seconds)
        return client

    return make


def run_threads(work: Callable[[int], None], n: int) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # collected and re-raised by the caller
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BLOCKED)
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"threads still blocked after {BLOCKED:.0f} s: {alive}"
    return errors


def cpu_backend(n_gpu_layers: int) -> bool:
    """The suite's models run on llama.cpp's CPU backend (no layer offloaded)."""
    return n_gpu_layers == 0 or not llama_cpp.llama_supports_gpu_offload()


def answered(client: Any, why: str, **kwargs: Any) -> str:
    """``client.generate(ask(1), temperature=0, **kwargs)`` on a thread of its own; fails
    with ``why`` when it is still blocked after BLOCKED seconds."""
    got: list[str] = []
    reader = threading.Thread(
        target=lambda: got.append(client.generate(ask(1), temperature=0.0, **kwargs)),
        daemon=True,
    )
    reader.start()
    reader.join(BLOCKED)
    assert not reader.is_alive(), why
    assert got
    return got[0]


def settle(model: Any) -> None:
    assert model.engine.wait_idle(BLOCKED), model.engine.stats()


def ran_loop(model: Any, loop: str) -> None:
    """The engine's steady state ran on ``loop`` ("native": the compiled loop's calls)."""
    calls = model.engine.stats()["native_calls"]
    if loop == "native":
        from saiverse_llm import native_loop

        if native_loop.get() is None:
            pytest.skip(f"the compiled loop is off here: {native_loop.why_not()}")
        assert calls > 0
    else:
        assert calls == 0


# --- an unread stream blocks no one ---------------------------------------------------


@pytest.mark.parametrize("n_seq_max", [1, 4])
@pytest.mark.parametrize("loop", ["native", "python"])
def test_an_unread_stream_does_not_block_another_thread(
    batched: Callable[..., Any], n_seq_max: int, loop: str
) -> None:
    """Issue #19: after one next() on a generate_stream generator, a second thread's
    generate_stream on the same model was still blocked 20 s later (the model's lock was
    held for the whole stream). With one sequence the unread stream is paused and gives
    its sequence way; with more, the second request simply takes another."""
    client = batched(n_seq_max, loop=loop, max_unread=4, chunk_seconds=0.001)
    opened = client.generate_stream(LONG, max_tokens=400, temperature=0.0, ignore_eos=True)
    first = next(opened)
    assert first
    got: list[str] = []

    def second(_: int) -> None:
        got.append("".join(client.generate_stream(ask(1), max_tokens=24, temperature=0.0)))

    errors = run_threads(second, 1)
    assert not errors, errors
    assert got and got[0]
    rest = "".join(opened)  # the paused stream still ends normally when read
    usage = client.consume_usage()
    assert usage is not None and usage.completion_tokens == 400
    assert rest
    settle(client.load())


@pytest.mark.parametrize("loop", ["native", "python"])
def test_a_stream_paused_and_preempted_resumes_with_the_same_text(
    batched: Callable[..., Any], loop: str
) -> None:
    client = batched(1, loop=loop, max_unread=4, chunk_seconds=0.001)
    alone = "".join(client.generate_stream(LONG, max_tokens=150, temperature=0.0, ignore_eos=True))
    model = client.load()
    model.engine.flush()
    opened = client.generate_stream(LONG, max_tokens=150, temperature=0.0, ignore_eos=True)
    head = next(opened)
    errors = run_threads(lambda _: client.generate(ask(2), max_tokens=16, temperature=0.0), 1)
    assert not errors, errors
    assert head + "".join(opened) == alone
    ran_loop(client.load(), loop)


@pytest.mark.parametrize("loop", ["native", "python"])
def test_a_stream_left_unread_too_long_is_freed_with_a_log_line(
    batched: Callable[..., Any], caplog: pytest.LogCaptureFixture, loop: str
) -> None:
    from saiverse_llm.engine import StreamTimeoutError

    client = batched(2, loop=loop, max_unread=4, chunk_seconds=0.001)
    model = client.load()
    model.engine.settings = dataclasses.replace(model.engine.settings, stall_timeout=0.5)
    opened = client.generate_stream(LONG, max_tokens=400, temperature=0.0, ignore_eos=True)
    with caplog.at_level(logging.WARNING, logger="saiverse_llm"):
        next(opened)
        settle(model)  # the stalled job ends by itself
    assert any("left unread" in r.getMessage() for r in caplog.records)
    assert model.engine.stats()["running"] == 0
    with pytest.raises(StreamTimeoutError, match="left unread"):
        for _ in opened:
            pass
    model.engine.flush()
    assert model.engine.cells_used() == 0


@pytest.mark.parametrize("how", ["close", "garbage-collected"])
@pytest.mark.parametrize("loop", ["native", "python"])
def test_an_abandoned_stream_frees_its_sequence(
    batched: Callable[..., Any], how: str, loop: str
) -> None:
    client = batched(2, loop=loop)
    model = client.load()
    model.engine.settings = dataclasses.replace(model.engine.settings, cache_prompts=False)
    stream = client.generate_stream(LONG, max_tokens=400, temperature=0.0, ignore_eos=True)
    next(stream)
    assert model.in_use
    if how == "close":
        stream.close()
    else:
        del stream
        gc.collect()
    settle(model)
    assert not model.in_use
    assert model.engine.cells_used() == 0
    usage = client.consume_usage()
    assert usage is not None and usage.finish_reason == "cancelled"


# --- the same text alone or beside others ----------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_a_request_gives_the_same_text_alone_and_beside_others(
    batched: Callable[..., Any], temperature: float
) -> None:
    """Greedy, and sampled with a fixed seed (each request has its own sampler chain):
    six requests (one with a prompt long enough to be evaluated in chunks while others
    decode) on four sequences give the texts they give one at a time."""
    if temperature > 0 and llama_cpp.llama_supports_gpu_offload():
        # Measured on Vulkan (llvmpipe): its kernels for a batch of several sequences differ
        # in the last bits from the one-row kernels, and sampling at 0.9 turns that into
        # another token now and then (test-vulkan: one run in two). Greedy text still has to
        # match there; sampled text alone vs batched is asserted on the CPU build.
        pytest.skip("sampled text alone vs batched is bit-exact only on the CPU backend")
    client = batched(4)
    model = client.load()
    prompts = [ask(i) for i in range(5)] + [LONG]
    kwargs = {"max_tokens": 40, "temperature": temperature, "seed": 7}
    alone = []
    for p in prompts:
        model.engine.flush()
        alone.append(client.generate(p, **kwargs))
    assert len(set(alone)) > 1
    model.engine.flush()
    together: dict[int, str] = {}
    barrier = threading.Barrier(len(prompts))

    def work(i: int) -> None:
        barrier.wait()
        if i % 2:
            together[i] = "".join(client.generate_stream(prompts[i], **kwargs))
        else:
            together[i] = client.generate(prompts[i], **kwargs)

    errors = run_threads(work, len(prompts))
    assert not errors, errors
    assert [together[i] for i in range(len(prompts))] == alone
    assert model.engine.stats()["steps"] > 0


def test_each_request_keeps_its_own_stop_strings_limits_grammar_and_tools(
    batched: Callable[..., Any],
) -> None:
    tools = WEATHER_TOOLS
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}\n</tool_call>'
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    client = batched(4)
    jobs: list[Callable[[], Any]] = [
        lambda: client.generate(ask(0), grammar=forced("alpha beta<<END>>gamma"), stop=["<<END>>"]),
        lambda: "".join(client.generate_stream(ask(1), max_tokens=7, ignore_eos=True, seed=3)),
        lambda: client.generate(ask(2), tools=tools, grammar=forced("調べます。" + call)),
        lambda: client.generate(ask(3), response_schema=schema, grammar=forced('{"n": 42}')),
        lambda: client.generate(ask(4), max_tokens=12, temperature=0.0),
    ]
    alone = [job() for job in jobs]
    assert alone[0] == "alpha beta"
    assert alone[2]["type"] == "both" and alone[2]["tool_args"] == {"city": "東京"}
    assert alone[3] == {"n": 42}
    engine = client.load().engine
    assert engine.stats()["peak_sequences"] == 1
    together: dict[int, Any] = {}
    barrier = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        barrier.wait()
        together[i] = jobs[i]()

    errors = run_threads(work, len(jobs))
    assert not errors, errors
    assert [together[i] for i in range(len(jobs))] == alone
    assert engine.stats()["peak_sequences"] >= 2  # they were decoded in one batch


# --- many threads, early closes ----------------------------------------------------------


@pytest.mark.parametrize("loop", ["native", "python"])
def test_eight_threads_twenty_requests_with_random_early_closes(
    batched: Callable[..., Any], loop: str
) -> None:
    """8 threads x 20 requests on 4 sequences: generate and generate_stream, some streams
    closed after a few chunks. Nothing deadlocks, every forced text arrives whole in its
    own request (no text crosses sequences), every free text (greedy) equals its solo
    run, an early-closed stream's text is a prefix of it, and the KV cells come back."""
    client = batched(4, loop=loop)
    model = client.load()
    n_threads, per_thread = 8, 20
    rng = random.Random(19)
    plan: list[list[dict[str, Any]]] = []
    for t in range(n_threads):
        row = []
        for i in range(per_thread):
            kind = rng.choice(["forced", "free", "free-stream", "close-early"])
            row.append({"kind": kind, "i": (t * per_thread + i) % 6, "cut": rng.randint(1, 6)})
        plan.append(row)
    free_kwargs = {"max_tokens": 24, "temperature": 0.0}
    solo = {}
    for i in range(6):
        model.engine.flush()
        solo[i] = client.generate(ask(i), **free_kwargs)

    def forced_text(t: int, i: int) -> str:
        return f"thread {t} request {i}: " + "abcdefghijklmnopqrstuvwxyz"[(t + i) % 26] * 9

    results: dict[tuple[int, int], tuple[str, str]] = {}

    def work(t: int) -> None:
        for i, item in enumerate(plan[t]):
            kind, p = item["kind"], item["i"]
            if kind == "forced":
                text = forced_text(t, i)
                got = "".join(client.generate_stream(ask(p), grammar=forced(text), max_tokens=64))
                results[t, i] = (kind, got)
            elif kind == "free":
                results[t, i] = (kind, client.generate(ask(p), **free_kwargs))
            elif kind == "free-stream":
                results[t, i] = (kind, "".join(client.generate_stream(ask(p), **free_kwargs)))
            else:
                stream: Iterator[str] = client.generate_stream(ask(p), **free_kwargs)
                got = ""
                for n, chunk in enumerate(stream):
                    got += chunk
                    if n + 1 >= item["cut"]:
                        break
                stream.close()  # type: ignore[attr-defined]
                results[t, i] = (kind, got)

    errors = run_threads(work, n_threads)
    assert not errors, errors
    assert len(results) == n_threads * per_thread
    for (t, i), (kind, got) in results.items():
        p = plan[t][i]["i"]
        if kind == "forced":
            assert got == forced_text(t, i), (t, i)
        elif kind == "close-early":
            assert solo[p].startswith(got), (t, i, got)
        else:
            assert got == solo[p], (t, i, kind)
    settle(model)
    stats = model.engine.stats()
    assert stats["running"] == stats["queued"] == stats["parked"] == 0, stats
    assert model.engine.cells_used() == stats["cached_tokens"]  # finished prompts, kept
    model.engine.flush()
    assert model.engine.cells_used() == 0
    assert not model.in_use
    ran_loop(client.load(), loop)


# --- joining -----------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["native", "python"])
def test_a_new_request_joins_at_the_next_step(batched: Callable[..., Any], loop: str) -> None:
    """While three streams decode, a fourth request gets a sequence at the next step
    (steps counted by the engine), and its tokens are decoded in the same batches."""
    from saiverse_llm.generation import Generation, ReplyBuilder
    from saiverse_llm.sampling import Sampler, SamplingParams

    client = batched(4, loop=loop)
    model = client.load()
    streams = [
        client.generate_stream(ask(i), max_tokens=300, temperature=0.0, ignore_eos=True)
        for i in range(3)
    ]
    readers = [threading.Thread(target=lambda s=s: "".join(s), daemon=True) for s in streams]
    for r in readers:
        r.start()
    while model.engine.stats()["steps"] < 20:
        threading.Event().wait(0.01)
    prompt = client.format_prompt(ask(4)).tokens
    params = SamplingParams(temperature=0.0, ignore_eos=True)
    waits = []
    for _ in range(3):
        gen = Generation(
            prompt, Sampler(model.vocab, params), ReplyBuilder(model.vocab, max_tokens=8)
        )
        job = model.engine.submit(gen)
        text = job.result()
        assert text
        assert job.admitted_step >= 0
        waits.append(job.admitted_step - job.submitted_step)
    assert max(waits) <= 1, waits
    for r in readers:
        r.join(BLOCKED)
    settle(model)
    ran_loop(client.load(), loop)


@pytest.mark.parametrize(
    ("uncached", "beside"), [("prompt", False), ("prompt", True), ("cache", False)]
)
def test_a_prompt_two_tokens_past_its_cache_is_answered(
    batched: Callable[..., Any], uncached: str, beside: bool
) -> None:
    """A prompt whose uncached part is exactly two tokens (a two-token prompt, or a cached
    prompt with its second-to-last token changed) takes a step of one prompt token without
    logits, then its last token alone. That first step is not a decoding step: repeating
    it as one (the engine's steady-state loop) decoded the last prompt token without logits
    and failed the request with "llama_get_logits_ith returned NULL", alone or beside a
    decoding stream (before the lean loop, it crashed the scheduler with an IndexError)."""
    from saiverse_llm.generation import Generation, ReplyBuilder
    from saiverse_llm.sampling import Sampler, SamplingParams

    client = batched(2)
    model = client.load()
    params = SamplingParams(temperature=0.0, ignore_eos=True)
    full = client.format_prompt(ask(1)).tokens

    def submit(prompt: list[int], max_tokens: int) -> Any:
        reply = ReplyBuilder(model.vocab, max_tokens=max_tokens)
        return model.engine.submit(Generation(prompt, Sampler(model.vocab, params), reply))

    if uncached == "cache":
        assert submit(full, 4).result()
        other = next(t for t in full if t != full[-2])
        prompt = [*full[:-2], other, full[-1]]  # the cache holds all but its last two tokens
    else:
        prompt = full[:2]
    stream = None
    got: list[str] = []

    def read() -> None:  # the other stream, read as it comes until it is cancelled
        from saiverse_llm.errors import GenerationError

        with contextlib.suppress(GenerationError):
            for chunk in stream.chunks():
                got.append(chunk)

    if beside:  # a stream decoding in the other sequence
        stream = submit(client.format_prompt(ask(2)).tokens, 700)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while not got:
            threading.Event().wait(0.001)
    try:
        job = submit(prompt, 8)
        text = job.result()
        assert stream is None or not stream.done, "the other stream ended before this joined"
    finally:
        if stream is not None:
            stream.cancel()
            reader.join(BLOCKED)
    assert job.state == "done" and job.gen.reply.n_tokens == 8
    if uncached == "cache":
        assert job.gen.cached_tokens == len(prompt) - 2
    settle(model)
    model.engine.flush()
    again = submit(prompt, 8)  # nothing cached: the whole prompt, then its last token alone
    assert again.result() == text
    settle(model)


def test_direct_use_of_the_llama_waits_for_running_requests(
    batched: Callable[..., Any],
) -> None:
    """``with model.lock:`` (llama-cpp-python's own calls) waits until no request runs;
    the requests around it are unaffected."""
    client = batched(4)
    model = client.load()
    kwargs = {"max_tokens": 60, "temperature": 0.0, "ignore_eos": True}
    model.engine.flush()
    alone = client.generate(ask(1), **kwargs)
    model.engine.flush()
    got: list[str] = []
    stream = client.generate_stream(ask(1), **kwargs)
    head = next(stream)
    reader = threading.Thread(target=lambda: got.append(head + "".join(stream)), daemon=True)
    reader.start()
    with model.lock:
        out = model.llm.create_completion("hello", max_tokens=4, temperature=0.0)
        assert model.engine.stats()["running"] == 0
    reader.join(BLOCKED)
    assert out["choices"][0]["text"] is not None
    assert got == [alone]


# --- a decode that fails -------------------------------------------------------------------


@pytest.mark.parametrize("n_streams", [1, 2])
@pytest.mark.parametrize("loop", ["native", "python"])
def test_a_decode_failing_mid_stream_ends_its_requests_and_frees_them(
    batched: Callable[..., Any], n_streams: int, n_gpu_layers: int, loop: str
) -> None:
    """llama.cpp aborts a decode while one stream (the engine's single-stream loop) or two
    (the batched loop) are mid-reply: each request ends with the decode's error, its
    sequence is freed, and the next request on the model runs normally. The abort is
    llama.cpp's own (``llama_set_abort_callback``), not a mock."""
    from saiverse_llm.generation import Generation, ReplyBuilder
    from saiverse_llm.sampling import Sampler, SamplingParams

    if not cpu_backend(n_gpu_layers):
        pytest.skip("llama.cpp's abort callback is checked by the CPU backend's graph compute")
    client = batched(2, loop=loop, chunk_seconds=0.001)  # many chunks before the abort
    model = client.load()
    params = SamplingParams(temperature=0.0, ignore_eos=True)

    def job(i: int) -> Any:
        prompt = client.format_prompt(ask(i)).tokens
        gen = Generation(
            prompt, Sampler(model.vocab, params), ReplyBuilder(model.vocab, max_tokens=600)
        )
        return model.engine.submit(gen)

    jobs = [job(i) for i in range(n_streams)]
    chunks = [0] * n_streams
    errors: list[BaseException | None] = [None] * n_streams

    def read(i: int) -> None:
        try:
            for _ in jobs[i].chunks():
                chunks[i] += 1
        except RuntimeError as exc:
            errors[i] = exc

    abort = threading.Event()
    callback = llama_cpp.ggml_abort_callback(lambda _data: abort.is_set())
    llama_cpp.llama_set_abort_callback(model.llm.ctx, callback, None)
    try:
        threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(n_streams)]
        for t in threads:
            t.start()
        while min(chunks) < 5:  # every request is past its prompt and decoding steadily
            assert not any(j.done for j in jobs), [j.state for j in jobs]
            threading.Event().wait(0.001)
        abort.set()
        for t in threads:
            t.join(BLOCKED)
    finally:
        abort.clear()
    for i, error in enumerate(errors):
        assert error is not None and "llama_decode returned 2 (aborted)" in str(error), (
            i,
            error,
            chunks,
        )
    assert all(j.state == "failed" for j in jobs)
    settle(model)
    after = job(7)
    assert after.result()
    assert after.gen.reply.n_tokens == 600
    settle(model)
    ran_loop(client.load(), loop)


# --- one scheduler thread for every model ----------------------------------------------------


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_every_model_decodes_on_the_one_scheduler_thread(
    batched: Callable[..., Any], n_gpu_layers: int
) -> None:
    """Two loaded models decode on one thread: a second model's first decodes start no
    thread of their own and no second OpenMP team (with llama.cpp's OpenMP CPU backend a
    team belongs to the thread that decodes, and a second one made every decode of the
    process ~3x slower on the tiny model: saiverse_llm.engine._Scheduler). Counted as the
    process's OS threads, before and after the second model's first reply."""
    if not cpu_backend(n_gpu_layers):
        pytest.skip("OpenMP teams are the CPU backend's; a GPU backend may start threads")
    kwargs = {"max_tokens": 40, "temperature": 0.0, "ignore_eos": True}
    first = batched(2, n_threads=2, context_length=512)
    second = batched(2, n_threads=2, context_length=640)  # another config: another model
    assert first.load() is not second.load()
    assert first.generate(ask(1), **kwargs)
    before = _os_threads()
    for i in range(3):
        assert second.generate(ask(i + 3), **kwargs)
        assert first.generate(ask(i + 3), **kwargs)
    assert _os_threads() == before
    names = [t.name for t in threading.enumerate()]
    assert names.count("saiverse-llm scheduler") == 1, names


def test_one_model_held_exclusively_does_not_stop_another(batched: Callable[..., Any]) -> None:
    """``with model.lock:`` on one model leaves the shared scheduler free for the others:
    a reply on a second model completes while the first is held."""
    held = batched(2, context_length=512)
    other = batched(2, context_length=640)
    with held.load().lock:
        assert answered(other, "a call on another model waited for the held one", max_tokens=20)
    assert held.generate(ask(1), max_tokens=5, temperature=0.0) is not None


def test_run_exclusive_runs_on_the_scheduler_thread(batched: Callable[..., Any]) -> None:
    """``Engine.run_exclusive(fn)`` calls ``fn(llm)`` on the thread every decode runs on,
    with no sequence running, and returns its result; the model serves calls after it."""
    client = batched(2)
    model = client.load()
    alone = client.generate(ask(1), max_tokens=20, temperature=0.0)
    seen: list[tuple[bool, int]] = []

    def probe(llm: Any) -> int:
        seen.append((model.engine.on_scheduler_thread(), model.engine.stats()["running"]))
        return int(llm.n_vocab())

    assert model.engine.run_exclusive(probe) == model.vocab.n_vocab
    assert seen == [(True, 0)]
    model.engine.flush()
    assert client.generate(ask(1), max_tokens=20, temperature=0.0) == alone


def test_unloading_a_model_held_exclusively_waits_for_the_holder(
    batched: Callable[..., Any],
) -> None:
    """The pool unloading (or evicting) a model while a thread is inside ``with
    model.lock:`` must not free the ``Llama`` under that thread: ``close()`` returns once
    the holder has let go, and the holder's own calls keep working until then."""
    client = batched(2)
    model = client.load()
    closer = threading.Thread(target=model.close, daemon=True)
    with model.lock:
        closer.start()
        closer.join(2.0)  # a close that does not wait for the holder ends at once
        freed_under_us = not closer.is_alive()
        out = None if freed_under_us else model.llm.create_completion("hello", max_tokens=2)
    closer.join(BLOCKED)
    assert not closer.is_alive(), "close() stayed blocked after the holder let go"
    assert not freed_under_us, "close() returned while a thread held model.lock"
    assert out is not None and out["choices"][0]["text"] is not None


def test_an_interrupted_wait_for_the_model_lock_does_not_keep_it_held(
    batched: Callable[..., Any],
) -> None:
    """A thread waiting to enter ``with model.lock:`` is interrupted (Ctrl-C, a signal
    handler raising): once the model is free again it serves requests; the lock it never
    got is not taken on its behalf and kept for ever."""
    import signal

    class Interrupted(Exception):
        pass

    def raise_interrupted(signum: int, frame: Any) -> None:
        raise Interrupted

    client = batched(2)
    model = client.load()
    entered, leave = threading.Event(), threading.Event()

    def other_holder() -> None:
        with model.lock:
            entered.set()
            leave.wait(BLOCKED)

    holder = threading.Thread(target=other_holder, daemon=True)
    holder.start()
    assert entered.wait(BLOCKED)

    def interrupt_the_waiter() -> None:
        while not model.engine._calls:  # the main thread's wait is queued
            leave.wait(0.01)
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, raise_interrupted)
    try:
        threading.Thread(target=interrupt_the_waiter, daemon=True).start()
        with pytest.raises(Interrupted), model.lock:
            pytest.fail("entered the model lock while another thread held it")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    leave.set()
    holder.join(BLOCKED)
    answered(client, "the model stayed held after an interrupted lock wait", max_tokens=5)


def test_model_lock_is_not_reentrant_and_its_holder_cannot_unload_it(
    batched: Callable[..., Any],
) -> None:
    """Inside ``with model.lock:``, entering it again or unloading the model from the same
    thread would wait for itself for ever: both are errors that say so, and the model
    works after the holder leaves."""
    client = batched(2)
    model = client.load()
    with model.lock:
        with pytest.raises(RuntimeError, match="not re-entrant"), model.lock:
            pass
        with pytest.raises(RuntimeError, match="leave it before the model is unloaded"):
            model.engine.close()
    assert client.generate(ask(1), max_tokens=5, temperature=0.0) is not None


def test_two_models_streaming_at_once_both_progress(
    batched: Callable[..., Any], n_gpu_layers: int
) -> None:
    """The scheduler thread is shared: while one model streams a long reply, requests on
    another model are answered before that reply ends, again and again (no model waits
    for another's whole reply)."""
    long_model = batched(2, context_length=2304)
    short_model = batched(2, context_length=512)
    long_model.load()
    short_model.load()
    n_long = 2000 if cpu_backend(n_gpu_layers) else 400  # llvmpipe: ~46 tokens/s
    stream = long_model.generate_stream(ask(1), max_tokens=n_long, temperature=0.0, ignore_eos=True)
    done = threading.Event()
    chunks = [0]

    def read() -> None:
        for _ in stream:
            chunks[0] += 1
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while chunks[0] < 5:
        threading.Event().wait(0.001)
    answered_during = 0
    for i in range(10):
        assert short_model.generate(ask(i), max_tokens=2, temperature=0.0) is not None
        answered_during += not done.is_set()
    reader.join(BLOCKED)
    assert done.is_set()
    assert answered_during >= 9, answered_during  # the long reply takes ~2000 steps


def test_a_sampler_failing_in_a_batch_fails_its_request_only(
    batched: Callable[..., Any],
) -> None:
    """In the batched steady loop a request's sampler raises (its own failure: here a
    sampler that gives up after 10 tokens): that request ends with the error, the request
    beside it completes with the same text as alone, and the model serves calls after."""
    from saiverse_llm.generation import Generation, ReplyBuilder
    from saiverse_llm.sampling import Sampler, SamplingParams

    class GivesUp(Sampler):
        calls = 0

        def sample(self, ctx: Any, idx: int = -1) -> int:
            self.calls += 1
            if self.calls > 10:
                raise ValueError("this sampler gives up")
            return super().sample(ctx, idx)

    client = batched(2)
    model = client.load()
    prompt = client.format_prompt(ask(1)).tokens
    params = SamplingParams(temperature=0.0, ignore_eos=True)
    model.engine.flush()
    alone = model.engine.submit(
        Generation(prompt, Sampler(model.vocab, params), ReplyBuilder(model.vocab, max_tokens=200))
    ).result()
    model.engine.flush()
    failing = model.engine.submit(
        Generation(
            client.format_prompt(ask(2)).tokens,
            GivesUp(model.vocab, params, route="chain"),
            ReplyBuilder(model.vocab, max_tokens=200),
        )
    )
    good = model.engine.submit(
        Generation(prompt, Sampler(model.vocab, params), ReplyBuilder(model.vocab, max_tokens=200))
    )
    with pytest.raises(ValueError, match="gives up"):
        failing.result()
    assert good.result() == alone
    settle(model)
    assert client.generate(ask(3), max_tokens=5, temperature=0.0) is not None


def test_a_model_whose_scheduling_fails_ends_its_streams_and_others_go_on(
    batched: Callable[..., Any],
) -> None:
    """A request's hook raises SystemExit (not an Exception: it escapes the per-request
    handling and stops that model's engine): every request of that model ends with an
    error instead of waiting for ever, and another model still answers."""
    from saiverse_llm.generation import Generation, ReplyBuilder
    from saiverse_llm.sampling import Sampler, SamplingParams

    broken = batched(2, context_length=512, chunk_seconds=0.001)  # many pieces
    other = batched(2, context_length=640)
    model = broken.load()
    params = SamplingParams(temperature=0.0, ignore_eos=True)

    def hook(index: int, text: str) -> None:
        if index >= 5:
            raise SystemExit("a hook exits")

    jobs = [
        model.engine.submit(
            Generation(
                broken.format_prompt(ask(i)).tokens,
                Sampler(model.vocab, params),
                ReplyBuilder(model.vocab, max_tokens=300, on_text=hook if i == 0 else None),
            )
        )
        for i in range(2)
    ]
    errors: list[BaseException | None] = [None, None]

    def read(i: int) -> None:
        try:
            jobs[i].result()
        except BaseException as exc:  # collected: the test checks its kind
            errors[i] = exc

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BLOCKED)
    assert not any(t.is_alive() for t in threads), "a reader waited for ever"
    assert all(e is not None for e in errors), errors
    assert other.generate(ask(1), max_tokens=5, temperature=0.0) is not None


def test_run_on_decode_thread_runs_where_the_models_decode(batched: Callable[..., Any]) -> None:
    """``run_on_decode_thread(fn)`` (for a raw ``Llama`` of one's own) runs ``fn`` on the
    scheduler thread and returns its result or raises its error."""
    from saiverse_llm.engine import run_on_decode_thread

    model = batched(2).load()
    assert model.engine.run_exclusive(lambda llm: 1) == 1  # the scheduler is up
    assert run_on_decode_thread(model.engine.on_scheduler_thread) is True
    with pytest.raises(ZeroDivisionError):
        run_on_decode_thread(lambda: 1 // 0)


@pytest.mark.parametrize("b", [2, 4])
def test_concurrent_requests_take_neighbouring_sequences(
    batched: Callable[..., Any], b: int
) -> None:
    """llama.cpp computes a step's attention over every KV stream from the lowest to the
    highest sequence id in the batch, so B requests on sequences 0 and 7 decode at about
    half the rate of B requests on 0 and 1: requests that arrive together take neighbouring
    sequences, whatever order the sequences were last used in (here made to alternate,
    so that least-recently-used alone would pick 1, 3, 5, 7)."""
    from saiverse_llm.generation import Generation, ReplyBuilder
    from saiverse_llm.sampling import Sampler, SamplingParams

    client = batched(8)
    model = client.load()
    engine = model.engine
    settle(model)
    engine.flush()
    for seq, slot in enumerate(engine._slots):
        slot.last_used = [5, 0, 6, 1, 7, 2, 8, 3][seq]
    params = SamplingParams(temperature=0.0, ignore_eos=True)
    jobs = []
    for i in range(b):
        gen = Generation(
            client.format_prompt(ask(i)).tokens,
            Sampler(model.vocab, params),
            ReplyBuilder(model.vocab, max_tokens=600),
        )
        jobs.append(engine.submit(gen))
    while engine.stats()["running"] < b and not any(j.done for j in jobs):
        threading.Event().wait(0.001)
    seqs = sorted(j.slot.seq for j in jobs if j.slot is not None)
    for job in jobs:
        job.cancel()
    settle(model)
    assert len(seqs) == b and seqs[-1] - seqs[0] == b - 1, seqs
