"""The optional ``source`` block of a model config (where ``saiverse-llm fetch`` downloads
the GGUF from), and the ``source`` of every shipped config."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from saiverse_llm.config import ConfigError, parse_config
from saiverse_llm.registry import project_models_dir

SHA = "ab" * 32


def _parse(source: Any, model_path: str = "/m/model.gguf") -> Any:
    data = {"model": "k", "provider": "llama_cpp", "model_path": model_path, "source": source}
    return parse_config(data, key="k", source=Path("/cfg/k.json"))


def test_single_file_source() -> None:
    cfg = _parse({"repo_id": "o/r", "filename": "a/b.gguf", "revision": "abc", "sha256": SHA})
    src = cfg.model_source
    assert src.repo_id == "o/r" and src.revision == "abc" and src.pinned
    files = [(f.filename, f.local_name, f.sha256) for f in src.files]
    assert files == [("a/b.gguf", "b.gguf", SHA)]
    assert cfg.model_files() == [Path("/m/model.gguf")]
    assert cfg.to_dict()["model_source"]["sha256"] == SHA


def test_sha256_may_be_unknown_and_revision_defaults_to_main(
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = _parse({"repo_id": "o/r", "filename": "x.gguf"}).model_source
    assert src.revision == "main" and not src.pinned and src.files[0].sha256 is None
    assert "source.revision is not set" in caplog.text


def test_split_model_parts_live_beside_the_first() -> None:
    names = ["q-00001-of-00002.gguf", "q-00002-of-00002.gguf"]
    cfg = _parse(
        {"repo_id": "o/r", "filename": names, "revision": "r", "sha256": [SHA, None]},
        model_path="/m/q-00001-of-00002.gguf",
    )
    assert cfg.model_files() == [Path("/m") / n for n in names]
    assert [f.sha256 for f in cfg.model_source.files] == [SHA, None]


@pytest.mark.parametrize(
    ("source", "model_path", "field", "message"),
    [
        ("o/r", "/m/x.gguf", "source", "must be an object"),
        ({"filename": "x.gguf"}, "/m/x.gguf", "source.repo_id", "owner/name"),
        ({"repo_id": "o/r/x", "filename": "x.gguf"}, "/m/x.gguf", "source.repo_id", "owner/name"),
        ({"repo_id": "o/r"}, "/m/x.gguf", "source.filename", "path in the repo"),
        ({"repo_id": "o/r", "filename": "../x"}, "/m/x.gguf", "source.filename", "path in the"),
        ({"repo_id": "o/r", "filename": "x", "revision": ""}, "/m/x", "source.revision", "commit"),
        ({"repo_id": "o/r", "filename": "x", "sha256": "abc"}, "/m/x", "source.sha256", "64 hex"),
        (
            {"repo_id": "o/r", "filename": ["a-00001-of-00002.gguf", "b"], "sha256": SHA},
            "/m/a-00001-of-00002.gguf",
            "source.sha256",
            "a list of 2",
        ),
        (
            {"repo_id": "o/r", "filename": ["a-00001-of-00002.gguf", "b"]},
            "/m/other.gguf",
            "model_path",
            "must name the first part",
        ),
    ],
)
def test_bad_source_names_the_field(source: Any, model_path: str, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _parse(source, model_path)
    assert err.value.field == field
    text = str(err.value)
    assert text.startswith(f"/cfg/k.json: {field}: ") and message in text and "Fix: " in text


def test_every_shipped_config_says_where_its_gguf_comes_from() -> None:
    """The seed's five models and the embedded one: a Hub repo, a file and a revision; the
    sha256 wherever the Hub publishes it for that revision (else null, explained in _note)."""
    for path in sorted(project_models_dir().glob("*.json")):
        raw = json.loads(path.read_text())
        cfg = parse_config(raw, key=path.stem, source=path)
        src = cfg.model_source
        assert src is not None, f"{path.name}: no source"
        assert re.fullmatch(r"[0-9a-f]{40}", src.revision) or path.stem == "gemma-3-270m", (
            f"{path.name}: revision {src.revision!r} is not a commit sha"
        )
        if not src.pinned:
            assert "sha256" in raw.get("_note", ""), f"{path.name}: unpinned without a note"
        assert len(src.files) == 1 or cfg.model_path.name == src.files[0].local_name
