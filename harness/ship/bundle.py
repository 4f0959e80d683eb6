"""Offline bundles: one archive that carries a llama-cpp-python build to a host with no network.

A bundle (``.tar.gz``) holds::

    MANIFEST.json     what is inside: variant, mode, wheels, models, sha256 + size of every file
    SHA256SUMS        the same checksums for ``sha256sum -c``
    README.txt        the two-line manual equivalent of ``llama-harness bundle run``
    wheels/           the (slimmed) llama-cpp-python wheel, the project wheel, dependency wheels
    cache/models/     test models (``harness.models.model_manifest.ensure_model``), sha256-checked,
    laid
                      out as ``$LLAMA_HARNESS_CACHE/models`` so the harness finds them offline
    project/          the project source (tests, benchmarks, noxfile) that the session runs

``bundle run`` verifies every checksum, installs from ``wheels/`` alone into a fresh venv (pip
config files ignored, ``PIP_NO_INDEX=1``, ``--find-links`` the bundle only, network namespace
dropped with ``unshare -n`` when allowed) and runs the session with ``HF_HUB_OFFLINE=1``.

Wheel slimming (:func:`slim_wheel`): llama-cpp-python 0.3.x wheels store every shared library
six times (``llama_cpp/lib/`` and a top-level ``lib/``, each as ``.so``, ``.so.0`` and
``.so.0.x.y`` real copies; a CUDA wheel is 267 MB). The slim wheel keeps, inside
``llama_cpp/lib/``, only the names something loads: the ``libX.so`` files that llama_cpp opens
with ctypes (llama, ggml, mtmd, llava) and the ``DT_NEEDED`` names (``libggml-cuda.so.0``, ...)
the libraries ask the loader for through their ``$ORIGIN`` RUNPATH; the top-level ``lib/``
and ``include/`` trees (CMake's install of headers and duplicate libraries, unused at run
time) are dropped. RECORD is rewritten; the result is recompressed at the highest level.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import paths
from saiverse_llm import devices
from saiverse_llm.atomic import atomic_output, atomic_write_json, atomic_write_text

BUNDLE_FORMAT = 1
MANIFEST = "MANIFEST.json"
SUMS = "SHA256SUMS"
LLAMA_DIST = "llama_cpp_python"
# Libraries llama_cpp opens by file name with ctypes (load_shared_library("llama"), ...).
CTYPES_LIBS = frozenset({"libllama.so", "libggml.so", "libmtmd.so", "libllava.so"})
# What the client and its tests need beyond the project's own dependencies.
LLAMA_RUNTIME_DEPS = ("numpy", "diskcache", "jinja2", "typing-extensions")
TEST_DEPS = ("pytest", "pytest-benchmark", "nox", "setuptools", "wheel")
# The slim-only bundle is for hosts that already have Python deps (numpy, jinja2, pytest,
# pytest-benchmark, huggingface-hub, pyyaml, rich, typing-extensions): carry the rest.
SLIM_ONLY_DEPS = ("gguf", "diskcache")
PROJECT_EXCLUDES = (".git", ".venv", ".nox", "reports", "build", "dist")
MiB = 1024 * 1024


class BundleError(RuntimeError):
    """A bundle cannot be made, verified or run; the message says what to do."""


# --------------------------------------------------------------------------- small helpers


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record_hash(data: bytes) -> str:
    raw = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def human_size(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


# --------------------------------------------------------------------------- wheel slimming


@dataclass(frozen=True)
class SlimResult:
    path: Path
    original_size: int
    size: int
    kept_libs: tuple[str, ...]
    removed: tuple[str, ...]


def _elf_dynamic(data: bytes) -> tuple[str | None, list[str]]:
    """(SONAME, DT_NEEDED names) of a 64-bit little-endian ELF shared object, else (None, [])."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None, []
    e_shoff = int.from_bytes(data[0x28:0x30], "little")
    e_shentsize = int.from_bytes(data[0x3A:0x3C], "little")
    e_shnum = int.from_bytes(data[0x3C:0x3E], "little")
    sections = []
    for i in range(e_shnum):
        off = e_shoff + i * e_shentsize
        sh = data[off : off + 64]
        if len(sh) < 64:
            return None, []
        sh_type = int.from_bytes(sh[4:8], "little")
        sh_offset = int.from_bytes(sh[0x18:0x20], "little")
        sh_size = int.from_bytes(sh[0x20:0x28], "little")
        sh_link = int.from_bytes(sh[0x28:0x2C], "little")
        sections.append((sh_type, sh_offset, sh_size, sh_link))
    soname: str | None = None
    needed: list[str] = []
    for sh_type, sh_offset, sh_size, sh_link in sections:
        if sh_type != 6 or sh_link >= len(sections):  # SHT_DYNAMIC
            continue
        str_off = sections[sh_link][1]
        for pos in range(sh_offset, sh_offset + sh_size, 16):
            tag = int.from_bytes(data[pos : pos + 8], "little")
            val = int.from_bytes(data[pos + 8 : pos + 16], "little")
            if tag == 0:
                break
            if tag in (1, 14):  # DT_NEEDED, DT_SONAME
                start = str_off + val
                name = data[start : data.index(b"\x00", start)].decode("utf-8", "replace")
                if tag == 1:
                    needed.append(name)
                else:
                    soname = name
    return soname, needed


