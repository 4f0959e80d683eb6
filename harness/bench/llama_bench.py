"""llama.cpp's own ``llama-bench``, built from the same sdist as the Python package.

Parity is only meaningful when both sides run the same machine code with the same settings,
so ``llama-bench`` is compiled in the wheel's own build tree (it links the very libraries the
wheel was made of) and run with llama-cpp-python's defaults spelled out:
``-fa 0`` (llama-bench defaults to ``auto``), ``-b 512 -ub 512`` (llama-bench: 2048/512) and an
explicit ``-t`` (llama-bench: physical cores; llama-cpp-python: cpu_count // 2).

Steps (each takes the previous result):
``harness.build.native_tools.ensure(variant, ["llama-bench"])`` (built once in the wheel's own build
tree and cached beside the wheel: same sdist, same flags, same key; no second compile of
llama.cpp) -> ``run(...)`` per model -> ``write_results(...)`` to
``reports_dir()/<variant>/llama-bench.json``, which :mod:`harness.bench.report` reads.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import paths
from harness.build import native_tools
from harness.build.native_tools import NativeTools
from saiverse_llm.atomic import atomic_write_json
from saiverse_llm.config import GGML_MAX_N_THREADS
from saiverse_llm.redact import redact_obj
from saiverse_llm.user_errors import env_int

TOOL = "llama-bench"
ENV_THREADS = "LLAMA_HARNESS_N_THREADS"


class LlamaBenchError(RuntimeError):
    """Building or running llama-bench failed; the message names the cause and the fix."""


# --------------------------------------------------------------------------- settings


def default_threads() -> int:
    """Cores this process may run on (``sched_getaffinity``), the thread count both sides use."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _env_int(
    env: Mapping[str, str], name: str, default: int, *, minimum: int = 1, maximum: int = 1 << 20
) -> int:
    """``$name`` as a whole number in ``minimum..maximum`` (``default`` when unset); otherwise a
    :class:`~saiverse_llm.user_errors.SettingError` (usage, exit 2) naming it and the range."""
    value = env_int(
        name,
        default=default,
        bounds=(minimum, maximum),
        fix=f"set it to a whole number from {minimum:,} to {maximum:,}, or unset it "
        f"(default {default})",
        env=env,
    )
    return default if value is None else value


