"""``llama-harness agree``: the figures (as llama.cpp's llama-perplexity --kl-divergence
defines them), the thresholds file and its errors, and the verdict. No build needed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from harness.bench import agree
from harness.bench.agree import AgreeError, Figures, compare_logits, load_limits, percentile


def naive_figures(ref: np.ndarray, other: np.ndarray, targets: list[int]) -> dict[str, float]:
    """The same definitions, written out one position and one token at a time."""
    klds, nll_r, nll_o, same = [], [], [], 0
    for row_r, row_o, tok in zip(ref.tolist(), other.tolist(), targets, strict=True):
        zr = math.log(sum(math.exp(x) for x in row_r))
        zo = math.log(sum(math.exp(x) for x in row_o))
        lr = [x - zr for x in row_r]
        lo = [x - zo for x in row_o]
        klds.append(sum(math.exp(a) * (a - b) for a, b in zip(lr, lo, strict=True) if a > -16))
        nll_r.append(-lr[tok])
        nll_o.append(-lo[tok])
        same += lr.index(max(lr)) == lo.index(max(lo))
    n = len(targets)
    return {
        "kld_mean": sum(klds) / n,
        "kld_max": max(klds),
        "top1": same / n,
        "ppl_ratio": math.exp(sum(nll_o) / n - sum(nll_r) / n),
        "ppl_ref": math.exp(sum(nll_r) / n),
    }


def test_identical_logits_agree_exactly() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 50)).astype(np.float32)
    f = compare_logits(ref, ref.copy(), list(rng.integers(0, 50, 40)))
    assert f.kld_mean == 0 and f.kld_max == 0 and f.top1 == 1 and f.ppl_ratio == 1


def test_figures_match_the_definitions() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 3, size=(30, 20)).astype(np.float32)
    other = (ref + rng.normal(0, 0.5, size=ref.shape)).astype(np.float32)
    targets = [int(t) for t in rng.integers(0, 20, 30)]
    f = compare_logits(ref, other, targets, block=7)  # blocks must not change anything
    want = naive_figures(ref.astype(np.float64), other.astype(np.float64), targets)
    assert f.positions == 30
    assert f.kld_mean == pytest.approx(want["kld_mean"], rel=1e-9)
    assert f.kld_max == pytest.approx(want["kld_max"], rel=1e-9)
    assert f.top1 == pytest.approx(want["top1"])
    assert f.ppl_ratio == pytest.approx(want["ppl_ratio"], rel=1e-9)
    assert f.ppl_ref == pytest.approx(want["ppl_ref"], rel=1e-9)
    assert 0 < f.kld_median <= f.kld_p99 <= f.kld_max


def test_reference_log_probs_below_minus_16_are_ignored_as_in_llama_cpp() -> None:
    ref = np.array([[0.0, -40.0]], dtype=np.float32)  # token 1: log p ~ -40
    other = np.array([[0.0, 0.0]], dtype=np.float32)
    f = compare_logits(ref, other, [0])
    # only token 0 counts: p_ref(0) ~ 1, log p_other(0) = log 0.5
    assert f.kld_mean == pytest.approx(math.log(2), rel=1e-6)


def test_percentile_interpolates_like_llama_cpp() -> None:
    values = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    assert percentile(values, 0.5) == 2.0
    assert percentile(values, 0.99) == pytest.approx(3.96)
    assert percentile(values, 0.0) == 0.0 and percentile(values, 1.0) == 4.0


def test_shapes_that_differ_cannot_be_compared() -> None:
    with pytest.raises(AgreeError, match="different shapes"):
        compare_logits(np.zeros((3, 4)), np.zeros((3, 5)), [0, 0, 0])
    with pytest.raises(AgreeError, match="2 target tokens for 3"):
        compare_logits(np.zeros((3, 4)), np.zeros((3, 4)), [0, 0])


def figures(**changes: float) -> Figures:
    base = {"positions": 252, "kld_mean": 1e-5, "kld_mean_err": 1e-6, "kld_median": 1e-5,
            "kld_p99": 1e-4, "kld_max": 2e-4, "top1": 1.0, "ppl_ref": 10.0, "ppl_other": 10.0,
            "ppl_ratio": 1.0, "dp_rms": 1e-4}  # fmt: skip
    base.update(changes)
    return Figures(**base)  # type: ignore[arg-type]


def test_the_shipped_thresholds_load_for_each_type() -> None:
    for qtype in ("F32", "Q8_0", "Q4_K_M", "SOMETHING_NEW"):
        limits = load_limits(qtype)
        assert set(limits.limits) <= set(agree.LIMITS) and limits.limits
        assert 0 <= limits.relative_tolerance < 1
        assert not limits.check(figures())  # builds that agree closely pass everywhere


def test_a_figure_beyond_its_limit_fails_with_the_numbers(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "relative_tolerance: 0.5\ntypes:\n  default: {kld_mean: 0.01, top1_disagree: 0.1}\n"
    )
    limits = load_limits("F32", path)
    assert limits.quant_type == "default"
    assert not limits.check(figures(kld_mean=0.0149))  # within limit x 1.5
    (line,) = limits.check(figures(kld_mean=0.02))
    assert line == "mean KLD 0.02 > limit 0.01 (+50% tolerance = 0.015)"
    (line,) = limits.check(figures(top1=0.8))
    assert "top-1 disagreement 20.00% > limit 10.00%" in line


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("types: {default: {kld_mean: 1}}\n", "field relative_tolerance"),
        ("relative_tolerance: 0.1\ntypes: {F32: {kld_mean: 1}}\n", "field types"),
        (
            "relative_tolerance: 0.1\ntypes: {default: {kld_avg: 1}}\n",
            "field types.default.kld_avg",
        ),
        ("relative_tolerance: 0.1\ntypes: {default: {kld_mean: -1}}\n", "types.default.kld_mean"),
        ("relative_tolerance: [\n", "not valid YAML"),
    ],
)
def test_a_bad_thresholds_file_names_the_field(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(AgreeError) as info:
        load_limits("F32", path)
    assert str(path) in str(info.value) and where in str(info.value)
    assert "Fix:" in str(info.value)


def test_quant_type_names_the_gguf_file_type(tiny_gguf: Path) -> None:
    assert agree.quant_type(tiny_gguf) == "F32"


@pytest.mark.parametrize(
    ("qtype", "measured", "ok"),
    [
        # measured here against cpu (harness/bench/agree-thresholds.yaml has the table)
        ("F32", figures(kld_mean=4.3e-7, kld_p99=8.1e-7, kld_max=1.1e-6, ppl_ratio=0.99998), True),
        (
            "Q4_K_M",
            figures(kld_mean=0.0054, kld_p99=0.024, kld_max=0.037, top1=0.9405, ppl_ratio=0.9934),
            True,
        ),
        (
            "Q4_K_M",
            figures(kld_mean=0.0052, kld_p99=0.020, kld_max=0.029, top1=0.9405, ppl_ratio=0.9952),
            True,
        ),
        # the self-test noise on tiny: sigma 0.1 and sigma 1
        (
            "F32",
            figures(kld_mean=0.005, kld_p99=0.0058, kld_max=0.0059, top1=0.655, ppl_ratio=1.0158),
            False,
        ),
        (
            "F32",
            figures(kld_mean=0.498, kld_p99=0.591, kld_max=0.605, top1=0.0198, ppl_ratio=1.83),
            False,
        ),
    ],
)
def test_the_shipped_limits_pass_correct_builds_and_fail_wrong_ones(
    qtype: str, measured: Figures, ok: bool
) -> None:
    assert (not load_limits(qtype).check(measured)) is ok
