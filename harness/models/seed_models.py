"""Header-and-tensor-table GGUFs of the seed's five recommended models, for ``fit``.

The SAIVerse guide recommends Llama 3 8B, Qwen2.5 7B and Gemma 2 9B (Q8) and Llama 3 8B and
Qwen2.5 7B (Q4). Their files (4.7-9.8 GB) cannot be downloaded here, and ``fit`` needs only
their headers: :func:`write_header_only` writes each one with the ``gguf`` package, with the
shapes of the real checkpoints' ``config.json`` (hidden size, layers, heads, KV heads, head
size, FFN size, vocabulary, trained context, sliding window), the tensor table of llama.cpp's
converter for that architecture, and tensor types as ``llama-quantize`` picks them for the
file type (:func:`saiverse_llm.quant_types.tensor_types`). No weights are written: the file
is extended to its full size as a sparse file (a few MB on disk), so the tensor table is
consistent with the file size and every GGUF reader, llama.cpp's included, accepts it.

The vocabulary is a placeholder of the right length (llama.cpp reads ``n_vocab`` from it).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from saiverse_llm.atomic import atomic_output
from saiverse_llm.quant_types import FTYPE_IDS, TYPE_IDS, TensorShape, tensor_bytes, tensor_types

ALIGNMENT = 32
#: Bump when the writer changes what it writes for a spec.
WRITER_VERSION = 1


@dataclass(frozen=True)
class SeedModel:
    """One recommended model of the seed: its config key, file type and real shape."""

    key: str  # models/<key>.json
    label: str  # the seed table's name for it
    seed_size: str  # the seed table's "サイズ"
    seed_vram: str  # the seed table's "GPU推奨"
    architecture: str  # GGUF general.architecture
    file_type: str  # Q8_0, Q4_K_M
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx_train: int
    rope_theta: float
    rms_eps: float
    tied_embeddings: bool = False
    qkv_bias: bool = False
    sliding_window: int = 0
    source: str = ""

    @property
    def filename(self) -> str:
        """``<key>.<digest>.header-only.gguf``: the digest changes with the spec or the writer,
        so a cached file is never stale."""
        digest = hashlib.sha256(f"{WRITER_VERSION}:{self!r}".encode()).hexdigest()[:10]
        return f"{self.key}.{digest}.header-only.gguf"


_LLAMA3_8B = SeedModel(
    key="",
    label="",
    seed_size="",
    seed_vram="",
    file_type="",
    architecture="llama",
    n_embd=4096,
    n_layer=32,
    n_ff=14336,
    n_head=32,
    n_head_kv=8,
    head_dim=128,
    n_vocab=128256,
    n_ctx_train=8192,
    rope_theta=500000.0,
    rms_eps=1e-5,
    source="meta-llama/Meta-Llama-3-8B-Instruct config.json",
)
_QWEN25_7B = SeedModel(
    key="",
    label="",
    seed_size="",
    seed_vram="",
    file_type="",
    architecture="qwen2",
    n_embd=3584,
    n_layer=28,
    n_ff=18944,
    n_head=28,
    n_head_kv=4,
    head_dim=128,
    n_vocab=152064,
    n_ctx_train=32768,
    rope_theta=1000000.0,
    rms_eps=1e-6,
    qkv_bias=True,
    source="Qwen/Qwen2.5-7B-Instruct config.json",
)
_GEMMA2_9B = SeedModel(
    key="",
    label="",
    seed_size="",
    seed_vram="",
    file_type="",
    architecture="gemma2",
    n_embd=3584,
    n_layer=42,
    n_ff=14336,
    n_head=16,
    n_head_kv=8,
    head_dim=256,
    n_vocab=256000,
    n_ctx_train=8192,
    rope_theta=10000.0,
    rms_eps=1e-6,
    tied_embeddings=True,
    sliding_window=4096,
    source="google/gemma-2-9b-it config.json",
)

#: The seed's "推奨モデルと用途" table, in its order.
SEED_MODELS: tuple[SeedModel, ...] = (
    replace(
        _LLAMA3_8B,
        key="llama-3-8b-instruct-q8",
        label="Llama 3 8B Q8",
        seed_size="~8GB",
        seed_vram="8GB VRAM",
        file_type="Q8_0",
    ),
    replace(
        _QWEN25_7B,
        key="qwen2.5-7b-instruct-q8",
        label="Qwen2.5 7B Q8",
        seed_size="~7GB",
        seed_vram="8GB VRAM",
        file_type="Q8_0",
    ),
    replace(
        _GEMMA2_9B,
        key="gemma-2-9b-instruct-q8",
        label="Gemma 2 9B Q8",
        seed_size="~9GB",
        seed_vram="10GB VRAM",
        file_type="Q8_0",
    ),
    replace(
        _LLAMA3_8B,
        key="llama-3-8b-instruct-q4",
        label="Llama 3 8B Q4",
        seed_size="~4.5GB",
        seed_vram="不要（CPUでも可）",
        file_type="Q4_K_M",
    ),
    replace(
        _QWEN25_7B,
        key="qwen2.5-7b-instruct-q4",
        label="Qwen2.5 7B Q4",
        seed_size="~4GB",
        seed_vram="不要（CPUでも可）",
        file_type="Q4_K_M",
    ),
)


def tensor_table(m: SeedModel) -> list[TensorShape]:
    """The tensors llama.cpp's converter writes for ``m`` (dims in ggml order)."""
    q_dim = m.n_head * m.head_dim
    kv_dim = m.n_head_kv * m.head_dim
    out = [TensorShape("token_embd.weight", (m.n_embd, m.n_vocab))]
    for il in range(m.n_layer):
        p = f"blk.{il}."
        out += [
            TensorShape(p + "attn_norm.weight", (m.n_embd,)),
            TensorShape(p + "attn_q.weight", (m.n_embd, q_dim)),
            TensorShape(p + "attn_k.weight", (m.n_embd, kv_dim)),
            TensorShape(p + "attn_v.weight", (m.n_embd, kv_dim)),
        ]
        if m.qkv_bias:
            out += [
                TensorShape(p + "attn_q.bias", (q_dim,)),
                TensorShape(p + "attn_k.bias", (kv_dim,)),
                TensorShape(p + "attn_v.bias", (kv_dim,)),
            ]
        out.append(TensorShape(p + "attn_output.weight", (q_dim, m.n_embd)))
        if m.architecture == "gemma2":
            out.append(TensorShape(p + "post_attention_norm.weight", (m.n_embd,)))
        out += [
            TensorShape(p + "ffn_norm.weight", (m.n_embd,)),
            TensorShape(p + "ffn_gate.weight", (m.n_embd, m.n_ff)),
            TensorShape(p + "ffn_up.weight", (m.n_embd, m.n_ff)),
            TensorShape(p + "ffn_down.weight", (m.n_ff, m.n_embd)),
        ]
        if m.architecture == "gemma2":
            out.append(TensorShape(p + "post_ffw_norm.weight", (m.n_embd,)))
    out.append(TensorShape("output_norm.weight", (m.n_embd,)))
    if not m.tied_embeddings:
        out.append(TensorShape("output.weight", (m.n_embd, m.n_vocab)))
    return out


