"""The token-by-token generation loop: generate and generate_stream agree, characters split
across tokens are never mangled, stop strings and max_tokens are exact.

The tiny model has random weights: unconstrained, it often samples byte tokens that form
incomplete or invalid UTF-8, which is what the agreement tests need. Exact texts are
forced with a GBNF grammar (the text still comes out of llama.cpp's sampler, token by
token, through the client's loop).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import copy_with_output

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")


def forced(text: str) -> Any:
    return llama_cpp.LlamaGrammar.from_string(
        f"root ::= {json.dumps(text, ensure_ascii=False)}", verbose=False
    )


def both(client: Any, messages: list[dict[str, str]], **kwargs: Any) -> tuple[str, list[str]]:
    whole = client.generate(messages, **kwargs)
    chunks = list(client.generate_stream(messages, **kwargs))
    return whole, chunks


@pytest.mark.parametrize("seed", [3, 5, 11])
@pytest.mark.parametrize("content", ["a", "こんにちは", "Tell me a story 🌸"])
def test_stream_and_generate_give_the_same_text(
    make_client: Callable[..., Any], tiny: Path, content: str, seed: int
) -> None:
    """Issue #11: with "a", max_tokens=96, temperature 0, seed 3, generate had two
    Cyrillic letters at character 47 that the stream dropped (138 vs 136 characters)."""
    client = make_client(tiny, context_length=512)
    messages = [{"role": "user", "content": content}]
    whole, chunks = both(client, messages, max_tokens=96, temperature=0.0, seed=seed)
    assert "".join(chunks) == whole
    assert all(chunks), "an empty chunk was yielded"


@pytest.mark.parametrize("seed", [3, 7])
def test_byte_token_replies_are_the_same_on_both_paths(
    make_client: Callable[..., Any], byte_vocab_gguf: Path, seed: int
) -> None:
    """Issue #11: on a 2-layer random model with a 378-token vocabulary (256 byte tokens,
    ctx 2048), "a" with max_tokens=96, temperature 0 gave '' from generate (96 completion
    tokens) and 55 characters from generate_stream (with this model: '' and 54). Both paths
    must give the same text, and no token's text is dropped (an invalid byte shows as
    U+FFFD)."""
    client = make_client(byte_vocab_gguf, context_length=2048)
    assert client.llama.n_vocab() == 378
    messages = [{"role": "user", "content": "a"}]
    kwargs: dict[str, Any] = {"max_tokens": 96, "temperature": 0.0, "seed": seed}
    whole = client.generate(messages, **kwargs)
    usage = client.consume_usage()
    chunks = list(client.generate_stream(messages, **kwargs))
    assert usage is not None and usage.completion_tokens == 96
    assert whole, "96 completion tokens and no text"
    assert "".join(chunks) == whole
    assert all(chunks), "an empty chunk was yielded"


def test_sampled_stream_matches_generate_for_the_same_seed(
    make_client: Callable[..., Any], tiny: Path
) -> None:
    client = make_client(tiny, context_length=512)
    messages = [{"role": "user", "content": "hello"}]
    for seed in (1, 2, 3):
        whole, chunks = both(client, messages, max_tokens=64, temperature=0.9, seed=seed)
        assert "".join(chunks) == whole, f"seed {seed}"


@pytest.mark.parametrize("text", ["東京は晴れ", "🌸😀 emoji", "Ünïcödé ß ж"])
def test_characters_split_across_tokens_arrive_whole(
    make_client: Callable[..., Any], tiny: Path, text: str
) -> None:
    client = make_client(tiny)
    llm = client.llama if hasattr(client, "llama") else None
    if llm is not None:  # the tiny vocab spells these with byte tokens: more tokens than chars
        assert len(llm.tokenize(text.encode(), add_bos=False)) > len(text)
    messages = [{"role": "user", "content": "x"}]
    whole, chunks = both(client, messages, grammar=forced(text), max_tokens=64, seed=1)
    assert whole == text
    assert "".join(chunks) == text
    assert not any("\ufffd" in c for c in chunks)


STOP = "<<END>>"


def test_stop_string_across_token_boundaries(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    client = make_client(tiny)
    assert len(client.llama.tokenize(STOP.encode(), add_bos=False)) > 1  # spans tokens
    messages = [{"role": "user", "content": "x"}]
    g = f"alpha beta{STOP}gamma"
    whole, chunks = both(client, messages, grammar=forced(g), stop=[STOP], max_tokens=64, seed=1)
    assert whole == "alpha beta"
    assert "".join(chunks) == "alpha beta"
    assert not any("<" in c for c in chunks), chunks  # no part of the stop string leaks
    assert client.consume_usage().completion_tokens < len(client.llama.tokenize(g.encode()))


def test_stop_string_that_begins_the_reply(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    client = make_client(tiny)
    messages = [{"role": "user", "content": "x"}]
    whole, chunks = both(
        client, messages, grammar=forced(f"{STOP} after"), stop=[STOP], max_tokens=64, seed=1
    )
    assert whole == ""
    assert chunks == []


@pytest.mark.parametrize(
    ("stop", "named"),
    [([None], "None at stop[0]"), ([STOP, 5], "5 at stop[1]"), (7, "7"), ([b"x"], "b'x'")],
)
def test_a_stop_that_is_not_strings_is_a_parameter_error(
    make_client: Callable[..., Any], tiny: Path, stop: object, named: str
) -> None:
    """stop=[None] used to become the stop string "None" (and stop=7 a TypeError)."""
    from saiverse_llm.user_errors import ParameterError

    client = make_client(tiny)
    messages = [{"role": "user", "content": "x"}]
    for call in (client.generate, lambda *a, **k: "".join(client.generate_stream(*a, **k))):
        with pytest.raises(ParameterError) as info:
            call(messages, stop=stop, max_tokens=4)
        text = str(info.value)
        assert f"parameter stop: bad value {named}" in text and "Fix: pass a string" in text
    g = f"alpha{STOP}beta"
    for ok in (STOP, [STOP], (STOP,), None, [], [""]):
        whole, chunks = both(client, messages, grammar=forced(g), stop=ok, max_tokens=64, seed=1)
        assert whole == "".join(chunks) == ("alpha" if ok and ok != [""] else g), ok


def test_a_stop_with_utf16_surrogates_is_read_as_messages_are(
    make_client: Callable[..., Any], tiny: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop string from JSON written by a UTF-16 program ("\\ud83c\\udf38"): a pair is
    the character it encodes, a lone surrogate is U+FFFD (with a warning), as in messages.
    Before, the stop's control-token check encoded it and the request died with a
    UnicodeEncodeError traceback."""
    client = make_client(tiny)
    messages = [{"role": "user", "content": "x"}]
    g = "alpha\U0001f338beta"
    for stop, want in (("\ud83c\udf38", "alpha"), (["\ud800"], g), ("a\udfffb", g)):
        whole, chunks = both(client, messages, grammar=forced(g), stop=stop, max_tokens=64, seed=1)
        assert whole == "".join(chunks) == want, stop
    assert "surrogate" in caplog.text


