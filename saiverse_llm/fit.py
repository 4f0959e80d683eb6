"""Will it fit? Memory planning for a GGUF model before it is loaded.

From the GGUF header and tensor table alone (:func:`saiverse_llm.gguf_file.read_gguf`, no
weights read, no ``llama_cpp`` needed) this module computes what a llama.cpp load allocates:

- **weights**: the bytes of every tensor, per repeating layer, the input layer (token
  embeddings, always kept in system memory by llama.cpp) and the output layer (``output``
  and ``output_norm``; a model with tied embeddings gets a copy of ``token_embd`` there
  when the output layer is offloaded);
- **KV cache**: per layer, ``n_ctx`` cells (padded to 256, as ``llama_context`` does) of
  ``n_head_kv(il) * head_dim`` K and V values of the cache type (f16 by default);
  sliding-window layers get ``min(n_ctx, pad(n_swa + n_ubatch, 256))`` cells unless
  ``swa_full`` (llama-cpp-python passes ``swa_full=None``, so llama.cpp's default ``true``
  applies: every layer gets the full context);
- **compute buffer**: the peak of the worst-case graph llama.cpp reserves (``n_ubatch``
  tokens against the full cache): attention scores ``n_kv * n_ubatch * n_head`` f32 (none
  with flash attention) plus the KQ masks, the FFN activations, or the logits
  ``n_vocab * n_ubatch`` f32, whichever is largest;
- **CPU repack**: on x86-64, llama.cpp's CPU backend keeps a second, repacked copy of
  Q4_0/Q4_K/IQ4_NL/MXFP4 matrices of the layers that stay in system memory.

The sources are the vendored llama.cpp of llama-cpp-python 0.3.36: ``llama_context``
(n_ctx padding, ``sched_reserve``), ``llama_kv_cache``/``llama_kv_cache_iswa``,
``llama_model::load_tensors`` (n_gpu_layers: layer ``il`` goes to the GPU when
``il >= n_layer + 1 - n_gpu_layers``, so the output layer goes first) and ggml-cpu's
``repack.cpp``. ``tests/unit/test_fit.py`` and ``tests/client/test_fit_vs_llama.py`` hold
the figures compared with a real load and with ``llama-fit-params``.

:func:`plan` turns an estimate and a memory size into advice: the largest ``n_gpu_layers``
and the largest ``context_length`` that fit with a margin, and the largest smaller
quantization that would fit when the requested one does not.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from saiverse_llm import llama_archs
from saiverse_llm.cgroup_memory import memory_headroom
from saiverse_llm.config import DEFAULT_CONTEXT_CAP, ModelConfig
from saiverse_llm.gguf_file import GGUFArray, GGUFInfo, MetadataValue, read_gguf
from saiverse_llm.quant_types import (
    FTYPE_NAMES,
    SUGGESTED,
    TensorShape,
    layer_of,
    row_bytes,
    tensor_bytes,
    tensor_types,
)

MIB = 1024 * 1024
GIB = 1024 * MIB

#: Free memory to leave on the device: llama.cpp's ``--fit-target`` default (1024 MiB).
DEFAULT_MARGIN = 1024 * MIB
#: llama_context pads n_ctx (and so the KV cache) to a multiple of this.
CTX_PAD = 256
#: The smallest context :func:`plan` suggests.
MIN_CONTEXT = 2048

#: Architectures whose memory is a recurrent state (Mamba, RWKV, hybrids): not modelled.
RECURRENT_ARCHS = frozenset(
    {
        "mamba",
        "mamba2",
        "rwkv6",
        "rwkv6qwen2",
        "rwkv7",
        "arwkv7",
        "jamba",
        "falcon-h1",
        "plamo2",
        "granitehybrid",
        "lfm2",
        "lfm2moe",
        "nemotron_h",
        "nemotron_h_moe",
        "qwen3next",
        "qwen35",
        "qwen35moe",
        "qwen4exp",
        "kimi-linear",
        "kimi-k3",
        "glm5-next",
        "bailingmoe3",
        "deepseek4",
        "minimax-01",
    }
)
#: Architectures that share KV layers between blocks (llama.cpp's ``reuse`` callback).
KV_SHARING_ARCHS = frozenset({"gemma3n", "gemma4", "gemma4-assistant"})

# Sliding-window layout per architecture (the ``load_swa_pattern`` defaults of each
# src/models/<arch>.cpp): (pattern, dense_first, default window or None, always SWA).
# A pattern of n means every n-th layer (the last of each group of n) is full attention.
_SWA_ARCHS: dict[str, tuple[int, bool, int | None, bool]] = {
    "gemma2": (2, False, 4096, True),
    "gemma3": (6, False, None, False),
    "cohere2": (4, False, None, True),
    "gpt-oss": (2, False, None, True),
    "olmo2": (4, False, None, False),
    "exaone4": (4, False, None, False),
    "llama4": (4, False, None, False),
}
#: KV cache types llama.cpp accepts (``--cache-type-k/v``) -> ggml type id.
KV_CACHE_TYPES: dict[str, int] = {
    "F32": 0,
    "F16": 1,
    "BF16": 30,
    "Q8_0": 8,
    "Q4_0": 2,
    "Q4_1": 3,
    "IQ4_NL": 20,
    "Q5_0": 6,
    "Q5_1": 7,
}
# ggml-cpu repack.cpp on x86-64 with AVX2: these types get a repacked copy (rows % 8 == 0).
_REPACK_TYPES = frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"})
_INPUT_TENSORS = ("token_embd.", "position_embd.", "token_types.", "token_embd_norm.")


class FitError(ValueError):
    """The file cannot be planned for; ``str(err)`` names the file, the problem and the fix."""


# --------------------------------------------------------------------------- model shape


@dataclass(frozen=True)
class ModelShape:
    """What a memory estimate needs from a GGUF: hyper-parameters and the tensor table.

    Per-layer lists have ``n_layer`` entries. ``tensors`` keeps (name, dims, type name).
    """

    path: Path
    name: str
    architecture: str
    file_type: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_ctx_train: int
    n_head: tuple[int, ...]
    n_head_kv: tuple[int, ...]
    head_dim_k: tuple[int, ...]
    head_dim_v: tuple[int, ...]
    n_ff: tuple[int, ...]
    swa: tuple[bool, ...]
    n_swa: int
    tensors: tuple[tuple[str, tuple[int, ...], str], ...] = field(repr=False)
    notes: tuple[str, ...] = ()

    @property
    def has_swa(self) -> bool:
        return any(self.swa)

    @property
    def tied_embeddings(self) -> bool:
        names = {name for name, _dims, _type in self.tensors}
        return "output.weight" not in names and "token_embd.weight" in names

    def with_quantization(self, file_type: str) -> ModelShape:
        """The same model quantized as ``file_type`` (``Q4_K_M``, ...): tensor types as
        ``llama-quantize`` would choose them (:func:`saiverse_llm.quant_types.tensor_types`)."""
        shapes = [TensorShape(name, dims) for name, dims, _type in self.tensors]
        types = tensor_types(
            shapes, file_type, n_head=max(self.n_head), n_head_kv=max(1, max(self.n_head_kv))
        )
        tensors = tuple((name, dims, types[name]) for name, dims, _type in self.tensors)
        return replace(self, tensors=tensors, file_type=file_type)


def _meta_int(info: GGUFInfo, key: str) -> int | None:
    value = info.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _per_layer(
    info: GGUFInfo, key: str, n_layer: int, default: int | None
) -> tuple[int, ...] | None:
    """``key`` as one value per layer: a scalar repeated, or a per-layer array."""
    value: MetadataValue | None = info.get(key)
    if value is None:
        return None if default is None else (default,) * n_layer
    if isinstance(value, GGUFArray):
        if value.values is None or len(value.values) != n_layer:
            raise FitError(
                f"{info.path}: metadata {key} is an array of {value.length} values for "
                f"{n_layer} layers. Fix: this file's per-layer layout is not supported by fit"
            )
        return tuple(int(v) for v in value.values)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FitError(f"{info.path}: metadata {key}={value!r} is not an integer")
    return (value,) * n_layer


def _swa_layers(info: GGUFInfo, arch: str, n_layer: int) -> tuple[tuple[bool, ...], int]:
    n_swa = _meta_int(info, f"{arch}.attention.sliding_window")
    layout = _SWA_ARCHS.get(arch)
    if layout is None:
        return (False,) * n_layer, 0
    pattern, dense_first, default_window, always = layout
    if n_swa is None:
        n_swa = default_window
    if not n_swa or (not always and not _meta_int(info, f"{arch}.attention.sliding_window")):
        return (False,) * n_layer, 0
    explicit = info.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(explicit, GGUFArray) and explicit.values is not None:
        flags = tuple(bool(v) for v in explicit.values)
        if len(flags) == n_layer:
            return flags, n_swa
    if isinstance(explicit, int) and not isinstance(explicit, bool):
        pattern = explicit
    if dense_first:
        flags = tuple(pattern == 0 or il % pattern != 0 for il in range(n_layer))
    else:
        flags = tuple(pattern == 0 or il % pattern < pattern - 1 for il in range(n_layer))
    return flags, n_swa


def model_shape(info: GGUFInfo) -> ModelShape:
    """The :class:`ModelShape` of a checked GGUF. Raises :class:`FitError` for files whose
    memory is not an attention KV cache (recurrent/hybrid, MLA, shared-KV architectures)."""
    arch = info.architecture
    path = info.path
    if not arch:
        raise FitError(f"{path}: general.architecture is missing. Fix: re-convert the model")
    if arch not in llama_archs.KNOWN:
        raise FitError(
            f"{path}: architecture {arch!r} is not one llama.cpp knows (llama-cpp-python "
            f"{llama_archs.CHECKED_AGAINST}): a load fails with 'unknown model architecture'. "
            "Fix: use a GGUF of a supported architecture (convert_hf_to_gguf.py of the same "
            "llama.cpp), or a llama-cpp-python release that supports it"
        )
    if arch in llama_archs.NO_KV_CACHE:
        raise FitError(
            f"{path}: architecture {arch!r} is an encoder (embedding) or diffusion model with "
            "no KV cache, which fit does not plan (it plans text-generation models). Fix: "
            "check the memory with a real load (saiverse-llm check)"
        )
    if arch in RECURRENT_ARCHS:
        raise FitError(
            f"{path}: architecture {arch!r} keeps a recurrent state, which fit does not model "
            "(it plans attention KV caches). Fix: check the memory with a real load "
            "(saiverse-llm check)"
        )
    if arch in KV_SHARING_ARCHS or info.get(f"{arch}.attention.kv_lora_rank") is not None:
        raise FitError(
            f"{path}: architecture {arch!r} uses a shared or compressed (MLA) KV cache, which "
            "fit does not model. Fix: check the memory with a real load (saiverse-llm check)"
        )

    def need(key: str) -> int:
        value = _meta_int(info, f"{arch}.{key}")
        if value is None or value <= 0:
            raise FitError(
                f"{path}: metadata {arch}.{key} is missing or not a positive integer. "
                "Fix: re-convert the model with a current convert_hf_to_gguf.py"
            )
        return value

    n_layer = need("block_count")
    n_embd = need("embedding_length")
    n_head = _per_layer(info, f"{arch}.attention.head_count", n_layer, None)
    if n_head is None or max(n_head) <= 0:
        raise FitError(f"{path}: metadata {arch}.attention.head_count is missing")
    n_head_kv = _per_layer(info, f"{arch}.attention.head_count_kv", n_layer, None) or n_head
    head_k = _meta_int(info, f"{arch}.attention.key_length") or n_embd // max(n_head)
    head_v = _meta_int(info, f"{arch}.attention.value_length") or head_k
    swa, n_swa = _swa_layers(info, arch, n_layer)
    head_k_swa = _meta_int(info, f"{arch}.attention.key_length_swa") or head_k
    head_v_swa = _meta_int(info, f"{arch}.attention.value_length_swa") or head_v
    n_ff = _per_layer(info, f"{arch}.feed_forward_length", n_layer, 0) or (0,) * n_layer

    tensors = tuple((t.name, t.dims, t.type_name) for t in info.tensors)
    tokens = info.get("tokenizer.ggml.tokens")
    n_vocab = tokens.length if isinstance(tokens, GGUFArray) else 0
    if not n_vocab:
        embd = next((t for t in info.tensors if t.name == "token_embd.weight"), None)
        n_vocab = embd.dims[-1] if embd is not None else 0
    notes: list[str] = []
    if any("_exps." in t.name for t in info.tensors):
        notes.append("mixture-of-experts: the compute-buffer estimate ignores expert routing")
    ftype = _meta_int(info, "general.file_type")
    file_type = FTYPE_NAMES.get(ftype, f"ftype {ftype}") if ftype is not None else _guess(info)
    return ModelShape(
        path=path,
        name=info.name or path.stem,
        architecture=arch,
        file_type=file_type,
        n_layer=n_layer,
        n_embd=n_embd,
        n_vocab=n_vocab,
        n_ctx_train=info.context_length or 0,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=tuple(head_k_swa if s else head_k for s in swa),
        head_dim_v=tuple(head_v_swa if s else head_v for s in swa),
        n_ff=n_ff,
        swa=swa,
        n_swa=n_swa,
        tensors=tensors,
        notes=tuple(notes),
    )


def _guess(info: GGUFInfo) -> str:
    sizes: dict[str, int] = {}
    for t in info.tensors:
        if len(t.dims) >= 2:
            sizes[t.type_name] = sizes.get(t.type_name, 0) + t.nbytes
    return max(sizes, key=lambda k: sizes[k]) if sizes else "unknown"


def read_shape(path: str | os.PathLike[str]) -> ModelShape:
    """:func:`model_shape` of the file at ``path`` (raises ``GGUFError`` or :class:`FitError`)."""
    return model_shape(read_gguf(path))


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class LoadSettings:
    """The context parameters a load uses; the defaults are what llama-cpp-python's ``Llama``
    passes when the client sets only ``n_ctx`` (n_batch/n_ubatch 512, f16 cache, no flash
    attention, ``swa_full`` left to llama.cpp's default ``true``, KV offloaded)."""

    n_ctx: int
    n_batch: int = 512
    n_ubatch: int = 512
    type_k: str = "F16"
    type_v: str = "F16"
    flash_attn: bool = False
    swa_full: bool = True
    offload_kqv: bool = True
    n_seq: int = 1  # sequences decoded together (n_seq_max), n_ctx cells each

    @property
    def kv_size(self) -> int:
        """Cells per layer of one sequence: n_ctx padded to 256 (``GGML_PAD(n_ctx, 256)``).
        With ``n_seq`` sequences the cache is not unified: each has its own stream of
        this many cells, and the worst-case graph is reserved for one stream's length."""
        return _pad(max(1, self.n_ctx), CTX_PAD)

    @property
    def n_tokens(self) -> int:
        """Tokens of the worst-case graph llama.cpp reserves: min(n_ctx, n_batch, n_ubatch)."""
        n_batch = min(self.n_ctx, self.n_batch)
        return min(self.kv_size, min(n_batch, self.n_ubatch))

    @classmethod
    def from_llama_kwargs(cls, n_ctx: int, kwargs: dict[str, Any]) -> LoadSettings:
        """Settings from the keyword arguments a client passes to ``llama_cpp.Llama``
        (``type_k``/``type_v`` are ggml type ids, as llama-cpp-python takes them). Raises
        :class:`FitError` for a cache type llama.cpp would refuse."""
        names = {tid: name for name, tid in KV_CACHE_TYPES.items()}

        def cache_type(key: str) -> str:
            raw = kwargs.get(key)
            if raw is None:
                return "F16"
            if isinstance(raw, bool) or not isinstance(raw, int) or raw not in names:
                raise FitError(
                    f"{key}={raw!r} is not a KV cache type llama.cpp supports; use a ggml type "
                    f"id: {', '.join(f'{t} ({n})' for n, t in KV_CACHE_TYPES.items())}"
                )
            return names[raw]

        swa_full = kwargs.get("swa_full")
        settings = cls(
            n_ctx=n_ctx,
            n_batch=int(kwargs.get("n_batch", 512)),
            n_ubatch=int(kwargs.get("n_ubatch", 512)),
            type_k=cache_type("type_k"),
            type_v=cache_type("type_v"),
            flash_attn=bool(kwargs.get("flash_attn", False)),
            swa_full=True if swa_full is None else bool(swa_full),
            offload_kqv=bool(kwargs.get("offload_kqv", True)),
        )
        if not settings.flash_attn and settings.type_v not in ("F32", "F16", "BF16"):
            raise FitError(
                f"type_v={settings.type_v}: llama.cpp refuses a quantized V cache without flash "
                "attention. Fix: also pass flash_attn=True, or keep type_v at F16"
            )
        return settings


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


# --------------------------------------------------------------------------- estimate


@dataclass(frozen=True)
class LayerFigures:
    """One repeating layer: its weights, its KV cache and whether it is sliding-window."""

    index: int
    weights_bytes: int
    kv_cache_bytes: int
    kv_cells: int
    sliding_window: bool
    repack_bytes: int  # the CPU backend's repacked copy when the layer stays in RAM

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.index,
            "weights_bytes": self.weights_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "kv_cells": self.kv_cells,
            "sliding_window": self.sliding_window,
        }


