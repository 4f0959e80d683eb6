"""Read the logs users paste into "GPU not detected" reports and turn them into doctor facts.

A log may be ``pip install -v`` output, a scikit-build-core / CMake / Ninja build log, the
stderr of llama.cpp at run time, or any mix of them. :func:`log_facts` returns ``log.*``
facts (names below) that the cause catalogue (``harness/doctor/causes.yaml``) tests with the same
evaluator it uses for the probes; the raw text is the fact ``user.log``, so a cause can also
match a line with a regex.

Steps, in build order: ``pip`` (resolve, build dependencies), ``configure`` (CMake),
``compile``, ``link``, ``install`` (into the wheel / site-packages), ``import`` (loading
``llama_cpp``), ``runtime`` (model load, offload, inference). The failing step is the step
the first real error line belongs to; pip's own wrapper lines ("error:
subprocess-exited-with-error", "Failed building wheel") say *that* a build failed, not
where, so they are used only when nothing better is in the log.

Facts: log.kinds log.failed_step log.failed_step_label log.failed_line log.build_failed
log.configured_backends log.configured_gpu_backends log.cmake_error log.cmake_unused
log.defines log.nvcc_version log.cuda_archs log.unsupported_arch log.unsupported_arch_support
log.arch_min_cuda log.arch_fallback log.host_compiler log.host_compiler_limit
log.cmake_version log.cmake_required log.vulkan_missing log.vulkan_version log.offloaded
log.offload_total log.runtime_gpu_backends log.gpu_devices_found log.cuda_init_error log.wsl
log.llama_version log.gpu_compute_caps log.required_cuda log.gpu_backend_failed
log.oom_request log.rocm_gfx log.rocm_gfx_override log.vulkan_devices
log.vulkan_software_only

Logs arrive as users saved them: :func:`read_log` reads a file (a binary file, an empty one
or a directory is a :class:`LogError`; one larger than :data:`MAX_LOG_BYTES` is read as its
head and tail, the middle replaced by one marker line) and :func:`clean` drops terminal colour
codes, carriage returns and NUL bytes before anything is matched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.build import toolchain
from harness.doctor import legacy_flags
from harness.doctor.prefilter import may_match, search

STEP_LABELS = {
    "pip": "pip (resolving / build dependencies)",
    "configure": "CMake configure",
    "compile": "compile",
    "link": "link",
    "install": "install",
    "import": "import llama_cpp",
    "runtime": "run time (model load / inference)",
}
STEPS = tuple(STEP_LABELS)

# Lines that start a step (the step stays current until another one starts).
_STEP_MARKERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (step, re.compile(pattern, re.IGNORECASE))
    for step, pattern in (
        ("pip", r"^\s*(Collecting llama|Installing build dependencies|Getting requirements to "
                r"build|Preparing metadata|Building wheels? for|Processing .*llama|Requirement "
                r"already satisfied)"),
        ("configure", r"\*\*\* (Re)?[Cc]onfiguring CMake|^\s*-- The (C|CXX) compiler "
                      r"identification|^\s*-- Configuring|^\s*loading initial cache file"),
        ("compile", r"\*\*\* Building project|^\s*\[\s*\d+/\d+\]\s+(Building|Generating|/)|"
                    r"^\s*\[\s*\d+%\]\s+(Building|Generating)|Building (C|CXX|CUDA) object"),
        ("link", r"^\s*\[\s*\d+(/\d+|%)\]\s+Linking|^\s*Linking (C|CXX|CUDA) "),
        ("install", r"\*\*\* Installing project|^\s*(Created wheel for|Successfully built|"
                    r"Successfully installed|Installing collected packages)"),
        ("import", r"^\s*(>>> )?(import llama_cpp|from llama_cpp)|Traceback \(most recent call"
                   r"|Failed to load shared library"),
        ("runtime", r"llama_model_load|llama_model_loader|load_tensors|llm_load_tensors|"
                    r"ggml_cuda_init|ggml_vulkan:|llama_new_context|llama_context|system_info|"
                    r"llama_init_from|load_backend:|ggml_metal_init"),
    )
)  # fmt: skip
# Real errors, with the step they imply when no step marker came before them.
_ERRORS: tuple[tuple[str | None, re.Pattern[str]], ...] = tuple(
    (step, re.compile(pattern, re.IGNORECASE))
    for step, pattern in (
        ("configure", r"^\s*CMake Error|Configuring incomplete, errors occurred|^\s*Could NOT "
                      r"find \w+ \(missing|CMake \d+\.\d+(\.\d+)? or higher is required|Could not "
                      r"find CMake"),
        ("compile", r"^\s*FAILED: |nvcc fatal|#error|\bfatal error\b|^\s*\S+:\d+(:\d+)?: error:"
                    r"|\berror C\d{4}\b|error MSB\d+|is not a member of|was not declared in "
                    r"this scope|ninja: build stopped|^\s*sh: \d+: .+: not found|cannot compile "),
        ("link", r"undefined reference to|collect2: error|\bld(\.\w+)?: cannot find|LINK : "
                 r"fatal error"),
        ("pip", r"Could not find a version that satisfies|No matching distribution found"),
        ("import", r"cannot open shared object file|Failed to load shared library|"
                   r"ModuleNotFoundError|ImportError"),
        ("runtime", r"(CUDA|ROCm|MUSA) error|failed to initialize (CUDA|ROCm|MUSA)|no (CUDA|ROCm)-"
                    r"capable device|error loading "
                    r"model|failed to load model|no kernel image is available|Illegal "
                    r"instruction|Segmentation fault|ErrorIncompatibleDriver|No devices found|"
                    r"GGML_ASSERT|no backends are loaded|rocBLAS error|hipErrorNoBinaryForGpu|"
                    r"cudaMalloc failed|ErrorOutOfDeviceMemory|(failed|unable) to allocate \w+ "
                    r"buffer|failed to allocate buffer for kv cache|failed to initialize (the )?"
                    r"\w+ backend|ggml_metal_init: error|Failed to create llama_context|Aborted "
                    r"\(core dumped\)"),
    )
)  # fmt: skip
# pip / scikit-build-core summary lines: a build failed (and, for the last two, where).
_BUILD_FAILED_RE = re.compile(
    r"Failed building wheel for llama|Could not build wheels for llama|Failed to build "
    r"(installable wheels|llama)|error: subprocess-exited-with-error|\*\*\* CMake "
    r"(configuration|build) failed|Configuring incomplete, errors occurred|ninja: build stopped|"
    r"CMake Generate step failed",
    re.IGNORECASE,
)
_SKBUILD_STEP_RE = re.compile(r"\*\*\* CMake (configuration|build) failed", re.IGNORECASE)
# After a header line ("CMake Error at ...:", "FAILED: target"), the line that says why.
_HEADER_RE = re.compile(r"^\s*(CMake Error[^:]*:?\s*$|CMake Error at .*\(\w+\):\s*$|FAILED: )")
_REASON_RE = re.compile(
    r"error|fatal|Could NOT|not found|is required|No CMAKE_|not set|NOTFOUND|not a member|"
    r"Unsupported|unsupported|deprecated|detected",
    re.IGNORECASE,
)
_CONFIGURED_BACKEND_RE = re.compile(r"-- Including (\w+) backend")
_NOT_GPU = ("CPU", "BLAS", "RPC")


_KIND_RES = tuple(
    (step, re.compile(marker.pattern, re.IGNORECASE | re.MULTILINE))
    for step, marker in _STEP_MARKERS
)


def _first_error(lines: list[str]) -> tuple[str | None, int | None]:
    """(step, index) of the first real error line.

    The step is the one the markers before the line started; an import or run-time error
    names its own step, a link error too, and a configure/compile/pip error seen before any
    marker names the step it implies.
    """
    step: str | None = None
    for i, line in enumerate(lines):
        for name, marker in _STEP_MARKERS:
            if may_match(marker, line) and marker.search(line):
                if not (step in ("import", "runtime") and name in ("compile", "link")):
                    step = name
                break
        for implied, pattern in _ERRORS:
            if may_match(pattern, line) and pattern.search(line):
                if implied in ("import", "runtime", "link") or step in (None, "pip"):
                    step = implied
                return step, i
    return None, None


_MAX_REASON = 240
_SPECIFIC_ERROR_RE = re.compile(r"(^|\s)(#?error\b|fatal\b)", re.IGNORECASE)


def _cmake_message(lines: list[str], index: int) -> str:
    """The message under a "CMake Error at ...:" header: its indented lines joined into one
    (CMake wraps a message over several lines), up to the blank line, "Call Stack" or the
    next unindented line. A long message that holds a compiler error line is that line
    ("... failed." then "host_config.h:143:2: error: #error -- unsupported GNU version!")."""
    header = lines[index]
    indent = len(header) - len(header.lstrip())
    parts: list[str] = []
    for follow in lines[index + 1 : index + 30]:
        text = follow.strip()
        if not text:
            if parts:
                break
            continue
        if text.startswith("Call Stack") or len(follow) - len(follow.lstrip()) <= indent:
            break
        parts.append(text)
    joined = " ".join(parts)
    if len(joined) > _MAX_REASON:
        specific = next((p for p in parts[1:] if _SPECIFIC_ERROR_RE.search(p)), None)
        return specific or joined[:_MAX_REASON] + " ..."
    return joined or header.strip()


def _reason(lines: list[str], index: int) -> str:
    """The line that explains an error: the line itself, or for a header the text that says
    why ("CMake Error at ...:" -> the message below it; "FAILED: target" -> the first error
    line after the compiler command), within 15 lines."""
    line = lines[index].strip()
    if not _HEADER_RE.search(lines[index]):
        return line
    if line.startswith("CMake Error"):
        return _cmake_message(lines, index)
    for follow in lines[index + 1 : index + 16]:
        text = follow.strip()
        if text and _REASON_RE.search(text):
            return text
    return line


def failing_step(text: str) -> tuple[str | None, str | None, bool]:
    """(step, the line that says why, whether a build failed) for a whole log."""
    lines = text.splitlines()
    build_failed = bool(search(_BUILD_FAILED_RE, text))
    step, index = _first_error(lines)
    skbuild = search(_SKBUILD_STEP_RE, text)
    if skbuild and step not in ("import", "runtime"):  # scikit-build-core names the phase
        if skbuild.group(1).lower() == "configuration":
            step = "configure"
        elif step != "link":
            step = "compile"
    if index is None:
        if build_failed:
            first = next(i for i, ln in enumerate(lines) if _BUILD_FAILED_RE.search(ln))
            return step, lines[first].strip(), True
        return None, None, False
    return step, _reason(lines, index), build_failed


def _unused_variables(text: str) -> list[str]:
    """Names under CMake's "Manually-specified variables were not used by the project:"."""
    names: list[str] = []
    for m in re.finditer(r"Manually-specified variables were not used by the project:", text):
        for line in text[m.end() :].splitlines()[1:30]:
            word = line.strip()
            if not word:
                if names:
                    break
                continue
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", word):
                break
            names.append(word)
    return list(dict.fromkeys(names))


