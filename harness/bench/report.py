"""Merge benchmark results of every variant into one report: Markdown, PNG charts, JSON.

Inputs, per variant, under ``reports_dir()/<variant>/``:

* ``bench.json``: pytest-benchmark JSON written by ``nox -s bench-<variant>``. Each benchmark's
  ``extra_info`` carries its provenance (variant, build key, model sha256, threads, ...) and,
  under ``"metrics"``, the figures it measured (``{"pp512": {"value": .., "stddev": ..,
  "unit": "t/s", "higher_is_better": true, "samples": [..]}}``). A benchmark without
  ``"metrics"`` is read as a latency: its name (or ``extra_info["metric"]``) with the mean and
  stddev of pytest-benchmark's own timings.
* ``llama-bench.json``: written by :mod:`harness.bench.llama_bench` (llama.cpp's own ``llama-bench
-o
  json`` records plus provenance). pp/tg from both give the parity ratio harness / llama-bench.
* ``status.json``: ``{"status": "built-no-gpu", "detail": ...}`` for variants that did not (or
  could not) run; they stay in the tables with their status instead of disappearing.

Outputs (``report.md``, ``report.json``, ``charts/*.png``) are written atomically.
``compare()`` flags regressions against a baseline (a previous ``report.json``, a
pytest-benchmark JSON file, or a reports folder) beyond a threshold, like
``pytest-benchmark compare --compare-fail`` and llama.cpp's ``compare-llama-bench.py``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saiverse_llm import devices
from saiverse_llm.atomic import atomic_output, atomic_write_json, atomic_write_text
from saiverse_llm.redact import redact_obj, redact_text

SCHEMA = "llama-harness-report/1"
BASELINE_VARIANT = "cpu"
PARITY_GOAL = 0.97
#: Streaming goal (issue #11): generate_stream at >= this share of llama.cpp's eval rate.
STREAM_GOAL = 0.95
_STREAM_LEN_RE = re.compile(r"^stream(\d+)(_c|_ratio|_ttft|_floor)?$")
#: Batching goal (issue #19): B client streams at >= this share of llama-batched-bench's S_TG.
BATCH_GOAL = 0.9
_BATCH_RE = re.compile(r"^batch(\d+)(_lbb|_ratio|_ttft|_join)?$")

BENCH_FILE = "bench.json"
LLAMA_BENCH_FILE = "llama-bench.json"
STATUS_FILE = "status.json"
AGREE_GLOB = "agree-*.json"  # harness.bench.agree.write_result
#: status.json values meaning "ran fine"; anything else is shown next to the variant's rows
OK_STATUSES = frozenset({"ok", "passed", "built"})


class ReportError(ValueError):
    """A results file that cannot be read; the message names the file, the field and the fix."""


# --------------------------------------------------------------------------------------------
# metric catalogue


@dataclass(frozen=True)
class MetricSpec:
    label: str
    unit: str
    higher_is_better: bool
    comparable: bool = True  # takes part in --compare


_FIXED: dict[str, MetricSpec] = {
    "load_cold": MetricSpec("load cold", "s", False),
    "load_warm": MetricSpec("load warm (pool)", "s", False),
    "ttft": MetricSpec("TTFT stream", "s", False),
    "stream": MetricSpec("stream e2e", "t/s", True),
    "chat_raw": MetricSpec("chat raw Llama", "s", False),
    "chat_client": MetricSpec("chat via client", "s", False),
    "client_overhead": MetricSpec("client overhead", "Δ%", False, comparable=False),
    "tg_bw_fraction": MetricSpec("tg / BW bound", "%", True, comparable=False),
}
_PATTERNS: list[tuple[re.Pattern[str], MetricSpec]] = [
    # benchmarks/test_streaming.py: generate_stream at N tokens, in its own table
    (re.compile(r"^stream\d+$"), MetricSpec("{m}", "t/s", True)),
    (re.compile(r"^stream\d+_c$"), MetricSpec("{m} C-side eval", "t/s", True)),
    (re.compile(r"^stream\d+_ratio$"), MetricSpec("{m}", "x", True, comparable=False)),
    (re.compile(r"^stream\d+_ttft$"), MetricSpec("{m}", "s", False)),
    (re.compile(r"^stream\d+_floor$"), MetricSpec("{m}", "x", True, comparable=False)),
    # benchmarks/test_batching.py: B concurrent streams, in their own table
    (re.compile(r"^batch\d+$"), MetricSpec("{m} streams", "t/s", True)),
    (re.compile(r"^batch\d+_lbb$"), MetricSpec("{m} llama-batched-bench", "t/s", True)),
    (re.compile(r"^batch\d+_ratio$"), MetricSpec("{m}", "x", True, comparable=False)),
    (re.compile(r"^batch\d+_ttft$"), MetricSpec("{m}", "s", False)),
    (re.compile(r"^batch\d+_join$"), MetricSpec("{m}", "steps", False, comparable=False)),
    (re.compile(r"^pp\d+$"), MetricSpec("{m}", "t/s", True)),
    (re.compile(r"^tg\d+$"), MetricSpec("{m}", "t/s", True)),
    (re.compile(r"^lb_(pp|tg)\d+$"), MetricSpec("llama-bench {s}", "t/s", True)),
    (re.compile(r"^parity_(pp|tg)\d+$"), MetricSpec("parity {s}", "x", True, comparable=False)),
]
# column order in tables; anything else follows alphabetically
_ORDER = [
    "load_cold",
    "load_warm",
    "pp*",
    "lb_pp*",
    "parity_pp*",
    "tg*",
    "lb_tg*",
    "parity_tg*",
    "tg_bw_fraction",
    "ttft",
    "stream",
    "chat_raw",
    "chat_client",
    "client_overhead",
]


def metric_spec(metric: str) -> MetricSpec:
    if metric in _FIXED:
        return _FIXED[metric]
    for pattern, spec in _PATTERNS:
        if pattern.match(metric):
            suffix = metric.split("_", 1)[1] if "_" in metric else metric
            return MetricSpec(
                spec.label.format(m=metric, s=suffix),
                spec.unit,
                spec.higher_is_better,
                spec.comparable,
            )
    return MetricSpec(metric, "s", False)


def _order_key(metric: str) -> tuple[int, str]:
    for i, pat in enumerate(_ORDER):
        if pat.endswith("*"):
            prefix = pat[:-1]
            rest = metric[len(prefix) :]
            if metric.startswith(prefix) and rest.isdigit():
                return (i, f"{int(rest):08d}")
        elif metric == pat:
            return (i, "")
    return (len(_ORDER), metric)


# --------------------------------------------------------------------------------------------
# data model


@dataclass
class Measurement:
    """One figure: a metric of one model on one variant."""

    variant: str
    model: str
    metric: str
    value: float
    stddev: float = 0.0
    rounds: int = 0
    unit: str = ""
    higher_is_better: bool = True
    source: str = ""  # "pytest-benchmark", "llama-bench" or "derived"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def cv(self) -> float | None:
        """Coefficient of variation (stddev / mean), None when undefined."""
        if self.value == 0 or not math.isfinite(self.value):
            return None
        return abs(self.stddev / self.value)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cv"] = self.cv
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurement:
        return cls(
            variant=str(d["variant"]),
            model=str(d["model"]),
            metric=str(d["metric"]),
            value=float(d["value"]),
            stddev=float(d.get("stddev", 0.0)),
            rounds=int(d.get("rounds", 0)),
            unit=str(d.get("unit", "")),
            higher_is_better=bool(d.get("higher_is_better", True)),
            source=str(d.get("source", "")),
            settings=dict(d.get("settings", {})),
        )


@dataclass
class VariantInfo:
    name: str
    status: str = "ok"
    detail: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


@dataclass
class ResultSet:
    variants: dict[str, VariantInfo] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    baseline: str = BASELINE_VARIANT  # the variant ratios are taken against
    agreements: list[dict[str, Any]] = field(default_factory=list)  # agree-*.json contents
    #: (variant, model) -> [(metric, why)] for figures measured while other work competed
    busy: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    #: (variant, model, metric) -> why no figure is derived (the cell reads "n/a")
    refused: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def get(self, variant: str, model: str, metric: str) -> Measurement | None:
        for m in self.measurements:
            if (m.variant, m.model, m.metric) == (variant, model, metric):
                return m
        return None

    def models(self) -> list[str]:
        return sorted({m.model for m in self.measurements})

    def metrics(self, model: str | None = None) -> list[str]:
        names = {m.metric for m in self.measurements if model is None or m.model == model}
        return sorted(names, key=_order_key)

    def variant_names(self) -> list[str]:
        names = set(self.variants) | {m.variant for m in self.measurements}
        return sorted(names, key=lambda v: (v != self.baseline, v))


@dataclass
class Regression:
    variant: str
    model: str
    metric: str
    baseline: float
    current: float
    change_pct: float  # signed change in the metric's "worse" direction, percent
    regressed: bool
    sigmas: float | None = None  # |change| / combined stddev of both runs (None: no spread)


# --------------------------------------------------------------------------------------------
# reading


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({exc.strerror}); fix: check the path") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); fix: rerun the session "
            "that writes it or delete the file"
        ) from exc
    except (RecursionError, ValueError) as exc:  # absurd nesting, 5000-digit numbers
        raise ReportError(
            f"{path}: not a readable JSON document ({type(exc).__name__}); fix: rerun the "
            "session that writes it or delete the file"
        ) from exc


def _as_float(value: Any, *, path: Path, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(
            f"{path}: field {field_name!r} must be a number, got {_shown(value)}; fix: rerun "
            "the benchmark session that wrote this file"
        )
    return float(value)


def _as_int(value: Any, *, path: Path, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ReportError(
            f"{path}: field {field_name!r} must be a whole number, got {_shown(value)}; fix: "
            "rerun the benchmark session that wrote this file"
        )
    if isinstance(value, float) and not value.is_integer():
        raise ReportError(f"{path}: field {field_name!r} must be a whole number, got {value!r}")
    return int(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _settings_from_extra(extra: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "n_threads",
        "n_batch",
        "n_ubatch",
        "n_prompt",
        "n_gen",
        "n_gpu_layers",
        "flash_attn",
        "loadavg",
        "load",
        "isolation",
        "c_side_tps",
        "n_seq_max",
        "n_ctx_seq",
        "llama_batched_bench",
        "completion_tokens",  # per measured round (chat and stream rows)
        "floor_loop",  # stream rows: "C" (the compiled loop alone) or "Python"
    )
    return {k: extra[k] for k in keys if k in extra}


_PROVENANCE_KEYS = (
    "build_key",
    "llama_cpp_version",
    "backend",
    "compiled_backends",
    "offloaded_layers",
    "gpu",
    "cmake_args",
    "runner",
    "bench_set",
)


def parse_bench_json(data: Any, *, path: Path, variant: str | None = None) -> ResultSet:
    """Read one pytest-benchmark JSON document into measurements.

    ``variant`` (the folder name) is used when a benchmark's ``extra_info`` has none.
    """
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError(
            f"{path}: field 'benchmarks' missing: this is not pytest-benchmark JSON; fix: "
            "pass the file written by `pytest --benchmark-json=...`"
        )
    rs = ResultSet()
    for i, bench in enumerate(data["benchmarks"]):
        if not isinstance(bench, dict):
            raise ReportError(f"{path}: benchmarks[{i}] is not an object; fix: rerun the session")
        extra = bench.get("extra_info") or {}
        if not isinstance(extra, dict):
            raise ReportError(f"{path}: benchmarks[{i}].extra_info is not an object")
        var = str(extra.get("variant") or variant or "unknown")
        model = str(extra.get("model") or "-")
        settings = _settings_from_extra(extra)
        info = rs.variants.setdefault(var, VariantInfo(var))
        for key in _PROVENANCE_KEYS:
            if key in extra and key not in info.provenance:
                info.provenance[key] = extra[key]
        if "model_sha256" in extra:
            models = info.provenance.setdefault("models", {})
            models[model] = {
                "sha256": extra["model_sha256"],
                "size": extra.get("model_size"),
                "path": extra.get("model_path"),
            }
        metrics = extra.get("metrics")
        if isinstance(metrics, dict) and metrics:
            for name, m in metrics.items():
                if not isinstance(m, dict):
                    raise ReportError(
                        f"{path}: benchmarks[{i}].extra_info.metrics.{name} not an object"
                    )
                where = f"benchmarks[{i}].extra_info.metrics.{name}"
                spec = metric_spec(name)
                samples = m.get("samples")
                rs.measurements.append(
                    Measurement(
                        variant=var,
                        model=model,
                        metric=str(name),
                        value=_as_float(m.get("value"), path=path, field_name=f"{where}.value"),
                        stddev=_as_float(
                            m.get("stddev", 0.0), path=path, field_name=f"{where}.stddev"
                        ),
                        rounds=_as_int(
                            m.get("rounds", len(samples) if isinstance(samples, list) else 0),
                            path=path,
                            field_name=f"{where}.rounds",
                        ),
                        unit=str(m.get("unit", spec.unit)),
                        higher_is_better=bool(m.get("higher_is_better", spec.higher_is_better)),
                        source="pytest-benchmark",
                        settings=settings,
                    )
                )
        else:
            stats = bench.get("stats")
            if not isinstance(stats, dict):
                raise ReportError(f"{path}: benchmarks[{i}].stats missing; fix: rerun the session")
            name = str(extra.get("metric") or bench.get("name") or f"bench{i}")
            rs.measurements.append(
                Measurement(
                    variant=var,
                    model=model,
                    metric=name,
                    value=_as_float(
                        stats.get("mean"), path=path, field_name=f"benchmarks[{i}].stats.mean"
                    ),
                    stddev=_as_float(
                        stats.get("stddev", 0.0),
                        path=path,
                        field_name=f"benchmarks[{i}].stats.stddev",
                    ),
                    rounds=_as_int(
                        stats.get("rounds", 0),
                        path=path,
                        field_name=f"benchmarks[{i}].stats.rounds",
                    ),
                    unit="s",
                    higher_is_better=False,
                    source="pytest-benchmark",
                    settings=settings,
                )
            )
    machine = data.get("machine_info")
    if isinstance(machine, dict):
        for info in rs.variants.values():
            info.provenance.setdefault("machine", _short_machine_info(machine))
    return rs


def _short_machine_info(machine: Mapping[str, Any]) -> dict[str, Any]:
    cpu = machine.get("cpu") if isinstance(machine.get("cpu"), dict) else {}
    assert isinstance(cpu, dict)
    return {
        "node": machine.get("node"),
        "cpu": cpu.get("brand_raw") or machine.get("processor"),
        "cores": cpu.get("count"),
        "system": machine.get("system"),
        "release": machine.get("release"),
        "python": machine.get("python_version"),
    }


def parse_llama_bench_json(data: Any, *, path: Path, variant: str | None = None) -> ResultSet:
    """Read :func:`harness.bench.llama_bench.run` output: ``{"variant", "runs": [{"model",
    "results":
    [llama-bench records]}]}``, or a bare list of llama-bench ``-o json`` records."""
    runs: list[dict[str, Any]]
    var = variant or "unknown"
    meta: dict[str, Any] = {}
    if isinstance(data, list):
        runs = [{"model": None, "results": data}]
    elif isinstance(data, dict) and isinstance(data.get("runs"), list):
        runs = data["runs"]
        var = str(data.get("variant") or var)
        meta = {k: v for k, v in data.items() if k != "runs"}
    else:
        raise ReportError(
            f"{path}: field 'runs' missing: not llama-bench output; fix: rerun "
            "`llama-harness llama-bench --variant VARIANT`"
        )
    rs = ResultSet()
    info = rs.variants.setdefault(var, VariantInfo(var))
    if meta:
        info.provenance["llama_bench"] = {
            k: meta[k]
            for k in ("build_key", "wheel_key", "binary", "cmake_args", "command", "settings")
            if k in meta
        }
    for r, run in enumerate(runs):
        if not isinstance(run, dict):
            raise ReportError(
                f"{path}: runs[{r}] is not an object (got {_shown(run)}); fix: rerun "
                "`llama-harness llama-bench --variant VARIANT`"
            )
        results = run.get("results")
        if not isinstance(results, list):
            raise ReportError(f"{path}: runs[{r}].results is not a list; fix: rerun llama-bench")
        for j, rec in enumerate(results):
            if not isinstance(rec, dict):
                raise ReportError(f"{path}: runs[{r}].results[{j}] is not an object")
            where = f"runs[{r}].results[{j}]"
            n_prompt = _as_int(rec.get("n_prompt", 0), path=path, field_name=f"{where}.n_prompt")
            n_gen = _as_int(rec.get("n_gen", 0), path=path, field_name=f"{where}.n_gen")
            if n_prompt > 0 and n_gen == 0:
                test = f"pp{n_prompt}"
            elif n_gen > 0 and n_prompt == 0:
                test = f"tg{n_gen}"
            else:
                test = f"pp{n_prompt}_tg{n_gen}"
            model = run.get("model") or Path(str(rec.get("model_filename", "-"))).stem
            samples = rec.get("samples_ts")
            rs.measurements.append(
                Measurement(
                    variant=var,
                    model=str(model),
                    metric=f"lb_{test}",
                    value=_as_float(rec.get("avg_ts"), path=path, field_name=f"{where}.avg_ts"),
                    stddev=_as_float(
                        rec.get("stddev_ts", 0.0), path=path, field_name=f"{where}.stddev_ts"
                    ),
                    rounds=len(samples) if isinstance(samples, list) else 0,
                    unit="t/s",
                    higher_is_better=True,
                    source="llama-bench",
                    settings={
                        "n_threads": rec.get("n_threads"),
                        "n_batch": rec.get("n_batch"),
                        "n_ubatch": rec.get("n_ubatch"),
                        "n_prompt": n_prompt,
                        "n_gen": n_gen,
                        "n_gpu_layers": rec.get("n_gpu_layers"),
                        "flash_attn": rec.get("flash_attn"),
                        "build_commit": rec.get("build_commit"),
                        "backends": rec.get("backends"),
                        "load": run.get("load"),
                        "isolation": run.get("isolation"),
                    },
                )
            )
    return rs


def _merge(into: ResultSet, other: ResultSet) -> None:
    for name, info in other.variants.items():
        mine = into.variants.setdefault(name, VariantInfo(name))
        if info.status != "ok" or info.detail:
            mine.status, mine.detail = info.status, info.detail
        for k, v in info.provenance.items():
            if k == "models" and isinstance(v, dict):
                mine.provenance.setdefault("models", {}).update(v)
            else:
                mine.provenance.setdefault(k, v)
        mine.files.extend(info.files)
    into.measurements.extend(other.measurements)
    into.notes.extend(other.notes)
    into.agreements.extend(other.agreements)


def _parse_file(parse: Any, path: Path, variant: str) -> ResultSet:
    """``parse`` of the JSON in ``path``; a shape the parser did not foresee is a ReportError
    naming the file, never a traceback."""
    data = _read_json(path)
    try:
        result: ResultSet = parse(data, path=path, variant=variant)
    except ReportError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        raise ReportError(
            f"{path}: malformed ({type(exc).__name__}: {exc}); fix: rerun the session that "
            "writes it or delete the file"
        ) from exc
    return result


def load_variant_dir(directory: Path) -> ResultSet:
    """Everything one variant's folder holds (bench.json, llama-bench.json, status.json)."""
    name = directory.name
    rs = ResultSet()
    info = VariantInfo(name)
    rs.variants[name] = info
    status_path = directory / STATUS_FILE
    if status_path.is_file():
        status = _read_json(status_path)
        if not isinstance(status, dict) or not isinstance(status.get("status"), str):
            raise ReportError(
                f"{status_path}: field 'status' missing or not a string; fix: write "
                '{"status": "ok"} (or e.g. "built-no-gpu", "crashed-native")'
            )
        info.status = status["status"]
        info.detail = str(status.get("detail") or status.get("message") or "")
        info.files.append(str(status_path))
        extra = {k: v for k, v in status.items() if k not in ("status", "detail", "message")}
        if extra:
            info.provenance["status_info"] = extra
    bench_path = directory / BENCH_FILE
    if bench_path.is_file():
        _merge(rs, _parse_file(parse_bench_json, bench_path, name))
        info.files.append(str(bench_path))
    lb_path = directory / LLAMA_BENCH_FILE
    if lb_path.is_file():
        _merge(rs, _parse_file(parse_llama_bench_json, lb_path, name))
        info.files.append(str(lb_path))
    for agree_path in sorted(directory.glob(AGREE_GLOB)):
        data = _read_json(agree_path)
        if not isinstance(data, dict) or not isinstance(data.get("figures"), dict):
            raise ReportError(
                f"{agree_path}: field 'figures' missing; fix: rerun `llama-harness agree` "
                "or delete the file"
            )
        rs.agreements.append(data)
        info.files.append(str(agree_path))
    if not info.files:
        info.status = "no-results"
        info.detail = f"no {BENCH_FILE} or {STATUS_FILE} in {name}/"
    elif not bench_path.is_file() and info.status in OK_STATUSES:
        # the folder's name, not its absolute path: the report is published (docs/, CI)
        info.status = "no-bench"
        info.detail = f"{name}/{BENCH_FILE} missing (`nox -s bench-{name}` writes it)"
    return rs