@dataclass(frozen=True)
class Split:
    """Bytes on the GPU device and in system memory for one ``n_gpu_layers``."""

    n_gpu_layers: int  # 0..n_layer+1 (n_layer+1 = all, what -1 means)
    device_bytes: int
    host_bytes: int
    device_weights: int
    device_kv: int
    device_compute: int
    host_weights: int = 0  # the weights in system memory (file-backed when mmapped)


@dataclass(frozen=True)
class Estimate:
    """What a load of ``shape`` with ``settings`` allocates, in bytes.

    ``weights_bytes`` is the tensor data (plus the tied-embedding copy when the output layer
    is offloaded, see :meth:`split`); ``total_bytes`` = weights + KV cache + compute +
    CPU repack + output buffer for a CPU-only load (``n_gpu_layers=0``).
    """

    shape: ModelShape
    settings: LoadSettings
    layers: tuple[LayerFigures, ...]
    input_bytes: int  # token embeddings: always in system memory
    output_layer_bytes: int  # output + output_norm (without the tied copy)
    tied_copy_bytes: int  # token_embd copied to the device with the output layer
    compute_bytes: int
    host_compute_offloaded: int  # system-memory compute buffer when every layer is offloaded
    output_buffer_bytes: int  # logits of one token, always in system memory
    output_repack_bytes: int

    @property
    def weights_bytes(self) -> int:
        return (
            self.input_bytes
            + self.output_layer_bytes
            + sum(layer.weights_bytes for layer in self.layers)
        )

    @property
    def kv_cache_bytes(self) -> int:
        return sum(layer.kv_cache_bytes for layer in self.layers)

    @property
    def repack_bytes(self) -> int:
        return self.output_repack_bytes + sum(layer.repack_bytes for layer in self.layers)

    @property
    def total_bytes(self) -> int:
        """Everything, all in system memory (n_gpu_layers=0)."""
        return self.split(0).host_bytes

    @property
    def n_layer(self) -> int:
        return self.shape.n_layer

    def split(self, n_gpu_layers: int) -> Split:
        """Device and system-memory bytes with ``n_gpu_layers`` offloaded (-1 = all)."""
        n_all = self.n_layer + 1
        ngl = n_all if n_gpu_layers < 0 else min(n_gpu_layers, n_all)
        first_gpu = n_all - ngl  # layer il is on the GPU when il >= first_gpu
        dev_w = dev_kv = host_w = host_kv = repack = 0
        for layer in self.layers:
            if layer.index >= first_gpu:
                dev_w += layer.weights_bytes
                if self.settings.offload_kqv:
                    dev_kv += layer.kv_cache_bytes
                else:
                    host_kv += layer.kv_cache_bytes
            else:
                host_w += layer.weights_bytes
                host_kv += layer.kv_cache_bytes
                repack += layer.repack_bytes
        if ngl >= 1:
            dev_w += self.output_layer_bytes + self.tied_copy_bytes
        else:
            host_w += self.output_layer_bytes
            repack += self.output_repack_bytes
        host_w += self.input_bytes
        if ngl == 0:
            dev_compute, host_compute = 0, self.compute_bytes
        elif ngl == n_all:
            dev_compute, host_compute = self.compute_bytes, self.host_compute_offloaded
        else:
            dev_compute, host_compute = self.compute_bytes, self.compute_bytes
        return Split(
            n_gpu_layers=ngl,
            device_bytes=dev_w + dev_kv + dev_compute,
            host_bytes=host_w + host_kv + repack + host_compute + self.output_buffer_bytes,
            device_weights=dev_w,
            device_kv=dev_kv,
            device_compute=dev_compute,
            host_weights=host_w,
        )

    def to_dict(self) -> dict[str, Any]:
        s = self.settings
        return {
            "model": self.shape.name,
            "path": str(self.shape.path),
            "architecture": self.shape.architecture,
            "quantization": self.shape.file_type,
            "n_layer": self.n_layer,
            "context_length": s.n_ctx,
            "kv_cells": s.kv_size * s.n_seq,
            "n_seq": s.n_seq,
            "n_ctx_train": self.shape.n_ctx_train,
            "settings": {
                "n_batch": s.n_batch,
                "n_ubatch": s.n_ubatch,
                "type_k": s.type_k,
                "type_v": s.type_v,
                "flash_attn": s.flash_attn,
                "swa_full": s.swa_full,
                "offload_kqv": s.offload_kqv,
            },
            "weights_bytes": self.weights_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "compute_bytes": self.compute_bytes,
            "cpu_repack_bytes": self.repack_bytes,
            "output_buffer_bytes": self.output_buffer_bytes,
            "total_bytes": self.total_bytes,
            "input_layer_bytes": self.input_bytes,
            "output_layer_bytes": self.output_layer_bytes,
            "tied_embedding_copy_bytes": self.tied_copy_bytes,
            "layers": [layer.to_dict() for layer in self.layers],
            "notes": list(self.shape.notes),
        }