def _search(pattern: str, text: str, flags: int = 0) -> re.Match[str] | None:
    """``re.search``, skipped when the pattern's words are not in ``text`` (prefilter)."""
    return search(re.compile(pattern, flags), text)


def _last(pattern: str, text: str, flags: int = re.IGNORECASE) -> re.Match[str] | None:
    compiled = re.compile(pattern, flags)
    if not may_match(compiled, text):
        return None
    matches = list(compiled.finditer(text))
    return matches[-1] if matches else None


def _cuda_facts(text: str) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    nvcc = _last(
        r"CUDA compiler identification is NVIDIA ([\d.]+)|Found CUDAToolkit: .*?\(found version "
        r"\"([\d.]+)\"\)|Cuda compilation tools, release [\d.]+, V([\d.]+)|CUDA[\\/]v(\d+\.\d+)"
        r"[\\/]bin[\\/]nvcc",
        text,
    )
    version = next((g for g in nvcc.groups() if g), None) if nvcc else None
    facts["log.nvcc_version"] = version
    archs: list[int] = []
    for m in re.finditer(
        r"Using CUDA architectures:\s*([\w;. -]+)|CMAKE_CUDA_ARCHITECTURES=([\w;.-]+)", text
    ):
        for part in re.split(r"[;\s]+", (m.group(1) or m.group(2) or "").strip()):
            number = toolchain.arch_number(part) if re.match(r"\d", part) else None
            if number is not None and number not in archs:
                archs.append(number)
    facts["log.cuda_archs"] = archs or None
    bad = _search(r"Unsupported gpu architecture '(compute_|sm_)?(\d+)\w*'", text, re.I)
    arch = int(bad.group(2)) if bad else None
    facts["log.unsupported_arch"] = arch
    release = toolchain.release_tuple(version)
    support = toolchain.arch_support(arch, release) if arch is not None else None
    if arch is not None and support is None and release is None:
        first = toolchain.CUDA_ARCH_RELEASES.get(arch, (None, None))[0]
        support = "too-new" if first is not None else None
    facts["log.unsupported_arch_support"] = support
    first = toolchain.CUDA_ARCH_RELEASES.get(arch, (None, None))[0] if arch else None
    facts["log.arch_min_cuda"] = f"{first[0]}.{first[1]}" if first else None
    fallback = toolchain.fallback_arch(release, arch) if arch is not None else None
    facts["log.arch_fallback"] = str(fallback) if fallback else None
    init = _last(r"failed to initialize (?:CUDA|ROCm|MUSA):\s*(.+)", text)
    facts["log.cuda_init_error"] = init.group(1).strip() if init else None
    return facts


