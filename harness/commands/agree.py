"""``llama-harness agree REF OTHER...``: do the builds compute the same next-token
distributions as the reference build? (KL divergence, top-1 agreement, perplexity ratio)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.bench.agree import (
    TEXT_FILE,
    THRESHOLDS_FILE,
    AgreeError,
    Side,
    agree,
    table,
    variant_venv,
    write_result,
)
from harness.build.variants import Variant, VariantError, load_registry
from saiverse_llm.user_errors import UsageError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "agree",
        help="compare builds' next-token distributions with a reference build (KL divergence)",
        description=(
            "Run the same model over the same fixed text through each variant's own build "
            "and compare every position's next-token distribution with the reference "
            "variant's: KL divergence (mean, 99%, max), top-1 agreement and the perplexity "
            "ratio, as llama.cpp's `llama-perplexity --kl-divergence` reports them. Limits "
            "per quantization type are in harness/bench/agree-thresholds.yaml; a variant outside "
            "them fails (exit 1) with the numbers. Each variant runs in a venv made from its "
            "cached wheel (`llama-harness build VARIANT` first), or in the interpreter given "
            "as VARIANT=PYTHON. GPU variants run with all layers offloaded "
            "(n_gpu_layers=-1). Results go to reports/<variant>/agree-<ref>-<model>.json."
        ),
        epilog="example: llama-harness agree cpu vulkan cpu-openblas --model gemma-3-270m",
    )
    p.add_argument("reference", help="the reference variant, e.g. cpu (or cpu=PYTHON)")
    p.add_argument("others", nargs="+", metavar="other",
                   help="variants to compare with it (or VARIANT=PYTHON)")  # fmt: skip
    p.add_argument("--model", default="tiny",
                   help="a test model name (models/test-models.yaml) or a GGUF path "
                   "(default: tiny)")  # fmt: skip
    p.add_argument("--text", type=Path, default=TEXT_FILE,
                   help="UTF-8 text to score "
                   "(default: harness/bench/data/agree-text.txt)")  # fmt: skip
    p.add_argument("--n-ctx", type=int, default=128, help="chunk length in tokens (default 128)")
    p.add_argument("--chunks", type=int, default=4, help="at most this many chunks (default 4)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per build (default 2)")
    p.add_argument("--thresholds", type=Path, default=THRESHOLDS_FILE,
                   help="limits file (default: harness/bench/agree-thresholds.yaml)")  # fmt: skip
    p.add_argument("--self-test-noise", type=float, default=0.0, metavar="SIGMA",
                   help="add Gaussian noise of SIGMA to the other builds' logits: a check "
                   "that the limits catch a wrong build (the run must fail)")  # fmt: skip
    p.add_argument("--no-write", action="store_true", help="do not write reports/ files")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _side(spec: str, variants: dict[str, Variant]) -> Side:
    """``NAME`` (its cached wheel in a harness venv) or ``NAME=PYTHON``."""
    from harness.sessions import cached_wheel

    name, _, python = spec.partition("=")
    if name not in variants:
        raise VariantError(
            "unknown variant", value=name,
            fix=f"use one of {', '.join(sorted(variants))} (see `llama-harness variants`)",
        )  # fmt: skip
    variant = variants[name]
    if variant.gpu:
        problems = variant.runtime_problems()
        if problems:
            raise AgreeError(
                f"{name}: no device to run it on here ({problems[0].what}: "
                f"{problems[0].detail}); fix: {problems[0].fix}"
            )
    if not python:
        wheel = cached_wheel(name)
        if wheel is None:
            raise AgreeError(
                f"{name}: no built wheel in the harness cache; fix: `llama-harness build {name}` "
                f"(or `nox -s build-{name}`), or pass {name}=PYTHON"
            )
        python = str(variant_venv(name, wheel, say=lambda m: print(m, file=sys.stderr)))
    elif not Path(python).exists():
        raise AgreeError(f"{spec}: no interpreter at {python}; fix: give an existing python")
    return Side(variant=variant, python=python, n_gpu_layers=-1 if variant.gpu else 0,
                env=variant.runtime_env())  # fmt: skip


def _model(spec: str) -> tuple[Path, str]:
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or path.exists():
        if not path.is_file():
            raise UsageError(
                f"--model {spec}: no such file",
                "give a GGUF file or a test model name (`llama-harness models list`)",
            )
        return path, path.stem
    from harness.models.model_manifest import (
        ManifestError,
        ModelFetchError,
        UnknownModelError,
        ensure_model,
    )

    try:
        return ensure_model(spec, say=lambda m: print(m, file=sys.stderr)), spec
    except UnknownModelError as exc:
        raise UsageError(f"--model {spec}: {exc.what}", f"{exc.fix}, or a GGUF file") from exc
    except (ManifestError, ModelFetchError, KeyError, ValueError) as exc:
        raise AgreeError(f"--model {spec}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    for name in ("n_ctx", "chunks", "threads"):
        if getattr(args, name) < 1 or (name == "n_ctx" and args.n_ctx < 8):
            _error(f"--{name.replace('_', '-')} {getattr(args, name)}: too small. Fix: give "
                   f"{'at least 8' if name == 'n_ctx' else 'a positive number'}")  # fmt: skip
            return 2
    if not args.text.is_file():
        _error(f"--text {args.text}: no such file. Fix: give a UTF-8 text file")
        return 2
    try:
        model, model_name = _model(args.model)
        variants = load_registry().variants
        reference = _side(args.reference, variants)
        others = [_side(spec, variants) for spec in args.others]
    except VariantError as exc:
        _error(str(exc))
        return 2
    except AgreeError as exc:
        _error(str(exc))
        return 1
    try:
        results = agree(
            reference, others, model, model_name=model_name, text=args.text, n_ctx=args.n_ctx,
            chunks=args.chunks, threads=args.threads, noise=args.self_test_noise,
            thresholds=args.thresholds, say=lambda m: print(m, file=sys.stderr),
        )  # fmt: skip
    except AgreeError as exc:
        _error(str(exc))
        return 1
    if args.json:
        import json

        print(json.dumps([r.to_dict() for r in results], indent=2, default=str))
    else:
        from saiverse_llm.tables import print_table

        print_table(table(results))
        for r in results:
            print(r.summary())
    if not args.no_write and not args.self_test_noise:
        for r in results:
            write_result(r)
    return 0 if all(r.ok for r in results) else 1
