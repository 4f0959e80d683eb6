"""saiverse_llm.gguf_file: the pure-Python GGUF check, against real and damaged files."""

from __future__ import annotations

import contextlib
import random
import re
import struct
from pathlib import Path

import pytest

from saiverse_llm.gguf_file import GGML_TYPES, GGUFError, read_gguf


@pytest.fixture(scope="module")
def tiny_bytes(tiny_gguf: Path) -> bytes:
    return tiny_gguf.read_bytes()


def write(tmp_path: Path, data: bytes, name: str = "model.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def tensor_entry_offset(data: bytes, tensor: str) -> int:
    """File offset of the tensor-table entry (name length field) of ``tensor``."""
    name = tensor.encode()
    pos = data.rfind(struct.pack("<Q", len(name)) + name)
    assert pos > 0, tensor
    return pos


def entry_fields(data: bytes, tensor: str) -> tuple[int, int, int]:
    """(offset of the type field, offset of the data-offset field, n_dims) of a tensor entry."""
    pos = tensor_entry_offset(data, tensor) + 8 + len(tensor.encode())
    (n_dims,) = struct.unpack_from("<I", data, pos)
    type_at = pos + 4 + 8 * n_dims
    return type_at, type_at + 4, n_dims


# --------------------------------------------------------------------------- valid files


def test_reads_the_synthesized_model(tiny_gguf: Path) -> None:
    info = read_gguf(tiny_gguf)
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.context_length == 2048
    assert info.block_count == 2
    assert info.name == "synth-tiny-s0"
    assert info.chat_template is not None and "<tool_call>" in info.chat_template
    assert info.tensor_count == len(info.tensors) == 3 + 9 * 2
    assert info.file_size == tiny_gguf.stat().st_size
    # every tensor lies inside the file, aligned, and the last one ends at the end
    assert all(t.start % info.alignment == 0 for t in info.tensors)
    assert max(t.end for t in info.tensors) == info.file_size
    tokens = info.metadata["tokenizer.ggml.tokens"]
    assert repr(tokens) == "GGUFArray(STRING x 669)"
    emb = next(t for t in info.tensors if t.name == "token_embd.weight")
    assert emb.dims == (128, 669) and emb.type_name == "F32" and emb.nbytes == 128 * 669 * 4


def test_reads_gemma_without_chat_template(gemma_gguf: Path) -> None:
    info = read_gguf(gemma_gguf)
    assert info.architecture == "gemma3"
    assert info.context_length == 32768
    assert info.block_count == 18
    assert info.chat_template is None
    assert {t.type_name for t in info.tensors} >= {"Q4_K", "F32"}
    assert max(t.end for t in info.tensors) == info.file_size == 253_113_024


def test_quant_table_matches_gguf_package() -> None:
    gguf = pytest.importorskip("gguf")
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        if qtype.name == "Q8_1":  # gguf-py 0.19 says 40 bytes; ggml's block_q8_1 is 36, and
            continue  # the build is the authority (test_gguf_differential checks against it)
        assert GGML_TYPES[int(qtype)][1:] == (block, size), qtype.name
        assert GGML_TYPES[int(qtype)][0] == qtype.name


# --------------------------------------------------------------------------- bad paths


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="no such file") as err:
        read_gguf(tmp_path / "nope.gguf")
    assert "model_path" in str(err.value) and str(tmp_path / "nope.gguf") in str(err.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="is a directory"):
        read_gguf(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match=r"empty file \(0 bytes\)"):
        read_gguf(write(tmp_path, b""))


def test_broken_symlink(tmp_path: Path) -> None:
    link = tmp_path / "link.gguf"
    link.symlink_to(tmp_path / "gone.gguf")
    with pytest.raises(GGUFError, match="broken symbolic link"):
        read_gguf(link)


# --------------------------------------------------------------------------- garbage