def _compiler_facts(text: str) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    cxx = _last(r"The CXX compiler identification is (\w+ [\d.]+)|CUDA host compiler is "
                r"(\w+ [\d.]+)", text)  # fmt: skip
    facts["log.host_compiler"] = next((g for g in cxx.groups() if g), None) if cxx else None
    limit = _search(
        r"unsupported GNU version! gcc versions later than (\d+)|unsupported clang version! "
        r"clang version must be less than (\d+)|unsupported Microsoft Visual Studio version! "
        r"Only the versions between (\d+) and (\d+)",
        text,
        re.I,
    )
    if limit:
        gcc, clang, _, msvc = limit.groups()
        if gcc:
            facts["log.host_compiler_limit"], facts["log.host_gxx"] = f"gcc {gcc}", f"g++-{gcc}"
        elif clang:
            newest = int(clang) - 1
            facts["log.host_compiler_limit"] = f"clang {newest}"
            facts["log.host_gxx"] = f"clang++-{newest}"
        else:
            facts["log.host_compiler_limit"], facts["log.host_gxx"] = f"Visual Studio {msvc}", None
    else:
        facts["log.host_compiler_limit"] = None
        facts["log.host_gxx"] = None
    cmake = _last(r"using CMake ([\d.]+)|You are running version ([\d.]+)|cmake version "
                  r"([\d.]+)", text)  # fmt: skip
    facts["log.cmake_version"] = next((g for g in cmake.groups() if g), None) if cmake else None
    required = _search(r"CMake ([\d.]+) or higher is required|Could not find CMake with "
                         r"version >=\s*([\d.]+)", text)  # fmt: skip
    facts["log.cmake_required"] = (
        next((g for g in required.groups() if g), None) if required else None
    )
    return facts


