"""Offline bundles (harness/ship/bundle.py): wheel slimming, manifest checksums, an install that
works with no index and no network, and the client running from it.

Needs a built llama-cpp-python wheel in the harness wheel cache (`llama-harness build cpu`);
the tests that need one skip with the reason without.
Making a bundle downloads the dependency wheels once (pip, PyPI).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from harness.commands.bundle import parse_size
from harness.ship import bundle
from harness.ship.bundle import BundleError

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_CPU_LIBS = {
    "libggml-base.so.0",
    "libggml-cpu.so.0",
    "libggml.so",
    "libggml.so.0",
    "libllama.so",
    "libllama.so.0",
    "libmtmd.so",
}


def _wheel(variant: str) -> Path:
    try:
        return bundle.find_variant_wheel(variant)
    except BundleError as exc:
        pytest.skip(f"no {variant} wheel built here: {exc}")


def _system_lib(name: str) -> Path:
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"):
        path = Path(folder) / name
        if path.is_file():
            return path
    pytest.skip(f"{name} not found in the usual library folders")


# --------------------------------------------------------------------------- small pieces


def test_elf_reader_finds_soname_and_needed() -> None:
    lib = _system_lib("libstdc++.so.6")
    soname, needed = bundle._elf_dynamic(lib.read_bytes())
    assert soname == "libstdc++.so.6"
    assert "libc.so.6" in needed and "libm.so.6" in needed
    assert bundle._elf_dynamic(b"not an elf file at all" * 4) == (None, [])


def test_plan_keeps_loaded_names_and_drops_duplicates() -> None:
    """Group by content; keep ctypes names and DT_NEEDED names; drop lib/ and include/."""
    stdcpp = _system_lib("libstdc++.so.6").read_bytes()  # NEEDED: libm.so.6, libc.so.6
    libm = _system_lib("libm.so.6").read_bytes()
    names = {
        "llama_cpp/lib/libllama.so": stdcpp,
        "llama_cpp/lib/libllama.so.0": stdcpp,
        "llama_cpp/lib/libllama.so.0.5.0": stdcpp,
        "llama_cpp/lib/libm.so": libm,
        "llama_cpp/lib/libm.so.6": libm,
        "llama_cpp/lib/libm.so.6.1": libm,
        "lib/libllama.so": stdcpp,
        "include/llama.h": b"/* header */",
        "llama_cpp/__init__.py": b"",
    }
    kept, removed = bundle.plan_slim(names)
    assert set(kept) == {
        "llama_cpp/lib/libllama.so",  # opened by ctypes
        "llama_cpp/lib/libm.so.6",  # a DT_NEEDED name
        "llama_cpp/__init__.py",
    }
    assert "lib/libllama.so" in removed and "include/llama.h" in removed


def test_parse_size() -> None:
    assert parse_size("64MiB") == 64 * 1024 * 1024
    assert parse_size("1.5K") == 1536
    assert parse_size("123") == 123


def test_offline_env_hides_pip_config_and_indexes(tmp_path: Path) -> None:
    base = {
        "PATH": "/usr/bin",
        "PIP_FIND_LINKS": "/opt/wheels",
        "PIP_EXTRA_INDEX_URL": "file:///opt/pypi/simple",
        "PIP_CONSTRAINT": "/etc/xdg/pip/constraints.txt",
        "PYTHONPATH": "/somewhere",
    }
    env = bundle.offline_env(base, tmp_path / "wheels")
    assert env["PIP_CONFIG_FILE"] == os.devnull
    assert env["PIP_NO_INDEX"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert env["PIP_FIND_LINKS"] == str(tmp_path / "wheels")
    assert "PIP_EXTRA_INDEX_URL" not in env and "PIP_CONSTRAINT" not in env
    assert "PYTHONPATH" not in env and env["PATH"] == "/usr/bin"


def test_session_command_uses_nox_when_carried_else_pytest(tmp_path: Path) -> None:
    manifest: dict[str, Any] = {
        "variant": "cuda",
        "mode": "slim-only",
        "llama_wheel": "wheels/llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl",
        "models": {"tiny": {}},
    }
    py = tmp_path / "venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    cmd, extra = bundle.session_command(manifest, tmp_path, py, "test-cuda", ["-k", "x"])
    assert cmd == [str(py), "-m", "pytest", str(tmp_path / "project/tests/client"), "-k", "x"]
    assert extra["LLAMA_HARNESS_VARIANT"] == "cuda"
    assert extra["LLAMA_HARNESS_N_GPU_LAYERS"] == "-1"
    assert extra["LLAMA_HARNESS_MODELS"] == "tiny"
    with pytest.raises(BundleError, match="runs only test-<variant> or bench-<variant>"):
        bundle.session_command(manifest, tmp_path, py, "lint", [])
    (py.parent / "nox").write_text("")
    cmd, _ = bundle.session_command(manifest, tmp_path, py, "test-cuda", ["-k", "x"])
    assert cmd[1:3] == ["-m", "nox"] and "test-cuda" in cmd
    assert cmd[-4:] == ["--wheel", str(tmp_path / manifest["llama_wheel"]), "-k", "x"]


# --------------------------------------------------------------------------- the real wheel


@pytest.fixture(scope="module")
def cpu_wheel() -> Path:
    return _wheel("cpu")


@pytest.fixture(scope="module")
def slim_cpu(cpu_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> bundle.SlimResult:
    return bundle.slim_wheel(cpu_wheel, tmp_path_factory.mktemp("slim"))


def test_slim_wheel_keeps_one_copy_and_a_valid_record(
    cpu_wheel: Path, slim_cpu: bundle.SlimResult
) -> None:
    assert set(slim_cpu.kept_libs) == EXPECTED_CPU_LIBS
    assert slim_cpu.size < slim_cpu.original_size * 0.35
    with zipfile.ZipFile(slim_cpu.path) as zf:
        names = set(zf.namelist())
        assert not any(n.startswith(("lib/", "include/")) for n in names)
        record_name = next(n for n in names if n.endswith(".dist-info/RECORD"))
        rows = list(csv.reader(io.StringIO(zf.read(record_name).decode())))
        listed = {row[0] for row in rows}
        assert listed == names
        for path, digest, size in rows:
            if path == record_name:
                continue
            data = zf.read(path)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == "sha256=" + want.decode() and int(size) == len(data), path
        marker = json.loads(zf.read(record_name.replace("RECORD", "SLIMMED.json")))
    assert marker["original_sha256"] == bundle.sha256_of(cpu_wheel)


def test_slim_wheel_refuses_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a wheel"):
        bundle.slim_wheel(bad, tmp_path / "out")


# --------------------------------------------------------------------------- a real bundle


@pytest.fixture(scope="module")
def cpu_bundle(cpu_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A light bundle (no project extras): the wheel, the project, the client's and nox's
    dependencies, the tiny model."""
    return _make_bundle(tmp_path_factory.mktemp("bundle") / "cpu.tar.gz", cpu_wheel, extras="")


