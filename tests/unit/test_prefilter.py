"""The doctor's regex prefilter (harness/doctor/prefilter.py): a pattern is skipped only
when it cannot match, so every fact and cause is the same as without it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.doctor import build_log, doctor, prefilter

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted((ROOT / "tests" / "doctor_logs").glob("*.yaml"))


def _corpus_logs() -> list[str]:
    return [build_log.clean(yaml.safe_load(p.read_text(encoding="utf-8"))["log"]) for p in CORPUS]


def _cause_patterns(node: Any) -> Iterator[str]:
    if isinstance(node, list):
        for child in node:
            yield from _cause_patterns(child)
    elif isinstance(node, dict):
        if "matches" in node:
            yield str(node["matches"])
        for child in node.values():
            yield from _cause_patterns(child)


def _patterns() -> list[re.Pattern[str]]:
    """Every pattern the doctor runs over a log: build_log's and causes.yaml's."""
    found = [v for v in vars(build_log).values() if isinstance(v, re.Pattern)]
    for table in (build_log._STEP_MARKERS, build_log._ERRORS, build_log._KIND_RES):
        found += [pattern for _step, pattern in table]
    for cause in doctor.load_causes():
        found += [
            re.compile(p, re.IGNORECASE | re.MULTILINE) for p in _cause_patterns(cause.evidence)
        ]
    return found


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        (r"(CUDA|ROCm) error|^\s*Illegal instruction", {" error", "illegal instruction"}),
        (r"nvcc fatal", {"nvcc fatal"}),
        (r"offloaded (\d+)/(\d+) layers to GPU", {" layers to gpu"}),
        (r"(?:Found|find) Vulkan.*?\(found version", {"(found version"}),
        (r"ab+c", None),  # no literal run of 3: always searched
        (r"foo|\d+", None),  # a branch without a word: always searched
        (r"(error)?", None),  # optional: no requirement
        (r"(?:fatal){1,3} stop", {"fatal"}),
    ],
)
def test_required_words_come_from_the_pattern(pattern: str, words: set[str] | None) -> None:
    found = prefilter.required_words(re.compile(pattern, re.IGNORECASE))
    assert (set(found) if found is not None else None) == words


def test_a_text_without_the_words_is_skipped_and_any_other_is_searched() -> None:
    pattern = re.compile(r"segmentation fault|GGML_ASSERT", re.IGNORECASE)
    assert not prefilter.may_match(pattern, "[12/90] Building CXX object ggml.c.o")
    assert prefilter.may_match(pattern, "Segmentation FAULT (core dumped)")
    # IGNORECASE has equivalences str.lower() lacks ("ſ" is "s"): non-ASCII text is searched
    assert pattern.search("ſegmentation fault")
    assert prefilter.may_match(pattern, "ſegmentation fault")
    assert prefilter.search(pattern, "x ggml_assert(y)") is not None


def test_no_pattern_is_skipped_where_it_matches() -> None:
    """Every pattern against every line (and whole log) of the corpus, as written, upper- and
    lower-cased: where it matches, the prefilter lets it run."""
    patterns = _patterns()
    assert len(patterns) > 60
    texts: list[str] = []
    for log in _corpus_logs():
        for variant in (log, log.upper(), log.lower()):
            texts.append(variant)
            texts += variant.splitlines()
    checked = 0
    for pattern in patterns:
        for text in texts:
            if pattern.search(text):
                checked += 1
                assert prefilter.may_match(pattern, text), (pattern.pattern, text)
    assert checked > 1000


def test_the_facts_are_the_same_without_the_prefilter(monkeypatch: pytest.MonkeyPatch) -> None:
    filler = "".join(
        f"[{i}/400] Building CUDA object ggml/src/ggml-cuda/f{i}.cu.o\n"
        f"/usr/local/cuda/bin/nvcc -DGGML_SHARED -O3 -arch=sm_{i % 90} -c f{i}.cu\n"
        for i in range(400)
    )
    logs = [*_corpus_logs(), filler + "\n".join(_corpus_logs())]
    with_it = [build_log.log_facts(log) for log in logs]
    monkeypatch.setattr(prefilter, "may_match", lambda pattern, text: True)
    monkeypatch.setattr(build_log, "may_match", lambda pattern, text: True)
    without = [build_log.log_facts(log) for log in logs]
    assert with_it == without