def collect(reports: Path) -> ResultSet:
    """Every variant folder under ``reports`` (those holding a results file)."""
    rs = ResultSet()
    if reports.exists() and not reports.is_dir():
        raise ReportError(
            f"{reports}: is a file, not a folder; fix: pass the folder that holds "
            "<variant>/bench.json (e.g. reports/), not a file in it"
        )
    if not reports.is_dir():
        raise ReportError(
            f"{reports}: no such folder; fix: run `nox -s bench-<variant>` first or pass the "
            "folder that holds <variant>/bench.json"
        )
    for d in sorted(p for p in reports.iterdir() if p.is_dir()):
        if any((d / f).is_file() for f in (BENCH_FILE, LLAMA_BENCH_FILE, STATUS_FILE)):
            _merge(rs, load_variant_dir(d))
    add_derived(rs)
    return rs


def load_baseline(path: Path) -> ResultSet:
    """A previous report.json, a pytest-benchmark JSON file, or a reports folder."""
    if path.is_dir():
        if (path / BENCH_FILE).is_file():  # one variant's folder
            rs = load_variant_dir(path)
            add_derived(rs)
            return rs
        if (path / "report.json").is_file() and not any(
            (p / BENCH_FILE).is_file() for p in path.iterdir() if p.is_dir()
        ):
            return load_baseline(path / "report.json")
        return collect(path)
    data = _read_json(path)
    if isinstance(data, dict) and data.get("schema") == SCHEMA:
        rows = data.get("measurements")
        if not isinstance(rows, list):
            raise ReportError(f"{path}: field 'measurements' missing; fix: regenerate the report")
        rs = ResultSet(measurements=[Measurement.from_dict(r) for r in rows])
        for name, v in (data.get("variants") or {}).items():
            rs.variants[name] = VariantInfo(name, status=str(v.get("status", "ok")))
        return rs
    if isinstance(data, dict) and "benchmarks" in data:
        rs = parse_bench_json(data, path=path, variant=path.parent.name)
        add_derived(rs)
        return rs
    if isinstance(data, dict) and "runs" in data:
        return parse_llama_bench_json(data, path=path, variant=path.parent.name)
    raise ReportError(
        f"{path}: not a report.json (field 'schema' != {SCHEMA!r}), pytest-benchmark JSON or "
        "llama-bench JSON; fix: pass one of those or a reports folder"
    )


