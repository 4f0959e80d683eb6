"""The wheel cache never serves a wheel built with other flags; build steps that need no
compiler (sdist pin, unpack, configure evidence, wheel contents, import)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from harness.build import build, wheel_cache
from harness.build.variants import SdistPin, get_variant
from saiverse_llm.download import sha256_file

BOOLS = frozenset({"GGML_NATIVE", "GGML_CUDA", "GGML_CUDA_NO_VMM", "GGML_BLAS"})

# Lines copied from real build logs (llama-cpp-python 0.3.36, `pip wheel -v`, a cpu and a
# cuda build).
CPU_CONFIGURE = """\
  -- ccache found, compilation results will be cached. Disable with GGML_CCACHE=OFF.
  -- CMAKE_SYSTEM_PROCESSOR: x86_64
  -- GGML_SYSTEM_ARCH: x86
  -- Found OpenMP: TRUE (found version "4.5")
  -- Including CPU backend
  -- x86 detected
  -- Adding CPU backend variant ggml-cpu: -msse4.2;-mf16c;-mfma;-mbmi2;-mavx;-mavx2 GGML_SSE42;GGML_F16C;GGML_FMA;GGML_BMI2;GGML_AVX;GGML_AVX2
  -- ggml version: 0.25.3
  -- Build files have been written to: /root/.cache/llama-harness/build/cpu
"""  # noqa: E501
CUDA_CONFIGURE = """\
  -- Including CPU backend
  -- x86 detected
  -- Adding CPU backend variant ggml-cpu: -msse4.2;-mf16c;-mfma;-mbmi2;-mavx;-mavx2 GGML_SSE42;GGML_F16C;GGML_FMA;GGML_BMI2;GGML_AVX;GGML_AVX2
  -- Unable to find cublas_v2.h in either "/usr/local/cuda-13.0/include" or "/usr/math_libs/include"
  -- Found CUDAToolkit: /usr/local/cuda-13.0/include (found version "13.0.88")
  -- CUDA Toolkit found
  -- The CUDA compiler identification is NVIDIA 13.0.88
  -- Using CMAKE_CUDA_ARCHITECTURES=90 CMAKE_CUDA_ARCHITECTURES_NATIVE=
  -- CUDA host compiler is GNU 12.2.0
  -- Including CUDA backend
  -- Build files have been written to: /root/.cache/llama-harness/build/cuda
"""  # noqa: E501
BLAS_MISSING = """\
  -- Including CPU backend
  -- Could NOT find BLAS (missing: BLAS_LIBRARIES)
  CMake Error at vendor/llama.cpp/ggml/src/ggml-blas/CMakeLists.txt:98 (message):
    BLAS not found, please refer to https://cmake.org/cmake/help/latest/module/FindBLAS.html#blas-lapack-vendors to set correct GGML_BLAS_VENDOR
