"""Vulkan headers new enough for the pinned llama.cpp, from the distribution's packages.

The vendored llama.cpp of llama-cpp-python 0.3.36 uses ``vk::LayerSettingEXT``
(VK_EXT_layer_settings), which entered the public Vulkan headers in 1.3.272. Debian 12 ships
1.3.239, so the build stops with ``'LayerSettingEXT' is not a member of 'vk'``. ``toolchain:
vulkan`` in a variant makes :func:`vulkan_cmake_args`:

* use the system headers (``$VULKAN_SDK/include``, ``/usr/local/include``, ``/usr/include``)
  when they are at least the variant's ``vulkan_headers`` requirement (unless
  ``LLAMA_HARNESS_VULKAN_HEADERS=debian``);
* else download Debian 13 (trixie)'s ``libvulkan-dev`` and ``spirv-headers`` with apt, using
  a private apt configuration under ``toolchains_dir()`` (the system's sources are not
  touched), unpack them with ``dpkg-deb -x`` (headers and CMake files only, nothing is
  installed) into ``toolchains_dir()/vulkan-headers-debian-trixie-<version>`` and point CMake
  at them (``-DVulkan_INCLUDE_DIR``, ``-DSPIRV-Headers_DIR``). The loader library and glslc
  stay the system's.

:func:`identity` names the headers a build used (version and the packages' sha256): part of
the wheel-cache key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness import paths
from saiverse_llm.atomic import atomic_write_json, atomic_write_text, publish_dir

#: Where newer headers come from when the system's are too old.
DEBIAN_SUITE = "trixie"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
PACKAGES = ("libvulkan-dev", "spirv-headers")
HEADER = Path("vulkan") / "vulkan_core.h"
#: ``debian``: use Debian trixie's headers even when the system's pass the check (the same
#: headers on every machine, e.g. Ubuntu 24.04's 1.3.275 is new enough but not verified).
FORCE_ENV = "LLAMA_HARNESS_VULKAN_HEADERS"
_VERSION_RE = re.compile(
    r"#define\s+VK_HEADER_VERSION_COMPLETE\s+VK_MAKE_API_VERSION\(\s*\d+\s*,\s*(\d+)\s*,\s*(\d+)"
)
_PATCH_RE = re.compile(r"#define\s+VK_HEADER_VERSION\s+(\d+)")

Version = tuple[int, int, int]


class VulkanHeadersError(RuntimeError):
    """Headers too old and no newer ones could be had; the message names the fix."""


@dataclass(frozen=True)
class Headers:
    include: Path  # folder holding vulkan/vulkan_core.h
    version: Version
    source: str  # "system" or "Debian trixie libvulkan-dev 1.4.309.0-1"
    spirv_cmake_dir: Path | None = None  # folder with SPIRV-HeadersConfig.cmake (fetched)
    packages: tuple[tuple[str, str, str], ...] = ()  # (name, version, sha256) of each .deb

    @property
    def version_str(self) -> str:
        return format_version(self.version)


def format_version(version: Version) -> str:
    return ".".join(map(str, version))


def parse_version(text: str) -> Version:
    """``"1.3.272"`` -> ``(1, 3, 272)``; ValueError when it is not three numbers."""
    parts = text.strip().split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a Vulkan header version MAJOR.MINOR.PATCH: {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def header_version(include: Path) -> Version | None:
    """The version ``include/vulkan/vulkan_core.h`` declares, or None without the file."""
    try:
        text = (include / HEADER).read_text(errors="replace")
    except OSError:
        return None
    full, patch = _VERSION_RE.search(text), _PATCH_RE.search(text)
    if not full or not patch:
        return None
    return int(full.group(1)), int(full.group(2)), int(patch.group(1))


def system_include_dirs() -> list[Path]:
    """Where CMake's FindVulkan looks, in its order: ``$VULKAN_SDK/include``, then system."""
    dirs = []
    if os.environ.get("VULKAN_SDK"):
        dirs.append(Path(os.environ["VULKAN_SDK"]) / "include")
    dirs += [Path("/usr/local/include"), Path("/usr/include")]
    return dirs


def system_headers() -> Headers | None:
    """The first Vulkan headers FindVulkan would pick on this machine, or None."""
    for include in system_include_dirs():
        version = header_version(include)
        if version is not None:
            return Headers(include=include, version=version, source=f"system {include}")
    return None


# --------------------------------------------------------------------------- fetched


