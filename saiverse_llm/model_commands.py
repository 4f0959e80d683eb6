"""``saiverse-llm check`` and ``saiverse-llm chat``: the commands that run a model.

Registered by :mod:`saiverse_llm.cli` (which also sets up logging to ``saiverse_log.txt``).
MODEL is a config key (``saiverse-llm list`` shows them) or a path to a ``.gguf`` file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from saiverse_llm import fit
from saiverse_llm.cli_errors import float_arg, int_arg
from saiverse_llm.client import GenerationError, LlamaCppClient, get_llm_client
from saiverse_llm.config import (
    MAX_TOKENS_RANGE,
    N_GPU_LAYERS_RANGE,
    N_THREADS_RANGE,
    SEED_RANGE,
    TEMPERATURE_RANGE,
    ModelConfig,
)
from saiverse_llm.fallback import FallbackError
from saiverse_llm.messages import MessageError
from saiverse_llm.pool import ModelLoadError, max_models_from_env
from saiverse_llm.registry import add_config_dir_argument, search_dirs
from saiverse_llm.tables import message_console, print_table
from saiverse_llm.tools import ToolCallError

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

log = logging.getLogger("saiverse_llm.cli")

DEFAULT_CHECK_PROMPT = "Hello! Please introduce yourself in one sentence."
#: ``chat`` stops here unless --max-tokens says otherwise (or the config asks for fewer): a
#: demo answers in seconds, and a rambling model cannot print 2,048 tokens.
CHAT_MAX_TOKENS = 256

#: What a model command raises as "error: ..." with exit status 1 (see saiverse_llm.cli).
RUN_ERRORS = (ModelLoadError, FallbackError, GenerationError, ToolCallError, MessageError)


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="config key, or a path to a .gguf file")
    add_config_dir_argument(parser)
    parser.add_argument(
        "--n-gpu-layers",
        type=int_arg(*N_GPU_LAYERS_RANGE),
        default=None,
        metavar="N",
        help="override the config's n_gpu_layers (-1 all, 0 CPU only)",
    )
    parser.add_argument(
        "--n-threads",
        type=int_arg(*N_THREADS_RANGE),
        default=None,
        metavar="N",
        help=f"override n_threads (1..{N_THREADS_RANGE[1]})",
    )


def register_check(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "check",
        help="load a model and report backend, offloaded layers and tokens/s",
        description=(
            "Load MODEL exactly as SAIVerse would (no fallback), report where it runs "
            "(backend, devices, layers offloaded to the GPU, n_ctx, chat template) and time a "
            "short greedy generation (tokens/s). Exit status 1 when the model cannot run."
        ),
    )
    _model_args(parser)
    parser.add_argument(
        "--tokens",
        type=int_arg(*MAX_TOKENS_RANGE),
        default=32,
        metavar="N",
        help="tokens to generate (default 32)",
    )
    parser.add_argument("--prompt", default=DEFAULT_CHECK_PROMPT, help="the prompt to time")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=cmd_check)


def register_chat(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "chat",
        help='stream a reply: saiverse-llm chat MODEL "prompt"',
        description=(
            "Send one prompt to MODEL and stream the reply to stdout. The config's "
            "fallback_on_error applies (use --no-fallback to turn it off); the model that "
            "answered and the token usage are printed on stderr."
        ),
    )
    _model_args(parser)
    parser.add_argument("prompt", metavar="PROMPT", help='the user message ("-" reads stdin)')
    parser.add_argument("--system", default=None, help="a system message")
    parser.add_argument(
        "--max-tokens",
        type=int_arg(*MAX_TOKENS_RANGE),
        default=None,
        metavar="N",
        help=f"reply length limit (default: the config's max_tokens, at most {CHAT_MAX_TOKENS})",
    )
    parser.add_argument(
        "--temperature",
        type=float_arg(*TEMPERATURE_RANGE),
        default=None,
        metavar="T",
        help=f"sampling temperature, {TEMPERATURE_RANGE[0]}..{TEMPERATURE_RANGE[1]}",
    )
    parser.add_argument(
        "--seed",
        type=int_arg(-1, SEED_RANGE[1], extra={"random": -1}),
        default=None,
        metavar="N",
        help="sampling seed; -1 or 'random' for a random one (llama.cpp's convention)",
    )
    parser.add_argument("--no-fallback", action="store_true", help="never use a fallback model")
    parser.set_defaults(func=cmd_chat)


def client_for(model: str, dirs: Sequence[Path] = (), **overrides: Any) -> LlamaCppClient:
    """A client for a config key or a ``.gguf`` path, with ``overrides`` applied."""
    max_models_from_env()  # a bad $SAIVERSE_LLM_MAX_MODELS is an error line even when the
    # process-wide pool already exists (it reads the variable once)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    path = Path(model).expanduser()
    if model.endswith(".gguf") or path.is_file():
        overrides.setdefault("fallback_on_error", False)
        return LlamaCppClient(path, **overrides)
    return get_llm_client(model, dirs=search_dirs(dirs), **overrides)


def config_for(model: str, dirs: Sequence[Path] = ()) -> ModelConfig | None:
    """The config of ``model`` when it is a config key (None for a ``.gguf`` path)."""
    from saiverse_llm.registry import get_config

    if model.endswith(".gguf") or Path(model).expanduser().is_file():
        return None
    return get_config(model, search_dirs(dirs))


def print_note(config: ModelConfig | None) -> None:
    """The config's one-line ``note`` (e.g. "a base model, here to test builds") on stderr."""
    if config is not None and config.note:
        print(f"note: {config.note}", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    print_note(config_for(args.model, args.dirs))
    client = client_for(
        args.model,
        args.dirs,
        fallback_on_error=False,
        n_gpu_layers=args.n_gpu_layers,
        n_threads=args.n_threads,
    )
    console = message_console(err=True)
    # a Text: a status string is always read as rich markup, and the names are the user's
    with console.status(Text(f"loading {client.model_name} ({client.model_path}) ...")):
        report = client.load_report()
    with console.status(f"generating {args.tokens} tokens ..."):
        started = time.perf_counter()
        reply = client.generate(
            [{"role": "user", "content": args.prompt}],
            max_tokens=args.tokens,
            temperature=0.0,
            seed=0,
        )
        elapsed = time.perf_counter() - started
    usage = client.consume_usage()
    tokens = usage.completion_tokens if usage else 0
    memory = _memory(client, report)
    result = {
        **report,
        "fit": memory,
        "generation": {
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": tokens,
            "seconds": round(elapsed, 3),
            "tokens_per_second": round(tokens / elapsed, 2) if elapsed > 0 else None,
            "reply": reply,
        },
    }
    log.info(
        "check %s: backend=%s offloaded=%d/%d n_threads=%s %.1f tok/s",
        client.model_name,
        report["backend"],
        report["n_layers_offloaded"],
        report["n_layers_total"],
        report.get("n_threads"),
        tokens / elapsed if elapsed > 0 else 0.0,
    )
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    table = Table(title=f"saiverse-llm check {client.model_name}", title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    devices = ", ".join(f"{d['name']} ({d['description']})" for d in report["devices"])
    gen = result["generation"]
    rows = [
        ("file", report["model_path"]),
        ("backend", report["backend"]),
        (
            "GPU layers",
            f"{report['n_layers_offloaded']}/{report['n_layers_total']} offloaded "
            f"(n_gpu_layers={report['n_gpu_layers_requested']})",
        ),
        ("GPU offload in this build", "yes" if report["gpu_offload_supported"] else "no"),
        ("devices", devices),
        ("n_ctx", f"{report['n_ctx']} per sequence (trained {report['n_ctx_train']})"),
        (
            "sequences",
            f"{report.get('n_seq_max', 1)} decoded together ({report.get('n_seq_source', '-')})",
        ),
        ("chat template", str(report["chat_template"])),
        ("n_threads", _threads(report, args.n_threads)),
        ("load", f"{report['load_seconds']:.2f} s"),
        (
            "generation",
            f"{gen['completion_tokens']} tokens in {gen['seconds']:.2f} s = "
            f"{gen['tokens_per_second']} tok/s (prompt {gen['prompt_tokens']} tokens)",
        ),
        ("memory", _memory_text(memory)),
        ("reply", repr(reply[:200])),
        ("llama_cpp", f"{report['llama_cpp_version']}: {report['system_info'].strip()}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    print_table(table)
    return 0


def _memory(client: LlamaCppClient, report: dict[str, Any]) -> dict[str, Any]:
    """saiverse-llm fit's estimate for this load (same n_ctx, layers where llama.cpp put
    them) next to what llama.cpp's load log says it allocated."""
    measured = report.get("memory_mib", {})
    out: dict[str, Any] = {
        "measured_mib": {kind: round(sum(v.values()), 2) for kind, v in measured.items()},
    }
    try:
        req = fit.request_for(
            client.model_path,
            n_ctx=report["n_ctx"],
            n_seq=int(report.get("n_seq_max") or 1),
            n_gpu_layers=report["n_layers_offloaded"],
            llama_kwargs=getattr(client, "_llama_kwargs", None),
        )
    except (ValueError, OSError) as exc:
        out["error"] = str(exc)
        return out
    out.update(fit.request_bytes(req))
    return out


def _memory_text(memory: dict[str, Any]) -> str:
    m = memory.get("measured_mib", {})
    measured = (
        f"llama.cpp allocated {m.get('model', 0) + m.get('kv', 0) + m.get('compute', 0):.1f} "
        f"MiB (model {m.get('model', 0):.1f}, KV {m.get('kv', 0):.1f}, compute "
        f"{m.get('compute', 0):.1f})"
    )
    if "total_bytes" not in memory:
        return f"{measured}; no fit estimate ({memory.get('error')})"
    estimate = (
        f"saiverse-llm fit estimated {fit.gib(memory['total_bytes'])} (weights "
        f"{fit.gib(memory['weights_bytes'])}, KV {fit.gib(memory['kv_cache_bytes'])}, compute "
        f"{fit.gib(memory['compute_bytes'])})"
    )
    return f"{estimate}; {measured}"


def _threads(report: dict[str, Any], override: int | None) -> str:
    """``2 (batch 2; default (physical cores))``: the thread counts the model runs with."""
    source = "--n-threads" if override is not None else report.get("n_threads_source")
    batch = report.get("n_threads_batch")
    detail = "; ".join(str(x) for x in (f"batch {batch}" if batch else None, source) if x)
    return f"{report['n_threads']}" + (f" ({detail})" if detail else "")


def cmd_chat(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    overrides: dict[str, Any] = {"n_gpu_layers": args.n_gpu_layers, "n_threads": args.n_threads}
    if args.no_fallback:
        overrides["fallback_on_error"] = False
    config = config_for(args.model, args.dirs)
    print_note(config)
    client = client_for(args.model, args.dirs, **overrides)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": prompt})
    max_tokens = args.max_tokens
    if max_tokens is None:
        configured = config.parameters.max_tokens if config is not None else CHAT_MAX_TOKENS
        max_tokens = min(configured, CHAT_MAX_TOKENS)
    seed = None if args.seed in (-1, SEED_RANGE[1]) else args.seed  # random, as llama.cpp
    try:
        for chunk in client.generate_stream(
            messages, temperature=args.temperature, max_tokens=max_tokens, seed=seed
        ):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    finally:
        sys.stdout.write("\n")  # an error line then starts on a line of its own
    usage = client.consume_usage()
    if usage is not None:
        note = f" (fallback for {usage.model}: {usage.fallback_reason})" if usage.fallback else ""
        print(
            f"[{usage.answered_by}] {usage.prompt_tokens} prompt + {usage.completion_tokens} "
            f"completion tokens{note}",
            file=sys.stderr,
        )
        if usage.completion_tokens >= max_tokens and args.max_tokens is None:
            print(
                f"(stopped at {max_tokens} tokens; --max-tokens N allows longer replies)",
                file=sys.stderr,
            )
    detection = client.consume_tool_detection()
    if detection is not None:
        print(f"[tool call] {json.dumps(detection, ensure_ascii=False)}", file=sys.stderr)
    return 0