"""  # noqa: E501


def inputs_for(args: list[str], **over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "sdist_sha256": "a" * 64,
        "version": "0.3.36",
        "cmake_args": args,
        "toolchain": {"cc": "gcc 12.2.0", "cxx": "g++ 12.2.0", "cmake": "cmake 3.25.1"},
        "platform_tag": "linux-x86_64",
        "env": {},
        "bool_names": BOOLS,
    }
    base.update(over)
    return wheel_cache.key_inputs(**base)  # type: ignore[arg-type]


WHEEL_NAME = "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"


def fake_wheel(folder: Path, libs: list[str], name: str = WHEEL_NAME) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    record = []
    with zipfile.ZipFile(path, "w") as zf:
        for lib in libs:
            data = f"ELF {lib}".encode()
            zf.writestr(f"llama_cpp/lib/{lib}", data)
            digest = hashlib.sha256(data).hexdigest()
            record.append(f"llama_cpp/lib/{lib},sha256={digest},{len(data)}")
        zf.writestr("llama_cpp_python-0.3.36.dist-info/RECORD", "\n".join(record) + "\n")
    return path


# --------------------------------------------------------------------------- normalisation


def test_cmake_args_normalisation_order_case_duplicates() -> None:
    a = wheel_cache.normalise_cmake_args(
        "-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=90", bool_names=BOOLS
    )
    b = wheel_cache.normalise_cmake_args(
        ["-DCMAKE_CUDA_ARCHITECTURES=90", "-DGGML_NATIVE:BOOL=off", "-D", "GGML_CUDA=1"],
        bool_names=BOOLS,
    )
    assert a == b
    assert list(a["defines"]) == sorted(a["defines"])
    assert a["defines"]["GGML_CUDA"] == "ON" and a["defines"]["GGML_NATIVE"] == "OFF"
    later = wheel_cache.normalise_cmake_args("-DGGML_CUDA=ON -DGGML_CUDA=OFF", bool_names=BOOLS)
    assert later["defines"] == {"GGML_CUDA": "OFF"}
    # 1/0 are booleans only for option() names; a numeric cache value stays a number
    num = wheel_cache.normalise_cmake_args("-DGGML_SCHED_MAX_COPIES=1", bool_names=BOOLS)
    assert num["defines"] == {"GGML_SCHED_MAX_COPIES": "1"}
    # string values keep their case (FindBLAS vendor names are case-sensitive)
    blas = wheel_cache.normalise_cmake_args("-DGGML_BLAS_VENDOR=OpenBLAS", bool_names=BOOLS)
    assert blas["defines"]["GGML_BLAS_VENDOR"] == "OpenBLAS"
    other = wheel_cache.normalise_cmake_args("-G Ninja -DGGML_CUDA=on", bool_names=BOOLS)
    assert other["other"] == ["-G", "Ninja"]


def test_boolean_options_come_from_the_source_tree(tmp_path: Path) -> None:
    (tmp_path / "CMakeLists.txt").write_text('option(MY_FLAG "doc" OFF)\nset(NUM "4")\n')
    names = wheel_cache.boolean_options(tmp_path)
    assert "MY_FLAG" in names and "NUM" not in names and "GGML_CUDA" in names


def test_key_changes_with_every_input_and_not_with_spelling() -> None:
    base = wheel_cache.compute_key(inputs_for(["-DGGML_NATIVE=OFF"]))
    assert base == wheel_cache.compute_key(inputs_for(["-DGGML_NATIVE=off"]))
    assert base == wheel_cache.compute_key(inputs_for(["-DGGML_NATIVE=ON", "-DGGML_NATIVE=0"]))
    changed = [
        inputs_for(["-DGGML_NATIVE=ON"]),
        inputs_for(["-DGGML_NATIVE=OFF", "-DGGML_CUDA=on"]),
        inputs_for(["-DGGML_NATIVE=OFF"], sdist_sha256="b" * 64),
        inputs_for(["-DGGML_NATIVE=OFF"], toolchain={"cc": "gcc 13", "cxx": "g++ 12.2.0"}),
        inputs_for(["-DGGML_NATIVE=OFF"], platform_tag="linux-aarch64"),
        inputs_for(["-DGGML_NATIVE=OFF"], env={"CFLAGS": "-O0"}),
        inputs_for(["-DGGML_NATIVE=OFF"], host_cpu="cpu-with-amx"),
    ]
    keys = {wheel_cache.compute_key(i) for i in changed}
    assert base not in keys and len(keys) == len(changed)


# --------------------------------------------------------------------------- store / lookup


def test_store_then_hit(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path / "out", ["libggml-cpu.so", "libllama.so"])
    inputs = inputs_for(["-DGGML_NATIVE=OFF"])
    entry = wheel_cache.store(wheel, inputs, variant="cpu", cmake_args=["-DGGML_NATIVE=OFF"],
                              root=tmp_path / "wheels")  # fmt: skip
    assert entry.wheel.parent.name == wheel_cache.compute_key(inputs)
    record = json.loads((entry.wheel.parent / "build.json").read_text())
    assert record["wheel_sha256"] == sha256_file(wheel)
    assert record["variant"] == "cpu" and record["inputs"]["cmake_args"]["defines"]
    found = wheel_cache.lookup(inputs_for(["-DGGML_NATIVE=off"]), root=tmp_path / "wheels")
    assert found.hit is not None and found.hit.wheel == entry.wheel


def test_a_wheel_stored_under_flags_a_is_never_served_for_flags_b(tmp_path: Path) -> None:
    root = tmp_path / "wheels"
    cpu_wheel = fake_wheel(tmp_path / "cpu", ["libggml-cpu.so"])
    cpu_inputs = inputs_for(["-DGGML_NATIVE=OFF"])
    wheel_cache.store(cpu_wheel, cpu_inputs, variant="cpu", cmake_args=[], root=root)
    cuda_inputs = inputs_for(["-DGGML_NATIVE=OFF", "-DGGML_CUDA=on"])
    miss = wheel_cache.lookup(cuda_inputs, root=root)
    assert miss.hit is None and "no cached wheel" in miss.reason
    # even if the CPU entry sits in the folder of the CUDA key (collision / hand-copied)
    cuda_key = wheel_cache.compute_key(cuda_inputs)
    (root / wheel_cache.compute_key(cpu_inputs)).rename(root / cuda_key)
    refused = wheel_cache.lookup(cuda_inputs, root=root)
    assert refused.hit is None
    assert "refused" in refused.reason and "GGML_CUDA" in refused.reason


def test_edited_build_json_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "wheels"
    wheel = fake_wheel(tmp_path / "cpu", ["libggml-cpu.so"])
    inputs = inputs_for(["-DGGML_NATIVE=OFF", "-DGGML_CUDA=on"])
    entry = wheel_cache.store(wheel, inputs, variant="cuda", cmake_args=[], root=root)
    meta = entry.wheel.parent / "build.json"
    record = json.loads(meta.read_text())
    record["inputs"]["toolchain"]["nvcc"] = "release 12.4"
    meta.write_text(json.dumps(record))
    found = wheel_cache.lookup(inputs, root=root)
    assert found.hit is None and "refused" in found.reason and "toolchain" in found.reason


def test_changed_wheel_bytes_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "wheels"
    wheel = fake_wheel(tmp_path / "cpu", ["libggml-cpu.so"])
    inputs = inputs_for(["-DGGML_NATIVE=OFF"])
    entry = wheel_cache.store(wheel, inputs, variant="cpu", cmake_args=[], root=root)
    fake_wheel(entry.wheel.parent, ["libggml-cuda.so"], name=entry.wheel.name)  # swapped
    found = wheel_cache.lookup(inputs, root=root)
    assert found.hit is None and "sha256" in found.reason


def test_store_replaces_an_entry_atomically(tmp_path: Path) -> None:
    root = tmp_path / "wheels"
    inputs = inputs_for(["-DGGML_NATIVE=OFF"])
    first = fake_wheel(tmp_path / "a", ["libggml-cpu.so"])
    second = fake_wheel(tmp_path / "b", ["libggml-cpu.so", "libllama.so"])
    wheel_cache.store(first, inputs, variant="cpu", cmake_args=[], root=root)
    entry = wheel_cache.store(second, inputs, variant="cpu", cmake_args=[], root=root)
    assert sha256_file(entry.wheel) == sha256_file(second)
    # no temp or old folders left (.locks holds the per-key lock files)
    assert sorted(p.name for p in root.iterdir()) == [".locks", entry.key]


# --------------------------------------------------------------------------- configure evidence


def test_configure_evidence_on_real_log_lines() -> None:
    cpu, cuda = get_variant("cpu"), get_variant("cuda")
    assert build.configure_evidence(cpu, CPU_CONFIGURE).ok
    ev = build.configure_evidence(cuda, CUDA_CONFIGURE)
    assert ev.ok and "-- Including CUDA backend" in ev.matched
    missing = build.configure_evidence(cuda, CPU_CONFIGURE)
    assert not missing.ok and any("CUDA" in m for m in missing.missing)
    err = build.evidence_error(cuda, missing, Path("/tmp/cuda.log"))
    assert "WITHOUT the CUDA backend" in str(err) and "/tmp/cuda.log" in str(err)
    blas = build.configure_evidence(get_variant("cpu-openblas"), BLAS_MISSING)
    assert not blas.ok
    assert any("BLAS not found" in line for line in blas.context)
    assert any("Could NOT find BLAS" in line for line in blas.context)


def test_native_flags_in_a_portable_build_are_caught() -> None:
    native_log = CPU_CONFIGURE.replace("-msse4.2;-mf16c", "-march=native;-mf16c")
    ev = build.configure_evidence(get_variant("cpu"), native_log)
    assert not ev.ok and any("native" in m for m in ev.missing)
    assert build.configure_evidence(get_variant("cpu-native"), native_log).ok


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_configure_evidence_on_the_cached_build_logs(variant: str) -> None:
    """The build log of the variant's cached wheel (when one was built here) passes its own
    variant's evidence check and fails another's."""
    entry = wheel_cache.newest(variant)
    log = Path(str(entry.record.get("build_log", ""))) if entry is not None else None
    if log is None or not log.is_file():
        pytest.skip(
            f"no {variant} wheel with its build log in the wheel cache here; "
            f"`llama-harness build {variant}` makes one"
        )
    text = log.read_text(errors="replace")
    assert build.configure_evidence(get_variant(variant), text).ok
    other = "cuda" if variant == "cpu" else "vulkan"
    assert not build.configure_evidence(get_variant(other), text).ok


# --------------------------------------------------------------------------- wheel contents


def test_wheel_without_the_backend_library_is_refused(tmp_path: Path) -> None:
    cpu_wheel = fake_wheel(tmp_path, ["libggml-base.so", "libggml-cpu.so", "libllama.so"])
    assert wheel_cache.wheel_backends(cpu_wheel) == {"CPU"}
    assert build.check_wheel_libraries(get_variant("cpu"), cpu_wheel)
    with pytest.raises(build.BuildError, match=r"no libggml-cuda\.\* inside"):
        build.check_wheel_libraries(get_variant("cuda"), cpu_wheel)
    with pytest.raises(build.BuildError, match="not a CUDA build"):
        build.import_wheel(cpu_wheel, get_variant("cuda"))


def test_import_with_build_json_keeps_key_and_checks_sha(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_HARNESS_CACHE", str(tmp_path / "cache"))
    elsewhere = tmp_path / "elsewhere"
    wheel = fake_wheel(tmp_path / "src", ["libggml-cpu.so", "libggml-cuda.so"])
    inputs = inputs_for(["-DGGML_CUDA=on"])
    entry = wheel_cache.store(wheel, inputs, variant="cuda", cmake_args=["-DGGML_CUDA=on"],
                              root=elsewhere)  # fmt: skip
    imported = build.import_wheel(entry.wheel, get_variant("cuda"))
    assert imported.key == entry.key
    assert imported.wheel.is_relative_to(tmp_path / "cache" / "wheels")
    assert wheel_cache.lookup(inputs).hit is not None
    assert imported.record["imported_from"] == str(entry.wheel)
    with pytest.raises(build.BuildError, match="built for 'cuda'"):
        build.import_wheel(entry.wheel, get_variant("cpu"))
    entry.wheel.write_bytes(entry.wheel.read_bytes() + b"x")
    with pytest.raises(build.BuildError, match="sha256"):
        build.import_wheel(entry.wheel, None)


# --------------------------------------------------------------------------- sdist


def _tarball(path: Path, files: dict[str, bytes]) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def test_sdist_pin_and_stable_unpack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_HARNESS_CACHE", str(tmp_path))
    sdist_dir = tmp_path / "sdist"
    sdist_dir.mkdir()
    name = "llama_cpp_python-9.9.9"
    sdist = sdist_dir / f"{name}.tar.gz"
    sha = _tarball(sdist, {f"{name}/pyproject.toml": b"[project]\n", f"{name}/a/b.c": b"int x;"})
    pin = SdistPin(version="9.9.9", filename=sdist.name, sha256=sha)
    assert build.resolve_sdist(pin) == sdist
    src = build.unpack_sdist(sdist, pin)
    assert src == tmp_path / "src" / name and (src / "a" / "b.c").read_bytes() == b"int x;"
    (src / "a" / "b.c").write_bytes(b"int x; // a file the marker vouches for")
    assert build.unpack_sdist(sdist, pin) == src  # the marker: not unpacked again
    bad = SdistPin(version="9.9.9", filename=sdist.name, sha256="0" * 64)
    with pytest.raises(build.BuildError, match=r"does not match the pin .*sdist\.sha256"):
        build.resolve_sdist(bad)


# --------------------------------------------------------------------------- the build stream


def _plan(tmp_path: Path, variant: str) -> build.BuildPlan:
    return build.BuildPlan(
        variant=get_variant(variant),
        sdist_sha256="a" * 64,
        version="0.3.36",
        source=tmp_path / "src",
        cmake_args=get_variant(variant).cmake_args,
        env={},
        inputs=inputs_for(list(get_variant(variant).cmake_args)),
        key="f" * 64,
        notes=("a note",),
        build_dir=tmp_path / "build" / variant,
        log_path=tmp_path / "logs" / f"{variant}.log",
    )


def _script(tmp_path: Path, configure: str, then: str) -> list[str]:
    """A child that prints a configure log, then runs ``then`` (python code)."""
    code = f"import sys, time\nsys.stdout.write({configure!r})\nsys.stdout.flush()\n{then}\n"
    return [sys.executable, "-c", code]


def test_build_stops_right_after_configure_without_the_backend(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "cuda")
    marker = tmp_path / "compiled"
    # configure output of a CPU build, then a "compile" that would take long and leave a mark
    cmd = _script(tmp_path, CPU_CONFIGURE, f"time.sleep(30); open({str(marker)!r}, 'w')")
    plan.build_dir.mkdir(parents=True)
    (plan.build_dir / "CMakeCache.txt").write_text("stale")
    with pytest.raises(build.ConfigureEvidenceError) as info:
        build.run_pip_wheel(plan, tmp_path / "out", command=cmd)
    assert not marker.exists()  # killed at once, not after the compile
    assert not (plan.build_dir / "CMakeCache.txt").exists()  # a fresh build folder
    text = str(info.value)
    assert "WITHOUT the CUDA backend" in text and str(plan.log_path) in text
    log = plan.log_path.read_text()
    assert "Including CPU backend" in log and "# stopped: configure lacks" in log


def test_build_progress_from_ninja_lines_and_failure_tail(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "cpu")
    steps = "".join(f"  [{i}/3] ccache g++ -c f{i}.cpp\n" for i in range(1, 4))
    seen: list[tuple[str, int, int]] = []
    cmd = _script(tmp_path, CPU_CONFIGURE + steps, "print('ninja: build stopped'); sys.exit(3)")
    with pytest.raises(build.BuildError, match="exit code 3") as info:
        build.run_pip_wheel(plan, tmp_path / "out", lambda *a: seen.append(a), command=cmd)
    assert ("compile", 3, 3) in seen and seen[0] == ("configure", 0, 0)
    assert "ninja: build stopped" in str(info.value) and str(plan.log_path) in str(info.value)
    assert not isinstance(info.value, build.ConfigureEvidenceError)


def test_failed_configure_shows_the_backend_evidence(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "cpu-openblas")
    cmd = _script(tmp_path, BLAS_MISSING, "sys.exit(1)")
    with pytest.raises(build.ConfigureEvidenceError, match="configure failed") as info:
        build.run_pip_wheel(plan, tmp_path / "out", command=cmd)
    assert "Could NOT find BLAS" in str(info.value)


def test_a_redirected_build_prints_progress_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Off a terminal the wheel build prints "build cpu: compile N/M (P%), T elapsed" lines
    (the old rich bar printed nothing to a log for the whole compile)."""
    monkeypatch.delenv("LLAMA_HARNESS_PROGRESS", raising=False)
    monkeypatch.setenv("LLAMA_HARNESS_PROGRESS_INTERVAL", "0")
    plan = _plan(tmp_path, "cpu")
    steps = "".join(f"  [{i}/3] ccache g++ -c f{i}.cpp\n" for i in range(1, 4))
    out = tmp_path / "out"
    out.mkdir()
    then = (f"import os; os.makedirs({str(plan.build_dir)!r})\n"
            f"open({str(out / WHEEL_NAME)!r}, 'w').close()")  # fmt: skip
    build.compile_wheel(plan, out, command=_script(tmp_path, CPU_CONFIGURE + steps, then))
    err = capsys.readouterr().err
    assert "build cpu: configure" in err
    assert "build cpu: compile 3/3 (100%)" in err and "done in" in err
    # the tree remembers the key that built it (harness.build.native_tools builds tools only there)
    marker = json.loads((plan.build_dir / build.TREE_MARKER).read_text())
    assert marker["key"] == plan.key


