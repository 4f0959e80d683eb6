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
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3  # the newest version llama.cpp reads
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
MAX_DIMS = 4  # GGML_MAX_DIMS
GGML_MAX_NAME = 64  # tensor names are shorter (ggml/include/ggml.h)
GGUF_MAX_STRING_LENGTH = 1024 * 1024 * 1024  # ggml/src/gguf.cpp
GGUF_MAX_ARRAY_ELEMENTS = 1024 * 1024 * 1024
_INT64_MAX = 2**63 - 1
_SIZE_MAX = 2**64 - 1
_MAX_STRING_KEPT = 256 * 1024  # longer string values are summarised, not kept
_MAX_ARRAY_KEPT = 64  # arrays up to this length keep their values

#: ggml tensor types: id -> (name, block size in elements, bytes per block).
#: The type traits of the vendored ggml (ggml/src/ggml.c, GGML_TYPE_COUNT = 43); ids missing
#: here (4, 5, 31-33, 36-38) were removed and llama.cpp refuses them too. The differential
#: test checks this table against the build's ggml_blck_size/ggml_type_size.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
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
    42: ("Q2_0", 64, 18),
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
_UINT32, _BOOL, _STRING, _ARRAY = 4, 7, 8, 9

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


def parse_gguf(data: bytes, name: str | os.PathLike[str] = "<memory>") -> GGUFInfo:
    """:func:`read_gguf` on bytes already in memory (a header-only GGUF, a download being
    checked); ``name`` is used in messages. Raises :class:`GGUFError`."""
    path = Path(name)
    if not data:
        raise GGUFError(path, "empty (0 bytes)", _REDOWNLOAD)
    return _parse(path, data, len(data))


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
    """The checks of llama.cpp's ``gguf_init_from_file`` (ggml/src/gguf.cpp), in its order,
    plus the loader's "tensor data is not within the file bounds" check
    (src/llama-model-loader.h): a file passes exactly when llama.cpp would load its tensors.
    ``tests/unit/test_gguf_differential.py`` compares the two on a corpus of broken files."""
    version = r.u32()
    if version == 0 or version & 0xFFFF == 0 or version == 1 or version > GGUF_VERSION:
        if version == 1:
            fix = "GGUF v1 files are no longer read by llama.cpp: re-convert the model"
        elif version > 0xFFFF and version & 0xFFFF == 0:
            fix = "this is a big-endian GGUF: use the little-endian file"
        else:
            fix = "the header is corrupt or the file is from an unknown writer: " + _REDOWNLOAD
        raise GGUFError(
            path,
            f"unsupported GGUF version {version} (supported: "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))})",
            fix,
        )
    # Both counts are int64 in llama.cpp: a value with the top bit set is negative.
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
    metadata, value_types = _read_metadata(path, r, kv_count)

    alignment = DEFAULT_ALIGNMENT
    if ALIGNMENT_KEY in metadata:
        raw = metadata[ALIGNMENT_KEY]
        if value_types[ALIGNMENT_KEY] != _UINT32:
            raise GGUFError(
                path,
                f"{ALIGNMENT_KEY} is stored as {_type_label(value_types[ALIGNMENT_KEY], raw)}; "
                "llama.cpp requires UINT32",
                "re-convert the model (the writer stored the alignment with the wrong type)",
            )
        assert isinstance(raw, int)
        if raw == 0 or raw & (raw - 1):
            raise GGUFError(
                path,
                f"{ALIGNMENT_KEY} is {raw}; it must be a power of two",
                "re-convert the model",
            )
        alignment = raw

    r.section = "tensor table"
    infos: list[tuple[str, tuple[int, ...], int, int]] = []
    seen_names: set[bytes] = set()
    for i in range(tensor_count):
        raw_name = _string(r)
        name = _text(raw_name)
        if len(raw_name) >= GGML_MAX_NAME:
            raise GGUFError(
                path,
                f"tensor #{i} name is {len(raw_name)} bytes; llama.cpp allows at most "
                f"{GGML_MAX_NAME - 1} (GGML_MAX_NAME)",
                "re-convert the model with shorter tensor names",
            )
        if raw_name in seen_names:
            raise GGUFError(path, f"duplicate tensor name {name!r}", "re-convert the model")
        seen_names.add(raw_name)
        n_dims = r.u32()
        if n_dims > MAX_DIMS:
            raise GGUFError(
                path,
                f"tensor #{i} {name!r} has {n_dims} dimensions (at most {MAX_DIMS})",
                "the tensor table is corrupt: " + _REDOWNLOAD,
            )
        dims = tuple(r.u64() for _ in range(n_dims))
        if any(d > _INT64_MAX for d in dims):
            raise GGUFError(
                path,
                f"tensor {name!r} has a negative dimension {tuple(_signed64(d) for d in dims)}",
                "the tensor table is corrupt: " + _REDOWNLOAD,
            )
        if _element_count_overflows(dims):
            raise GGUFError(
                path,
                f"tensor {name!r} shape {dims} has more elements than fit in 64 bits",
                "the tensor table is corrupt: " + _REDOWNLOAD,
            )
        type_id = r.u32()
        if type_id not in GGML_TYPES:
            raise GGUFError(
                path,
                f"tensor {name!r} has unknown ggml type {_signed32(type_id)}",
                "the file is corrupt or needs a newer llama.cpp: update llama-cpp-python or "
                "re-download the file",
            )
        type_name, block, type_size = GGML_TYPES[type_id]
        row = dims[0] if dims else 1
        if row % block:
            raise GGUFError(
                path,
                f"tensor {name!r} ({type_name}) row length {row} is not a multiple of the "
                f"block size {block}",
                "the tensor table is corrupt: " + _REDOWNLOAD,
            )
        elements = math.prod(dims)
        if elements // block > _SIZE_MAX // type_size:
            raise GGUFError(
                path,
                f"tensor {name!r} shape {dims} is larger than 2**64 bytes",
                "the tensor table is corrupt: " + _REDOWNLOAD,
            )
        offset = r.u64()
        infos.append((name, dims, type_id, offset))

    data_offset = r.pos + (-r.pos % alignment)
    if tensor_count and data_offset > size:
        raise GGUFError(
            path,
            f"truncated: tensor data should start at byte {data_offset} but the file has "
            f"{size} bytes",
            _REDOWNLOAD,
        )
    tensors: list[TensorInfo] = []
    expected = 0  # llama.cpp: each tensor starts where the previous one's padded data ends
    for name, dims, type_id, offset in infos:
        type_name, block, type_size = GGML_TYPES[type_id]
        nbytes = math.prod(dims) // block * type_size
        if offset != expected:
            where = "overlaps the tensor before it" if offset < expected else "leaves a gap"
            raise GGUFError(
                path,
                f"tensor {name!r} data offset {offset} {where} (llama.cpp requires {expected}: "
                "tensors are stored one after the other, each padded to the alignment)",
                "the tensor table is corrupt or hand-edited: " + _REDOWNLOAD,
            )
        if nbytes > _SIZE_MAX - (alignment - 1):
            raise GGUFError(path, f"tensor {name!r} is too large to pad", _REDOWNLOAD)
        padded = nbytes + (-nbytes % alignment)
        if _SIZE_MAX - expected < padded:
            raise GGUFError(path, "the tensor data adds up to more than 2**64 bytes", _REDOWNLOAD)
        expected += padded
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
        name=_printable(name_value) if isinstance(name_value, str) else None,
        metadata=metadata,
        tensors=tuple(tensors),
    )


