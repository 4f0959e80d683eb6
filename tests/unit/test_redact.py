"""Secrets never appear in the doctor's text, JSON or Markdown output."""

from __future__ import annotations

import json

import pytest

from harness import doctor
from harness.redact import MASK, is_secret_name, redact_env, redact_obj, redact_text

SECRETS = {
    "GEMINI_API_KEY": "AIzaSyD-gemini-secret-value-0123456789abcd",
    "HF_TOKEN": "hf_QwErTyUiOpAsDfGhJkLzXcVbNm123456",
    "OPENAI_API_KEY": "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
    "MY_SERVICE_TOKEN": "tok-7f3a9c1e55d0",
    "DB_PASSWORD": "hunter2hunter2",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "SOME_KEY": "plain-key-value-42",
    "CI_SECRET": "shhh-secret-1234",
}
PUBLIC = {"PATH": "/usr/local/bin:/usr/bin", "CMAKE_ARGS": "-DGGML_CUDA=on", "HOME": "/root"}


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("GEMINI_API_KEY", True),
        ("HF_TOKEN", True),
        ("GITHUB_TOKEN", True),
        ("MY_KEY", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("DB_PASSWORD", True),
        ("PASSWORD", True),
        ("pypi_password", True),
        ("CMAKE_ARGS", False),
        ("PATH", False),
        ("PWD", False),
        ("HOME", False),
        ("GGML_CUDA", False),
        ("TOKENIZERS_PARALLELISM", False),
        ("KEYBOARD_LAYOUT", False),
        ("MONKEY", False),
        ("tokens", False),
        ("max_tokens", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_env_values_are_masked_and_scrubbed_elsewhere() -> None:
    env = {**SECRETS, **PUBLIC, "NOTE": f"token is {SECRETS['HF_TOKEN']}"}
    out = redact_env(env)
    for name in SECRETS:
        assert out[name] == MASK
    assert out["PATH"] == PUBLIC["PATH"]
    assert out["CMAKE_ARGS"] == "-DGGML_CUDA=on"
    assert SECRETS["HF_TOKEN"] not in out["NOTE"]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("pip install --index-url https://alice:s3cretpw@pypi.example/simple x", "s3cretpw"),
        ("git clone https://ghp_abcdefghijklmnopqrstuvwxyz012345@github.com/x", "ghp_abcdefghij"),
        ("CMAKE_ARGS=-DGGML_CUDA=on -DLICENSE_TOKEN=zz9911aa", "zz9911aa"),
        ("export HF_TOKEN=hf_abc123def456ghi789jkl", "hf_abc123def456ghi789jkl"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload", "eyJhbGciOiJIUzI1NiJ9"),
        ("key=AIzaSyA1234567890abcdefghijklmnopqrstuv used", "AIzaSyA1234567890"),
        ('{"db_password": "p4ssw0rd!"}', "p4ssw0rd!"),
    ],
)
def test_free_text_secrets(text: str, secret: str) -> None:
    out = redact_text(text, env={})
    assert secret not in out
    assert MASK in out


def test_harmless_text_is_unchanged() -> None:
    text = 'CMAKE_ARGS=-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 n_gpu_layers=-1 "tokens": 16'

    assert redact_text(text, env=PUBLIC) == text


def test_redact_obj_walks_nested_structures() -> None:
    data = {"env": {"HF_TOKEN": SECRETS["HF_TOKEN"]}, "log": [f"x {SECRETS['DB_PASSWORD']} y"]}
    out = redact_obj(data, env=SECRETS)
    assert SECRETS["HF_TOKEN"] not in json.dumps(out)
    assert SECRETS["DB_PASSWORD"] not in json.dumps(out)


def _report_full_of_secrets() -> doctor.DoctorReport:
    env = {**SECRETS, **PUBLIC, "CMAKE_ARGS": f"-DGGML_CUDA=on -DMY_TOKEN={SECRETS['CI_SECRET']}"}
    facts: dict[str, object] = {
        "llama.installed": True,
        "llama.version": "0.3.36",
        "build.compiled_backends": ["CPU"],
        "build.gpu_backends": [],
        "build.init_log": f"loading with key {SECRETS['GEMINI_API_KEY']}",
        "provenance.source": "url",
        "provenance.direct_url": "https://bob:topsecretpw@mirror.example/llama.whl",
        "pip_cache.matches_installed": True,
        "user.log": f"HF_TOKEN={SECRETS['HF_TOKEN']}\nAuthorization: Bearer abcdef123456",
        **doctor.env_facts(env),
    }
    return doctor.DoctorReport(
        verdict=doctor.verdict(facts),
        facts=facts,
        matches=doctor.match_causes(facts),
        build=None,
        probes={"user": {"kwargs": {"api_key": SECRETS["SOME_KEY"]}}},
        env=env,
    )


@pytest.mark.parametrize("render", ["text", "json", "markdown"])
def test_doctor_outputs_never_show_secrets(render: str) -> None:
    report = _report_full_of_secrets()
    out = {
        "text": doctor.render_text,
        "json": doctor.render_json,
        "markdown": doctor.render_markdown,
    }[render](report)
    for value in [*SECRETS.values(), "topsecretpw", "abcdef123456"]:
        assert value not in out, f"{value!r} leaked into the {render} output"
    assert "CPU-only build" in out
    assert "-DGGML_CUDA=on" in out
    if render == "json":
        json.loads(out)
