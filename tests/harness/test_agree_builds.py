"""``llama-harness agree`` end to end on a real llama-cpp-python build (the cpu wheel the
tests session installs): a build agrees with itself exactly, and a build whose logits are
perturbed (the self-test noise, standing in for a wrong kernel) fails with the numbers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="needs a llama-cpp-python build in this interpreter (nox -s tests installs the "
    "cached cpu wheel; run `nox -s build-cpu` first)",
)


def agree(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    me = f"cpu={sys.executable}"
    cmd = [sys.executable, "-m", "harness.cli", "agree", me, me, "--model", "tiny", "--chunks",
           "2", "--no-write", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)


def test_a_build_agrees_with_itself(tmp_path: Path, tiny_gguf: Path) -> None:
    proc = agree(tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| cpu "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:9] == ["cpu", "cpu", "tiny", "F32", "126", "0 ± 0", "0", "0", "100.00%"]
    assert cells[-1] == "pass"
    assert "within the default limits" in proc.stdout or "within the F32 limits" in proc.stdout


def test_a_build_with_wrong_numbers_fails_with_them(tmp_path: Path, tiny_gguf: Path) -> None:
    proc = agree(tmp_path, "--self-test-noise", "1.0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout
    verdict = proc.stdout.splitlines()[-1]
    assert "OUTSIDE the" in verdict and "mean KLD" in verdict and "> limit" in verdict


def test_an_unknown_variant_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "agree", "cpu", "no-such-variant"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "no-such-variant" in proc.stderr
    assert "Fix:" in proc.stderr and "Traceback" not in proc.stderr