_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
#: Scalar value types read in place (all but STRING and ARRAY): type -> (Struct, width).
_SCALARS = {
    vtype: (struct.Struct(fmt), struct.calcsize(fmt))
    for vtype, (_name, fmt) in _VALUE_TYPES.items()
    if fmt is not None
}


def _printable(text: str) -> str:
    """``text`` with control characters written as escapes (``\\x1b``): a model's
    ``general.name`` is printed by ``fit``/``check``, and a file must not be able to send an
    escape sequence (clear the screen, set the window title) to the user's terminal."""
    if all(unicodedata.category(c) != "Cc" for c in text):
        return text
    return "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) == "Cc" else c
        for c in text
    )


def _read_metadata(
    path: Path, r: _Reader, kv_count: int
) -> tuple[dict[str, MetadataValue], dict[str, int]]:
    """The key/value section: (values, value types) by key. Keys may be any bytes, as in
    llama.cpp (decoded with ``surrogateescape``, so distinct bytes stay distinct keys); an
    empty or repeated key is an error. Numbers are read in place: millions of entries take
    seconds, not minutes."""
    metadata: dict[str, MetadataValue] = {}
    value_types: dict[str, int] = {}
    buf, size = r.buf, r.size
    u64, u32, scalars = _U64.unpack_from, _U32.unpack_from, _SCALARS
    pos = r.pos
    try:
        for i in range(kv_count):
            if pos + 8 > size:
                raise _Truncated("metadata", pos + 8)
            (n,) = u64(buf, pos)
            pos += 8
            if n > GGUF_MAX_STRING_LENGTH or pos + n > size:
                raise _Truncated("metadata", pos + n)
            key = bytes(buf[pos : pos + n]).decode("utf-8", errors="surrogateescape")
            pos += n
            if not key:
                raise GGUFError(path, f"metadata key #{i} is empty", "re-convert the model")
            if key in metadata:
                raise GGUFError(
                    path, f"duplicate metadata key {_shown(key)!r}", "re-convert the model"
                )
            if pos + 4 > size:
                raise _Truncated(f"metadata value {_shown(key)!r}", pos + 4)
            (vtype,) = u32(buf, pos)
            scalar = scalars.get(vtype)
            if scalar is not None:
                reader, width = scalar
                if pos + 4 + width > size:
                    raise _Truncated(f"metadata value {_shown(key)!r}", pos + 4 + width)
                (value,) = reader.unpack_from(buf, pos + 4)
                metadata[key] = bool(value) if vtype == _BOOL else value
                value_types[key] = vtype
                pos += 4 + width
                continue
            r.pos = pos
            r.section = f"metadata value {_shown(key)!r}"
            value_types[key], metadata[key] = _read_value(path, r, _shown(key))
            pos = r.pos
    finally:
        r.pos = pos
        r.section = "metadata"
    return metadata, value_types