# --------------------------------------------------------------------------------------------
# derived figures


def _ratio_stddev(a: Measurement, b: Measurement, ratio: float) -> float:
    ca, cb = a.cv or 0.0, b.cv or 0.0
    return abs(ratio) * math.sqrt(ca * ca + cb * cb)


ISOLATE_HINT = (
    "rerun on an idle machine (`nox -s bench-{v}` with nothing else running), or with "
    "`nox -s bench-{v} -- --isolate` (own scheduler group, waits for quiet; still flagged "
    "when the machine stays busy)"
)


def flag_busy(rs: ResultSet) -> None:
    """Every figure measured while other work competed for the benchmark's cores, per table
    row (variant, model), with why; one note per row saying what to do."""
    from harness.bench.machine_load import busy_reason

    for m in rs.measurements:
        if m.source == "derived":
            continue
        load = m.settings.get("load") or m.settings.get("loadavg")
        threads = m.settings.get("n_threads")
        why = busy_reason(load, threads if isinstance(threads, int) else None)
        if why is not None:
            rs.busy.setdefault((m.variant, m.model), []).append((m.metric, why))
    for (var, model), items in sorted(rs.busy.items()):
        metrics = ", ".join(_header(metric) for metric, _ in items)
        worst = max(items, key=lambda it: _busy_cores(it[1]))[1]
        rs.notes.append(
            f"{var}/{model}: measured under load ({metrics}): {worst}. Threads that must wait "
            "for each other at every step lose far more than their share, so these figures "
            "and the parity ratios from them are not the build's speed; "
            + ISOLATE_HINT.format(v=var)
        )


