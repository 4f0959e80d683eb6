"""The compiled steady loop (``saiverse_llm.native_loop``) gives what the engine's Python loop
gives: the same tokens, text, counts, end and KV cells, alone and batched, when a stop string
or an end-of-generation token lands inside one of its calls (it decodes several steps per
call, so a reply can end before the call does: the tokens past the end must leave the KV).

Real build, tiny model (f32 weights on the CPU backend: a row's logits do not depend on
what else is in the batch, so a request's greedy text is the same alone and batched).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import copy_with_metadata, copy_with_output

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

BLOCKED = 300.0
LOOPS = ("python", "native")


@pytest.fixture
def compiled(ours_only: None) -> None:
    from saiverse_llm import native_loop

    if native_loop.get() is None:
        pytest.skip(f"the compiled loop is off here: {native_loop.why_not()}")


@pytest.fixture
def model_of(
    make_client: Callable[..., Any], fresh_pool: Any, compiled: None
) -> Callable[[Path], Any]:
    """``model_of(path)``: the loaded model of a client on ``path`` (4 sequences, 1 thread)."""

    def make(path: Path) -> Any:
        client = make_client(path, pool=fresh_pool, n_seq_max=4, context_length=1024, n_threads=1)
        return client.load()

    return make


def prompt_of(model: Any, i: int) -> list[int]:
    text = f"<|im_start|>user\nTell me about topic number {i}, please.<|im_end|>\n"
    return list(model.llm.tokenize(text.encode(), add_bos=True, special=True))


class Run:
    """One request's outcome: the tokens it decoded after its prompt, its text, completion
    tokens and finish reason."""

    def __init__(self, job: Any) -> None:
        self.text = job.result()
        self.tokens = job.tokens[len(job.gen.prompt) :]
        self.n_tokens = job.gen.reply.n_tokens
        self.finish = job.gen.reply.finish_reason

    def key(self) -> tuple[Any, ...]:
        return (self.text, self.tokens, self.n_tokens, self.finish)


def submit(
    model: Any,
    prompt: list[int],
    *,
    max_tokens: int,
    ignore_eos: bool = True,
    stop: list[str] | None = None,
    on_text: Callable[[int, str], None] | None = None,
) -> Any:
    from saiverse_llm.generation import Generation, ReplyBuilder
    from saiverse_llm.sampling import Sampler, SamplingParams

    vocab = model.vocab
    params = SamplingParams(temperature=0.0, ignore_eos=ignore_eos)
    reply = ReplyBuilder(
        vocab, max_tokens=max_tokens, stop=stop, ignore_eos=ignore_eos, on_text=on_text
    )
    return model.engine.submit(Generation(prompt, Sampler(vocab, params), reply))


def on_loop(model: Any, loop: str, work: Callable[[], Any]) -> tuple[Any, int, int]:
    """``work()`` with the engine on ``loop`` from a clean KV: its result, the KV cells in
    use once it is over, and the compiled loop's calls meanwhile."""
    engine = model.engine
    engine.native = loop == "native"
    engine.flush()
    assert engine.cells_used() == 0
    before = engine.stats()["native_calls"]
    result = work()
    assert engine.wait_idle(BLOCKED), engine.stats()
    calls = engine.stats()["native_calls"] - before
    assert (calls > 0) == (loop == "native"), (loop, calls)
    return result, engine.cells_used(), calls


def test_a_long_reply_is_the_same_on_both_loops(
    model_of: Callable[[Path], Any], tiny: Path
) -> None:
    """500 tokens (``ignore_eos``) and an exact ``max_tokens`` of 137 without it: the
    same tokens, text, count and end; the KV holds the prompt and every decoded token
    (the last sampled one is never decoded)."""
    model = model_of(tiny)
    prompt = prompt_of(model, 1)
    for kwargs in ({"max_tokens": 500}, {"max_tokens": 137, "ignore_eos": False}):
        got = {
            loop: on_loop(model, loop, lambda kw=kwargs: Run(submit(model, prompt, **kw)))
            for loop in LOOPS
        }
        (py, py_cells, _), (nat, nat_cells, _) = got["python"], got["native"]
        assert nat.key() == py.key(), kwargs
        assert nat.n_tokens == kwargs["max_tokens"] and nat.finish == "length"
        assert nat_cells == py_cells == len(prompt) + nat.n_tokens - 1


