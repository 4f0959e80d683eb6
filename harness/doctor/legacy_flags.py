"""Old llama.cpp CMake switches, and what the pinned sdist does with each of them.

llama.cpp renamed its backend switches from ``LLAMA_*`` to ``GGML_*`` in mid-2024 and
dropped some backends (CLBlast, Kompute) altogether. Guides from 2023-2024 still say
``CMAKE_ARGS="-DLLAMA_VULKAN=on"``. What such a flag does depends on the vendored CMake:

* ``fatal``: ``llama_option_depr(FATAL_ERROR OLD NEW)``: the configure step stops
  ("LLAMA_CUBLAS is deprecated, use GGML_CUDA instead"); pip builds nothing;
* ``mapped``: ``llama_option_depr(WARNING OLD NEW)``: a warning, then NEW is switched on;
  the build is what the user wanted;
* ``dropped``: ``llama_option_depr(WARNING OLD)``: a warning, the flag does nothing;
* ``silent``: no CMake file reads the name. ``LLAMA_*`` names then only appear in CMake's
  end-of-configure note "Manually-specified variables were not used by the project";
  ``GGML_*`` names not even there (ggml's CMakeLists reads every ``GGML_*`` variable when it
  exports its config). Either way the wheel is CPU-only and pip says nothing.

:data:`TABLE` is checked against the vendored CMake of the pinned sdist by
``tests/unit/test_legacy_flags.py`` (:func:`derive_from_source`): a new sdist that changes any
entry fails that test. The doctor reads only :data:`TABLE`, never the sdist.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: The llama-cpp-python version :data:`TABLE` was checked against (harness/build/variants.yaml pin).
CHECKED_AGAINST = "0.3.36"
STATUSES = ("fatal", "mapped", "dropped", "silent")


@dataclass(frozen=True)
class LegacyFlag:
    """One old switch: ``name`` (as in ``-DNAME=on``), its ``status`` in the pinned sdist,
    the ``replacement`` switch to use instead (None when the backend is gone) and a note."""

    name: str
    status: str
    replacement: str | None
    note: str = ""

    @property
    def warned(self) -> bool:
        """Whether the configure log says anything about the flag at all."""
        return self.status != "silent" or not self.name.startswith("GGML_")


_SILENT_NOTE = "no CMake file of the pinned sdist reads it"
#: Old switch -> what the pinned sdist does with it. Replacements are ggml options that exist.
TABLE: dict[str, LegacyFlag] = {
    f.name: f
    for f in (
        LegacyFlag("LLAMA_CUBLAS", "fatal", "GGML_CUDA", "configure stops with an error"),
        LegacyFlag("LLAMA_CUDA", "mapped", "GGML_CUDA", "a warning, then GGML_CUDA is on"),
        LegacyFlag("LLAMA_METAL", "mapped", "GGML_METAL", "a warning, then GGML_METAL is on"),
        LegacyFlag("LLAMA_METAL_EMBED_LIBRARY", "mapped", "GGML_METAL_EMBED_LIBRARY"),
        LegacyFlag("LLAMA_NATIVE", "mapped", "GGML_NATIVE"),
        LegacyFlag("LLAMA_RPC", "mapped", "GGML_RPC"),
        LegacyFlag("LLAMA_SYCL", "mapped", "GGML_SYCL", "a warning, then GGML_SYCL is on"),
        LegacyFlag("LLAMA_SYCL_F16", "mapped", "GGML_SYCL_F16"),
        LegacyFlag("LLAMA_CANN", "mapped", "GGML_CANN"),
        LegacyFlag("LLAMA_CURL", "dropped", None, "a warning; llama-cpp-python sets it off"),
        LegacyFlag("LLAMA_VULKAN", "silent", "GGML_VULKAN", _SILENT_NOTE),
        LegacyFlag("LLAMA_HIPBLAS", "silent", "GGML_HIP", _SILENT_NOTE),
        LegacyFlag("LLAMA_HIP_UMA", "silent", None, "no longer a build switch of ggml"),
        LegacyFlag("LLAMA_CLBLAST", "silent", "GGML_VULKAN", "CLBlast was removed in 2024"),
        LegacyFlag("LLAMA_KOMPUTE", "silent", "GGML_VULKAN", "Kompute was removed in 2025"),
        LegacyFlag("LLAMA_MUSA", "silent", "GGML_MUSA", _SILENT_NOTE),
        LegacyFlag("LLAMA_BLAS", "silent", "GGML_BLAS", _SILENT_NOTE),
        LegacyFlag("LLAMA_BLAS_VENDOR", "silent", "GGML_BLAS_VENDOR", _SILENT_NOTE),
        LegacyFlag("LLAMA_OPENMP", "silent", "GGML_OPENMP", _SILENT_NOTE),
        LegacyFlag("LLAMA_CUDA_F16", "silent", None, "no longer a build switch of ggml"),
        LegacyFlag("LLAMA_AVX", "silent", "GGML_AVX", _SILENT_NOTE),
        LegacyFlag("LLAMA_AVX2", "silent", "GGML_AVX2", _SILENT_NOTE),
        LegacyFlag("LLAMA_AVX512", "silent", "GGML_AVX512", _SILENT_NOTE),
        LegacyFlag("LLAMA_FMA", "silent", "GGML_FMA", _SILENT_NOTE),
        LegacyFlag("LLAMA_F16C", "silent", "GGML_F16C", _SILENT_NOTE),
        LegacyFlag("GGML_CUBLAS", "silent", "GGML_CUDA", "read by nothing, not even warned"),
        LegacyFlag("GGML_HIPBLAS", "silent", "GGML_HIP", "renamed GGML_HIP in 2025"),
        LegacyFlag("GGML_CLBLAST", "silent", "GGML_VULKAN", "CLBlast was removed in 2024"),
        LegacyFlag("GGML_KOMPUTE", "silent", "GGML_VULKAN", "Kompute was removed in 2025"),
    )
}
# Backend switches of the current CMake: GGML_<X> -> the backend name llama.cpp reports.
GPU_SWITCHES = {
    "GGML_CUDA": "CUDA",
    "GGML_VULKAN": "VULKAN",
    "GGML_METAL": "METAL",
    "GGML_HIP": "HIP",
    "GGML_SYCL": "SYCL",
    "GGML_MUSA": "MUSA",
    "GGML_OPENCL": "OPENCL",
    "GGML_CANN": "CANN",
}
_ON = {"on", "1", "yes", "true", "y"}
_DEFINE_RE = re.compile(
    r"-D\s*([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z]+)?=(\"[^\"]*\"|'[^']*'|[^\s;\"']*)"
)


def defines(text: str | None) -> dict[str, str]:
    """``-DNAME=VALUE`` / ``-DNAME:BOOL=VALUE`` assignments in command lines or logs.

    Returns NAME -> VALUE (quotes stripped); a later assignment of a name wins, as in CMake.
    """
    found: dict[str, str] = {}
    for m in _DEFINE_RE.finditer(text or ""):
        found[m.group(1)] = m.group(2).strip("\"'")
    return found


def is_on(value: str) -> bool:
    """CMake truthiness of the usual spellings (ON, 1, YES, TRUE, Y; case-insensitive)."""
    return value.strip().lower() in _ON


def classify(names: Iterable[str]) -> dict[str, list[str]]:
    """Sort switched-on names by :data:`TABLE` status: ``{status: [names]}`` (all statuses)."""
    out: dict[str, list[str]] = {s: [] for s in STATUSES}
    for name in dict.fromkeys(names):
        flag = TABLE.get(name)
        if flag is not None:
            out[flag.status].append(name)
    return out


def replacement_args(names: Iterable[str]) -> str:
    """The ``-DGGML_X=on`` switches to use instead of ``names`` (space-separated, deduplicated)."""
    repl = [TABLE[n].replacement for n in names if n in TABLE and TABLE[n].replacement]
    return " ".join(f"-D{r}=on" for r in dict.fromkeys(r for r in repl if r))


def requested_gpu_backends(switches: Mapping[str, str]) -> list[str]:
    """GPU backends asked for by ``switches`` (current names, or legacy ones via their
    replacement), in the order asked; e.g. ``{"LLAMA_VULKAN": "on"}`` -> ``["VULKAN"]``."""
    backends: list[str] = []
    for name, value in switches.items():
        if not is_on(value):
            continue
        flag = TABLE.get(name)
        current = flag.replacement if flag and flag.replacement else name
        backend = GPU_SWITCHES.get(current or "")
        if backend and backend not in backends:
            backends.append(backend)
    return backends


# --------------------------------------------------------------------------- derivation

_DEPR_RE = re.compile(r"^\s*llama_option_depr\(\s*(\w+)\s+(\w+)(?:\s+(\w+))?\s*\)", re.M)
_OPTION_RE = re.compile(
    r"^\s*(?:option\(\s*(GGML_\w+)\b|set\s*\(\s*(GGML_\w+)\b[^)\n]*\bCACHE\b)", re.M
)


def cmake_files(source: Path) -> list[Path]:
    """Every CMakeLists.txt and *.cmake file of an unpacked sdist."""
    return sorted([*source.rglob("CMakeLists.txt"), *source.rglob("*.cmake")])


def derive_from_source(source: Path) -> dict[str, tuple[str, str | None]]:
    """What the sdist unpacked at ``source`` does with each name of :data:`TABLE`.

    Returns name -> (status, replacement-or-None) read from its CMake files:
    ``llama_option_depr(FATAL_ERROR|WARNING OLD [NEW])`` lines give fatal/mapped/dropped;
    a name no CMake file mentions is ``silent`` (its replacement is then the table's, which
    must be an ``option(GGML_...)`` of ggml for it to be reported). A name that some file
    mentions in any other way is reported as ``("referenced", None)``: the table must be
    revisited by hand.

    Raises FileNotFoundError when ``source`` holds no vendored llama.cpp CMakeLists.txt.
    """
    root = source / "vendor" / "llama.cpp" / "CMakeLists.txt"
    if not root.is_file():
        raise FileNotFoundError(f"{root}: not an unpacked llama-cpp-python sdist")
    texts = {p: p.read_text(encoding="utf-8", errors="replace") for p in cmake_files(source)}
    depr: dict[str, tuple[str, str | None]] = {}
    for text in texts.values():
        for kind, old, new in _DEPR_RE.findall(text):
            if kind == "FATAL_ERROR":
                depr[old] = ("fatal", new or None)
            else:
                depr[old] = ("mapped" if new else "dropped", new or None)
    options: set[str] = set()
    for text in texts.values():
        options.update(a or b for a, b in _OPTION_RE.findall(text))
    derived: dict[str, tuple[str, str | None]] = {}
    for name, flag in TABLE.items():
        if name in depr:
            derived[name] = depr[name]
            continue
        word = re.compile(rf"\b{re.escape(name)}\b")
        if any(word.search(t) for t in texts.values()):
            derived[name] = ("referenced", None)
            continue
        repl = flag.replacement if flag.replacement in options else None
        derived[name] = ("silent", repl)
    return derived


def reads_all_ggml_variables(source: Path) -> bool:
    """True when ggml's CMakeLists reads every ``GGML_*`` variable (so CMake never warns that
    a ``-DGGML_*`` switch was unused)."""
    text = (source / "vendor" / "llama.cpp" / "ggml" / "CMakeLists.txt").read_text(
        encoding="utf-8", errors="replace"
    )
    return bool(
        re.search(r"get_cmake_property\(\s*\w+\s+VARIABLES\s*\)", text)
        and re.search(r'MATCHES\s+"\^GGML_"', text)
    )
