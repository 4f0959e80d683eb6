"""``llama-harness variants``: the build-variant registry and what this machine can do."""

from __future__ import annotations

import argparse
import json

from harness.build.variants import load_registry


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "variants",
        help="list the llama-cpp-python build variants and whether they build/run here",
        description=(
            "List the build variants from harness/build/variants.yaml and the user file "
            "($LLAMA_HARNESS_VARIANTS or ~/.config/llama-harness/variants.yaml): CMake flags, "
            "backend, and whether this machine can build them (with the fix when not) and "
            "run them (GPU present)."
        ),
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    reg = load_registry()  # VariantError: the error line of harness.cli (exit 2)
    rows = []
    for v in reg.variants.values():
        build = v.build_problems()
        runtime = v.runtime_problems()
        data = v.to_dict()
        data["buildable_here"] = not build
        data["build_problems"] = [f"{p.what}: {p.detail}; fix: {p.fix}" for p in build]
        data["runnable_here"] = not build and not runtime
        data["runtime_problems"] = [f"{p.what}: {p.detail}; fix: {p.fix}" for p in runtime]
        rows.append(data)
    if args.json:
        print(json.dumps({"files": [str(f) for f in reg.files], "sdist": vars(reg.sdist),
                          "variants": rows}, indent=2))  # fmt: skip
        return 0
    from rich.table import Table

    from saiverse_llm.tables import print_table

    table = Table(title=f"llama-cpp-python {reg.sdist.version} build variants")
    for col in ("variant", "backend", "CMAKE_ARGS", "builds here", "runs here"):
        table.add_column(col, overflow="fold")
    for v, row in zip(reg.variants.values(), rows, strict=True):
        build = v.build_problems()
        runtime = v.runtime_problems()
        builds = "yes" if not build else f"no: {build[0].what} (fix: {build[0].fix})"
        runs = "yes" if row["runnable_here"] else (
            f"no: {runtime[0].what} ({runtime[0].detail})" if runtime else "no")  # fmt: skip
        table.add_row(row["name"], row["backend"] + (" (GPU)" if row["gpu"] else ""),
                      " ".join(row["cmake_args"]), builds, runs)  # fmt: skip
    print_table(table)
    print("files: " + ", ".join(str(f) for f in reg.files))
    return 0
