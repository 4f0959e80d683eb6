"""One loaded model's vocabulary, as the generation loop and the prompt renderer need it.

Each token id is turned into its bytes once (``llama_token_to_piece``, special tokens
rendered as nothing, as in a completion) and kept; whether it ends generation
(``llama_vocab_is_eog``) is cached the same way. :meth:`Vocab.control_texts` lists the
texts in a piece of message content that the tokenizer would turn into control tokens
(``<|im_start|>``, ``<start_of_turn>``, ...): :mod:`saiverse_llm.templates` keeps them as
plain text. Thread-safe for readers (the caches only ever gain entries).
"""

from __future__ import annotations

import ctypes
import operator
import threading
from typing import Any

import numpy as np

#: ``LLAMA_TOKEN_ATTR_CONTROL`` (llama.h): a token the chat template uses as a marker.
ATTR_CONTROL = 1 << 3


class Vocab:
    """Token pieces, end-of-generation ids and control tokens of one ``llama_cpp.Llama``."""

    def __init__(self, llm: Any) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self._llm = llm
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self._pieces: list[bytes | None] = [None] * self.n_vocab
        #: token id -> its piece as text, once known to be whole UTF-8 (read-only outside:
        #: the generation loop's fast path reads it, :meth:`text` fills it)
        self.texts: list[str | None] = [None] * self.n_vocab
        self._eog: dict[int, bool] = {}
        self._eog_ids: list[int] | None = None
        self._eog_set: frozenset[int] | None = None
        self._eog_flags: np.ndarray[Any, np.dtype[np.uint8]] | None = None
        self._buf = ctypes.create_string_buffer(256)
        self._lock = threading.Lock()

    def piece(self, token: int) -> bytes:
        """The bytes token ``token`` adds to a reply (b"" for control tokens)."""
        cached = self._pieces[token]
        if cached is not None:
            return cached
        with self._lock:
            n = self._llama_cpp.llama_token_to_piece(self.vocab, token, self._buf, 256, 0, False)
            if n < 0:  # longer than the buffer: ask again with the size it needs
                buf = ctypes.create_string_buffer(-n)
                n = self._llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
                data = buf.raw[:n]
            else:
                data = self._buf.raw[:n]
        self._pieces[token] = data
        return data

    def bytes_of(self, tokens: list[int]) -> bytes:
        """The bytes ``tokens`` add to a reply, joined."""
        cached = self._pieces
        if len(tokens) > 1:  # one C-level gather when every piece is known already
            got = operator.itemgetter(*tokens)(cached)
            if None not in got:
                return b"".join(got)
        return b"".join([cached[t] or self.piece(t) for t in tokens])

    def text(self, token: int) -> str | None:
        """The piece of ``token`` as text when it is complete UTF-8 on its own (most
        tokens), else None (a byte token, or part of a character: decode incrementally)."""
        cached = self.texts[token]
        if cached is not None:
            return cached
        try:
            text = self.piece(token).decode("utf-8")
        except UnicodeDecodeError:
            return None
        self.texts[token] = text
        return text

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends generation (EOS, EOT, ``<|im_end|>``, ...)."""
        cached = self._eog.get(token)
        if cached is None:
            cached = bool(self._llama_cpp.llama_vocab_is_eog(self.vocab, token))
            self._eog[token] = cached
        return cached

    def eog_ids(self) -> list[int]:
        """Every end-of-generation id (one scan of the vocabulary, then cached)."""
        if self._eog_ids is None:
            is_eog = self._llama_cpp.llama_vocab_is_eog
            self._eog_ids = [t for t in range(self.n_vocab) if is_eog(self.vocab, t)]
        return self._eog_ids

    def eog_set(self) -> frozenset[int]:
        """:meth:`eog_ids` as a set."""
        if self._eog_set is None:
            self._eog_set = frozenset(self.eog_ids())
        return self._eog_set

    def eog_flags(self) -> np.ndarray[Any, np.dtype[np.uint8]]:
        """``n_vocab`` bytes, 1 at each end-of-generation id (read-only)."""
        if self._eog_flags is None:
            flags = np.zeros(self.n_vocab, dtype=np.uint8)
            flags[self.eog_ids()] = 1
            flags.flags.writeable = False
            self._eog_flags = flags
        return self._eog_flags

    def control_token(self, text: str) -> int | None:
        """The id of the control token ``text`` begins with (``<|im_end|>``,
        ``<end_of_turn>`` of ``"<end_of_turn>\\n"``, ...), or None when ``text`` does not
        begin with a control token of this vocabulary (plain text)."""
        if not text:
            return None
        ids = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if not ids:
            return None
        token = int(ids[0])
        if not int(self._llama_cpp.llama_vocab_get_attr(self.vocab, token)) & ATTR_CONTROL:
            return None
        raw = self._llama_cpp.llama_vocab_get_text(self.vocab, token).decode("utf-8", "replace")
        return token if raw and text.startswith(raw) else None

    def control_texts(self, text: str) -> list[str]:
        """The distinct substrings of ``text`` that tokenizing with ``special=True`` would
        turn into control tokens, longest first. Empty for ordinary text."""
        if not text:
            return []
        ids = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        get_attr = self._llama_cpp.llama_vocab_get_attr
        found: set[str] = set()
        for token in set(ids):
            if int(get_attr(self.vocab, token)) & ATTR_CONTROL:
                raw = self._llama_cpp.llama_vocab_get_text(self.vocab, token)
                found.add(raw.decode("utf-8", "replace"))
        return sorted((t for t in found if t and t in text), key=len, reverse=True)
