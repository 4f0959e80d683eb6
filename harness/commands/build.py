"""``llama-harness build VARIANT``: build (or reuse) a variant's wheel and print its path."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.build.build import build_wheel, import_wheel, prepare
from harness.build.variants import get_variant
from saiverse_llm.atomic import atomic_copy
from saiverse_llm.user_errors import UsageError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "build",
        help="build a llama-cpp-python wheel for a variant (cached) and print its path",
        description=(
            "Build llama-cpp-python from the pinned sdist with the variant's CMAKE_ARGS, or "
            "reuse the cached wheel whose key (sdist sha256, normalised CMake flags, compilers, "
            "nvcc, platform, build env) matches exactly. Prints the wheel path. The full build "
            "log is kept under the cache's logs/ folder. --import adds a wheel built elsewhere."
        ),
    )
    p.add_argument("variant", nargs="?", help="variant name (see `llama-harness variants`)")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache has it")
    p.add_argument("--wheel-out", type=Path, help="also copy the wheel (and build.json) here")
    p.add_argument(
        "--import",
        dest="import_wheel",
        type=Path,
        metavar="WHEEL",
        help="add a wheel built elsewhere to the cache (its build.json beside it is used "
        "when present; else VARIANT is required and its backend library is checked)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--print-key",
        action="store_true",
        help="print the wheel cache key of VARIANT (every build input: sdist, CMake flags, "
        "compilers, cmake, platform, env) and exit without building; CI keys its wheel cache "
        "with it",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Problems are raised (BuildError, VariantError, UsageError): harness.cli prints the one
    # error line on stderr, so stdout holds only the result (a path, or --json).
    variant = get_variant(args.variant) if args.variant else None
    if args.import_wheel is not None:
        entry = import_wheel(args.import_wheel.expanduser().resolve(), variant)
        wheel, key, cached = entry.wheel, entry.key, True
        print(f"imported {args.import_wheel} as {entry.variant} (key {key[:12]})", file=sys.stderr)
    else:
        if variant is None:
            raise UsageError("no VARIANT given", "name one: `llama-harness variants` lists them")
        if args.print_key:
            print(prepare(variant).key)
            return 0
        built = build_wheel(variant, force=args.force, progress=not args.no_progress)
        wheel, key, cached = built.wheel, built.key, built.cached
    if args.wheel_out:
        args.wheel_out.mkdir(parents=True, exist_ok=True)
        meta = wheel.parent / "build.json"
        if meta.is_file():  # keeps key and inputs with the wheel (`--import` reads it)
            atomic_copy(meta, args.wheel_out / "build.json")
        wheel = atomic_copy(wheel, args.wheel_out / wheel.name)
    if args.json:
        print(json.dumps({"wheel": str(wheel), "key": key, "cached": cached}))
    else:
        print(wheel)
    return 0
