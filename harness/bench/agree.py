"""Do two builds compute the same numbers? ``llama-harness agree REF OTHER...``.

A GPU build can offload every layer and still compute garbage (a wrong architecture, a driver
or backend bug). This runs the same model over the same fixed, shipped text
(``harness/bench/data/agree-text.txt``, English and Japanese) through each variant's own venv
(:mod:`harness.bench.agree_child`) and compares the next-token distributions at every scored
position with the reference build's, with the figures of llama.cpp's
``llama-perplexity --kl-divergence`` (tools/perplexity/perplexity.cpp):

* KL divergence ``sum_i p_ref(i) * (log p_ref(i) - log p_other(i))`` per position, with
  llama.cpp's cut of reference log-probabilities <= -16: mean (± its standard error),
  median, 99th percentile (linear interpolation, as llama.cpp) and maximum, in nats;
* top-1 agreement: the fraction of positions whose most likely token is the same;
* perplexity of each build over the scored tokens and their ratio
  ``exp(mean(nll_other) - mean(nll_ref))``; RMS of Δp, the change of the probability of the
  actual next token.

Limits per quantization type (the GGUF ``general.file_type``) live in
``harness/bench/agree-thresholds.yaml`` with a relative tolerance; a figure beyond its limit fails
the comparison and the message gives the numbers. Random-weight synthesized models check
agreement, not quality; the real Gemma 3 270M is the check on a trained model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from harness import paths
from harness.build.variants import Variant
from saiverse_llm.atomic import atomic_write_json, publish_dir

if TYPE_CHECKING:
    from rich.table import Table

THRESHOLDS_FILE = Path(__file__).with_name("agree-thresholds.yaml")
TEXT_FILE = Path(__file__).parent / "data" / "agree-text.txt"
CHILD = Path(__file__).with_name("agree_child.py")
#: llama.cpp ignores reference log-probabilities at or below this in the KL sum.
LOG_PROB_CUT = -16.0
#: The figures a threshold can limit (each: larger is worse).
LIMITS = ("kld_mean", "kld_p99", "kld_max", "top1_disagree", "ppl_ratio_dev")
Say = Callable[[str], None]


class AgreeError(RuntimeError):
    """A comparison cannot run (bad input, a child failed); the message names the fix."""


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figures:
    """What llama-perplexity --kl-divergence reports, for one (reference, other) pair."""

    positions: int
    kld_mean: float
    kld_mean_err: float
    kld_median: float
    kld_p99: float
    kld_max: float
    top1: float  # fraction of positions with the same most likely token
    ppl_ref: float
    ppl_other: float
    ppl_ratio: float  # exp(mean nll_other - mean nll_ref)
    dp_rms: float  # RMS of p_other(next) - p_ref(next)

    def badness(self) -> dict[str, float]:
        """The figures thresholds limit, each one "larger is worse"."""
        return {
            "kld_mean": self.kld_mean,
            "kld_p99": self.kld_p99,
            "kld_max": self.kld_max,
            "top1_disagree": 1.0 - self.top1,
            "ppl_ratio_dev": abs(math.log(self.ppl_ratio)) if self.ppl_ratio > 0 else math.inf,
        }


def _log_softmax(rows: np.ndarray) -> np.ndarray:
    x = rows.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    out: np.ndarray = x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    return out


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """llama.cpp's percentile: linear interpolation on the sorted values."""
    if fraction <= 0:
        return float(sorted_values[0])
    if fraction >= 1:
        return float(sorted_values[-1])
    p = fraction * (len(sorted_values) - 1)
    ip = int(p)
    p -= ip
    upper = sorted_values[min(ip + 1, len(sorted_values) - 1)]
    return float((1 - p) * sorted_values[ip] + p * upper)


