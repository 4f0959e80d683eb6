"""``llama-harness tools VARIANT TOOL...``: llama.cpp's own tools from the wheel's build tree."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "tools",
        help="build (once, cached beside the wheel) llama.cpp tools such as llama-bench",
        description=(
            "Build llama.cpp's own command-line tools (llama-bench, llama-batched-bench, "
            "llama-fit-params, llama-perplexity, ...) for a variant in the wheel's own build "
            "tree: the same objects, flags and key as the wheel, so llama.cpp is compiled once "
            "per variant. Cached in <cache>/wheels/<key>/tools/ (bin/, lib/, tools.json with "
            "each binary's sha256). Prints one line per tool: NAME PATH. Run a tool with its "
            "lib/ folder first on LD_LIBRARY_PATH (harness.build.native_tools.NativeTools.env)."
        ),
    )
    p.add_argument("variant", help="variant name (see `llama-harness variants`)")
    p.add_argument("tool", nargs="*", help="tool names, e.g. llama-bench (default: llama-bench)")
    p.add_argument("--list", action="store_true", help="list the tools the sdist can build")
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument("--json", action="store_true", help="print {tool: path, ...} and the lib dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.build import build, native_tools
    from harness.build.variants import get_variant

    variant = get_variant(args.variant)
    if args.list:
        plan = build.prepare(variant)
        for name, folder in native_tools.available(plan.source / "vendor" / "llama.cpp").items():
            print(f"{name}\t{folder}")
        return 0
    tools = native_tools.ensure(variant, args.tool or ["llama-bench"], force=args.force)
    wanted = args.tool or ["llama-bench"]
    if args.json:
        doc = {
            "variant": variant.name,
            "key": tools.key,
            "lib_dir": str(tools.lib_dir),
            "tools": {t: str(tools.path(t)) for t in wanted},
        }
        print(json.dumps(doc, indent=2))
    else:
        for t in wanted:
            print(f"{t}\t{tools.path(t)}")
    return 0
