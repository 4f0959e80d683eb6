"""Model pool logic (no llama_cpp): one load per key, remembered failures, LRU cap."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from saiverse_llm.pool import ModelKey, ModelLoadError, ModelPool


class Fake:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


def key(path: Path, n_ctx: int = 512) -> ModelKey:
    return ModelKey.for_file(path, n_ctx=n_ctx, n_gpu_layers=0)


def test_same_key_loads_once_even_from_many_threads(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    pool: ModelPool[Fake] = ModelPool()
    calls = []

    def load() -> Fake:
        calls.append(1)
        time.sleep(0.05)
        return Fake("m")

    results: list[Fake] = []
    threads = [
        threading.Thread(target=lambda: results.append(pool.get(key(f), load))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert pool.attempts(key(f)) == 1
    assert len({id(r) for r in results}) == 1


def test_failed_load_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"bad")
    pool: ModelPool[Fake] = ModelPool()

    def load() -> Fake:
        raise ValueError("Failed to load model from file")

    with pytest.raises(ModelLoadError) as first:
        pool.get(key(f), load)
    with pytest.raises(ModelLoadError) as second:
        pool.get(key(f), load)
    assert second.value.remembered
    assert "Failed to load model" in str(second.value)
    assert not first.value.remembered
    assert pool.attempts(key(f)) == 1
    f.write_bytes(b"better bytes")  # new size -> new key -> one new attempt
    with pytest.raises(ModelLoadError):
        pool.get(key(f), load)
    assert pool.attempts(key(f)) == 1


def test_lru_cap_evicts_and_closes_the_oldest(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    pool: ModelPool[Fake] = ModelPool(max_models=2)
    a = pool.get(key(f, 1), lambda: Fake("a"))
    b = pool.get(key(f, 2), lambda: Fake("b"))
    pool.get(key(f, 1), lambda: Fake("unused"))  # touch a: b is now the oldest
    c = pool.get(key(f, 3), lambda: Fake("c"))
    assert b.closed and not a.closed and not c.closed
    assert len(pool) == 2


def test_unload_by_path_and_unload_all(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    g = tmp_path / "n.gguf"
    f.write_bytes(b"x")
    g.write_bytes(b"y")
    pool: ModelPool[Fake] = ModelPool()
    a = pool.get(key(f), lambda: Fake("a"))
    b = pool.get(key(g), lambda: Fake("b"))
    assert pool.unload(f) == 1
    assert a.closed and not b.closed
    assert pool.unload_all() == 1
    assert b.closed and len(pool) == 0


def test_unload_forgets_a_remembered_failure(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    pool: ModelPool[Fake] = ModelPool()

    def bad() -> Fake:
        raise ValueError("nope")

    with pytest.raises(ModelLoadError):
        pool.get(key(f), bad)
    pool.unload(f)
    assert pool.get(key(f), lambda: Fake("ok")).name == "ok"
    assert pool.attempts(key(f)) == 2


class Busy(Fake):
    in_use = True


def test_eviction_prefers_idle_models_and_never_the_new_one(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    pool: ModelPool[Fake] = ModelPool(max_models=2)
    busy = pool.get(key(f, 1), lambda: Busy("busy"))  # LRU, but a call is using it
    idle = pool.get(key(f, 2), lambda: Fake("idle"))
    new = pool.get(key(f, 3), lambda: Fake("new"))
    assert idle.closed and not busy.closed and not new.closed
    newer = pool.get(key(f, 4), lambda: Fake("newer"))
    assert new.closed and not busy.closed and not newer.closed
    assert len(pool) == 2


def test_a_pool_of_one_hands_out_the_model_it_just_loaded(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    pool: ModelPool[Fake] = ModelPool(max_models=1)
    busy = pool.get(key(f, 1), lambda: Busy("busy"))
    new = pool.get(key(f, 2), lambda: Fake("new"))
    assert busy.closed and not new.closed
    assert pool.keys() == [key(f, 2)]