def _vulkan_facts(text: str) -> dict[str, Any]:
    missing: list[str] = []
    for m in re.finditer(r"Could NOT find Vulkan \(missing:\s*([^)]*)\)", text):
        missing += m.group(1).split()
    if _search(r"Vulkan_GLSLC_EXECUTABLE-NOTFOUND|glslc: (command )?not found", text):
        missing.append("glslc")
    found = _last(r"(?:Found|find) Vulkan.*?\(found version \"([\d.]+)\"\)", text)
    return {
        "log.vulkan_missing": list(dict.fromkeys(missing)) or None,
        "log.vulkan_version": found.group(1) if found and found.group(1) else None,
    }


def _runtime_facts(text: str) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    offload = _last(r"offloaded (\d+)/(\d+) layers to GPU", text)
    facts["log.offloaded"] = int(offload.group(1)) if offload else None
    facts["log.offload_total"] = int(offload.group(2)) if offload else None
    backends: list[str] = []
    for backend, pattern in (
        ("CUDA", r"ggml_cuda_init|CUDA : ARCHS|loaded CUDA backend|using device CUDA\d|CUDA\d+ "
                 r"(model |KV )?buffer size|ggml_init_cublas"),
        ("VULKAN", r"ggml_vulkan:|loaded Vulkan backend|Vulkan\d+ (model |KV )?buffer size"),
        ("METAL", r"ggml_metal_init|loaded Metal backend|MTL\d"),
        ("HIP", r"found \d+ ROCm devices|loaded ROCm backend"),
        ("SYCL", r"ggml_sycl|loaded SYCL backend"),
    ):  # fmt: skip
        if _search(pattern, text):
            backends.append(backend)
    facts["log.runtime_gpu_backends"] = backends or None
    count = _last(r"found (\d+) (CUDA|ROCm) devices|Found (\d+) Vulkan devices|"
                  r"(No devices found|no CUDA-capable device is detected)", text)  # fmt: skip
    if count is None:
        facts["log.gpu_devices_found"] = None
    else:
        number = count.group(1) or count.group(3)
        facts["log.gpu_devices_found"] = int(number) if number else 0
    caps = [
        int(m.group(1)) * 10 + int(m.group(2))
        for m in re.finditer(r"compute capability (\d+)\.(\d)", text)
    ]
    facts["log.gpu_compute_caps"] = list(dict.fromkeys(caps)) or None
    facts["log.wsl"] = bool(
        _search(
            r"/usr/lib/wsl|microsoft-standard-WSL|\bWSL ?2?\b|(^|\s)/mnt/[a-z]/", text, re.I | re.M
        )
    )
    # A GPU backend that was loaded but could not start (no device, driver too old, no
    # libcuda): "offloaded 0/N" after it is not an n_gpu_layers problem.
    facts["log.gpu_backend_failed"] = bool(search(_BACKEND_FAILED_RE, text)) or (
        facts["log.gpu_devices_found"] == 0
    )
    oom = _last(r"allocating ([\d.]+) MiB on device \d+: cudaMalloc failed|failed to allocate "
                r"\w+ buffer of size (\d+)", text)  # fmt: skip
    if oom is None:
        facts["log.oom_request"] = None
    elif oom.group(1):
        facts["log.oom_request"] = f"{float(oom.group(1)) / 1024:.2f} GiB"
    else:
        facts["log.oom_request"] = f"{int(oom.group(2)) / 2**30:.2f} GiB"
    gfx = _last(r"for GPU arch\s*:\s*(gfx\w+)|\b(gfx\d{3,4}[a-z]?)\b", text)
    name = next((g for g in gfx.groups() if g), None) if gfx else None
    facts["log.rocm_gfx"] = name
    facts["log.rocm_gfx_override"] = _gfx_override(name)
    devices = [(m.group(1) or m.group(2)).strip() for m in _VULKAN_DEVICE_RE.finditer(text)]
    facts["log.vulkan_devices"] = list(dict.fromkeys(devices)) or None
    facts["log.vulkan_software_only"] = (
        all(_SOFTWARE_VULKAN_RE.search(d) for d in devices) if devices else None
    )
    return facts


