"""The pool never frees a model that a call is still using (issue #11, item 1).

A stream of model A is read one chunk, then calls on other models of the same file fill
the pool (``$SAIVERSE_LLM_MAX_MODELS``) and evict A; A's stream is then read to the end.
Before the fix, A's ``Llama`` was freed under the stream: the process died with SIGSEGV in
``kv_cache_seq_rm`` (Gemma) or kept decoding on freed memory (tiny). Each case runs in a
child process, so a crash fails this test instead of killing the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

CHILD = r"""
import json, sys
from saiverse_llm.client import LlamaCppClient
from saiverse_llm.pool import default_pool

path, n_models = sys.argv[1], int(sys.argv[2])
chat_format, n_gpu_layers = sys.argv[3] or None, int(sys.argv[4])
msgs = [{"role": "user", "content": "Write a long story about a cat."}]
def client(n_ctx):
    return LlamaCppClient(path, context_length=n_ctx, n_gpu_layers=n_gpu_layers, n_threads=2,
                          fallback_on_error=False, chat_format=chat_format, model=f"m{n_ctx}")
a = client(256)
solo = a.generate(msgs, max_tokens=16, seed=1, temperature=0.0, ignore_eos=True)
stream = a.generate_stream(msgs, max_tokens=16, seed=1, temperature=0.0, ignore_eos=True)
first = next(stream)
model_a = a.load()
others = [client(256 + 128 * i) for i in range(1, n_models)]
replies = [c.generate(msgs, max_tokens=3, seed=2, ignore_eos=True) for c in others]
evicted = model_a.key not in default_pool().keys()
freed_during = model_a.closed
rest = "".join(stream)
print(json.dumps({"solo": solo, "streamed": first + rest, "evicted": evicted,
                  "freed_during_stream": freed_during, "freed_after": model_a.closed,
                  "replies": len(replies), "pool": len(default_pool())}))
"""


def run_child(model: Path, n_models: int, max_models: str, chat_format: str) -> dict[str, Any]:
    env = dict(os.environ, SAIVERSE_LLM_MAX_MODELS=max_models, PYTHONFAULTHANDLER="1")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(n_models), chat_format, "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, f"child died (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("which", "n_models"), [("gemma", 2), ("tiny", 2)])
def test_a_model_evicted_during_its_stream_is_freed_after_it(
    request: pytest.FixtureRequest, which: str, n_models: int, ours_only: None
) -> None:
    """A pool of one: loading B must evict A, which is in use: A is freed when its stream
    ends, not under it, and the stream's text is what A gives alone."""
    model: Path = request.getfixturevalue(which)
    result = run_child(model, n_models, "1", "gemma" if which == "gemma" else "")
    assert result["evicted"], result
    assert not result["freed_during_stream"]
    assert result["freed_after"]
    assert result["streamed"] == result["solo"]
    assert result["pool"] == 1


def test_the_default_pool_evicts_idle_models_before_one_in_use(tiny: Path, ours_only: None) -> None:
    """The default pool of 4 and five models: the LRU model is the one whose stream is
    open; an idle one goes instead."""
    result = run_child(tiny, 5, "", "")
    assert not result["evicted"] and not result["freed_after"], result
    assert result["streamed"] == result["solo"]
    assert (result["replies"], result["pool"]) == (4, 4)
