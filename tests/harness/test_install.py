"""``llama-harness install VARIANT --python PATH``: a real cpu wheel (from the wheel cache)
installed into a fresh venv, pinned, verified there; later pip calls keep it.

The real-wheel tests skip (with the reason) when no cpu wheel has been built here
(`llama-harness build cpu`, or `nox -s test-cpu`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from harness.build import wheel_cache
from harness.build.install import InstallError, inspect_python, write_pip_conf

ROOT = Path(__file__).resolve().parents[2]


def _cpu_wheel() -> Path:
    entry = wheel_cache.newest("cpu")
    if entry is None:
        pytest.skip("no cpu wheel in the wheel cache here; `llama-harness build cpu` makes one")
    return entry.wheel


def _venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(path)
    return path / "bin" / "python"


def _harness(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _fake_wheel(folder: Path, version: str) -> Path:
    """A pure-Python stand-in named llama-cpp-python ``version`` (for the resolver only)."""
    name = f"llama_cpp_python-{version}-py3-none-any.whl"
    dist = f"llama_cpp_python-{version}.dist-info"
    path = folder / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("llama_cpp/__init__.py", f"__version__ = {version!r}\n")
        zf.writestr(
            f"{dist}/METADATA",
            f"Metadata-Version: 2.1\nName: llama-cpp-python\nVersion: {version}\n",
        )
        wheel_info = "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        zf.writestr(f"{dist}/WHEEL", wheel_info)
        zf.writestr(f"{dist}/RECORD", "")
    return path


def _resolved_url(python: Path, *pip_args: str) -> str | None:
    """What `pip install --dry-run` would install for llama-cpp-python there (its URL), or
    None when it would keep what is installed."""
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
         "--no-deps", *pip_args, "llama-cpp-python"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    urls = [i["download_info"]["url"] for i in report["install"]]
    assert len(urls) <= 1, urls
    return str(urls[0]) if urls else None


# --------------------------------------------------------------------------- no build needed


def test_install_refuses_a_python_that_is_not_a_venv() -> None:
    with pytest.raises(InstallError, match="not a virtual environment"):
        inspect_python(sys.base_prefix + "/bin/python3")
    proc = _harness("install", "cpu", "--python", sys.base_prefix + "/bin/python3")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --python ")
    assert "Traceback" not in proc.stderr


def test_install_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    proc = _harness("install", "no-such-variant", "--python", sys.executable)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr
    proc = _harness("install", "cpu", "--python", str(tmp_path / "nope" / "python"))
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_pip_conf_keeps_the_users_settings(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\ntimeout = 60\n[install]\nconstraint = /old.txt\nno-compile = 1\n")
    write_pip_conf(conf, tmp_path / "c.txt")
    text = conf.read_text()
    assert "timeout = 60" in text and "no-compile = 1" in text
    assert text.count(f"constraint = {tmp_path / 'c.txt'}") == 2  # [global] and [install]
    assert "/old.txt" not in text


# --------------------------------------------------------------------------- the real cpu wheel


@pytest.mark.slow
def test_install_cpu_into_a_fresh_venv_is_verified_and_stays_pinned(tmp_path: Path) -> None:
    wheel = _cpu_wheel()
    python = _venv(tmp_path / "app-venv")
    proc = _harness("install", "cpu", "--python", str(python), "--wheel", str(wheel))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("verified: the installed llama_cpp is a cpu build"), proc.stdout
    assert "pinned through" in proc.stderr
    pinned = tmp_path / "app-venv" / "llama-harness" / wheel.name
    assert pinned.is_file()

    # What a later pip call in that venv would install: the pinned copy, never another
    # build. The index offers a "newer" llama-cpp-python to tempt it.
    index = tmp_path / "index"
    index.mkdir()
    _fake_wheel(index, "0.3.37")
    offline = ["--no-index", "--find-links", str(index)]
    assert _resolved_url(python, *offline, "--upgrade") is None  # keeps the installed one
    assert _resolved_url(python, *offline, "--force-reinstall") == pinned.as_uri()
    # A plain `pip install llama-cpp-python` (real index) changes nothing ...
    plain = subprocess.run(
        [str(python), "-m", "pip", "install", "llama-cpp-python"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "Building wheel" not in plain.stdout
    # ... and asking for another version is refused instead of swapping the build.
    other = subprocess.run(
        [str(python), "-m", "pip", "install", *offline, "llama-cpp-python==0.3.37"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert other.returncode != 0 and "ResolutionImpossible" in other.stdout + other.stderr
    # the build there is still the verified one
    again = subprocess.run(
        [sys.executable, "-m", "harness.build.verify", "cpu", "--python", str(python),
         "--wheel", str(pinned)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout

    # Control: without the venv's pip.conf the same request would take the other build.
    (tmp_path / "app-venv" / "pip.conf").unlink()
    unpinned = _resolved_url(python, *offline, "--upgrade")
    assert unpinned is not None and unpinned.endswith("0.3.37-py3-none-any.whl")


@pytest.mark.slow
def test_install_takes_the_wheel_from_the_cache(tmp_path: Path) -> None:
    wheel = _cpu_wheel()
    python = _venv(tmp_path / "v")
    proc = _harness("install", "cpu", "--python", str(python), "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cache hit" in proc.stderr
    record = json.loads((tmp_path / "v" / "llama-harness" / "install.json").read_text())
    assert record["variant"] == "cpu" and Path(record["source_wheel"]) == wheel
