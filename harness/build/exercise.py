"""Run an installed llama-cpp-python build in a child process and explain a native crash.

The child (the test session's interpreter) prints ``llama_print_system_info()`` first, then
loads a small model and decodes a few tokens. If it dies by a signal, the result says
"crashed in native code: SIGSEGV (signal 11)" with the likely cause (for example llama.cpp's
AMX path in a ``-march=native`` build, ggml-org/llama.cpp#20824) and the last lines of its
stderr, where ``faulthandler`` has put the Python traceback.

``python -m harness.build.exercise --python PY --model GGUF [--n-gpu-layers N] [--json]`` runs it
from the command line (exit status 0 ok, 1 failed, 2 crashed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MARK = "LLAMA_HARNESS_EXERCISE "

#: The child's program: print system info (flushed, so it survives a crash), load, decode.
SNIPPET = r"""
import faulthandler, json, os, sys, time
faulthandler.enable()
MARK = "LLAMA_HARNESS_EXERCISE "
def say(kind, **data):
    data["kind"] = kind
    print(MARK + json.dumps(data), flush=True)
import llama_cpp
info = llama_cpp.llama_print_system_info()
info = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
say("system_info", system_info=info, version=getattr(llama_cpp, "__version__", None),
    gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()))
model, n_gpu_layers, n_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
llm = llama_cpp.Llama(model_path=model, n_gpu_layers=n_gpu_layers, n_ctx=256, n_batch=64,
                      n_threads=max(1, min(4, os.cpu_count() or 1)), seed=1, verbose=True)
say("loaded", seconds=time.perf_counter() - t0)
t0 = time.perf_counter()
out = llm.create_completion("Hello, world. Once upon a time", max_tokens=n_tokens, temperature=0.0)
usage = out.get("usage", {})
say("decoded", seconds=time.perf_counter() - t0, text=out["choices"][0]["text"],
    completion_tokens=usage.get("completion_tokens"))