def _vocab(n: int) -> Iterator[str]:
    yield from ("<unk>", "<s>", "</s>")
    for b in range(256):
        yield f"<0x{b:02X}>"
    for i in range(n - 259):
        yield f"\u2581t{i}"


def write_header_only(m: SeedModel, path: str | os.PathLike[str]) -> Path:
    """Write ``m``'s GGUF without weights (a sparse file of the real size) and return it."""
    import gguf

    target = Path(path)
    tensors = tensor_table(m)
    types = tensor_types(tensors, m.file_type, n_head=m.n_head, n_head_kv=m.n_head_kv)
    with atomic_output(target) as tmp:
        w = gguf.GGUFWriter(tmp, m.architecture)
        _metadata(w, m)
        data_bytes = 0
        for t in tensors:
            nbytes = tensor_bytes(types[t.name], t.dims)
            w.add_tensor_info(
                t.name,
                tuple(reversed(t.dims)),
                np.dtype(np.float32),
                nbytes,
                raw_dtype=gguf.GGMLQuantizationType(TYPE_IDS[types[t.name]]),
            )
            data_bytes += -(-nbytes // ALIGNMENT) * ALIGNMENT
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        assert w.fout is not None
        header_end = w.fout[0].tell()
        w.close()
        data_offset = -(-header_end // ALIGNMENT) * ALIGNMENT
        os.truncate(tmp, data_offset + data_bytes)  # sparse: no weight bytes are written
    return target


def _metadata(w: object, m: SeedModel) -> None:
    import gguf

    assert isinstance(w, gguf.GGUFWriter)
    w.add_name(m.label)
    w.add_description(f"header and tensor table only (no weights): shapes of {m.source}")
    w.add_file_type(FTYPE_IDS[m.file_type])
    w.add_quantization_version(2)
    w.add_context_length(m.n_ctx_train)
    w.add_embedding_length(m.n_embd)
    w.add_block_count(m.n_layer)
    w.add_feed_forward_length(m.n_ff)
    w.add_head_count(m.n_head)
    w.add_head_count_kv(m.n_head_kv)
    w.add_rope_freq_base(m.rope_theta)
    w.add_layer_norm_rms_eps(m.rms_eps)
    if m.architecture == "llama":
        w.add_rope_dimension_count(m.head_dim)
        w.add_vocab_size(m.n_vocab)
    if m.architecture == "gemma2":
        w.add_key_length(m.head_dim)
        w.add_value_length(m.head_dim)
        w.add_sliding_window(m.sliding_window)
        w.add_attn_logit_softcapping(50.0)
        w.add_final_logit_softcapping(30.0)
    w.add_tokenizer_model("llama")
    w.add_token_list(list(_vocab(m.n_vocab)))
    w.add_token_scores([0.0] * m.n_vocab)
    w.add_token_types([3, 3, 3] + [6] * 256 + [1] * (m.n_vocab - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)


def ensure_all(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Every seed model's header-only GGUF in ``directory`` (written when missing)."""
    out: dict[str, Path] = {}
    for m in SEED_MODELS:
        path = Path(directory) / m.filename
        if not path.is_file():
            write_header_only(m, path)
        out[m.key] = path
    return out
