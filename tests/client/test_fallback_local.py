"""fallback_on_error with another local model (the config's ``fallback_model``): two real
GGUF files, a broken primary and the tiny model as the fallback."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

from saiverse_llm.client import get_llm_client  # noqa: E402
from saiverse_llm.fallback import FallbackError  # noqa: E402
from saiverse_llm.pool import ModelLoadError  # noqa: E402

MESSAGES = [{"role": "user", "content": "こんにちは"}]


def forced(text: str) -> Any:
    return llama_cpp.LlamaGrammar.from_string(f"root ::= {json.dumps(text)}", verbose=False)


def write_config(directory: Path, key: str, model_path: Path, **extra: Any) -> None:
    data = {
        "model": key,
        "display_name": key,
        "provider": "llama_cpp",
        "model_path": str(model_path),
        "n_gpu_layers": extra.pop("n_gpu_layers", 0),
        "n_threads": 2,
        **extra,
    }
    (directory / f"{key}.json").write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def configs(tmp_path: Path, tiny: Path, n_gpu_layers: int, ours_only: None) -> Path:
    cut = tmp_path / "primary.gguf"
    cut.write_bytes(tiny.read_bytes()[:100_000])  # a truncated download
    d = tmp_path / "models"
    d.mkdir()
    write_config(
        d,
        "primary",
        cut,
        fallback_on_error=True,
        fallback_model="tiny-fallback",
        n_gpu_layers=n_gpu_layers,
    )
    write_config(d, "tiny-fallback", tiny, n_gpu_layers=n_gpu_layers)
    write_config(d, "primary-no-fallback", cut, fallback_on_error=False, n_gpu_layers=n_gpu_layers)
    write_config(d, "double-fault", cut, fallback_on_error=True, fallback_model="also-broken")
    write_config(d, "also-broken", tmp_path / "missing.gguf")
    write_config(d, "healthy", tiny, fallback_on_error=True, fallback_model="tiny-fallback")
    # a fallback cycle: loop-a -> loop-b -> loop-a, both broken
    write_config(d, "loop-a", cut, fallback_on_error=True, fallback_model="loop-b")
    write_config(d, "loop-b", tmp_path / "missing.gguf", fallback_model="loop-a")
    return d


def test_load_failure_falls_back_to_the_local_model(
    configs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = get_llm_client("primary", dirs=[configs])
    with caplog.at_level(logging.WARNING, logger="saiverse_llm"):
        reply = client.generate(MESSAGES, grammar=forced("代わりに答えます"), max_tokens=64)
    assert reply == "代わりに答えます"
    usage = client.consume_usage()
    assert usage is not None
    assert (usage.model, usage.answered_by, usage.fallback) == ("primary", "tiny-fallback", True)
    assert usage.completion_tokens > 0
    assert "truncated" in (usage.fallback_reason or "")
    assert any(
        r.levelno == logging.WARNING and "tiny-fallback" in r.getMessage() for r in caplog.records
    )


def test_stream_falls_back_to_the_local_model(configs: Path) -> None:
    client = get_llm_client("primary", dirs=[configs])
    text = "".join(client.generate_stream(MESSAGES, grammar=forced("stream ok"), max_tokens=32))
    assert text == "stream ok"
    usage = client.consume_usage()
    assert usage is not None and usage.answered_by == "tiny-fallback"


def test_generation_failure_falls_back_too(configs: Path) -> None:
    def broken(index: int, text: str) -> None:
        raise ValueError("simulated generation failure")  # not transient: no retry

    client = get_llm_client("healthy", dirs=[configs], chunk_hook=broken)
    reply = client.generate(MESSAGES, grammar=forced("fallback"), max_tokens=32)
    assert reply == "fallback"
    usage = client.consume_usage()
    assert usage is not None and usage.answered_by == "tiny-fallback"
    assert "simulated generation failure" in (usage.fallback_reason or "")


def test_without_fallback_the_load_error_is_raised(configs: Path) -> None:
    client = get_llm_client("primary-no-fallback", dirs=[configs])
    with pytest.raises(ModelLoadError, match="truncated"):
        client.generate(MESSAGES, max_tokens=4)
    assert client.consume_usage() is None


def test_both_failing_names_both(configs: Path) -> None:
    client = get_llm_client("double-fault", dirs=[configs])
    with pytest.raises(FallbackError) as info:
        client.generate(MESSAGES, max_tokens=4)
    text = str(info.value)
    assert "primary.gguf" in text and "truncated" in text
    assert "also-broken" in text and "missing.gguf" in text
    assert "Fix:" in text


def test_a_fallback_cycle_ends_after_one_hop(configs: Path) -> None:
    """loop-a falls back to loop-b, whose own fallback (loop-a) is never used: one error
    naming both, not a loop."""
    client = get_llm_client("loop-a", dirs=[configs])
    for call in (
        lambda: client.generate(MESSAGES, max_tokens=4),
        lambda: "".join(client.generate_stream(MESSAGES, max_tokens=4)),
    ):
        with pytest.raises(FallbackError) as info:
            call()
        text = str(info.value)
        assert "primary.gguf" in text and "loop-b" in text and "missing.gguf" in text
