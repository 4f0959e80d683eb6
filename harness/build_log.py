"""Read the logs users paste into "GPU not detected" reports and turn them into doctor facts.

A log may be ``pip install -v`` output, a scikit-build-core / CMake / Ninja build log, the
stderr of llama.cpp at run time, or any mix of them. :func:`log_facts` returns ``log.*``
facts (names below) that the cause catalogue (``harness/causes.yaml``) tests with the same
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
log.llama_version log.gpu_compute_caps log.required_cuda
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from harness import legacy_flags, toolchain

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
        ("runtime", r"CUDA error|failed to initialize CUDA|no CUDA-capable device|error loading "
                    r"model|failed to load model|no kernel image is available|Illegal "
                    r"instruction|Segmentation fault|ErrorIncompatibleDriver|No devices found|"
                    r"GGML_ASSERT|no backends are loaded"),
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


def _first_error(lines: list[str]) -> tuple[str | None, int | None]:
    """(step, index) of the first real error line.

    The step is the one the markers before the line started; an import or run-time error
    names its own step, a link error too, and a configure/compile/pip error seen before any
    marker names the step it implies.
    """
    step: str | None = None
    for i, line in enumerate(lines):
        for name, marker in _STEP_MARKERS:
            if marker.search(line):
                if not (step in ("import", "runtime") and name in ("compile", "link")):
                    step = name
                break
        for implied, pattern in _ERRORS:
            if pattern.search(line):
                if implied in ("import", "runtime", "link") or step in (None, "pip"):
                    step = implied
                return step, i
    return None, None


def _reason(lines: list[str], index: int) -> str:
    """The line that explains an error: the line itself, or for a header the line that says
    why ("CMake Error at ...:" -> the message below it; "FAILED: target" -> the first error
    line after the compiler command), within 15 lines."""
    line = lines[index].strip()
    if not _HEADER_RE.search(lines[index]):
        return line
    cmake = line.startswith("CMake Error")
    for follow in lines[index + 1 : index + 16]:
        text = follow.strip()
        if not text or text.startswith("Call Stack"):
            continue
        if cmake or _REASON_RE.search(text):
            return text
    return line


def failing_step(text: str) -> tuple[str | None, str | None, bool]:
    """(step, the line that says why, whether a build failed) for a whole log."""
    lines = text.splitlines()
    build_failed = bool(_BUILD_FAILED_RE.search(text))
    step, index = _first_error(lines)
    skbuild = _SKBUILD_STEP_RE.search(text)
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


def _last(pattern: str, text: str, flags: int = re.IGNORECASE) -> re.Match[str] | None:
    matches = list(re.finditer(pattern, text, flags))
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
    bad = re.search(r"Unsupported gpu architecture '(compute_|sm_)?(\d+)\w*'", text, re.I)
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
    init = _last(r"failed to initialize CUDA:\s*(.+)", text)
    facts["log.cuda_init_error"] = init.group(1).strip() if init else None
    return facts


def _compiler_facts(text: str) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    cxx = _last(r"The CXX compiler identification is (\w+ [\d.]+)|CUDA host compiler is "
                r"(\w+ [\d.]+)", text)  # fmt: skip
    facts["log.host_compiler"] = next((g for g in cxx.groups() if g), None) if cxx else None
    limit = re.search(
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
    required = re.search(r"CMake ([\d.]+) or higher is required|Could not find CMake with "
                         r"version >=\s*([\d.]+)", text)  # fmt: skip
    facts["log.cmake_required"] = (
        next((g for g in required.groups() if g), None) if required else None
    )
    return facts


def _vulkan_facts(text: str) -> dict[str, Any]:
    missing: list[str] = []
    for m in re.finditer(r"Could NOT find Vulkan \(missing:\s*([^)]*)\)", text):
        missing += m.group(1).split()
    if re.search(r"Vulkan_GLSLC_EXECUTABLE-NOTFOUND|glslc: (command )?not found", text):
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
        if re.search(pattern, text):
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
        re.search(
            r"/usr/lib/wsl|microsoft-standard-WSL|\bWSL ?2?\b|(^|\s)/mnt/[a-z]/", text, re.I | re.M
        )
    )
    return facts


def log_facts(text: str | None) -> dict[str, Any]:
    """Facts from the attached logs (``None`` when there are none; ``user.log`` is the text)."""
    if not text:
        return {"user.log": None, "log.build_failed": None}
    facts: dict[str, Any] = {"user.log": text}
    lines = text.splitlines()
    kinds = [step for step, marker in _STEP_MARKERS if any(marker.search(line) for line in lines)]
    facts["log.kinds"] = kinds
    step, line, build_failed = failing_step(text)
    facts["log.failed_step"] = step
    facts["log.failed_step_label"] = STEP_LABELS.get(step or "")
    facts["log.failed_line"] = line
    facts["log.build_failed"] = build_failed
    configured = [m.group(1) for m in _CONFIGURED_BACKEND_RE.finditer(text)]
    if configured:
        from harness import buildinfo  # the one canonical backend naming

        backends = sorted({buildinfo.canonical_backend(b) for b in configured})
        facts["log.configured_backends"] = backends
        facts["log.configured_gpu_backends"] = [b for b in backends if b not in _NOT_GPU]
    error = re.search(r"CMake Error[^\n]*\n(?:\s*\n)?([^\n]+)", text)
    facts["log.cmake_error"] = " ".join(error.group(0).split()) if error else None
    facts["log.cmake_unused"] = _unused_variables(text) or None
    # nvidia-container-cli refusing an image's NVIDIA_REQUIRE_CUDA ("cuda>=12.8")
    required = re.search(r"unsatisfied condition: cuda\s*>=\s*(\d+\.\d+)", text)
    facts["log.required_cuda"] = required.group(1) if required else None
    facts["log.defines"] = legacy_flags.defines(text) or None
    version = _last(r"llama[_-]cpp[_-]python[-=]+(\d+\.\d+\.\d+)", text)
    facts["log.llama_version"] = version.group(1) if version else None
    facts.update(_cuda_facts(text))
    facts.update(_compiler_facts(text))
    facts.update(_vulkan_facts(text))
    facts.update(_runtime_facts(text))
    return facts


def joined(texts: Iterable[str]) -> str | None:
    """Several attached logs as one text (None when there is none)."""
    parts = [t for t in texts if t and t.strip()]
    return "\n".join(parts) if parts else None
