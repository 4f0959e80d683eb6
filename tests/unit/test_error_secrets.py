"""The library's own errors carry no secrets (issue 13): SAIVerse logs ``str(exc)`` of what
``get_llm_client(...).generate(...)`` raises, where no CLI redaction applies. A model_path
with URL credentials and a token query reached the ModelLoadError's text and ``path``."""

from __future__ import annotations

import pytest

from saiverse_llm.client import get_llm_client
from saiverse_llm.config import parse_config
from saiverse_llm.errors import ContextOverflowError
from saiverse_llm.fallback import FallbackError
from saiverse_llm.pool import ModelLoadError

SECRETS = ("alice", "s3cretpw", "tok_ABCDEF123456", "hf_abcdefghijklmnopqrstuvwxyz0123")
URL = "https://alice:s3cretpw@example.com/x.gguf?token=tok_ABCDEF123456"


def _clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text


def test_a_load_error_for_a_url_with_credentials_does_not_carry_them() -> None:
    cfg = parse_config(
        {"model": "leaky", "provider": "llama_cpp", "model_path": URL, "fallback_on_error": False},
        key="leaky",
    )
    with pytest.raises(ModelLoadError) as info:
        get_llm_client(cfg).generate([{"role": "user", "content": "hi"}], max_tokens=4)
    err = info.value
    assert "model file not found" in str(err) and "example.com/x.gguf" in str(err)
    _clean(str(err))
    _clean(repr(err))
    _clean(err.path)
    # asked again (the pool remembers the failure): still clean
    with pytest.raises(ModelLoadError) as again:
        get_llm_client(cfg).generate([{"role": "user", "content": "hi"}], max_tokens=4)
    _clean(str(again.value))


def test_generation_and_fallback_errors_are_redacted_when_made() -> None:
    token = "hf_abcdefghijklmnopqrstuvwxyz0123"
    _clean(str(ContextOverflowError(f"prompt too long for {URL}")))
    primary = ModelLoadError(f"cannot load {URL}", path=URL)
    fallback = RuntimeError(f"401 from https://api.example.com/v1?key={token}")
    _clean(str(FallbackError("leaky", primary, "gemini", fallback)))
