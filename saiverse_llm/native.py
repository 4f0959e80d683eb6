"""The native side: importing ``llama_cpp``, llama.cpp's own log, and what a load log says.

llama.cpp's log is captured process-wide (one callback per process) and routed to the
``saiverse_llm.llama_cpp`` logger; :meth:`NativeLog.capture` also collects the lines one
thread produces (a load), which :func:`parse_load_log` turns into layers per device.
Importing this module does not import ``llama_cpp``; :func:`llama_cpp_module` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from saiverse_llm.pool import ModelLoadError

native_logger = logging.getLogger("saiverse_llm.llama_cpp")

# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continue previous line).
_NATIVE_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING}

#: llama.cpp warnings that are harmless for this client: logged once per process at INFO with
#: what they mean, then at DEBUG (a load log still captures them as problems).
#: - full-size SWA cache: ``swa_full=true`` is the C API's default
#:   (``llama_context_default_params``, vendor/llama.cpp/src/llama-context.cpp), which
#:   llama-cpp-python 0.3.36 keeps (llama.cpp's own tools pass false): sliding-window layers
#:   keep a cache as long as n_ctx, so a later call can reuse any cached prefix. Correct output,
#:   more memory (``saiverse-llm fit`` counts it).
#: - control-looking token: the GGUF marks a token such as ``</s>`` normal; llama.cpp fixes its
#:   type while loading (llama-vocab.cpp) and says so.
HARMLESS_WARNINGS: dict[str, tuple[re.Pattern[str], str]] = {
    "swa-full": (
        re.compile(r"using full-size SWA cache"),
        "harmless: swa_full is the C API default llama-cpp-python keeps; sliding-window "
        "layers keep a cache as long as n_ctx so any cached prefix can be reused; it costs "
        "memory, which `saiverse-llm fit` counts",
    ),
    "control-token": (
        re.compile(r"control-looking token: .* was not control-type"),
        "harmless: the GGUF's token types are off and llama.cpp corrects them while loading",
    ),
}


class CapturedLog(list[str]):
    """The lines llama.cpp logged on one thread during a :meth:`NativeLog.capture`;
    ``problems`` holds those it logged as warnings or errors, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []


class NativeLog:
    """Process-wide llama.cpp log callback -> ``logging``, plus per-thread capture."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._callback: Any = None
        self._lock = threading.Lock()
        self._explained: set[str] = set()

    def install(self, llama_cpp: Any) -> None:
        """(Re)install the callback: called before every load, so code that replaced it
        (llama_cpp's own ``_logger`` does at import) cannot hide the load log from us."""
        with self._lock:
            if self._callback is None:

                @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
                def callback(level: int, text: bytes | None, user_data: Any) -> None:
                    with contextlib.suppress(Exception):  # never raise into C
                        self._on_log(int(level), (text or b"").decode("utf-8", "replace"))

                self._callback = callback
            llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: str) -> None:
        local = self._local
        if level == 5:
            level = getattr(local, "level", 2)
        local.level = level
        buf = getattr(local, "buf", "") + text
        while "\n" in buf:
            line, buf = buf.split("\n", 1)
            capture: CapturedLog | None = getattr(local, "capture", None)
            if capture is not None:
                capture.append(line)
                if level in (3, 4) and line.strip():
                    capture.problems.append(line.strip())
            self._emit(_NATIVE_LEVELS.get(level, logging.ERROR), line)
        local.buf = buf

    def _emit(self, level: int, line: str) -> None:
        if level == logging.WARNING:
            for key, (pattern, meaning) in HARMLESS_WARNINGS.items():
                if pattern.search(line):
                    if key in self._explained:
                        native_logger.debug("%s", line)
                    else:
                        self._explained.add(key)
                        native_logger.info("%s (%s)", line.strip(), meaning)
                    return
        native_logger.log(level, "%s", line)

    @contextlib.contextmanager
    def capture(self) -> Iterator[CapturedLog]:
        """Collect what llama.cpp logs on this thread inside the ``with`` block."""
        previous = getattr(self._local, "capture", None)
        lines = CapturedLog()
        self._local.capture = lines
        try:
            yield lines
        finally:
            self._local.capture = previous


native_log = NativeLog()


def missing_llama_cpp_fix() -> str:
    """What to run when ``llama_cpp`` cannot be imported by this interpreter."""
    return (
        "install a verified build into this Python: `llama-harness install cpu --python "
        f"{sys.executable}` (or another variant: `llama-harness variants` lists them)"
    )