@pytest.mark.parametrize("n", [1, 7, 96])
def test_max_tokens_is_exact(
    make_client: Callable[..., Any], tiny: Path, n: int, ours_only: None
) -> None:
    """With end-of-generation ignored, a reply is exactly max_tokens tokens, on both paths
    and at any temperature (random byte tokens included)."""
    client = make_client(tiny, context_length=512)
    messages = [{"role": "user", "content": "count"}]
    for temperature in (0.0, 1.0):
        for stream in (False, True):
            kwargs = {"max_tokens": n, "temperature": temperature, "seed": 4, "ignore_eos": True}
            if stream:
                "".join(client.generate_stream(messages, **kwargs))
            else:
                client.generate(messages, **kwargs)
            usage = client.consume_usage()
            assert usage.completion_tokens == n, (temperature, stream)


def test_repeated_prompt_is_served_from_the_kv_cache_with_the_same_text(
    make_client: Callable[..., Any], tiny: Path, ours_only: None, fresh_pool: Any
) -> None:
    client = make_client(tiny, context_length=512, pool=fresh_pool)
    messages = [{"role": "user", "content": "the same prompt twice"}]
    first = client.generate(messages, max_tokens=48, temperature=0.0)
    usage = client.consume_usage()
    assert usage.cached_tokens == 0
    second = client.generate(messages, max_tokens=48, temperature=0.0)
    usage = client.consume_usage()
    assert usage.cached_tokens == usage.prompt_tokens - 1  # all but the last prompt token
    assert second == first


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_fast_sampling_routes_pick_the_same_tokens_as_llama_cpps_chain(
    make_client: Callable[..., Any], gemma: Path, temperature: float, ours_only: None
) -> None:
    """Gemma's 262,144-token vocabulary takes the numpy routes (greedy argmax, exact top-k
    then the rest of the chain); llama.cpp's own chain on the full vocabulary must pick the
    same tokens for the same seed."""
    from saiverse_llm.generation import Generation, ReplyBuilder
    from saiverse_llm.sampling import Sampler, SamplingParams

    client = make_client(gemma, context_length=256, chat_format="gemma")
    model = client.load()
    prompt = client.format_prompt([{"role": "user", "content": "Write about Kyoto."}]).tokens

    def run(route: str | None, seed: int) -> tuple[str, str]:
        params = SamplingParams(temperature=temperature, top_p=0.9, seed=seed, ignore_eos=True)
        sampler = Sampler(model.vocab, params, route=route)
        gen = Generation(prompt, sampler, ReplyBuilder(model.vocab, max_tokens=12))
        model.engine.flush()  # the same (fresh) cache state for both routes
        return sampler.route, model.engine.submit(gen).result()

    for seed in (1, 2):
        fast_route, fast = run(None, seed)
        chain_route, chain = run("chain", seed)
        assert fast_route == ("greedy" if temperature == 0.0 else "top-k")
        assert chain_route == "chain"
        assert fast == chain, f"seed {seed}"


