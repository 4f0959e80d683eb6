"""The generation loop: from prompt tokens to reply text, one token at a time.

Two parts, kept apart so that a batching engine can drive many requests with one decode:

* :class:`Generation`: everything one request owns. Its sampler
  (:class:`~saiverse_llm.sampling.Sampler`, own seed and chain) picks a token from one
  output row of the last decode; its :class:`ReplyBuilder` turns that token into text:
  the token's bytes (each token detokenized once, cached per model in
  :class:`~saiverse_llm.vocab.Vocab`) go through an incremental UTF-8 decoder (a character
  split across tokens is held back until complete, never mangled), stop strings are
  searched in a hold-back window (the unreleased tail plus the new text: the longest stop
  string minus one character is held), ``max_tokens`` is counted exactly, and the released
  text is fed to the tool-call filter (:class:`~saiverse_llm.tools.ToolCallStreamFilter`).
  ``Generation.step(ctx, idx)`` consumes one token and never calls ``llama_decode``.
* :func:`run_single`: the driver for one sequence on one context (what the client uses):
  it reuses the KV cache's common prefix with the previous call, decodes the rest of the
  prompt, then alternates ``step`` and a one-token decode until the reply is done.

``generate`` and ``generate_stream`` both run this loop, so they give the same text for
the same seed. The prompt's last token is always decoded on its own (the rest of the
prompt in batches of n_batch): llama.cpp's logits depend on the batch a token is computed
in, and this way a repeated prompt served from the KV cache gives bit-identical logits to
its first run. Per token the loop costs a dictionary lookup, a UTF-8 decode and two C
calls, independent of the reply's length.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from saiverse_llm.errors import RetryDivergedError
from saiverse_llm.loading import LoadedModel
from saiverse_llm.sampling import Sampler
from saiverse_llm.tools import ToolCall, ToolCallStreamFilter
from saiverse_llm.vocab import Vocab

logger = logging.getLogger("saiverse_llm")

#: ``llama_decode`` return codes and what they mean (llama.h).
_DECODE_CODES = {
    1: "no KV cache slot for the batch: the context is full",
    2: "aborted",
    -1: "invalid batch",
}


class ReplyBuilder:
    """Tokens in, reply text out: UTF-8, stop strings, ``max_tokens``, tool-call filter.

    ``push(token)`` returns the text that may be shown now; once ``done`` is true,
    ``finish()`` returns the rest. ``on_text(index, text)`` (optional) sees every piece of
    decoded model text before stop strings and filters (the client's retry hook).
    ``n_tokens`` counts completion tokens: every sampled token except an end-of-generation
    one. ``finish_reason``: "stop" (end-of-generation token or stop string) or "length"."""

    def __init__(
        self,
        vocab: Vocab,
        *,
        max_tokens: int,
        stop: list[str] | None = None,
        tool_filter: ToolCallStreamFilter | None = None,
        ignore_eos: bool = False,
        on_text: Callable[[int, str], None] | None = None,
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens: bad value {max_tokens!r}; use a positive integer")
        self.vocab = vocab
        self.max_tokens = max_tokens
        self.stops = [s for s in (stop or []) if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self.tool_filter = tool_filter
        self.ignore_eos = ignore_eos
        self.on_text = on_text
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._utf8_clean = True  # no partial character pending in the decoder
        self._pending = ""  # decoded text held back while a stop string may still complete
        self._raw: list[str] = []  # released model text (before the tool filter)
        self._pieces = 0
        self.n_tokens = 0
        self.done = False
        self.finish_reason: str | None = None
        self.tool_calls: list[ToolCall] = []

    @property
    def raw(self) -> str:
        """The model's text so far, cut at a stop string (tool-call blocks included)."""
        return "".join(self._raw)

    def push(self, token: int) -> str:
        """Consume one sampled token; return the text that may be shown now."""
        if self.done:
            raise RuntimeError("ReplyBuilder.push after the reply is done")
        vocab = self.vocab
        if not self.ignore_eos and vocab.is_eog(token):
            self.done, self.finish_reason = True, "stop"
            return ""
        self.n_tokens += 1
        out = ""
        text = vocab.text(token) if self._utf8_clean else None
        if text is None:  # a byte token, or the middle of a character
            text = self._decoder.decode(vocab.piece(token))
            self._utf8_clean = not self._decoder.getstate()[0]
        if text:
            if self.on_text is not None:
                self.on_text(self._pieces, text)
            self._pieces += 1
            out = self._add(text) if self.stops else self._release(text)
        if not self.done and self.n_tokens >= self.max_tokens:
            self.done, self.finish_reason = True, "length"
        return out

    def _add(self, text: str) -> str:
        window = self._pending + text
        cut = -1
        for stop in self.stops:
            i = window.find(stop)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
        if cut >= 0:
            self._pending = ""
            self.done, self.finish_reason = True, "stop"
            return self._release(window[:cut])
        split = len(window) - self._hold
        if split <= 0:
            self._pending = window
            return ""
        self._pending = window[split:]
        return self._release(window[:split])

    def _release(self, text: str) -> str:
        if not text:
            return ""
        self._raw.append(text)
        return self.tool_filter.feed(text) if self.tool_filter is not None else text

    def finish(self) -> str:
        """The rest of the reply's text; parses held-back tool calls into ``tool_calls``
        (raises :class:`~saiverse_llm.tools.ToolCallError` for an unusable call)."""
        leftover = self._decoder.getstate()[0]
        if leftover:
            logger.debug("reply ended inside a UTF-8 character; dropped bytes %r", leftover)
        self._decoder.reset()
        self._utf8_clean = True
        out = self._release(self._pending)
        self._pending = ""
        if self.tool_filter is not None:
            tail, self.tool_calls = self.tool_filter.finish()
            out += tail
        return out


class Generation:
    """One request's state: its prompt, sampler and reply. Consumes one token per
    :meth:`step`; whoever owns the context decodes (:func:`run_single`, or a batching
    engine that gives each sequence its own output row ``idx``)."""

    def __init__(self, prompt: list[int], sampler: Sampler, reply: ReplyBuilder) -> None:
        if not prompt:
            raise ValueError("prompt: no tokens to generate from")
        self.prompt = prompt
        self.sampler = sampler
        self.reply = reply
        self.cached_tokens = 0  # prompt tokens served from the KV cache
        self.last_token = -1

    @property
    def done(self) -> bool:
        return self.reply.done

    def step(self, ctx: Any, idx: int = -1) -> str:
        """Sample from output row ``idx`` of the last decode and consume the token."""
        self.last_token = self.sampler.sample(ctx, idx)
        return self.reply.push(self.last_token)

    def finish(self) -> str:
        return self.reply.finish()

    def close(self) -> None:
        self.sampler.close()


# --- one sequence on one context ------------------------------------------------------


def check_decode(rc: int) -> None:
    """Raise for a failed ``llama_decode`` (the message keeps "llama_decode returned N",
    which :func:`~saiverse_llm.errors.is_transient` reads)."""
    if rc != 0:
        why = _DECODE_CODES.get(rc, "compute failed")
        raise RuntimeError(f"llama_decode returned {rc} ({why})")


def reuse_prefix(model: LoadedModel, prompt: list[int]) -> int:
    """Keep the KV cache's common prefix with ``prompt`` (never its last token), drop the
    rest; returns the number of prompt tokens kept. ``Llama.n_tokens``/``input_ids`` stay
    the record of what the cache holds, so llama-cpp-python's own calls see the truth."""
    import llama_cpp

    llm = model.llm
    held = int(llm.n_tokens)
    keep = 0
    if held > 0:
        m = min(held, len(prompt) - 1)
        if m > 0:
            differ = np.flatnonzero(llm.input_ids[:m] != np.asarray(prompt[:m]))
            keep = int(differ[0]) if differ.shape[0] else m
    memory = llama_cpp.llama_get_memory(llm.ctx)
    if not llama_cpp.llama_memory_seq_rm(memory, -1, keep, -1):
        llama_cpp.llama_memory_clear(memory, True)
        keep = 0
    llm.n_tokens = keep
    llm._requires_eval = True  # our logits are not the ones llama-cpp-python expects
    return keep


def decode_tokens(model: LoadedModel, tokens: list[int], *, logits_last: bool) -> None:
    """Decode ``tokens`` on sequence 0 after what the cache holds, in n_batch chunks;
    only the very last token gets logits (when ``logits_last``)."""
    import llama_cpp

    llm = model.llm
    batch = model.batch()
    cap = batch.capacity
    for start in range(0, len(tokens), cap):
        chunk = tokens[start : start + cap]
        n = len(chunk)
        pos = int(llm.n_tokens)
        batch.token[:n] = chunk
        batch.pos[:n] = np.arange(pos, pos + n, dtype=np.int32)
        batch.logits[:n] = 0
        if logits_last and start + n == len(tokens):
            batch.logits[n - 1] = 1
        batch.raw.n_tokens = n
        check_decode(llama_cpp.llama_decode(llm.ctx, batch.raw))
        llm.input_ids[pos : pos + n] = chunk
        llm.n_tokens = pos + n


def run_single(model: LoadedModel, gen: Generation) -> Iterator[str]:
    """Generate ``gen`` on ``model``'s context (the caller holds the model's lock); yields
    text as it becomes safe to show, the tail last."""
    import llama_cpp

    llm = model.llm
    ctx = llm.ctx
    prompt = gen.prompt
    gen.cached_tokens = reuse_prefix(model, prompt)
    if len(prompt) - 1 > gen.cached_tokens:
        decode_tokens(model, prompt[gen.cached_tokens : -1], logits_last=False)
    decode_tokens(model, prompt[-1:], logits_last=True)
    batch = model.batch()
    token_arr, pos_arr, logits_arr, raw = batch.token, batch.pos, batch.logits, batch.raw
    decode = llama_cpp.llama_decode
    input_ids = llm.input_ids
    sample, push, reply = gen.sampler.sample, gen.reply.push, gen.reply
    logits_arr[0] = 1
    pos = int(llm.n_tokens)
    while True:
        token = sample(ctx, -1)
        gen.last_token = token
        text = push(token)
        if text:
            yield text
        if reply.done:
            break
        token_arr[0] = token
        pos_arr[0] = pos
        raw.n_tokens = 1
        rc = decode(ctx, raw)
        if rc:
            check_decode(rc)
        input_ids[pos] = token
        pos += 1
        llm.n_tokens = pos
    tail = gen.finish()
    if tail:
        yield tail


def unseen(produced: str, emitted: str) -> str:
    """The part of ``produced`` not yet yielded; raises if a retry diverged."""
    if len(produced) <= len(emitted):
        if not emitted.startswith(produced):
            raise RetryDivergedError(
                "a retried stream produced different text than was already yielded "
                f"({produced!r} vs {emitted[: len(produced)]!r}); not repeating or mixing text"
            )
        return ""
    if not produced.startswith(emitted):
        raise RetryDivergedError(
            "a retried stream produced different text than was already yielded "
            f"({produced[: len(emitted)]!r} vs {emitted!r}); not repeating or mixing text"
        )
    return produced[len(emitted) :]
