"""``saiverse-llm fit MODEL [--vram SIZE] [--context N] [--json]``: will it fit?

Registered by :mod:`saiverse_llm.cli`. MODEL is a config key or a ``.gguf`` path; the plan
comes from :mod:`saiverse_llm.fit` (the GGUF header and tensor table only, nothing loaded).
The memory to plan for: ``--vram``, else the free memory of the GPU that the installed
llama-cpp-python sees (the ggml device probe of :mod:`saiverse_llm.devices`, in a child
process), else a CPU-only plan against the free system memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from saiverse_llm import devices, fit
from saiverse_llm.cli_errors import int_arg
from saiverse_llm.config import CONTEXT_LENGTH_RANGE, ModelConfig
from saiverse_llm.gguf_file import GGUFError
from saiverse_llm.registry import add_config_dir_argument, get_config, search_dirs
from saiverse_llm.tables import print_table
from saiverse_llm.user_errors import UsageError, UserError

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

log = logging.getLogger("saiverse_llm.cli")


def _size(text: str) -> int:
    try:
        return fit.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register_fit(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "fit",
        help="will the model fit? memory per part and the n_gpu_layers/context that fit",
        description=(
            "Estimate what loading MODEL (a config key or a .gguf path) allocates, from the "
            "GGUF header and tensor table alone: weights per layer, KV cache for the context "
            "(GQA, sliding-window layers, f16 cache), compute buffer. Then plan it for a GPU "
            "with --vram SIZE (default: the free memory of the GPU the installed "
            "llama-cpp-python sees, else free system memory for a CPU-only load): the "
            "largest n_gpu_layers and context_length that fit with a margin, and the smaller "
            "quantization that would fit when the model does not. Exit status 0 when it "
            "fits (or no memory size is known), 1 when it does not or the file cannot be read."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="config key, or a path to a .gguf file")
    add_config_dir_argument(parser)
    parser.add_argument(
        "--vram",
        type=_size,
        default=None,
        metavar="SIZE",
        help="GPU memory to plan for: 8, 7.5GiB, 8192M (a bare number is GiB)",
    )
    parser.add_argument(
        "--context",
        type=int_arg(*CONTEXT_LENGTH_RANGE),
        default=None,
        metavar="N",
        help="context length (default: the config's context_length, else the GGUF's, "
        "capped at 8192 like the client)",
    )
    parser.add_argument(
        "--margin",
        type=_size,
        default=fit.DEFAULT_MARGIN,
        metavar="SIZE",
        help="memory to leave free (default 1GiB, llama.cpp's --fit-target)",
    )
    parser.add_argument(
        "--cpu", action="store_true", help="plan a CPU-only load against free system memory"
    )
    parser.add_argument(
        "--flash-attn", action="store_true", help="plan for flash_attn=True (default: off)"
    )
    parser.add_argument(
        "--cache-type",
        type=str.upper,
        choices=sorted(fit.KV_CACHE_TYPES),
        default=None,
        metavar="TYPE",
        help="KV cache type for K and V (default F16; a quantized V needs --flash-attn)",
    )
    parser.add_argument("--layers", action="store_true", help="also print the per-layer table")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=cmd_fit)


def resolve_model(model: str, dirs: list[Path]) -> ModelConfig | Path:
    """A ``.gguf`` path as given, else the config named ``model`` (ModelNotFoundError,
    ConfigError: the CLI's usage errors; a directory is a UsageError)."""
    path = Path(model).expanduser()
    if path.is_dir():
        raise UsageError(
            f"MODEL {model}: is a directory", "give a .gguf file in it, or a config key"
        )
    if model.endswith(".gguf") or path.is_file():
        return path
    return get_config(model, search_dirs(dirs))


def missing_file_fix(config: ModelConfig) -> str:
    """How to get a config's missing GGUF: `saiverse-llm fetch KEY` when it names a source."""
    if config.model_source is not None:
        return (
            f"download it with `saiverse-llm fetch {config.key}`, or plan the file you have: "
            "`saiverse-llm fit PATH.gguf`"
        )
    return (
        f"put the GGUF at {config.model_path} (model_path in the config), or plan the file you "
        "have: `saiverse-llm fit PATH.gguf`"
    )


def probe_gpu_free() -> tuple[int, str] | None:
    """Free bytes and name of the GPU with the most free memory that the installed
    llama-cpp-python sees, through the ggml device probe in a child process; ``None`` without a
    GPU or llama_cpp."""
    try:
        found = devices.backend_devices_in_subprocess(sys.executable, timeout=120)
    except devices.DeviceProbeError as exc:
        log.warning("fit: GPU probe failed (%s); planning without it", exc)
        return None
    gpus = [d for d in found if d.is_gpu and d.memory_free > 0]
    if not gpus:
        return None
    best = max(gpus, key=lambda d: d.memory_free)
    return best.memory_free, f"{best.name} ({best.description}), free memory"


def cmd_fit(args: argparse.Namespace) -> int:
    target = resolve_model(args.model, args.dirs)
    if isinstance(target, ModelConfig) and not target.model_path.is_file():
        raise UserError(
            f"{target.key}: model file not found: {target.model_path}", missing_file_fix(target)
        )
    if args.cache_type not in (None, "F32", "F16", "BF16") and not args.flash_attn:
        print(
            f"error: --cache-type {args.cache_type}: llama.cpp refuses a quantized V cache "
            "without flash attention. Fix: add --flash-attn",
            file=sys.stderr,
        )
        return 2
    llama_kwargs: dict[str, Any] = {}
    if args.flash_attn:
        llama_kwargs["flash_attn"] = True
    if args.cache_type:
        llama_kwargs["type_k"] = llama_kwargs["type_v"] = fit.KV_CACHE_TYPES[args.cache_type]
    try:
        req = fit.request_for(target, n_ctx=args.context, llama_kwargs=llama_kwargs)
    except (GGUFError, fit.FitError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    device, memory, source = "RAM", None, ""
    if args.vram is not None and not args.cpu:
        device, memory, source = "GPU", args.vram, "--vram"
    elif not args.cpu:
        probed = probe_gpu_free()
        if probed is not None:
            device, memory, source = "GPU", probed[0], probed[1]
    if memory is None:
        found = fit.available_memory(swap=False)
        memory, source = (found[0], f"free system memory ({found[1]})") if found else (None, "")
    ngl = req.n_gpu_layers if device == "GPU" else 0
    plan = (
        fit.plan(
            req.shape,
            req.settings,
            memory,
            device=device,
            margin_bytes=args.margin,
            n_gpu_layers=ngl,
        )
        if memory is not None
        else None
    )
    estimate = plan.estimate if plan is not None else fit.estimate(req.shape, req.settings)
    warning = fit.context_warning(req.shape, req.settings.n_ctx)
    if args.json:
        data: dict[str, Any] = plan.to_dict() if plan else estimate.to_dict()
        data["memory_source"] = source or None
        if plan is None:
            data["n_gpu_layers"] = 0
        if warning:
            data["notes"] = [*data.get("notes", []), warning]
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        _print(estimate, plan, source, args.layers)
        if warning:
            print(f"warning: {warning}")
    log.info("fit %s: %s", args.model, plan.advice() if plan else "no memory size known")
    return 1 if plan is not None and not plan.fits else 0


def _print(e: fit.Estimate, plan: fit.Plan | None, source: str, layers: bool) -> None:
    s = e.settings
    shape = e.shape
    table = Table(
        title=f"saiverse-llm fit: {shape.name} ({shape.architecture}, {shape.file_type}), "
        f"context_length {s.n_ctx}",
        title_justify="left",
    )
    table.add_column("what", style="bold")
    table.add_column("size", justify="right")
    table.add_column("details", overflow="fold")
    per_layer = [layer.weights_bytes for layer in e.layers]
    swa = sum(1 for layer in e.layers if layer.sliding_window)
    kv_note = (
        f"{e.n_layer} layers x {s.kv_size} cells, K {s.type_k} / V {s.type_v}, "
        f"{max(shape.n_head_kv)} KV heads of {max(shape.head_dim_k)} (GQA {max(shape.n_head)}"
        f"/{max(shape.n_head_kv)})"
    )
    if swa:
        cells = {layer.kv_cells for layer in e.layers if layer.sliding_window}
        kv_note += (
            f"; {swa} sliding-window layers (window {shape.n_swa}) with {max(cells)} cells"
            + (" (swa_full, llama-cpp-python's default)" if s.swa_full else "")
        )
    rows = [
        (
            "weights",
            e.weights_bytes,
            f"token embeddings {fit.gib(e.input_bytes)} (kept in RAM), {e.n_layer} layers "
            f"{fit.gib(sum(per_layer))} ({fit.gib(max(per_layer, default=0))} each at most), "
            f"output layer {fit.gib(e.output_layer_bytes)}"
            + (
                f" + a {fit.gib(e.tied_copy_bytes)} copy of the tied embeddings when offloaded"
                if e.tied_copy_bytes
                else ""
            ),
        ),
        ("KV cache", e.kv_cache_bytes, kv_note),
        (
            "compute buffer",
            e.compute_bytes,
            f"worst case of {s.n_tokens} tokens"
            + (", flash attention" if s.flash_attn else ", no flash attention"),
        ),
    ]
    if e.repack_bytes:
        rows.append(
            ("CPU repack", e.repack_bytes, "repacked copy of Q4_0/Q4_K matrices of layers in RAM")
        )
    rows.append(("total (CPU only)", e.total_bytes, "what a load with n_gpu_layers=0 allocates"))
    if plan is not None:
        split = e.split(plan.n_gpu_layers)
        if plan.device == "GPU":
            rows.append(
                (
                    "all layers on the GPU",
                    e.split(-1).device_bytes,
                    f"+ {fit.gib(e.split(-1).host_bytes)} in system memory",
                )
            )
        rows.append(
            (
                "memory",
                plan.memory_bytes,
                f"{source}; margin {fit.gib(plan.margin_bytes)}",
            )
        )
        if plan.device == "GPU":
            ngl = "-1 (all)" if plan.n_gpu_layers == e.n_layer + 1 else str(plan.n_gpu_layers)
            rows.append(
                (
                    "n_gpu_layers",
                    split.device_bytes,
                    f"largest that fits at context_length {s.n_ctx}: {ngl} "
                    f"(+ {fit.gib(split.host_bytes)} in system memory)",
                )
            )
    for name, size, details in rows:
        table.add_row(name, fit.gib(size), details)
    print_table(table)
    if plan is not None:
        print(("fits: " if plan.fits else "does not fit: ") + plan.advice())
    else:
        print("no memory size known: pass --vram SIZE")
    if layers:
        lt = Table(title="per layer", title_justify="left")
        for col in ("layer", "weights", "KV cache", "KV cells", "sliding window"):
            lt.add_column(col, justify="right")
        for layer in e.layers:
            lt.add_row(
                str(layer.index),
                fit.gib(layer.weights_bytes),
                fit.gib(layer.kv_cache_bytes),
                str(layer.kv_cells),
                "yes" if layer.sliding_window else "",
            )
        lt.add_row("output", fit.gib(e.output_layer_bytes), "", "", "")
        print_table(lt)
