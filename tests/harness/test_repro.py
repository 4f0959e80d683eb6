"""Every shipped replay reproduces its symptom, the doctor names its cause, and the
catalogue's fix removes the symptom. Replays run in fresh venvs (real pip, real CMake
configure of the pinned sdist, real llama-cpp-python wheels); cases that need a GPU or a
CUDA wheel are skipped with the reason."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml

from harness.doctor import doctor, repro

ROOT = Path(__file__).resolve().parents[2]
CASES = sorted((ROOT / "repro").glob("*.yaml"))


def test_cases_and_catalogue_point_at_each_other() -> None:
    cases = repro.load_cases()
    assert len(cases) == len(CASES) >= 7
    by_cause = {c.cause: c for c in cases}
    for cause in doctor.load_causes():
        if cause.replay:
            assert (ROOT / cause.replay).is_file(), cause.replay
            assert repro.load_case(ROOT / cause.replay).cause == cause.id
    without_gpu = [c for c in cases if "gpu" not in c.requires]
    assert len(without_gpu) >= 5
    assert {c.cause for c in without_gpu} >= {
        "cached-cpu-wheel",
        "already-installed",
        "legacy-cuda-flag",
        "cmake-args-not-forwarded",
        "nvcc-not-found",
        "n-gpu-layers-misspelled",
    }
    assert any("gpu" in c.requires for c in cases), "GPU cases are shipped too"
    for case in cases:
        assert case.fixed is not None, f"{case.id}: the fix must be checked"
        assert case.cause in by_cause


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"cause": "no-such-cause"}, "cause"),
        ({"state": {"pip_cache": "gpu-wheel"}}, "state.pip_cache"),
        ({"state": {"installed": "rocm"}}, "state.installed"),
        ({"llama_cpp_python": "latest"}, "llama_cpp_python"),
        ({"requires": ["tpu"]}, "requires"),
        ({"expect": {"fixed": []}}, "expect.symptom"),
        ({"expect": {"symptom": {"fact": "x", "nope": 1}}}, "expect.symptom"),
        ({"env": {"CMAKE_ARGS": 1}}, "env"),
    ],
)
def test_malformed_case_names_file_and_field(
    patch: dict[str, object], field: str, tmp_path: Path
) -> None:
    data = yaml.safe_load((ROOT / "repro" / "n-gpu-layers-typo.yaml").read_text())
    data.update(patch)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(repro.CaseError) as info:
        repro.load_case(path)
    assert info.value.field.startswith(field)
    assert str(path) in str(info.value) and "fix:" in str(info.value)


def test_a_case_whose_symptom_is_absent_fails(tmp_path: Path) -> None:
    """The check can fail: the typo case with the right spelling reproduces nothing."""
    data = yaml.safe_load((ROOT / "repro" / "n-gpu-layers-typo.yaml").read_text())
    data["runtime"]["kwargs"] = {"n_gpu_layers": -1}
    path = tmp_path / "spelled-right.yaml"
    path.write_text(yaml.safe_dump(data))
    result = repro.replay(repro.load_case(path))
    if result.skipped:
        pytest.skip(result.skipped)
    assert result.symptom is not None
    assert not result.symptom.ok
    assert not result.cause_named
    assert not result.ok
    assert "reproduced: NO" in repro.render(result)


@pytest.mark.slow
@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case_reproduces_symptom_cause_and_fix(path: Path) -> None:
    case = repro.load_case(path)
    pip_dirs = set(Path(tempfile.gettempdir()).glob("pip-*"))
    result = repro.replay(case, fix=True)
    leaked = set(Path(tempfile.gettempdir()).glob("pip-*")) - pip_dirs
    # A build the replay stops at CMake's configure step leaves pip's build folder behind:
    # it must stay inside the replay's root (removed after it), never fill the system's /tmp.
    assert not any(p.is_dir() and p.name.startswith("pip-install-") for p in leaked), leaked
    if result.skipped:
        pytest.skip(result.skipped)
    text = repro.render(result)
    assert result.symptom is not None and result.symptom.ok, text
    assert result.cause_named, text
    if result.fix_skipped:
        pytest.skip(f"symptom reproduced; {result.fix_skipped}")
    assert result.fix is not None and result.fix.ok, text
    assert result.ok
