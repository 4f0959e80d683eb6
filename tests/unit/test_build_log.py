"""Reading users' logs (harness/doctor/build_log.py): the failing step, the line that says why, and
the facts the cause catalogue tests; plus the CUDA architecture table it uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.build import toolchain
from harness.doctor import build_log

PIP_NON_VERBOSE = """\
Building wheels for collected packages: llama-cpp-python
  Building wheel for llama-cpp-python (pyproject.toml) ... error
  error: subprocess-exited-with-error

  x Building wheel for llama-cpp-python (pyproject.toml) did not run successfully.
  |-> [12 lines of output]
      *** Configuring CMake...
      -- Including CPU backend
      -- Found NCCL: no
      -- Could NOT find NCCL (missing: NCCL_LIBRARY)
      CMake Error at vendor/llama.cpp/ggml/src/ggml-vulkan/CMakeLists.txt:9 (find_package):
        Could NOT find Vulkan (missing: glslc) (found version "1.3.239")
      *** CMake configuration failed
  ERROR: Failed building wheel for llama-cpp-python
"""


VULKAN_LINE = 'Could NOT find Vulkan (missing: glslc) (found version "1.3.239")'
WHEEL_LINE = "ERROR: Failed building wheel for llama-cpp-python"


@pytest.mark.parametrize(
    ("log", "step", "line", "failed"),
    [
        # pip's wrapper lines come first in non-verbose output; the CMake error still wins,
        # and a "-- Could NOT find" status line is not an error
        (PIP_NON_VERBOSE, "configure", VULKAN_LINE, True),
        (
            "*** Building project with Ninja...\n[5/9] Building CUDA object a.cu.o\n"
            "FAILED: a.cu.o\nnvcc fatal   : Unsupported gpu architecture 'compute_120'\n",
            "compile",
            "nvcc fatal   : Unsupported gpu architecture 'compute_120'",
            False,
        ),
        (
            "[180/190] Linking CXX shared library bin/libllama.so\n"
            "/usr/bin/ld: cannot find -lcuda: No such file or directory\n*** CMake build failed\n",
            "link",
            "/usr/bin/ld: cannot find -lcuda: No such file or directory",
            True,
        ),
        (
            ">>> import llama_cpp\nRuntimeError: Failed to load shared library 'x/libllama.so': "
            "libcudart.so.12: cannot open shared object file\n",
            "import",
            "RuntimeError: Failed to load shared library 'x/libllama.so': libcudart.so.12: "
            "cannot open shared object file",
            False,
        ),
        (
            "load_tensors: offloaded 33/33 layers to GPU\n"
            "CUDA error: no kernel image is available for execution on the device\n",
            "runtime",
            "CUDA error: no kernel image is available for execution on the device",
            False,
        ),
        ("Successfully installed llama-cpp-python-0.3.36\n", None, None, False),
        (f"{WHEEL_LINE}\n", None, WHEEL_LINE, True),
    ],
)
def test_failing_step_and_line(log: str, step: str | None, line: str | None, failed: bool) -> None:
    assert build_log.failing_step(log) == (step, line, failed)


def test_cuda_facts_of_a_build_log() -> None:
    facts = build_log.log_facts(
        "-- The CUDA compiler identification is NVIDIA 12.4.131\n"
        "-- Using CUDA architectures: 86;120\n"
        "nvcc fatal   : Unsupported gpu architecture 'compute_120a'\n"
    )
    assert facts["log.nvcc_version"] == "12.4.131"
    assert facts["log.cuda_archs"] == [86, 120]
    assert facts["log.unsupported_arch"] == 120
    assert facts["log.unsupported_arch_support"] == "too-new"
    assert facts["log.arch_min_cuda"] == "12.8"
    assert facts["log.arch_fallback"] == "90"


def test_an_architecture_cuda_13_dropped_is_told_apart() -> None:
    facts = build_log.log_facts(
        '-- Found CUDAToolkit: /usr/local/cuda/include (found version "13.0.48")\n'
        "nvcc fatal   : Unsupported gpu architecture 'compute_61'\n"
    )
    assert facts["log.unsupported_arch_support"] == "dropped"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unsupported GNU version! gcc versions later than 13 are not", ("gcc 13", "g++-13")),
        (
            "unsupported clang version! clang version must be less than 19",
            ("clang 18", "clang++-18"),
        ),
        (
            "unsupported Microsoft Visual Studio version! Only the versions between 2017 and 2022",
            ("Visual Studio 2022", None),
        ),
    ],
)
def test_host_compiler_limit(text: str, expected: tuple[str, str | None]) -> None:
    facts = build_log.log_facts(text)
    assert (facts["log.host_compiler_limit"], facts["log.host_gxx"]) == expected


def test_vulkan_runtime_and_misc_facts() -> None:
    log = (
        "-- Could NOT find Vulkan (missing: Vulkan_LIBRARY Vulkan_INCLUDE_DIR glslc)\n"
        "sh: 1: Vulkan_GLSLC_EXECUTABLE-NOTFOUND: not found\n"
        "Collecting llama-cpp-python==0.3.16\n"
        "ggml_cuda_init: found 1 CUDA devices:\n"
        "  Device 0: NVIDIA GeForce GTX 1070, compute capability 6.1, VMM: yes\n"
        "load_tensors: offloaded 0/33 layers to GPU\n"
        "CMake Warning:\n  Manually-specified variables were not used by the project:\n\n"
        "    LLAMA_VULKAN\n    LLAMA_KOMPUTE\n\n-- Build files have been written to: /b\n"
    )
    facts = build_log.log_facts(log)
    assert facts["log.vulkan_missing"] == ["Vulkan_LIBRARY", "Vulkan_INCLUDE_DIR", "glslc"]
    assert facts["log.llama_version"] == "0.3.16"
    assert (facts["log.offloaded"], facts["log.offload_total"]) == (0, 33)
    assert facts["log.runtime_gpu_backends"] == ["CUDA"]
    assert facts["log.gpu_devices_found"] == 1
    assert facts["log.gpu_compute_caps"] == [61]
    assert facts["log.cmake_unused"] == ["LLAMA_VULKAN", "LLAMA_KOMPUTE"]


@pytest.mark.parametrize(
    ("text", "wsl"),
    [
        ("Linux 5.15.133.1-microsoft-standard-WSL2 x86_64", True),
        ("CUDA error 100 at /mnt/c/ws/llama.cpp/ggml-cuda.cu:485: no CUDA-capable device", True),
        ("export LD_LIBRARY_PATH=/usr/lib/wsl/lib", True),
        ("CUDA error 100 at /home/u/ggml-cuda.cu:485: no CUDA-capable device", False),
    ],
)
def test_wsl_is_recognised(text: str, wsl: bool) -> None:
    assert build_log.log_facts(text)["log.wsl"] is wsl


def test_no_log_gives_no_facts() -> None:
    facts: dict[str, Any] = build_log.log_facts(None)
    assert facts == {"user.log": None, "log.build_failed": None}
    assert build_log.joined(["", "  "]) is None
    assert build_log.joined(["a", "b"]) == "a\nb"


# --------------------------------------------------------------------------- CUDA archs


@pytest.mark.parametrize(
    ("arch", "release", "support"),
    [
        (120, (12, 4), "too-new"),
        (120, (12, 8), "ok"),
        (89, (11, 7), "too-new"),
        (89, (11, 8), "ok"),
        (61, (12, 9), "ok"),
        (61, (13, 0), "dropped"),
        (75, (13, 0), "ok"),
        (35, (12, 0), "dropped"),
        (101, (13, 0), "dropped"),
        (110, (12, 9), "too-new"),
        (999, (12, 8), None),
        (90, None, None),
    ],
)
def test_arch_support_table(
    arch: int, release: tuple[int, int] | None, support: str | None
) -> None:
    assert toolchain.arch_support(arch, release) == support


def test_fallback_arch_is_the_newest_non_tegra_one_the_toolkit_knows() -> None:
    assert toolchain.fallback_arch((12, 4), 120) == 90
    assert toolchain.fallback_arch((11, 7), 89) == 86  # not 87 (Jetson Orin)
    assert toolchain.fallback_arch(None, 120) is None


@pytest.mark.parametrize(
    ("text", "number"),
    [("compute_120a", 120), ("sm_90", 90), ("86-real", 86), ("8.6", 86), ("12.0", 120)],
)
def test_arch_number(text: str, number: int) -> None:
    assert toolchain.arch_number(text) == number


def test_secrets_in_a_log_never_reach_the_doctor_output() -> None:
    """The failing line is quoted in the verdict: it goes through harness.redact like the rest."""
    from harness.doctor import doctor

    token = "hf_LogLineSecretToken0123456789"
    log = (
        "*** Configuring CMake...\n"
        f"CMake Error at CMakeLists.txt:3 (message):\n  download failed, HF_TOKEN={token}\n"
        "*** CMake configuration failed\n"
    )
    facts = {"llama.installed": False, **doctor.user_input_facts({}, [], [log])}
    report = doctor.diagnose(facts, {})
    assert facts["log.failed_line"].endswith(token)  # the raw fact has it ...
    for out in (doctor.render_text(report), doctor.render_json(report)):
        assert token not in out  # ... no output does
        assert "download failed" in out
    assert token not in doctor.render_markdown(report)


# --------------------------------------------------------------------------- logs as saved


def test_colour_codes_crlf_and_progress_redraws_do_not_hide_a_line() -> None:
    """A log saved from a coloured terminal, on Windows, or with pip's progress bars: the
    anchored patterns ("^CMake Error", "^-- Including") still see their lines."""
    log = (
        "\x1b[1m*** Configuring CMake...\x1b[0m\r\n"
        "\x1b[31mCMake Error at ggml/src/ggml-vulkan/CMakeLists.txt:9 (find_package):\x1b[0m\r\n"
        "  Could NOT find Vulkan (missing: glslc)\r\n"
        "\r\n"
        "   1.2/76.6 MB\r  40.0/76.6 MB\r  76.6/76.6 MB\r\n"
        "*** CMake configuration failed\r\n"
    )
    facts = build_log.log_facts(log)
    assert facts["log.failed_step"] == "configure"
    assert facts["log.failed_line"] == "Could NOT find Vulkan (missing: glslc)"
    assert "\x1b" not in facts["user.log"] and "\r" not in facts["user.log"]
    assert build_log.clean("a\x00b\x1b]0;title\x07c") == "abc"


def test_a_cmake_message_is_read_over_its_wrapped_lines() -> None:
    """CMake wraps a message over several indented lines: the reason is all of it, or the
    compiler's own error line when the message is long."""
    hip = (
        "CMake Error at /usr/share/cmake-3.28/Modules/CMakeTestHIPCompiler.cmake:73 (message):\n"
        "  The HIP compiler\n"
        '    "/usr/bin/c++"\n'
        "  is not able to compile a simple test program.\n"
        "-- Configuring incomplete, errors occurred!\n"
    )
    assert build_log.failing_step(hip)[1] == (
        'The HIP compiler "/usr/bin/c++" is not able to compile a simple test program.'
    )
    nvcc = (
        "CMake Error at /usr/share/cmake-3.30/Modules/CMakeDetermineCompilerId.cmake:838 "
        "(message):\n  Compiling the CUDA compiler identification source file\n"
        '  "CMakeCUDACompilerId.cu" failed.\n  Compiler: /usr/local/cuda/bin/nvcc\n'
        "  Build flags:\n  Id flags: --keep;--keep-dir;tmp -v\n  The output was:\n  1\n"
        "  /usr/local/cuda/include/crt/host_config.h:143:2: error: #error -- unsupported GNU "
        "version! gcc versions later than 13 are not supported!\n\n"
    )
    assert build_log.failing_step(nvcc)[1].endswith(
        "error: #error -- unsupported GNU version! gcc versions later than 13 are not supported!"
    )