def _fetched_root() -> Path:
    return paths.toolchains_dir()


def cached_headers(minimum: Version) -> Headers | None:
    """Headers fetched earlier into toolchains_dir() that satisfy ``minimum`` (newest first)."""
    found = []
    for meta in _fetched_root().glob(f"vulkan-headers-debian-{DEBIAN_SUITE}-*/toolchain.json"):
        headers = _read_meta(meta)
        if headers is not None and headers.version >= minimum:
            found.append(headers)
    return max(found, key=lambda h: h.version) if found else None


def _read_meta(meta: Path) -> Headers | None:
    try:
        data = json.loads(meta.read_text())
        root = meta.parent
        include = root / "usr" / "include"
        version = header_version(include)
        if version is None or format_version(version) != data["version"]:
            return None
        spirv = root / "usr" / "share" / "cmake" / "SPIRV-Headers"
        return Headers(
            include=include,
            version=version,
            source=str(data["source"]),
            spirv_cmake_dir=spirv if (spirv / "SPIRV-HeadersConfig.cmake").is_file() else None,
            packages=tuple(
                (str(p["name"]), str(p["version"]), str(p["sha256"])) for p in data["packages"]
            ),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def can_fetch() -> tuple[bool, str]:
    """(True, how) when apt-get, dpkg-deb and Debian's archive keyring are here."""
    missing = [t for t in ("apt-get", "dpkg-deb") if shutil.which(t) is None]
    if missing:
        return False, f"{' and '.join(missing)} not found (not a Debian/Ubuntu machine)"
    if not DEBIAN_KEYRING.is_file():
        return False, f"{DEBIAN_KEYRING} not found (apt-get install debian-archive-keyring)"
    return True, f"apt-get download {' '.join(PACKAGES)} from Debian {DEBIAN_SUITE}"


def _apt_options(apt_dir: Path) -> list[str]:
    """A private apt configuration: its own sources, lists and cache under ``apt_dir``."""
    return [
        "-o", f"Dir::Etc::SourceList={apt_dir / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/nonexistent",
        "-o", f"Dir::State::Lists={apt_dir / 'lists'}",
        "-o", f"Dir::Cache={apt_dir / 'cache'}",
        "-o", "APT::Sandbox::User=root",
        "-o", "Debug::NoLocking=1",
    ]  # fmt: skip


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-6:])
        raise VulkanHeadersError(f"`{' '.join(cmd[:1] + cmd[-3:])}` failed:\n{tail}")
    return proc.stdout


def fetch_headers(minimum: Version) -> Headers:
    """Download and unpack Debian trixie's Vulkan and SPIR-V headers (temp folder, rename)."""
    ok, why = can_fetch()
    if not ok:
        raise VulkanHeadersError(why)
    root = _fetched_root()
    apt_dir = root / f".apt-debian-{DEBIAN_SUITE}"
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        apt_dir / "sources.list",
        f"deb [signed-by={DEBIAN_KEYRING}] {DEBIAN_MIRROR} {DEBIAN_SUITE} main\n",
    )
    opts = _apt_options(apt_dir)
    _run(["apt-get", *opts, "-qq", "update"])
    with tempfile.TemporaryDirectory(dir=root, prefix=".vulkan-headers-") as tmp:
        work = Path(tmp)
        (work / "debs").mkdir()
        _run(["apt-get", *opts, "-qq", "download", *PACKAGES], cwd=work / "debs")
        unpack = work / "unpacked"
        packages = []
        for deb in sorted((work / "debs").glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(unpack)])
            name = _run(["dpkg-deb", "-f", str(deb), "Package"]).strip()
            version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
            digest = hashlib.sha256(deb.read_bytes()).hexdigest()
            packages.append({"name": name, "version": version, "sha256": digest})
        got = header_version(unpack / "usr" / "include")
        if got is None:
            raise VulkanHeadersError(
                f"the downloaded {', '.join(PACKAGES)} hold no {HEADER}; Debian changed the "
                "package layout"
            )
        if got < minimum:
            raise VulkanHeadersError(
                f"Debian {DEBIAN_SUITE}'s headers are {format_version(got)}, older than "
                f"{format_version(minimum)}"
            )
        vk = next(p for p in packages if p["name"] == "libvulkan-dev")
        meta = {
            "version": format_version(got),
            "source": f"Debian {DEBIAN_SUITE} libvulkan-dev {vk['version']}",
            "packages": packages,
        }
        atomic_write_json(unpack / "toolchain.json", meta)
        final = root / f"vulkan-headers-debian-{DEBIAN_SUITE}-{format_version(got)}"
        publish_dir(unpack, final)
    shutil.rmtree(apt_dir, ignore_errors=True)  # ~20 MB of package lists, not needed again
    headers = _read_meta(final / "toolchain.json")
    assert headers is not None
    return headers


