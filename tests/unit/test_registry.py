"""Config discovery across directories (saiverse_llm.registry)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from saiverse_llm.config import ConfigError
from saiverse_llm.registry import (
    ModelNotFoundError,
    config_dirs,
    discover,
    get_config,
    project_models_dir,
    user_models_dir,
)


def put(directory: Path, key: str, **fields: Any) -> Path:
    data: dict[str, Any] = {
        "model": key,
        "display_name": f"{key} from {directory.name}",
        "provider": "llama_cpp",
        "model_path": f"/gguf/{key}.gguf",
    }
    data.update(fields)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SAIVerse variables; HOME is a temporary folder."""
    monkeypatch.delenv("SAIVERSE_USER_DATA_DIR", raising=False)
    monkeypatch.delenv("SAIVERSE_MODELS_PATH", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


# --- directories -------------------------------------------------------------------------------


def test_project_dir_is_the_checkout_models_folder() -> None:
    assert project_models_dir() == Path(__file__).resolve().parents[2] / "models"
    assert (project_models_dir() / "gemma-3-270m.json").is_file()


def test_default_dirs_project_then_home_user_dir(clean_env: Path) -> None:
    assert config_dirs() == [
        project_models_dir(),
        clean_env / ".saiverse" / "user_data" / "models",
    ]


def test_user_data_dir_variable(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAIVERSE_USER_DATA_DIR", str(clean_env / "ud"))
    assert user_models_dir() == clean_env / "ud" / "models"
    assert config_dirs()[-1] == clean_env / "ud" / "models"


def test_models_path_variable_has_highest_priority_first_entry_wins(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = clean_env / "a", clean_env / "b"
    monkeypatch.setenv("SAIVERSE_MODELS_PATH", os.pathsep.join([str(a), "", str(b)]))
    dirs = config_dirs()
    assert dirs[-2:] == [b, a]  # lowest priority first, so 'a' (listed first) comes last
    put(a, "k", display_name="from a")
    put(b, "k", display_name="from b")
    entry = discover()["k"]
    assert entry.config is not None
    assert entry.config.display_name == "from a"


def test_duplicate_dir_counts_once(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAIVERSE_MODELS_PATH", str(project_models_dir()))
    dirs = config_dirs()
    assert dirs.count(project_models_dir()) == 1
    assert dirs[-1] == project_models_dir()


# --- discovery ---------------------------------------------------------------------------------


def test_discover_reads_every_json_by_key(tmp_path: Path) -> None:
    put(tmp_path, "beta")
    put(tmp_path, "alpha")
    (tmp_path / "notes.txt").write_text("not a config")
    (tmp_path / "test-models.yaml").write_text("models: []")
    (tmp_path / ".hidden.json").write_text("{broken")
    entries = discover([tmp_path])
    assert list(entries) == ["alpha", "beta"]  # sorted, only *.json, hidden files skipped
    assert all(e.valid and e.error is None for e in entries.values())
    assert entries["alpha"].path == tmp_path / "alpha.json"
    assert entries["alpha"].config is not None
    assert entries["alpha"].config.source == tmp_path / "alpha.json"


def test_missing_directory_is_skipped(tmp_path: Path) -> None:
    put(tmp_path / "real", "k")
    assert list(discover([tmp_path / "absent", tmp_path / "real"])) == ["k"]


def test_later_directory_overrides_same_key(tmp_path: Path) -> None:
    project, user = tmp_path / "project", tmp_path / "user"
    put(project, "shared", n_gpu_layers=-1)
    put(project, "only-project")
    put(user, "shared", n_gpu_layers=0)
    put(user, "only-user")
    entries = discover([project, user])
    assert sorted(entries) == ["only-project", "only-user", "shared"]
    shared = entries["shared"]
    assert shared.path == user / "shared.json"
    assert shared.config is not None and shared.config.n_gpu_layers == 0
    assert shared.overrides == (project / "shared.json",)
    assert entries["only-project"].overrides == ()


def test_order_of_dirs_decides_the_winner(tmp_path: Path) -> None:
    project, user = tmp_path / "project", tmp_path / "user"
    put(project, "shared", n_gpu_layers=-1)
    put(user, "shared", n_gpu_layers=0)
    entry = discover([user, project])["shared"]
    assert entry.config is not None and entry.config.n_gpu_layers == -1


def test_one_bad_file_does_not_hide_the_good_ones(tmp_path: Path) -> None:
    put(tmp_path, "good-1")
    put(tmp_path, "good-2")
    put(tmp_path, "bad-layers", n_gpu_layers="32")
    (tmp_path / "bad-json.json").write_text('{"model": "bad-json",, }', encoding="utf-8")
    (tmp_path / "bad-list.json").write_text("[1, 2]", encoding="utf-8")
    entries = discover([tmp_path])
    assert sorted(entries) == ["bad-json", "bad-layers", "bad-list", "good-1", "good-2"]
    assert entries["good-1"].valid and entries["good-2"].valid
    for key, field in [
        ("bad-layers", "n_gpu_layers"),
        ("bad-json", "(json)"),
        ("bad-list", "(top level)"),
    ]:
        entry = entries[key]
        assert not entry.valid
        assert entry.config is None
        assert isinstance(entry.error, ConfigError)
        assert entry.error.field == field
        assert entry.error.file == tmp_path / f"{key}.json"


def test_invalid_user_override_is_reported_not_silently_replaced(tmp_path: Path) -> None:
    project, user = tmp_path / "project", tmp_path / "user"
    put(project, "k")
    put(user, "k", provider="ollama")
    entry = discover([project, user])["k"]
    assert not entry.valid
    assert entry.error is not None and entry.error.field == "provider"
    assert entry.overrides == (project / "k.json",)


def test_default_discover_uses_env_dirs(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ud = clean_env / "ud"
    monkeypatch.setenv("SAIVERSE_USER_DATA_DIR", str(ud))
    put(ud / "models", "gemma-3-270m", display_name="my override")
    entries = discover()
    assert "llama-3-8b-instruct-q8" in entries  # project configs are still there
    gemma = entries["gemma-3-270m"]
    assert gemma.config is not None and gemma.config.display_name == "my override"
    assert gemma.overrides == (project_models_dir() / "gemma-3-270m.json",)


def test_home_user_dir_is_used_without_variable(clean_env: Path) -> None:
    put(clean_env / ".saiverse" / "user_data" / "models", "home-model")
    assert "home-model" in discover()


# --- get_config --------------------------------------------------------------------------------


def test_get_config_returns_highest_priority(tmp_path: Path) -> None:
    put(tmp_path / "a", "k", context_length=1024)
    put(tmp_path / "b", "k", context_length=2048)
    assert get_config("k", [tmp_path / "a", tmp_path / "b"]).context_length == 2048


def test_get_config_raises_the_files_error(tmp_path: Path) -> None:
    put(tmp_path, "k", context_length=0)
    with pytest.raises(ConfigError) as info:
        get_config("k", [tmp_path])
    assert info.value.field == "context_length"
    assert info.value.file == tmp_path / "k.json"


def test_get_config_does_not_need_other_files_to_be_valid(tmp_path: Path) -> None:
    put(tmp_path, "good")
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    assert get_config("good", [tmp_path]).key == "good"


def test_get_config_unknown_key_suggests_close_matches(tmp_path: Path) -> None:
    put(tmp_path, "gemma-3-270m")
    put(tmp_path, "llama-3-8b-instruct-q8")
    with pytest.raises(ModelNotFoundError) as info:
        get_config("gemma-3-270", [tmp_path])
    err = info.value
    assert err.key == "gemma-3-270"
    assert err.available == ["gemma-3-270m", "llama-3-8b-instruct-q8"]
    message = str(err)
    assert "Did you mean: gemma-3-270m" in message
    assert str(tmp_path) in message
    assert "saiverse-llm list" in message
    assert isinstance(err, LookupError)