@pytest.mark.parametrize(
    ("log", "step", "fact", "value"),
    [
        (
            "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4096.00 MiB on device 0: "
            "cudaMalloc failed: out of memory\nllama_kv_cache_init: failed to allocate buffer "
            "for kv cache\n",
            "runtime",
            "log.oom_request",
            "4.00 GiB",
        ),
        (
            "rocBLAS error: Cannot read /opt/rocm/lib/rocblas/library/TensileLibrary.dat: No "
            "such file or directory for GPU arch : gfx1031\nAborted (core dumped)\n",
            "runtime",
            "log.rocm_gfx_override",
            "10.3.0",
        ),
        (
            "ggml_metal_init: error: Error Domain=MTLLibraryErrorDomain Code=3\n"
            "llama_new_context_with_model: failed to initialize Metal backend\n",
            "runtime",
            "log.gpu_backend_failed",
            True,
        ),
        (
            "ggml_vulkan: Found 1 Vulkan devices:\nggml_vulkan: 0 = llvmpipe (LLVM 15.0.6, 256 "
            "bits) (llvmpipe) | uma: 0\nload_tensors: offloaded 29/29 layers to GPU\n",
            None,
            "log.vulkan_software_only",
            True,
        ),
        (
            "ggml_vulkan: 0 = AMD Radeon RX 7900 XTX (RADV NAVI31) | uma: 0\n"
            "ggml_vulkan: 1 = llvmpipe (LLVM 15.0.6, 256 bits) | uma: 0\n",
            None,
            "log.vulkan_software_only",
            False,
        ),
        (
            "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected\n"
            "load_tensors: offloaded 0/29 layers to GPU\n",
            "runtime",
            "log.gpu_backend_failed",
            True,
        ),
        (
            "ggml_cuda_init: found 1 CUDA devices:\nload_tensors: offloaded 0/29 layers to GPU\n",
            None,
            "log.gpu_backend_failed",
            False,
        ),
    ],
)
def test_run_time_failures_are_a_failing_step_with_their_facts(
    log: str, step: str | None, fact: str, value: object
) -> None:
    facts = build_log.log_facts(log)
    assert facts["log.failed_step"] == step
    assert facts[fact] == value


