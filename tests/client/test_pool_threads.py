"""One load per key, shared by every client; calls serialised; failed loads remembered."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

PROMPTS = [f"Tell me about topic number {i}, please." for i in range(4)]


def ask(client: Any, prompt: str) -> str:
    out: str = client.generate(
        [{"role": "user", "content": prompt}], max_tokens=24, temperature=0.8, seed=42
    )
    return out


def test_four_threads_get_the_same_answers_as_sequential_calls(
    make_client: Callable[..., Any], tiny: Path
) -> None:
    # On a GPU backend (Vulkan on llvmpipe in CI) llama.cpp's kernels for a batch of several
    # sequences differ in the last bits from the one-row kernels, so sampled text alone and
    # batched may differ (test-vulkan: 1 run in 2). Here the pool's thread safety is the
    # point: one sequence, so the threads take turns. Text alone vs batched on the CPU:
    # tests/client/test_batching.py.
    one_seq = {"n_seq_max": 1} if llama_cpp.llama_supports_gpu_offload() else {}
    client = make_client(tiny, **one_seq)
    sequential = [ask(client, p) for p in PROMPTS]
    assert len(set(sequential)) > 1  # the prompts really lead to different answers
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(PROMPTS))

    def work(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(2):
                results[i] = ask(client, PROMPTS[i])
                assert results[i] == sequential[i]
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert [results[i] for i in range(len(PROMPTS))] == sequential


def test_concurrent_streams_are_not_interleaved(
    make_client: Callable[..., Any], tiny: Path
) -> None:
    client = make_client(tiny)
    texts = [f"thread {i}: " + "abcdefgh"[i] * 12 for i in range(4)]
    grammars = [llama_cpp.LlamaGrammar.from_string(f'root ::= "{t}"', verbose=False) for t in texts]
    got: dict[int, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        try:
            barrier.wait()
            got[i] = "".join(
                client.generate_stream(
                    [{"role": "user", "content": f"go {i}"}], grammar=grammars[i], max_tokens=64
                )
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert [got[i] for i in range(4)] == texts


def test_two_clients_share_one_model(
    make_client: Callable[..., Any], tiny: Path, fresh_pool: Any, ours_only: None
) -> None:
    a = make_client(tiny, pool=fresh_pool)
    b = make_client(tiny, pool=fresh_pool)
    assert a.llama is b.llama
    assert len(fresh_pool) == 1
    assert fresh_pool.attempts(a.load_spec().key()) == 1
    c = make_client(tiny, pool=fresh_pool, context_length=256)  # another key
    assert c.llama is not a.llama
    assert len(fresh_pool) == 2


def test_failed_load_is_remembered_no_reload_storm(
    make_client: Callable[..., Any], unloadable_gguf: Path, fresh_pool: Any, ours_only: None
) -> None:
    from saiverse_llm.pool import ModelLoadError

    bad = unloadable_gguf
    first = make_client(bad, pool=fresh_pool)
    second = make_client(bad, pool=fresh_pool)
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(ModelLoadError) as one:
        first.generate(messages, max_tokens=4)
    with pytest.raises(ModelLoadError) as two:
        second.generate(messages, max_tokens=4)
    assert "unknown model architecture" in str(one.value)
    assert two.value.remembered
    assert str(one.value) in str(two.value)
    assert fresh_pool.attempts(first.load_spec().key()) == 1  # Llama() was called once
    # The file changes (same size, new mtime): one new attempt.
    st = bad.stat()
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ModelLoadError) as three:
        second.generate(messages, max_tokens=4)
    assert not three.value.remembered
    assert fresh_pool.attempts(second.load_spec().key()) == 1


def test_failed_load_error_is_the_same_for_every_client(
    make_client: Callable[..., Any], unloadable_gguf: Path
) -> None:
    bad = unloadable_gguf
    errors = []
    for _ in range(2):
        with pytest.raises(Exception) as info:
            make_client(bad).generate([{"role": "user", "content": "hi"}], max_tokens=4)
        errors.append(str(info.value))
    assert "bad.gguf" in errors[0]
    assert errors[0] in errors[1]


def test_unload_and_cap(make_client: Callable[..., Any], tiny: Path, ours_only: None) -> None:
    from saiverse_llm.pool import ModelPool

    pool: ModelPool[Any] = ModelPool(max_models=1)
    a = make_client(tiny, pool=pool, context_length=128)
    model_a = a.load()
    b = make_client(tiny, pool=pool, context_length=256)
    b.load()
    assert model_a.closed  # evicted by the cap
    assert len(pool) == 1
    assert a.generate([{"role": "user", "content": "hi"}], max_tokens=4, seed=1) is not None
    assert len(pool) == 1  # a was reloaded, b evicted
    assert a.unload() == 1
    assert len(pool) == 0
    b.load()
    assert pool.unload_all() == 1


def test_eviction_never_frees_a_model_in_use(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    """Cap 1 and two keys used from two threads: every load evicts the other model, which
    must wait for the call using it (a freed Llama in use would crash the process)."""
    from saiverse_llm.pool import ModelPool

    pool: ModelPool[Any] = ModelPool(max_models=1)
    clients = [make_client(tiny, pool=pool, context_length=n) for n in (128, 256)]
    grammar = 'root ::= "evict me not"'
    errors: list[BaseException] = []
    got: list[str] = []

    def work(client: Any) -> None:
        try:
            for _ in range(3):
                got.append(
                    "".join(
                        client.generate_stream(
                            [{"role": "user", "content": "x"}],
                            grammar=llama_cpp.LlamaGrammar.from_string(grammar, verbose=False),
                            max_tokens=32,
                        )
                    )
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert got == ["evict me not"] * 6
    assert len(pool) == 1