@dataclass(frozen=True)
class BenchSettings:
    """The llama-bench test shape, shared by benchmarks/ and the llama-bench run.

    Environment overrides: ``LLAMA_HARNESS_N_THREADS``, ``LLAMA_HARNESS_N_BATCH`` (also
    n_ubatch), ``LLAMA_HARNESS_N_PROMPT``, ``LLAMA_HARNESS_N_GEN``, ``LLAMA_HARNESS_BENCH_REPS``.
    """

    n_threads: int
    n_batch: int = 512
    n_ubatch: int = 512
    n_prompt: int = 512
    n_gen: int = 128
    reps: int = 5
    flash_attn: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BenchSettings:
        env = os.environ if env is None else env
        n_batch = _env_int(env, "LLAMA_HARNESS_N_BATCH", 512)
        return cls(
            n_threads=_env_int(env, ENV_THREADS, default_threads(), maximum=GGML_MAX_N_THREADS),
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_prompt=_env_int(env, "LLAMA_HARNESS_N_PROMPT", 512),
            n_gen=_env_int(env, "LLAMA_HARNESS_N_GEN", 128),
            reps=_env_int(env, "LLAMA_HARNESS_BENCH_REPS", 5, maximum=1000),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- build


def build(
    variant: str = "cpu", *, force: bool = False, say: Callable[[str], None] | None = None
) -> NativeTools:
    """llama-bench of ``variant``: from the wheel's tree, cached beside the wheel."""
    from harness.build.build import BuildError
    from harness.build.variants import VariantError

    try:
        return native_tools.ensure(variant, [TOOL], force=force, say=say)
    except (native_tools.NativeToolsError, BuildError, VariantError) as exc:
        raise LlamaBenchError(str(exc)) from exc


# --------------------------------------------------------------------------- run


def command(b: NativeTools, model: Path, s: BenchSettings, *, n_gpu_layers: int) -> list[str]:
    return [
        str(b.path(TOOL)),
        "-m", str(model),
        "-p", str(s.n_prompt),
        "-n", str(s.n_gen),
        "-b", str(s.n_batch),
        "-ub", str(s.n_ubatch),
        "-t", str(s.n_threads),
        "-fa", "1" if s.flash_attn else "0",
        "-ngl", str(n_gpu_layers),
        "-r", str(s.reps),
        "-o", "json",
    ]  # fmt: skip


def run(
    b: NativeTools,
    model: Path,
    s: BenchSettings,
    *,
    n_gpu_layers: int = 0,
    timeout: float = 1800.0,
) -> list[dict[str, Any]]:
    """Run llama-bench once on ``model``; its ``-o json`` records (pp and tg)."""
    cmd = command(b, model, s, n_gpu_layers=n_gpu_layers)
    env = b.env()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise LlamaBenchError(
            f"llama-bench on {model} ran over {timeout:.0f} s; fix: lower "
            "LLAMA_HARNESS_BENCH_REPS or use a smaller model"
        ) from None
    if proc.returncode != 0:
        from saiverse_llm.devices import describe_returncode

        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise LlamaBenchError(
            f"llama-bench on {model} failed: {describe_returncode(proc.returncode)}\n{tail}\n"
            f"command: {' '.join(cmd)}"
        )
    try:
        records = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise LlamaBenchError(
            f"llama-bench printed no JSON ({exc.msg}); stdout starts {proc.stdout[:200]!r}"
        ) from exc
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise LlamaBenchError(f"llama-bench JSON is not a list of records: {proc.stdout[:200]!r}")
    return records


def run_models(
    variant: str,
    models: Mapping[str, Path],
    s: BenchSettings,
    *,
    n_gpu_layers: int = 0,
    b: NativeTools | None = None,
    say: Callable[[str], None] | None = None,
    isolate_wait: float | None = None,
    isolation: str | None = None,
) -> dict[str, Any]:
    """Build (cached) and run llama-bench on every model; the llama-bench.json document.

    Each run records ``load`` (other work while it ran, harness.bench.machine_load); with
    ``isolate_wait`` it first waits (at most that many seconds) for a quiet machine."""
    from harness.bench import machine_load
    from saiverse_llm.download import sha256_file

    b = b or build(variant, say=say)
    runs = []
    for name, path in models.items():
        if say:
            args = command(b, path, s, n_gpu_layers=n_gpu_layers)[3:]
            say(f"llama-bench {variant} on {name}: {' '.join(args)}")
        if isolate_wait is not None:
            machine_load.wait_for_quiet(isolate_wait, n_threads=s.n_threads)
        probe = machine_load.LoadProbe()
        records = run(b, path, s, n_gpu_layers=n_gpu_layers)
        runs.append(
            {
                "model": name,
                "model_path": str(path),
                "model_sha256": sha256_file(path),
                "model_size": path.stat().st_size,
                "load": probe.stop().to_dict(),
                "isolation": isolation,
                "results": records,
            }
        )
    return {
        "variant": variant,
        "build_key": b.key,
        "binary": str(b.path(TOOL)),
        "binary_sha256": b.info["tools"][TOOL]["sha256"],
        "wheel_key": b.key,  # built in the wheel's own tree: the wheel's key
        "cmake_args": b.info.get("cmake_args"),
        "settings": s.to_dict(),
        "n_gpu_layers": n_gpu_layers,
        "command": " ".join(command(b, Path("MODEL"), s, n_gpu_layers=n_gpu_layers)[1:]),
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "runs": runs,
    }


def write_results(doc: Mapping[str, Any], path: Path) -> Path:
    """Write ``doc`` atomically (temp file beside it, then rename), secrets redacted."""
    return atomic_write_json(path, redact_obj(doc), ensure_ascii=True)


def results_path(variant: str) -> Path:
    return paths.reports_dir() / variant / "llama-bench.json"