# --------------------------------------------------------------------------- the step


def too_old_message(have: Headers | None, minimum: Version, version: str) -> str:
    """One sentence: which headers are here and what llama.cpp needs."""
    need = format_version(minimum)
    pin = f"llama-cpp-python {version}" if version else "the pinned llama-cpp-python"
    if have is None:
        return f"no Vulkan headers ({HEADER}) found; {pin} needs >= {need}"
    return (
        f"the Vulkan headers in {have.include} are {have.version_str}, too old for "
        f"{pin}, which needs >= {need} (its ggml-vulkan uses "
        "VK_EXT_layer_settings; older headers fail with "
        "\"'LayerSettingEXT' is not a member of 'vk'\")"
    )


FIX = (
    "use the `vulkan` variant's toolchain (it fetches Debian trixie's libvulkan-dev headers "
    "into the harness cache; needs apt-get and debian-archive-keyring), or install newer "
    "headers (the LunarG Vulkan SDK with $VULKAN_SDK set, or libvulkan-dev >= {need} from "
    "your distribution) and pass -DVulkan_INCLUDE_DIR=<dir> in CMAKE_ARGS"
)


def explicit_include(args: list[str]) -> Path | None:
    """A ``-DVulkan_INCLUDE_DIR=...`` the variant already sets."""
    value = None
    for arg in args:
        match = re.match(r"-DVulkan_INCLUDE_DIR(?::[A-Za-z]+)?=(.*)$", arg)
        if match:
            value = Path(match.group(1))
    return value


def resolve(args: list[str], minimum: Version, *, fetch: bool = True) -> Headers:
    """The headers a build of these CMake args will use: explicit, system, cached, fetched."""
    explicit = explicit_include(args)
    if explicit is not None:
        version = header_version(explicit)
        if version is None:
            raise VulkanHeadersError(
                f"-DVulkan_INCLUDE_DIR={explicit}: no {HEADER} there; fix: point it at the "
                "folder that holds vulkan/vulkan_core.h"
            )
        return Headers(include=explicit, version=version, source=f"-DVulkan_INCLUDE_DIR={explicit}")
    system = system_headers()
    forced = os.environ.get(FORCE_ENV, "").strip().lower() == "debian"
    if system is not None and system.version >= minimum and not forced:
        return system
    cached = cached_headers(minimum)
    if cached is not None:
        return cached
    if not fetch:
        raise VulkanHeadersError("not fetched yet")
    return fetch_headers(minimum)


def vulkan_cmake_args(
    args: list[str], minimum: Version, version: str
) -> tuple[list[str], list[str], str]:
    """(extra CMake args, notes, identity for the cache key) for a ``toolchain: vulkan`` variant.

    Raises VulkanHeadersError (too old, and no newer headers could be had) with the fix."""
    system = system_headers()
    try:
        headers = resolve(args, minimum)
    except VulkanHeadersError as exc:
        need = format_version(minimum)
        raise VulkanHeadersError(
            f"{too_old_message(system, minimum, version)}; fetching newer ones failed: {exc}. "
            f"Fix: {FIX.format(need=need)}"
        ) from exc
    if headers.version < minimum:
        need = format_version(minimum)
        raise VulkanHeadersError(
            f"{too_old_message(headers, minimum, version)}. Fix: {FIX.format(need=need)}"
        )
    extra: list[str] = []
    notes = [f"Vulkan headers {headers.version_str} ({headers.source})"]
    if headers.packages:
        extra.append(f"-DVulkan_INCLUDE_DIR={headers.include}")
        if headers.spirv_cmake_dir is not None:
            extra.append(f"-DSPIRV-Headers_DIR={headers.spirv_cmake_dir}")
        if system is not None:
            notes.append(f"the system's {system.version_str} in {system.include} are too old")
    return extra, notes, identity(headers)


def identity(headers: Headers) -> str:
    """What the wheel-cache key records about the headers."""
    text = f"{headers.version_str} {headers.source}"
    for name, version, digest in headers.packages:
        text += f"; {name} {version} sha256:{digest[:16]}"
    return text
