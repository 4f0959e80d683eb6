"""The generation loop's per-request part: from sampled tokens to reply text.

Kept apart from decoding so that one scheduler drives many requests with one decode
(:mod:`saiverse_llm.engine`, which serves every call, alone or batched):

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
* :func:`check_decode` turns a failed ``llama_decode`` into the error the client's retry
  logic reads; :func:`unseen` keeps a retried stream from repeating text.

``generate`` and ``generate_stream`` both run this loop (through the engine), so they give
the same text for the same seed. Per token the loop costs a dictionary lookup, a UTF-8
decode and two C calls, independent of the reply's length.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Callable, Iterable
from typing import Any

from saiverse_llm.errors import RetryDivergedError
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


def split_stops(vocab: Vocab, stops: Iterable[str]) -> tuple[list[str], list[int]]:
    """``stops`` as ``(text stops, stop tokens)`` for :class:`ReplyBuilder`: a stop that
    begins with a control token of ``vocab`` (a chat format's turn marker: ChatML's
    ``<|im_end|>``, Gemma's ``"<end_of_turn>\\n"``) stops on that token only, so the same
    characters written as plain text (in a tool call's arguments, in code the model
    quotes) do not end the reply; any other stop stays text."""
    texts: list[str] = []
    tokens: list[int] = []
    for stop in stops:
        token = vocab.control_token(stop)
        if token is None:
            texts.append(stop)
        elif token not in tokens:
            tokens.append(token)
    return texts, tokens


class ReplyBuilder:
    """Tokens in, reply text out: UTF-8, stop strings, ``max_tokens``, tool-call filter.

    ``push(token)`` returns the text that may be shown now; once ``done`` is true,
    ``finish()`` returns the rest. ``on_text(index, text)`` (optional) sees every piece of
    decoded model text before stop strings and filters (the client's retry hook).
    ``n_tokens`` counts completion tokens: every sampled token except an end-of-generation
    one or a stop token. ``finish_reason``: "stop" (end-of-generation token, stop token or
    stop string) or "length".

    ``stop_tokens``: token ids that end the reply when sampled, as an end-of-generation token
    does (also with ``ignore_eos``): a chat format's turn marker that is one control token of
    the vocabulary (ChatML's ``<|im_end|>``) stops on that token, never on the same
    characters written as plain text (inside a tool call's arguments, say)."""

    def __init__(
        self,
        vocab: Vocab,
        *,
        max_tokens: int,
        stop: list[str] | None = None,
        stop_tokens: Iterable[int] = (),
        tool_filter: ToolCallStreamFilter | None = None,
        ignore_eos: bool = False,
        on_text: Callable[[int, str], None] | None = None,
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens: bad value {max_tokens!r}; use a positive integer")
        self.vocab = vocab
        self.max_tokens = max_tokens
        self.stops = [s for s in (stop or []) if s]
        self.stop_tokens = frozenset(stop_tokens)
        self._end_ids: frozenset[int] | None = None  # end-of-generation + stop tokens
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        #: the first characters of the stop strings: text without any of them (and with
        #: nothing held back) cannot contain a stop string or the start of one
        self._stop_starts = frozenset(s[0] for s in self.stops)
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
        """Consume one sampled token; return the text that may be shown now.

        Runs once per generated token between two decodes: the common case (a token that
        is whole UTF-8 text with no character that begins a stop string, nothing held
        back) is a few lookups and one list append."""
        if self.done:
            raise RuntimeError("ReplyBuilder.push after the reply is done")
        vocab = self.vocab
        if (not self.ignore_eos and vocab.is_eog(token)) or token in self.stop_tokens:
            self.done, self.finish_reason = True, "stop"
            return ""
        self.n_tokens += 1
        out = ""
        text = (vocab.texts[token] or vocab.text(token)) if self._utf8_clean else None
        if text is None:  # a byte token, or the middle of a character
            text = self._decoder.decode(vocab.piece(token))
            self._utf8_clean = not self._decoder.getstate()[0]
        if text:
            if self.on_text is not None:
                self.on_text(self._pieces, text)
            self._pieces += 1
            if self._pending or not self._stop_starts.isdisjoint(text):
                out = self._add(text)
            else:  # no stop string can begin in this text: release it whole
                self._raw.append(text)
                out = self.tool_filter.feed(text) if self.tool_filter is not None else text
        if self.n_tokens >= self.max_tokens and not self.done:
            self.done, self.finish_reason = True, "length"
        return out

    def push_many(self, tokens: list[int]) -> tuple[str, int]:
        """:meth:`push` each of ``tokens`` in turn until the reply is done; returns the text
        that may be shown now and how many tokens were consumed (``len(tokens)`` unless the
        reply ended on an earlier one).

        The same reply text, token count and end as pushing one by one, at the cost of one
        join and one UTF-8 decode for all of them (the compiled loop's tokens,
        :mod:`saiverse_llm.native_loop`): the tokens' bytes are decoded together (an
        incremental decoder gives the same text however its input is split), the stop
        strings are searched once in the held-back tail plus the new text, and only the
        tail that could still begin a stop string is held back. When a stop string is
        found, the tokens are pushed one by one instead, to end on the exact token.
        ``on_text`` sees the new text as one piece."""
        if self.done:
            raise RuntimeError("ReplyBuilder.push_many after the reply is done")
        n = min(len(tokens), self.max_tokens - self.n_tokens)
        head = tokens if n == len(tokens) else tokens[:n]  # tokens[:end] add text
        end = n  # tokens[end] (if < n) ends the reply
        ends = self.stop_tokens if self.ignore_eos else self._ends()
        if ends and not ends.isdisjoint(head):
            end = next(i for i in range(n) if head[i] in ends)
            head = head[:end]
        out = ""
        if end:
            # runs right after a compiled call, with cold caches: every step counts
            decoder = self._decoder
            stops = self.stops
            state = decoder.getstate() if stops else None
            text = decoder.decode(self.vocab.bytes_of(head))
            window = self._pending + text if self._pending else text
            if state is not None and any(stop in window for stop in stops):
                decoder.setstate(state)  # push one by one to end on the right token
                return self._push_each(tokens)
            self._utf8_clean = not decoder.getstate()[0]
            self.n_tokens += end
            if text:
                if self.on_text is not None:
                    self.on_text(self._pieces, text)
                self._pieces += 1
                # hold back from the first character, within the last ``hold``, that
                # begins a stop string (none: release everything)
                split = len(window)
                if self._stop_starts:
                    for k in range(max(0, len(window) - self._hold), len(window)):
                        if window[k] in self._stop_starts:
                            split = k
                            break
                    self._pending = window[split:]
                out = self._release(window[:split] if split < len(window) else window)
        if end < n:
            self.done, self.finish_reason = True, "stop"
            return out, end + 1
        if self.n_tokens >= self.max_tokens:
            self.done, self.finish_reason = True, "length"
        return out, n

    def _ends(self) -> frozenset[int]:
        """The ids that end the reply: end-of-generation and stop tokens."""
        if self._end_ids is None:
            eog = self.vocab.eog_set()
            self._end_ids = eog | self.stop_tokens if self.stop_tokens else eog
        return self._end_ids

    def _push_each(self, tokens: list[int]) -> tuple[str, int]:
        pieces: list[str] = []
        for i, token in enumerate(tokens):
            pieces.append(self.push(token))
            if self.done:
                return "".join(pieces), i + 1
        return "".join(pieces), len(tokens)

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
    :meth:`step`; the engine (:mod:`saiverse_llm.engine`) owns the context, decodes and
    gives each sequence its own output row ``idx``."""

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

    def accept(self, token: int) -> str:
        """Consume ``token``, sampled for this request by the engine (the greedy rows of a
        batch are sampled together: :meth:`Sampler.greedy_rows`)."""
        self.last_token = token
        return self.reply.push(token)

    def finish(self) -> str:
        return self.reply.finish()

    def close(self) -> None:
        self.sampler.close()


# --- decoding ---------------------------------------------------------------------------


def check_decode(rc: int) -> None:
    """Raise for a failed ``llama_decode`` (the message keeps "llama_decode returned N",
    which :func:`~saiverse_llm.errors.is_transient` reads)."""
    if rc != 0:
        why = _DECODE_CODES.get(rc, "compute failed")
        raise RuntimeError(f"llama_decode returned {rc} ({why})")


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