def compare_logits(
    ref: np.ndarray, other: np.ndarray, targets: Sequence[int], *, block: int = 32
) -> Figures:
    """Figures for two ``[positions, n_vocab]`` logit arrays and the actual next tokens.

    Raises AgreeError when the shapes or the target count differ."""
    if ref.shape != other.shape or ref.ndim != 2:
        raise AgreeError(
            f"the two builds produced logits of different shapes {ref.shape} and "
            f"{other.shape} (different vocabularies or chunking); they cannot be compared"
        )
    n = ref.shape[0]
    if len(targets) != n or n == 0:
        raise AgreeError(f"{len(targets)} target tokens for {n} scored positions")
    tok = np.asarray(targets, dtype=np.int64)
    kld = np.empty(n)
    nll_ref = np.empty(n)
    nll_oth = np.empty(n)
    same = np.empty(n, dtype=bool)
    for start in range(0, n, block):
        stop = min(start + block, n)
        lr = _log_softmax(np.asarray(ref[start:stop]))
        lo = _log_softmax(np.asarray(other[start:stop]))
        keep = lr > LOG_PROB_CUT
        kld[start:stop] = np.where(keep, np.exp(lr) * (lr - lo), 0.0).sum(axis=1)
        idx = np.arange(stop - start)
        t = tok[start:stop]
        nll_ref[start:stop] = -lr[idx, t]
        nll_oth[start:stop] = -lo[idx, t]
        same[start:stop] = lr.argmax(axis=1) == lo.argmax(axis=1)
    ordered = np.sort(kld)
    err = float(kld.std(ddof=1) / math.sqrt(n)) if n > 10 else 0.0
    dp = np.exp(-nll_oth) - np.exp(-nll_ref)
    return Figures(
        positions=n,
        kld_mean=float(kld.mean()),
        kld_mean_err=err,
        kld_median=percentile(ordered, 0.5),
        kld_p99=percentile(ordered, 0.99),
        kld_max=float(ordered[-1]),
        top1=float(same.mean()),
        ppl_ref=float(math.exp(nll_ref.mean())),
        ppl_other=float(math.exp(nll_oth.mean())),
        ppl_ratio=float(math.exp(nll_oth.mean() - nll_ref.mean())),
        dp_rms=float(math.sqrt((dp**2).mean())),
    )


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Limits:
    quant_type: str  # the entry used ("Q4_K_M", or "default")
    limits: Mapping[str, float]
    relative_tolerance: float
    source: Path

    def check(self, figures: Figures) -> list[str]:
        """One line per figure beyond its limit (limit x (1 + relative tolerance))."""
        failed = []
        for name, value in figures.badness().items():
            limit = self.limits.get(name)
            if limit is None:
                continue
            allowed = limit * (1 + self.relative_tolerance)
            if not value <= allowed:
                failed.append(
                    f"{_LABELS[name]} {_fmt(name, value)} > limit {_fmt(name, limit)} "
                    f"(+{self.relative_tolerance:.0%} tolerance = {_fmt(name, allowed)})"
                )
        return failed


_LABELS = {
    "kld_mean": "mean KLD",
    "kld_p99": "99% KLD",
    "kld_max": "max KLD",
    "top1_disagree": "top-1 disagreement",
    "ppl_ratio_dev": "|ln(PPL ratio)|",
}


def _fmt(name: str, value: float) -> str:
    if name == "top1_disagree":
        return f"{value:.2%}"
    return f"{value:.3g}"