def plan_slim(names: Mapping[str, bytes]) -> tuple[list[str], list[str]]:
    """Decide which wheel entries to keep. ``names`` maps archive names to their bytes.

    Returns (kept, removed). Identical-content libraries in ``llama_cpp/lib`` form a group;
    a name survives when llama_cpp opens it by name (ctypes), when another library needs
    it (DT_NEEDED), or when nothing else in its group would (a dlopen-only backend).
    """
    lib_prefix = "llama_cpp/lib/"
    needed: set[str] = set()
    groups: dict[str, list[str]] = {}
    for name, data in names.items():
        if name.startswith(lib_prefix) and ".so" in name:
            _, deps = _elf_dynamic(data)
            needed.update(deps)
            groups.setdefault(hashlib.sha256(data).hexdigest(), []).append(name)
    keep_libs: set[str] = set()
    for members in groups.values():
        chosen = [m for m in members if Path(m).name in CTYPES_LIBS or Path(m).name in needed]
        if not chosen:  # loaded by path at run time: keep its shortest name
            chosen = [min(members, key=len)]
        keep_libs.update(chosen)
    kept: list[str] = []
    removed: list[str] = []
    for name in names:
        top = name.split("/", 1)[0]
        if name.startswith(lib_prefix) and ".so" in name:
            (kept if name in keep_libs else removed).append(name)
        elif top in ("lib", "include", "bin") and "/" in name:
            removed.append(name)
        else:
            kept.append(name)
    return kept, removed


def slim_wheel(wheel: Path, out_dir: Path) -> SlimResult:
    """Write a slimmed copy of a llama-cpp-python ``wheel`` into ``out_dir`` (same file name).

    Keeps one copy of each shared library under every name the loader or ctypes asks for,
    drops the unused duplicate and development trees, rewrites ``RECORD`` and adds
    ``<dist-info>/SLIMMED.json`` naming what was removed and the original wheel's sha256.
    """
    if not wheel.is_file():
        raise BundleError(f"{wheel}: no such wheel; fix: build it (llama-harness build VARIANT)")
    try:
        zin = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{wheel}: not a wheel (zip) file: {exc}; fix: rebuild it") from exc
    with zin:
        infos = {i.filename: i for i in zin.infolist() if not i.is_dir()}
        data = {name: zin.read(name) for name in infos}
    dist_info = next((n.split("/", 1)[0] for n in data if n.endswith(".dist-info/RECORD")), None)
    if dist_info is None:
        raise BundleError(f"{wheel}: no *.dist-info/RECORD inside; fix: rebuild the wheel")
    kept, removed = plan_slim(data)
    record_name = f"{dist_info}/RECORD"
    marker_name = f"{dist_info}/SLIMMED.json"
    marker = json.dumps(
        {
            "original": wheel.name,
            "original_sha256": sha256_of(wheel),
            "original_size": wheel.stat().st_size,
            "removed": sorted(removed),
            "tool": "harness.ship.bundle.slim_wheel",
        },
        indent=1,
    ).encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    if target.resolve() == wheel.resolve():
        raise BundleError(f"{wheel}: slim_wheel would overwrite its input; fix: another out_dir")
    rows: list[list[str]] = []
    with (
        atomic_output(target) as tmp,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout,
    ):
        for name in [*kept, marker_name]:
            if name == record_name:
                continue
            blob = marker if name == marker_name else data[name]
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            src = infos.get(name)
            info.external_attr = src.external_attr if src else (0o644 << 16)
            info.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(info, blob, compresslevel=9)
            rows.append([name, _record_hash(blob), str(len(blob))])
        rows.append([record_name, "", ""])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        rec = zipfile.ZipInfo(record_name, date_time=(1980, 1, 1, 0, 0, 0))
        rec.external_attr = 0o644 << 16
        zout.writestr(rec, buf.getvalue().encode(), compress_type=zipfile.ZIP_DEFLATED)
    libs = tuple(sorted(Path(n).name for n in kept if n.startswith("llama_cpp/lib/")))
    return SlimResult(target, wheel.stat().st_size, target.stat().st_size, libs, tuple(removed))