@pytest.mark.parametrize("n_seq_max", [1, 2])
def test_a_call_under_an_open_stream_in_the_same_thread_gets_its_own_text(
    make_client: Callable[..., Any], tiny: Path, ours_only: None, fresh_pool: Any, n_seq_max: int
) -> None:
    """Each call is a job of the model's engine with its own sequence (issue #19): a second
    call while a stream is open in the same thread runs beside it (or, with one sequence,
    once the unread stream pauses or ends) instead of overwriting its KV cache, and both
    get their own text. (Before the engine it was an error: one lock per model.)"""
    client = make_client(tiny, context_length=512, pool=fresh_pool, n_seq_max=n_seq_max)
    kwargs: dict[str, Any] = {"max_tokens": 24, "temperature": 0.0, "seed": 2}
    alone = client.generate([{"role": "user", "content": "hello"}], **kwargs)
    other = client.generate([{"role": "user", "content": "other"}], **kwargs)
    stream = client.generate_stream([{"role": "user", "content": "hello"}], **kwargs)
    first = next(stream)
    assert client.generate([{"role": "user", "content": "other"}], **kwargs) == other
    assert first + "".join(stream) == alone


def test_greedy_rows_pick_what_each_rows_own_sampler_picks(
    make_client: Callable[..., Any], tiny: Path, ours_only: None, fresh_pool: Any
) -> None:
    """The engine samples the greedy rows of a batch together (``greedy_rows``: one argmax
    over llama.cpp's output buffer). On a real 3-row decode whose rows 1 and 2 are made to
    rank an end-of-generation token first, each row gets what its own sampler gives:
    ``ignore_eos`` rows the best other token, the plain greedy row the EOG token."""
    import numpy as np

    from saiverse_llm.engine import _Batch
    from saiverse_llm.sampling import Sampler, SamplingParams, greedy_rows

    client = make_client(tiny, context_length=256, pool=fresh_pool, n_seq_max=3)
    model = client.load()
    vocab = model.vocab
    eog = vocab.eog_ids()[0]
    samplers = [
        Sampler(vocab, SamplingParams(temperature=0.0, ignore_eos=True)),
        Sampler(vocab, SamplingParams(temperature=0.0, ignore_eos=True)),
        Sampler(vocab, SamplingParams(temperature=0.0, ignore_eos=False)),
    ]
    assert all(s.route == "greedy" for s in samplers)
    prompt = client.format_prompt([{"role": "user", "content": "hello"}]).tokens
    ctx = model.llm.ctx
    with model.engine.exclusive():
        batch = _Batch(llama_cpp, 8)
        for row in range(3):  # one token of each of 3 sequences, all with logits
            batch.token[row] = prompt[row]
            batch.pos[row] = 0
            batch.seq[row] = row
            batch.logits[row] = 1
        batch.raw.n_tokens = 3
        mem = llama_cpp.llama_get_memory(ctx)
        try:
            assert llama_cpp.llama_decode(ctx, batch.raw) == 0
            rows = [samplers[0].logits(ctx, row) for row in range(3)]
            for row in (1, 2):
                rows[row][eog] = rows[row].max() + 10.0
            masked = [r.copy() for r in rows]
            for row in (0, 1):
                masked[row][vocab.eog_ids()] = -np.inf
            want = [int(m.argmax()) for m in masked]
            got = greedy_rows(ctx, samplers, vocab.n_vocab, {})
            one_by_one = [s.sample(ctx, row) for row, s in enumerate(samplers)]
        finally:
            for row in range(3):
                llama_cpp.llama_memory_seq_rm(mem, row, -1, -1)
            model.llm.reset()
            for s in samplers:
                s.close()
    assert got == want == one_by_one
    assert got[1] != eog and got[2] == eog


