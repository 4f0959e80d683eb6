"""n_ctx comes from the GGUF when context_length is missing (capped, never 120000), and
bad files give clear errors before llama.cpp sees them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

MESSAGES = [{"role": "user", "content": "hi"}]


def test_missing_context_length_uses_the_trained_context(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    from saiverse_llm.gguf_file import read_gguf

    trained = read_gguf(tiny).context_length
    assert trained is not None
    client = make_client(tiny, context_length=None)
    assert client.load_report()["n_ctx"] == min(trained, 8192)
    assert client.load_report()["n_ctx_train"] == trained


def test_trained_context_is_capped(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    client = make_client(tiny, context_length=None, context_cap=256)
    assert client.load_report()["n_ctx"] == 256


def test_gemma_context_is_capped_not_32k(
    make_client: Callable[..., Any], gemma: Path, ours_only: None
) -> None:
    from saiverse_llm.client import DEFAULT_CONTEXT_CAP

    client = make_client(gemma, context_length=None, chat_format="gemma")
    assert client.load_report()["n_ctx"] == DEFAULT_CONTEXT_CAP
    assert client.load_report()["n_ctx_train"] == 32768


def test_explicit_context_length_is_used(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    assert make_client(tiny, context_length=512).load_report()["n_ctx"] == 512


def test_truncated_file_is_a_clear_error(
    make_client: Callable[..., Any], tiny: Path, tmp_path: Path
) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny.read_bytes()[: tiny.stat().st_size // 2])
    with pytest.raises(Exception) as info:
        make_client(cut).generate(MESSAGES, max_tokens=4)
    text = str(info.value)
    assert "cut.gguf" in text
    assert "truncated" in text.lower()


def test_garbage_file_is_a_clear_error(make_client: Callable[..., Any], tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04" + b"\0" * 4096)
    with pytest.raises(Exception) as info:
        make_client(junk).generate(MESSAGES, max_tokens=4)
    assert "junk.gguf" in str(info.value)
    assert "GGUF" in str(info.value)


def test_missing_file_names_the_expanded_path_and_the_fetch_command(
    make_client: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ours_only: None,
) -> None:
    from saiverse_llm.pool import ModelLoadError

    monkeypatch.setenv("SAIVERSE_TEST_MODELS", str(tmp_path))
    client = make_client("$SAIVERSE_TEST_MODELS/absent.gguf", test_model="gemma-3-270m")
    with pytest.raises(ModelLoadError) as info:
        client.generate(MESSAGES, max_tokens=4)
    text = str(info.value)
    assert str(tmp_path / "absent.gguf") in text
    assert "$SAIVERSE_TEST_MODELS/absent.gguf" in text
    assert "llama-harness models fetch gemma-3-270m" in text


def test_prompt_longer_than_context_is_a_clear_error(
    make_client: Callable[..., Any], tiny: Path, ours_only: None
) -> None:
    from saiverse_llm.client import ContextOverflowError

    client = make_client(tiny, context_length=64)
    with pytest.raises(ContextOverflowError, match="n_ctx is 64"):
        client.generate([{"role": "user", "content": "word " * 200}], max_tokens=4)
