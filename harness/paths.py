"""Where the harness keeps what it downloads and builds.

Everything lives under one cache root (``$LLAMA_HARNESS_CACHE``, default
``~/.cache/llama-harness``) so CI can cache one folder. Paths that end up in compiler
command lines (the unpacked sdist and the build folders) are fixed, so ccache can hit.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    env = os.environ.get("LLAMA_HARNESS_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "llama-harness"
    return root


def sdist_dir() -> Path:
    """Downloaded llama-cpp-python sdists (``llama_cpp_python-X.Y.Z.tar.gz``)."""
    return cache_root() / "sdist"


def sdist_file(version: str) -> Path:
    """Where the llama-cpp-python ``version`` sdist is kept: PyPI's file name in
    :func:`sdist_dir` (``sdist/llama_cpp_python-X.Y.Z.tar.gz``)."""
    return sdist_dir() / f"llama_cpp_python-{version}.tar.gz"


def src_dir() -> Path:
    """Unpacked sdists, one stable folder per version (``src/llama_cpp_python-X.Y.Z``)."""
    return cache_root() / "src"


def build_dir(variant: str) -> Path:
    """The scikit-build-core build folder of one variant; stable so ccache hits."""
    return cache_root() / "build" / variant


def wheels_dir() -> Path:
    """The wheel cache: ``wheels/<key>/<wheel>`` plus ``wheels/<key>/build.json``."""
    return cache_root() / "wheels"


def logs_dir() -> Path:
    return cache_root() / "logs"


def toolchains_dir() -> Path:
    """Unpacked helper toolchains, e.g. the ``nvidia-cublas`` wheel for CUDA builds."""
    return cache_root() / "toolchains"


def venvs_dir() -> Path:
    """One venv per (variant, wheel) for ``llama-harness agree`` (``venvs/<variant>-<sha12>``)."""
    return cache_root() / "venvs"


def agree_dir() -> Path:
    """``llama-harness agree``'s working folders (logits of a run, removed after it)."""
    return cache_root() / "agree"


def repro_dir() -> Path:
    """Replays of doctor cases: the wheelhouse of their venvs (``repro/wheelhouse``)."""
    return cache_root() / "repro"


def models_dir() -> Path:
    """Synthesized and assembled test models."""
    return cache_root() / "models"


def reports_dir() -> Path:
    """Benchmark results and reports (``$LLAMA_HARNESS_REPORTS``, default ``./reports``)."""
    env = os.environ.get("LLAMA_HARNESS_REPORTS")
    return Path(env).expanduser() if env else PROJECT_ROOT / "reports"