# --------------------------------------------------------------------------- building a bundle


@dataclass(frozen=True)
class BundleSpec:
    variant: str
    output: Path
    models: tuple[str, ...] = ("tiny",)
    wheel: Path | None = None
    slim: bool = True
    slim_only: bool = False
    python_version: str | None = None  # target interpreter, e.g. "3.12"; None: this one
    extra_requirements: tuple[str, ...] = ()
    # The project's extras whose dependencies a full bundle carries: the test sessions
    # install the project with them (``pip install -e .[test]``).
    project_extras: str = "test"
    max_size: int | None = None
    project_root: Path = paths.PROJECT_ROOT


@dataclass
class BundleReport:
    path: Path
    size: int
    sha256: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    llama_wheel: str = ""
    slim: SlimResult | None = None


Step = Callable[[str], None]


def _no_step(_: str) -> None:
    return None


def find_variant_wheel(variant: str) -> Path:
    """The newest cached wheel of ``variant`` (harness wheel cache, sha256 re-checked)."""
    from harness.build import wheel_cache

    entry = wheel_cache.newest(variant)
    if entry is not None:
        return entry.wheel
    raise BundleError(
        f"no built wheel for variant {variant!r} in the wheel cache {paths.wheels_dir()}; fix: "
        f"`llama-harness build {variant}` (or `nox -s build-{variant}`), or pass --wheel PATH"
    )


def _pip(args: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(
        cmd,
        env=dict(env) if env is not None else None,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-25:])
        raise BundleError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")


def project_files(root: Path) -> list[Path]:
    """Project files to carry: git's tracked + untracked-not-ignored files, else a filtered walk."""
    try:
        git = ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others"]
        out = subprocess.run([*git, "--exclude-standard"], capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
        files = [root / n for n in names if (root / n).is_file()]
        if files:
            return sorted(files)
    except (OSError, subprocess.CalledProcessError):
        pass
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in PROJECT_EXCLUDES and not d.startswith(".")]
        dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.endswith(".egg-info")]
        found.extend(Path(dirpath) / f for f in filenames if not f.endswith(".pyc"))
    return sorted(found)


def _requirements(spec: BundleSpec) -> list[str]:
    if spec.slim_only:
        return [*SLIM_ONLY_DEPS, *spec.extra_requirements]
    return [*LLAMA_RUNTIME_DEPS, *TEST_DEPS, *spec.extra_requirements]


def _download_deps(spec: BundleSpec, project_wheel: Path, dest: Path) -> None:
    reqs = _requirements(spec)
    args = ["download", "--only-binary=:all:", "--dest", str(dest)]
    if spec.python_version and spec.python_version != platform.python_version().rsplit(".", 1)[0]:
        args += ["--python-version", spec.python_version, "--implementation", "cp"]
        for plat in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"):
            args += ["--platform", plat]
    if spec.slim_only:
        args += ["--no-deps", *reqs]
    else:
        args += [_with_extras(str(project_wheel), spec.project_extras), *reqs]
    _pip(args)


def _with_extras(requirement: str, extras: str) -> str:
    return f"{requirement}[{extras}]" if extras else requirement


def _build_project_wheel(root: Path, dest: Path) -> Path:
    before = set(dest.glob("*.whl"))
    _pip(["wheel", "--no-deps", "-w", str(dest), str(root)])
    made = sorted(set(dest.glob("*.whl")) - before) or sorted(dest.glob("saiverse_llama_harness-*"))
    if not made:
        raise BundleError(f"pip wheel {root} produced no wheel in {dest}")
    return made[-1]