@pytest.fixture
def nan_logits_gguf(tiny: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model whose final projection holds NaN in one input column:
    every logit of every step is NaN."""

    def edit(data: Any) -> None:
        data[:, 0] = float("nan")

    return copy_with_output(tiny, tmp_path / "nan-everywhere.gguf", edit)


@pytest.mark.parametrize(
    "route", ["chain", "chain+penalties", "chain+grammar", "top-k", "chain+ignore_eos"]
)
def test_nan_logits_fail_a_sampled_request_too(
    make_client: Callable[..., Any],
    nan_logits_gguf: Path,
    ours_only: None,
    route: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sampling at temperature > 0 from NaN logits fails the request with NanLogitsError,
    as greedy decoding does, once (no retry). Before, llama.cpp's chain silently returned
    one token again and again ('\\x1b' * 40 here, a normal-looking reply) and the numpy
    top-k route (Gemma's vocabulary) raised "ValueError: could not broadcast input array
    from shape (0,) into shape (2,)"."""
    from saiverse_llm import sampling
    from saiverse_llm.errors import NanLogitsError

    kwargs: dict[str, Any] = {"temperature": 0.8, "max_tokens": 40, "seed": 3}
    if route == "top-k":  # the route of large vocabularies, on the tiny one
        monkeypatch.setattr(sampling, "FAST_TOP_K_MIN_VOCAB", 0)
        kwargs["top_k"] = 2
    elif route == "chain+penalties":
        kwargs["repeat_penalty"] = 1.1
    elif route == "chain+grammar":
        kwargs["grammar"] = llama_cpp.LlamaGrammar.from_string('root ::= [a-z]+ "."', verbose=False)
    elif route == "chain+ignore_eos":
        kwargs["ignore_eos"] = True
    client = make_client(nan_logits_gguf, context_length=512, max_retries=3)
    messages = [{"role": "user", "content": "hello"}]
    for call in (client.generate, lambda *a, **k: "".join(client.generate_stream(*a, **k))):
        with pytest.raises(NanLogitsError):
            call(messages, **kwargs)
    assert "retrying" not in caplog.text
