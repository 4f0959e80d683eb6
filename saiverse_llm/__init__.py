"""A SAIVerse-compatible llama.cpp provider (model configs, client, fallback).

``from saiverse_llm import LlamaCppClient, get_llm_client``; importing this package does not
import llama_cpp (that happens when a model is first loaded).
"""

from saiverse_llm.client import (
    DEFAULT_CONTEXT_CAP,
    ContextOverflowError,
    GenerationError,
    LlamaCppClient,
    RetryDivergedError,
    TemplateError,
    TransientError,
    get_llm_client,
    is_transient,
)
from saiverse_llm.fallback import (
    FallbackError,
    FallbackUnavailable,
    GeminiFallback,
    LocalModelFallback,
)
from saiverse_llm.loading import ModelMemoryError
from saiverse_llm.messages import MessageError, normalize_messages
from saiverse_llm.pool import ModelLoadError, ModelPool, default_pool
from saiverse_llm.schema import SchemaError, SchemaMismatchError
from saiverse_llm.tools import ToolCall, ToolCallError
from saiverse_llm.usage import Usage, UsageTotals

__version__ = "0.1.0"


def unload(path: str) -> int:
    """Unload every pooled model of this file from the process-wide pool."""
    return default_pool().unload(path)


def unload_all() -> int:
    """Unload every model in the process-wide pool."""
    return default_pool().unload_all()


__all__ = [
    "DEFAULT_CONTEXT_CAP",
    "ContextOverflowError",
    "FallbackError",
    "FallbackUnavailable",
    "GeminiFallback",
    "GenerationError",
    "LlamaCppClient",
    "LocalModelFallback",
    "MessageError",
    "ModelLoadError",
    "ModelMemoryError",
    "ModelPool",
    "RetryDivergedError",
    "SchemaError",
    "SchemaMismatchError",
    "TemplateError",
    "ToolCall",
    "ToolCallError",
    "TransientError",
    "Usage",
    "UsageTotals",
    "__version__",
    "default_pool",
    "get_llm_client",
    "is_transient",
    "normalize_messages",
    "unload",
    "unload_all",
]