def _cpu_repacks() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def estimate(shape: ModelShape, settings: LoadSettings) -> Estimate:
    """The memory a load of ``shape`` with ``settings`` allocates (see the module doc)."""
    s = settings
    n_layer = shape.n_layer
    layer_w = [0] * n_layer
    layer_repack = [0] * n_layer
    input_b = output_b = output_repack = embd_b = 0
    repacks = _cpu_repacks()
    for name, dims, type_name in shape.tensors:
        nbytes = tensor_bytes(type_name, dims)
        rep = (
            nbytes
            if repacks and type_name in _REPACK_TYPES and len(dims) >= 2 and dims[1] % 8 == 0
            else 0
        )
        il = layer_of(name)
        if il is not None and il < n_layer:
            layer_w[il] += nbytes
            layer_repack[il] += rep
        elif name.startswith(_INPUT_TENSORS):
            input_b += nbytes
            if name == "token_embd.weight":
                embd_b = nbytes
        else:
            output_b += nbytes
            output_repack += rep
    tied = embd_b if shape.tied_embeddings else 0

    cells = s.kv_size
    swa_cells = cells if s.swa_full else min(cells, _pad(shape.n_swa + s.n_ubatch, CTX_PAD))
    streams = max(1, s.n_seq)  # one stream of cells per sequence
    v_width_max = max(hv * kv for hv, kv in zip(shape.head_dim_v, shape.n_head_kv, strict=True))
    layers: list[LayerFigures] = []
    for il in range(n_layer):
        n_cells = (swa_cells if shape.swa[il] else cells) * streams
        k_width = shape.head_dim_k[il] * shape.n_head_kv[il]
        v_width = shape.head_dim_v[il] * shape.n_head_kv[il]
        if not s.flash_attn:  # V is stored transposed, padded to the widest layer
            v_width = v_width_max
        kv = (row_bytes(s.type_k, k_width) + row_bytes(s.type_v, v_width)) * n_cells
        layers.append(
            LayerFigures(
                index=il,
                weights_bytes=layer_w[il],
                kv_cache_bytes=kv,
                kv_cells=n_cells,
                sliding_window=shape.swa[il],
                repack_bytes=layer_repack[il],
            )
        )
    compute, host_offloaded = _compute_bytes(shape, s, swa_cells)
    return Estimate(
        shape=shape,
        settings=s,
        layers=tuple(layers),
        input_bytes=input_b,
        output_layer_bytes=output_b,
        tied_copy_bytes=tied,
        compute_bytes=compute,
        host_compute_offloaded=host_offloaded,
        output_buffer_bytes=shape.n_vocab * 4,
        output_repack_bytes=output_repack,
    )


