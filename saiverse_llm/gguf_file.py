"""A pure-Python GGUF header and tensor-table check, run before a file reaches llama.cpp.

llama.cpp's loader can crash or print a cryptic message on a truncated download, an HTML
error page saved as ``.gguf`` or a Git LFS pointer. :func:`read_gguf` reads the header, the
key/value metadata and the tensor table (no tensor data), checks that every count is sane
for the file size and that every tensor's data lies inside the file, and raises
:class:`GGUFError` naming the file, the problem and the fix.

It depends on nothing but the standard library (the client must stay light) and reads the
file through ``mmap`` so even a 262k-token vocabulary is parsed in a fraction of a second.
The format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_STRING_KEPT = 256 * 1024  # longer string values are summarised, not kept
_MAX_ARRAY_KEPT = 64  # arrays up to this length keep their values

#: ggml tensor types: id -> (name, block size in elements, bytes per block).
#: Mirrors gguf-py's ``GGML_QUANT_SIZES`` (gguf 0.19, llama.cpp 2026).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}

# GGUF metadata value types: id -> (name, struct format or None for string/array)
_VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("UINT8", "<B"),
    1: ("INT8", "<b"),
    2: ("UINT16", "<H"),
    3: ("INT16", "<h"),
    4: ("UINT32", "<I"),
    5: ("INT32", "<i"),
    6: ("FLOAT32", "<f"),
    7: ("BOOL", "<?"),
    8: ("STRING", None),
    9: ("ARRAY", None),
    10: ("UINT64", "<Q"),
    11: ("INT64", "<q"),
    12: ("FLOAT64", "<d"),
}
_STRING, _ARRAY = 8, 9

Scalar = int | float | bool | str


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array: its item type and length; ``values`` only for short arrays."""

    item_type: str
    length: int
    values: tuple[Scalar, ...] | None = None

    def __repr__(self) -> str:
        if self.values is not None:
            return f"GGUFArray({self.item_type}, {list(self.values)!r})"
        return f"GGUFArray({self.item_type} x {self.length})"


MetadataValue = Scalar | GGUFArray


@dataclass(frozen=True)
class TensorInfo:
    """One tensor-table entry. ``dims`` are in ggml order (fastest-varying first);
    ``offset`` is relative to the data section, ``start``/``end`` are absolute file offsets."""

    name: str
    dims: tuple[int, ...]
    type_id: int
    type_name: str
    offset: int
    nbytes: int
    start: int
    end: int


@dataclass(frozen=True)
class GGUFInfo:
    """What :func:`read_gguf` found in a valid file."""

    path: Path
    version: int
    file_size: int
    tensor_count: int
    kv_count: int
    alignment: int
    data_offset: int
    architecture: str | None
    context_length: int | None
    block_count: int | None
    chat_template: str | None
    name: str | None
    metadata: dict[str, MetadataValue] = field(repr=False)
    tensors: tuple[TensorInfo, ...] = field(repr=False)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def get(self, key: str) -> MetadataValue | None:
        return self.metadata.get(key)