def llama_cpp_module() -> Any:
    """``import llama_cpp``, with the log callback installed; a missing build is a
    :class:`ModelLoadError` that says which command installs one."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelLoadError(
            f"llama-cpp-python is not installed in {sys.executable} ({exc}). "
            f"Fix: {missing_llama_cpp_fix()}"
        ) from exc
    native_log.install(llama_cpp)
    return llama_cpp


def gpu_free_bytes() -> int | None:
    """Free memory of the GPU devices llama.cpp sees
    (:func:`saiverse_llm.devices.loaded_devices`, the one device probe), summed, in bytes;
    None when there is no GPU device or ggml lacks the device API."""
    from saiverse_llm.devices import loaded_devices

    try:
        devices = loaded_devices()
    except (ImportError, AttributeError, OSError):
        return None
    gpus = [d for d in devices if d.type in ("GPU", "IGPU")]
    return sum(d.memory_free for d in gpus) if gpus else None


_LAYER_RE = re.compile(r"layer\s+(\d+) assigned to device ([^,\s]+)")
_OFFLOADED_RE = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_DEVICE_RE = re.compile(r"using device (\S+) \((.*?)\)")
_BUFFER_RE = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")


def _backend_of(device: str) -> str:
    name = device.upper()
    for prefix, backend in (
        ("CUDA", "CUDA"),
        ("MTL", "METAL"),
        ("METAL", "METAL"),
        ("VULKAN", "VULKAN"),
        ("ROCM", "HIP"),
        ("HIP", "HIP"),
        ("SYCL", "SYCL"),
        ("BLAS", "BLAS"),
    ):
        if name.startswith(prefix):
            return backend
    return "CPU" if name.startswith("CPU") else name.rstrip("0123456789")


def parse_load_log(lines: Sequence[str]) -> dict[str, Any]:
    """Layers per device, offload count, devices and weight buffers from llama.cpp's load log.

    ``load_tensors: layer N assigned to device X`` (one line per layer incl. the output
    layer) is authoritative; ``offloaded N/M layers to GPU`` is used when those are absent."""
    layers: dict[int, str] = {}
    devices: list[dict[str, str]] = []
    buffers: dict[str, float] = {}
    offloaded_line: tuple[int, int] | None = None
    for line in lines:
        if m := _LAYER_RE.search(line):
            layers[int(m.group(1))] = m.group(2)
        elif m := _OFFLOADED_RE.search(line):
            offloaded_line = (int(m.group(1)), int(m.group(2)))
        elif m := _DEVICE_RE.search(line):
            devices.append({"name": m.group(1), "description": m.group(2)})
        elif m := _BUFFER_RE.search(line):
            buffers[m.group(1)] = buffers.get(m.group(1), 0.0) + float(m.group(2))
    if layers:
        total = len(layers)
        gpu_devices = [d for d in layers.values() if _backend_of(d) != "CPU"]
        offloaded = len(gpu_devices)
        backend = _backend_of(gpu_devices[0]) if gpu_devices else "CPU"
    elif offloaded_line is not None:
        offloaded = offloaded_line[0] if devices else 0
        total = offloaded_line[1]
        backend = _backend_of(devices[0]["name"]) if devices and offloaded else "CPU"
    else:
        offloaded, total, backend = 0, 0, "CPU"
    return {
        "n_layers_offloaded": offloaded,
        "n_layers_total": total,
        "backend": backend,
        "devices": devices or [{"name": "CPU", "description": "host CPU"}],
        "layer_devices": [layers[i] for i in sorted(layers)],
        "buffers_mib": buffers,
    }


_MEMORY_RE = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size =\s+([\d.]+) MiB")


def parse_memory_log(lines: Sequence[str]) -> dict[str, dict[str, float]]:
    """llama.cpp's buffer lines of a load log, MiB per kind and buffer:
    ``{"model": {"CPU_Mapped": 235.16, "CPU_REPACK": 12.66}, "kv": {"CPU": 576.0},
    "compute": {"CPU": 514.5}, "output": {"CPU": 1.0}}`` (a sliding-window model logs two
    KV buffers per device; they are added)."""
    out: dict[str, dict[str, float]] = {"model": {}, "kv": {}, "compute": {}, "output": {}}
    for line in lines:
        for m in _MEMORY_RE.finditer(line):
            kind = m.group(2).lower()
            out[kind][m.group(1)] = out[kind].get(m.group(1), 0.0) + float(m.group(3))
    return out
