"""Process-wide pool of loaded models: one load per key, shared by every client.

A key is everything that changes what llama.cpp loads: the resolved path, the file's
mtime and size, n_ctx, n_gpu_layers, n_threads, chat_format and any extra Llama kwargs.
Two clients asking for the same key share one model; loading the same key from several
threads at once loads it once. A failed load is remembered with its error: the next client
gets the same error without another load attempt (no reload storm) until the file changes
(new mtime/size -> new key) or the failure is forgotten via :meth:`ModelPool.unload`.

The pool can be capped (``max_models``, LRU eviction; ``$SAIVERSE_LLM_MAX_MODELS`` for the
process-wide pool, default 4). Eviction prefers idle models; a model that is evicted or
unloaded while a call still uses it is freed when that call ends (its ``close()`` defers),
never under it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from saiverse_llm.redact import redact_text
from saiverse_llm.user_errors import env_int

logger = logging.getLogger("saiverse_llm.pool")

DEFAULT_MAX_MODELS = 4


class ModelLoadError(RuntimeError):
    """A model could not be loaded. ``remembered`` is true when this is a cached failure.

    The message and ``path`` are redacted (:func:`saiverse_llm.redact.redact_text`) when the
    error is made: a ``model_path`` such as ``https://user:pass@host/x.gguf?token=...`` must
    not reach the caller's logs through the error's text."""

    def __init__(self, message: str, *, path: str = "", remembered: bool = False) -> None:
        self.path = redact_text(path)
        self.remembered = remembered
        super().__init__(redact_text(message))


@dataclass(frozen=True)
class ModelKey:
    path: str
    mtime_ns: int | None
    size: int | None
    n_ctx: int
    n_gpu_layers: int
    n_threads: int | None = None
    chat_format: str | None = None
    extra: tuple[tuple[str, str], ...] = ()

    @classmethod
    def for_file(
        cls,
        path: Path,
        *,
        n_ctx: int,
        n_gpu_layers: int,
        n_threads: int | None = None,
        chat_format: str | None = None,
        extra: dict[str, object] | None = None,
    ) -> ModelKey:
        resolved = path.resolve()
        try:
            st = resolved.stat()
            mtime: int | None = st.st_mtime_ns
            size: int | None = st.st_size
        except OSError:
            mtime = size = None
        return cls(
            path=str(resolved),
            mtime_ns=mtime,
            size=size,
            n_ctx=n_ctx,
            n_gpu_layers=n_gpu_layers,
            n_threads=n_threads,
            chat_format=chat_format,
            extra=tuple(sorted((k, repr(v)) for k, v in (extra or {}).items())),
        )


class Closable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Closable)


class ModelPool(Generic[T]):
    def __init__(self, max_models: int | None = None) -> None:
        if max_models is not None and max_models < 1:
            raise ValueError(f"max_models must be >= 1 or None, got {max_models}")
        self.max_models = max_models
        self._lock = threading.Lock()
        self._models: OrderedDict[ModelKey, T] = OrderedDict()
        self._failures: dict[ModelKey, ModelLoadError] = {}
        self._attempts: dict[ModelKey, int] = {}
        self._key_locks: dict[ModelKey, threading.Lock] = {}

    def get(self, key: ModelKey, load: Callable[[], T]) -> T:
        """The loaded model for ``key``, loading it with ``load()`` at most once."""
        with self._lock:
            found = self._lookup(key)
            if found is not None:
                return found
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                found = self._lookup(key)
                if found is not None:
                    return found
                self._attempts[key] = self._attempts.get(key, 0) + 1
            try:
                model = load()
            except Exception as exc:
                error = (
                    exc
                    if isinstance(exc, ModelLoadError)
                    else ModelLoadError(f"{type(exc).__name__}: {exc}", path=key.path)
                )
                with self._lock:
                    self._failures[key] = error
                if error is exc:
                    raise
                raise error from exc
            with self._lock:
                self._models[key] = model
                evicted = self._evict_over_cap(key)
        for old_key, old in evicted:
            logger.info("pool full (max %s models): unloading %s", self.max_models, old_key.path)
            old.close()
        return model

    def _lookup(self, key: ModelKey) -> T | None:
        model = self._models.get(key)
        if model is not None:
            self._models.move_to_end(key)
            return model
        failure = self._failures.get(key)
        if failure is not None:
            raise ModelLoadError(
                f"{failure} (remembered from an earlier load attempt; the file has not changed "
                "since - fix it or call unload() to retry)",
                path=failure.path,
                remembered=True,
            ) from failure
        return None

    def _evict_over_cap(self, keep: ModelKey) -> list[tuple[ModelKey, T]]:
        """Least recently used first, idle models before models in use (a model whose
        ``in_use`` is true is serving a call, e.g. a stream still being read); never
        ``keep``, the model being handed out. A model in use that must go anyway is freed
        by its own ``close()`` when the call ends."""
        evicted: list[tuple[ModelKey, T]] = []
        while self.max_models is not None and len(self._models) > self.max_models:
            others = [k for k in self._models if k != keep]
            idle = [k for k in others if not getattr(self._models[k], "in_use", False)]
            key = (idle or others)[0]
            evicted.append((key, self._models.pop(key)))
        return evicted

    def attempts(self, key: ModelKey) -> int:
        """How many times ``load()`` was called for ``key``."""
        with self._lock:
            return self._attempts.get(key, 0)

    def failure(self, key: ModelKey) -> ModelLoadError | None:
        with self._lock:
            return self._failures.get(key)

    def keys(self) -> list[ModelKey]:
        with self._lock:
            return list(self._models)

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def unload(self, which: ModelKey | str | Path) -> int:
        """Unload models with this key, or every model of this file path; also forgets
        remembered failures for it. Returns how many models were unloaded."""
        path = None if isinstance(which, ModelKey) else str(Path(which).expanduser().resolve())

        def match(key: ModelKey) -> bool:
            return key == which if path is None else key.path == path

        with self._lock:
            gone = [(k, m) for k, m in self._models.items() if match(k)]
            for k, _ in gone:
                del self._models[k]
            for k in [k for k in self._failures if match(k)]:
                del self._failures[k]
        for k, model in gone:
            logger.info("unloading %s", k.path)
            model.close()
        return len(gone)

    def unload_all(self) -> int:
        with self._lock:
            gone = list(self._models.items())
            self._models.clear()
            self._failures.clear()
        for k, model in gone:
            logger.info("unloading %s", k.path)
            model.close()
        return len(gone)


_default_pool: ModelPool[Closable] | None = None
_default_lock = threading.Lock()


def max_models_from_env() -> int | None:
    """``$SAIVERSE_LLM_MAX_MODELS``: a positive count, ``none``/``0``/``unlimited`` for no cap,
    unset for :data:`DEFAULT_MAX_MODELS`; anything else raises
    :class:`~saiverse_llm.user_errors.SettingError` (a ``ValueError``)."""
    return env_int(
        "SAIVERSE_LLM_MAX_MODELS",
        default=DEFAULT_MAX_MODELS,
        bounds=(1, 1024),
        none_words=frozenset({"0", "none", "unlimited"}),
        fix="set it to how many models may stay loaded at once (e.g. 2), or 'none' for no cap",
    )


def default_pool() -> ModelPool[Closable]:
    """The process-wide pool every client uses unless given another."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = ModelPool(max_models_from_env())
        return _default_pool
