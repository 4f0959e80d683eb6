"""``saiverse-llm chat`` and ``check`` as demos: short by default, honest about the model, and
``check`` says how many threads it ran with (a real build, the tiny model)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from saiverse_llm.cli import main
from saiverse_llm.model_commands import CHAT_MAX_TOKENS


def _config(folder: Path, key: str, model: Path, **extra: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "model": key,
        "provider": "llama_cpp",
        "model_path": str(model),
        "n_gpu_layers": 0,
        "fallback_on_error": False,
        **extra,
    }
    (folder / f"{key}.json").write_text(json.dumps(data))


def _run(*args: str) -> int:
    return main([*args, "--log-file", os.devnull])


def test_chat_stops_at_a_short_default_and_says_so(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], ours_only: None
) -> None:
    """A config asking for 2,048 tokens (the seed's default) still gives a short demo reply."""
    configs = tmp_path / "configs"
    _config(configs, "noisy", tiny, parameters={"max_tokens": 2048}, chat_format="chatml")
    assert _run("chat", "noisy", "hello", "--dir", str(configs), "--seed", "1") == 0
    err = capsys.readouterr().err
    completion = int(re.search(r"\+ (\d+) completion tokens", err).group(1))  # type: ignore[union-attr]
    assert 0 < completion <= CHAT_MAX_TOKENS
    if completion == CHAT_MAX_TOKENS:
        assert f"(stopped at {CHAT_MAX_TOKENS} tokens; --max-tokens N" in err
    # --max-tokens still wins
    assert _run("chat", "noisy", "hello", "--dir", str(configs), "--max-tokens", "3") == 0
    assert "+ 3 completion tokens" in capsys.readouterr().err


def test_chat_and_check_print_the_configs_note(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], ours_only: None
) -> None:
    configs = tmp_path / "configs"
    note = "a random-weight model, here to test builds"
    _config(configs, "noted", tiny, note=note, parameters={"max_tokens": 8})
    assert _run("chat", "noted", "hello", "--dir", str(configs)) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"note: {note}\n")
    assert re.search(r"\+ [1-8] completion tokens", err)
    assert _run("check", "noted", "--dir", str(configs), "--tokens", "4") == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(f"note: {note}\n")
    # the thread count it ran with, and where it came from (no n_threads in this config)
    assert re.search(r"n_threads\W+\d+ \(batch \d+; default \(physical cores\)\)", captured.out)
    assert _run("check", "noted", "--dir", str(configs), "--tokens", "2", "--n-threads", "1") == 0
    assert re.search(r"n_threads\W+1 \(batch 1; --n-threads\)", capsys.readouterr().out)


def test_check_and_chat_on_a_cpu_build_without_a_gpu_give_no_cuda_advice(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], ours_only: None
) -> None:
    """The README's cpu path: the embedded config asks for n_gpu_layers -1. On a CPU-only
    build on a machine with no GPU, check and chat warned to install the cuda variant; now
    one INFO line (in the log) says n_gpu_layers is ignored. Where a GPU is present the
    warning stays (tests/unit/test_offload_note.py)."""
    import llama_cpp

    from saiverse_llm import loading
    from saiverse_llm.devices import machine_gpus

    if llama_cpp.llama_supports_gpu_offload() or machine_gpus():
        pytest.skip("a GPU build or a GPU is present: the install advice is right there")
    loading._cpu_only_noted.clear()  # once per process: this test's load says it
    configs = tmp_path / "configs"
    _config(configs, "allgpu", tiny, n_gpu_layers=-1, chat_format="chatml")
    log = tmp_path / "saiverse_log.txt"
    assert (
        main(["check", "allgpu", "--dir", str(configs), "--tokens", "2", "--log-file", str(log)])
        == 0
    )
    assert (
        main(
            [
                "chat",
                "allgpu",
                "hi",
                "--dir",
                str(configs),
                "--max-tokens",
                "2",
                "--log-file",
                str(log),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "WARNING" not in err and "install cuda" not in err, err
    text = log.read_text()
    assert "install cuda" not in text
    assert text.count("is CPU-only and this machine has no GPU: n_gpu_layers=-1 is ignored") == 1