def _make_bundle(out: Path, wheel: Path, *, extras: str) -> Path:
    spec = bundle.BundleSpec(
        variant="cpu", output=out, models=("tiny",), wheel=wheel, project_extras=extras
    )
    try:
        bundle.build_bundle(spec)
    except BundleError as exc:
        if "pip" in str(exc) and ("download" in str(exc) or "wheel" in str(exc)):
            pytest.skip(f"cannot download the dependency wheels here: {exc}")
        raise
    return out


def test_bundle_manifest_covers_every_file(cpu_bundle: Path) -> None:
    with tarfile.open(cpu_bundle) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        manifest = json.loads(tar.extractfile(bundle.MANIFEST).read())  # type: ignore[union-attr]
        sums = tar.extractfile(bundle.SUMS).read().decode()  # type: ignore[union-attr]
        for name, meta in manifest["files"].items():
            data = tar.extractfile(members[name]).read()  # type: ignore[union-attr]
            assert hashlib.sha256(data).hexdigest() == meta["sha256"], name
    assert set(members) == set(manifest["files"]) | {bundle.MANIFEST, bundle.SUMS, "README.txt"}
    assert manifest["variant"] == "cpu" and manifest["slimmed"]
    assert manifest["llama_wheel"].startswith("wheels/llama_cpp_python-0.3.36-")
    assert [n for n in members if "llama_cpp_python" in n] == [manifest["llama_wheel"]]
    assert "tiny" in manifest["models"] and manifest["models"]["tiny"]["file"] in members
    assert "project/noxfile.py" in members and "project/tests/conftest.py" in members
    assert len(sums.splitlines()) == len(manifest["files"])
    sidecar = cpu_bundle.with_name(cpu_bundle.name + ".sha256").read_text().split()[0]
    assert sidecar == bundle.sha256_of(cpu_bundle)


def test_verify_names_a_tampered_file(cpu_bundle: Path, tmp_path: Path) -> None:
    root = bundle.extract(cpu_bundle, tmp_path / "b")
    manifest = bundle.verify(root)
    victim = root / manifest["llama_wheel"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"wheels/llama_cpp_python-.*sha256 differs"):
        bundle.verify(root)


