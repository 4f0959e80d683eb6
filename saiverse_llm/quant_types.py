"""Which ggml type each tensor gets under a llama.cpp quantization (``Q8_0``, ``Q4_K_M``, ...).

``llama-quantize`` does not give every tensor the file type's base type: ``Q4_K_M`` keeps
``output.weight`` at Q6_K and gives half of the ``attn_v``/``ffn_down`` tensors Q6_K, tied
token embeddings follow the output tensor, and a row length that is not a multiple of the
type's block falls back to a smaller-block type. :func:`tensor_type` follows
``llama_tensor_get_type_impl`` and ``tensor_type_fallback`` of the vendored
``src/llama-quant.cpp`` (llama-cpp-python 0.3.36) for dense (non-MoE) models without an
importance matrix, for the file types in :data:`FILE_TYPES`.

Used by :mod:`saiverse_llm.fit` (what a smaller quantization of the same model would weigh)
and by the header-only GGUFs of the seed's models (``harness/models/seed_models.py``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from saiverse_llm.gguf_file import GGML_TYPES

#: ggml type name -> id (the inverse of gguf_file.GGML_TYPES).
TYPE_IDS: dict[str, int] = {name: tid for tid, (name, _block, _size) in GGML_TYPES.items()}

#: ``general.file_type`` (llama_ftype) -> its name.
FTYPE_NAMES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}
FTYPE_IDS: dict[str, int] = {name: fid for fid, name in FTYPE_NAMES.items()}

#: The file types :func:`tensor_type` models, with each one's base tensor type.
FILE_TYPES: dict[str, str] = {
    "F16": "F16",
    "BF16": "BF16",
    "Q8_0": "Q8_0",
    "Q6_K": "Q6_K",
    "Q5_K_M": "Q5_K",
    "Q5_K_S": "Q5_K",
    "Q5_0": "Q5_0",
    "Q4_K_M": "Q4_K",
    "Q4_K_S": "Q4_K",
    "Q4_0": "Q4_0",
    "Q3_K_L": "Q3_K",
    "Q3_K_M": "Q3_K",
    "Q2_K": "Q2_K",
}

#: Smaller quantizations to suggest when a model does not fit, largest first.
SUGGESTED: tuple[str, ...] = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")

# tensor_type_fallback: a 256-block type whose row length does not divide falls back
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class TensorShape:
    """A tensor's name and its dimensions in ggml order (row length first)."""

    name: str
    dims: tuple[int, ...]


def block_size(type_name: str) -> int:
    return GGML_TYPES[TYPE_IDS[type_name]][1]


def row_bytes(type_name: str, n_values: int) -> int:
    """Bytes of ``n_values`` values of a ggml type (``ggml_row_size``); ``n_values`` must be a
    multiple of the type's block size."""
    _name, block, size = GGML_TYPES[TYPE_IDS[type_name]]
    return n_values // block * size


def tensor_bytes(type_name: str, dims: Sequence[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return row_bytes(type_name, n)


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return (
        i_layer < n_layers // 8
        or i_layer >= 7 * n_layers // 8
        or (i_layer - n_layers // 8) % 3 == 2
    )


def _n_dims(dims: Sequence[int]) -> int:
    """``ggml_n_dims``: the position of the last dimension above 1, plus one."""
    return max((i + 1 for i, d in enumerate(dims) if d > 1), default=1)


def _quantizable(t: TensorShape) -> bool:
    return (
        _n_dims(t.dims) >= 2
        and t.name.endswith("weight")
        and "_norm.weight" not in t.name
        and "ffn_gate_inp.weight" not in t.name
        and t.name not in ("position_embd.weight", "token_types.weight")
    )


def tensor_types(
    tensors: Sequence[TensorShape], file_type: str, *, n_head: int = 1, n_head_kv: int = 1
) -> dict[str, str]:
    """The ggml type name of every tensor in a ``file_type`` quantization of a model.

    ``tensors`` is the model's tensor table (names as in GGUF, ``blk.N.`` prefixes);
    ``n_head``/``n_head_kv`` give the GQA ratio that ``Q2_K`` looks at. 1-D tensors, norms
    and the other tensors llama-quantize never quantizes are F32. Raises ``KeyError`` for a
    file type outside :data:`FILE_TYPES`.
    """
    base = FILE_TYPES[file_type]
    names = {t.name for t in tensors}
    tied = "output.weight" not in names
    n_gqa = n_head // max(1, n_head_kv)
    n_attn_v = sum(1 for t in tensors if t.name.endswith("attn_v.weight"))
    n_ffn_down = sum(1 for t in tensors if t.name.endswith("ffn_down.weight"))
    i_attn_v = 0
    i_ffn_down = 0
    out: dict[str, str] = {}
    for t in tensors:
        if not _quantizable(t):
            out[t.name] = "F32"
            continue
        new = base
        quantized = base not in ("F16", "BF16", "F32")
        if quantized:
            if t.name == "output.weight" or (tied and t.name == "token_embd.weight"):
                if t.dims[0] % block_size(new):
                    new = "Q8_0"
                elif new != "Q8_0":
                    new = "Q6_K"
            elif t.name == "token_embd.weight":
                pass
            elif t.name.endswith("attn_v.weight"):
                new = _attn_v(file_type, new, i_attn_v, n_attn_v, n_gqa)
                i_attn_v += 1
            elif t.name.endswith("ffn_down.weight"):
                new = _ffn_down(file_type, new, i_ffn_down, n_ffn_down)
                i_ffn_down += 1
            elif t.name.endswith("attn_output.weight"):
                new = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(file_type, new)
            elif t.name.endswith("attn_qkv.weight"):
                new = {
                    "Q3_K_M": "Q4_K",
                    "Q3_K_L": "Q4_K",
                    "Q4_K_M": "Q5_K",
                    "Q5_K_M": "Q6_K",
                }.get(file_type, new)
            if t.dims[0] % block_size(new):
                fallback = _FALLBACK.get(new, new)
                new = fallback if t.dims[0] % block_size(fallback) == 0 else "F16"
        out[t.name] = new
    return out


def _attn_v(file_type: str, new: str, i: int, n: int, n_gqa: int) -> str:
    if file_type == "Q2_K":
        return "Q4_K" if n_gqa >= 4 else "Q3_K"
    if file_type == "Q3_K_M":
        return "Q5_K" if i < 2 else "Q4_K"
    if file_type == "Q3_K_L":
        return "Q5_K"
    if file_type in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n):
        return "Q6_K"
    if file_type == "Q4_K_S" and i < 4:
        return "Q5_K"
    return new


def _ffn_down(file_type: str, new: str, i: int, n: int) -> str:
    if file_type == "Q2_K":
        return "Q3_K"
    if file_type == "Q3_K_M":
        return "Q5_K" if i < n // 16 else "Q4_K"
    if file_type == "Q3_K_L":
        return "Q5_K"
    if file_type in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n):
        return "Q6_K"
    if file_type == "Q4_K_S" and i < n // 8:
        return "Q5_K"
    return new


def layer_of(name: str) -> int | None:
    """The block index of a ``blk.N.`` tensor name, else ``None``."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None