def _busy_cores(why: str) -> float:
    m = re.search(r"kept ([0-9.]+) of", why) or re.search(r"average was ([0-9.]+)", why)
    return float(m.group(1)) if m else 0.0


def row_busy(rs: ResultSet, variant: str, model: str, metrics: Sequence[str] = ()) -> bool:
    """Was any figure of this row (or of ``metrics`` only) measured under load?"""
    items = rs.busy.get((variant, model), [])
    return any(not metrics or metric in metrics for metric, _ in items)


def parity_diagnosis(rs: ResultSet, ours: Measurement, lb: Measurement, ratio: float) -> str:
    """Why parity is below the goal: Python's per-token cost (wall time vs llama.cpp's own
    timer inside the harness), or llama.cpp itself running slower there (same code and
    settings, so the machine differed: load, thread placement, frequency)."""
    test = lb.metric[3:]
    text = (
        f"{lb.variant}/{lb.model} {test}: parity {ratio:.3f} is below the {PARITY_GOAL} goal "
        f"(harness {ours.value:.1f} t/s vs llama-bench {lb.value:.1f} t/s)"
    )
    c_side = ours.settings.get("c_side_tps")
    if isinstance(c_side, int | float) and c_side > 0:
        c_ratio = c_side / lb.value
        per_token_ms = 1000.0 / ours.value - 1000.0 / c_side  # wall minus llama.cpp's timer
        n = int(test[2:]) if re.fullmatch(r"pp\d+", test) else 1  # tokens per timed call
        cost = f"{per_token_ms * n:.2f} ms " + ("per token" if n == 1 else f"per {n} tokens")
        if c_ratio >= PARITY_GOAL:
            text += (
                f". llama.cpp's own timer inside the harness gave {c_side:.1f} t/s "
                f"({c_ratio:.3f} of llama-bench): the gap is Python's cost, {cost}"
            )
        else:
            text += (
                f". llama.cpp's own timer inside the harness gave {c_side:.1f} t/s too "
                f"({c_ratio:.3f} of llama-bench; Python adds {max(0.0, per_token_ms):.2f} ms per "
                "token): the time is lost inside llama.cpp, which runs the same code with the "
                "same settings, so the machine differed between the two runs (other work, "
                "thread placement, clock)"
            )
    if row_busy(rs, lb.variant, lb.model, (test, lb.metric)):
        text += "; this row was measured under load (see below)"
    return text


def completion_tokens(m: Measurement) -> list[int] | None:
    """The completion tokens of each measured round of ``m`` (a chat or stream row records
    them in ``extra_info["completion_tokens"]``), None when not recorded."""
    value = m.settings.get("completion_tokens")
    items: list[Any] = value if isinstance(value, list) else [value]
    counts = [n for n in items if isinstance(n, int) and not isinstance(n, bool)]
    return counts if counts and len(counts) == len(items) else None


def _span(counts: Sequence[int]) -> str:
    low, high = min(counts), max(counts)
    return f"{low}" if low == high else f"{low}-{high}"


def unequal_work(raw: Measurement, client: Measurement) -> str | None:
    """Why ``client / raw - 1`` would not be the client's overhead, or None when it is: the
    two chat rows (``chat_raw``, ``chat_client``) must have generated the same number of
    completion tokens in every measured round (a 14-token reply timed against a 128-token
    one measures the reply lengths, not the client)."""
    raw_n, client_n = completion_tokens(raw), completion_tokens(client)
    if raw_n is None or client_n is None:
        rows = [name for name, n in (("chat_raw", raw_n), ("chat_client", client_n)) if n is None]
        return (
            f"completion tokens per round not recorded for {' and '.join(rows)}, so it is not "
            "known whether both rows timed the same work"
        )
    if len(set(raw_n) | set(client_n)) > 1:
        return (
            f"the client's replies had {_span(client_n)} completion tokens and the raw "
            f"Llama's {_span(raw_n)}: the two rows timed unequal work"
        )
    return None


def add_derived(rs: ResultSet) -> None:
    """Parity (harness / llama-bench) and client overhead (client / raw - 1, only when both
    chat rows generated the same number of completion tokens: :func:`unequal_work`), in
    place."""
    flag_busy(rs)
    have = {(m.variant, m.model, m.metric) for m in rs.measurements}
    new: list[Measurement] = []
    for m in list(rs.measurements):
        if m.source != "llama-bench" or not m.metric.startswith("lb_"):
            continue
        test = m.metric[3:]
        ours = rs.get(m.variant, m.model, test)
        if ours is None or ours.value <= 0 or m.value <= 0:
            continue
        if (m.variant, m.model, f"parity_{test}") in have:
            continue
        ratio = ours.value / m.value
        settings = {"harness": ours.settings, "llama_bench": m.settings}
        mismatched = [
            k
            for k in ("n_threads", "n_batch", "n_ubatch")
            if k in ours.settings and m.settings.get(k) not in (None, ours.settings[k])
        ]
        if mismatched:
            rs.notes.append(
                f"{m.variant}/{m.model} {test}: harness and llama-bench differ in "
                + ", ".join(f"{k} ({ours.settings[k]} vs {m.settings.get(k)})" for k in mismatched)
                + ": the parity ratio compares unlike settings"
            )
        new.append(
            Measurement(
                variant=m.variant,
                model=m.model,
                metric=f"parity_{test}",
                value=ratio,
                stddev=_ratio_stddev(ours, m, ratio),
                rounds=min(ours.rounds, m.rounds),
                unit="x",
                higher_is_better=True,
                source="derived",
                settings=settings,
            )
        )
        if test.startswith(("pp", "tg")) and ratio < PARITY_GOAL:
            rs.notes.append(parity_diagnosis(rs, ours, m, ratio))
    for name, info in rs.variants.items():
        lb = info.provenance.get("llama_bench")
        wheel = info.provenance.get("build_key")
        if isinstance(lb, dict) and lb.get("wheel_key") and wheel and lb["wheel_key"] != wheel:
            rs.notes.append(
                f"{name}: llama-bench was built for wheel key {str(lb['wheel_key'])[:12]} but the "
                f"benchmarks ran wheel {str(wheel)[:12]}: parity compares different builds; fix: "
                f"rerun `llama-harness llama-bench --variant {name}`"
            )
    hosts: dict[str, list[str]] = {}
    for name, i in sorted(rs.variants.items()):
        if isinstance(i.provenance.get("machine"), dict):
            hosts.setdefault(_machine_text(i.provenance["machine"]), []).append(name)
    hosted = sorted(
        name
        for name, i in rs.variants.items()
        if isinstance(i.provenance.get("runner"), dict)
        and i.provenance["runner"].get("environment") == "github-hosted"
    )
    if hosted:
        rs.notes.append(
            f"{', '.join(hosted)}: measured on GitHub-hosted runners, shared VMs whose speed "
            "varies from run to run and image to image: compare them within the same runner "
            "label over time (the nightly history), not with figures from dedicated machines"
        )
    if len(hosts) > 1:
        rs.notes.append(
            "variants ran on different machines ("
            + "; ".join(f"{', '.join(v)} on {h}" for h, v in sorted(hosts.items()))
            + "): ratios between them compare machines as well as builds"
        )
    for var, model in sorted({(m.variant, m.model) for m in rs.measurements}):
        raw = rs.get(var, model, "chat_raw")
        cli = rs.get(var, model, "chat_client")
        if raw and cli and raw.value > 0 and (var, model, "client_overhead") not in have:
            why = unequal_work(raw, cli)
            if why is not None:
                rs.refused[(var, model, "client_overhead")] = why
                rs.notes.append(
                    f"{var}/{model}: client overhead n/a: {why}; fix: rerun `nox -s "
                    f"bench-{var}` (its chat rows stop both replies at the same length)"
                )
                continue
            ratio = cli.value / raw.value
            new.append(
                Measurement(
                    variant=var,
                    model=model,
                    metric="client_overhead",
                    value=(ratio - 1.0) * 100.0,
                    stddev=_ratio_stddev(cli, raw, ratio) * 100.0,
                    rounds=min(raw.rounds, cli.rounds),
                    unit="Δ%",
                    higher_is_better=False,
                    source="derived",
                )
            )
    rs.measurements.extend(new)


