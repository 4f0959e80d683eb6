"""llama.cpp's own tools (llama-bench, llama-batched-bench, llama-fit-params, ...), built
once per variant from the wheel's own build tree and cached next to the wheel.

    tools = ensure("cpu", ["llama-bench", "llama-fit-params"])
    subprocess.run(tools.command("llama-fit-params", "-m", model), env=tools.env())

Why the wheel's tree: the wheel is compiled by scikit-build-core in the stable
``build_dir(variant)`` (:mod:`harness.build.build`), which then holds every object and shared
library
of the wheel (ggml, llama, llama-common) compiled with the variant's exact flags. llama.cpp's
tools are switched off there only because llama.cpp is a subproject
(``LLAMA_BUILD_TOOLS`` defaults to ``LLAMA_STANDALONE``). Configuring that tree again with
``-DLLAMA_BUILD_TOOLS=ON -DLLAVA_BUILD=OFF`` (llama.cpp's tools folder then adds ``mtmd``
itself, which llama-cpp-python would otherwise add a second time) changes no target of the
wheel; building just the tool targets compiles their own sources (two files each) and links
them against the wheel's libraries. llama.cpp is compiled once per variant, and the tools
run the same machine code as the Python package (same sdist, same flags, same key).
Measured on 2 busy cores: reconfigure 0.5 s; llama-bench, llama-batched-bench,
llama-fit-params and llama-perplexity together 16 steps, 79 s.

Steps (each takes the previous result)::

    build.prepare(variant) -> cached(key, tools): hit, done
    -> the wheel (wheel cache, else build.build_wheel: compiles the tree)
    -> lock build/<variant>.lock -> tree_key(build_dir) == key? else build.compile_wheel
       again (ccache serves every object) -> configure (tools on) -> cmake --build
       --target <tools> (progress from ninja's [N/M]) -> publish: copy the binaries and the
       tree's shared libraries to wheels/<key>/tools/ (temp folder, rename) with tools.json
       (sha256 of each binary) -> NativeTools

The cache keeps every tool ever built for the key: asking for a new one rebuilds the set
(the others are up to date in the tree, or ccache hits). A forced wheel rebuild replaces the
wheel's cache folder and with it the tools.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import paths
from harness.build import build, toolchain, wheel_cache
from harness.build.build import BuildPlan
from harness.build.variants import Variant, get_variant
from saiverse_llm.atomic import atomic_write_json, publish_dir
from saiverse_llm.download import sha256_file
from saiverse_llm.progress import StepProgress, elapsed_text

SCHEMA = 1
#: What turns llama.cpp's tools on in llama-cpp-python's tree (see the module docstring).
TOOLS_ON = ("-DLLAMA_BUILD_TOOLS=ON", "-DLLAVA_BUILD=OFF")
INFO_FILE = "tools.json"
_STEP_RE = re.compile(r"^\s*\[(\d+)/(\d+)\]")
Say = Callable[[str], None]


class NativeToolsError(RuntimeError):
    """A tool cannot be built or found; the message names the cause, the log and the fix."""


class UnknownToolError(NativeToolsError):
    """The sdist's llama.cpp has no tool of that name (a usage error)."""


