"""Model-config parsing and validation (saiverse_llm.config).

Every validation case asserts on the error's field, value and fix, so removing the check
(or making it silent) fails the test.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from saiverse_llm.config import (
    ConfigError,
    ModelConfig,
    Parameters,
    expand_path,
    load_config_file,
    parse_config,
)

PROJECT_MODELS = Path(__file__).resolve().parents[2] / "models"

# The example config of the SAIVerse llama.cpp guide, verbatim.
SEED_EXAMPLE: dict[str, Any] = {
    "model": "llama-3-8b-instruct-q8",
    "display_name": "Llama 3 8B Instruct Q8 (llama.cpp)",
    "provider": "llama_cpp",
    "context_length": 8192,
    "model_path": "~/models/llama-3-8b-instruct-q8_0.gguf",
    "n_gpu_layers": -1,
    "fallback_on_error": True,
    "supports_images": False,
    "parameters": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 2048},
}


def minimal(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "model": "m",
        "provider": "llama_cpp",
        "model_path": "/models/m.gguf",
    }
    data.update(overrides)
    return data


def parse(data: object, key: str = "m") -> ModelConfig:
    return parse_config(data, key=key)


def error_of(data: object, key: str = "m") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, key=key)
    return info.value


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the happy path ---------------------------------------------------------------------------


def test_seed_example_parses_to_expected_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/persona")
    cfg = parse(SEED_EXAMPLE, key="llama-3-8b-instruct-q8")
    assert cfg.key == "llama-3-8b-instruct-q8"
    assert cfg.model == "llama-3-8b-instruct-q8"
    assert cfg.display_name == "Llama 3 8B Instruct Q8 (llama.cpp)"
    assert cfg.provider == "llama_cpp"
    assert cfg.context_length == 8192
    assert cfg.model_path == Path("/home/persona/models/llama-3-8b-instruct-q8_0.gguf")
    assert cfg.model_path_raw == "~/models/llama-3-8b-instruct-q8_0.gguf"
    assert cfg.n_gpu_layers == -1
    assert cfg.fallback_on_error is True
    assert cfg.supports_images is False
    assert cfg.parameters == Parameters(temperature=0.7, top_p=0.9, max_tokens=2048)
    assert cfg.source is None


def test_defaults_for_optional_fields() -> None:
    cfg = parse(minimal())
    assert cfg.display_name == "m"  # falls back to the model id
    assert cfg.context_length is None  # the client then reads the GGUF's trained context
    assert cfg.n_gpu_layers == -1
    assert cfg.fallback_on_error is True
    assert cfg.fallback_model is None
    assert cfg.supports_images is False
    assert cfg.chat_format is None
    assert cfg.n_threads is None
    assert cfg.test_model is None
    assert cfg.parameters == Parameters(0.7, 0.9, 2048)


def test_optional_client_fields_are_read() -> None:
    cfg = parse(
        minimal(
            chat_format="gemma",
            n_threads=4,
            test_model="gemma-3-270m",
            fallback_model="other",
            fallback_on_error=False,
            n_gpu_layers=32,
            context_length=None,
        )
    )
    assert (cfg.chat_format, cfg.n_threads, cfg.test_model) == ("gemma", 4, "gemma-3-270m")
    assert (cfg.fallback_model, cfg.fallback_on_error, cfg.n_gpu_layers) == ("other", False, 32)
    assert cfg.context_length is None


def test_config_is_frozen() -> None:
    cfg = parse(minimal())
    with pytest.raises(AttributeError):
        cfg.n_gpu_layers = 0  # type: ignore[misc]


def test_to_dict_is_json_ready() -> None:
    cfg = parse(minimal(context_length=4096))
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["model_path"] == "/models/m.gguf"
    assert data["context_length"] == 4096
    assert data["parameters"] == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 2048}


# --- parameters: flat and spec form ------------------------------------------------------------


def test_flat_and_spec_parameters_mean_the_same() -> None:
    flat = parse(minimal(parameters={"temperature": 1.2, "top_p": 0.5, "max_tokens": 256}))
    spec = parse(
        minimal(
            parameters={
                "temperature": {"default": 1.2, "min": 0.0, "max": 2.0, "step": 0.1},
                "top_p": {"default": 0.5, "min": 0.0, "max": 1.0},
                "max_tokens": {"default": 256, "min": 1, "max": 8192},
            }
        )
    )
    assert flat.parameters == spec.parameters == Parameters(1.2, 0.5, 256)


def test_mixed_forms_and_missing_parameters_use_defaults() -> None:
    cfg = parse(minimal(parameters={"temperature": {"default": 0.1}, "max_tokens": 64}))
    assert cfg.parameters == Parameters(temperature=0.1, top_p=0.9, max_tokens=64)


def test_integer_temperature_is_accepted_as_float() -> None:
    cfg = parse(minimal(parameters={"temperature": 1}))
    assert cfg.parameters.temperature == 1.0
    assert isinstance(cfg.parameters.temperature, float)


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("temperature", 2.5, "parameters.temperature"),
        ("temperature", -0.1, "parameters.temperature"),
        ("top_p", 1.5, "parameters.top_p"),
        ("top_p", -0.01, "parameters.top_p"),
    ],
)
def test_parameter_out_of_range(name: str, value: float, field: str) -> None:
    err = error_of(minimal(parameters={name: value}))
    assert err.field == field
    assert err.value == value
    assert "outside" in err.problem
    assert "use a number from 0.0 to" in err.fix


def test_parameter_boundaries_are_inclusive() -> None:
    cfg = parse(minimal(parameters={"temperature": 2.0, "top_p": 0.0}))
    assert (cfg.parameters.temperature, cfg.parameters.top_p) == (2.0, 0.0)
    cfg = parse(minimal(parameters={"temperature": 0.0, "top_p": 1.0}))
    assert (cfg.parameters.temperature, cfg.parameters.top_p) == (0.0, 1.0)


def test_spec_parameter_out_of_range_names_the_default_field() -> None:
    err = error_of(minimal(parameters={"temperature": {"default": 3.0, "min": 0, "max": 5}}))
    assert err.field == "parameters.temperature.default"
    assert err.value == 3.0


def test_spec_parameter_without_default() -> None:
    err = error_of(minimal(parameters={"top_p": {"min": 0, "max": 1}}))
    assert err.field == "parameters.top_p"
    assert "default" in err.problem
    assert '"default"' in err.fix


def test_spec_default_outside_its_own_range() -> None:
    err = error_of(minimal(parameters={"temperature": {"default": 1.5, "min": 0, "max": 1}}))
    assert err.field == "parameters.temperature.default"
    assert err.value == 1.5
    assert "spec's own range" in err.problem


@pytest.mark.parametrize("value", ["0.7", True, None, [0.7]])
def test_temperature_wrong_type(value: object) -> None:
    if value is None:  # null means "use the default"
        assert parse(minimal(parameters={"temperature": None})).parameters.temperature == 0.7
        return
    err = error_of(minimal(parameters={"temperature": value}))
    assert err.field == "parameters.temperature"
    assert err.value == value
    assert "number" in err.problem


def test_nan_temperature_is_rejected() -> None:
    err = error_of(minimal(parameters={"temperature": float("nan")}))
    assert err.field == "parameters.temperature"


@pytest.mark.parametrize("value", [0, -5, 1.5, "2048", True])
def test_max_tokens_must_be_a_positive_int(value: object) -> None:
    err = error_of(minimal(parameters={"max_tokens": value}))
    assert err.field == "parameters.max_tokens"
    assert err.value == value
    assert "positive whole number" in err.fix


def test_max_tokens_spec_form_error_names_default() -> None:
    err = error_of(minimal(parameters={"max_tokens": {"default": 0}}))
    assert err.field == "parameters.max_tokens.default"
    assert err.value == 0


def test_parameters_must_be_an_object() -> None:
    err = error_of(minimal(parameters=[0.7, 0.9]))
    assert err.field == "parameters"
    assert err.value == [0.7, 0.9]
    assert "temperature" in err.fix


def test_unknown_parameter_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="saiverse_llm.config"):
        parse(minimal(parameters={"top_k": 40}))
    assert "parameters.top_k is ignored" in caplog.text


def test_max_tokens_above_context_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="saiverse_llm.config"):
        parse(minimal(context_length=1024, parameters={"max_tokens": 2048}))
    assert "larger than context_length" in caplog.text


# --- required fields, provider, top level ------------------------------------------------------


@pytest.mark.parametrize("field", ["model", "provider", "model_path"])
def test_required_field_missing(field: str) -> None:
    data = minimal()
    del data[field]
    err = error_of(data)
    assert err.field == field
    assert "missing" in err.problem
    assert f'add "{field}"' in err.fix


@pytest.mark.parametrize("value", ["", "   ", 42, ["m"]])
def test_model_must_be_a_non_empty_string(value: object) -> None:
    err = error_of(minimal(model=value))
    assert err.field == "model"
    assert err.value == value


@pytest.mark.parametrize("provider", ["ollama", "gemini", "llama.cpp", "LLAMA_CPP"])
def test_unknown_provider(provider: str) -> None:
    err = error_of(minimal(provider=provider))
    assert err.field == "provider"
    assert err.value == provider
    assert err.fix == 'set "provider": "llama_cpp"'


@pytest.mark.parametrize("data", [[1, 2], "text", 3, None])
def test_top_level_must_be_an_object(data: object) -> None:
    err = error_of(data)
    assert err.field == "(top level)"
    assert err.value == data
    assert "{" in err.fix


# --- integers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, 0, 1, 32, 999])
def test_n_gpu_layers_accepts_int_at_least_minus_one(value: int) -> None:
    assert parse(minimal(n_gpu_layers=value)).n_gpu_layers == value


@pytest.mark.parametrize("value", ["32", "-1", True, False, 1.5, -2, -100, [32]])
def test_n_gpu_layers_rejects_non_int_and_below_minus_one(value: object) -> None:
    err = error_of(minimal(n_gpu_layers=value))
    assert err.field == "n_gpu_layers"
    assert err.value == value
    assert "-1 (all layers on the GPU), 0 (CPU only)" in err.fix


def test_n_gpu_layers_string_error_says_without_quotes() -> None:
    err = error_of(minimal(n_gpu_layers="32"))
    assert "without quotes" in err.problem
    assert "a string" in err.problem


@pytest.mark.parametrize("value", [0, -8192, "8192", 8192.0, True])
def test_context_length_must_be_a_positive_int(value: object) -> None:
    err = error_of(minimal(context_length=value))
    assert err.field == "context_length"
    assert err.value == value
    assert "8192" in err.fix
    if isinstance(value, float):  # says what it is and how to write it
        assert str(err).endswith(
            "context_length: 8192.0 is a float, not a whole number. "
            "Fix: write 8192 (without the .0)"
        )
    else:
        assert "null" in err.fix


@pytest.mark.parametrize("value", [0, -1, "4", True])
def test_n_threads_must_be_positive_int(value: object) -> None:
    err = error_of(minimal(n_threads=value))
    assert err.field == "n_threads"
    assert err.value == value


@pytest.mark.parametrize("value", [0, -1, 257, "4", 2.0, True])
def test_n_seq_max_is_a_sequence_count_llama_cpp_accepts(value: object) -> None:
    """Sequences decoded together (issue #19): 1..LLAMA_MAX_SEQ (256), or null (sized from
    the memory left after the load)."""
    err = error_of(minimal(n_seq_max=value))
    assert err.field == "n_seq_max"
    assert ("without the .0" if isinstance(value, float) else "null") in err.fix


def test_n_seq_max_is_read_and_defaults_to_null() -> None:
    assert parse_config(minimal(), key="m").n_seq_max is None
    cfg = parse_config(minimal(n_seq_max=4), key="m")
    assert cfg.n_seq_max == 4 and cfg.to_dict()["n_seq_max"] == 4


# --- booleans and strings ----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["fallback_on_error", "supports_images"])
@pytest.mark.parametrize("value", ["true", "false", 1, 0, "yes"])
def test_booleans_must_be_json_booleans(field: str, value: object) -> None:
    err = error_of(minimal(**{field: value}))
    assert err.field == field
    assert err.value == value
    assert "true" in err.fix and "without quotes" in err.fix


@pytest.mark.parametrize("field", ["display_name", "chat_format", "fallback_model", "test_model"])
def test_optional_strings_reject_non_strings(field: str) -> None:
    err = error_of(minimal(**{field: 5}))
    assert err.field == field
    assert err.value == 5


# --- warnings (not errors) ---------------------------------------------------------------------


def test_unknown_key_warns_but_parses(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="saiverse_llm.config"):
        cfg = parse(minimal(n_ctx=4096))
    assert cfg.model == "m"
    assert "unknown key 'n_ctx'" in caplog.text


def test_underscore_keys_are_comments(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="saiverse_llm.config"):
        parse(minimal(_source="https://example.invalid/repo"))
    assert caplog.text == ""


def test_model_not_matching_file_name_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="saiverse_llm.config"):
        cfg = parse(minimal(model="other-name"), key="m")
    assert cfg.key == "m"
    assert cfg.model == "other-name"
    assert "file name is the key" in caplog.text


def test_supports_images_true_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="saiverse_llm.config"):
        cfg = parse(minimal(supports_images=True))
    assert cfg.supports_images is True
    assert "does not support image" in caplog.text


def test_unknown_chat_format_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="saiverse_llm.config"):
        cfg = parse(minimal(chat_format="gema"))
    assert cfg.chat_format == "gema"
    assert "chat_format 'gema'" in caplog.text


# --- model_path expansion ----------------------------------------------------------------------


def test_expand_plain_and_braced_variables() -> None:
    env = {"A": "/data", "B": "gguf"}
    assert expand_path("$A/x.$B", env=env) == Path("/data/x.gguf")
    assert expand_path("${A}/x.${B}", env=env) == Path("/data/x.gguf")
    assert expand_path("${A}x", env=env) == Path("/datax")


def test_expand_default_used_when_unset_or_empty() -> None:
    assert expand_path("${NOPE:-/fallback}/m.gguf", env={}) == Path("/fallback/m.gguf")
    assert expand_path("${E:-/fallback}/m.gguf", env={"E": ""}) == Path("/fallback/m.gguf")
    assert expand_path("${S:-/fallback}/m.gguf", env={"S": "/set"}) == Path("/set/m.gguf")


def test_expand_default_may_hold_tilde_and_variables() -> None:
    env = {"HOME": "/home/u", "BASE": "/base"}
    assert expand_path("${NOPE:-~/.cache/x}/m.gguf", env=env) == Path("/home/u/.cache/x/m.gguf")
    assert expand_path("${NOPE:-$BASE/c}/m.gguf", env=env) == Path("/base/c/m.gguf")
    assert expand_path("${NOPE:-${BASE}/c}/m.gguf", env=env) == Path("/base/c/m.gguf")


def test_expand_tilde_uses_home() -> None:
    assert expand_path("~/models/m.gguf", env={"HOME": "/home/u"}) == Path("/home/u/models/m.gguf")
    assert expand_path("~", env={"HOME": "/home/u"}) == Path("/home/u")
    # A tilde that is not at the start is a plain character.
    assert expand_path("/a/~/b", env={"HOME": "/home/u"}) == Path("/a/~/b")


def test_expand_variable_holding_tilde() -> None:
    env = {"HOME": "/home/u", "CACHE": "~/cache"}
    assert expand_path("$CACHE/m.gguf", env=env) == Path("/home/u/cache/m.gguf")


def test_expand_dollar_escapes_and_lone_dollar() -> None:
    assert expand_path("/a/$$b", env={}) == Path("/a/$b")
    assert expand_path("/a/b$", env={}) == Path("/a/b$")
    assert expand_path("/a/$1", env={}) == Path("/a/$1")


@pytest.mark.parametrize("raw", ["$UNSET_VAR_X/m.gguf", "${UNSET_VAR_X}/m.gguf"])
def test_undefined_variable_names_it_and_suggests_default(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        expand_path(raw, env={})
    err = info.value
    assert err.field == "model_path"
    assert err.value == raw
    assert "$UNSET_VAR_X" in err.problem
    assert "${UNSET_VAR_X:-" in err.fix


@pytest.mark.parametrize("raw", ["${UNCLOSED/m.gguf", "${1BAD}/m", "${}/m"])
def test_malformed_variable_reference(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        expand_path(raw, env={})
    assert info.value.field == "model_path"
    assert info.value.value == raw


def test_parse_config_expands_with_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAIVERSE_TEST_MODELS", "/srv/gguf")
    cfg = parse(minimal(model_path="${SAIVERSE_TEST_MODELS}/a.gguf"))
    assert cfg.model_path == Path("/srv/gguf/a.gguf")
    assert cfg.model_path_raw == "${SAIVERSE_TEST_MODELS}/a.gguf"


def test_parse_config_undefined_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAIVERSE_TEST_UNSET", raising=False)
    err = error_of(minimal(model_path="$SAIVERSE_TEST_UNSET/a.gguf"))
    assert err.field == "model_path"
    assert "SAIVERSE_TEST_UNSET" in str(err)


# --- files -------------------------------------------------------------------------------------


def test_load_config_file_uses_file_stem_as_key(tmp_path: Path) -> None:
    path = write(tmp_path, "my-model.json", json.dumps(minimal(model="my-model")))
    cfg = load_config_file(path)
    assert cfg.key == "my-model"
    assert cfg.source == path


def test_load_config_file_accepts_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(minimal()).encode())
    assert load_config_file(path).model == "m"


def test_bad_json_reports_line_and_column(tmp_path: Path) -> None:
    text = '{\n  "model": "m",\n  "provider": "llama_cpp",\n}\n'  # trailing comma
    path = write(tmp_path, "m.json", text)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    err = info.value
    assert err.file == path
    assert err.field == "(json)"
    assert "line 4, column 1" in err.problem
    assert "trailing comma" in err.fix
    assert str(path) in str(err)


def test_error_from_a_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", json.dumps(minimal(n_gpu_layers="32")))
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    err = info.value
    assert err.file == path
    assert err.field == "n_gpu_layers"
    message = str(err)
    assert message.startswith(f"{path}: n_gpu_layers: ")
    assert '(got "32")' in message
    assert "Fix: " in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_file(tmp_path / "absent.json")
    assert info.value.file == tmp_path / "absent.json"
    assert "does not exist" in info.value.problem


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(b'{"model": "\xff"}')
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert "UTF-8" in info.value.problem


def test_duplicate_keys_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = '{"model": "m", "provider": "llama_cpp", "model_path": "/a", "model_path": "/b"}'
    path = write(tmp_path, "m.json", text)
    with caplog.at_level(logging.WARNING, logger="saiverse_llm.config"):
        cfg = load_config_file(path)
    assert cfg.model_path == Path("/b")
    assert "appears twice" in caplog.text


# --- the shipped configs -----------------------------------------------------------------------

SHIPPED = {
    "llama-3-8b-instruct-q8": 8192,
    "llama-3-8b-instruct-q4": 8192,
    "qwen2.5-7b-instruct-q8": 32768,
    "qwen2.5-7b-instruct-q4": 32768,
    "gemma-2-9b-instruct-q8": 8192,
    "gemma-3-270m": 8192,
}


@pytest.mark.parametrize(("key", "context"), sorted(SHIPPED.items()))
def test_shipped_configs_are_valid_without_warnings(
    key: str, context: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = load_config_file(PROJECT_MODELS / f"{key}.json")
    assert caplog.text == ""
    assert cfg.model == key
    assert cfg.context_length == context
    assert cfg.model_path_raw.endswith(".gguf")
    if key != "gemma-3-270m":
        assert cfg.model_path_raw.startswith("~/models/")
        assert cfg.fallback_on_error is True


def test_seed_example_shipped_verbatim() -> None:
    """The seed's example, plus where its GGUF comes from (``source``)."""
    data = json.loads((PROJECT_MODELS / "llama-3-8b-instruct-q8.json").read_text("utf-8"))
    shipped = {k: v for k, v in data.items() if not k.startswith("_") and k != "source"}
    assert shipped == SEED_EXAMPLE


