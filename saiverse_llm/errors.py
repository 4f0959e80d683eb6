"""The client's own errors, and which errors one retry may fix (:func:`is_transient`).

Errors of the other jobs live beside their code: :class:`~saiverse_llm.pool.ModelLoadError`
(loading), :class:`~saiverse_llm.tools.ToolCallError` (tool calls),
:class:`~saiverse_llm.fallback.FallbackError` (fallback),
:class:`~saiverse_llm.messages.MessageError` (input messages).
"""

from __future__ import annotations

import re

from saiverse_llm.fallback import FallbackError
from saiverse_llm.messages import MessageError
from saiverse_llm.pool import ModelLoadError
from saiverse_llm.redact import redact_text
from saiverse_llm.tools import ToolCallError


class GenerationError(RuntimeError):
    """A generation failed in a way a retry would not fix. Its text is redacted
    (:func:`saiverse_llm.redact.redact_text`) when it is made, as a
    :class:`~saiverse_llm.pool.ModelLoadError`'s is."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact_text(a) if isinstance(a, str) else a for a in args))


class ContextOverflowError(GenerationError):
    """The prompt does not fit into n_ctx."""


class TemplateError(GenerationError):
    """The chat template rejected the messages."""


class RetryDivergedError(GenerationError):
    """A retried stream produced different text than was already yielded."""


class NanLogitsError(GenerationError):
    """The model's logits for the next token hold NaN: its arithmetic broke (a build for
    another CPU or GPU, a faulty offload, a damaged model file). No token can be chosen
    from them: greedy decoding fails the request in both steady loops (numpy's argmax
    and the compiled loop's would otherwise pick different tokens), sampling fails it too
    (llama.cpp's chain would pick a token anyway, or abort the process inside a grammar),
    and a retry gives the same NaN."""

    def __init__(self) -> None:
        super().__init__(
            "the model's logits for the next token hold NaN (its arithmetic broke: a build "
            "for another CPU or GPU, a faulty GPU offload, or a damaged model file). Fix: "
            "run `llama-harness doctor`, try n_gpu_layers 0, and check the file's SHA-256"
        )


class TransientError(RuntimeError):
    """Raise (e.g. from a hook) to mark an error as worth one retry."""


_DECODE_RC = re.compile(r"llama_decode returned (-?\d+)")


def is_transient(exc: BaseException) -> bool:
    """Whether one retry may help.

    Not transient: load failures, our own generation errors (context overflow, template,
    tool-call JSON, diverged retry), ValueError/TypeError (bad input), MemoryError, and
    ``llama_decode`` return codes 1 (no KV slot: the cache is full) and -1 (invalid batch).
    Transient: :class:`TransientError`, ``llama_decode`` returning 2 (aborted) or < -1
    (compute failure), and any other plain ``RuntimeError`` raised during decoding."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(
        exc,
        (
            GenerationError,
            ModelLoadError,
            ToolCallError,
            FallbackError,
            MessageError,
            ValueError,
            TypeError,
            MemoryError,
        ),
    ):
        return False
    if isinstance(exc, RuntimeError):
        match = _DECODE_RC.search(str(exc))
        if match:
            code = int(match.group(1))
            return code == 2 or code < -1
        return True
    return False