def _place_models(names: Sequence[str], dest: Path) -> dict[str, dict[str, Any]]:
    from harness.models import model_manifest

    out: dict[str, dict[str, Any]] = {}
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = Path(model_manifest.ensure_model(name, progress=False))
        target = dest / src.name
        shutil.copyfile(src, target)
        out[name] = {"file": f"cache/models/{src.name}", "sha256": sha256_of(target)}
    return out


def build_bundle(spec: BundleSpec, *, step: Step = _no_step) -> BundleReport:
    """Assemble the bundle described by ``spec`` and write it atomically to ``spec.output``."""
    source_wheel = spec.wheel or find_variant_wheel(spec.variant)
    if not source_wheel.is_file():
        raise BundleError(f"--wheel {source_wheel}: no such file; fix: pass a built wheel")
    with tempfile.TemporaryDirectory(prefix="llama-bundle-") as tmpdir:
        stage = Path(tmpdir) / "bundle"
        wheels = stage / "wheels"
        wheels.mkdir(parents=True)
        slim: SlimResult | None = None
        if spec.slim:
            step(f"slimming {source_wheel.name} ({human_size(source_wheel.stat().st_size)})")
            slim = slim_wheel(source_wheel, wheels)
            llama = slim.path
        else:
            llama = wheels / source_wheel.name
            shutil.copyfile(source_wheel, llama)
        step("building the project wheel")
        project_wheel = _build_project_wheel(spec.project_root, wheels)
        step("downloading dependency wheels: " + ", ".join(_requirements(spec)))
        _download_deps(spec, project_wheel, wheels)
        for stray in wheels.glob("llama_cpp_python-*"):
            if stray != llama:  # never carry another llama-cpp-python than the variant's
                stray.unlink()
        step(f"placing models: {', '.join(spec.models) or '(none)'}")
        models = _place_models(spec.models, stage / "cache" / "models")
        step("copying the project source")
        for src in project_files(spec.project_root):
            rel = src.relative_to(spec.project_root)
            target = stage / "project" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
        files = {
            p.relative_to(stage).as_posix(): {"sha256": sha256_of(p), "size": p.stat().st_size}
            for p in sorted(stage.rglob("*"))
            if p.is_file()
        }
        manifest = {
            "format": BUNDLE_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "variant": spec.variant,
            "mode": "slim-only" if spec.slim_only else "full",
            "python": spec.python_version or platform.python_version(),
            "platform": f"{sys.platform}-{platform.machine()}",
            "llama_wheel": f"wheels/{llama.name}",
            "llama_wheel_source_sha256": sha256_of(source_wheel),
            "slimmed": slim is not None,
            "project_wheel": f"wheels/{project_wheel.name}",
            "project_extras": "" if spec.slim_only else spec.project_extras,
            "requirements": _requirements(spec),
            "models": models,
            "files": files,
        }
        atomic_write_json(stage / MANIFEST, manifest, indent=1, sort_keys=True, ensure_ascii=True)
        atomic_write_text(
            stage / SUMS, "".join(f"{meta['sha256']}  {name}\n" for name, meta in files.items())
        )
        atomic_write_text(stage / "README.txt", readme_text(manifest))
        step(f"writing {spec.output}")
        with atomic_output(spec.output) as tmp:
            with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
                for p in sorted(stage.rglob("*")):
                    if p.is_file():
                        tar.add(p, arcname=p.relative_to(stage).as_posix(), recursive=False)
            size = tmp.stat().st_size
            if spec.max_size is not None and size > spec.max_size:
                raise BundleError(
                    f"{spec.output}: {human_size(size)} exceeds --max-size "
                    f"{human_size(spec.max_size)}; fix: fewer --models (the tiny model is "
                    "a few MB), --slim-only, or keep slimming on"
                )
        digest = sha256_of(spec.output)
        atomic_write_text(
            spec.output.with_name(spec.output.name + ".sha256"), f"{digest}  {spec.output.name}\n"
        )
        return BundleReport(spec.output, size, digest, files, llama.name, slim)