@dataclass(frozen=True)
class NativeTools:
    """Built tools of one wheel key: ``wheels/<key>/tools/{bin,lib}/`` plus ``tools.json``."""

    variant: str
    key: str  # the wheel-cache key: same sdist, flags, toolchain as the wheel
    directory: Path
    info: Mapping[str, Any]

    @property
    def names(self) -> list[str]:
        return sorted(self.info.get("tools", {}))

    @property
    def lib_dir(self) -> Path:
        return self.directory / "lib"

    def path(self, tool: str) -> Path:
        """The binary of ``tool``; NativeToolsError when this set lacks it."""
        if tool not in self.info.get("tools", {}):
            raise NativeToolsError(
                f"{tool} is not among the built tools of {self.variant} ({', '.join(self.names)}). "
                f"Fix: native_tools.ensure({self.variant!r}, [{tool!r}]) or "
                f"`llama-harness tools {self.variant} {tool}`"
            )
        return self.directory / "bin" / tool

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default os.environ) with the tools' libraries first on the loader path
        (they come before any RUNPATH, so a rebuilt tree never leaks in)."""
        env = dict(os.environ if base is None else base)
        var = "DYLD_LIBRARY_PATH" if sys.platform == "darwin" else "LD_LIBRARY_PATH"
        env[var] = os.pathsep.join(x for x in (str(self.lib_dir), env.get(var, "")) if x)
        return env

    def command(self, tool: str, *args: str) -> list[str]:
        return [str(self.path(tool)), *args]


# --------------------------------------------------------------------------- sources


def available(source: Path) -> dict[str, Path]:
    """Tool name -> its folder under ``<llama.cpp>/tools``: every ``add_executable`` target
    named ``llama-*`` there (read from the folders' CMakeLists.txt)."""
    found: dict[str, Path] = {}
    for cml in sorted((source / "tools").glob("*/CMakeLists.txt")):
        text = cml.read_text(encoding="utf-8", errors="replace")
        # "set(TARGET name)" starts a section; an add_executable in that section makes a tool
        parts = re.split(r"set\(\s*TARGET\s+([A-Za-z0-9_.-]+)\s*\)", text)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name.startswith("llama-") and re.search(r"add_executable\(\s*\$\{TARGET\}", body):
                found.setdefault(name, cml.parent)
    return found


def tool_dirs(source: Path, tools: Iterable[str]) -> dict[str, Path]:
    known = available(source)
    missing = [t for t in tools if t not in known]
    if missing:
        raise UnknownToolError(
            f"no llama.cpp tool named {', '.join(missing)} in {source / 'tools'}. "
            f"Fix: use one of {', '.join(sorted(known))}"
        )
    return {t: known[t] for t in tools}


# --------------------------------------------------------------------------- cache


def tools_dir(key: str) -> Path:
    """Where the tools of wheel ``key`` live: beside the wheel in its cache folder."""
    return wheel_cache.entry_dir(key) / "tools"


def cached(key: str, tools: Iterable[str] = ()) -> NativeTools | None:
    """The cached set of ``key`` when it holds every tool in ``tools`` and each binary still
    matches the sha256 in tools.json; else None."""
    d = tools_dir(key)
    try:
        info = json.loads((d / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("key") != key:
        return None
    entries = info.get("tools")
    if not isinstance(entries, dict) or any(t not in entries for t in tools):
        return None
    for name, meta in entries.items():
        binary = d / "bin" / name
        if not binary.is_file() or sha256_file(binary) != meta.get("sha256"):
            return None
    return NativeTools(variant=str(info.get("variant")), key=key, directory=d, info=info)


# --------------------------------------------------------------------------- the tree


def tree_key(build_dir: Path) -> str | None:
    """The wheel key whose build left ``build_dir`` (written by harness.build.build), or None."""
    try:
        data = json.loads((build_dir / build.TREE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (build_dir / "CMakeCache.txt").is_file() or not isinstance(data, dict):
        return None
    key = data.get("key")
    return key if isinstance(key, str) else None


def cmake_of(build_dir: Path) -> str:
    """The cmake that configured the tree (scikit-build-core may have used the PyPI one)."""
    try:
        text = (build_dir / "CMakeCache.txt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    m = re.search(r"^CMAKE_COMMAND:INTERNAL=(.+)$", text, re.MULTILINE)
    if m and Path(m.group(1)).is_file():
        return m.group(1)
    found = shutil.which("cmake")
    if found is None:
        raise NativeToolsError("cmake not found on PATH. Fix: pip install cmake")
    return found


def configure_command(cmake: str, source_root: Path, build_dir: Path) -> list[str]:
    """Configure the wheel's tree again with llama.cpp's tools on (every other setting stays
    as the wheel's build left it in CMakeCache.txt)."""
    return [cmake, "-S", str(source_root), "-B", str(build_dir), *TOOLS_ON]


def build_command(cmake: str, build_dir: Path, targets: Sequence[str]) -> list[str]:
    return [cmake, "--build", str(build_dir), "--target", *targets]


def _stream(
    cmd: Sequence[str], *, env: Mapping[str, str], log: Any, bar: StepProgress | None
) -> int:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(
        list(cmd), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        errors="replace",
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            log.write(line)
            m = _STEP_RE.match(line)
            if m and bar is not None:
                bar.update(int(m.group(1)), int(m.group(2)))
        return proc.wait()
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise


def _tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:]
    except OSError:
        return ""
    return "\n".join(f"    {ln[:300]}" for ln in lines)


def _publish(
    plan: BuildPlan, built: Mapping[str, Path], dirs: Mapping[str, Path], record: dict[str, Any]
) -> NativeTools:
    """Copy the binaries and the tree's shared libraries beside the wheel (temp, rename)."""
    bin_dir = plan.build_dir / "bin"
    final = tools_dir(plan.key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tools-", dir=final.parent))
    try:
        (tmp / "bin").mkdir()
        (tmp / "lib").mkdir()
        tools: dict[str, Any] = {}
        for name, binary in sorted(built.items()):
            shutil.copy2(binary, tmp / "bin" / name)
            tools[name] = {
                "sha256": sha256_file(tmp / "bin" / name),
                "source": str(dirs[name].relative_to(plan.source)),
            }
        libs = []
        for lib in sorted(bin_dir.iterdir()):
            if ".so" in lib.name or lib.suffix == ".dylib":
                shutil.copy2(lib, tmp / "lib" / lib.name, follow_symlinks=False)
                libs.append(lib.name)
        info = {"schema": SCHEMA, "key": plan.key, "variant": plan.variant.name,
                "sdist_version": plan.version, "cmake_args": list(plan.cmake_args),
                "tools": tools, "libs": libs, **record}  # fmt: skip
        atomic_write_json(tmp / INFO_FILE, info, ensure_ascii=True)
        _check_loadable(tmp, list(tools))
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    found = cached(plan.key, built)
    if found is None:
        raise NativeToolsError(f"{final}: published tools do not verify. Fix: rerun with --force")
    return found


def _check_loadable(folder: Path, tools: Sequence[str]) -> None:
    """Every library a tool needs resolves from the folder (``ldd``, where there is one)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return
    env = NativeTools("", "", folder, {}).env()
    for name in tools:
        out = subprocess.run(
            [ldd, str(folder / "bin" / name)], capture_output=True, text=True, env=env, check=False
        ).stdout
        missing = [ln.strip() for ln in out.splitlines() if "not found" in ln]
        if missing:
            raise NativeToolsError(
                f"{name}: shared libraries not found beside it: {'; '.join(missing)}. "
                "Fix: report this, the wheel's tree lacks them"
            )


# --------------------------------------------------------------------------- entry point


def ensure(
    variant: str | Variant,
    tools: Sequence[str],
    *,
    force: bool = False,
    say: Say | None = None,
) -> NativeTools:
    """The variant's build of ``tools`` (names like ``llama-bench``), from the cache or built
    once in the wheel's tree. Builds the wheel first when the cache lacks it.

    Raises NativeToolsError (unknown tool, configure/compile failure: the message names the
    log) or harness.build.build.BuildError (the wheel itself cannot be built)."""
    tell = say or (lambda msg: print(msg, file=sys.stderr))
    v = get_variant(variant) if isinstance(variant, str) else variant
    plan = build.prepare(v)
    wanted = list(dict.fromkeys(tools))
    if not force:
        found = cached(plan.key, wanted)
        if found is not None:
            return found
    dirs = tool_dirs(plan.source / "vendor" / "llama.cpp", wanted)
    if wheel_cache.lookup(plan.inputs).hit is None:
        tell(f"{v.name}: the tools are built from the wheel's tree; building the wheel first")
        build.build_wheel(v, say=tell)
    # the key's lock (the wheel's cache folder, where the tools go), then the tree's: the
    # order harness.build.build takes them in
    with wheel_cache.holding(plan.key, say=tell), build.build_lock(v.name, say=tell):
        found = None if force else cached(plan.key, wanted)
        if found is not None:
            return found
        previous = cached(plan.key)
        names = list(dict.fromkeys([*wanted, *(previous.names if previous else [])]))
        dirs = tool_dirs(plan.source / "vendor" / "llama.cpp", names)
        return _build(plan, dirs, tell)


def _build(plan: BuildPlan, dirs: Mapping[str, Path], tell: Say) -> NativeTools:
    started = time.monotonic()
    before = toolchain.ccache_counters()
    name = plan.variant.name
    rebuilt_tree = False
    if tree_key(plan.build_dir) != plan.key:
        tell(
            f"{name}: the wheel's build tree {plan.build_dir} is gone or from another build; "
            "rebuilding it with the wheel's own build (ccache serves the objects)"
        )
        with tempfile.TemporaryDirectory(prefix=f"llama-harness-{name}-") as tmp:
            build.compile_wheel(plan, Path(tmp), label=f"{name} build tree")
        rebuilt_tree = True
    log_path = paths.logs_dir() / f"{name}-{plan.key[:12]}-tools.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmake = cmake_of(plan.build_dir)
    env = build.build_env(plan)
    configure = configure_command(cmake, plan.source, plan.build_dir)
    compile_cmd = build_command(cmake, plan.build_dir, list(dirs))
    tell(f"{name}: building {', '.join(dirs)} in the wheel's tree (log: {log_path})")
    with log_path.open("w", encoding="utf-8") as log, StepProgress(f"tools {name}") as bar:
        bar.set_phase("configure")
        rc = _stream(configure, env=env, log=log, bar=None)
        if rc != 0:
            raise NativeToolsError(
                f"{name}: configuring the tools in {plan.build_dir} failed (exit {rc}).\n"
                f"  last lines:\n{_tail(log_path)}\n  full log: {log_path}\n"
                f"  Fix: see the log; `llama-harness tools {name} --force` rebuilds the tree"
            )
        bar.set_phase("compile")
        rc = _stream(compile_cmd, env=env, log=log, bar=bar)
        if rc != 0:
            raise NativeToolsError(
                f"{name}: compiling {', '.join(dirs)} failed (exit {rc}).\n"
                f"  last lines:\n{_tail(log_path)}\n  full log: {log_path}"
            )
    built = {t: plan.build_dir / "bin" / t for t in dirs}
    lost = [t for t, p in built.items() if not p.is_file()]
    if lost:
        raise NativeToolsError(f"{name}: {', '.join(lost)} missing after the build; see {log_path}")
    seconds = time.monotonic() - started
    after = toolchain.ccache_counters()
    ccache = {k: after[k] - before[k] for k in after} if before is not None and after else None
    record = {
        "configure": configure,
        "build": compile_cmd,
        "build_seconds": round(seconds, 1),
        "tree_rebuilt": rebuilt_tree,
        "ccache": ccache,  # counter deltas; concurrent builds count too
        "log": str(log_path),
        "built_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    found = _publish(plan, built, dirs, record)
    cc = f" (ccache: {ccache['hits']} hits, {ccache['misses']} misses)" if ccache else ""
    tell(f"{name}: {', '.join(dirs)} built in {elapsed_text(seconds)}{cc}: {found.directory}")
    return found
