"""The architecture tables of saiverse_llm/llama_archs.py (and fit's recurrent list) against
the vendored llama.cpp of the pinned sdist: a new sdist that adds, renames or re-classifies an
architecture fails here."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest
import yaml

from harness import paths
from saiverse_llm import fit, llama_archs

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("src/llama-arch.cpp", "src/llama-model.cpp")


def _pin() -> dict[str, str]:
    sdist: dict[str, str] = yaml.safe_load(
        (ROOT / "harness" / "build" / "variants.yaml").read_text()
    )["sdist"]
    return sdist


def test_tables_were_checked_against_the_pinned_sdist() -> None:
    assert _pin()["version"] == llama_archs.CHECKED_AGAINST, (
        "the sdist pin changed: run tests/unit/test_llama_archs.py with the new sdist and "
        "update saiverse_llm/llama_archs.py (and fit.RECURRENT_ARCHS)"
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The two llama.cpp sources: from the unpacked sdist, else from its tarball."""
    pin = _pin()
    root = paths.src_dir() / f"llama_cpp_python-{pin['version']}" / "vendor" / "llama.cpp"
    if all((root / rel).is_file() for rel in SOURCES):
        return {rel: (root / rel).read_text(encoding="utf-8") for rel in SOURCES}
    tarball = paths.sdist_dir() / pin["filename"]
    if not tarball.is_file():
        pytest.skip(f"needs the pinned sdist ({tarball} or {root}); `nox -s build-cpu`")
    out: dict[str, str] = {}
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            for rel in SOURCES:
                if member.name.endswith("vendor/llama.cpp/" + rel):
                    data = tar.extractfile(member)
                    assert data is not None
                    out[rel] = data.read().decode("utf-8")
    return out


def _names(source: dict[str, str]) -> dict[str, str]:
    """LLM_ARCH_* -> its GGUF name, from LLM_ARCH_NAMES."""
    text = source["src/llama-arch.cpp"]
    block = text[text.index("LLM_ARCH_NAMES") :]
    block = block[: block.index("};")]
    return dict(re.findall(r'\{\s*(LLM_ARCH_\w+),\s*"([^"]+)"\s*\}', block))


def _cases_before(text: str, start: str, stop: str) -> list[str]:
    body = text[text.index(start) :]
    return re.findall(r"case (LLM_ARCH_\w+):", body[: body.index(stop)])


def test_known_architectures_are_llama_cpps(source: dict[str, str]) -> None:
    names = _names(source)
    known = {n for k, n in names.items() if k not in ("LLM_ARCH_UNKNOWN", "LLM_ARCH_CLIP")}
    assert set(llama_archs.KNOWN) == known


def test_no_kv_cache_architectures_are_those_create_memory_gives_none(
    source: dict[str, str],
) -> None:
    names = _names(source)
    model = source["src/llama-model.cpp"]
    cases = _cases_before(model, "llama_model::create_memory(", "res = nullptr")
    assert set(llama_archs.NO_KV_CACHE) == {names[c] for c in cases}


def test_recurrent_and_hybrid_architectures_are_llama_cpps(source: dict[str, str]) -> None:
    names = _names(source)
    arch = source["src/llama-arch.cpp"]
    cases = _cases_before(arch, "bool llm_arch_is_recurrent", "return true;")
    cases += _cases_before(arch, "bool llm_arch_is_hybrid", "return true;")
    assert set(fit.RECURRENT_ARCHS) == {names[c] for c in cases}
    assert set(fit.RECURRENT_ARCHS) <= set(llama_archs.KNOWN)
