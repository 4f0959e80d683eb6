"""``llama-harness install VARIANT --python PATH``: put a verified build where it is used.

See :mod:`harness.build.install` for what is installed and why the pin holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "install",
        help="install a variant's wheel into another venv (e.g. SAIVerse's), pinned, verified",
        description=(
            "Install the llama-cpp-python wheel of VARIANT into the virtual environment of "
            "--python (for example SAIVerse's venv): from --wheel FILE, else the wheel cache, "
            "else a fresh build. The wheel is copied into the venv and pinned through the "
            "venv's own pip.conf, so a later `pip install llama-cpp-python` there keeps this "
            "build instead of compiling a CPU one from the sdist. Then harness.build.verify runs "
            "in "
            "that interpreter and its verdict is printed. Exit status: 0 verified, 1 install "
            "or verification failed, 2 bad arguments."
        ),
    )
    p.add_argument("variant", metavar="VARIANT", help="variant name (see `llama-harness variants`)")
    p.add_argument(
        "--python",
        required=True,
        type=Path,
        metavar="PATH",
        help="the target venv's interpreter, e.g. ~/SAIVerse/.venv/bin/python",
    )
    p.add_argument(
        "--wheel",
        type=Path,
        metavar="FILE",
        help="install this wheel (built elsewhere, e.g. on the GPU host) instead of the cache's",
    )
    p.add_argument(
        "--with-provider",
        action="store_true",
        help="also install this project (saiverse_llm, `saiverse-llm`) into that venv",
    )
    p.add_argument("--no-progress", action="store_true", help="no build progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness import paths
    from harness.build.build import BuildError, build_wheel, check_wheel_libraries
    from harness.build.install import PIN_NOTE, InstallError, inspect_python, install_wheel_into
    from harness.build.variants import VariantError, get_variant
    from harness.build.verify import verify_python

    def err(message: str) -> None:
        print(f"error: {message}", file=sys.stderr)

    try:
        variant = get_variant(args.variant)
    except VariantError as exc:
        err(str(exc))
        return 2
    try:
        inspect_python(args.python)  # a bad --python fails before any build
    except InstallError as exc:
        err(str(exc))
        return 2
    if args.wheel is not None:
        wheel = args.wheel.expanduser().resolve()
        if not wheel.is_file():
            err(f"--wheel {wheel}: no such file. Fix: pass the .whl `llama-harness build` printed")
            return 2
        try:
            check_wheel_libraries(variant, wheel)
        except BuildError as exc:
            err(f"--wheel {wheel}: {exc}")
            return 1
    else:
        try:
            wheel = build_wheel(variant, progress=not args.no_progress).wheel
        except BuildError as exc:
            err(f"{variant.name}: {exc}")
            return 1
    print(f"{variant.name}: installing {wheel} into {args.python}", file=sys.stderr)
    try:
        done = install_wheel_into(
            args.python,
            wheel,
            variant=variant.name,
            provider=paths.PROJECT_ROOT if args.with_provider else None,
        )
    except InstallError as exc:
        err(str(exc))
        return 1
    print(PIN_NOTE.format(conf=done.pip_conf), file=sys.stderr)
    result, _info = verify_python(variant, str(done.env.python), wheel=done.wheel)
    print(result.summary())
    if not result.ok:
        return 1
    if variant.gpu and not result.gpu_present:
        print(
            f"note: {variant.name} is a GPU build and no GPU was found here; on the GPU "
            f"machine, `llama-harness doctor --variant {variant.name}` says whether it offloads"
        )
    return 0
