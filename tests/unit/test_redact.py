"""Secrets never appear in the doctor's text, JSON or Markdown output."""

from __future__ import annotations

import json
import re

import pytest

from harness.doctor import doctor
from saiverse_llm.redact import MASK, is_secret_name, redact_env, redact_obj, redact_text

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
        ("build_key", False),
        ("wheel_key", False),
        ("LLAMA_HARNESS_BUILD_KEY", False),  # the wheel's cache key, set by bench-<variant>
        ("OTHER_BUILD_KEY", True),
        ("key", False),
        ("X-Api-Key", True),
        ("PRIVATE-TOKEN", True),
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


#: (text containing a secret, the secret). Every shape here was seen in real logs, commands,
#: configs or error messages; each must be masked wherever either CLI prints or logs it.
SECRET_SHAPES: list[tuple[str, str]] = [
    # environment-style assignments
    ("export HF_TOKEN=hf_abc123def456ghi789jkl", "hf_abc123def456ghi789jkl"),
    ('export MY_PASSWORD="correct horse battery staple"', "horse battery"),
    ("export GEMINI_API_KEY='my secret with space'", "secret with"),
    ("DB_PASSWORD=hunter2hunter2 ./run.sh", "hunter2hunter2"),
    ("CMAKE_ARGS=-DGGML_CUDA=on -DLICENSE_TOKEN=zz9911aa", "zz9911aa"),
    ("CMAKE_ARGS=-DLICENSE_TOKEN=zz9911aa", "zz9911aa"),
    ("set PGPASSWORD=pgS3cretValue", "pgS3cretValue"),
    ("//registry.npmjs.org/:_authToken=npmtok3nvalue", "npmtok3nvalue"),
    # headers, hyphenated names included
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload", "eyJhbGciOiJIUzI1NiJ9"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
    ('curl -H "Proxy-Authorization: Token abcdef0123456789"', "abcdef0123456789"),
    ('curl -H "X-Api-Key: zzzsecretzzz" https://api.example', "zzzsecretzzz"),
    ('curl -H "PRIVATE-TOKEN: glpat-abcdefghijklmnop1234" https://gitlab.example', "glpat-abc"),
    ('wget --header="x-api-key: s3cr3tvalue" https://x', "s3cr3tvalue"),
    ("x-goog-api-key: googsecretvalue99", "googsecretvalue99"),
    ("Cookie: session=abc123; csrftoken=def456", "abc123"),
    # URLs
    ("pip install --index-url https://alice:s3cretpw@pypi.example/simple x", "s3cretpw"),
    ("Looking in indexes: https://user:pa55word@pypi.example.com/simple", "pa55word"),
    ("HEAD https://alice:hunter2hunter2@127.0.0.1:9/org/repo/resolve/main/m.gguf", "hunter2hu"),
    ("git clone https://ghp_abcdefghijklmnopqrstuvwxyz012345@github.com/x", "ghp_abcdefghij"),
    ("redis://:r3disPassw0rd@cache.local:6379/0", "r3disPassw0rd"),
    ("postgres://app:pgpass123@db.local/app", "pgpass123"),
    ("pip install -i https://pypi.example/simple?token=abc123def456", "abc123def456"),
    ("GET https://hub.example/x.gguf?download=1&access_token=qwerty12345 -> 401", "qwerty12345"),
    ("https://store.example/blob?sv=2022&sig=AbCdEf0123456789%3D", "AbCdEf0123456789"),
    ("https://bucket.s3.example/x?X-Amz-Signature=deadbeefcafef00d", "deadbeefcafef00d"),
    ("https://maps.example/api?key=AIzaSyA1234567890abcdefghijklmnopqrstuv", "AIzaSyA12345"),
    ("https://api.example/v1/x?key=plainQueryKey77&fmt=json", "plainQueryKey77"),
    # a URL given as a model path, after pathlib folded its "//" (saiverse-llm chat URL)
    ("error: model file not found: https:/bob:S3cretPw9@host/x.gguf. Fix: ...", "S3cretPw9"),
    # command-line flags
    ("llama-harness models fetch --token hf_QwErTyUiOpAsDfGhJkLz", "hf_QwErTyUiOpAsDfGhJkLz"),
    ("mytool --api-key plainsecret42 --verbose", "plainsecret42"),
    ('mytool --password "two words"', "two words"),
    ("mytool --token=tok3n-v4lue", "tok3n-v4lue"),
    # structured data
    ('{"db_password": "p4ssw0rd!"}', "p4ssw0rd!"),
    ("{'api_key': 'pyReprSecret1'}", "pyReprSecret1"),
    ("password: yamlSecret99", "yamlSecret99"),
    ('client_secret = "tomlSecretValue"', "tomlSecretValue"),
    # well-known token shapes, anywhere in text
    ("Using token hf_ABCDEFGHIJKLMNOPQRSTUVWX for download", "hf_ABCDEFGHIJKLMNOP"),
    ("key AIzaSyD-gemini-secret-value-0123456789abcd used", "AIzaSyD-gemini"),
    ("openai sk-proj-abcdefghijklmnopqrstuvwxyz012345", "sk-proj-abcdef"),
    ("anthropic sk-ant-api03-abcdefghijklmnopqrstuvwx", "sk-ant-api03"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "github_pat_11ABC"),
    ("slack xoxb-123456789012-abcdefghijkl", "xoxb-1234567"),
    ("aws AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI"),
    ("twine upload -p pypi-AgEIcHlwaS5vcmcCJGFiY2RlZmdoLWlqa2wtbW5vcC1xcnN0", "pypi-AgEIcHlw"),
    ("stripe sk_live_abcdefghijklmnop1234", "sk_live_abcdef"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlLXZhbHVl", "eyJzdWIiOiIx"),
    ("google ya29.a0AfH6SMBabcdefghijklmnopqrstu", "ya29.a0AfH6SMB"),
    (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA\n"
        "-----END OPENSSH PRIVATE KEY-----",
        "b3BlbnNzaC1rZXktdjEAAAA",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "error: saiverse-llm: unrecognized arguments: --api-key SUPERSECRET77. Fix: see x",
            f"error: saiverse-llm: unrecognized arguments: --api-key {MASK}. Fix: see x",
        ),
        ("error: bad token=abc123def. Fix: y", f"error: bad token={MASK}. Fix: y"),
        ("C:/Users/me/model.gguf and file:///tmp/a.gguf", None),
        # a URL query token inside parentheses (saiverse-llm chat's not-found error for a
        # model_path URL): the ")." was eaten and the line got a second "Fix:"
        (
            "error: not found (model_path 'https://h/x.gguf?token=abc123def456'). Fix: z",
            f"error: not found (model_path 'https://h/x.gguf?token={MASK}'). Fix: z",
        ),
        (
            "error: not found (https:/h/x.gguf?token=abc123def456). Fix: z",
            f"error: not found (https:/h/x.gguf?token={MASK}). Fix: z",
        ),
        ("see https://h/x?sig=abc.def.ghi.", f"see https://h/x?sig={MASK}."),
    ],
)
def test_a_masked_value_keeps_the_sentence_around_it(text: str, expected: str | None) -> None:
    """The full stop before ". Fix:" is not part of a secret (the error line kept its Fix)."""
    assert redact_text(text, env={}) == (text if expected is None else expected)