_BACKEND = """
import zipfile
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "llama_cpp_python-0.3.36-py3-none-any.whl"
    info = "llama_cpp_python-0.3.36.dist-info"
    with zipfile.ZipFile(f"{wheel_directory}/{name}", "w") as z:
        meta = "Metadata-Version: 2.1\\nName: llama-cpp-python\\nVersion: 0.3.36\\n"
        z.writestr(f"{info}/METADATA", meta)
        tag = "Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
        z.writestr(f"{info}/WHEEL", tag)
        z.writestr(f"{info}/RECORD", "")
    return name
"""


def test_the_wheel_builds_in_a_venv_that_llama_harness_install_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`llama-harness install cpu --python X` pins llama-cpp-python in X's pip.conf; a later
    `llama-harness build` run by X (the harness in SAIVerse's venv, or in its own) failed with
    pip's "ResolutionImpossible ... (constraint) llama-cpp-python", reported as a CMake
    configure failure. The build's pip ignores the pin."""
    plan = _plan(tmp_path, "cpu")
    plan.source.mkdir()
    (plan.source / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        '[project]\nname = "llama-cpp-python"\nversion = "0.3.36"\n'
    )
    (plan.source / "backend.py").write_text(_BACKEND)
    pin = tmp_path / "llama-harness-constraints.txt"
    pin.write_text(f"llama-cpp-python @ {(tmp_path / 'verified.whl').as_uri()}\n")
    conf = tmp_path / "pip.conf"  # what harness.build.install.write_pip_conf writes
    conf.write_text(f"[global]\nconstraint = {pin}\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.delenv("PIP_CONSTRAINT", raising=False)
    out = tmp_path / "out"
    cmd = build.pip_wheel_command(plan, out)
    done = subprocess.run(cmd, env=build.build_env(plan), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert [w.name for w in out.glob("*.whl")] == ["llama_cpp_python-0.3.36-py3-none-any.whl"]


def test_a_pip_failure_before_cmake_is_not_called_a_configure_failure(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "cpu")
    log = (
        "Processing ./llama_cpp_python-0.3.36\n"
        "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/...\n"
    )
    cmd = _script(tmp_path, log, "sys.exit(1)")
    with pytest.raises(build.BuildError) as info:
        build.run_pip_wheel(plan, tmp_path / "out", command=cmd)
    assert not isinstance(info.value, build.ConfigureEvidenceError)
    assert "pip wheel failed with exit code 1" in str(info.value)
    assert "ResolutionImpossible" in str(info.value)