def readme_text(manifest: Mapping[str, Any]) -> str:
    """The archive's README: how to run it with the harness, and the manual two-liner."""
    variant = manifest["variant"]
    site = " --system-site-packages" if manifest["mode"] == "slim-only" else ""
    wheels = " ".join(
        [
            manifest["llama_wheel"],
            _with_extras(manifest["project_wheel"], manifest.get("project_extras", "")),
            *manifest["requirements"],
        ]
    )
    lines = [
        f"Offline bundle for llama-cpp-python variant {variant!r} ({manifest['mode']}).",
        "",
        "With the harness (fresh venv from this bundle alone, no network):",
        f"    llama-harness bundle run THIS_FILE_OR_DIR -- test-{variant}",
        "Without it installed (standard library only), from the extracted folder:",
        f"    PYTHONPATH=project python3 -m harness.ship.bundle run . -- test-{variant}",
        "",
        "By hand, in the folder this archive was extracted into (two lines):",
        f"    sha256sum -c SHA256SUMS && python3 -m venv{site} v && PIP_CONFIG_FILE=/dev/null "
        f"v/bin/pip install --no-index --find-links wheels {wheels}",
        "    cd project && HF_HUB_OFFLINE=1 LLAMA_HARNESS_CACHE=../cache "
        f"LLAMA_HARNESS_VARIANT={variant} ../v/bin/python -m pytest tests/client",
        "",
        "A CUDA build's RUNPATH names the build machine's cuBLAS folder: put the host's CUDA",
        "libraries (libcudart, libcublas, libcublasLt) on LD_LIBRARY_PATH.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- running a bundle


@dataclass(frozen=True)
class RunSpec:
    bundle: Path
    session: str
    posargs: tuple[str, ...] = ()
    workdir: Path | None = None
    isolate_network: bool = True
    reports: Path | None = None


def extract(bundle: Path, dest: Path) -> Path:
    """Extract ``bundle`` (a .tar.gz, or an already extracted folder) and return its folder."""
    if bundle.is_dir():
        return bundle
    if not bundle.is_file():
        raise BundleError(f"{bundle}: no such bundle; fix: copy it here or give the right path")
    try:
        with tarfile.open(bundle, "r:*") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(
            f"{bundle}: cannot be extracted ({exc}); fix: copy it again and compare "
            f"`sha256sum {bundle.name}` with {bundle.name}.sha256"
        ) from exc
    return dest


def verify(root: Path) -> dict[str, Any]:
    """Check every file of the manifest (presence, size, sha256); return the manifest."""
    mf = root / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(mf.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{mf}: unreadable manifest ({exc}); fix: copy the bundle again") from exc
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{mf}: field 'format' is {manifest.get('format')!r}, this harness reads "
            f"{BUNDLE_FORMAT}; fix: make the bundle with this harness version"
        )
    bad: list[str] = []
    for name, meta in manifest["files"].items():
        path = root / name
        if not path.is_file():
            bad.append(f"{name}: missing")
        elif path.stat().st_size != meta["size"]:
            bad.append(f"{name}: {path.stat().st_size} bytes, manifest says {meta['size']}")
        elif sha256_of(path) != meta["sha256"]:
            bad.append(f"{name}: sha256 differs from the manifest")
    if bad:
        raise BundleError(
            f"{root}: {len(bad)} file(s) fail the checksum check:\n  "
            + "\n  ".join(bad[:20])
            + "\nfix: copy the bundle again (compare its .sha256) or rebuild it"
        )
    return manifest


def offline_env(base: Mapping[str, str], wheels: Path) -> dict[str, str]:
    """An environment in which pip sees the bundle's wheels and nothing else."""
    env = {
        k: v
        for k, v in base.items()
        if not k.startswith("PIP_") and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(wheels),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def network_jail() -> list[str]:
    """A command prefix that runs its command without network access, or [] if impossible."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    for prefix in ([unshare, "-n"], [unshare, "-rn"]):
        with contextlib.suppress(OSError):
            probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
            if probe.returncode == 0:
                return prefix
    return []


def _run(cmd: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> int:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(list(cmd), env=dict(env), cwd=cwd, check=False).returncode


def _variant_is_gpu(variant: str) -> bool:
    with contextlib.suppress(Exception):
        from harness.build.variants import load_variants

        found = load_variants().get(variant)
        if found is not None:
            return bool(found.gpu)
    return variant.startswith(("cuda", "vulkan", "metal", "rocm", "hip"))


def session_command(
    manifest: Mapping[str, Any], root: Path, venv_python: Path, session: str, posargs: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """The command (and extra environment) that runs ``session`` from an installed bundle.

    With nox in the bundle: ``nox -s SESSION -- --wheel <bundle wheel>`` so the session builds
    its own venv offline from the bundle. Without (slim-only bundles): the session's pytest
    run directly, with the variables the client suite reads.
    """
    project = root / "project"
    wheel = str(root / manifest["llama_wheel"])
    has_nox = (venv_python.parent / "nox").exists()
    variant = session.split("-", 1)[1] if "-" in session else str(manifest["variant"])
    gpu = _variant_is_gpu(variant)
    extra = {
        "LLAMA_HARNESS_VARIANT": variant,
        "LLAMA_HARNESS_N_GPU_LAYERS": "-1" if gpu else "0",
        "LLAMA_HARNESS_MODELS": ",".join(manifest.get("models", {})) or "tiny",
    }
    if gpu and devices.nvidia_smi_found():
        extra["LLAMA_HARNESS_REQUIRE_GPU"] = "1"
    if has_nox:
        wheel_args = ["--wheel", wheel] if session.startswith(("test-", "bench-")) else []
        cmd = [str(venv_python), "-m", "nox", "-f", str(project / "noxfile.py"), "-s", session]
        # The session venv uses the interpreter the bundle was installed with (the target
        # host's Python may differ from the noxfile's default).
        cmd += ["--force-python", f"{sys.version_info.major}.{sys.version_info.minor}"]
        return [*cmd, "--", *wheel_args, *posargs], extra
    kind = session.split("-", 1)[0]
    target = {"test": "tests/client", "bench": "benchmarks"}.get(kind)
    if target is None:
        raise BundleError(
            f"session {session!r}: a {manifest['mode']} bundle without nox runs only "
            "test-<variant> or bench-<variant>; fix: make a full bundle (without --slim-only)"
        )
    return [str(venv_python), "-m", "pytest", str(project / target), *posargs], extra


def _see_host_packages(venv: Path) -> None:
    """Let a slim-only venv see the packages of the interpreter running the bundle.

    ``--system-site-packages`` exposes the *base* interpreter's site-packages; when the host's
    Python is itself a venv (or conda env), its packages live elsewhere: list them in a .pth.
    """
    import site

    host = [p for p in (*site.getsitepackages(), site.getusersitepackages()) if Path(p).is_dir()]
    for purelib in venv.glob("lib/python*/site-packages"):
        atomic_write_text(purelib / "_llama_bundle_host.pth", "".join(f"{p}\n" for p in host))


def install(root: Path, manifest: Mapping[str, Any], venv: Path, env: Mapping[str, str],
            jail: Sequence[str]) -> Path:  # fmt: skip
    """Create a fresh venv at ``venv`` and install the bundle into it offline.

    Where the interpreter has no ensurepip (Debian/Ubuntu without python3-venv) the venv is
    made ``--without-pip`` and this interpreter's pip installs into it (``pip --python``).
    """
    slim_only = manifest["mode"] == "slim-only"
    create = [sys.executable, "-m", "venv", *(["--system-site-packages"] if slim_only else [])]
    py = venv / "bin" / "python"
    pip_cmd = [str(py), "-m", "pip"]
    if _run([*create, str(venv)], env) != 0:
        shutil.rmtree(venv, ignore_errors=True)
        if _run([*create, "--without-pip", str(venv)], env) != 0:
            raise BundleError(f"python -m venv {venv} failed; fix: install python3-venv")
        pip_cmd = [sys.executable, "-m", "pip", "--python", str(py)]
    if slim_only:
        _see_host_packages(venv)
    llama = root / manifest["llama_wheel"]
    constraints = venv / "llama-constraint.txt"
    atomic_write_text(constraints, f"llama-cpp-python @ {llama.resolve().as_uri()}\n")
    pip = [*jail, *pip_cmd, "install", "--no-index", "--find-links", str(root / "wheels")]
    pip += ["--constraint", str(constraints)]
    if slim_only:
        carried = sorted(str(p) for p in (root / "wheels").glob("*.whl"))
        # --ignore-installed: the host's packages are visible here; never let one of them
        # (say, another llama-cpp-python build) stand in for a carried wheel.
        steps = [[*pip, "--no-deps", "--ignore-installed", *carried]]
    else:
        steps = [
            [*pip, "--no-deps", str(llama)],
            [
                *pip,
                _with_extras(
                    str(root / manifest["project_wheel"]), manifest.get("project_extras", "")
                ),
                *manifest["requirements"],
            ],
        ]
    for cmd in steps:
        if _run(cmd, env) != 0:
            raise BundleError(
                f"offline install from {root / 'wheels'} failed (see pip's message above); "
                "fix: rebuild the bundle for this host's Python "
                f"({platform.python_version()}: --python-version "
                f"{platform.python_version().rsplit('.', 1)[0]})"
            )
    where = subprocess.run(
        [str(py), "-c", "import llama_cpp, sys; sys.stdout.write(llama_cpp.__file__)"],
        env=dict(env), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if where.returncode != 0 or not where.stdout.startswith(str(venv)):
        raise BundleError(
            f"after the offline install, llama_cpp imports from {where.stdout or '?'} "
            f"instead of {venv} ({where.stderr.strip()[-300:]}); fix: check PYTHONPATH and "
            "the host's site-packages, or run `bundle run` with another interpreter"
        )
    print(f"llama_cpp installed from the bundle: {where.stdout}", flush=True)
    return py


@dataclass(frozen=True)
class Installed:
    """A verified bundle installed into a fresh venv, and the offline environment to use."""

    root: Path
    manifest: dict[str, Any]
    python: Path
    env: dict[str, str]
    jail: tuple[str, ...]


def install_bundle(spec: RunSpec) -> Installed:
    """Extract and verify ``spec.bundle``, then install it offline into ``WORKDIR/venv``."""
    work = spec.workdir or Path(tempfile.mkdtemp(prefix="llama-bundle-run-"))
    work.mkdir(parents=True, exist_ok=True)
    root = extract(spec.bundle, work / "bundle")
    manifest = verify(root)
    print(f"bundle {spec.bundle}: {len(manifest['files'])} files verified (sha256)", flush=True)
    jail = network_jail() if spec.isolate_network else []
    print(
        "network: " + ("none (" + " ".join(jail) + ")" if jail else "env only (PIP_NO_INDEX=1)"),
        flush=True,
    )
    env = offline_env(os.environ, root / "wheels")
    # The models travel as <bundle>/cache/models: that folder is the harness cache here.
    env["LLAMA_HARNESS_CACHE"] = str(root / "cache")
    env["LLAMA_HARNESS_REPORTS"] = str(spec.reports or work / "reports")
    py = install(root, manifest, work / "venv", env, jail)
    env["PATH"] = f"{py.parent}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(py.parent.parent)
    return Installed(root, manifest, py, env, tuple(jail))


def run_bundle(spec: RunSpec) -> int:
    """Verify, install offline into a fresh venv, run the session; return its exit status."""
    done = install_bundle(spec)
    cmd, extra = session_command(done.manifest, done.root, done.python, spec.session, spec.posargs)
    env = {**done.env, **extra}
    return _run([*done.jail, *cmd], env, cwd=done.root / "project")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.ship.bundle run BUNDLE [--workdir DIR] -- SESSION [ARGS]``: the run half
    for a host where the harness is not installed yet (standard library only), e.g.
    ``PYTHONPATH=<extracted>/project python3 -m harness.ship.bundle run <extracted> --
    test-cuda``."""
    args = list(sys.argv[1:] if argv is None else argv)
    split = args.index("--") if "--" in args else len(args)
    head, rest = args[:split], args[split + 1 :]
    if len(head) < 2 or head[0] != "run" or not rest:
        print("usage: python -m harness.ship.bundle run BUNDLE [--workdir DIR] [--no-isolate] "
              "-- SESSION [ARGS...]", file=sys.stderr)  # fmt: skip
        return 2
    workdir = Path(head[head.index("--workdir") + 1]) if "--workdir" in head else None
    spec = RunSpec(bundle=Path(head[1]), session=rest[0], posargs=tuple(rest[1:]),
                   workdir=workdir, isolate_network="--no-isolate" not in head)  # fmt: skip
    try:
        return run_bundle(spec)
    except BundleError as exc:
        print(f"bundle run failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
