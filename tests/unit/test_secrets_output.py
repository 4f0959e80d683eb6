"""No secret reaches any output path of either CLI: stdout (tables, JSON, Markdown), stderr
(warnings, error lines, internal errors), log files (saiverse_log.txt, the harness log) and
the files later runs read (report.md/json, status.json, llama-bench.json).

The secrets are planted where they really turn up: credentials in ``HF_ENDPOINT`` (the
review's ``models fetch`` leak), a secret environment variable whose value appears in text,
URLs with ``user:pass@`` and ``?token=``, ``-D...TOKEN=`` in CMake arguments.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from harness import cli as harness_cli
from saiverse_llm import cli as saiverse_cli

ENV_SECRET = "sk-proj-ENVSECRETabcdefghijklmnop0123"
SECRETS = ("hunter2hunter2", ENV_SECRET, "qwerty12345", "zz9911aa", "p4ssw0rdURL")


@pytest.fixture(autouse=True)
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLAMA_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LLAMA_HARNESS_REPORTS", str(tmp_path / "reports"))
    monkeypatch.setenv("SAIVERSE_USER_DATA_DIR", str(tmp_path / "user"))
    monkeypatch.setenv("SAIVERSE_LOG_FILE", str(tmp_path / "saiverse_log.txt"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MY_SERVICE_API_KEY", ENV_SECRET)
    return tmp_path


INPUTS = "inputs"


def everything(tmp_path: Path, out: str, err: str) -> str:
    """stdout, stderr and every file the run left under ``tmp_path`` (logs, reports...)."""
    texts = [out, err]
    for path in tmp_path.rglob("*"):
        if INPUTS in path.parts or path.name == "bench.json":
            continue  # the planted inputs themselves (configs, manifests, pytest-benchmark's)
        if path.is_file() and path.suffix in {".txt", ".log", ".json", ".md", ""}:
            texts.append(f"--- {path}\n" + path.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(texts)


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked:\n{text[:3000]}"


def run(
    capsys: pytest.CaptureFixture[str], main: Callable[[Sequence[str]], int], argv: list[str]
) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_models_fetch_never_prints_hf_endpoint_credentials(
    world: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://alice:hunter2hunter2@127.0.0.1:9")
    manifest = world / INPUTS / "hubonly.yaml"
    manifest.parent.mkdir()
    manifest.write_text(
        "models:\n  - name: m\n    filename: m.gguf\n    sha256: '" + "0" * 64 + "'\n"
        "    size: 10\n    license: MIT\n    repo_id: someorg/somerepo\n    revision: main\n"
    )
    code, out, err = run(
        capsys, harness_cli.main, ["models", "--manifest", str(manifest), "fetch", "m"]
    )
    assert code == 1
    assert "127.0.0.1:9" in err  # the endpoint is named, its credentials are not
    assert_clean(everything(world, out, err))


def _secret_configs(world: Path) -> Path:
    folder = world / INPUTS / "models"
    folder.mkdir(parents=True)
    (folder / "leaky.json").write_text(
        json.dumps(
            {
                "model": "leaky",
                "provider": "llama_cpp",
                "display_name": f"uses {ENV_SECRET}",
                "model_path": "/models/x.gguf?token=qwerty12345",
            }
        )
    )
    (folder / "bad.json").write_text(
        json.dumps(
            {
                "model": "bad",
                "provider": "llama_cpp",
                "model_path": "https://bob:p4ssw0rdURL@host/x.gguf",
                "fallback_on_error": "HF_TOKEN=zz9911aa",
            }
        )
    )
    return folder


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["list", "--json"],
        ["-v", "list", "--strict"],
        ["check", "leaky"],
        ["chat", "leaky", "hi"],
        ["chat", "bad", "hi"],
    ],
    ids=" ".join,
)
def test_saiverse_llm_outputs_and_log_hold_no_secret(
    world: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    folder = _secret_configs(world)
    code, out, err = run(capsys, saiverse_cli.main, [*argv, "--dir", str(folder)])
    assert code in (0, 1, 2)
    assert "Traceback" not in err
    text = everything(world, out, err)
    assert (world / "saiverse_log.txt").is_file()
    assert_clean(text)


def test_an_internal_error_message_is_redacted_too(
    world: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.commands import variants

    def boom(args: object) -> int:
        raise RuntimeError(f"connecting to https://u:hunter2hunter2@x with {ENV_SECRET}")

    monkeypatch.setattr(variants, "run", boom)
    code, out, err = run(capsys, harness_cli.main, ["variants"])
    assert code == 1 and "internal error" in err
    assert (world / "cache" / "logs" / "llama-harness.log").read_text().count("RuntimeError")
    assert_clean(everything(world, out, err))


def test_report_files_hold_no_secret(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = world / "reports" / "cpu"
    folder.mkdir(parents=True)
    bench = {
        "machine_info": {"node": "ci"},
        "benchmarks": [
            {
                "name": "test_tg",
                "extra_info": {
                    "metric": "tg128",
                    "cmake_args": "-DGGML_NATIVE=OFF -DLICENSE_TOKEN=zz9911aa",
                    "model_path": "https://bob:p4ssw0rdURL@host/m.gguf",
                },
                "stats": {"mean": 1.0, "stddev": 0.0, "rounds": 3},
            }
        ],
    }
    (folder / "bench.json").write_text(json.dumps(bench))
    from harness.sessions import write_status

    write_status("cpu", "bench-cpu", "passed", f"pytest --token={ENV_SECRET} passed")
    code, out, err = run(capsys, harness_cli.main, ["report", "--no-charts"])
    assert code == 0, err
    assert (world / "reports" / "report" / "report.md").is_file()
    assert_clean(everything(world, out, err))


def test_llama_bench_json_holds_no_secret(world: Path) -> None:
    from harness.bench.llama_bench import write_results

    path = write_results(
        {"command": f"llama-bench -m x --hf-token {ENV_SECRET}", "runs": []},
        world / "lb.json",
    )
    assert_clean(path.read_text())