def _compute_bytes(shape: ModelShape, s: LoadSettings, swa_cells: int) -> tuple[int, int]:
    """Peak of llama.cpp's reserved worst-case graph (f32 activations), and the part that
    stays in system memory when every layer is offloaded.

    Measured against the load log of the cpu build (tests/unit/test_fit.py lists the shapes):
    attention ``kq + masks + 3 Q + 2 E + 2 K``, FFN ``masks + 3 F + 4 E + 2 K`` (without the
    ``2 K`` under flash attention), output
    ``logits + 2 E``, where with T = n_ubatch tokens, n_kv = the cache cells:
    kq = n_kv T n_head, Q = T n_head head_dim, E = T n_embd, K = T n_head_kv head_dim,
    F = T n_ff, logits = T n_vocab (all f32), masks = T n_kv per mask (f32; f16 with flash
    attention), one mask per cache (two for a sliding-window model).
    """
    t = s.n_tokens
    n_kv = s.kv_size
    f32 = 4
    mask_elem = 2 if s.flash_attn else 4
    masks = t * n_kv * mask_elem
    if shape.has_swa:
        masks += t * swa_cells * mask_elem
    n_head = max(shape.n_head)
    q = t * max(h * d for h, d in zip(shape.n_head, shape.head_dim_k, strict=True)) * f32
    e = t * shape.n_embd * f32
    k = t * max(h * d for h, d in zip(shape.n_head_kv, shape.head_dim_k, strict=True)) * f32
    ff = t * max(shape.n_ff) * f32
    kq = 0 if s.flash_attn else n_kv * t * n_head * f32
    n_out = min(t, min(s.n_ctx, s.n_batch))
    attention = kq + masks + 3 * q + 2 * e + 2 * k
    ffn = masks + 3 * ff + 4 * e + (0 if s.flash_attn else 2 * k)
    output = n_out * shape.n_vocab * f32 + 2 * e
    return max(attention, ffn, output), masks + e