class GGUFError(ValueError):
    """A file is missing or is not a valid, complete GGUF model.

    ``str(err)`` is ``"<path>: <problem>; <fix>"``; the parts are in ``.path``, ``.problem``
    and ``.fix``.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}; {fix}")


_REDOWNLOAD = (
    "re-download it (for a harness test model: llama-harness models fetch NAME) "
    "and compare its sha256 with the source"
)

_KNOWN_MAGICS: tuple[tuple[bytes, str], ...] = (
    (
        b"PK\x03\x04",
        "this is a zip archive (a PyTorch/safetensors checkpoint?): convert it "
        "with llama.cpp's convert_hf_to_gguf.py",
    ),
    (b"ggjt", "this is a legacy GGML (ggjt) model: re-convert it to GGUF"),
    (b"ggmf", "this is a legacy GGML (ggmf) model: re-convert it to GGUF"),
    (b"lmgg", "this is a legacy GGML model: re-convert it to GGUF"),
    (
        b"vers",
        "this looks like a Git LFS pointer, not the model: run `git lfs pull` or "
        "download the file itself",
    ),
    (
        b"<!DO",
        "this is an HTML page (a failed download: login, error or redirect page): "
        "download the file again",
    ),
    (b"<htm", "this is an HTML page (a failed download): download the file again"),
    (b'{"er', "this is a JSON error response (a failed download): download the file again"),
    (
        b"FUGG",
        "this is a big-endian GGUF, which this llama.cpp build cannot read: use the "
        "little-endian file",
    ),
)


class _Truncated(Exception):
    def __init__(self, where: str, need: int) -> None:
        self.where = where
        self.need = need


class _Reader:
    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.section = "header"

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated(self.section, self.pos + n)

    def unpack(self, fmt: str, n: int) -> int | float | bool:
        self.need(n)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value  # type: ignore[no-any-return]

    def u32(self) -> int:
        return int(self.unpack("<I", 4))

    def u64(self) -> int:
        return int(self.unpack("<Q", 8))

    def string_bytes(self) -> bytes:
        n = self.u64()
        self.need(n)
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return data

    def skip_string(self) -> int:
        n = self.u64()
        self.need(n)
        self.pos += n
        return n


def _check_path(path: Path) -> int:
    if not path.exists():
        if path.is_symlink():
            raise GGUFError(
                path, "broken symbolic link", "re-create the link or point model_path at the file"
            )
        raise GGUFError(
            path,
            "no such file",
            "check model_path in the model config (after ~ and $VAR expansion), or fetch it "
            "(llama-harness models fetch NAME)",
        )
    if path.is_dir():
        raise GGUFError(
            path, "is a directory, not a GGUF file", "point model_path at the .gguf file inside"
        )
    if not path.is_file():
        raise GGUFError(path, "is not a regular file", "point model_path at a .gguf file")
    size = path.stat().st_size
    if size == 0:
        raise GGUFError(
            path, "empty file (0 bytes)", f"the copy or download never finished: {_REDOWNLOAD}"
        )
    return size


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Check and describe a GGUF file; raise :class:`GGUFError` when it is not usable."""
    p = Path(path).expanduser()
    size = _check_path(p)
    try:
        with open(p, "rb") as fh:
            if size < 4:
                head = fh.read()
                return _parse(p, head, size)  # raises: too short for anything
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(p, buf, size)
    except PermissionError as exc:
        raise GGUFError(p, f"cannot be read ({exc.strerror})", "fix the file permissions") from exc
    except OSError as exc:
        if isinstance(exc, GGUFError):  # pragma: no cover - GGUFError is a ValueError
            raise
        raise GGUFError(p, f"cannot be read ({exc})", "check the disk and the path") from exc


def _parse(path: Path, buf: mmap.mmap | bytes, size: int) -> GGUFInfo:
    magic = bytes(buf[:4])
    if magic != GGUF_MAGIC:
        hint = next((h for m, h in _KNOWN_MAGICS if magic == m), None)
        if hint is None and len(magic) < 4:
            hint = f"the file has only {size} bytes: {_REDOWNLOAD}"
        raise GGUFError(
            path,
            f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})",
            hint or "check that model_path points at a .gguf model file",
        )
    r = _Reader(buf, size)
    r.pos = 4
    try:
        return _parse_body(path, r, size)
    except _Truncated as t:
        raise GGUFError(
            path,
            f"truncated: the {t.where} needs {t.need} bytes but the file has {size} bytes",
            _REDOWNLOAD,
        ) from None


