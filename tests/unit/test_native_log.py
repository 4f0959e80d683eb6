"""llama.cpp's known-harmless warnings are explained once at INFO, not shown as warnings."""

from __future__ import annotations

import logging

import pytest

from saiverse_llm.native import NativeLog

SWA = (
    "llama_kv_cache_iswa: using full-size SWA cache "
    "(ref: https://github.com/ggml-org/llama.cpp/pull/13194#issuecomment-2868343055)\n"
)
CONTROL = (
    "load: control-looking token:    212 '</s>' was not control-type; this is probably a bug "
    "in the model. its type will be overridden\n"
)
WARN = 3  # ggml_log_level GGML_LOG_LEVEL_WARN


def test_harmless_warnings_are_explained_once_at_info(caplog: pytest.LogCaptureFixture) -> None:
    log = NativeLog()
    caplog.set_level(logging.DEBUG, logger="saiverse_llm.llama_cpp")
    with log.capture() as lines:
        for _ in range(2):  # two loads in one process
            log._on_log(WARN, SWA)
            log._on_log(WARN, CONTROL)
    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in records] == [
        logging.INFO,
        logging.INFO,
        logging.DEBUG,
        logging.DEBUG,
    ]
    assert "harmless" in records[0][1] and "swa_full" in records[0][1]
    assert "harmless" in records[1][1]
    # a load's capture still holds them (load-error diagnosis reads every warning)
    assert len(lines.problems) == 4


def test_other_warnings_stay_warnings(caplog: pytest.LogCaptureFixture) -> None:
    log = NativeLog()
    caplog.set_level(logging.DEBUG, logger="saiverse_llm.llama_cpp")
    log._on_log(WARN, "llama_model_load: something else went wrong\n")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
