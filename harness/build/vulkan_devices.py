"""The Vulkan devices of this machine (``vulkaninfo --summary``) and which of them are software.

Mesa's llvmpipe (and lavapipe, SwiftShader) is a real Vulkan implementation that runs on the
CPU: ``vulkaninfo`` lists it as ``PHYSICAL_DEVICE_TYPE_CPU``. llama.cpp's ggml-vulkan skips
CPU-type devices unless ``GGML_VK_VISIBLE_DEVICES`` names them, so on a machine whose only
Vulkan device is llvmpipe, :func:`runtime_env` selects it: the whole Vulkan code path then
runs (shaders, offload, results), correct but no faster than the CPU backend: not a GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache

VISIBLE_ENV = "GGML_VK_VISIBLE_DEVICES"
_SOFTWARE_NAMES = ("llvmpipe", "lavapipe", "swiftshader")
_GPU_RE = re.compile(r"^GPU(\d+):\s*$")
_FIELD_RE = re.compile(r"^\s*(\w+)\s*=\s*(.*?)\s*$")


def is_software_name(name: str) -> bool:
    """A device name of a software Vulkan implementation ("llvmpipe (LLVM 15.0.6, ...)")."""
    low = name.lower()
    return any(n in low for n in _SOFTWARE_NAMES)


@dataclass(frozen=True)
class VulkanDevice:
    index: int  # the order vkEnumeratePhysicalDevices gives, as GGML_VK_VISIBLE_DEVICES counts
    name: str  # "llvmpipe (LLVM 15.0.6, 256 bits)"
    type: str  # PHYSICAL_DEVICE_TYPE_DISCRETE_GPU / _INTEGRATED_GPU / _CPU / ...
    driver: str = ""
    api_version: str = ""

    @property
    def software(self) -> bool:
        """A CPU implementation of Vulkan (llvmpipe, lavapipe, SwiftShader)."""
        return self.type.endswith("_CPU") or is_software_name(self.name)

    def describe(self) -> str:
        kind = "software Vulkan device on the CPU, not a GPU" if self.software else (
            self.type.removeprefix("PHYSICAL_DEVICE_TYPE_").replace("_", " ").lower())  # fmt: skip
        return f"{self.name} ({kind})"


def parse_summary(text: str) -> list[VulkanDevice]:
    """Devices from ``vulkaninfo --summary`` output (its "Devices:" section)."""
    devices: list[VulkanDevice] = []
    current: dict[str, str] | None = None
    index = -1

    def flush() -> None:
        if current is not None and current.get("deviceName"):
            devices.append(
                VulkanDevice(
                    index=index,
                    name=current["deviceName"],
                    type=current.get("deviceType", ""),
                    driver=current.get("driverName", ""),
                    api_version=current.get("apiVersion", ""),
                )
            )

    for line in text.splitlines():
        head = _GPU_RE.match(line.strip())
        if head:
            flush()
            current, index = {}, int(head.group(1))
            continue
        if current is not None:
            field = _FIELD_RE.match(line)
            if field:
                current[field.group(1)] = field.group(2)
    flush()
    return devices


@cache
def list_devices() -> tuple[tuple[VulkanDevice, ...], str]:
    """(devices, "" or why none could be listed)."""
    exe = shutil.which("vulkaninfo")
    if exe is None:
        return (), "vulkaninfo not found (apt-get install vulkan-tools to list Vulkan devices)"
    try:
        proc = subprocess.run(
            [exe, "--summary"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return (), f"vulkaninfo --summary failed: {exc}"
    devices = parse_summary(proc.stdout)
    if not devices:
        tail = (proc.stderr.strip().splitlines() or ["no device listed"])[-1]
        return (), f"vulkaninfo --summary lists no Vulkan device ({tail})"
    return tuple(devices), ""


def hardware(devices: tuple[VulkanDevice, ...]) -> list[VulkanDevice]:
    return [d for d in devices if not d.software]


def runtime_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``{GGML_VK_VISIBLE_DEVICES: "<i>"}`` when the only Vulkan devices here are software
    ones (llama.cpp would skip them); empty when the user set it or a GPU is present."""
    env = os.environ if environ is None else environ
    if env.get(VISIBLE_ENV):
        return {}
    devices, _why = list_devices()
    if not devices or hardware(devices):
        return {}
    return {VISIBLE_ENV: str(devices[0].index)}


def probe() -> tuple[bool, str]:
    """For ``probe: vulkan-device``: a device present (a software one counts, named so)."""
    devices, why = list_devices()
    if not devices:
        return False, why
    gpus = hardware(devices)
    if gpus:
        return True, "; ".join(d.describe() for d in gpus)
    return True, "; ".join(d.describe() for d in devices)


def software_only() -> bool:
    """Only software Vulkan devices here (llvmpipe & co.)."""
    devices, _ = list_devices()
    return bool(devices) and not hardware(devices)