# --------------------------------------------------------------------------------------------
# comparing


def compare(
    current: ResultSet,
    baseline: ResultSet,
    *,
    threshold_pct: float = 5.0,
    min_sigmas: float = 2.0,
) -> list[Regression]:
    """Every comparable metric present in both. ``regressed`` when worse by more than
    ``threshold_pct`` percent AND by more than ``min_sigmas`` times the combined stddev of the
    two runs (so run-to-run noise of a jittery figure is not called a regression; 0 turns the
    noise check off, like ``pytest-benchmark compare --compare-fail``)."""
    out: list[Regression] = []
    for cur in current.measurements:
        spec = metric_spec(cur.metric)
        if not spec.comparable or cur.source == "derived":
            continue
        base = baseline.get(cur.variant, cur.model, cur.metric)
        if base is None or base.value == 0:
            continue
        if cur.higher_is_better:
            worse = (base.value - cur.value) / abs(base.value) * 100.0
        else:
            worse = (cur.value - base.value) / abs(base.value) * 100.0
        spread = math.hypot(cur.stddev, base.stddev)
        sigmas = abs(cur.value - base.value) / spread if spread > 0 else None
        significant = sigmas is None or sigmas > min_sigmas
        out.append(
            Regression(
                variant=cur.variant,
                model=cur.model,
                metric=cur.metric,
                baseline=base.value,
                current=cur.value,
                change_pct=worse,
                regressed=worse > threshold_pct and significant,
                sigmas=sigmas,
            )
        )
    out.sort(key=lambda r: (not r.regressed, r.variant, r.model, _order_key(r.metric)))
    return out


# --------------------------------------------------------------------------------------------
# machine provenance


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, OS and GPUs of the machine writing the report."""
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib: float | None = None
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except (OSError, ValueError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": mem_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "gpus": gpu_info(),
        "runner": runner_info(),
    }


def runner_info(env: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The CI runner that measured, or None outside CI.

    GitHub Actions sets ``RUNNER_ENVIRONMENT`` (``github-hosted`` / ``self-hosted``) and, on
    hosted images, ``ImageOS`` / ``ImageVersion``; act (local runs) sets ``ACT``. Hosted
    runners are shared VMs (4 vCPU Linux/Windows, 3 on arm64 macOS for public repositories)
    whose speed varies run to run, so the report marks their figures.
    """
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") != "true":
        return None
    kind = env.get("RUNNER_ENVIRONMENT") or ("act" if env.get("ACT") else "unknown")
    image = " ".join(x for x in (env.get("ImageOS"), env.get("ImageVersion")) if x)
    return {
        "environment": kind,
        "name": env.get("RUNNER_NAME", ""),
        "os": env.get("RUNNER_OS", ""),
        "arch": env.get("RUNNER_ARCH", ""),
        "image": image,
    }


def runner_text(runner: Any) -> str:
    """``GitHub-hosted runner (ubuntu24 20261110.1)``, ``self-hosted runner gpu-1``, or ''."""
    if not isinstance(runner, dict):
        return ""
    kind = str(runner.get("environment") or "unknown")
    label = {"github-hosted": "GitHub-hosted runner", "self-hosted": "self-hosted runner"}.get(
        kind, f"{kind} runner"
    )
    detail = runner.get("image") or runner.get("name") or ""
    return f"{label} ({detail})" if detail else label


def gpu_info() -> list[dict[str, str]]:
    """``nvidia-smi`` name, driver and memory of each GPU (:mod:`saiverse_llm.devices`);
    empty when there is none."""
    smi = devices.query_nvidia()
    return [{"name": g.name, "driver": g.driver, "memory": g.memory_total} for g in smi.gpus]


# --------------------------------------------------------------------------------------------
# rendering