def test_extract_refuses_a_truncated_archive(cpu_bundle: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(cpu_bundle.read_bytes()[: cpu_bundle.stat().st_size // 2])
    with pytest.raises(BundleError, match=r"cannot be extracted.*copy it again"):
        bundle.extract(cut, tmp_path / "x")


@pytest.fixture(scope="module")
def installed(cpu_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> bundle.Installed:
    work = tmp_path_factory.mktemp("run")
    return bundle.install_bundle(
        bundle.RunSpec(bundle=cpu_bundle, session="test-cpu", workdir=work)
    )


def _in_bundle_env(done: bundle.Installed, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*done.jail, str(done.python), "-c", code],
        env=done.env,
        capture_output=True,
        text=True,
        check=False,
        cwd=done.root / "project",
    )


def test_installed_offline_slim_wheel_imports_and_generates(installed: bundle.Installed) -> None:
    code = (
        "import json, llama_cpp\n"
        "from harness.models.model_manifest import ensure_model\n"
        "path = ensure_model('tiny')\n"
        "llm = llama_cpp.Llama(str(path), n_ctx=128, n_threads=1, verbose=False)\n"
        "out = llm.create_completion('hello', max_tokens=4, temperature=0.0)\n"
        "print(json.dumps({'file': llama_cpp.__file__, 'model': str(path),\n"
        "  'tokens': out['usage']['completion_tokens']}))\n"
    )
    proc = _in_bundle_env(installed, code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(installed.python.parent.parent))
    assert result["model"].startswith(str(installed.root / "cache" / "models"))
    assert result["tokens"] > 0


def test_no_index_is_reachable_from_the_bundle_env(installed: bundle.Installed) -> None:
    """A package that is not in the bundle cannot be installed: pip sees the bundle only."""
    proc = subprocess.run(
        [*installed.jail, str(installed.python), "-m", "pip", "install", "six"],
        env=installed.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "No matching distribution found for six" in proc.stdout + proc.stderr


def test_network_is_cut_when_unshare_allows(installed: bundle.Installed) -> None:
    if not installed.jail:
        pytest.skip("unshare -n/-rn not permitted here: isolation is PIP_NO_INDEX=1 only")
    code = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('pypi.org', 443), timeout=5)\n"
        "except OSError as exc:\n"
        "    print('blocked', type(exc).__name__)\n"
        "else:\n"
        "    print('connected')\n"
    )
    proc = _in_bundle_env(installed, code)
    assert proc.stdout.startswith("blocked"), proc.stdout + proc.stderr


@pytest.mark.slow
def test_bundle_runs_test_cpu_in_a_fresh_venv_offline(cpu_wheel: Path, tmp_path: Path) -> None:
    """The full bundle carries the [test] extra (the session installs `-e .[test]`)."""
    full = _make_bundle(tmp_path / "full.tar.gz", cpu_wheel, extras="test")
    spec = bundle.RunSpec(
        bundle=full, session="test-cpu", workdir=tmp_path / "run", reports=tmp_path / "reports"
    )
    assert bundle.run_bundle(spec) == 0
    assert any((tmp_path / "reports").rglob("*")), "the session wrote no report"


@pytest.mark.slow
def test_slim_only_bundle_runs_the_client_suite_on_host_packages(
    cpu_wheel: Path, tmp_path: Path
) -> None:
    """The GPU-host path: carry only the wheel, the project, gguf and diskcache; the rest
    (numpy, jinja2, pytest, ...) comes from the interpreter running the bundle."""
    out = tmp_path / "slim.tar.gz"
    spec = bundle.BundleSpec(
        variant="cpu", output=out, models=("tiny",), wheel=cpu_wheel, slim_only=True
    )
    bundle.build_bundle(spec)
    with tarfile.open(out) as tar:
        wheels = sorted(
            n.split("/")[1].split("-")[0] for n in tar.getnames() if n.startswith("wheels/")
        )
    assert wheels == ["diskcache", "gguf", "llama_cpp_python", "saiverse_llama_harness"]
    run = bundle.RunSpec(bundle=out, session="test-cpu", posargs=("-q",), workdir=tmp_path / "run")
    assert bundle.run_bundle(run) == 0


def test_slim_only_cuda_bundle_fits_64_mib(tmp_path: Path) -> None:
    """The GPU hosts take 64 MiB: the CUDA wheel (slimmed) + tiny model + project must fit."""
    wheel = _wheel("cuda")
    out = tmp_path / "cuda.tar.gz"
    spec = bundle.BundleSpec(
        variant="cuda",
        output=out,
        models=("tiny",),
        wheel=wheel,
        slim_only=True,
        python_version="3.12",
        max_size=64 * 1024 * 1024,
    )
    report = bundle.build_bundle(spec)
    assert report.size <= 64 * 1024 * 1024
    assert report.slim is not None and "libggml-cuda.so.0" in report.slim.kept_libs
    assert os.path.getsize(out) == report.size
