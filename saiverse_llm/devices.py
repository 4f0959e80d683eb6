"""THE device probes: what GPUs this machine has, and what devices a llama.cpp build sees.

Two views, one home:

* the NVIDIA driver's, from ``nvidia-smi`` (:func:`query_nvidia`, :func:`nvidia_gpu_lines`,
  :func:`nvidia_smi_found`): GPU names, driver version, compute capability, memory, the
  driver's CUDA version. No other module runs ``nvidia-smi``.
* llama.cpp's, from the ggml backend registry (:func:`ggml_devices`, called through ctypes on
  ``llama_cpp._ggml.libggml``; :func:`backend_devices_in_subprocess` does it in another
  interpreter): each device's backend (CPU, CUDA, METAL, VULKAN, ...), type and free/total
  memory in bytes.

It lives in ``saiverse_llm`` because both packages need it (``saiverse-llm fit`` plans for the
free GPU memory; the harness's build inspection, doctor, verification and reports use the same
probes) and ``harness`` depends on ``saiverse_llm``, never the reverse. It needs only the
standard library and no other project module, so :func:`child_command` can load it by file
path into an interpreter that holds nothing but llama-cpp-python (``harness.build.buildinfo`` runs
that way). The Vulkan loader's own view (``vulkaninfo``) is the Vulkan variant's business and
stays in ``harness/build/vulkan_devices.py``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: ``run(cmd) -> CompletedProcess | None`` (None: it could not run or timed out); the doctor
#: passes its own to the probes.
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str] | None"]

NVIDIA_SMI = "nvidia-smi"


def run_quiet(cmd: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str] | None:
    """Run ``cmd`` capturing text output; None when it cannot start or times out."""
    try:
        return subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------- nvidia-smi


def nvidia_smi_found() -> bool:
    """Whether ``nvidia-smi`` (the NVIDIA driver's tool) is on PATH."""
    return shutil.which(NVIDIA_SMI) is not None


@dataclass(frozen=True)
class NvidiaGpu:
    """One row of ``nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total``."""

    name: str  # "NVIDIA H100 80GB HBM3"
    driver: str  # "580.95.05"
    compute_cap: str  # "9.0"; "" when the driver does not report it
    memory_total: str  # "81559 MiB", as nvidia-smi prints it

    @property
    def compute_cap_number(self) -> int | None:
        """``9.0`` -> 90 (CMake's CUDA architecture number), None when not ``major.minor``."""
        m = re.fullmatch(r"(\d+)\.(\d+)", self.compute_cap)
        return int(m.group(1)) * 10 + int(m.group(2)) if m else None


@dataclass(frozen=True)
class NvidiaSmi:
    """What ``nvidia-smi`` says about this machine.

    ``found``: it is on PATH. ``error``: its GPU query failed (its message, or ``timeout``);
    ``gpus`` is then empty. ``header_read``: the plain ``nvidia-smi`` header was read (only
    when asked); ``cuda_version`` is the driver's "CUDA Version" from it, None when absent.
    """

    found: bool
    gpus: tuple[NvidiaGpu, ...] = ()
    error: str | None = None
    header_read: bool = False
    cuda_version: str | None = None


_QUERY = ["--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv,noheader"]


def query_nvidia(run: Runner = run_quiet, *, header: bool = False) -> NvidiaSmi:
    """Ask ``nvidia-smi`` for every GPU's name, driver, compute capability and memory (and,
    with ``header``, the driver's CUDA version from its header). Never raises."""
    if not nvidia_smi_found():
        return NvidiaSmi(found=False)
    proc = run([NVIDIA_SMI, *_QUERY])
    if proc is None or proc.returncode != 0:
        error = (proc.stderr or proc.stdout).strip() if proc is not None else "timeout"
        return NvidiaSmi(found=True, error=error)
    gpus = []
    for line in proc.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            gpus.append(NvidiaGpu(parts[0], parts[1], parts[2], parts[3]))
    if not header:
        return NvidiaSmi(found=True, gpus=tuple(gpus))
    head = run([NVIDIA_SMI])
    read = head is not None and head.returncode == 0
    m = re.search(r"CUDA Version:\s*([\d.]+)", head.stdout) if head is not None and read else None
    return NvidiaSmi(
        found=True,
        gpus=tuple(gpus),
        header_read=read,
        cuda_version=m.group(1) if m else None,
    )


def nvidia_gpu_lines(run: Runner = run_quiet) -> tuple[str, ...]:
    """The ``GPU 0: NVIDIA H100 ... (UUID: ...)`` lines of ``nvidia-smi -L``; empty without a
    driver or a GPU."""
    if not nvidia_smi_found():
        return ()
    proc = run([NVIDIA_SMI, "-L"])
    if proc is None or proc.returncode != 0:
        return ()
    return tuple(line.strip() for line in proc.stdout.splitlines() if line.startswith("GPU "))


def machine_gpus(run: Runner = run_quiet) -> tuple[str, ...]:
    """The GPUs a GPU build of llama.cpp could use on this machine, one line each: NVIDIA's
    (:func:`nvidia_gpu_lines`) and, on Apple silicon, its Metal GPU. Empty on a machine
    without one (a CPU-only build is then the right build; Mesa's llvmpipe is no GPU)."""
    import platform

    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return ("Apple silicon GPU (Metal)",)
    return nvidia_gpu_lines(run)


# --------------------------------------------------------------------------- ggml devices

# ggml backend registry names -> the canonical names used across the project.
BACKEND_ALIASES = {
    "MTL": "METAL",
    "METAL": "METAL",
    "ROCM": "HIP",
    "HIP": "HIP",
    "CUDA": "CUDA",
    "VULKAN": "VULKAN",
    "BLAS": "BLAS",
    "SYCL": "SYCL",
    "CPU": "CPU",
    "OPENCL": "OPENCL",
    "CANN": "CANN",
    "MUSA": "MUSA",
    "RPC": "RPC",
    "WEBGPU": "WEBGPU",
    "ZENDNN": "ZENDNN",
    "OPENVINO": "OPENVINO",
    "HEXAGON": "HEXAGON",
}
_DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL"}


def canonical_backend(name: str) -> str:
    """A ggml registry or system-info name as the project spells it (``MTL`` -> ``METAL``)."""
    key = name.strip().upper()
    return BACKEND_ALIASES.get(key, key)


@dataclass(frozen=True)
class BackendDevice:
    """One ggml backend device (``ggml_backend_dev_*``); memory in bytes."""

    name: str
    description: str
    type: str  # CPU, GPU, IGPU, ACCEL
    backend: str  # the registry it belongs to, canonical (CPU, CUDA, METAL, ...)
    memory_free: int
    memory_total: int

    @property
    def is_gpu(self) -> bool:
        return self.type in ("GPU", "IGPU")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackendDevice:
        return cls(
            name=str(data.get("name", "")),
            description=str(data.get("description", "")),
            type=str(data.get("type", "")),
            backend=str(data.get("backend", "")),
            memory_free=int(data.get("memory_free", 0)),
            memory_total=int(data.get("memory_total", 0)),
        )


def ggml_devices(lib: Any) -> tuple[list[str], list[BackendDevice]]:
    """(registry names, devices) of a loaded ggml library (``llama_cpp._ggml.libggml``),
    enumerated through ctypes; llama-cpp-python binds none of these functions."""
    vp = ctypes.c_void_p

    def fn(name: str, restype: Any, argtypes: list[Any]) -> Any:
        f = lib[name]  # __getitem__ gives a fresh function object: llama_cpp's stay untouched
        f.restype = restype
        f.argtypes = argtypes
        return f

    reg_count = fn("ggml_backend_reg_count", ctypes.c_size_t, [])
    reg_get = fn("ggml_backend_reg_get", vp, [ctypes.c_size_t])
    reg_name = fn("ggml_backend_reg_name", ctypes.c_char_p, [vp])
    dev_count = fn("ggml_backend_dev_count", ctypes.c_size_t, [])
    dev_get = fn("ggml_backend_dev_get", vp, [ctypes.c_size_t])
    dev_name = fn("ggml_backend_dev_name", ctypes.c_char_p, [vp])
    dev_desc = fn("ggml_backend_dev_description", ctypes.c_char_p, [vp])
    dev_type = fn("ggml_backend_dev_type", ctypes.c_int, [vp])
    dev_reg = fn("ggml_backend_dev_backend_reg", vp, [vp])
    dev_memory = fn(
        "ggml_backend_dev_memory",
        None,
        [vp, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
    )

    def text(raw: bytes | None) -> str:
        return raw.decode("utf-8", "replace") if raw else ""

    registries = [text(reg_name(reg_get(i))) for i in range(int(reg_count()))]
    devices: list[BackendDevice] = []
    for i in range(int(dev_count())):
        dev = dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        devices.append(
            BackendDevice(
                name=text(dev_name(dev)),
                description=text(dev_desc(dev)),
                type=_DEVICE_TYPES.get(int(dev_type(dev)), str(dev_type(dev))),
                backend=canonical_backend(text(reg_name(dev_reg(dev)))),
                memory_free=int(free.value),
                memory_total=int(total.value),
            )
        )
    return registries, devices


def loaded_devices() -> list[BackendDevice]:
    """The devices of the ``llama_cpp`` importable here (imports it: a native crash in the
    library would end this process; :func:`backend_devices_in_subprocess` is the safe way)."""
    from llama_cpp import _ggml  # a submodule: `import llama_cpp` alone does not bind it

    return ggml_devices(_ggml.libggml)[1]


# --------------------------------------------------------------------------- child processes


class DeviceProbeError(RuntimeError):
    """A probe in another interpreter failed (crash, timeout, no JSON)."""


def describe_returncode(code: int) -> str:
    """``exited with status 1`` / ``was killed by SIGSEGV`` for a child's return code."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


# Loads this file as ``saiverse_llm.devices`` (argv[1]), then runs the script argv[2] as
# __main__ with the rest as its argv: neither the project nor the site-packages it is
# installed in goes onto the child's sys.path.
_BOOTSTRAP = (
    "import importlib.util as u, runpy, sys; "
    "s = u.spec_from_file_location('saiverse_llm.devices', sys.argv[1]); "
    "m = u.module_from_spec(s); "
    "sys.modules.setdefault('saiverse_llm.devices', m); s.loader.exec_module(m); "
    "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def child_command(python: str, script: str | Path, *args: str) -> list[str]:
    """A command running ``script`` (a module that needs only the standard library and this
    one) as ``__main__`` in ``python``, by file path: it works in any interpreter (a bare venv
    holding nothing but llama-cpp-python, another Python version)."""
    here = str(Path(__file__).resolve())
    return [python, "-c", _BOOTSTRAP, here, str(Path(script).resolve()), *args]


def backend_devices_in_subprocess(python: str, *, timeout: float = 120.0) -> list[BackendDevice]:
    """The ggml devices ``python``'s llama_cpp sees, enumerated in that interpreter.

    Raises :class:`DeviceProbeError` when the child cannot run, crashes (e.g. SIGILL while
    loading the library), times out or prints no JSON (llama_cpp missing: its message).
    """
    cmd = child_command(python, __file__, "--json")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except OSError as exc:
        raise DeviceProbeError(f"{python}: cannot run ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise DeviceProbeError(f"{python}: the device probe took over {timeout:.0f} s") from exc
    tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
    if proc.returncode != 0:
        raise DeviceProbeError(
            f"{python}: the device probe {describe_returncode(proc.returncode)}: {tail}"
        )
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise DeviceProbeError(f"{python}: the device probe printed no JSON ({exc})") from exc
    return [BackendDevice.from_dict(d) for d in data.get("devices", [])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m saiverse_llm.devices",
        description="List this machine's NVIDIA GPUs and the ggml devices llama_cpp sees here.",
    )
    parser.add_argument("--json", action="store_true", help="ggml devices as JSON only")
    args = parser.parse_args(argv)
    try:
        found = loaded_devices()
        problem = None
    except Exception as exc:  # not installed, or a broken library (OSError from the loader)
        found, problem = [], f"{type(exc).__name__}: {exc}"
    if args.json:
        print(json.dumps({"devices": [d.to_dict() for d in found], "import_error": problem}))
        return 0
    smi = query_nvidia(header=True)
    if not smi.found:
        print("nvidia-smi    not found")
    for gpu in smi.gpus:
        print(f"nvidia-smi    {gpu.name}, driver {gpu.driver}, {gpu.memory_total}")
    if problem:
        print(f"llama_cpp     not importable: {problem}")
    for dev in found:
        print(f"ggml device   {dev.name} [{dev.type}/{dev.backend}] {dev.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