def test_zip_archive(tmp_path: Path) -> None:
    with pytest.raises(GGUFError) as err:
        read_gguf(write(tmp_path, b"PK\x03\x04" + bytes(200)))
    assert "not a GGUF file (magic b'PK\\x03\\x04'" in str(err.value)
    assert "zip archive" in str(err.value)


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (b"<!DOCTYPE html><html>Sign in</html>", "HTML page"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "Git LFS pointer"),
        (b"ggjt" + bytes(64), "legacy GGML"),
        (b"FUGG" + bytes(64), "big-endian"),
        (bytes(range(256)) * 4, "points at a .gguf model file"),
        (b"GG", "only 2 bytes"),
    ],
)
def test_garbage(tmp_path: Path, data: bytes, hint: str) -> None:
    with pytest.raises(GGUFError, match="not a GGUF file") as err:
        read_gguf(write(tmp_path, data))
    assert hint in str(err.value)


# --------------------------------------------------------------------------- damaged headers


@pytest.mark.parametrize(("version", "hint"), [(1, "GGUF v1"), (7, "corrupt"), (0, "corrupt")])
def test_bad_version(tmp_path: Path, tiny_bytes: bytes, version: int, hint: str) -> None:
    data = tiny_bytes[:4] + struct.pack("<I", version) + tiny_bytes[8:]
    with pytest.raises(GGUFError, match=f"unsupported GGUF version {version} ") as err:
        read_gguf(write(tmp_path, data))
    assert hint in str(err.value)


def test_big_endian_version(tmp_path: Path, tiny_bytes: bytes) -> None:
    data = tiny_bytes[:4] + struct.pack(">I", 3) + tiny_bytes[8:]
    with pytest.raises(GGUFError, match="big-endian"):
        read_gguf(write(tmp_path, data))


def test_impossible_counts(tmp_path: Path, tiny_bytes: bytes) -> None:
    data = tiny_bytes[:8] + struct.pack("<Q", 2**40) + tiny_bytes[16:]
    with pytest.raises(GGUFError, match=r"claims 1099511627776 tensors .* impossible"):
        read_gguf(write(tmp_path, data))


def test_truncated_in_metadata(tmp_path: Path, tiny_bytes: bytes) -> None:
    with pytest.raises(GGUFError) as err:
        read_gguf(write(tmp_path, tiny_bytes[:300]))
    message = str(err.value)
    assert "truncated: the metadata" in message and "the file has 300 bytes" in message
    assert "llama-harness models fetch" in message


def test_truncated_in_tensor_data(tmp_path: Path, tiny_bytes: bytes) -> None:
    info = read_gguf(write(tmp_path, tiny_bytes, "full.gguf"))
    cut = len(tiny_bytes) // 2
    # the first tensor whose data no longer fits is the one the message must name
    first_bad = next(t for t in info.tensors if t.end > cut)
    with pytest.raises(GGUFError) as err:
        read_gguf(write(tmp_path, tiny_bytes[:cut]))
    assert str(err.value) == (
        f"{tmp_path / 'model.gguf'}: truncated: header says tensor {first_bad.name!r} ends at "
        f"byte {first_bad.end} but the file has {cut} bytes; re-download it (for a harness test "
        "model: llama-harness models fetch NAME) and compare its sha256 with the source"
    )


def test_last_byte_missing(tmp_path: Path, tiny_bytes: bytes) -> None:
    with pytest.raises(
        GGUFError, match=re.escape("truncated: header says tensor 'blk.1.ffn_down.weight'")
    ):
        read_gguf(write(tmp_path, tiny_bytes[:-1]))


def test_tensor_beyond_eof(tmp_path: Path, tiny_bytes: bytes) -> None:
    info = read_gguf(write(tmp_path, tiny_bytes))
    last = max(info.tensors, key=lambda t: t.end)
    data = tiny_bytes[: last.end - 1]  # the last tensor's final byte is missing
    with pytest.raises(GGUFError) as err:
        read_gguf(write(tmp_path, data))
    assert f"tensor {last.name!r} ends at byte {last.end}" in str(err.value)
    assert f"the file has {len(data)} bytes" in str(err.value)


def test_tensor_offset_past_the_end_is_a_gap(tmp_path: Path, tiny_bytes: bytes) -> None:
    data = bytearray(tiny_bytes)
    _, offset_at, _ = entry_fields(tiny_bytes, "blk.0.attn_q.weight")
    struct.pack_into("<Q", data, offset_at, 2**32)  # aligned, far past the end
    with pytest.raises(GGUFError, match=r"'blk\.0\.attn_q\.weight' data offset 4294967296 leaves"):
        read_gguf(write(tmp_path, bytes(data)))


