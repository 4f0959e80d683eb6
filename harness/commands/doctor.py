"""``llama-harness doctor``: is this llama-cpp-python using the GPU, and if not, why."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness import paths
from harness.doctor import build_log
from harness.doctor.doctor import (
    DOCTOR_STEPS,
    DoctorOptions,
    render_json,
    render_markdown,
    render_text,
    run_doctor,
)
from saiverse_llm.atomic import atomic_write_text
from saiverse_llm.cli_errors import int_arg, split_fix
from saiverse_llm.config import N_GPU_LAYERS_RANGE
from saiverse_llm.progress import StepProgress
from saiverse_llm.tables import message_console
from saiverse_llm.user_errors import UsageError


def variant_python(variant: str) -> Path:
    """The interpreter of ``nox -s test-<variant>``'s environment."""
    root = paths.PROJECT_ROOT / ".nox" / f"test-{variant}"
    for rel in ("bin/python", "Scripts/python.exe"):
        if (root / rel).exists():
            return root / rel
    raise FileNotFoundError(
        f"{root}: no environment for variant {variant!r}; fix: run `nox -s test-{variant}` "
        "first (it builds/installs that variant), or pass --python PATH"
    )


def _kwargs(args: argparse.Namespace) -> dict[str, Any] | None:
    kwargs: dict[str, Any] | None = None
    if args.kwargs:
        try:
            loaded = json.loads(args.kwargs)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"--kwargs: bad JSON {args.kwargs!r} ({exc})",
                "e.g. --kwargs '{\"n_gpu_layers\": -1}'",
            ) from exc
        if not isinstance(loaded, dict):
            raise UsageError(f"--kwargs: {args.kwargs!r} is not a JSON object", "use {...}")
        kwargs = loaded
    if args.n_gpu_layers is not None:
        kwargs = dict(kwargs or {})
        kwargs["n_gpu_layers"] = args.n_gpu_layers
    return kwargs


def _read_log(path: Path) -> str:
    """A --log file's text (harness.doctor.build_log.read_log: undecodable bytes replaced, a huge
    log read as its head and tail); a UsageError names the fix for a file that is not a
    readable text log (missing, a directory, empty, binary)."""
    try:
        return build_log.read_log(path)
    except build_log.LogError as exc:
        what, fix = split_fix(str(exc))
        raise UsageError(what, fix or "pass the file you saved the output to") from exc


def run(args: argparse.Namespace) -> int:
    err = message_console(err=True)
    try:
        python = (
            str(variant_python(args.variant)) if args.variant else args.python or sys.executable
        )
    except FileNotFoundError as exc:
        what, fix = split_fix(str(exc))
        raise UsageError(what, fix or "pass --python PATH") from exc
    kwargs = _kwargs(args)
    logs = [_read_log(Path(p)) for p in args.log]
    if args.model is not None and not args.model.is_file():
        raise UsageError(f"--model {args.model}: no such file", "pass a GGUF file")
    options = DoctorOptions(
        python=python,
        probe=args.probe,
        model=args.model,
        kwargs=kwargs,
        commands=args.install_cmd,
        logs=logs,
        probe_tokens=args.tokens,
    )
    with StepProgress("doctor") as bar:
        options.progress = lambda what, done, total: bar.update(done, total, phase=what)
        report = run_doctor(options)
        bar.update(len(DOCTOR_STEPS), len(DOCTOR_STEPS))
    if args.json:
        sys.stdout.write(render_json(report) + "\n")
    else:
        sys.stdout.write(render_text(report))
    if args.markdown:
        atomic_write_text(args.markdown, render_markdown(report))
        err.print(f"report written to {args.markdown}")
    return report.exit_code


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help='explain "GPU not detected": build, driver, CUDA, pip cache, offload probe',
        description=(
            "Inspect the llama-cpp-python of an interpreter (this one, --python, or a "
            "variant's nox environment), probe GPU offload with a small model, and name the "
            "known causes (harness/doctor/causes.yaml) whose evidence is present, with the exact "
            "fix. "
            "--log reads pip -v output, scikit-build-core/CMake build logs and llama.cpp "
            "run-time logs (or a mix), finds the failing step and matches the same causes. "
            "Exit status: 0 only when the build is healthy (a GPU build that offloads, no "
            "failed build in the log, no error cause); 1 otherwise (including llama-cpp-python "
            "not installed); 2 usage."
        ),
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--variant", help="inspect .nox/test-VARIANT (created by nox)")
    where.add_argument("--python", help="inspect this interpreter (default: the current one)")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE", help="also write a Markdown report"
    )
    parser.add_argument(
        "--probe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="load a small model with n_gpu_layers=-1 and 0 and compare (default: on)",
    )
    parser.add_argument("--model", type=Path, help="GGUF for the probe (default: test model tiny)")
    parser.add_argument(
        "--tokens", type=int_arg(1, 4096), default=16, help="tokens per probe run (16)"
    )
    parser.add_argument(
        "--n-gpu-layers",
        type=int_arg(*N_GPU_LAYERS_RANGE),
        help="the n_gpu_layers your code passes to Llama()",
    )
    parser.add_argument(
        "--kwargs", help="your Llama() keyword arguments as JSON, e.g. '{\"n_gpu_layer\": -1}'"
    )
    parser.add_argument(
        "--install-cmd",
        action="append",
        default=[],
        metavar="CMD",
        help="an install command as you ran it (repeatable), e.g. 'CMAKE_ARGS=... pip install ...'",
    )
    parser.add_argument(
        "--log",
        action="append",
        default=[],
        metavar="FILE",
        help="pip -v / CMake build / llama.cpp run-time output (repeatable): the failing step "
        "and the known causes in it",
    )
    parser.set_defaults(func=run)