def _fmt_value(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    if unit == "s":
        if abs(value) < 1e-3:
            return f"{value * 1e6:.0f} µs"
        if abs(value) < 1.0:
            return f"{value * 1000:.1f} ms"
        return f"{value:.2f} s"
    if unit == "Δ%":
        return f"{value:+.1f}%"
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "x":
        return f"{value:.3f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def format_cell(m: Measurement, base: Measurement | None) -> str:
    text = _fmt_value(m.value, m.unit)
    if m.unit in ("%", "Δ%"):
        text += f" ±{m.stddev:.1f}"
    elif m.unit == "x":
        text += f" ±{m.stddev:.3f}"
    elif m.cv is not None:
        text += f" ±{m.cv * 100:.1f}%"
    if (
        base is not None
        and m.variant != base.variant
        and m.unit not in ("%", "Δ%", "x")
        and base.value > 0
        and m.value > 0
    ):
        ratio = m.value / base.value if m.higher_is_better else base.value / m.value
        text += f" (×{ratio:.2f})"
    return text


def _header(metric: str) -> str:
    spec = metric_spec(metric)
    unit = {"s": "", "t/s": " t/s", "%": "", "Δ%": "", "x": ""}.get(spec.unit, f" {spec.unit}")
    return f"{spec.label}{unit}"


def render_markdown(
    rs: ResultSet,
    *,
    machine: Mapping[str, Any] | None = None,
    regressions: Sequence[Regression] | None = None,
    threshold_pct: float = 5.0,
    charts: Sequence[Path] = (),
    chart_base: Path | None = None,
) -> str:
    lines: list[str] = ["# llama-harness benchmark report", ""]
    if machine:
        gpus = ", ".join(f"{g['name']} (driver {g['driver']})" for g in machine.get("gpus") or [])
        lines.append(
            f"Report written on: **{machine.get('cpu')}**, "
            f"{machine.get('usable_cores')} usable cores, "
            f"{machine.get('memory_gib')} GiB, {machine.get('os')}"
            + (f"; GPU: {gpus}" if gpus else "; no GPU")
            + (f"; {runner_text(machine.get('runner'))}" if machine.get("runner") else "")
        )
        lines.append("")
    lines += [
        "Cells: mean ±spread (stddev for ratios, coefficient of variation otherwise); "
        f"(×N) is the ratio to `{rs.baseline}`, >1 is better (faster / quicker). "
        "Parity = harness / llama-bench on the same build, model, threads and batch.",
        "",
        "## Variants",
        "",
        "| variant | status | backend | offloaded layers | llama-cpp-python | build key | GPU "
        "| ran on |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in rs.variant_names():
        info = rs.variants.get(name, VariantInfo(name))
        p = info.provenance
        shown = info.detail and info.status not in OK_STATUSES
        detail = info.detail if len(info.detail) <= 140 else info.detail[:139] + "…"
        status = info.status + (f": {detail}" if shown else "")
        gpu = p.get("gpu")
        gpu_text = gpu.get("name", "") if isinstance(gpu, dict) else (str(gpu) if gpu else "-")
        if software_device(info):
            gpu_text = f"{gpu_text}: software Vulkan device on the CPU, not a GPU"
        lines.append(
            f"| {name} | {_md(status)} | {p.get('backend', '-')} | "
            f"{p.get('offloaded_layers', '-')} | {p.get('llama_cpp_version', '-')} | "
            f"{str(p.get('build_key') or '-')[:16]} | {_md(gpu_text or '-')} | "
            f"{_md(_ran_on(p))} |"
        )
    lines.append("")
    for model in rs.models():
        refused = {metric for (_v, mod, metric) in rs.refused if mod == model}
        metrics = [
            m
            for m in sorted(set(rs.metrics(model)) | refused, key=_order_key)
            if not _STREAM_LEN_RE.match(m) and not _BATCH_RE.match(m)
        ]
        settings = _model_settings(rs, model)
        lines += [f"## {model}", ""]
        if settings:
            lines += [settings, ""]
        lines.append("| variant | " + " | ".join(_header(m) for m in metrics) + " |")
        lines.append("| --- |" + " --- |" * len(metrics))
        for var in rs.variant_names():
            info = rs.variants.get(var, VariantInfo(var))
            cells = []
            for metric in metrics:
                m = rs.get(var, model, metric)
                base = rs.get(rs.baseline, model, metric)
                if m is not None:
                    cells.append(format_cell(m, base))
                else:
                    cells.append("n/a" if (var, model, metric) in rs.refused else "—")
            ok = info.status in OK_STATUSES
            label = var if ok else f"{var} ({info.status})"
            label += row_notes(info)
            if all(c == "—" for c in cells) and ok:
                continue
            if row_busy(rs, var, model):
                label += " ⚠ under load"
            lines.append(f"| {_md(label)} | " + " | ".join(cells) + " |")
        lines.append("")
    parity = [m for m in rs.measurements if m.metric.startswith("parity_")]
    if parity:
        lines += [
            "## Parity with llama-bench",
            "",
            "| variant | model | test | harness t/s | llama-bench t/s | ratio | measured |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for m in sorted(parity, key=lambda x: (x.variant, x.model, _order_key(x.metric))):
            test = m.metric[len("parity_") :]
            ours = rs.get(m.variant, m.model, test)
            lb = rs.get(m.variant, m.model, f"lb_{test}")
            flag = "" if m.value >= PARITY_GOAL else " ⚠"
            busy = [
                side
                for side, metric in (("harness", test), ("llama-bench", f"lb_{test}"))
                if row_busy(rs, m.variant, m.model, (metric,))
            ]
            recorded = all(
                x is not None and (x.settings.get("load") or x.settings.get("loadavg"))
                for x in (ours, lb)
            )
            when = (
                f"⚠ under load ({', '.join(busy)})"
                if busy
                else "quiet"
                if recorded
                else "load not recorded"
            )
            lines.append(
                f"| {m.variant} | {m.model} | {test} | "
                f"{format_cell(ours, None) if ours else '—'} | "
                f"{format_cell(lb, None) if lb else '—'} | "
                f"{m.value:.3f}{flag} | {when} |"
            )
        lines.append("")
    lines += render_streaming(rs)
    lines += render_batching(rs)
    if rs.agreements:
        lines += render_agreements(rs.agreements)
    if regressions is not None:
        bad = [r for r in regressions if r.regressed]
        lines += [
            f"## Comparison with baseline (worse by > {threshold_pct:g}% and beyond the noise)",
            "",
            f"{len(bad)} regression(s) in {len(regressions)} compared figure(s).",
            "",
        ]
        if regressions:
            lines += [
                "| variant | model | metric | baseline | current | worse by | noise (σ) | |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for r in regressions:
                unit = metric_spec(r.metric).unit
                lines.append(
                    f"| {r.variant} | {r.model} | {r.metric} | {_fmt_value(r.baseline, unit)} | "
                    f"{_fmt_value(r.current, unit)} | {r.change_pct:+.1f}% | "
                    f"{'-' if r.sigmas is None else f'{r.sigmas:.1f}'} | "
                    f"{'**REGRESSION**' if r.regressed else 'ok'} |"
                )
            lines.append("")
    if rs.notes:
        lines += ["## Notes", ""] + [f"- {_md(n)}" for n in dict.fromkeys(rs.notes)] + [""]
    if charts:
        lines += ["## Charts", ""]
        for c in charts:
            rel = c.relative_to(chart_base) if chart_base and c.is_relative_to(chart_base) else c
            lines.append(f"![{c.stem}]({rel.as_posix()})")
        lines.append("")
    return "\n".join(lines)


def render_streaming(rs: ResultSet) -> list[str]:
    """The streaming table (benchmarks/test_streaming.py): per variant, model and length,
    generate_stream t/s, llama.cpp's eval rate in the same run, their ratio, llama-bench tg
    of the same build, TTFT, threads and the load while it ran."""
    rows = sorted(
        {
            (m.variant, m.model, int(match.group(1)))
            for m in rs.measurements
            if (match := _STREAM_LEN_RE.match(m.metric)) and match.group(2) is None
        },
        key=lambda r: (r[0] != rs.baseline, r[0], r[1], r[2]),
    )
    if not rows:
        return []
    lines = [
        "## Streaming (generate_stream, temperature 0, exact length)",
        "",
        "Stream t/s: chunks received from the first to the last; C-side: llama.cpp's eval "
        "rate (llama_perf_context) over the same window of the same run; ratio: the two "
        f"divided per round (goal >= {STREAM_GOAL}, flat in length). Floor: the same ratio "
        "for the barest loop of the kind the client ran, on the same context in the same "
        "rounds: (C) the client's compiled loop alone (saiverse_llm/native_loop.c: one-token "
        "llama_decode, llama_get_logits and an argmax, nothing else), (Python) the barest "
        "Python loop; the ratio's ceiling on this model, machine and load (llama.cpp's eval "
        "timer starts after llama_decode has checked the batch, so a loop of nothing but "
        "decodes stays below 1). llama-bench tg: the same build and threads, from "
        "`llama-harness llama-bench`.",
        "",
        "| variant | model | tokens | stream t/s | C-side t/s | ratio | floor "
        "| llama-bench tg | TTFT | threads | load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for var, model, n in rows:
        stream = rs.get(var, model, f"stream{n}")
        c_side = rs.get(var, model, f"stream{n}_c")
        ratio = rs.get(var, model, f"stream{n}_ratio")
        ttft = rs.get(var, model, f"stream{n}_ttft")
        floor = rs.get(var, model, f"stream{n}_floor")
        lb = rs.get(var, model, f"lb_tg{n}")
        lb_label = f"tg{n}"
        if lb is None:
            lb_tests = sorted(
                (m for m in rs.measurements if m.variant == var and m.model == model),
                key=lambda m: _order_key(m.metric),
            )
            lb = next((m for m in lb_tests if re.match(r"^lb_tg\d+$", m.metric)), None)
            lb_label = lb.metric[3:] if lb else ""
        settings = stream.settings if stream else {}
        loadavg = settings.get("loadavg")
        load = f"{loadavg[0]:.2f}" if isinstance(loadavg, list) and loadavg else "-"
        if row_busy(rs, var, model, (f"stream{n}",)):
            load += " ⚠ busy"
        ratio_text = "—"
        if ratio is not None:
            flag = "" if ratio.value >= STREAM_GOAL else " ⚠"
            ratio_text = f"{ratio.value:.3f} ±{ratio.stddev:.3f}{flag}"
        label = var + row_notes(rs.variants.get(var, VariantInfo(var)), short=True)
        lines.append(
            f"| {_md(label)} | {model} | {n} | "
            f"{format_cell(stream, None) if stream else '—'} | "
            f"{format_cell(c_side, None) if c_side else '—'} | {ratio_text} | "
            f"{_floor_cell(floor, settings)} | "
            f"{(format_cell(lb, None) + f' ({lb_label})') if lb else '—'} | "
            f"{format_cell(ttft, None) if ttft else '—'} | "
            f"{settings.get('n_threads', '-')} | {load} |"
        )
    lines.append("")
    return lines


def _floor_cell(floor: Measurement | None, settings: Mapping[str, Any]) -> str:
    """A streaming row's floor, with the loop it ran ("C" or "Python") when recorded."""
    if floor is None:
        return "—"
    loop = settings.get("floor_loop")
    return f"{floor.value:.3f} ±{floor.stddev:.3f}" + (f" ({_md(str(loop))})" if loop else "")


#: What benchmarks/benchlib.py's reduced benchmark set leaves out (LLAMA_HARNESS_BENCH_SET).
REDUCED_SET_TEXT = "tiny model only, streams of 128 and 512 tokens, no 2,048"


def row_notes(info: VariantInfo, *, short: bool = False) -> str:
    """What a variant's benchmark rows must say next to its name: " (software device;
    reduced set: ...)", or "" for a full run on real hardware."""
    notes = ["software device"] if software_device(info) else []
    if reduced_set(info):
        notes.append("reduced set" if short else f"reduced set: {REDUCED_SET_TEXT}")
    return f" ({'; '.join(notes)})" if notes else ""


def reduced_set(info: VariantInfo) -> bool:
    """The variant ran the reduced benchmark set (a software device: tiny model, short
    streams), so its rows are not comparable with a full run's beyond what they hold."""
    return str(info.provenance.get("bench_set", "")).lower() == "reduced"


def render_batching(rs: ResultSet) -> list[str]:
    """The batching table (benchmarks/test_batching.py): per variant, model and B, the
    aggregate t/s of B concurrent client streams, llama-batched-bench's S_TG at the same B
    in the same run, their ratio, the TTFT of a request joining B - 1 running streams and
    the decode steps it waited for a sequence, threads and the load while it ran."""
    rows = sorted(
        {
            (m.variant, m.model, int(match.group(1)))
            for m in rs.measurements
            if (match := _BATCH_RE.match(m.metric)) and match.group(2) is None
        },
        key=lambda r: (r[0] != rs.baseline, r[0], r[1], r[2]),
    )
    if not rows:
        return []
    command = next(
        (
            str(m.settings.get("llama_batched_bench"))
            for m in rs.measurements
            if _BATCH_RE.match(m.metric) and m.settings.get("llama_batched_bench")
        ),
        "llama-batched-bench",
    )
    lines = [
        "## Batching (concurrent generate_stream calls on one model)",
        "",
        "Streams t/s: B threads each read a generate_stream (64-token prompt, 64 tokens, "
        "temperature 0) on one model; tokens per second over the decode steps that held all B "
        "sequences. S_TG: llama.cpp's llama-batched-bench, same build, threads and batch, in "
        f"the same round (`{command}`); a round repeats both, interleaved, until it has "
        "lasted 3 s (at most 9 times; a slow model: once) and keeps their medians; ratio: "
        f"the two divided per round (goal >= {BATCH_GOAL} at every B). TTFT: a request "
        "arriving while B - 1 streams decode (its prompt included); join: decode steps it "
        "waited for a sequence.",
        "",
        "| variant | model | B | streams t/s | llama-batched-bench S_TG | ratio | TTFT | join "
        "| threads | load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for var, model, b in rows:
        ours = rs.get(var, model, f"batch{b}")
        lbb = rs.get(var, model, f"batch{b}_lbb")
        ratio = rs.get(var, model, f"batch{b}_ratio")
        ttft = rs.get(var, model, f"batch{b}_ttft")
        join = rs.get(var, model, f"batch{b}_join")
        settings = ours.settings if ours else {}
        loadavg = settings.get("loadavg")
        load = f"{loadavg[0]:.2f}" if isinstance(loadavg, list) and loadavg else "-"
        if row_busy(rs, var, model, (f"batch{b}",)):
            load += " ⚠ busy"
        ratio_text = "—"
        if ratio is not None:
            flag = "" if ratio.value >= BATCH_GOAL else " ⚠"
            ratio_text = f"{ratio.value:.3f} ±{ratio.stddev:.3f}{flag}"
        lines.append(
            f"| {var} | {model} | {b} | "
            f"{format_cell(ours, None) if ours else '—'} | "
            f"{format_cell(lbb, None) if lbb else '—'} | {ratio_text} | "
            f"{format_cell(ttft, None) if ttft else '—'} | "
            f"{f'{join.value:.0f}' if join else '—'} | "
            f"{settings.get('n_threads', '-')} | {load} |"
        )
    lines.append("")
    return lines


def software_device(info: VariantInfo) -> bool:
    """The variant's benchmarks ran on a software device (llvmpipe): correct, not a GPU."""
    gpu = info.provenance.get("gpu")
    return isinstance(gpu, dict) and str(gpu.get("software", "")).lower() in ("yes", "true")


def render_agreements(agreements: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ``llama-harness agree`` figures: each build vs the reference build."""
    lines = [
        "## Agreement with the reference build (`llama-harness agree`)",
        "",
        "Next-token distributions over the same text, as llama.cpp's `llama-perplexity "
        "--kl-divergence` reports them; limits per quantization type in "
        "`harness/bench/agree-thresholds.yaml`.",
        "",
        "| reference | variant | model | type | positions | mean KLD | 99% KLD | max KLD | "
        "top-1 | PPL ratio | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for a in sorted(agreements, key=lambda x: (str(x.get("other")), str(x.get("model")))):
        f = a["figures"]
        verdict = "pass" if a.get("ok") else "FAIL: " + "; ".join(a.get("failures") or [])
        lines.append(
            f"| {a.get('reference')} | {a.get('other')} | {a.get('model')} | "
            f"{a.get('quant_type')} | {f.get('positions')} | {f.get('kld_mean', 0):.3g} | "
            f"{f.get('kld_p99', 0):.3g} | {f.get('kld_max', 0):.3g} | {f.get('top1', 0):.2%} | "
            f"{f.get('ppl_ratio', 0):.5f} | {_md(verdict)} |"
        )
    lines.append("")
    return lines


def _ran_on(provenance: Mapping[str, Any]) -> str:
    text = _machine_text(provenance.get("machine"))
    runner = runner_text(provenance.get("runner"))
    return f"{text}, {runner}" if runner else text


def _machine_text(machine: Any) -> str:
    if not isinstance(machine, dict):
        return "-"
    cores = f", {machine['cores']} cores" if machine.get("cores") else ""
    return f"{machine.get('node') or '?'} ({machine.get('cpu') or '?'}{cores})"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _model_settings(rs: ResultSet, model: str) -> str:
    seen: dict[str, set[str]] = {}
    for m in rs.measurements:
        if m.model != model or m.source != "pytest-benchmark":
            continue
        for k, v in m.settings.items():
            if k not in (
                "n_prompt",
                "n_gen",
                "n_ctx",
                "loadavg",
                "load",
                "isolation",
                "c_side_tps",
                "completion_tokens",
                "repeats_per_round",
            ):
                seen.setdefault(k, set()).add(str(v))
    info = rs.variants
    sha = next(
        (
            v.provenance["models"][model].get("sha256")
            for v in info.values()
            if model in v.provenance.get("models", {})
        ),
        None,
    )
    parts = [f"{k}={'/'.join(sorted(v))}" for k, v in sorted(seen.items())]
    if sha:
        parts.append(f"sha256 {str(sha)[:12]}…")
    return ("Settings: " + ", ".join(parts)) if parts else ""


#: Chart geometry: at most this many panels side by side; inches per panel (at 110 dpi a
#: two-panel row is ~950 px wide, the width a README shows without scaling).
CHART_COLUMNS = 2
PANEL_SIZE = (4.3, 3.3)
#: A panel whose largest bar is this many times its smallest uses a log axis (else tiny bars
#: vanish next to big ones: tiny model 14 ms vs Gemma 497 ms).
LOG_SPAN = 20.0


def time_unit(seconds: Sequence[float]) -> tuple[str, float]:
    """(unit, factor) that suits the largest of ``seconds``: s, ms or µs."""
    top = max((abs(x) for x in seconds), default=0.0)
    if top >= 1.0:
        return "s", 1.0
    if top >= 1e-3:
        return "ms", 1e3
    return "µs", 1e6


def error_bars(
    values: Sequence[float], stddevs: Sequence[float], *, log: bool
) -> list[list[float]]:
    """Asymmetric error bars that never cross zero (nor the bottom of a log axis)."""
    floor = 0.9 if log else 1.0
    lower = [min(e, v * floor) if v > 0 else 0.0 for v, e in zip(values, stddevs, strict=True)]
    return [lower, list(stddevs)]


def _short(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2g}" if value < 1 else f"{value:.2f}"


def render_charts(rs: ResultSet, out_dir: Path) -> list[Path]:
    """Grouped bar charts, one PNG per family (throughput, latency, parity): one panel per
    metric, at most two panels a row; each panel has its own scale and unit (ms/µs for
    latencies), a log axis when bars differ by more than LOG_SPAN x, the value on each bar, and
    error bars (stddev) clipped at zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    variants = rs.variant_names()
    models = rs.models()

    def bars(
        name: str, title: str, ylabel: str, metrics: list[str], *, ref: float | None = None
    ) -> None:
        """One subplot per metric; bars per model, one series per variant. A throughput
        metric with llama-bench figures gets a hatched "<variant> llama-bench" series too."""
        present = [m for m in metrics if any(x.metric == m for x in rs.measurements)]
        if not present:
            return
        ncols = min(CHART_COLUMNS, len(present))
        nrows = math.ceil(len(present) / ncols)
        fig, axes = plt.subplots(
            nrows,
            ncols,
            figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows + 0.6),
            squeeze=False,
        )
        legend: dict[str, Any] = {}
        for ax, metric in zip(axes.flat, present, strict=False):
            series: list[tuple[str, str, bool]] = []  # (label, metric, hatched)
            for v in variants:
                if any(rs.get(v, mo, metric) for mo in models):
                    series.append((v, metric, False))
                lb = f"lb_{metric}"
                if any(rs.get(v, mo, lb) for mo in models):
                    series.append((f"{v} llama-bench", lb, True))
            found = [
                m
                for label, met, _h in series
                for mo in models
                if (m := rs.get(label.split(" ")[0], mo, met)) is not None
            ]
            unit, factor = ylabel, 1.0
            if metric_spec(metric).unit == "s":
                unit, factor = time_unit([m.value for m in found])
            positive = [m.value * factor for m in found if m.value > 0]
            log = ref is None and bool(positive) and max(positive) / min(positive) > LOG_SPAN
            width = 0.8 / max(1, len(series))
            for k, (label, met, hatched) in enumerate(series):
                var = label.split(" ")[0]
                xs, ys, es = [], [], []
                for i, mo in enumerate(models):
                    m = rs.get(var, mo, met)
                    if m is None:
                        continue
                    xs.append(i + (k - (len(series) - 1) / 2) * width)
                    ys.append(m.value * factor)
                    es.append(m.stddev * factor)
                container = ax.bar(
                    xs,
                    ys,
                    width=width,
                    yerr=error_bars(ys, es, log=log),
                    capsize=3,
                    label=label,
                    hatch="//" if hatched else None,
                    alpha=0.6 if hatched else 1.0,
                )
                labels = (
                    [_fmt_value(y / factor, "s") for y in ys]
                    if metric_spec(metric).unit == "s"
                    else [_short(y) for y in ys]
                )
                ax.bar_label(container, labels=labels, fontsize=7, padding=2)
                legend.setdefault(label, container)
            if ref is not None:
                ax.axhline(ref, color="black", linewidth=0.8, linestyle="--")
            ax.set_xticks(range(len(models)))
            ax.set_xticklabels(models)
            ax.set_title(_header(metric), fontsize=10)
            ax.set_ylabel(unit + (" (log)" if log else ""))
            if log:
                ax.set_yscale("log")
            ax.margins(y=0.15)
        for ax in list(axes.flat)[len(present) :]:
            ax.axis("off")
        fig.suptitle(title, fontsize=11)
        fig.legend(
            list(legend.values()),
            list(legend),
            loc="lower center",
            ncol=min(4, len(legend)),
            fontsize=8,
            frameon=False,
        )
        fig.tight_layout(rect=(0, 0.6 / (PANEL_SIZE[1] * nrows + 0.6), 1, 1))
        path = out_dir / f"{name}.png"
        _save_fig(fig, path)
        plt.close(fig)
        written.append(path)

    all_metrics = rs.metrics()
    tput = [m for m in all_metrics if re.match(r"^(pp|tg)\d+$", m) or m == "stream"]
    bars("throughput", "Throughput (tokens/s, higher is better)", "tokens/s", tput)
    lat = [
        m for m in all_metrics if m in ("load_cold", "load_warm", "ttft", "chat_raw", "chat_client")
    ]
    bars("latency", "Latency (lower is better; each panel its own unit)", "s", lat)
    par = [m for m in all_metrics if m.startswith("parity_")]
    bars("parity", f"harness / llama-bench (goal ≥ {PARITY_GOAL})", "ratio", par, ref=PARITY_GOAL)
    return written


def _save_fig(fig: Any, path: Path) -> None:
    """PNG through :func:`saiverse_llm.atomic.atomic_output` (never a partial chart)."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def to_json(
    rs: ResultSet,
    *,
    machine: Mapping[str, Any],
    regressions: Sequence[Regression] | None,
    threshold_pct: float,
    baseline: str | None,
    charts: Iterable[Path],
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": dict(machine),
        "baseline_variant": rs.baseline,
        "parity_goal": PARITY_GOAL,
        "variants": {
            name: {
                "status": info.status,
                "detail": info.detail,
                "provenance": info.provenance,
                "files": info.files,
            }
            for name, info in sorted(rs.variants.items())
        },
        "measurements": [m.to_dict() for m in rs.measurements],
        "notes": list(dict.fromkeys(rs.notes)),
        "refused": [
            {"variant": v, "model": mod, "metric": metric, "reason": why}
            for (v, mod, metric), why in sorted(rs.refused.items())
        ],
        "agreements": rs.agreements,
        "comparison": None
        if regressions is None
        else {
            "baseline": baseline,
            "threshold_pct": threshold_pct,
            "results": [asdict(r) for r in regressions],
        },
        "charts": [str(c) for c in charts],
    }


@dataclass
class ReportOutput:
    markdown: Path
    json: Path
    charts: list[Path]
    regressions: list[Regression] | None
    text: str

    @property
    def failed(self) -> bool:
        return bool(self.regressions and any(r.regressed for r in self.regressions))


def write_report(
    reports: Path,
    out_dir: Path,
    *,
    baseline: Path | None = None,
    threshold_pct: float = 5.0,
    charts: bool = True,
    step_summary: Path | None = None,
    baseline_variant: str = BASELINE_VARIANT,
    min_sigmas: float = 2.0,
) -> ReportOutput:
    """Collect ``reports``, write report.md / report.json / charts/*.png into ``out_dir``."""
    rs = collect(reports)
    rs.baseline = baseline_variant
    if not rs.variants:
        raise ReportError(
            f"{reports}: no <variant>/{BENCH_FILE}, {LLAMA_BENCH_FILE} or {STATUS_FILE} found; "
            "fix: run `nox -s bench-<variant>` first"
        )
    regressions = None
    if baseline is not None:
        regressions = compare(
            rs, load_baseline(baseline), threshold_pct=threshold_pct, min_sigmas=min_sigmas
        )
    machine = machine_info()
    chart_paths = render_charts(rs, out_dir / "charts") if charts else []
    text = render_markdown(
        rs,
        machine=machine,
        regressions=regressions,
        threshold_pct=threshold_pct,
        charts=chart_paths,
        chart_base=out_dir,
    )
    md_path = out_dir / "report.md"
    json_path = out_dir / "report.json"
    text = redact_text(text)  # the inputs may carry secrets (command lines, URLs, env values)
    atomic_write_text(md_path, text)
    doc = to_json(
        rs,
        machine=machine,
        regressions=regressions,
        threshold_pct=threshold_pct,
        baseline=str(baseline) if baseline else None,
        charts=chart_paths,
    )
    atomic_write_json(json_path, redact_obj(doc), default=str, ensure_ascii=True)
    if step_summary is not None:
        with step_summary.open("a", encoding="utf-8") as f:
            f.write(text + "\n")
    return ReportOutput(md_path, json_path, chart_paths, regressions, text)