def load_limits(quant_type: str, path: Path = THRESHOLDS_FILE) -> Limits:
    """The limits for ``quant_type`` (e.g. ``Q4_K_M``, ``F32``), else the ``default`` entry.

    Raises AgreeError naming the file, the field, the value and the fix."""

    def bad(where: str, what: str, value: object) -> AgreeError:
        return AgreeError(
            f"{path}: field {where}: {what} (got {value!r}). Fix: see the comment at the top "
            "of the file for the layout"
        )

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AgreeError(f"{path}: cannot read the thresholds file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise AgreeError(f"{path}: not valid YAML: {exc}. Fix: correct the syntax") from exc
    if not isinstance(data, dict):
        raise bad("(top level)", "must be a mapping", type(data).__name__)
    tol = data.get("relative_tolerance")
    if not isinstance(tol, int | float) or isinstance(tol, bool) or not 0 <= tol < 10:
        raise bad("relative_tolerance", "must be a number from 0 to 10", tol)
    types = data.get("types")
    if not isinstance(types, dict) or "default" not in types:
        raise bad("types", "must map quantization types to limits, with a `default` entry", types)
    key = quant_type if quant_type in types else "default"
    entry = types[key]
    if not isinstance(entry, dict) or not entry:
        raise bad(f"types.{key}", "must map figure names to limits", entry)
    limits: dict[str, float] = {}
    for name, value in entry.items():
        if name not in LIMITS:
            raise bad(f"types.{key}.{name}", f"unknown figure; use one of {', '.join(LIMITS)}",
                      name)  # fmt: skip
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise bad(f"types.{key}.{name}", "must be a number >= 0", value)
        limits[name] = float(value)
    return Limits(quant_type=key, limits=limits, relative_tolerance=float(tol), source=path)


def quant_type(model: Path) -> str:
    """The GGUF's ``general.file_type`` as llama.cpp names it without prefix: ``Q4_K_M``,
    ``F32``, ``Q8_0``; ``unknown`` when absent."""
    import gguf

    from saiverse_llm.gguf_file import read_gguf

    value = read_gguf(model).get("general.file_type")
    raw = getattr(value, "value", value)
    if not isinstance(raw, int):
        return "unknown"
    try:
        name = gguf.LlamaFileType(raw).name
    except ValueError:
        return f"file_type {raw}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


# --------------------------------------------------------------------------- venvs


def _sha12(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def variant_venv(variant: str, wheel: Path, *, say: Say | None = None) -> Path:
    """The interpreter of ``<cache>/venvs/<variant>-<wheel sha256[:12]>``: a venv holding
    exactly that wheel and its runtime dependencies (made once: temp folder, then rename)."""
    from harness.build.install import RUNTIME_DEPS

    root = paths.venvs_dir()
    final = root / f"{variant}-{_sha12(wheel)}"
    python = final / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if (final / "llama-harness-venv.json").is_file() and python.exists():
        return python
    root.mkdir(parents=True, exist_ok=True)
    if say:
        say(f"{variant}: making a venv with {wheel.name} in {final}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{variant}-", dir=root))
    try:
        steps = [
            [sys.executable, "-m", "venv", str(tmp)],
            [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
            [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", *RUNTIME_DEPS],
        ]
        # a test session pins llama-cpp-python to ITS wheel via PIP_CONSTRAINT: not here
        env = {k: v for k, v in os.environ.items() if k != "PIP_CONSTRAINT"}
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-8:])
                raise AgreeError(f"making the {variant} venv failed at `{' '.join(cmd[:4])} ...`:"
                                 f"\n{tail}")  # fmt: skip
        atomic_write_json(tmp / "llama-harness-venv.json", {"wheel": str(wheel)})
        publish_dir(tmp, final)  # venvs are relocatable enough for `bin/python` to work
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # A venv's scripts carry its path; only bin/python is used, which does not.
    return python


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Side:
    """One build to run: a variant and the interpreter whose llama_cpp is that build."""

    variant: Variant
    python: str
    n_gpu_layers: int
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Run:
    side: Side
    folder: Path
    meta: dict[str, Any]
    seconds: float


def run_side(
    side: Side, model: Path, text: Path, out: Path, *, n_ctx: int, chunks: int, threads: int,
    noise: float = 0.0, timeout: float = 3600.0,
) -> Run:  # fmt: skip
    """Run :mod:`harness.bench.agree_child` for one side; raise AgreeError with its stderr tail."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [side.python, str(CHILD), "--model", str(model), "--text", str(text), "--out", str(out),
           "--n-ctx", str(n_ctx), "--chunks", str(chunks), "--threads", str(threads),
           "--n-gpu-layers", str(side.n_gpu_layers)]  # fmt: skip
    if noise:
        cmd += ["--noise", str(noise)]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, **side.env}, errors="replace")  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise AgreeError(
            f"{side.variant.name}: computing the logits took longer than {timeout:.0f} s"
        ) from exc
    except OSError as exc:
        raise AgreeError(f"{side.variant.name}: cannot run {side.python}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-12:])
        raise AgreeError(
            f"{side.variant.name}: computing the logits failed (exit {proc.returncode}) in "
            f"{side.python}:\n{tail}"
        )
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    return Run(side=side, folder=out, meta=meta, seconds=time.monotonic() - start)


@dataclass
class Agreement:
    """One (reference, other) comparison and its verdict."""

    reference: str
    other: str
    model: str
    model_path: str
    quant_type: str
    limits_entry: str
    figures: Figures
    failures: list[str]
    details: dict[str, Any]

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def summary(self) -> str:
        f = self.figures
        head = (
            f"agree {self.reference} -> {self.other} on {self.model} ({self.quant_type}, "
            f"{f.positions} positions): mean KLD {f.kld_mean:.3g} ± {f.kld_mean_err:.2g}, "
            f"99% KLD {f.kld_p99:.3g}, max KLD {f.kld_max:.3g}, top-1 {f.top1:.2%}, "
            f"PPL {f.ppl_ref:.4g} -> {f.ppl_other:.4g} (ratio {f.ppl_ratio:.5f})"
        )
        if self.ok:
            return head + f": within the {self.limits_entry} limits"
        return head + f": OUTSIDE the {self.limits_entry} limits: " + "; ".join(self.failures)


def agree(
    reference: Side,
    others: Sequence[Side],
    model: Path,
    *,
    model_name: str,
    text: Path = TEXT_FILE,
    n_ctx: int = 128,
    chunks: int = 4,
    threads: int = 2,
    noise: float = 0.0,
    thresholds: Path = THRESHOLDS_FILE,
    say: Say | None = None,
) -> list[Agreement]:
    """Run the reference once, then each other build, and compare each with the reference.
    ``noise`` (a self-test) perturbs the other builds' logits."""
    tell = say or (lambda _msg: None)
    qtype = quant_type(model)
    limits = load_limits(qtype, thresholds)
    work_root = paths.agree_dir()
    work_root.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(dir=work_root, prefix=".run-") as tmp:
        tell(f"{reference.variant.name}: computing reference logits on {model_name} ...")
        ref = run_side(reference, model, text, Path(tmp) / "ref", n_ctx=n_ctx, chunks=chunks,
                       threads=threads)  # fmt: skip
        tell(f"{reference.variant.name}: {ref.meta['chunks']} chunks in {ref.seconds:.1f} s")
        ref_logits = np.load(ref.folder / "logits.npy", mmap_mode="r")
        for i, side in enumerate(others):
            tell(f"{side.variant.name}: computing logits on {model_name} ...")
            run = run_side(side, model, text, Path(tmp) / f"other{i}", n_ctx=n_ctx,
                           chunks=chunks, threads=threads, noise=noise)  # fmt: skip
            tell(f"{side.variant.name}: {run.meta['chunks']} chunks in {run.seconds:.1f} s")
            if run.meta["targets"] != ref.meta["targets"]:
                raise AgreeError(
                    f"{side.variant.name} tokenized the text differently from "
                    f"{reference.variant.name}; the builds are not the same llama.cpp"
                )
            other_logits = np.load(run.folder / "logits.npy", mmap_mode="r")
            figures = compare_logits(ref_logits, other_logits, ref.meta["targets"])
            del other_logits
            shutil.rmtree(run.folder, ignore_errors=True)
            results.append(
                Agreement(
                    reference=reference.variant.name,
                    other=side.variant.name,
                    model=model_name,
                    model_path=str(model),
                    quant_type=qtype,
                    limits_entry=limits.quant_type,
                    figures=figures,
                    failures=limits.check(figures),
                    details={
                        "n_ctx": n_ctx,
                        "chunks": ref.meta["chunks"],
                        "threads": threads,
                        "text": str(text),
                        "noise": noise,
                        "limits": dict(limits.limits),
                        "relative_tolerance": limits.relative_tolerance,
                        "thresholds_file": str(limits.source),
                        "loadavg": _loadavg(),
                        "reference_run": _run_facts(ref),
                        "other_run": _run_facts(run),
                    },
                )
            )
        del ref_logits
    return results


def _run_facts(run: Run) -> dict[str, Any]:
    keep = ("n_gpu_layers", "offloaded", "eval_seconds", "load_seconds", "llama_cpp_version",
            "system_info", "chunks", "tokens_in_text")  # fmt: skip
    facts = {k: run.meta.get(k) for k in keep}
    facts["python"] = run.side.python
    facts["env"] = dict(run.side.env)
    facts["seconds"] = round(run.seconds, 2)
    return facts


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def write_result(result: Agreement, reports: Path | None = None) -> Path:
    """``reports/<other>/agree-<reference>-<model>.json`` (temp file, rename); the report
    command shows these."""
    folder = (reports or paths.reports_dir()) / result.other
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"agree-{result.reference}-{result.model}.json"
    atomic_write_json(path, result.to_dict())
    return path


def table(results: Sequence[Agreement]) -> Table:
    """The figures as a table (print it with :func:`saiverse_llm.tables.print_table`)."""
    from rich.table import Table

    out = Table(title="llama-harness agree: next-token distributions vs the reference build")
    for head in ("reference", "variant", "model", "type", "positions", "mean KLD", "99% KLD",
                 "max KLD", "top-1", "PPL ref", "PPL variant", "PPL ratio", "verdict"):  # fmt: skip
        out.add_column(head)
    for r in results:
        f = r.figures
        out.add_row(
            r.reference, r.other, r.model, r.quant_type, str(f.positions),
            f"{f.kld_mean:.3g} ± {f.kld_mean_err:.1g}", f"{f.kld_p99:.3g}", f"{f.kld_max:.3g}",
            f"{f.top1:.2%}", f"{f.ppl_ref:.4g}", f"{f.ppl_other:.4g}", f"{f.ppl_ratio:.5f}",
            "pass" if r.ok else "FAIL",
        )  # fmt: skip
    return out
