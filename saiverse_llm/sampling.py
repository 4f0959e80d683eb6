"""Choosing the next token: one :class:`Sampler` per request, with its own seed and state.

The sampler reads the logits llama.cpp left for one output row of the last decode
(``llama_get_logits_ith(ctx, idx)``) and returns a token id; it never decodes. It follows
llama-cpp-python's chain and defaults (penalties, grammar, then greedy, or top-k ->
typical -> top-p -> min-p -> temperature -> dist(seed)), and takes the fastest of three
equivalent routes:

* **greedy** (temperature 0, no grammar, no penalties): ``argmax`` of the logits in numpy,
  ~70 us over Gemma's 262,144-token vocabulary, where llama.cpp's greedy sampler copies the
  whole vocabulary into a candidate array first (~2.7 ms measured here, 2 cores);
* **top-k** (temperature > 0, ``top_k`` > 0, a large vocabulary, no grammar, no
  penalties): the exact top-k candidates are found in numpy (a threshold from block maxima,
  then a partition of the few ids above it) and the rest of llama.cpp's chain (typical,
  top-p, min-p, temperature, dist) runs on those k candidates only;
* **chain**: llama.cpp's own sampler chain on the full vocabulary (grammars, repetition
  penalties, small vocabularies).

The top-k route gives the same token as the chain for the same seed (``tests/client``
checks it): the chain's first step keeps the same k candidates, sorted the same way.
``ignore_eos`` masks every end-of-generation id before sampling (benchmarks use it to reach
an exact length).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from saiverse_llm.errors import NanLogitsError
from saiverse_llm.vocab import Vocab

#: Vocabularies at least this large take the numpy top-k route; below it llama.cpp's chain
#: is already fast (669 tokens: ~9 us per token here).
FAST_TOP_K_MIN_VOCAB = 8192
_BLOCK = 256  # block size of the top-k threshold search


_logits_fn: Any = None
_all_logits_fn: Any = None


def logits_function() -> Any:
    """``llama_get_logits_ith(ctx, idx)`` with a prototype of our own returning ``void *``:
    the address of output row ``idx``'s ``n_vocab`` float32 logits comes back as a plain
    int (None for NULL), without a ctypes pointer object per token. Made once per process;
    needs ``llama_cpp``. The one declaration of it (the benchmarks use it too)."""
    global _logits_fn
    if _logits_fn is None:
        import llama_cpp

        prototype = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32)
        _logits_fn = prototype(("llama_get_logits_ith", llama_cpp.llama_cpp._lib))
    return _logits_fn


def _all_logits_function() -> Any:
    """``llama_get_logits`` (every output row of the last decode, in batch order) returning
    a plain address, like :func:`logits_function`."""
    global _all_logits_fn
    if _all_logits_fn is None:
        import llama_cpp

        prototype = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
        _all_logits_fn = prototype(("llama_get_logits", llama_cpp.llama_cpp._lib))
    return _all_logits_fn


def greedy_rows(
    ctx: Any,
    samplers: list[Sampler],
    n_vocab: int,
    views: dict[tuple[int, int], np.ndarray[Any, np.dtype[np.float32]]],
) -> list[int] | None:
    """The tokens of output rows ``0 .. len(samplers) - 1`` of the last decode, each chosen
    by its own greedy ``samplers[i]`` (all on the "greedy" route), with one C call and one
    argmax over the rows instead of a call and an argmax per row.

    ``llama_get_logits`` holds the output rows contiguously, in batch order (llama.h);
    that is checked against ``llama_get_logits_ith`` once per buffer address and row
    count, when the 2-D view of it is made and kept in ``views`` (the caller's cache).
    None when the check fails, or when a row's logits hold NaN: the caller then samples
    row by row (and :meth:`Sampler.sample` fails that row with
    :class:`~saiverse_llm.errors.NanLogitsError`)."""
    k = len(samplers)
    base = _all_logits_function()(ctx)
    view = views.get((base, k))
    if view is None:
        if not base or logits_function()(ctx, k - 1) != base + 4 * n_vocab * (k - 1):
            return None
        if len(views) > 16:
            views.clear()
        flat = np.ctypeslib.as_array((ctypes.c_float * (k * n_vocab)).from_address(base))
        view = flat.reshape(k, n_vocab)
        views[(base, k)] = view
    tokens: list[int] = view.argmax(axis=1).tolist()
    for row, token in enumerate(tokens):
        if view[row, token] != view[row, token]:  # argmax is the first NaN when there is one
            return None  # row by row: Sampler.sample fails that row alone
        sampler = samplers[row]
        if token in sampler._eog_set:  # ignore_eos: the best token that does not end
            logits = view[row]
            logits[sampler._eog] = -np.inf
            tokens[row] = int(logits.argmax())
    return tokens


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings of one request (llama-cpp-python's ``create_completion`` defaults).

    ``grammar`` is a ``llama_cpp.LlamaGrammar`` (or None); ``seed`` seeds the dist sampler."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int = 0
    grammar: Any = None
    ignore_eos: bool = False

    @property
    def penalties(self) -> bool:
        return (
            self.repeat_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )


class Sampler:
    """The sampler of one request. ``sample(ctx, idx)`` -> token id; ``close()`` frees it.

    Not thread-safe: one request, one sampler (a batching engine keeps one per sequence)."""

    def __init__(self, vocab: Vocab, params: SamplingParams, *, route: str | None = None) -> None:
        """``route`` forces "chain" (llama.cpp's full chain; the tests compare the routes)."""
        import llama_cpp

        self._lc = llama_cpp
        self.vocab = vocab
        self.params = params
        self._views: dict[int | None, np.ndarray[Any, np.dtype[np.float32]]] = {}
        self._logits_at = logits_function()
        self._chain: Any = None
        self._cands: Any = None
        self._cand_view: Any = None
        self._eog = np.array(vocab.eog_ids() if params.ignore_eos else [], dtype=np.int64)
        self._eog_set = frozenset(int(t) for t in self._eog)
        p = params
        if route not in (None, "chain"):
            raise ValueError(f"route: bad value {route!r}; use None or 'chain'")
        if route == "chain":
            self.route = "chain"
            self._chain = self._new_chain(with_top_k=True)
        elif p.grammar is None and not p.penalties and p.temperature <= 0.0:
            self.route = "greedy"
        elif (
            p.grammar is None
            and not p.penalties
            and p.top_k > 0
            and vocab.n_vocab >= FAST_TOP_K_MIN_VOCAB
            and p.top_k * _BLOCK <= vocab.n_vocab
        ):
            self.route = "top-k"
            self._chain = self._new_chain(with_top_k=False)
            token_data = llama_cpp.llama_token_data * p.top_k
            self._cands = token_data()
            self._cand_view = np.frombuffer(
                self._cands, dtype=np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
            )
        else:
            self.route = "chain"
            self._chain = self._new_chain(with_top_k=True)

    # -- building llama.cpp's chain ------------------------------------------------------

    def _new_chain(self, *, with_top_k: bool) -> Any:
        lc, p = self._lc, self.params
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        try:
            if with_top_k and p.penalties:
                lc.llama_sampler_chain_add(
                    chain,
                    lc.llama_sampler_init_penalties(
                        self.vocab.n_vocab,
                        p.penalty_last_n,
                        p.repeat_penalty,
                        p.frequency_penalty,
                        p.presence_penalty,
                    ),
                )
            if with_top_k and p.grammar is not None:
                grammar = lc.llama_sampler_init_grammar(
                    self.vocab.vocab,
                    p.grammar._grammar.encode("utf-8"),
                    p.grammar._root.encode("utf-8"),
                )
                if not grammar:
                    raise ValueError("grammar: llama.cpp could not parse the grammar")
                lc.llama_sampler_chain_add(chain, grammar)
            if p.temperature <= 0.0:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
                return chain
            if with_top_k:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(p.top_k))
            for sampler in (
                lc.llama_sampler_init_typical(p.typical_p, 1),
                lc.llama_sampler_init_top_p(p.top_p, 1),
                lc.llama_sampler_init_min_p(p.min_p, 1),
                lc.llama_sampler_init_temp(p.temperature),
                lc.llama_sampler_init_dist(p.seed & 0xFFFFFFFF),
            ):
                lc.llama_sampler_chain_add(chain, sampler)
        except BaseException:
            lc.llama_sampler_free(chain)
            raise
        return chain

    # -- sampling --------------------------------------------------------------------------

    def logits(self, ctx: Any, idx: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        """A numpy view (no copy) of the logits of output row ``idx`` of the last decode."""
        address = self._logits_at(ctx, idx)
        view = self._views.get(address)
        if view is None:
            view = self._view(address, idx)
        return view

    def _view(self, address: int | None, idx: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        if not address:
            raise RuntimeError(f"llama_get_logits_ith returned NULL for output {idx}")
        if len(self._views) > 16:
            self._views.clear()
        buf = (ctypes.c_float * self.vocab.n_vocab).from_address(address)
        view: np.ndarray[Any, np.dtype[np.float32]] = np.ctypeslib.as_array(buf)
        self._views[address] = view
        return view

    def sample(self, ctx: Any, idx: int = -1) -> int:
        """The next token for output row ``idx`` of the last decode (-1: the last row).

        Runs once per generated token on the engine's thread, between two decodes, when
        the CPU caches hold the decode's data rather than this code: the greedy route is
        kept to a handful of operations (one C call, a dictionary lookup, an argmax)."""
        if self.route == "greedy":
            address = self._logits_at(ctx, idx)
            view = self._views.get(address)
            if view is None:
                view = self._view(address, idx)
            token = int(view.argmax())
            if view[token] != view[token]:  # argmax is the first NaN when there is one
                raise NanLogitsError()
            if token in self._eog_set:  # ignore_eos: the best token that does not end
                view[self._eog] = -np.inf
                token = int(view.argmax())
            return token
        logits = self.logits(ctx, idx)
        if self.route == "chain":
            top = logits.max()
            if top != top:  # max is NaN when any logit is (the chain would pick a token
                raise NanLogitsError()  # anyway, or abort the process inside a grammar)
            if not self._eog.size:
                return int(self._lc.llama_sampler_sample(self._chain, ctx, idx))
        if self._eog.size:
            logits[self._eog] = -np.inf
        if self.route == "chain":
            return int(self._lc.llama_sampler_sample(self._chain, ctx, idx))
        return self._sample_top_k(logits)

    def _sample_top_k(self, logits: np.ndarray[Any, np.dtype[np.float32]]) -> int:
        k = self.params.top_k
        n = logits.shape[0]
        whole = n - n % _BLOCK
        maxima = logits[:whole].reshape(-1, _BLOCK).max(axis=1)
        top, tail = maxima.max(), logits[whole:].max(initial=-np.inf)
        if top != top or tail != tail:  # max is NaN when any logit is (np.partition
            raise NanLogitsError()  # would sort them last: no candidates, or wrong ones)
        # At least k blocks reach the k-th largest block maximum, so the top k logits are
        # all >= it: the candidates above this threshold contain the exact top k.
        threshold = np.partition(maxima, maxima.shape[0] - k)[maxima.shape[0] - k]
        ids = np.flatnonzero(logits >= threshold)
        if ids.shape[0] > k:
            part = np.argpartition(logits[ids], ids.shape[0] - k)[ids.shape[0] - k :]
            ids = ids[part]
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        view = self._cand_view
        view["id"] = ids
        view["logit"] = logits[ids]
        view["p"] = 0.0
        array = self._lc.llama_token_data_array(
            data=ctypes.cast(self._cands, self._lc.llama_token_data_p),
            size=k,
            selected=-1,
            sorted=True,
        )
        self._lc.llama_sampler_apply(self._chain, ctypes.byref(array))
        token = int(view["id"][array.selected])
        self._lc.llama_sampler_accept(self._chain, token)
        return token

    def close(self) -> None:
        if self._chain is not None:
            self._lc.llama_sampler_free(self._chain)
            self._chain = None

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