def test_unknown_tensor_type(tmp_path: Path, tiny_bytes: bytes) -> None:
    data = bytearray(tiny_bytes)
    type_at, _, _ = entry_fields(tiny_bytes, "output.weight")
    struct.pack_into("<I", data, type_at, 99)
    with pytest.raises(
        GGUFError, match=re.escape("tensor 'output.weight' has unknown ggml type 99")
    ):
        read_gguf(write(tmp_path, bytes(data)))


def test_misaligned_tensor_offset(tmp_path: Path, tiny_bytes: bytes) -> None:
    data = bytearray(tiny_bytes)
    _, offset_at, _ = entry_fields(tiny_bytes, "output.weight")
    (offset,) = struct.unpack_from("<Q", data, offset_at)
    struct.pack_into("<Q", data, offset_at, offset + 4)
    with pytest.raises(GGUFError, match=r"data offset \d+ leaves a gap \(llama.cpp requires"):
        read_gguf(write(tmp_path, bytes(data)))


def test_too_many_dimensions(tmp_path: Path, tiny_bytes: bytes) -> None:
    data = bytearray(tiny_bytes)
    pos = tensor_entry_offset(tiny_bytes, "output_norm.weight") + 8 + len("output_norm.weight")
    struct.pack_into("<I", data, pos, 9)
    with pytest.raises(GGUFError, match=r"has 9 dimensions \(at most 4\)"):
        read_gguf(write(tmp_path, bytes(data)))


def test_unknown_metadata_value_type(tmp_path: Path, tiny_bytes: bytes) -> None:
    data = bytearray(tiny_bytes)
    key = b"general.architecture"
    pos = tiny_bytes.find(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    struct.pack_into("<I", data, pos, 42)
    with pytest.raises(
        GGUFError, match=re.escape("metadata 'general.architecture' has unknown value type 42")
    ):
        read_gguf(write(tmp_path, bytes(data)))


def test_every_truncation_is_reported(tmp_path: Path, tiny_bytes: bytes) -> None:
    """Cut the file at many points: always a GGUFError, never a crash or a pass."""
    cuts = sorted({*range(1, 64), *random.Random(0).sample(range(64, len(tiny_bytes)), 60)})
    for cut in cuts:
        with pytest.raises(GGUFError):
            read_gguf(write(tmp_path, tiny_bytes[:cut]))


def test_random_corruption_never_escapes(tmp_path: Path, tiny_bytes: bytes) -> None:
    """Flip bytes in the header and tensor table: the reader either accepts the file or raises
    GGUFError; it never raises anything else (struct.error, IndexError, MemoryError)."""
    info = read_gguf(write(tmp_path, tiny_bytes, "ok.gguf"))
    rng = random.Random(1)
    for _ in range(300):
        data = bytearray(tiny_bytes[: info.data_offset])
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path = write(tmp_path, bytes(data) + tiny_bytes[info.data_offset :])
        with contextlib.suppress(GGUFError):
            read_gguf(path)


def test_a_model_name_cannot_send_escape_sequences_to_the_terminal() -> None:
    """general.name is printed by fit/check: control characters come out as escapes."""
    import struct

    from saiverse_llm.gguf_file import parse_gguf

    def s(x: bytes) -> bytes:
        return struct.pack("<Q", len(x)) + x

    def kv_str(k: bytes, v: bytes) -> bytes:
        return s(k) + struct.pack("<I", 8) + s(v)

    name = "evil\x1b[2J\x1b]0;t\x07 \u30e2\u30c7\u30eb"
    kvs = [kv_str(b"general.architecture", b"llama"), kv_str(b"general.name", name.encode())]
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)
    info = parse_gguf(head + b"\0" * (-len(head) % 32))
    assert info.name == "evil\\x1b[2J\\x1b]0;t\\x07 \u30e2\u30c7\u30eb"
    assert info.metadata["general.name"] == "evil\x1b[2J\x1b]0;t\x07 \u30e2\u30c7\u30eb"