def estimate_file(
    path: str | os.PathLike[str], n_ctx: int | None = None, **settings: Any
) -> Estimate:
    """:func:`estimate` for a GGUF path; ``n_ctx`` defaults to the trained context."""
    shape = read_shape(path)
    return estimate(shape, LoadSettings(n_ctx=n_ctx or shape.n_ctx_train or 4096, **settings))


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class QuantOption:
    """A smaller quantization of the same model and how it would fit."""

    file_type: str
    weights_bytes: int
    device_bytes: int  # all layers offloaded at the requested context
    fits: bool


@dataclass(frozen=True)
class Plan:
    """How a model fits in ``memory_bytes`` (a GPU's VRAM, or system RAM when ``device`` is
    ``"RAM"``) with ``margin_bytes`` left free.

    ``n_gpu_layers``: the largest count that fits at the requested context, 0..n_layer+1
    (n_layer+1 = every layer and the output layer, what -1 asks for; ``to_dict`` prints -1
    then); ``context_length``: the largest context (a multiple of 256, >= 2048) at which
    the requested offload fits, ``None`` when none does; ``quantization``: the largest smaller
    quantization that fits entirely at the requested context, when the model does not.
    """

    estimate: Estimate
    device: str  # "GPU" or "RAM"
    memory_bytes: int
    margin_bytes: int
    fits: bool
    n_gpu_layers: int
    needed_bytes: int  # for the requested offload and context
    context_length: int | None
    quantization: QuantOption | None
    candidates: tuple[QuantOption, ...] = ()

    @property
    def budget_bytes(self) -> int:
        return max(0, self.memory_bytes - self.margin_bytes)

    def advice(self) -> str:
        """One paragraph: what the load needs and the concrete values that fit."""
        e = self.estimate
        n_ctx = e.settings.n_ctx
        where = f"{gib(self.memory_bytes)} of {'VRAM' if self.device == 'GPU' else 'free RAM'}"
        budget = f"{gib(self.budget_bytes)} after a {gib(self.margin_bytes)} margin"
        seqs = f" x {e.settings.n_seq} sequences" if e.settings.n_seq > 1 else ""
        head = (
            f"{e.shape.name} ({e.shape.file_type}) at context_length {n_ctx}{seqs} needs "
            f"{gib(self.needed_bytes)}"
            + (" on the GPU with all layers offloaded" if self.device == "GPU" else "")
            + f" (weights {gib(e.weights_bytes)}, KV cache {gib(e.kv_cache_bytes)}, "
            f"compute {gib(e.compute_bytes)})"
        )
        if self.fits:
            return f"{head}: fits in {where} ({budget})."
        options: list[str] = []
        n_all = e.n_layer + 1
        if self.device == "GPU" and 0 < self.n_gpu_layers < n_all:
            options.append(
                f"n_gpu_layers={self.n_gpu_layers} (of {n_all}) at context_length {n_ctx}, "
                "the rest on the CPU"
            )
        if self.context_length is not None:
            what = " with all layers on the GPU" if self.device == "GPU" else ""
            options.append(f"context_length={self.context_length}{what}")
        if self.quantization is not None:
            q = self.quantization
            options.append(
                f"a smaller quantization: {q.file_type} (weights {gib(q.weights_bytes)}, "
                f"{gib(q.device_bytes)} in all at context_length {n_ctx})"
            )
        if not options:
            smallest = self.candidates[-1] if self.candidates else None
            tail = (
                f"; even {smallest.file_type} needs {gib(smallest.device_bytes)}"
                if smallest
                else ""
            )
            return f"{head}: nothing fits in {where} ({budget}){tail}."
        nothing = (
            f"no layer fits at context_length {n_ctx}; "
            if self.n_gpu_layers == 0 and self.device == "GPU"
            else ""
        )
        return (
            f"{head}: does not fit in {where} ({budget}). {nothing}Use "
            + "; or ".join(options)
            + "."
        )

    def to_dict(self) -> dict[str, Any]:
        """The estimate's figures plus the plan: ``n_gpu_layers`` (-1 = all), the bytes on
        the device and in system memory with it, and ``total_bytes`` = their sum (the
        estimate's CPU-only total is ``cpu_only_total_bytes``)."""
        e = self.estimate
        split = e.split(self.n_gpu_layers)
        out = e.to_dict()
        out.update(
            {
                "cpu_only_total_bytes": e.total_bytes,
                "total_bytes": split.device_bytes + split.host_bytes,
                "device": self.device,
                "memory_bytes": self.memory_bytes,
                "margin_bytes": self.margin_bytes,
                "fits": self.fits,
                "needed_bytes": self.needed_bytes,
                "n_gpu_layers": -1 if self.n_gpu_layers == e.n_layer + 1 else self.n_gpu_layers,
                "device_bytes": split.device_bytes if self.device == "GPU" else 0,
                "host_bytes": split.host_bytes,
                "fitting_context_length": self.context_length,
                "quantization_suggestion": (
                    None
                    if self.quantization is None
                    else {
                        "quantization": self.quantization.file_type,
                        "weights_bytes": self.quantization.weights_bytes,
                        "needed_bytes": self.quantization.device_bytes,
                    }
                ),
                "advice": self.advice(),
            }
        )
        return out