def test_read_log_refuses_what_is_not_a_text_log(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.log"
    blank.write_bytes(b"\n \n")
    binary = tmp_path / "core"
    binary.write_bytes(bytes(range(256)) * 64)
    utf16 = tmp_path / "ps.log"
    utf16.write_text("CMake Error at x\n", encoding="utf-16")
    latin = tmp_path / "latin1.log"
    latin.write_bytes("Fehler: Datei nicht gefunden \xe4\xf6\xfc\n".encode("latin-1") * 50)
    for path, words in (
        (empty, "empty"),
        (blank, "empty"),
        (binary, "not a text log"),
        (utf16, "UTF-16"),
        (tmp_path, "is a directory"),
        (tmp_path / "missing.log", "cannot read it"),
    ):
        with pytest.raises(build_log.LogError) as err:
            build_log.read_log(path)
        assert str(path) in str(err.value) and words in str(err.value)
        assert "Fix: " in str(err.value) and "\n" not in str(err.value)
    # a few stray non-UTF-8 bytes in a text log are replaced, not refused
    assert "Fehler" in build_log.read_log(latin)


def test_a_huge_log_is_read_as_its_head_and_tail(tmp_path: Path) -> None:
    """A 200 MB log: bounded time and memory, the pip lines at the start and the error at the
    end both still count, and the skip is said in the text."""
    path = tmp_path / "huge.log"
    filler = b"[ 45%] Building CXX object ggml/src/CMakeFiles/ggml-cpu.dir/ops.cpp.o\n"
    with path.open("wb") as fh:
        fh.write(b"Requirement already satisfied: llama-cpp-python in ./venv (0.3.4)\n")
        fh.write(filler * (3 * 2**20 // len(filler)))
        fh.write(b"nvcc fatal   : Unsupported gpu architecture 'compute_120'\n")
    text = build_log.read_log(path, limit=2**21)
    assert len(text.encode()) <= 2**21 + 200
    assert text.startswith("Requirement already satisfied")
    assert "MiB of this 3 MiB log skipped" in text
    facts = build_log.log_facts(text)
    assert facts["log.unsupported_arch"] == 120
    assert all(line.startswith(("[", "Req", "nvcc")) for line in text.splitlines()[1:-1] if
               "skipped" not in line)  # fmt: skip


def test_redacting_the_json_report_loses_no_line_of_the_log() -> None:
    """Each string is redacted on its own: a token at the end of one log line must not take
    the following lines with it (the serialised JSON has no real newlines)."""
    from harness.doctor import doctor

    log = (
        "llama_model_load: error loading model: bad magic\n"
        "HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz123456\n"
        "load_tensors: offloaded 0/29 layers to GPU\n"
    )
    facts = {"llama.installed": False, **doctor.user_input_facts({}, [], [log])}
    data = json.loads(doctor.render_json(doctor.diagnose(facts, {})))
    text = data["facts"]["user.log"]
    assert "hf_abcdefghijklmnopqrstuvwxyz123456" not in text
    assert text.splitlines()[2] == "load_tensors: offloaded 0/29 layers to GPU"


def test_a_run_time_failure_in_the_log_is_the_verdict() -> None:
    from harness.doctor import doctor

    log = "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected\n"
    facts = {"llama.installed": False, **doctor.user_input_facts({}, [], [log])}
    verdict = doctor.diagnose(facts, {}).verdict
    assert verdict.startswith(
        "The log shows a failure at run time (model load / inference): ggml_cuda_init: failed "
        "to initialize CUDA: no CUDA-capable device is detected. Inspected here: "
    )


@pytest.mark.parametrize(
    "text",
    [
        "CMake Error at CMakeLists.txt: Could not find nvcc\n",
        "ERROR: Could not find a version that satisfies the requirement llama-cpp-python==9\n",
    ],
)
def test_a_log_of_the_failing_line_alone_shows_that_step(text: str) -> None:
    """A log holding only its failing line printed "The log shows no pip, CMake, compiler or
    llama.cpp lines the doctor knows." and then "Failing step: CMake configure: ..."."""
    from harness.doctor.doctor import log_summary

    facts = build_log.log_facts(text)
    assert facts["log.failed_step"] in facts["log.kinds"]
    summary = log_summary(facts)
    assert not any("no pip, CMake" in line for line in summary), summary
    assert any(line.startswith("Failing step:") for line in summary), summary