_BACKEND_FAILED_RE = re.compile(
    r"failed to initialize (CUDA|ROCm|MUSA)|no (CUDA|ROCm)-capable device|"
    r"ggml_vulkan: No devices found|"
    r"failed to initialize (the )?\w+ backend|ggml_metal_init: error|ErrorIncompatibleDriver|"
    r"libcuda\.so\.1: cannot open shared object file",
    re.IGNORECASE,
)
# "ggml_vulkan: 0 = NAME (driver) | uma: ..." (run time) and "Vulkan0: NAME (N MiB ...)"
# (llama-bench --list-devices, llama_model_load "using device Vulkan0 (NAME)").
_VULKAN_DEVICE_RE = re.compile(
    r"ggml_vulkan: \d+ = ([^|(\n]+)|^\s*Vulkan\d+: ([^|(\n]+)", re.MULTILINE
)
_SOFTWARE_VULKAN_RE = re.compile(r"llvmpipe|lavapipe|SwiftShader", re.IGNORECASE)


def _gfx_override(gfx: str | None) -> str | None:
    """``HSA_OVERRIDE_GFX_VERSION`` for an AMD GPU rocBLAS ships no kernels for: the
    supported sibling of its family (llama.cpp's docs/build.md: 10.3.0 on RDNA2, 11.0.0 on
    RDNA3), else None."""
    if not gfx:
        return None
    if re.fullmatch(r"gfx103\d", gfx):
        return "10.3.0"
    if re.fullmatch(r"gfx110\d", gfx):
        return "11.0.0"
    return None


def log_facts(text: str | None) -> dict[str, Any]:
    """Facts from the attached logs (``None`` when there are none; ``user.log`` is the text,
    :func:`clean`)."""
    text = clean(text) if text else text
    if not text or not text.strip():
        return {"user.log": None, "log.build_failed": None}
    facts: dict[str, Any] = {"user.log": text}
    kinds = {step for step, marker in _KIND_RES if search(marker, text)}
    step, line, build_failed = failing_step(text)
    # a log of the failing line alone (no step marker before it) still shows that step
    facts["log.kinds"] = [s for s in STEPS if s in kinds or s == step]
    facts["log.failed_step"] = step
    facts["log.failed_step_label"] = STEP_LABELS.get(step or "")
    facts["log.failed_line"] = line
    facts["log.build_failed"] = build_failed
    configured = [m.group(1) for m in _CONFIGURED_BACKEND_RE.finditer(text)]
    if configured:
        from saiverse_llm.devices import canonical_backend  # the one backend naming

        backends = sorted({canonical_backend(b) for b in configured})
        facts["log.configured_backends"] = backends
        facts["log.configured_gpu_backends"] = [b for b in backends if b not in _NOT_GPU]
    error = _search(r"CMake Error[^\n]*\n(?:\s*\n)?([^\n]+)", text)
    facts["log.cmake_error"] = " ".join(error.group(0).split()) if error else None
    facts["log.cmake_unused"] = _unused_variables(text) or None
    # nvidia-container-cli refusing an image's NVIDIA_REQUIRE_CUDA ("cuda>=12.8")
    required = _search(r"unsatisfied condition: cuda\s*>=\s*(\d+\.\d+)", text)
    facts["log.required_cuda"] = required.group(1) if required else None
    facts["log.defines"] = legacy_flags.defines(text) or None
    version = _last(r"llama[_-]cpp[_-]python[-=]+(\d+\.\d+\.\d+)", text)
    facts["log.llama_version"] = version.group(1) if version else None
    facts.update(_cuda_facts(text))
    facts.update(_compiler_facts(text))
    facts.update(_vulkan_facts(text))
    facts.update(_runtime_facts(text))
    return facts


