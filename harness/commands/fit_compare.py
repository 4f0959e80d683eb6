"""``llama-harness fit-compare``: saiverse-llm fit next to llama.cpp's accounting."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "fit-compare",
        help="compare saiverse-llm fit with llama.cpp's load log and llama-fit-params",
        description=(
            "Load Gemma 3 270M (sliding-window layers) and synthesized models of several "
            "shapes and quantizations (GQA, MQA, f32/f16/q8_0) through this interpreter's "
            "llama_cpp on the CPU and compare saiverse-llm fit's weights, KV cache and compute "
            "buffer with the buffers llama.cpp logs; then run llama-fit-params --fit-print "
            "(built once beside the cpu wheel) on the same files and on the seed models' "
            "header-only GGUFs. Prints a Markdown table and writes "
            "<reports>/fit/fit-compare.{md,json}. Exit 1 when a total differs by 5% or more."
        ),
    )
    p.add_argument("--variant", default="cpu", help="whose llama-fit-params to run (default cpu)")
    p.add_argument("--no-load", action="store_true", help="skip the real loads")
    p.add_argument("--no-fit-params", action="store_true", help="skip llama-fit-params")
    p.set_defaults(func=run)


SYNTH = {
    "synth GQA 16/4 q8_0": dict(
        n_embd=1024, n_layer=2, n_ff=4096, n_head=16, n_head_kv=4, dtype="q8_0"
    ),
    "synth MQA 6/1 f32": dict(n_embd=768, n_layer=3, n_ff=2048, n_head=6, n_head_kv=1, dtype="f32"),
    "synth GQA 8/2 f16": dict(n_embd=512, n_layer=2, n_ff=1536, n_head=8, n_head_kv=2, dtype="f16"),
}


def run(args: argparse.Namespace) -> int:
    from harness import paths
    from harness.bench import fit_compare, fit_table
    from harness.build import native_tools
    from harness.models import seed_models
    from harness.models.model_manifest import ensure_model
    from harness.models.synth import synthesize
    from saiverse_llm.atomic import atomic_write_json, atomic_write_text

    # llama.cpp's load warnings (full-size SWA cache, ...) belong in a log, not in the table
    logging.getLogger("saiverse_llm.llama_cpp").setLevel(logging.ERROR)
    gemma = ensure_model("gemma-3-270m", offline=True)
    rows: list[fit_compare.Row] = []
    with tempfile.TemporaryDirectory(prefix="fit-compare-") as tmp:
        synth = {
            label: synthesize(Path(tmp) / f"m{i}.gguf", preset="small", n_ctx=32768, **opts)  # type: ignore[arg-type]
            for i, (label, opts) in enumerate(SYNTH.items())
        }
        if not args.no_load:
            cases: list[tuple[str, Path, int, dict[str, Any]]] = [
                ("Gemma 3 270M Q4_K_M", gemma, 32768, {"chat_format": "gemma"}),
                ("Gemma 3 270M Q4_K_M", gemma, 4096, {"chat_format": "gemma", "swa_full": False}),
                ("Gemma 3 270M Q4_K_M", gemma, 8192, {"chat_format": "gemma", "flash_attn": True}),
            ]
            for label, path in synth.items():
                cases += [(label, path, 512, {}), (label, path, 8192, {})]
            try:
                rows += fit_compare.load_rows(cases)
            except Exception as exc:  # no llama_cpp here, a failed load: say which
                print(f"error: real loads failed: {exc}", file=sys.stderr)
                return 1
        if not args.no_fit_params:
            try:
                tools = native_tools.ensure(args.variant, ["llama-fit-params"])
            except native_tools.NativeToolsError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            seeds = seed_models.ensure_all(fit_table.seed_dir())
            fp_cases = [("Gemma 3 270M Q4_K_M", gemma, 32768)]
            fp_cases += [(label, path, 8192) for label, path in synth.items()]
            for m in seed_models.SEED_MODELS:
                ctx = 32768 if m.architecture == "qwen2" else 8192
                fp_cases.append((f"{m.label} ({m.file_type}, header only)", seeds[m.key], ctx))
            rows += fit_compare.fit_params_rows(tools, fp_cases)
    table = fit_compare.render(rows)
    sys.stdout.write(table)
    out = paths.reports_dir() / "fit"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "fit-compare.md", table)
    atomic_write_json(out / "fit-compare.json", [r.to_dict() for r in rows])
    worst = max((abs(r.percent) for r in rows), default=0.0)
    print(f"\nworst total difference: {worst:.2f}% ({len(rows)} rows); written to {out}")
    return 1 if worst >= 5 else 0
