"""llama.cpp's own ``llama-batched-bench``, built from the same sdist as the Python package.

The reference for the client's continuous batching (issue #19): B sequences of ``n_prompt``
prompt tokens each, then ``n_gen`` steps that decode one token of every sequence in one
batch; ``S_TG`` (``speed_tg``) is the aggregate generation rate, ``B * n_gen / t_tg``.
It is built once per variant in the wheel's own build tree and cached beside the wheel
(:func:`harness.build.native_tools.ensure`), so it runs the very objects the wheel was made of.

Settings spelled out to match the client: ``-fa off`` (llama-cpp-python's default),
``-b``/``-ub`` the client's n_batch, ``--swa-full`` (llama.cpp's library default, which
llama-cpp-python keeps; the tools default to off), the KV cache not unified (one stream of
``-c / n_seq_max`` cells per sequence, as the client's engine), an explicit ``-t``.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.build import native_tools
from harness.build.native_tools import NativeTools

TOOL = "llama-batched-bench"


class BatchedBenchError(RuntimeError):
    """Building or running llama-batched-bench failed; the message names the cause."""


@dataclass(frozen=True)
class BatchedSettings:
    """One llama-batched-bench run: ``n_ctx_seq`` cells per sequence (``-c`` is that times
    the largest B), ``n_prompt`` (``-npp``) and ``n_gen`` (``-ntg``) tokens per sequence,
    the B values (``-npl``)."""

    n_threads: int
    n_batch: int = 512
    n_ubatch: int = 512
    n_prompt: int = 64
    n_gen: int = 64
    batches: tuple[int, ...] = (1, 2, 4, 8)
    n_ctx_seq: int = 256
    flash_attn: bool = False
    n_gpu_layers: int = 0


def build(variant: str) -> NativeTools:
    """llama-batched-bench of ``variant`` (cached beside its wheel; built once)."""
    from harness.build.build import BuildError
    from harness.build.variants import VariantError

    try:
        return native_tools.ensure(variant, [TOOL])
    except (native_tools.NativeToolsError, BuildError, VariantError) as exc:
        raise BatchedBenchError(str(exc)) from exc


def arguments(model: str, s: BatchedSettings) -> list[str]:
    """The arguments of one run (``model``: the GGUF path)."""
    return [
        "-m", model,
        "-c", str(s.n_ctx_seq * max(s.batches)),
        "-b", str(s.n_batch),
        "-ub", str(s.n_ubatch),
        "-npp", str(s.n_prompt),
        "-ntg", str(s.n_gen),
        # the smallest B once more at the end, a line that may be lost: measured here, the
        # pinned tool sometimes exits 0 without its last JSON line (-npl 4,8 printed only
        # B = 4); parse() keeps the first record of each B
        "-npl", ",".join(str(b) for b in (*s.batches, min(s.batches))),
        "-t", str(s.n_threads),
        "-tb", str(s.n_threads),
        "-fa", "on" if s.flash_attn else "off",
        "--swa-full",
        "-ngl", str(s.n_gpu_layers),
    ]  # fmt: skip


def command(tools: NativeTools, model: Path, s: BatchedSettings) -> list[str]:
    return tools.command(TOOL, *arguments(str(model), s), "--output-format", "jsonl")


def parse(text: str) -> dict[int, dict[str, Any]]:
    """The JSON lines of ``--output-format jsonl``, by B (``pl``; the first record of each
    B when one appears twice)."""
    out: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "pl" in record and "speed_tg" in record:
            out.setdefault(int(record["pl"]), record)
    return out


def run(
    tools: NativeTools, model: Path, s: BatchedSettings, *, timeout: float = 1800.0
) -> dict[int, dict[str, Any]]:
    """Run it once; its records by B (``speed_tg`` is S_TG in tokens/s)."""
    cmd = command(tools, model, s)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=tools.env(), timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise BatchedBenchError(
            f"llama-batched-bench on {model} ran over {timeout:.0f} s; fix: a smaller model "
            "or fewer B values"
        ) from None
    records = parse(proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0 or set(records) != set(s.batches):
        tail = "\n".join(proc.stderr.splitlines()[-12:])
        raise BatchedBenchError(
            f"llama-batched-bench on {model} exited {proc.returncode} with results for B = "
            f"{sorted(records)} of {list(s.batches)}\n{tail}\ncommand: {' '.join(cmd)}"
        )
    return records


def command_text(s: BatchedSettings) -> str:
    """The command line with MODEL for the model (for reports)."""
    return " ".join([TOOL, *arguments("MODEL", s)])