# --------------------------------------------------------------------------- reading

#: A log larger than this is read as its head and tail (the failing step and its reason are
#: at the end of a build log; pip's resolver lines at the start).
MAX_LOG_BYTES = 4 * 1024 * 1024
_HEAD_BYTES = 1024 * 1024
_ANSI_RE = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class LogError(ValueError):
    """A --log file that is not a readable text log; ``str(err)`` names the file, the
    problem and the fix ("... Fix: ...")."""


def clean(text: str) -> str:
    """``text`` as plain lines: terminal colour/cursor codes removed, CRLF and lone CRs
    (progress bars redrawing a line) turned into newlines, other control bytes dropped."""
    text = _ANSI_RE.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL_RE.sub("", text)


def _looks_binary(sample: bytes) -> bool:
    """NUL bytes, or more than 10% of the sample not UTF-8 text: an archive, an image, a
    core dump, a UTF-16 file."""
    if not sample:
        return False
    if b"\x00" in sample:
        return True
    text = sample.decode("utf-8", errors="replace")
    return text.count("\ufffd") > len(text) // 10


def read_log(path: str | os.PathLike[str], *, limit: int = MAX_LOG_BYTES) -> str:
    """The text of a saved log for :func:`log_facts` (undecodable bytes replaced).

    Raises :class:`LogError` for a file that cannot be read, a directory, an empty file or
    a binary one. A file larger than ``limit`` bytes is read as its first MiB and its last
    ``limit - 1 MiB``, with a line saying how much was skipped in between."""
    p = Path(path)
    fix = (
        "pass the file you saved the output to, e.g. pip install -v ... 2>&1 | tee pip-install.log"
    )
    try:
        if p.is_dir():
            raise LogError(f"--log {p}: is a directory, not a log file. Fix: {fix}")
        with p.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size <= limit:
                data = fh.read(limit + 1)
                head, tail, skipped = data, b"", 0
            else:
                head = fh.read(_HEAD_BYTES)
                fh.seek(size - (limit - _HEAD_BYTES))
                tail = fh.read()
                skipped = size - len(head) - len(tail)
    except OSError as exc:
        raise LogError(f"--log {p}: cannot read it ({exc.strerror or exc}). Fix: {fix}") from exc
    if not (head + tail).strip():
        raise LogError(
            f"--log {p}: the file is empty. Fix: {fix}; 2>&1 keeps the errors, which pip and "
            "CMake write to stderr"
        )
    if _looks_binary(head[:65536]) or _looks_binary(tail[-65536:]):
        raise LogError(
            f"--log {p}: not a text log (binary or not UTF-8 data). Fix: {fix}; a UTF-16 file "
            "(PowerShell's > redirection) must be saved as UTF-8 first, e.g. "
            "Get-Content log.txt | Set-Content -Encoding utf8 log-utf8.txt"
        )
    if not skipped:
        return head.decode("utf-8", errors="replace")
    first = head.decode("utf-8", errors="replace").rsplit("\n", 1)[0]
    last = tail.decode("utf-8", errors="replace").split("\n", 1)[-1]
    marker = (
        f"[llama-harness doctor: {skipped / 2**20:.0f} MiB of this {size / 2**20:.0f} MiB log "
        "skipped; only its first and last lines were read]"
    )
    return f"{first}\n{marker}\n{last}"


def joined(texts: Iterable[str]) -> str | None:
    """Several attached logs as one text (None when there is none)."""
    parts = [t for t in texts if t and t.strip()]
    return "\n".join(parts) if parts else None
