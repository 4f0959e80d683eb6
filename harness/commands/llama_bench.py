"""``llama-harness llama-bench``: build llama.cpp's llama-bench from the same sdist and run it."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from saiverse_llm.cli_errors import float_arg, int_arg
from saiverse_llm.config import N_GPU_LAYERS_RANGE, N_THREADS_RANGE
from saiverse_llm.tables import message_console
from saiverse_llm.user_errors import SettingError, env_int


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "llama-bench",
        help="build (cached) and run llama.cpp's llama-bench for parity with the benchmarks",
        description=(
            "Build llama-bench in the variant's wheel build tree (the same objects and flags as "
            "the wheel; cached beside the wheel in <cache>/wheels/<key>/tools/, see "
            "`llama-harness tools`), run it on the test models with the benchmarks' settings "
            "(-fa 0 -b 512 -ub 512 -p 512 -n 128 -t N) and write "
            "<reports>/<variant>/llama-bench.json for `llama-harness report`."
        ),
    )
    p.add_argument(
        "--variant",
        default=os.environ.get("LLAMA_HARNESS_VARIANT", "cpu"),
        help="whose wheel tree builds llama-bench (default: $LLAMA_HARNESS_VARIANT or cpu)",
    )
    p.add_argument(
        "--models",
        default=os.environ.get("LLAMA_HARNESS_MODELS", "tiny,gemma-3-270m"),
        help="comma list of test-model names (default: $LLAMA_HARNESS_MODELS or tiny,gemma-3-270m)",
    )
    p.add_argument(
        "--threads",
        type=int_arg(*N_THREADS_RANGE),
        default=None,
        help="-t (default: usable cores)",
    )
    p.add_argument(
        "--reps", type=int_arg(1, 10_000), default=None, help="-r repetitions (default: 5)"
    )
    p.add_argument(
        "--n-gpu-layers",
        type=int_arg(*N_GPU_LAYERS_RANGE),
        default=None,
        help="-ngl (default: $LLAMA_HARNESS_N_GPU_LAYERS, else -1 for GPU variants, 0 otherwise)",
    )
    p.add_argument("--build-only", action="store_true", help="build (or find) it, do not run")
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument(
        "--isolate",
        action="store_true",
        default=os.environ.get("LLAMA_HARNESS_ISOLATE", "") in ("1", "true", "yes"),
        help="own scheduler group with raised weight, and wait (at most "
        "$LLAMA_HARNESS_ISOLATE_WAIT s, default 120) for a quiet machine before each model "
        "(default: $LLAMA_HARNESS_ISOLATE)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="results file (default: <reports>/<variant>/llama-bench.json)",
    )
    p.set_defaults(func=run)


def _gpu_layers(variant: str, given: int | None) -> int:
    if given is not None:
        return given
    env = env_int(
        "LLAMA_HARNESS_N_GPU_LAYERS",
        default=None,
        bounds=N_GPU_LAYERS_RANGE,
        fix="set it to -1 (all layers), 0 (CPU only) or a layer count, or unset it",
    )
    if env is not None:
        return env
    from harness.build.variants import load_variants

    v = load_variants().get(variant)
    return -1 if v is not None and v.gpu else 0


def _isolate_wait() -> float:
    raw = os.environ.get("LLAMA_HARNESS_ISOLATE_WAIT", "").strip() or "120"
    try:
        return float_arg(0, 86400)(raw)
    except argparse.ArgumentTypeError as exc:
        raise SettingError(
            "LLAMA_HARNESS_ISOLATE_WAIT", raw, "is not a number of seconds", "e.g. 120"
        ) from exc


def run(args: argparse.Namespace) -> int:
    from harness.bench import llama_bench

    console = message_console(err=True)
    settings = llama_bench.BenchSettings.from_env()
    if args.threads is not None:
        settings = dataclasses.replace(settings, n_threads=args.threads)
    if args.reps is not None:
        settings = dataclasses.replace(settings, reps=args.reps)
    ngl = _gpu_layers(args.variant, args.n_gpu_layers)  # settings checked before any build
    wait = _isolate_wait() if args.isolate else None
    b = llama_bench.build(args.variant, force=args.force, say=console.print)
    console.print(f"llama-bench: {b.path(llama_bench.TOOL)} (wheel key {b.key[:12]})")
    if args.build_only:
        return 0
    from harness.models.model_manifest import ensure_model

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    models = {n: ensure_model(n, progress=True, offline=True) for n in names}
    isolation = None
    if args.isolate:
        from harness.bench import machine_load

        isolation = machine_load.isolate()
        console.print(f"isolate: {isolation}; waiting up to {wait:.0f} s for quiet per model")
    doc = llama_bench.run_models(
        args.variant, models, settings, n_gpu_layers=ngl, b=b, say=console.print,
        isolate_wait=wait, isolation=isolation,
    )  # fmt: skip
    out = args.output or llama_bench.results_path(args.variant)
    llama_bench.write_results(doc, out)
    for r in doc["runs"]:
        for rec in r["results"]:
            test = f"pp{rec['n_prompt']}" if rec.get("n_prompt") else f"tg{rec['n_gen']}"
            console.print(
                f"  {r['model']:>14} {test:>6}: {rec['avg_ts']:10.2f} ± {rec['stddev_ts']:.2f} t/s"
            )
    console.print(f"wrote {out}")
    return 0