def _shown(key: str) -> str:
    """A metadata key for messages (undecodable bytes replaced)."""
    return key.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def _element_count_overflows(dims: tuple[int, ...]) -> bool:
    """llama.cpp's check, as written: the running product from ne[0], each later dimension
    above 1 must keep it within int64 (a zero first dimension never overflows)."""
    ne = (*dims, *(1,) * (MAX_DIMS - len(dims)))
    current = ne[0]
    for d in ne[1:]:
        if d > 1:
            if _INT64_MAX // d < current:
                return True
            current *= d
    return False


def _text(raw: bytes) -> str:
    """Bytes from the file as printable text (invalid UTF-8 replaced)."""
    return raw.decode("utf-8", errors="replace")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value > _INT64_MAX else value


def _signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def _type_label(vtype: int, value: object) -> str:
    name = _VALUE_TYPES[vtype][0]
    return f"ARRAY of {value.item_type}" if isinstance(value, GGUFArray) else name


def _string(r: _Reader) -> bytes:
    """A GGUF string: u64 length (at most GGUF_MAX_STRING_LENGTH, 1 GiB) and its bytes."""
    n = r.u64()
    if n > GGUF_MAX_STRING_LENGTH:
        raise _Truncated(f"{r.section} (a string of {n} bytes, over llama.cpp's 1 GiB)", r.pos + n)
    r.need(n)
    data = bytes(r.buf[r.pos : r.pos + n])
    r.pos += n
    return data


def _read_scalar(path: Path, r: _Reader, vtype: int, key: str) -> Scalar:
    if vtype == _STRING:
        n = r.u64()
        if n > GGUF_MAX_STRING_LENGTH:
            raise _Truncated(f"metadata value {key!r} (a string over 1 GiB)", r.pos + n)
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
    if vtype == _BOOL:
        return bool(value)  # llama.cpp: any non-zero byte is true
    return value


def _value_type(path: Path, r: _Reader, key: str, *, in_array: bool = False) -> int:
    vtype = r.u32()
    if vtype not in _VALUE_TYPES or (in_array and vtype == _ARRAY):
        where = "array item type" if in_array else "value type"
        raise GGUFError(
            path,
            f"metadata {key!r} has unknown {where} {_signed32(vtype)}",
            "the metadata is corrupt: " + _REDOWNLOAD,
        )
    return vtype


def _read_value(path: Path, r: _Reader, key: str) -> tuple[int, MetadataValue]:
    """(value type, value) of one metadata entry; arrays report their item type."""
    vtype = _value_type(path, r, key)
    if vtype != _ARRAY:
        return vtype, _read_scalar(path, r, vtype, key)
    item = _value_type(path, r, key, in_array=True)
    count = r.u64()
    item_name, fmt = _VALUE_TYPES[item]
    if count > GGUF_MAX_ARRAY_ELEMENTS:
        raise _Truncated(
            f"metadata array {key!r} ({count} items, over llama.cpp's 2**30)", r.pos + count
        )
    if fmt is not None:
        width = struct.calcsize(fmt)
        if count > (r.size - r.pos) // width:
            raise _Truncated(
                f"metadata array {key!r} ({count} x {item_name})", r.pos + count * width
            )
        if count <= _MAX_ARRAY_KEPT:
            values = struct.unpack_from(f"<{count}{fmt[1]}", r.buf, r.pos)
            r.pos += count * width
            if item == _BOOL:
                values = tuple(bool(v) for v in values)
            return _ARRAY, GGUFArray(item_name, count, tuple(values))
        r.pos += count * width
        return _ARRAY, GGUFArray(item_name, count)
    # array of strings: each needs at least its 8-byte length
    if count > (r.size - r.pos) // 8:
        raise _Truncated(f"metadata array {key!r} ({count} strings)", r.pos + count * 8)
    if count <= _MAX_ARRAY_KEPT:
        strings = tuple(_read_scalar(path, r, _STRING, key) for _ in range(count))
        return _ARRAY, GGUFArray(item_name, count, strings)
    buf, pos, size = r.buf, r.pos, r.size
    unpack = struct.Struct("<Q").unpack_from
    for _ in range(count):
        if pos + 8 > size:
            raise _Truncated(f"metadata array {key!r}", pos + 8)
        (n,) = unpack(buf, pos)
        if n > GGUF_MAX_STRING_LENGTH:
            raise _Truncated(f"metadata array {key!r} (a string over 1 GiB)", pos + 8 + n)
        pos += 8 + n
        if pos > size:
            raise _Truncated(f"metadata array {key!r}", pos)
    r.pos = pos
    return _ARRAY, GGUFArray(item_name, count)
