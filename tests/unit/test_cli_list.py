"""``saiverse-llm list`` (saiverse_llm.cli) against temporary dirs and environment."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saiverse_llm.cli import build_parser, log_file_path, main, setup_logging


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Isolated HOME, cache, user dir and log file; the project's models/ stays in view."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LLAMA_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SAIVERSE_USER_DATA_DIR", str(tmp_path / "ud"))
    monkeypatch.delenv("SAIVERSE_MODELS_PATH", raising=False)
    monkeypatch.setenv("SAIVERSE_LOG_FILE", str(tmp_path / "saiverse_log.txt"))
    monkeypatch.setenv("COLUMNS", "250")
    root, ours = logging.getLogger(), logging.getLogger("saiverse_llm")
    levels = root.level, ours.level
    yield tmp_path
    # Drop the handlers main() installed on the captured streams; restore the levels.
    for handler in list(root.handlers):
        if getattr(handler, "cli_handler", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(levels[0])
    ours.setLevel(levels[1])


def put(directory: Path, key: str, **fields: Any) -> Path:
    data: dict[str, Any] = {
        "model": key,
        "display_name": f"{key} display",
        "provider": "llama_cpp",
        "model_path": f"/nonexistent/{key}.gguf",
    }
    data.update(fields)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["list", "--json", *args])
    out = capsys.readouterr().out
    return code, json.loads(out)


def by_key(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["key"]: m for m in data["models"]}


def test_shipped_configs_listed_with_existence_flags(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf = env / "cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF")
    seed_file = env / "home" / "models" / "llama-3-8b-instruct-q8_0.gguf"
    seed_file.parent.mkdir(parents=True)
    seed_file.write_bytes(b"GGUF")

    code, data = run_json(capsys)
    assert code == 0
    models = by_key(data)
    for key in [
        "gemma-2-9b-instruct-q8",
        "gemma-3-270m",
        "llama-3-8b-instruct-q4",
        "llama-3-8b-instruct-q8",
        "qwen2.5-7b-instruct-q4",
        "qwen2.5-7b-instruct-q8",
    ]:
        assert models[key]["valid"] is True, models[key]
        assert models[key]["origin"] == "project"
    assert models["gemma-3-270m"]["model_path"] == str(gguf)
    assert models["gemma-3-270m"]["model_exists"] is True
    assert models["llama-3-8b-instruct-q8"]["model_path"] == str(seed_file)
    assert models["llama-3-8b-instruct-q8"]["model_exists"] is True
    assert models["llama-3-8b-instruct-q4"]["model_exists"] is False
    assert models["qwen2.5-7b-instruct-q8"]["context_length"] == 32768
    assert data["dirs"][-1] == {"path": str(env / "ud" / "models"), "exists": False}


def test_a_directory_holding_the_file_is_not_a_model(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(env / "ud" / "models", "dir-model", model_path=str(env))
    _, data = run_json(capsys)
    assert by_key(data)["dir-model"]["model_exists"] is False


def test_invalid_file_listed_with_reason_and_good_ones_kept(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = env / "ud" / "models"
    put(user, "good")
    put(user, "bad", n_gpu_layers="32")
    code, data = run_json(capsys)
    assert code == 0
    models = by_key(data)
    assert models["good"]["valid"] is True
    assert models["good"]["origin"] == "user"
    bad = models["bad"]
    assert bad["valid"] is False
    assert bad["config_file"] == str(user / "bad.json")
    assert bad["error"]["field"] == "n_gpu_layers"
    assert bad["error"]["value"] == "32"
    assert "-1" in bad["error"]["fix"]
    assert "llama-3-8b-instruct-q8" in models  # the project's configs are still listed


def test_strict_exits_1_on_invalid(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_json(capsys, "--strict")[0] == 0
    (env / "ud" / "models").mkdir(parents=True)
    (env / "ud" / "models" / "broken.json").write_text("{", encoding="utf-8")
    assert run_json(capsys, "--strict")[0] == 1
    assert run_json(capsys)[0] == 0


def test_user_override_and_dir_option(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    put(env / "ud" / "models", "gemma-3-270m", display_name="user gemma")
    extra = env / "extra"
    put(extra, "gemma-3-270m", display_name="extra gemma")
    put(extra, "extra-only")

    _, data = run_json(capsys)
    gemma = by_key(data)["gemma-3-270m"]
    assert gemma["display_name"] == "user gemma"
    assert gemma["origin"] == "user"
    assert gemma["overrides"] == [str(Path(gemma["overrides"][0]))]
    assert gemma["overrides"][0].endswith("models/gemma-3-270m.json")

    _, data = run_json(capsys, "--dir", str(extra))
    models = by_key(data)
    assert models["gemma-3-270m"]["display_name"] == "extra gemma"
    assert len(models["gemma-3-270m"]["overrides"]) == 2
    assert "extra-only" in models
    assert data["dirs"][-1]["path"] == str(extra)


def test_null_context_is_read_from_the_gguf(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synth = pytest.importorskip("harness.models.synth")
    gguf = synth.synthesize(env / "tiny.gguf", preset="tiny", seed=0, n_ctx=1536)
    garbage = env / "garbage.gguf"
    garbage.write_bytes(b"<!DOCTYPE html><html>login</html>")
    user = env / "ud" / "models"
    put(user, "from-gguf", model_path=str(gguf), context_length=None)
    put(user, "garbage", model_path=str(garbage), context_length=None)
    put(user, "absent", context_length=None)
    _, data = run_json(capsys)
    models = by_key(data)
    assert models["from-gguf"]["context_length"] is None
    assert models["from-gguf"]["gguf_context_length"] == 1536
    assert models["from-gguf"]["gguf_error"] is None
    assert models["garbage"]["gguf_context_length"] is None
    assert "HTML" in models["garbage"]["gguf_error"]
    assert "gguf_context_length" not in models["absent"]

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    # not a terminal: a full-width pipe table (saiverse_llm.tables), no path cut at 80 columns
    lines = {line.split("|")[1].strip(): line for line in out.splitlines() if line.count("|") > 2}
    assert "1536 (GGUF)" in lines["from-gguf"]
    assert "bad GGUF" in lines["garbage"]
    assert "from GGUF" in lines["absent"]


def test_dangling_fallback_model_is_flagged(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    put(env / "ud" / "models", "with-fallback", fallback_model="no-such-key")
    put(env / "ud" / "models", "good-fallback", fallback_model="gemma-3-270m")
    _, data = run_json(capsys)
    models = by_key(data)
    assert models["with-fallback"]["note"] == "fallback_model 'no-such-key' does not exist"
    assert models["good-fallback"]["note"] is None


def test_a_fallback_cycle_is_one_warning_naming_it(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = env / "ud" / "models"
    put(d, "loop-a", fallback_model="loop-b")
    put(d, "loop-b", fallback_model="loop-a")
    put(d, "ring-1", fallback_model="ring-2")
    put(d, "ring-2", fallback_model="ring-3")
    put(d, "ring-3", fallback_model="ring-1")
    put(d, "into-ring", fallback_model="ring-1")  # leads into a loop, is not part of one
    put(d, "off-x", fallback_model="off-y", fallback_on_error=False)  # never falls back
    put(d, "off-y", fallback_model="off-x")
    assert main(["list", "--json", "--dir", str(d)]) == 0
    captured = capsys.readouterr()
    data, err = json.loads(captured.out), captured.err
    warnings = [line for line in err.splitlines() if "fallback_model cycle" in line]
    assert len(warnings) == 2, err
    assert "loop-a -> loop-b -> loop-a" in warnings[0] and "Fix:" in warnings[0]
    assert "ring-1 -> ring-2 -> ring-3 -> ring-1" in warnings[1]
    models = by_key(data)
    assert models["loop-b"]["note"] == "fallback_model cycle loop-a -> loop-b -> loop-a"
    assert "cycle" in models["ring-3"]["note"]
    assert models["into-ring"]["note"] is None
    assert models["off-x"]["note"] is None and models["off-y"]["note"] is None

    assert main(["list", "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert out.count("(warning: fallback_model cycle loop-a -> loop-b -> loop-a)") == 2


def test_names_with_rich_markup_are_shown_as_written(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """[/] in a path made rich raise MarkupError (an internal error); [bold] was eaten."""
    d = env / "ud" / "models"
    put(d, "[red]z", display_name="[bold]B[/bold] x[/]y", model_path="/m/a[/]b.gguf")
    assert main(["list", "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "[red]z" in line)
    assert "[bold]B[/bold] x[/]y" in row and "/m/a[/]b.gguf" in row


def test_table_output(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gguf = env / "cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF")
    put(env / "ud" / "models", "broken-model", context_length=0)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    # not a terminal: a full-width pipe table (saiverse_llm.tables), no path cut at 80 columns
    lines = {line.split("|")[1].strip(): line for line in out.splitlines() if line.count("|") > 2}
    gemma = lines["gemma-3-270m"]
    assert "Gemma 3 270M Q4_K_M (embedded default, llama.cpp)" in gemma
    assert str(gguf) in gemma
    assert "✓" in gemma and "✗" not in gemma
    assert "8192" in gemma and "all (-1)" in gemma and "llama_cpp" in gemma
    llama = lines["llama-3-8b-instruct-q8"]
    assert "✗" in llama and "✓" not in llama
    assert "8192" in llama
    assert "INVALID" in lines["broken-model"]
    assert "context_length" in out
    assert "1 invalid" in out
    assert "1 model files present" in out


def test_logs_to_file(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    put(env / "ud" / "models", "bad", provider="openai")
    log_file = env / "logs" / "custom.txt"
    assert main(["--log-file", str(log_file), "list", "--json"]) == 0
    captured = capsys.readouterr()
    text = log_file.read_text(encoding="utf-8")
    assert "invalid model config" in text and "provider" in text
    assert "list: " in text  # INFO lines go to the file
    assert "invalid model config" in captured.err  # warnings also on stderr
    assert "list: " not in captured.err  # but not INFO


def test_log_file_option_after_the_command(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    after, before = env / "after.txt", env / "before.txt"
    assert main(["list", "--json", "--log-file", str(after)]) == 0
    assert "list: " in after.read_text(encoding="utf-8")
    assert main(["--log-file", str(before), "list", "--json"]) == 0
    assert "list: " in before.read_text(encoding="utf-8")
    args = build_parser().parse_args(["--log-file", str(before), "-v", "list"])
    assert (args.log_file, args.verbose) == (before, True)
    args = build_parser().parse_args(["list"])
    assert (args.log_file, args.verbose) == (None, False)


def test_log_file_path_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SAIVERSE_LOG_FILE", raising=False)
    assert log_file_path() == Path("saiverse_log.txt")
    monkeypatch.setenv("SAIVERSE_LOG_FILE", str(tmp_path / "env.txt"))
    assert log_file_path() == tmp_path / "env.txt"
    assert log_file_path(tmp_path / "arg.txt") == tmp_path / "arg.txt"


def test_unwritable_log_file_falls_back_to_stderr(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = env / "file"
    blocker.write_text("x")
    assert setup_logging(blocker / "sub" / "log.txt") is None
    assert "cannot write the log file" in capsys.readouterr().err


def test_setup_logging_is_idempotent(env: Path) -> None:
    setup_logging(env / "a.txt")
    setup_logging(env / "b.txt")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "cli_handler", False)]
    assert len(ours) == 2  # one stderr + one file handler, not four


def test_help_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["list", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--json" in out and "--dir" in out and "--strict" in out
    assert main([]) == 2


def test_console_script_runs(env: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "saiverse_llm.cli", "list", "--json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=env,
    )
    assert result.returncode == 0, result.stderr
    assert "gemma-3-270m" in {m["key"] for m in json.loads(result.stdout)["models"]}
    assert (env / "saiverse_log.txt").is_file()
