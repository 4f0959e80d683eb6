"""get_llm_client(config) applies the config: parameters, chat_format, n_threads, fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

from saiverse_llm.client import get_llm_client  # noqa: E402
from saiverse_llm.config import load_config_file  # noqa: E402
from saiverse_llm.fallback import GeminiFallback, LocalModelFallback  # noqa: E402


def test_config_is_applied(tmp_path: Path, tiny: Path, n_gpu_layers: int, ours_only: None) -> None:
    path = tmp_path / "tiny-chatml.json"
    path.write_text(
        json.dumps(
            {
                "model": "tiny-chatml",
                "display_name": "tiny (chatml)",
                "provider": "llama_cpp",
                "model_path": str(tiny),
                "n_gpu_layers": n_gpu_layers,
                "chat_format": "chatml",
                "n_threads": 1,
                "fallback_on_error": True,
                "fallback_model": "other-local",
                "parameters": {"temperature": 0.1, "top_p": 0.5, "max_tokens": 3},
            }
        ),
        encoding="utf-8",
    )
    client = get_llm_client(load_config_file(path))
    assert client.model_name == "tiny-chatml"
    assert client.parameters == {"temperature": 0.1, "top_p": 0.5, "max_tokens": 3}
    report = client.load_report()
    assert report["chat_template"] == "chatml"
    assert report["n_threads"] == 1
    assert report["n_gpu_layers_requested"] == n_gpu_layers
    client.generate([{"role": "user", "content": "hi"}], seed=1)
    usage = client.consume_usage()
    assert usage is not None and usage.completion_tokens <= 3 and usage.model == "tiny-chatml"
    fallback = client._get_fallback()
    assert isinstance(fallback, LocalModelFallback) and fallback.name == "other-local"


def test_default_fallback_is_gemini_2_0_flash(tmp_path: Path, tiny: Path, ours_only: None) -> None:
    path = tmp_path / "plain.json"
    path.write_text(
        json.dumps({"model": "plain", "provider": "llama_cpp", "model_path": str(tiny)}),
        encoding="utf-8",
    )
    client = get_llm_client(load_config_file(path))
    assert client.fallback_on_error is True  # the seed's default
    fallback = client._get_fallback()
    assert isinstance(fallback, GeminiFallback) and fallback.name == "gemini-2.0-flash"