def gib(n: int) -> str:
    """A byte count for people: ``9.03 GiB``, ``514.5 MiB``, ``12 KiB``."""
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n / 1024:.0f} KiB"


def _needed(e: Estimate, device: str, n_gpu_layers: int = -1) -> int:
    split = e.split(n_gpu_layers if device == "GPU" else 0)
    return split.device_bytes if device == "GPU" else split.host_bytes


def plan(
    shape: ModelShape,
    settings: LoadSettings,
    memory_bytes: int,
    *,
    device: str = "GPU",
    margin_bytes: int = DEFAULT_MARGIN,
    n_gpu_layers: int = -1,
    min_context: int = MIN_CONTEXT,
) -> Plan:
    """Fit ``shape`` into ``memory_bytes`` of ``device`` ("GPU": offload as many layers as fit;
    "RAM": a CPU-only load). ``n_gpu_layers`` is the requested offload (-1 = all)."""
    if device not in ("GPU", "RAM"):
        raise ValueError(f"device must be 'GPU' or 'RAM', not {device!r}")
    budget = max(0, memory_bytes - margin_bytes)
    e = estimate(shape, settings)
    n_all = shape.n_layer + 1
    wanted = n_all if n_gpu_layers < 0 else min(n_gpu_layers, n_all)
    if device == "RAM":
        wanted = 0
    needed = _needed(e, device, wanted)
    fits = needed <= budget
    best = wanted
    if device == "GPU":
        best = next((k for k in range(wanted, -1, -1) if e.split(k).device_bytes <= budget), 0)
    context: int | None = None
    if not fits:
        context = _largest_context(shape, settings, device, wanted, budget, min_context)
    quant: QuantOption | None = None
    candidates: list[QuantOption] = []
    if not fits:
        for file_type in SUGGESTED:
            smaller = shape.with_quantization(file_type)
            qe = estimate(smaller, settings)
            if qe.weights_bytes >= e.weights_bytes:
                continue
            option = QuantOption(
                file_type=file_type,
                weights_bytes=qe.weights_bytes,
                device_bytes=_needed(qe, device, wanted),
                fits=_needed(qe, device, wanted) <= budget,
            )
            candidates.append(option)
            if option.fits and quant is None:
                quant = option
    return Plan(
        estimate=e,
        device=device,
        memory_bytes=memory_bytes,
        margin_bytes=margin_bytes,
        fits=fits,
        n_gpu_layers=best,
        needed_bytes=needed,
        context_length=context,
        quantization=quant,
        candidates=tuple(candidates),
    )