def _parse_body(path: Path, r: _Reader, size: int) -> GGUFInfo:
    version = r.u32()
    if version not in SUPPORTED_VERSIONS:
        if version == 1:
            fix = "GGUF v1 files are no longer read by llama.cpp: re-convert the model"
        elif version > 0xFFFF and struct.unpack("<I", struct.pack(">I", version))[0] in (2, 3):
            fix = "this is a big-endian GGUF: use the little-endian file"
        else:
            fix = "the header is corrupt or the file is from an unknown writer: " + _REDOWNLOAD
        raise GGUFError(
            path,
            f"unsupported GGUF version {version} (supported: "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))})",
            fix,
        )
    tensor_count = r.u64()
    kv_count = r.u64()
    # Each KV needs at least 13 bytes and each tensor entry 25: counts above the file size
    # cannot come from a truncated file, only from a corrupt header. (Smaller excesses are
    # reported as truncation when the reader runs out of bytes.)
    if kv_count > size or tensor_count > size:
        raise GGUFError(
            path,
            f"header claims {tensor_count} tensors and {kv_count} metadata entries, impossible "
            f"in a {size}-byte file",
            "the header is corrupt: " + _REDOWNLOAD,
        )

    r.section = "metadata"
    metadata: dict[str, MetadataValue] = {}
    for i in range(kv_count):
        key_bytes = r.string_bytes()
        try:
            key = key_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(
                path, f"metadata key #{i} is not UTF-8 ({key_bytes[:40]!r})", _REDOWNLOAD
            ) from None
        if key in metadata:
            raise GGUFError(path, f"duplicate metadata key {key!r}", "re-convert the model")
        r.section = f"metadata value {key!r}"
        metadata[key] = _read_value(path, r, key)
        r.section = "metadata"

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        raw = metadata["general.alignment"]
        if not isinstance(raw, int) or isinstance(raw, bool) or raw <= 0 or raw & (raw - 1):
            raise GGUFError(
                path,
                f"general.alignment is {raw!r}; it must be a power of two",
                "re-convert the model",
            )
        alignment = raw

    r.section = "tensor table"
    infos: list[tuple[str, tuple[int, ...], int, int]] = []
    seen: set[str] = set()
    for i in range(tensor_count):
        raw_name = r.string_bytes()
        name = raw_name.decode("utf-8", errors="replace")
        if name in seen:
            raise GGUFError(path, f"duplicate tensor name {name!r}", "re-convert the model")
        seen.add(name)
        n_dims = r.u32()
        if n_dims < 1 or n_dims > MAX_DIMS:
            raise GGUFError(
                path,
                f"tensor #{i} {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)",
                "the tensor table is corrupt: " + _REDOWNLOAD,
            )
        dims = tuple(r.u64() for _ in range(n_dims))
        type_id = r.u32()
        offset = r.u64()
        infos.append((name, dims, type_id, offset))

    data_offset = r.pos + (-r.pos % alignment)
    tensors: list[TensorInfo] = []
    for name, dims, type_id, offset in infos:
        if type_id not in GGML_TYPES:
            raise GGUFError(
                path,
                f"tensor {name!r} has unknown ggml type {type_id}",
                "the file is corrupt or needs a newer llama.cpp: update llama-cpp-python or "
                "re-download the file",
            )
        type_name, block, type_size = GGML_TYPES[type_id]
        if any(d <= 0 for d in dims):
            raise GGUFError(
                path, f"tensor {name!r} has a zero or negative dimension {dims}", _REDOWNLOAD
            )
        if dims[0] % block:
            raise GGUFError(
                path,
                f"tensor {name!r} ({type_name}) row length {dims[0]} is not a multiple of the "
                f"block size {block}",
                "the tensor table is corrupt: " + _REDOWNLOAD,
            )
        if offset % alignment:
            raise GGUFError(
                path,
                f"tensor {name!r} data offset {offset} is not aligned to {alignment} bytes",
                "the tensor table is corrupt: " + _REDOWNLOAD,
            )
        nbytes = math.prod(dims) // block * type_size
        start = data_offset + offset
        end = start + nbytes
        if end > size:
            raise GGUFError(
                path,
                f"truncated: header says tensor {name!r} ends at byte {end} but the file has "
                f"{size} bytes",
                _REDOWNLOAD,
            )
        tensors.append(
            TensorInfo(
                name=name,
                dims=dims,
                type_id=type_id,
                type_name=type_name,
                offset=offset,
                nbytes=nbytes,
                start=start,
                end=end,
            )
        )
    if tensor_count and data_offset > size:
        raise GGUFError(
            path,
            f"truncated: tensor data should start at byte {data_offset} but the file has "
            f"{size} bytes",
            _REDOWNLOAD,
        )

    arch = metadata.get("general.architecture")
    architecture = arch if isinstance(arch, str) else None

    def arch_int(suffix: str) -> int | None:
        if architecture is None:
            return None
        value = metadata.get(f"{architecture}.{suffix}")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    template = metadata.get("tokenizer.chat_template")
    name_value = metadata.get("general.name")
    return GGUFInfo(
        path=path,
        version=version,
        file_size=size,
        tensor_count=tensor_count,
        kv_count=kv_count,
        alignment=alignment,
        data_offset=data_offset,
        architecture=architecture,
        context_length=arch_int("context_length"),
        block_count=arch_int("block_count"),
        chat_template=template if isinstance(template, str) else None,
        name=name_value if isinstance(name_value, str) else None,
        metadata=metadata,
        tensors=tuple(tensors),
    )