def test_the_table_has_at_least_30_shapes() -> None:
    assert len(SECRET_SHAPES) >= 30


@pytest.mark.parametrize(("text", "secret"), SECRET_SHAPES)
def test_secret_shapes_are_masked(text: str, secret: str) -> None:
    out = redact_text(text, env={})
    assert secret not in out, out
    assert MASK in out


@pytest.mark.parametrize(
    "text",
    [
        "time to first token: 0.52 s",
        "tg128: 45.2 tokens/s, pp512: 512.0 tokens/s, TTFT 0.12 s",
        "n_gpu_layers=-1 n_ctx=4096 max_tokens=2048 top_p=0.9",
        "https://huggingface.co/google/gemma-3-270m/resolve/main/model.gguf?download=true",
        "llama_model_load: loaded meta data with 34 key-value pairs",
        "KEYBOARD_LAYOUT=us TOKENIZERS_PARALLELISM=false PWD=/root",
        '{"key": "gemma-3-270m", "valid": true}',  # saiverse-llm list --json
        "cache hit key=921936e3f401 (wheel key 921936e3f401)",
    ],
)
def test_ordinary_output_is_left_alone(text: str) -> None:
    assert redact_text(text, env={}) == text


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


# A log as the doctor's --json (and every other --json output) carries it: the whole JSON text
# passes through RedactingStream, so redaction must keep it valid JSON and lose no line.
LOG_WITH_SECRETS = (
    "print_info: BOS token        = 2 '<bos>'\n"
    "print_info: EOS token = 1\n"
    "llama_model_load: error loading model: x\n"
    "export HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz123456\n"
    'curl -H "Authorization: Bearer sk-proj-ABCDEFGHIJKLMNOPQRSTUV0123" https://u:p4ss@h/simple\n'
    "GEMINI_API_KEY=AIzaSyA1234567890abcdefghijklmnopqrstuv\n"
    "MY_PASSWORD=hunter22\n"
    "load_tensors: offloaded 0/29 layers to GPU\n"
)


@pytest.mark.parametrize("indent", [None, 2])
def test_serialised_json_stays_valid_and_loses_no_line(indent: int | None) -> None:
    data = {"facts": {"user.log": LOG_WITH_SECRETS, "auth": {"kind": "none"}, "token": [1, 2]}}
    out = redact_text(json.dumps(data, indent=indent), env={})
    back = json.loads(out)  # still JSON
    log = back["facts"]["user.log"]
    for secret in ("hf_abcdefghij", "sk-proj-ABC", "p4ss", "AIzaSyA123", "hunter22"):
        assert secret not in out
    kept = [ln for ln in LOG_WITH_SECRETS.splitlines() if not re.search(r"TOKEN|Auth|KEY|PASS", ln)]
    assert [ln for ln in log.splitlines() if ln in kept] == kept
    assert back["facts"]["auth"] == {"kind": "none"} and back["facts"]["token"] == [1, 2]


def test_llama_cpp_token_ids_are_not_secrets() -> None:
    text = "print_info: BOS token        = 2 '<bos>'\nprint_info: EOT token = 106"
    assert redact_text(text, env={}) == text