def _largest_context(
    shape: ModelShape, settings: LoadSettings, device: str, ngl: int, budget: int, minimum: int
) -> int | None:
    def ok(n_ctx: int) -> bool:
        return _needed(estimate(shape, replace(settings, n_ctx=n_ctx)), device, ngl) <= budget

    top = settings.kv_size - CTX_PAD  # below the requested context ...
    if shape.n_ctx_train:  # ... and not beyond what the model was trained for
        top = min(top, shape.n_ctx_train // CTX_PAD * CTX_PAD)
    lo, hi = math.ceil(minimum / CTX_PAD), top // CTX_PAD
    if hi < lo or not ok(lo * CTX_PAD):
        return None
    while lo < hi:  # largest k in [lo, hi] with ok(k * 256)
        mid = (lo + hi + 1) // 2
        if ok(mid * CTX_PAD):
            lo = mid
        else:
            hi = mid - 1
    return lo * CTX_PAD


def sequences_that_fit(
    shape: ModelShape,
    settings: LoadSettings,
    free_bytes: int,
    *,
    device: str = "RAM",
    n_gpu_layers: int = 0,
    most: int = 4,
    share: float = 0.5,
    margin_bytes: int = DEFAULT_MARGIN,
) -> int:
    """How many sequences of ``settings.n_ctx`` cells each (llama.cpp's ``n_seq_max``, KV
    cache not unified: ``n_seq`` streams of cells) a load may decode together: the
    most, up to ``most``, whose extra memory beyond one sequence (KV cache and compute
    buffer on ``device``) stays within ``share`` of ``free_bytes - margin_bytes``, the
    memory still free after the one-sequence load. At least 1."""
    one = _needed(estimate(shape, settings), device, n_gpu_layers)
    budget = max(0, free_bytes - margin_bytes) * share
    best = 1
    for n in range(2, most + 1):
        e = estimate(shape, replace(settings, n_seq=n))
        if _needed(e, device, n_gpu_layers) - one > budget:
            break
        best = n
    return best


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class Request:
    """What a load asks for: the file's shape, the context settings and the offload."""

    shape: ModelShape
    settings: LoadSettings
    n_gpu_layers: int


def request_for(
    model: ModelConfig | str | os.PathLike[str],
    *,
    n_ctx: int | None = None,
    n_seq: int | None = None,
    n_gpu_layers: int | None = None,
    llama_kwargs: dict[str, Any] | None = None,
    context_cap: int | None = None,
) -> Request:
    """The :class:`Request` of a model config (or a GGUF path) as the client would load it:
    ``n_ctx`` defaults to the config's ``context_length``, else the GGUF's trained context
    capped at ``context_cap`` (the client's ``DEFAULT_CONTEXT_CAP``); ``n_seq`` (sequences
    decoded together, each with ``n_ctx`` cells: the KV cache holds ``n_seq`` times as
    many) to the config's ``n_seq_max`` (1 when it is unset: the client sizes it from the
    memory left after the load); ``n_gpu_layers`` to the config's (-1 for a path). Raises
    ``GGUFError``/:class:`FitError` for an unusable file."""
    if isinstance(model, ModelConfig):
        path: Path = model.model_path
        config_ctx = model.context_length
        config_ngl = model.n_gpu_layers
        config_seq = model.n_seq_max or 1
    else:
        path, config_ctx, config_ngl, config_seq = Path(model).expanduser(), None, -1, 1
    shape = read_shape(path)
    cap = context_cap or DEFAULT_CONTEXT_CAP
    ctx = n_ctx or config_ctx or (min(shape.n_ctx_train, cap) if shape.n_ctx_train else cap)
    settings = LoadSettings.from_llama_kwargs(ctx, dict(llama_kwargs or {}))
    settings = replace(settings, n_seq=n_seq or config_seq)
    return Request(shape, settings, config_ngl if n_gpu_layers is None else n_gpu_layers)


def footprint(model: ModelConfig | str | os.PathLike[str]) -> dict[str, Any]:
    """The memory of a config (or a GGUF path) as the client loads it, for ``list`` and
    ``check``: ``context_length``, ``n_gpu_layers``, ``weights_bytes``, ``kv_cache_bytes``,
    ``compute_bytes``, ``device_bytes`` (on the GPU with the config's n_gpu_layers),
    ``host_bytes`` and ``total_bytes`` (their sum). Raises ``GGUFError``/:class:`FitError`."""
    req = request_for(model)
    return {
        "context_length": req.settings.n_ctx,
        "n_gpu_layers": req.n_gpu_layers,
        **request_bytes(req),
    }


def request_bytes(req: Request) -> dict[str, int]:
    """What loading ``req`` allocates, in bytes: ``weights_bytes``, ``kv_cache_bytes``,
    ``compute_bytes``, ``device_bytes`` (the part on the GPU with ``req.n_gpu_layers``),
    ``host_bytes`` and ``total_bytes`` (device + host)."""
    e = estimate(req.shape, req.settings)
    split = e.split(req.n_gpu_layers)
    return {
        "weights_bytes": e.weights_bytes,
        "kv_cache_bytes": e.kv_cache_bytes,
        "compute_bytes": e.compute_bytes,
        "device_bytes": split.device_bytes,
        "host_bytes": split.host_bytes,
        "total_bytes": split.device_bytes + split.host_bytes,
    }


def footprint_text(fp: dict[str, Any]) -> str:
    """``"9.49 GiB (GPU 8.99 GiB)"``: the total, and the GPU part when layers are offloaded."""
    text = gib(fp["total_bytes"])
    if fp["device_bytes"]:
        text += f" (GPU {gib(fp['device_bytes'])})"
    return text


def advice(
    model: ModelConfig | str | os.PathLike[str],
    *,
    n_ctx: int | None = None,
    n_gpu_layers: int | None = None,
    llama_kwargs: dict[str, Any] | None = None,
    memory_bytes: int | None = None,
    device: str | None = None,
) -> str:
    """What a load of ``model`` needs and what to change so that it fits, in one paragraph
    (for "out of memory" errors).

    ``device`` is "GPU" or "RAM" (default: "RAM" when ``n_gpu_layers`` is 0, else "GPU").
    With ``memory_bytes`` (free VRAM, or free RAM) it is :meth:`Plan.advice`; for "RAM" the
    free system memory is read when not given. Without a memory size: the needs and what the
    seed's three remedies (context_length, n_gpu_layers, quantization) would change. Never
    raises: a file that cannot be read gives a sentence saying so."""
    try:
        req = request_for(model, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, llama_kwargs=llama_kwargs)
    except (ValueError, OSError) as exc:  # GGUFError and FitError are ValueErrors
        return f"no memory estimate ({exc})"
    where = device or ("RAM" if req.n_gpu_layers == 0 else "GPU")
    if memory_bytes is None and where == "RAM":
        memory_bytes = host_available_bytes()
    if memory_bytes is not None:
        return plan(
            req.shape,
            req.settings,
            memory_bytes,
            device=where,
            n_gpu_layers=req.n_gpu_layers,
        ).advice()
    e = estimate(req.shape, req.settings)
    n_ctx_now = req.settings.n_ctx
    parts = [
        f"{e.shape.name} ({e.shape.file_type}) at context_length {n_ctx_now} needs about "
        f"{gib(e.total_bytes)} (weights {gib(e.weights_bytes)}, KV cache "
        f"{gib(e.kv_cache_bytes)}, compute {gib(e.compute_bytes)})"
    ]
    remedies: list[str] = []
    smaller_ctx = 4096 if n_ctx_now > 4096 else max(MIN_CONTEXT, _pad(n_ctx_now // 2, CTX_PAD))
    if smaller_ctx < n_ctx_now:
        e2 = estimate(req.shape, replace(req.settings, n_ctx=smaller_ctx))
        remedies.append(f"context_length={smaller_ctx} needs {gib(e2.total_bytes)}")
    if e.layers:
        per_layer = max(layer.weights_bytes + layer.kv_cache_bytes for layer in e.layers)
        remedies.append(
            f"each of the {e.n_layer} layers kept off the GPU (lower n_gpu_layers) moves "
            f"{gib(per_layer)} to system memory"
        )
    for file_type in SUGGESTED if e.weights_bytes * 2 >= e.total_bytes else ():
        smaller = estimate(req.shape.with_quantization(file_type), req.settings)
        if smaller.weights_bytes < e.weights_bytes * 0.9:
            remedies.append(
                f"{file_type} weights {gib(smaller.weights_bytes)} "
                f"(total {gib(smaller.total_bytes)})"
            )
            break
    if remedies:
        parts.append("; ".join(remedies))
    return ". ".join(parts) + " (saiverse-llm fit MODEL --vram SIZE plans it)."


# --------------------------------------------------------------------------- sizes


#: The largest memory size :func:`parse_size` accepts (64 TiB: more than any one machine).
MAX_SIZE = 64 * 1024 * GIB


def parse_size(text: str) -> int:
    """``"8"``, ``"8G"``, ``"8GiB"``, ``"8GB"``, ``"7.5 GiB"``, ``"8192M"`` -> bytes.

    A bare number is GiB. GB/MB are read as GiB/MiB (what GPU vendors print). Raises
    ``ValueError`` naming the value and the accepted forms (also for sizes above
    :data:`MAX_SIZE` and below 1 MiB)."""
    raw = text.strip().upper().replace(" ", "")
    units = {"": GIB, "G": GIB, "GB": GIB, "GIB": GIB, "M": MIB, "MB": MIB, "MIB": MIB}
    number = raw.rstrip("GIMB")
    unit = raw[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{text!r} is not a memory size. Fix: give a number of GiB (8, 7.5, 8GiB) or MiB "
            "(8192M)"
        )
    size = value * units[unit]
    if not MIB <= size <= MAX_SIZE:
        raise ValueError(
            f"{text!r} is {'more' if size > MAX_SIZE else 'less'} memory than any GPU or "
            "machine has. Fix: give the memory in GiB (8, 7.5, 24GiB) or MiB (8192M)"
        )
    return int(size)


def context_warning(shape: ModelShape, n_ctx: int) -> str | None:
    """A sentence when ``n_ctx`` exceeds the model's trained context (llama.cpp loads it,
    warns, and the model degrades past that length unless it was trained with RoPE scaling
    for it); ``None`` otherwise."""
    trained = shape.n_ctx_train
    if not trained or n_ctx <= trained:
        return None
    return (
        f"context_length {n_ctx} is beyond the {trained} tokens {shape.name} was trained "
        f"for: llama.cpp loads it with a warning, and replies degrade past {trained} tokens "
        f"unless the model is made for longer contexts (RoPE scaling); the figures are for "
        f"{n_ctx}"
    )


def _meminfo(*fields: str) -> dict[str, int] | None:
    """The ``fields`` of ``/proc/meminfo`` in bytes (Linux); None when one is missing or the
    file cannot be read (another OS)."""
    found: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                if name in fields:
                    found[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return found if len(found) == len(fields) else None


def available_memory(
    *, swap: bool, cgroup_root: Path | None = None, self_cgroup: Path | None = None
) -> tuple[int, str] | None:
    """(bytes, where the figure comes from) of system memory this process can still get:
    ``MemAvailable`` (plus ``SwapFree`` with ``swap``) from ``/proc/meminfo``, or, when it
    is smaller, the room under the memory limit of the process's cgroup, i.e. its container
    (:func:`saiverse_llm.cgroup_memory.memory_headroom`; with ``swap`` the machine's
    ``SwapFree`` is added to it: a cgroup's own swap limit is not read, so the figure errs
    towards allowing). None when ``/proc/meminfo`` cannot be read (not Linux).
    ``cgroup_root``/``self_cgroup``: see :func:`~saiverse_llm.cgroup_memory.memory_headroom`."""
    info = _meminfo("MemAvailable", "SwapFree")
    if info is None:
        return None
    swap_free = info["SwapFree"] if swap else 0
    plus = " + SwapFree" if swap else ""
    found = (info["MemAvailable"] + swap_free, f"MemAvailable{plus}")
    room = memory_headroom(cgroup_root, self_cgroup)
    if room is not None and room + swap_free < found[0]:
        found = (room + swap_free, f"the room under this container's cgroup memory limit{plus}")
    return found


def host_available_bytes() -> int | None:
    """Free system memory for this process: ``available_memory(swap=False)``'s bytes
    (MemAvailable, or the container's cgroup room when smaller); None: not Linux."""
    found = available_memory(swap=False)
    return None if found is None else found[0]