"""


@dataclass
class ExerciseResult:
    status: str  # "ok", "crashed", "failed", "timeout"
    returncode: int | None
    signal: str | None = None
    message: str = ""
    cause: str = ""
    fix: str = ""
    system_info: str = ""
    stages: list[str] = field(default_factory=list)
    completion_tokens: int | None = None
    stderr_tail: list[str] = field(default_factory=list)
    #: layers llama.cpp offloaded / the model's layers (output layer included), counted from
    #: the child's load log like the client's load report; None when the log did not say
    offloaded_layers: int | None = None
    total_layers: int | None = None
    offload_backend: str = ""

    @property
    def all_offloaded(self) -> bool:
        """Every layer went to the GPU backend (False when the load log did not say)."""
        return bool(self.total_layers) and self.offloaded_layers == self.total_layers

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [self.message]
        if self.cause:
            lines.append(f"  likely cause: {self.cause}")
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        if self.stderr_tail and not self.ok:
            lines.append("  last stderr lines:")
            lines += [f"    {ln}" for ln in self.stderr_tail]
        return "\n".join(lines)


def signal_of(returncode: int | None) -> int | None:
    """The signal that killed a child (``-N`` from subprocess, ``128+N`` from a shell)."""
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    if 128 < returncode < 128 + 65:
        return returncode - 128
    return None


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def likely_cause(signum: int, system_info: str, stderr: str) -> tuple[str, str]:
    """(cause, fix) for a native crash, from what the child printed and this CPU."""
    amx_build = bool(re.search(r"AMX_INT8 = 1", system_info))
    amx_cpu = any(f.startswith("amx") for f in cpu_flags())
    if signum in (signal.SIGSEGV, signal.SIGILL, signal.SIGBUS) and (
        amx_build or "amx" in stderr.lower()
    ):
        where = "this CPU lists AMX" if amx_cpu else "/proc/cpuinfo does not list AMX"
        return (
            "llama.cpp's AMX path (ggml_backend_amx_mul_mat) compiled in by -march=native "
            f"(system info: AMX_INT8 = 1; {where}) faults on the first decode of a quantized "
            "model: upstream issue ggml-org/llama.cpp#20824",
            "use the portable `cpu` variant (CMAKE_ARGS=-DGGML_NATIVE=OFF), or build without "
            "AMX (-DGGML_NATIVE=OFF -DGGML_AVX512=ON ...)",
        )
    if signum == signal.SIGILL:
        return (
            "the build uses CPU instructions this CPU lacks (a -march=native or AVX-512 build "
            "from another machine)",
            "use the portable `cpu` variant (-DGGML_NATIVE=OFF) or build on this machine",
        )
    if "CUDA error" in stderr or "cuda" in stderr.lower():
        return (
            "a CUDA error in the backend (see the stderr lines: driver/runtime mismatch, "
            "missing kernel image for this GPU's architecture, out of memory)",
            "run `llama-harness doctor` in this environment",
        )
    return (
        "a crash inside llama.cpp's native code (see the Python traceback faulthandler printed)",
        "run `llama-harness doctor`; try the portable `cpu` variant to rule out CPU-specific code",
    )


def parse_child(stdout: str) -> list[dict[str, Any]]:
    events = []
    for line in stdout.splitlines():
        if line.startswith(MARK):
            try:
                events.append(json.loads(line[len(MARK) :]))
            except ValueError:
                continue
    return events


def exercise(
    python: str,
    model: Path,
    *,
    n_gpu_layers: int = 0,
    n_tokens: int = 8,
    timeout: float = 300.0,
    tail: int = 20,
    snippet: str = SNIPPET,
    env: Mapping[str, str] | None = None,
) -> ExerciseResult:
    """Load ``model`` and decode ``n_tokens`` tokens with ``python``'s llama_cpp, in a child.

    ``snippet`` is the child's program (argv: model, n_gpu_layers, n_tokens); it reports
    progress as ``LLAMA_HARNESS_EXERCISE {json}`` lines on stdout. ``env`` is added to this
    process's environment for the child (e.g. ``GGML_VK_VISIBLE_DEVICES``).
    """
    cmd = [python, "-X", "faulthandler", "-c", snippet, str(model), str(n_gpu_layers),
           str(n_tokens)]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              errors="replace", env={**os.environ, **(env or {})})  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return ExerciseResult(
            status="timeout",
            returncode=None,
            message=f"the build did not finish decoding {n_tokens} tokens in {timeout:.0f} s",
            fix="run `llama-harness doctor`; check the thread count and the model",
            stderr_tail=err.splitlines()[-tail:],
        )
    return interpret(proc.returncode, proc.stdout, proc.stderr, tail=tail)


def interpret(returncode: int, stdout: str, stderr: str, *, tail: int = 20) -> ExerciseResult:
    events = parse_child(stdout)
    stages = [str(e.get("kind")) for e in events]
    info = next((str(e.get("system_info", "")) for e in events if e.get("kind") == "system_info"),
                "")  # fmt: skip
    decoded = next((e for e in events if e.get("kind") == "decoded"), None)
    err_lines = [ln for ln in stderr.splitlines() if ln.strip()]
    signum = signal_of(returncode)
    stage = {
        0: "while importing llama_cpp",
        1: "while loading the model",
        2: "on the first decode",
    }.get(len(stages), "after decoding")
    if signum is not None:
        cause, fix = likely_cause(signum, info, stderr)
        return ExerciseResult(
            status="crashed",
            returncode=returncode,
            signal=signal_name(signum),
            message=f"crashed in native code: {signal_name(signum)} (signal {signum}) {stage}",
            cause=cause,
            fix=fix,
            system_info=info,
            stages=stages,
            stderr_tail=err_lines[-tail:],
        )
    if returncode != 0 or decoded is None:
        return ExerciseResult(
            status="failed",
            returncode=returncode,
            message=f"the build failed {stage} (exit code {returncode})",
            fix="read the last stderr lines; run `llama-harness doctor`",
            system_info=info,
            stages=stages,
            stderr_tail=err_lines[-tail:],
        )
    tokens = decoded.get("completion_tokens")
    from saiverse_llm.native import parse_load_log

    load = parse_load_log(err_lines)
    total = int(load["n_layers_total"]) or None
    offloaded = int(load["n_layers_offloaded"]) if total else None
    where = ""
    if total and offloaded:
        where = f" (offloaded {offloaded}/{total} layers to {load['backend']})"
    elif total:
        where = f" (0/{total} layers offloaded: all on the CPU)"
    return ExerciseResult(
        status="ok",
        returncode=0,
        message=f"loaded the model{where} and decoded {tokens} tokens",
        system_info=info,
        stages=stages,
        completion_tokens=tokens if isinstance(tokens, int) else None,
        stderr_tail=err_lines[-tail:],
        offloaded_layers=offloaded,
        total_layers=total,
        offload_backend=str(load["backend"]) if offloaded else "",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.build.exercise",
        description="Load a model and decode a few tokens in a child process; explain crashes.",
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter with llama_cpp")
    parser.add_argument("--model", type=Path, required=True, help="GGUF file to load")
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = exercise(args.python, args.model, n_gpu_layers=args.n_gpu_layers,
                      n_tokens=args.tokens)  # fmt: skip
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return {"ok": 0, "crashed": 2}.get(result.status, 1)


if __name__ == "__main__":
    sys.exit(main())
