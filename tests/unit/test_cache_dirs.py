"""The cache layout has one home (``saiverse_llm.cache_dirs``): the user's cache base
(``$XDG_CACHE_HOME``, else ``~/.cache``) and ``saiverse_llm``'s folder in it
(``$SAIVERSE_LLM_CACHE`` moves it), and both of its users (the compiled loop's cache and the
Hub cache's default) follow it."""

from __future__ import annotations

from pathlib import Path

import pytest

from saiverse_llm import cache_dirs, native_loop
from saiverse_llm.download import hub_cache_dir


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment: HOME in tmp_path, no cache variables set."""
    for name in ("XDG_CACHE_HOME", cache_dirs.ENV_CACHE, "HF_HOME", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def native_cache(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder ``native_loop.build`` keeps compiled loops in (``<it>/native/<hash>/``),
    asked with a cached library taken as intact: nothing is compiled or written."""
    monkeypatch.setenv("CC", "true")  # any program on PATH: it is never run here
    monkeypatch.setattr(native_loop, "_intact", lambda path: True)
    folder = native_loop.build().parent
    assert folder.parent.name == "native"
    return folder.parent.parent


def test_xdg_unset_is_dot_cache_in_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_dirs.user_cache_home() == home / ".cache"
    assert cache_dirs.saiverse_cache_dir() == home / ".cache" / "saiverse-llm"
    assert hub_cache_dir() == home / ".cache" / "huggingface" / "hub"
    assert native_cache(monkeypatch) == home / ".cache" / "saiverse-llm"


def test_an_empty_xdg_counts_as_unset(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv(cache_dirs.ENV_CACHE, "")
    assert cache_dirs.saiverse_cache_dir() == home / ".cache" / "saiverse-llm"
    assert hub_cache_dir() == home / ".cache" / "huggingface" / "hub"


def test_xdg_set_moves_both_caches(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg")  # ~ is expanded
    assert cache_dirs.user_cache_home() == home / "xdg"
    assert cache_dirs.saiverse_cache_dir() == home / "xdg" / "saiverse-llm"
    assert hub_cache_dir() == home / "xdg" / "huggingface" / "hub"
    assert native_cache(monkeypatch) == home / "xdg" / "saiverse-llm"


def test_saiverse_llm_cache_moves_only_ours(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(cache_dirs.ENV_CACHE, "~/mine")
    assert cache_dirs.saiverse_cache_dir() == home / "mine"
    assert native_cache(monkeypatch) == home / "mine"
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"


def test_hf_variables_still_win_for_the_hub_cache(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub_cache_dir() == tmp_path / "hub"


def test_both_caches_take_their_base_from_the_one_home(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither user derives the base on its own: change the one function, both follow."""
    monkeypatch.setattr(cache_dirs, "user_cache_home", lambda: tmp_path / "base")
    assert hub_cache_dir() == tmp_path / "base" / "huggingface" / "hub"
    assert native_cache(monkeypatch) == tmp_path / "base" / "saiverse-llm"
