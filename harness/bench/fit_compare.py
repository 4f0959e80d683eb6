"""``saiverse-llm fit`` next to llama.cpp's own accounting, as a table for reports.

Two references, both from the same llama-cpp-python build:

- **load log**: a real load through the client (``n_gpu_layers`` 0, this interpreter's
  ``llama_cpp``); llama.cpp logs every buffer it allocates (model, KV, compute, output);
- **llama-fit-params** ``--fit-print`` (``harness.build.native_tools``, built in the wheel's tree):
  llama.cpp's planner, sizing a load without allocating it, so it also runs on the seed
  models' header-only GGUFs. Its host model figure leaves out the CPU_REPACK buffer; the
  "ours" column does the same for those rows.

Steps: :func:`load_rows` and :func:`fit_params_rows` -> :func:`render` (Markdown) ->
``reports_dir()/fit/fit-compare.{md,json}`` (``llama-harness fit-compare``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from saiverse_llm import fit

MIB = fit.MIB


@dataclass(frozen=True)
class Row:
    """One comparison, MiB: ours vs llama.cpp's for weights, KV cache, compute and total."""

    model: str
    reference: str  # "load log" or "llama-fit-params"
    settings: str
    ours: tuple[float, float, float]
    theirs: tuple[float, float, float]

    @property
    def ours_total(self) -> float:
        return sum(self.ours)

    @property
    def theirs_total(self) -> float:
        return sum(self.theirs)

    @property
    def percent(self) -> float:
        return 100.0 * (self.ours_total - self.theirs_total) / self.theirs_total

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            ours_total=self.ours_total, theirs_total=self.theirs_total, percent=self.percent
        )
        return data


def _settings_text(n_ctx: int, kwargs: dict[str, Any]) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k != "chat_format")
    return f"ctx {n_ctx}" + (f", {extra}" if extra else "")


def load_rows(cases: Sequence[tuple[str, Path, int, dict[str, Any]]]) -> list[Row]:
    """Load each (label, path, n_ctx, client kwargs) through the client on the CPU and compare
    the estimate with the buffers llama.cpp logged (model = mapped + repacked weights)."""
    from saiverse_llm.client import LlamaCppClient
    from saiverse_llm.pool import ModelPool

    rows: list[Row] = []
    for label, path, n_ctx, kwargs in cases:
        client = LlamaCppClient(
            path, context_length=n_ctx, n_gpu_layers=0, fallback_on_error=False,
            pool=ModelPool(), n_threads=1, **kwargs,
        )  # fmt: skip
        try:
            measured = client.load_report()["memory_mib"]
        finally:
            client.unload()
        llama_kwargs = {k: v for k, v in kwargs.items() if k != "chat_format"}
        req = fit.request_for(path, n_ctx=n_ctx, n_gpu_layers=0, llama_kwargs=llama_kwargs)
        e = fit.estimate(req.shape, req.settings)
        rows.append(
            Row(
                model=label,
                reference="load log",
                settings=_settings_text(n_ctx, kwargs),
                ours=(
                    (e.weights_bytes + e.repack_bytes) / MIB,
                    e.kv_cache_bytes / MIB,
                    e.compute_bytes / MIB,
                ),
                theirs=(
                    sum(measured["model"].values()),
                    sum(measured["kv"].values()),
                    sum(measured["compute"].values()),
                ),
            )
        )
    return rows


def fit_params_rows(tools: Any, cases: Sequence[tuple[str, Path, int]]) -> list[Row]:
    """Run ``llama-fit-params --fit-print`` (``tools``: harness.build.native_tools.NativeTools) with
    the client's settings on each (label, path, n_ctx) and compare."""
    rows: list[Row] = []
    for label, path, n_ctx in cases:
        args = ["-m", str(path), "-c", str(n_ctx), "-b", "512", "-ub", "512", "-fa", "off"]
        args += ["--swa-full", "-ngl", "0", "-fitp", "on"]
        proc = subprocess.run(
            tools.command("llama-fit-params", *args), env=tools.env(), capture_output=True,
            text=True, timeout=300, check=False,
        )  # fmt: skip
        host = [ln for ln in proc.stdout.splitlines() if ln.startswith("Host ")]
        if proc.returncode != 0 or not host:
            raise RuntimeError(
                f"llama-fit-params failed on {path} (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}"
            )
        model, kv, compute = (float(v) for v in host[0].split()[1:4])
        e = fit.estimate(fit.read_shape(path), fit.LoadSettings(n_ctx=n_ctx))
        rows.append(
            Row(
                model=label,
                reference="llama-fit-params",
                settings=f"ctx {n_ctx}",
                ours=(
                    (e.weights_bytes - e.repack_bytes) / MIB,
                    e.kv_cache_bytes / MIB,
                    e.compute_bytes / MIB,
                ),
                theirs=(model, kv, compute),
            )
        )
    return rows


def render(rows: Sequence[Row]) -> str:
    """A Markdown table: per row ours / llama.cpp for each part, the totals and the percent."""
    lines = [
        "| model | reference | settings | weights MiB (ours / llama.cpp) | KV MiB | compute MiB "
        "| total MiB | diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        parts = " | ".join(f"{o:,.1f} / {t:,.1f}" for o, t in zip(r.ours, r.theirs, strict=True))
        lines.append(
            f"| {r.model} | {r.reference} | {r.settings} | {parts} | "
            f"{r.ours_total:,.1f} / {r.theirs_total:,.1f} | {r.percent:+.2f}% |"
        )
    return "\n".join(lines) + "\n"