def _read_scalar(path: Path, r: _Reader, vtype: int, key: str) -> Scalar:
    if vtype == _STRING:
        n = r.u64()
        r.need(n)
        if n > _MAX_STRING_KEPT:
            r.pos += n
            return f"<string of {n} bytes>"
        raw = bytes(r.buf[r.pos : r.pos + n])
        r.pos += n
        return raw.decode("utf-8", errors="replace")
    _, fmt = _VALUE_TYPES[vtype]
    assert fmt is not None
    value = r.unpack(fmt, struct.calcsize(fmt))
    if vtype == 7 and value not in (0, 1, True, False):  # pragma: no cover - struct gives bool
        raise GGUFError(path, f"metadata {key!r} has a bad BOOL value", _REDOWNLOAD)
    return value


def _value_type(path: Path, r: _Reader, key: str, *, in_array: bool = False) -> int:
    vtype = r.u32()
    if vtype not in _VALUE_TYPES:
        where = "array item type" if in_array else "value type"
        raise GGUFError(
            path,
            f"metadata {key!r} has unknown {where} {vtype}",
            "the metadata is corrupt: " + _REDOWNLOAD,
        )
    return vtype


def _read_value(path: Path, r: _Reader, key: str) -> MetadataValue:
    vtype = _value_type(path, r, key)
    if vtype != _ARRAY:
        return _read_scalar(path, r, vtype, key)
    item = _value_type(path, r, key, in_array=True)
    count = r.u64()
    item_name, fmt = _VALUE_TYPES[item]
    if item == _ARRAY:
        raise GGUFError(path, f"metadata {key!r} is a nested array", "re-convert the model")
    if fmt is not None:
        width = struct.calcsize(fmt)
        if count > (r.size - r.pos) // width:
            raise _Truncated(
                f"metadata array {key!r} ({count} x {item_name})", r.pos + count * width
            )
        if count <= _MAX_ARRAY_KEPT:
            values = struct.unpack_from(f"<{count}{fmt[1]}", r.buf, r.pos)
            r.pos += count * width
            return GGUFArray(item_name, count, tuple(values))
        r.pos += count * width
        return GGUFArray(item_name, count)
    # array of strings: each needs at least its 8-byte length
    if count > (r.size - r.pos) // 8:
        raise _Truncated(f"metadata array {key!r} ({count} strings)", r.pos + count * 8)
    if count <= _MAX_ARRAY_KEPT:
        strings = tuple(_read_scalar(path, r, _STRING, key) for _ in range(count))
        return GGUFArray(item_name, count, strings)
    buf, pos, size = r.buf, r.pos, r.size
    unpack = struct.Struct("<Q").unpack_from
    for _ in range(count):
        if pos + 8 > size:
            raise _Truncated(f"metadata array {key!r}", pos + 8)
        (n,) = unpack(buf, pos)
        pos += 8 + n
        if pos > size:
            raise _Truncated(f"metadata array {key!r}", pos)
    r.pos = pos
    return GGUFArray(item_name, count)
