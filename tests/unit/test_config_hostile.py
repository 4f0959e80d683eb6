"""Hostile model configs: each one is refused with a ConfigError naming the file, the field,
the value and the fix, and never hides the valid configs beside it.

Integer fields are bounded by the C field they end in (llama_cpp/llama_cpp.py of the pinned
llama-cpp-python); ``test_bounds_match_the_llama_cpp_ctypes_fields`` re-derives the bounds from
the installed llama_cpp when there is one, so a changed binding fails here.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import Any

import pytest

from saiverse_llm import config
from saiverse_llm.cli import main
from saiverse_llm.config import ConfigError, load_config_file
from saiverse_llm.registry import discover, get_config

BASE = '"model": "m", "provider": "llama_cpp", "model_path": "/models/m.gguf"'
HUGE = "9" * 5000


def text_with(extra: str) -> str:
    return "{" + BASE + (", " + extra if extra else "") + "}"


def error_of(text: str, tmp_path: Path, name: str = "m.json") -> ConfigError:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    err = info.value
    assert err.file == path, "the error must name the file"
    assert err.fix, "the error must say how to fix it"
    return err


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (f'"n_gpu_layers": {HUGE}', "n_gpu_layers"),
        (f'"context_length": {HUGE}', "context_length"),
        (f'"n_threads": -{HUGE}', "n_threads"),
        (f'"parameters": {{"max_tokens": {HUGE}}}', "parameters.max_tokens"),
        (f'"parameters": {{"temperature": {HUGE}}}', "parameters.temperature"),
        (f'"parameters": {{"top_p": {{"default": {HUGE}}}}}', "parameters.top_p.default"),
        (f'"display_name": {HUGE}', "display_name"),
    ],
)
def test_a_5000_digit_number_names_its_field(tmp_path: Path, extra: str, field: str) -> None:
    err = error_of(text_with(extra), tmp_path)
    assert err.field == field
    assert "5,000-digit" in str(err) or "not a number" in str(err) or "string" in str(err)


def test_a_5000_digit_model_name_is_not_a_string(tmp_path: Path) -> None:
    err = error_of('{"model": ' + HUGE + ', "provider": "llama_cpp", "model_path": "/m"}', tmp_path)
    assert err.field == "model"


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_100000_deep_nesting_is_a_config_error(tmp_path: Path, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    text = text_with('"parameters": ' + opener * 100_000 + "1" + closer * 100_000)
    err = error_of(text, tmp_path)
    assert err.field == "(json)"
    assert "nested too deeply" in err.problem


@pytest.mark.parametrize(
    ("field", "value", "bound"),
    [
        ("n_gpu_layers", 2**32, f"{2**31 - 1:,}"),  # c_int32 would make it 0 (CPU only)
        ("n_gpu_layers", 2**31, f"{2**31 - 1:,}"),
        ("n_gpu_layers", -2, "-1"),
        ("context_length", 4294967808, f"{2**32 - 1:,}"),  # c_uint32 would make it 512
        ("context_length", 2**32, f"{2**32 - 1:,}"),
        ("n_threads", 513, "512"),
        ("n_threads", 2**31, "512"),
    ],
)
def test_integers_are_bounded_by_their_c_type(
    tmp_path: Path, field: str, value: int, bound: str
) -> None:
    err = error_of(text_with(f'"{field}": {value}'), tmp_path)
    assert err.field == field
    assert err.value == value
    assert bound in err.problem


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_gpu_layers", 2**31 - 1),
        ("n_gpu_layers", -1),
        ("context_length", 2**32 - 1),
        ("n_threads", 512),
    ],
)
def test_the_bounds_themselves_are_accepted(tmp_path: Path, field: str, value: int) -> None:
    path = tmp_path / "m.json"
    path.write_text(text_with(f'"{field}": {value}'))
    assert getattr(load_config_file(path), field) == value


def test_max_tokens_above_uint32_is_refused(tmp_path: Path) -> None:
    err = error_of(text_with('"parameters": {"max_tokens": 4294967296}'), tmp_path)
    assert err.field == "parameters.max_tokens"


@pytest.mark.parametrize(
    ("extra", "field", "says"),
    [
        ('"context_length": 8192.0', "context_length", "8192.0 is a float, not a whole number"),
        ('"n_gpu_layers": 32.0', "n_gpu_layers", "32.0 is a float"),
        ('"parameters": {"max_tokens": 2048.0}', "parameters.max_tokens", "2048.0 is a float"),
        ('"context_length": 8192.5', "context_length", "8192.5 is not a whole number"),
        ('"context_length": 1e999', "context_length", "Infinity is not a whole number"),
        ('"parameters": {"temperature": NaN}', "parameters.temperature", "NaN is not a finite"),
        ('"parameters": {"top_p": Infinity}', "parameters.top_p", "not a finite number"),
    ],
)
def test_floats_say_what_they_are(tmp_path: Path, extra: str, field: str, says: str) -> None:
    err = error_of(text_with(extra), tmp_path)
    assert err.field == field
    assert says in str(err)


def test_the_float_fix_is_the_whole_number(tmp_path: Path) -> None:
    err = error_of(text_with('"context_length": 8192.0'), tmp_path)
    assert err.fix.startswith("write 8192")


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    err = error_of(text_with('"display_name": "' + "x" * (2 * 1024 * 1024) + '"'), tmp_path)
    assert "bytes" in err.problem


#: The edge cases of the review (cases/review/cfg/edge), each: file text -> field.
EDGE_CASES: dict[str, tuple[str, str | None]] = {
    "boolstr": (text_with('"fallback_on_error": "true"'), "fallback_on_error"),
    "brace": ('{"model": "brace", "provider": "llama_cpp", "model_path": "${HOME"}', "model_path"),
    "comment": ('{ // c\n "model": "comment", "provider": "llama_cpp"}', "(json)"),
    "dollar": (
        '{"model": "d", "provider": "llama_cpp", "model_path": "$NOPE_VAR_X/x.gguf"}',
        "model_path",
    ),
    "empty": ("", "(json)"),
    "emptypath": ('{"model": "e", "provider": "llama_cpp", "model_path": ""}', "model_path"),
    "negctx": (text_with('"context_length": -5'), "context_length"),
    "nullpath": ('{"model": "n", "provider": "llama_cpp", "model_path": null}', "model_path"),
    "numstr": (text_with('"n_gpu_layers": "-1"'), "n_gpu_layers"),
    "params_list": (text_with('"parameters": [1, 2]'), "parameters"),
    "spec_badrange": (
        text_with('"parameters": {"temperature": {"default": 1.5, "min": 0, "max": 1}}'),
        "parameters.temperature.default",
    ),
    "spec_nodefault": (
        text_with('"parameters": {"temperature": {"min": 0, "max": 2}}'),
        "parameters.temperature",
    ),
    "temp_str": (text_with('"parameters": {"temperature": "0.7"}'), "parameters.temperature"),
    "toplist": ("[1]", "(top level)"),
    "trailing": (text_with("")[:-1] + ",}", "(json)"),
    "hugectx": (text_with('"context_length": 1000000000000000000000000000000'), "context_length"),
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_review_edge_cases_are_config_errors(tmp_path: Path, name: str) -> None:
    text, field = EDGE_CASES[name]
    err = error_of(text, tmp_path, f"{name}.json")
    assert err.field == field


def test_parse_config_text_raises_only_config_errors() -> None:
    from saiverse_llm.config import parse_config_text

    for text in ["{", "[" * 5000, "1" * 10_000, '{"a": ' + "-" + HUGE + "}", "\x00", "nul"]:
        with pytest.raises(ConfigError):
            parse_config_text(text, key="k")


# --------------------------------------------------------------------------- one bad, others ok


def write_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "ok.json").write_text(text_with('"context_length": 4096').replace('"m"', '"ok"'))
    (folder / "bigint.json").write_text(text_with(f'"n_gpu_layers": {HUGE}'))
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (folder / "wrap.json").write_text(text_with('"n_gpu_layers": 4294967296'))
    return folder


def test_discover_lists_the_valid_config_beside_the_bad_ones(tmp_path: Path) -> None:
    entries = discover([write_dir(tmp_path)])
    assert sorted(entries) == ["bigint", "deep", "ok", "wrap"]
    assert entries["ok"].valid
    for key in ("bigint", "deep", "wrap"):
        assert not entries[key].valid and entries[key].error is not None


def test_get_config_of_a_bad_config_raises_its_config_error(tmp_path: Path) -> None:
    folder = write_dir(tmp_path)
    assert get_config("ok", [folder]).context_length == 4096
    with pytest.raises(ConfigError) as info:
        get_config("bigint", [folder])
    assert info.value.field == "n_gpu_layers"


def test_get_llm_client_of_a_bad_config_raises_its_config_error(tmp_path: Path) -> None:
    """SAIVerse's entry point: the ConfigError naming the file and field, not a raw
    ValueError/RecursionError, and the good config beside it still loads its settings."""
    from saiverse_llm import get_llm_client

    folder = write_dir(tmp_path)
    for key, field in (("bigint", "n_gpu_layers"), ("deep", "(json)"), ("wrap", "n_gpu_layers")):
        with pytest.raises(ConfigError) as info:
            get_llm_client(key, dirs=[folder])
        assert info.value.field == field and info.value.fix
    assert get_llm_client("ok", dirs=[folder]) is not None


def list_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["--log-file", "/dev/null", "list", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def test_saiverse_llm_list_shows_every_config_and_each_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAIVERSE_USER_DATA_DIR", str(tmp_path / "nouser"))
    folder = write_dir(tmp_path)
    code, doc = list_json(capsys, "--dir", str(folder))
    assert code == 0  # invalid configs are listed, not fatal (--strict makes them exit 1)
    models = {m["key"]: m for m in doc["models"]}
    assert models["ok"]["valid"] is True
    assert models["bigint"]["error"]["field"] == "n_gpu_layers"
    assert models["deep"]["error"]["field"] == "(json)"
    assert models["wrap"]["error"]["field"] == "n_gpu_layers"
    assert list_json(capsys, "--dir", str(folder), "--strict")[0] == 1


# --------------------------------------------------------------------------- the C types


def test_bounds_match_the_llama_cpp_ctypes_fields() -> None:
    lib = pytest.importorskip("llama_cpp.llama_cpp", reason="needs the llama_cpp build")
    model = dict(lib.llama_model_params._fields_)
    context = dict(lib.llama_context_params._fields_)
    expected = {
        (model["n_gpu_layers"], config.N_GPU_LAYERS_RANGE[1]),
        (context["n_ctx"], config.CONTEXT_LENGTH_RANGE[1]),
        (context["n_threads"], config.INT32_MAX),
    }
    for ctype, high in expected:

        class Field(ctypes.Structure):
            _fields_ = [("v", ctype)]

        field = Field()
        field.v = high
        assert field.v == high, f"{ctype.__name__} cannot hold the bound {high}"
        field.v = high + 1
        assert field.v != high + 1, f"{ctype.__name__} holds more than the bound {high}"
    assert config.N_THREADS_RANGE[1] <= config.INT32_MAX


# --------------------------------------------------------------------------- control characters


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("display_name", "evil\u001b[2J\u001b]0;pwned\u0007"),  # clear screen, window title
        ("display_name", "two\nlines"),  # breaks the table
        ("model_path", "/models/\u001b[31mred.gguf"),
        ("model_path", "/models/x\u0000.gguf"),
        ("chat_format", "gemma\u009b"),  # a C1 CSI
        ("note", "\u001b[8mhidden"),
    ],
)
def test_control_characters_in_strings_are_refused(tmp_path: Path, field: str, value: str) -> None:
    doc = json.loads(text_with(""))
    doc[field] = value
    err = error_of(json.dumps(doc), tmp_path)
    assert err.field == field
    assert "control character" in str(err)


def test_a_note_may_have_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    doc = json.loads(text_with(""))
    doc["note"] = "first line\n\tsecond line"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert load_config_file(path).note == doc["note"]


def test_list_never_sends_a_config_s_escape_sequence_to_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAIVERSE_USER_DATA_DIR", str(tmp_path / "nouser"))
    folder = tmp_path / "cfg"
    folder.mkdir()
    doc = json.loads(text_with(""))
    doc["display_name"] = "evil\u001b[2J\u001b]0;pwned\u0007"
    (folder / "m.json").write_text(json.dumps(doc), encoding="utf-8")
    assert main(["--log-file", "/dev/null", "list", "--dir", str(folder)]) == 0
    captured = capsys.readouterr()
    assert "\u001b" not in captured.out + captured.err
    assert "control character U+001B" in captured.out