def test_a_stop_string_inside_a_call_ends_the_reply_where_the_python_loop_does(
    model_of: Callable[[Path], Any], tiny: Path
) -> None:
    """Stop strings taken from the middle of a 400-token reply: the native reply ends at
    the same token with the same text, and its KV cells past that token are dropped (the
    compiled call had decoded further). The cached prefix then serves the next identical
    request, which gives the same reply again."""
    model = model_of(tiny)
    prompt = prompt_of(model, 2)
    full, _, _ = on_loop(model, "python", lambda: Run(submit(model, prompt, max_tokens=400)))
    stops = []
    for at in (len(full.text) // 3, len(full.text) // 2, 2 * len(full.text) // 3):
        while full.text.find(full.text[at : at + 5]) != at:
            at += 1
        stops.append((at, full.text[at : at + 5]))
    for at, stop in stops:

        def twice(s: str = stop) -> tuple[Run, Run]:
            first = Run(submit(model, prompt, max_tokens=400, stop=[s]))
            again = submit(model, prompt, max_tokens=400, stop=[s])
            return first, Run(again)

        got = {loop: on_loop(model, loop, twice) for loop in LOOPS}
        ((py, py_again), py_cells, _), ((nat, nat_again), nat_cells, _) = (
            got["python"],
            got["native"],
        )
        assert py.text == full.text[:at] and py.finish == "stop"
        assert nat.key() == py.key() == py_again.key() == nat_again.key(), stop
        assert nat_cells == py_cells == len(prompt) + nat.n_tokens - 1, stop


def test_batched_replies_are_the_same_on_both_loops(
    model_of: Callable[[Path], Any], tiny: Path
) -> None:
    """Three requests decoded together (different lengths, one with a stop string), and a
    fourth that joins while they run: each gets what it gets on the Python loop."""
    model = model_of(tiny)
    prompts = [prompt_of(model, i) for i in range(4)]
    solo, _, _ = on_loop(model, "python", lambda: Run(submit(model, prompts[2], max_tokens=300)))
    stop = solo.text[len(solo.text) // 2 : len(solo.text) // 2 + 4]

    def together() -> list[tuple[Any, ...]]:
        jobs = [
            submit(model, prompts[0], max_tokens=250),
            submit(model, prompts[1], max_tokens=120, ignore_eos=False),
            submit(model, prompts[2], max_tokens=300, stop=[stop]),
        ]
        while model.engine.stats()["steps"] < 40:
            threading.Event().wait(0.002)
        jobs.append(submit(model, prompts[3], max_tokens=60))
        return [Run(job).key() for job in jobs]

    got = {loop: on_loop(model, loop, together) for loop in LOOPS}
    (py, py_cells, _), (nat, nat_cells, _) = got["python"], got["native"]
    assert nat == py
    assert nat_cells == py_cells
    assert model.engine.stats()["peak_sequences"] >= 3


@pytest.fixture
def eot_on_a_common_token(
    model_of: Callable[[Path], Any], tiny: Path, tmp_path: Path
) -> tuple[Path, int]:
    """A copy of the tiny model whose end-of-turn token (an end-of-generation id) is the
    token its greedy replies use most: greedy decoding then ranks an end-of-generation token
    first again and again, inside the compiled loop's calls."""
    import gguf

    model = model_of(tiny)
    run = Run(submit(model, prompt_of(model, 3), max_tokens=300))
    first: dict[int, int] = {}
    for i, t in enumerate(run.tokens):
        first.setdefault(t, i)
    # ranked first at least 3 times, never before token 30 (so the reply that stops on it
    # is past the first step, in the compiled loop)
    counts = collections.Counter(t for t in run.tokens if model.vocab.piece(t) and first[t] >= 30)
    token, n = counts.most_common(1)[0]
    assert n >= 3, counts.most_common(3)
    path = copy_with_metadata(
        tiny,
        tmp_path / "tiny-eot.gguf",
        {gguf.Keys.Tokenizer.EOT_ID: (gguf.GGUFValueType.UINT32, token)},
    )
    return path, token


def test_end_of_generation_inside_a_call_is_the_same_on_both_loops(
    model_of: Callable[[Path], Any], eot_on_a_common_token: tuple[Path, int]
) -> None:
    """With ``ignore_eos`` the best other token is taken each time greedy ranks the
    end-of-generation token first; without it the reply ends there. The same tokens on
    both loops, and the end-of-generation id is never among ``ignore_eos`` tokens."""
    path, eot = eot_on_a_common_token
    model = model_of(path)
    assert model.vocab.is_eog(eot)
    prompt = prompt_of(model, 3)
    for ignore in (True, False):

        def work(ignore_eos: bool = ignore) -> Run:
            return Run(submit(model, prompt, max_tokens=300, ignore_eos=ignore_eos))

        got = {loop: on_loop(model, loop, work) for loop in LOOPS}
        (py, py_cells, _), (nat, nat_cells, _) = got["python"], got["native"]
        assert nat.key() == py.key(), ignore
        assert nat_cells == py_cells
        if ignore:
            assert nat.n_tokens == 300 and eot not in nat.tokens
        else:
            assert nat.finish == "stop" and nat.n_tokens < 300


def long_calls(model: Any, seconds: float) -> None:
    import dataclasses

    engine = model.engine
    engine.settings = dataclasses.replace(engine.settings, chunk_seconds=seconds)


def test_a_hook_failing_in_a_call_fails_its_request_only(
    model_of: Callable[[Path], Any], tiny: Path
) -> None:
    """A request whose ``on_text`` hook (the client's ``chunk_hook``) raises at its 4th
    piece, several calls into its reply, while another request decodes beside it: that
    request fails with the hook's error and its cells are freed; the other one ends
    normally and the model goes on serving."""
    model = model_of(tiny)
    long_calls(model, 0.002)  # many calls, so the failure is inside a later one
    model.engine.native = True

    def hook(index: int, text: str) -> None:
        if index == 3:
            raise RuntimeError("hook failed at piece 3")

    failing = submit(model, prompt_of(model, 5), max_tokens=400, on_text=hook)
    other = submit(model, prompt_of(model, 6), max_tokens=400)
    with pytest.raises(RuntimeError, match="hook failed at piece 3"):
        failing.result()
    assert Run(other).n_tokens == 400
    assert model.engine.wait_idle(BLOCKED)
    assert model.engine.stats()["native_calls"] > 3
    again = Run(submit(model, prompt_of(model, 6), max_tokens=20))
    assert again.n_tokens == 20
    model.engine.flush()
    assert model.engine.cells_used() == 0


def test_a_reply_that_ended_before_a_failed_decode_in_the_same_call_stays_done(
    model_of: Callable[[Path], Any], tiny: Path
) -> None:
    """Two requests in one long call: one ends on a stop string at about its 40th token,
    then llama.cpp aborts a decode 30 steps later (its own abort callback, armed by the
    step count). The first keeps its reply ("done", the same text as alone); only the
    other fails with the decode's error."""
    model = model_of(tiny)
    model.engine.native = True
    prompts = [prompt_of(model, 7), prompt_of(model, 8)]
    solo = Run(submit(model, prompts[0], max_tokens=200))
    cut = len(Run(submit(model, prompts[0], max_tokens=40)).text)
    at = cut
    while solo.text.find(solo.text[at : at + 4]) != at:
        at += 1
    stop = solo.text[at : at + 4]
    want = Run(submit(model, prompts[0], max_tokens=200, stop=[stop]))
    assert want.finish == "stop" and want.n_tokens < 120
    model.engine.flush()
    long_calls(model, 1.0)  # one call runs until the abort
    engine = model.engine
    target = [engine.steps + want.n_tokens + 30]
    armed = threading.Event()
    armed.set()
    callback = llama_cpp.ggml_abort_callback(
        lambda _data: armed.is_set() and engine.steps >= target[0]
    )
    llama_cpp.llama_set_abort_callback(model.llm.ctx, callback, None)
    try:
        jobs = [
            submit(model, prompts[0], max_tokens=200, stop=[stop]),
            submit(model, prompts[1], max_tokens=400),
        ]
        ended = Run(jobs[0])
        with pytest.raises(RuntimeError, match=r"llama_decode returned 2 \(aborted\)"):
            jobs[1].result()
    finally:
        armed.clear()
    assert jobs[0].state == "done" and ended.key() == want.key()
    assert engine.stats()["native_calls"] > 0
    assert engine.wait_idle(BLOCKED)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_replys_last_text_reaches_its_reader_before_the_job_is_wound_up(
    model_of: Callable[[Path], Any], tiny: Path, loop: str
) -> None:
    """A reply's last text goes to its reader as soon as it is known, not after the
    scheduler has ended the job (freed or kept its sequence, woken the pool's waiters): here
    ending a job takes 0.5 s longer, and the reader has the whole reply before that is over
    (the stream's end still comes after it). Both steady loops; before the fix the last
    text came with the job's end, 0.5 s later."""
    model = model_of(tiny)
    engine = model.engine
    engine.native = loop == "native"
    prompt = prompt_of(model, 9)
    want = Run(submit(model, prompt, max_tokens=200)).text
    engine.flush()
    finish = engine._finish
    wound_up: list[float] = []

    def slow_finish(job: Any, state: str, error: BaseException | None, *, keep: bool) -> None:
        threading.Event().wait(0.5)  # lets go of the GIL, as any wait does
        wound_up.append(time.perf_counter())
        finish(job, state, error, keep=keep)

    engine._finish = slow_finish
    try:
        job = submit(model, prompt, max_tokens=200)
        got: list[tuple[float, str]] = [(time.perf_counter(), c) for c in job.chunks()]
    finally:
        del engine._finish
    assert "".join(c for _, c in got) == want
    assert len(wound_up) == 1 and got[-1][0] < wound_up[0], (got[-1][0], wound_up)
    assert (engine.stats()["native_calls"] > 0) == (loop == "native")


@pytest.fixture
def nan_now_and_then(tiny: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model whose output row for one token is +inf at one input of
    the final projection, -inf at another and 0 elsewhere: that token's logit is NaN when
    the two inputs have the same sign (inf - inf), +inf or -inf otherwise, so a reply meets
    NaN logits at some step, not always the first (where the compiled loop never runs)."""
    import numpy as np

    def edit(data: Any) -> None:
        data[100] = 0.0
        data[100, 0], data[100, 1] = np.inf, -np.inf

    return copy_with_output(tiny, tmp_path / "nan-tiny.gguf", edit)


def test_nan_logits_fail_the_request_after_the_same_text_on_both_loops(
    model_of: Callable[[Path], Any], nan_now_and_then: Path
) -> None:
    """Greedy decoding on logits that hold NaN fails the request with NanLogitsError,
    after the same text, on both loops, also when the NaN comes inside a compiled call
    (numpy's argmax returned the first NaN, the compiled loop's skipped it: the two gave
    different tokens, and neither said the numbers were broken). Its cells are freed."""
    from saiverse_llm.errors import NanLogitsError

    model = model_of(nan_now_and_then)
    engine = model.engine

    def attempt(prompt: list[int], loop: str) -> tuple[str, str, int]:
        engine.native = loop == "native"
        engine.flush()
        before = engine.stats()["native_calls"]
        job = submit(model, prompt, max_tokens=200)
        pieces: list[str] = []
        outcome = "done"
        try:
            for piece in job.chunks():
                pieces.append(piece)
        except NanLogitsError:
            outcome = "nan"
        assert engine.wait_idle(BLOCKED)
        if outcome == "nan":
            assert engine.cells_used() == 0
        return "".join(pieces), outcome, engine.stats()["native_calls"] - before

    in_a_call = 0
    for i in range(40):
        prompt = prompt_of(model, 100 + i)
        py_text, py_end, _ = attempt(prompt, "python")
        nat_text, nat_end, calls = attempt(prompt, "native")
        assert (nat_text, nat_end) == (py_text, py_end), i
        in_a_call += py_end == "nan" and calls > 0
    assert in_a_call >= 2, "no reply met NaN logits inside a compiled call"