def test_embedded_default_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLAMA_HARNESS_CACHE", str(tmp_path / "cache"))
    cfg = load_config_file(PROJECT_MODELS / "gemma-3-270m.json")
    assert cfg.model_path == tmp_path / "cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
    assert cfg.chat_format == "alpaca"  # a base model: see the config's _note
    assert cfg.parameters.max_tokens <= 64 and cfg.note and "BASE model" in cfg.note
    assert cfg.test_model == "gemma-3-270m"
    assert cfg.fallback_on_error is False
    assert cfg.n_gpu_layers == -1
    monkeypatch.delenv("LLAMA_HARNESS_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config_file(PROJECT_MODELS / "gemma-3-270m.json")
    expected = (
        tmp_path / "home" / ".cache" / "llama-harness" / "models" / "gemma-3-270m-q4_k_m.gguf"
    )
    assert cfg.model_path == expected


def test_embedded_default_matches_the_test_model_manifest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The config must point where `llama-harness models fetch gemma-3-270m` puts the file."""
    yaml = pytest.importorskip("yaml")
    manifest = yaml.safe_load((PROJECT_MODELS / "test-models.yaml").read_text("utf-8"))
    entries = {m["name"]: m for m in manifest["models"]}
    monkeypatch.setenv("LLAMA_HARNESS_CACHE", str(tmp_path))
    cfg = load_config_file(PROJECT_MODELS / "gemma-3-270m.json")
    assert cfg.test_model is not None
    entry = entries[cfg.test_model]
    assert cfg.model_path == tmp_path / "models" / entry["filename"]
    assert cfg.chat_format == entry["chat_format"]
