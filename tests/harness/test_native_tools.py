"""Native llama.cpp tools are built in the wheel's own tree, without recompiling it.

A toy CMake project with llama-cpp-python's shape (top-level ``project(llama_cpp)`` adding
``vendor/llama.cpp``, shared ``llama`` and ``llama-common`` libraries, a tool folder with an
``-impl`` library and an executable) stands in for the real sdist: the real CMake and Ninja
run the hook of harness/bench/data/native_tools, in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.build import build, native_tools
from harness.build.variants import get_variant

pytestmark = pytest.mark.skipif(
    not (shutil.which("cmake") and shutil.which("ninja") and shutil.which("cc")),
    reason="needs cmake, ninja and a C compiler",
)

# llama-cpp-python's CMakeLists: llama.cpp as a subproject, then mtmd added a second time
TOP = """\
cmake_minimum_required(VERSION 3.21)
project(llama_cpp C)
option(LLAVA_BUILD "mtmd" ON)
set(BUILD_SHARED_LIBS ON)
add_subdirectory(vendor/llama.cpp)
if(LLAVA_BUILD)
    add_subdirectory(vendor/llama.cpp/tools/mtmd)
endif()
"""
# llama.cpp's: tools only when standalone (LLAMA_BUILD_TOOLS), its tools folder adds mtmd
LLAMA = """\
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
set(CMAKE_LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
option(LLAMA_BUILD_TOOLS "tools" OFF)
function(llama_add_compile_flags)
    add_compile_options(-DLLAMA_FLAGS_APPLIED=1)
endfunction()
add_library(llama llama.c)
add_library(llama-common common.c)
target_link_libraries(llama-common PUBLIC llama)
target_include_directories(llama PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
if(LLAMA_BUILD_TOOLS)
    add_subdirectory(tools)
endif()
"""
TOOLS = """\
llama_add_compile_flags()
add_subdirectory(hello)
add_subdirectory(mtmd)
add_subdirectory(other)
"""
TOOL = """\
set(TARGET llama-hello-impl)
add_library(${TARGET} hello.c)
target_link_libraries(${TARGET} PUBLIC llama-common llama)

set(TARGET llama-hello)
add_executable(${TARGET} main.c)
target_link_libraries(${TARGET} PRIVATE llama-hello-impl)
"""
SOURCES = {
    "CMakeLists.txt": TOP,
    "vendor/llama.cpp/CMakeLists.txt": LLAMA,
    "vendor/llama.cpp/llama.h": "int llama_answer(void);\n",
    "vendor/llama.cpp/llama.c": "int llama_answer(void) { return 42; }\n",
    "vendor/llama.cpp/common.c": '#include "llama.h"\nint common_answer(void) '
    "{ return llama_answer(); }\n",
    "vendor/llama.cpp/tools/CMakeLists.txt": TOOLS,
    "vendor/llama.cpp/tools/hello/CMakeLists.txt": TOOL,
    "vendor/llama.cpp/tools/hello/hello.c": '#include "llama.h"\n#ifndef LLAMA_FLAGS_APPLIED\n'
    "#error llama_add_compile_flags was not applied\n#endif\n"
    "int hello(void) { return llama_answer(); }\n",
    "vendor/llama.cpp/tools/hello/main.c": "#include <stdio.h>\nint hello(void);\n"
    'int main(void) { printf("answer %d\\n", hello()); return 0; }\n',
    "vendor/llama.cpp/tools/mtmd/CMakeLists.txt": "add_library(mtmd mtmd.c)\n",
    "vendor/llama.cpp/tools/mtmd/mtmd.c": "int mtmd(void) { return 1; }\n",
    "vendor/llama.cpp/tools/other/CMakeLists.txt": "set(TARGET llama-other-impl)\n"
    "add_library(${TARGET} x.c)\n",
    "vendor/llama.cpp/tools/other/x.c": "int other(void) { return 2; }\n",
}


def _toy(tmp_path: Path) -> tuple[build.BuildPlan, Path]:
    src = tmp_path / "src"
    for rel, text in SOURCES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    bdir = tmp_path / "cache" / "build" / "cpu"
    plan = build.BuildPlan(
        variant=get_variant("cpu"),
        sdist_sha256="a" * 64,
        version="0.0.0",
        source=src,
        cmake_args=("-DGGML_NATIVE=OFF",),
        env={},
        inputs={},
        key="k" * 64,
        notes=(),
        build_dir=bdir,
        log_path=tmp_path / "cache" / "logs" / "cpu.log",
    )
    return plan, src


def _wheel_build(plan: build.BuildPlan) -> None:
    """What scikit-build-core does for the wheel: configure + build every default target."""
    cmake = shutil.which("cmake")
    assert cmake
    for cmd in (
        [cmake, "-G", "Ninja", "-S", str(plan.source), "-B", str(plan.build_dir)],
        [cmake, "--build", str(plan.build_dir)],
    ):
        subprocess.run(cmd, check=True, capture_output=True)
    build._mark_tree(plan)


def test_available_lists_executables_only(tmp_path: Path) -> None:
    _plan, src = _toy(tmp_path)
    found = native_tools.available(src / "vendor" / "llama.cpp")
    assert list(found) == ["llama-hello"]  # llama-other has no executable; -impl is a library
    with pytest.raises(native_tools.UnknownToolError, match=r"\. Fix: use one of llama-hello"):
        native_tools.tool_dirs(src / "vendor" / "llama.cpp", ["llama-bench"])


def test_tools_are_built_in_the_wheel_tree_without_recompiling_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LLAMA_HARNESS_PROGRESS", "lines")
    plan, src = _toy(tmp_path)
    _wheel_build(plan)
    lib = plan.build_dir / "bin" / "libllama.so"
    before = lib.stat().st_mtime_ns
    objects = sorted(plan.build_dir.rglob("llama.c.o"))
    assert len(objects) == 1
    obj_before = objects[0].stat().st_mtime_ns
    messages: list[str] = []
    dirs = native_tools.tool_dirs(src / "vendor" / "llama.cpp", ["llama-hello"])
    tools = native_tools._build(plan, dirs, messages.append)
    # the wheel's library and objects were not rebuilt, and the tree was not redone
    assert lib.stat().st_mtime_ns == before and objects[0].stat().st_mtime_ns == obj_before
    assert tools.info["tree_rebuilt"] is False
    binary = tools.path("llama-hello")
    assert binary.parent == native_tools.tools_dir(plan.key) / "bin"
    out = subprocess.run(tools.command("llama-hello"), env=tools.env(), capture_output=True)
    assert out.stdout == b"answer 42\n", out.stderr
    assert "libllama.so" in tools.info["libs"] and "libllama-hello-impl.so" in tools.info["libs"]
    assert native_tools.cached(plan.key, ["llama-hello"]) == tools
    # a changed binary is never served
    binary.write_bytes(b"tampered")
    assert native_tools.cached(plan.key, ["llama-hello"]) is None
    info = json.loads((native_tools.tools_dir(plan.key) / "tools.json").read_text())
    assert info["tools"]["llama-hello"]["source"] == "vendor/llama.cpp/tools/hello"


def test_a_tree_of_another_key_is_rebuilt_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LLAMA_HARNESS_PROGRESS", "lines")
    plan, src = _toy(tmp_path)
    _wheel_build(plan)
    (plan.build_dir / build.TREE_MARKER).write_text(json.dumps({"key": "other"}))
    assert native_tools.tree_key(plan.build_dir) == "other"
    rebuilt: list[str] = []

    def fake_compile(p: build.BuildPlan, out: Path, *, label: str | None = None) -> Path:
        rebuilt.append(p.key)
        _wheel_build(p)
        return out / "x.whl"

    monkeypatch.setattr(build, "compile_wheel", fake_compile)
    dirs = native_tools.tool_dirs(src / "vendor" / "llama.cpp", ["llama-hello"])
    tools = native_tools._build(plan, dirs, lambda m: None)
    assert rebuilt == [plan.key] and tools.info["tree_rebuilt"] is True
    assert native_tools.tree_key(plan.build_dir) == plan.key


def test_env_puts_the_tools_libraries_first(tmp_path: Path) -> None:
    t = native_tools.NativeTools("cpu", "k", tmp_path, {"tools": {"llama-bench": {}}})
    var = "DYLD_LIBRARY_PATH" if sys.platform == "darwin" else "LD_LIBRARY_PATH"
    env = t.env({var: "/x"})
    assert env[var] == os.pathsep.join([str(tmp_path / "lib"), "/x"])
    with pytest.raises(native_tools.NativeToolsError, match="llama-harness tools cpu llama-fit"):
        t.path("llama-fit-params")


def test_cli_unknown_variant_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    assert main(["tools", "no-such-variant", "llama-bench"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown variant") and "Fix:" in err
