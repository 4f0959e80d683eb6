"""Deterministic random-weight GGUF models for tests and GPU bandwidth benchmarks.

A synthesized model is a llama-architecture GGUF written with the ``gguf`` package:
random weights (from a fixed seed), a real SentencePiece-style vocabulary (the 256 byte
tokens ``<0x00>``..``<0xFF>`` so any UTF-8 text, Japanese included, round-trips) and a
ChatML-style ``tokenizer.chat_template`` that renders system/user/assistant/tool messages,
assistant ``tool_calls`` and a ``tools`` list (Qwen2.5/Hermes style, ``<tool_call>`` blocks).

The same preset, seed and overrides always give the same bytes: weights come from the
PCG64 bit stream (whose output NumPy keeps stable across versions) turned into floats with
plain arithmetic, the writer embeds no timestamp, and keys and tensors are written in a fixed
order. Tensors are generated and written in chunks, so a 2 GB model never sits in memory.

llama.cpp's ``tests/test-llama-archs.cpp`` builds random-weight models the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saiverse_llm.atomic import atomic_output
from saiverse_llm.download import sha256_file

__all__ = [
    "PRESETS",
    "SYNTH_VERSION",
    "SynthError",
    "SynthSpec",
    "resolve_spec",
    "sha256_file",
    "synthesize",
]

#: Bump when anything changes the bytes written for a given spec and seed.
SYNTH_VERSION = 1

ARCH = "llama"
ALIGNMENT = 32
_CHUNK_VALUES = 8 * 1024 * 1024  # values generated per step (32 MB of float32)

# GGML type ids (mirrors gguf.GGMLQuantizationType; kept here to name the supported set).
_DTYPES: dict[str, tuple[int, int, int]] = {
    # name: (ggml type id, block size, bytes per block)
    "f32": (0, 1, 4),
    "f16": (1, 1, 2),
    "q8_0": (8, 32, 34),
}
# llama_ftype written as general.file_type
_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}


@dataclass(frozen=True)
class SynthSpec:
    """The shape of a synthesized model. ``n_head_kv < n_head`` gives grouped-query attention."""

    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_ctx: int
    dtype: str  # "f32", "f16" or "q8_0" (q8_0 triggers the AMX crash on native builds)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


#: Named presets. "tiny" is f32 (a q8_0 model crashes GGML_NATIVE builds on AMX CPUs).
PRESETS: dict[str, SynthSpec] = {
    "tiny": SynthSpec(
        n_embd=128, n_layer=2, n_ff=384, n_head=4, n_head_kv=2, n_ctx=2048, dtype="f32"
    ),
    "small": SynthSpec(
        n_embd=512, n_layer=4, n_ff=1536, n_head=8, n_head_kv=4, n_ctx=4096, dtype="f16"
    ),
    # ~1.0 GB f16 (~0.5 B parameters) and ~2.1 GB f16 (~1 B parameters): GPU bandwidth runs.
    "1b": SynthSpec(
        n_embd=2048, n_layer=11, n_ff=5632, n_head=16, n_head_kv=4, n_ctx=4096, dtype="f16"
    ),
    "2b": SynthSpec(
        n_embd=2560, n_layer=15, n_ff=6912, n_head=20, n_head_kv=4, n_ctx=4096, dtype="f16"
    ),
}


class SynthError(ValueError):
    """A synthesis option is invalid; the message names the option, the value and the fix."""


def resolve_spec(preset: str = "tiny", **overrides: Any) -> SynthSpec:
    """The preset's spec with ``overrides`` (n_embd, n_layer, n_ff, n_head, n_head_kv, n_ctx,
    dtype) applied; ``None`` values are ignored. Raises :class:`SynthError` when invalid."""
    if preset not in PRESETS:
        raise SynthError(
            f"synth: unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}"
        )
    fields = {f.name for f in dataclasses.fields(SynthSpec)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise SynthError(
            f"synth: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}"
        )
    changes = {k: v for k, v in overrides.items() if v is not None}
    spec = dataclasses.replace(PRESETS[preset], **changes)
    _validate(spec)
    return spec


def _validate(spec: SynthSpec) -> None:
    for name in ("n_embd", "n_layer", "n_ff", "n_head", "n_head_kv", "n_ctx"):
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SynthError(f"synth: {name}={value!r} must be a positive integer")
    if spec.dtype not in _DTYPES:
        raise SynthError(
            f"synth: dtype={spec.dtype!r} is not supported; choose one of {', '.join(_DTYPES)}"
        )
    if spec.n_embd % spec.n_head:
        raise SynthError(f"synth: n_embd={spec.n_embd} must be a multiple of n_head={spec.n_head}")
    if spec.head_dim % 2:
        raise SynthError(
            f"synth: head size n_embd/n_head={spec.head_dim} must be even (RoPE); "
            "change n_embd or n_head"
        )
    if spec.n_head % spec.n_head_kv:
        raise SynthError(
            f"synth: n_head={spec.n_head} must be a multiple of n_head_kv={spec.n_head_kv}"
        )
    block = _DTYPES[spec.dtype][1]
    if spec.n_embd % block or spec.n_ff % block:
        raise SynthError(
            f"synth: dtype={spec.dtype} needs n_embd and n_ff to be multiples of {block} "
            f"(got n_embd={spec.n_embd}, n_ff={spec.n_ff})"
        )


# --------------------------------------------------------------------------- tokenizer

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
TOOL_CALL, TOOL_CALL_END = "<tool_call>", "</tool_call>"

# Token types (gguf.TokenType)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6

_WORDS_TEXT = """
the a an and or of to in is it you that he was for on are with as I his they be at one
have this from by hot word but what some we can out other were all there when up use
your how said each she which do their time if will way about many then them write would
like so these her long make thing see him two has look more day could go come did number
sound no most people my over know water than call first who may down side been now find
hello world assistant user system tool function name arguments weather city Tokyo Japan
yes ok
"""
_JAPANESE = "こんにちは世界日本語ですますのはがをにでとしたいるあ東京天気今日"
_JAPANESE_WORDS = ("こんにちは", "世界", "日本語", "です", "ます", "東京", "天気", "今日")


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]

    def id(self, token: str) -> int:
        return self.tokens.index(token)


#: The fewest tokens a vocabulary may be cut to: <unk> <s> </s>, the 256 byte tokens, the
#: ChatML and tool-call specials and the word-start piece.
MIN_VOCAB = 264


def build_vocab(n_vocab: int | None = None) -> Vocab:
    """A SentencePiece (llama) vocabulary: <unk> <s> </s>, the 256 byte tokens, ChatML and
    tool-call specials, single characters and whole words (with every prefix so the SPM
    merge loop can reach them). Longer pieces score higher, so words win over characters.

    ``n_vocab`` keeps only the first ``n_vocab`` tokens (at least :data:`MIN_VOCAB`, at most
    the full list): a model that spells most text with byte tokens. Raises
    :class:`SynthError` for a size out of range."""
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    seen: set[str] = set()

    def add(piece: str, score: float, kind: int) -> None:
        if piece in seen:
            return
        seen.add(piece)
        tokens.append(piece)
        scores.append(score)
        types.append(kind)

    add(UNK, 0.0, _UNKNOWN)
    add(BOS, 0.0, _CONTROL)
    add(EOS, 0.0, _CONTROL)
    for b in range(256):
        add(f"<0x{b:02X}>", 0.0, _BYTE)
    add(IM_START, 0.0, _CONTROL)
    add(IM_END, 0.0, _CONTROL)
    add(TOOL_CALL, 0.0, _USER_DEFINED)  # user-defined: rendered as text when generated
    add(TOOL_CALL_END, 0.0, _USER_DEFINED)

    add("\u2581", -1.0, _NORMAL)
    for c in [chr(c) for c in range(33, 127)] + list(_JAPANESE):
        add(c, -2.0, _NORMAL)
    pieces: list[str] = []
    for word in _WORDS_TEXT.split():
        pieces.append("\u2581" + word)
    pieces.extend(_JAPANESE_WORDS)
    for piece in pieces:
        for end in range(2, len(piece) + 1):
            prefix = piece[:end]
            add(prefix, float(len(prefix)), _NORMAL)
    if n_vocab is None:
        return Vocab(tokens=tokens, scores=scores, types=types)
    if isinstance(n_vocab, bool) or not MIN_VOCAB <= n_vocab <= len(tokens):
        raise SynthError(
            f"synth: n_vocab={n_vocab!r} is out of range; use {MIN_VOCAB}..{len(tokens)}"
        )
    return Vocab(tokens=tokens[:n_vocab], scores=scores[:n_vocab], types=types[:n_vocab])


#: ChatML (Qwen2.5/Hermes style) with tools in the system prompt and ``<tool_call>`` blocks.
CHAT_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is none -%}{%- elif content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part is mapping and part.get('type') == 'text' -%}{{- part.get('text', '') -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}{{- text(messages[0]['content']) -}}"
    "{%- else -%}{{- 'You are a helpful assistant.' -}}{%- endif -%}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query."
    "\\n\\nYou are provided with function signatures within <tools></tools> XML tags:"
    "\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' -}}{{- tool | tojson -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name "
    'and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": '
    '<function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\' -}}'
    "{%- elif messages and messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + text(messages[0]['content']) + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' and loop.first -%}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') -%}"
    "{{- '<|im_start|>assistant' -}}"
    "{%- if message.get('content') -%}{{- '\\n' + text(message['content']) -}}{%- endif -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call.get('function') is not none else call -%}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' -}}"
    "{%- if fn['arguments'] is string -%}{{- fn['arguments'] -}}"
    "{%- else -%}{{- fn['arguments'] | tojson -}}{%- endif -%}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}"
    "{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + text(message['content']) + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}"
    "{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + text(message['content']) + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


# --------------------------------------------------------------------------- tensors


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]  # numpy order (rows, cols); GGUF stores it reversed
    dtype: str  # "f32" / "f16" / "q8_0"
    fill: str  # "ones" or "random"

    @property
    def n_values(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        _, block, size = _DTYPES[self.dtype]
        return self.n_values // block * size


def _tensors(spec: SynthSpec, n_vocab: int) -> list[_Tensor]:
    d = spec.dtype
    kv = spec.n_head_kv * spec.head_dim
    out = [
        _Tensor("token_embd.weight", (n_vocab, spec.n_embd), d, "random"),
        _Tensor("output_norm.weight", (spec.n_embd,), "f32", "ones"),
        _Tensor("output.weight", (n_vocab, spec.n_embd), d, "random"),
    ]
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        out += [
            _Tensor(p + "attn_norm.weight", (spec.n_embd,), "f32", "ones"),
            _Tensor(p + "attn_q.weight", (spec.n_embd, spec.n_embd), d, "random"),
            _Tensor(p + "attn_k.weight", (kv, spec.n_embd), d, "random"),
            _Tensor(p + "attn_v.weight", (kv, spec.n_embd), d, "random"),
            _Tensor(p + "attn_output.weight", (spec.n_embd, spec.n_embd), d, "random"),
            _Tensor(p + "ffn_norm.weight", (spec.n_embd,), "f32", "ones"),
            _Tensor(p + "ffn_gate.weight", (spec.n_ff, spec.n_embd), d, "random"),
            _Tensor(p + "ffn_up.weight", (spec.n_ff, spec.n_embd), d, "random"),
            _Tensor(p + "ffn_down.weight", (spec.n_embd, spec.n_ff), d, "random"),
        ]
    return out


def _chunks(tensor: _Tensor, seed: int, index: int) -> Iterator[bytes]:
    """The tensor's bytes, a few rows at a time. Uniform values in [-s, s] with
    s = 1/sqrt(row length) keep activations finite in f16."""
    row_len = tensor.shape[-1]
    n_rows = tensor.n_values // row_len
    if tensor.fill == "ones":
        yield np.ones(tensor.shape, dtype=np.float32).tobytes()
        return
    bitgen = np.random.PCG64(np.random.SeedSequence([seed, SYNTH_VERSION, index]))
    scale = np.float32(1.0 / math.sqrt(row_len))
    rows_per_chunk = max(1, _CHUNK_VALUES // row_len)
    for start in range(0, n_rows, rows_per_chunk):
        rows = min(rows_per_chunk, n_rows - start)
        n = rows * row_len
        raw = bitgen.random_raw((n + 3) // 4).view(np.uint16)[:n]
        values = raw.astype(np.float32)
        values -= np.float32(32767.5)
        values *= scale / np.float32(32767.5)
        values = values.reshape(rows, row_len)
        if tensor.dtype == "f32":
            yield values.tobytes()
        elif tensor.dtype == "f16":
            yield values.astype(np.float16).tobytes()
        else:
            from gguf import GGMLQuantizationType, quants

            yield quants.quantize(values, GGMLQuantizationType.Q8_0).tobytes()


def estimate_size(spec: SynthSpec) -> int:
    """Approximate file size in bytes (tensor data only)."""
    n_vocab = len(build_vocab().tokens)
    return sum(t.nbytes for t in _tensors(spec, n_vocab))


ProgressFn = Callable[[int, int], None]


def synthesize(
    path: str | os.PathLike[str],
    *,
    preset: str = "tiny",
    seed: int = 0,
    n_embd: int | None = None,
    n_layer: int | None = None,
    n_ff: int | None = None,
    n_head: int | None = None,
    n_head_kv: int | None = None,
    n_ctx: int | None = None,
    dtype: str | None = None,
    n_vocab: int | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Write a deterministic random-weight llama GGUF to ``path`` and return it.

    ``n_vocab`` cuts the vocabulary (see :func:`build_vocab`); ``None`` writes the full one.

    The file is written to a temporary name beside ``path`` and renamed into place, so a
    crash never leaves a half-written model. ``progress(done_bytes, total_bytes)`` is called
    as tensor data is written.
    """
    import gguf

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SynthError(f"synth: seed={seed!r} must be a non-negative integer")
    spec = resolve_spec(
        preset,
        n_embd=n_embd,
        n_layer=n_layer,
        n_ff=n_ff,
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_ctx=n_ctx,
        dtype=dtype,
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab(n_vocab)
    tensors = _tensors(spec, len(vocab.tokens))
    total = sum(t.nbytes for t in tensors)

    with atomic_output(target) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH)
        _write_metadata(writer, spec, vocab, preset=preset, seed=seed)
        for t in tensors:
            writer.add_tensor_info(
                t.name,
                t.shape,
                np.dtype(np.float32),
                t.nbytes,
                raw_dtype=gguf.GGMLQuantizationType(_DTYPES[t.dtype][0]),
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None
        out = writer.fout[0]
        _pad(out)
        done = 0
        for index, t in enumerate(tensors):
            written = 0
            for chunk in _chunks(t, seed, index):
                out.write(chunk)
                written += len(chunk)
                if progress is not None:
                    progress(done + written, total)
            if written != t.nbytes:  # pragma: no cover - internal invariant
                raise AssertionError(f"{t.name}: wrote {written} bytes, expected {t.nbytes}")
            done += written
            _pad(out)
        writer.close()
    return target


def _pad(out: Any) -> None:
    pos = out.tell()
    pad = -pos % ALIGNMENT
    if pad:
        out.write(b"\0" * pad)


def _write_metadata(writer: Any, spec: SynthSpec, vocab: Vocab, *, preset: str, seed: int) -> None:
    writer.add_name(f"synth-{preset}-s{seed}")
    writer.add_description(
        f"Random-weight test model from llama-harness synth v{SYNTH_VERSION} "
        f"(preset {preset}, seed {seed}); it generates noise."
    )
    writer.add_file_type(_FILE_TYPES[spec.dtype])
    writer.add_context_length(spec.n_ctx)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(vocab.tokens))
    writer.add_uint32("llama_harness.synth.version", SYNTH_VERSION)
    writer.add_uint32("llama_harness.synth.seed", seed)
    writer.add_string("llama_harness.synth.preset", preset)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.id(BOS))
    writer.add_eos_token_id(vocab.id(IM_END))
    writer.add_unk_token_id(vocab.id(UNK))
    writer.add_pad_token_id(vocab.id(EOS))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)  # exact round trip: no space added before the text
    writer.add_chat_template(CHAT_TEMPLATE)
