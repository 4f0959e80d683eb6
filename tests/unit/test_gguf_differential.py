"""read_gguf accepts a file exactly when llama.cpp does (the build's own GGUF reader).

The oracle is the installed llama_cpp wheel's ``libggml-base`` (``gguf_init_from_buffer``, the
reader behind ``gguf_init_from_file``, plus llama_model_loader's tensor bounds check), run in a
child process (tests/unit/gguf_oracle.py) so a crash in C cannot take pytest down. The corpus:
hand-made files for every rule of ggml/src/gguf.cpp (overlapping and gapped tensor offsets,
names of 63/64/200 bytes, an empty key, ``general.alignment`` as UINT64, removed tensor types,
zero and negative dimensions, ...), then seeded structural mutations and byte-level fuzzing
(flips, 64-bit specials, truncation) of a small synthesized model. Where the two disagree,
read_gguf is the one to fix.

Skipped, with the reason, where llama_cpp is not installed. Size of the fuzz run:
``$LLAMA_HARNESS_GGUF_FUZZ`` cases (default 5000: a few seconds; CI runs the default).
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from saiverse_llm.gguf_file import GGML_TYPES, GGUFError, parse_gguf, read_gguf

pytest.importorskip("llama_cpp", reason="the differential test needs a llama_cpp build")

ORACLE = Path(__file__).with_name("gguf_oracle.py")
FUZZ_CASES = int(os.environ.get("LLAMA_HARNESS_GGUF_FUZZ", "5000"))


class Oracle:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ORACLE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=False,
        )

    def _ask(self, header: bytes, data: bytes = b"") -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(header + data)
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().decode()
        if not line:
            raise AssertionError(f"llama.cpp's GGUF reader crashed (exit {self.proc.wait()})")
        return line.strip()

    def accepts(self, data: bytes) -> bool:
        return self._ask(struct.pack("<Q", len(data)), data) == "ACCEPT"

    def types(self) -> dict[int, list[int]]:
        answer = self._ask(struct.pack("<Q", 0xFFFFFFFFFFFFFFFF))
        return {int(k): v for k, v in json.loads(answer.removeprefix("TYPES ")).items()}

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def oracle() -> Iterator[Oracle]:
    o = Oracle()
    yield o
    o.close()


def ours(data: bytes) -> tuple[bool, str]:
    """(accepted, why) from read_gguf's logic; any exception but GGUFError fails the test."""
    try:
        parse_gguf(data, "case.gguf")
    except GGUFError as exc:
        return False, exc.problem
    return True, ""


# --------------------------------------------------------------------------- file builder


def s(x: bytes) -> bytes:
    return struct.pack("<Q", len(x)) + x


def kv(key: bytes, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def kv_str(key: bytes, value: bytes) -> bytes:
    return kv(key, 8, s(value))


def kv_u32(key: bytes, value: int) -> bytes:
    return kv(key, 4, struct.pack("<I", value))


def tensor(name: bytes, dims: list[int], typ: int, offset: int) -> bytes:
    packed = b"".join(struct.pack("<Q", d & 0xFFFFFFFFFFFFFFFF) for d in dims)
    return s(name) + struct.pack("<I", len(dims)) + packed + struct.pack("<iQ", typ, offset)


def gguf(
    kvs: list[bytes],
    tensors: list[bytes],
    data_len: int,
    *,
    align: int = 32,
    version: int = 3,
    n_tensors: int | None = None,
) -> bytes:
    count = len(tensors) if n_tensors is None else n_tensors
    head = b"GGUF" + struct.pack("<IQQ", version, count, len(kvs)) + b"".join(kvs)
    head += b"".join(tensors)
    head += b"\0" * (-len(head) % align)
    return head + b"\0" * data_len


ARCH = [kv_str(b"general.architecture", b"llama")]
F32_32 = [32]  # one f32 row of 32 elements: 128 bytes


def crafted() -> dict[str, bytes]:
    t = tensor
    cases = {
        "valid": gguf(ARCH, [t(b"a", F32_32, 0, 0), t(b"b", F32_32, 0, 128)], 256),
        "overlap": gguf(ARCH, [t(b"a", F32_32, 0, 0), t(b"b", F32_32, 0, 0)], 256),
        "gap": gguf(ARCH, [t(b"a", F32_32, 0, 0), t(b"b", F32_32, 0, 1024)], 2048),
        "out-of-order": gguf(ARCH, [t(b"a", F32_32, 0, 128), t(b"b", F32_32, 0, 0)], 256),
        "misaligned": gguf(ARCH, [t(b"a", [8], 0, 0), t(b"b", [8], 0, 32)], 256),
        "padded-next": gguf(ARCH, [t(b"a", [8], 0, 0), t(b"b", [8], 0, 32)], 64),
        "name-63": gguf(ARCH, [t(b"x" * 63, F32_32, 0, 0)], 128),
        "name-64": gguf(ARCH, [t(b"x" * 64, F32_32, 0, 0)], 128),
        "name-200": gguf(ARCH, [t(b"x" * 200, F32_32, 0, 0)], 128),
        "name-empty": gguf(ARCH, [t(b"", F32_32, 0, 0)], 128),
        "name-not-utf8": gguf(ARCH, [t(b"\xff\xfe", F32_32, 0, 0)], 128),
        "names-dup": gguf(ARCH, [t(b"a", F32_32, 0, 0), t(b"a", F32_32, 0, 128)], 256),
        "key-empty": gguf([*ARCH, kv_str(b"", b"v")], [t(b"a", F32_32, 0, 0)], 128),
        "key-not-utf8": gguf([*ARCH, kv_str(b"\xff\xfe", b"v")], [t(b"a", F32_32, 0, 0)], 128),
        "key-dup": gguf([*ARCH, *ARCH], [], 0),
        "align-u32-64": gguf(
            [*ARCH, kv_u32(b"general.alignment", 64)], [t(b"a", [16], 0, 0)], 64, align=64
        ),
        "align-u64": gguf(
            [*ARCH, kv(b"general.alignment", 10, struct.pack("<Q", 32))],
            [t(b"a", F32_32, 0, 0)],
            128,
        ),
        "align-i32": gguf(
            [*ARCH, kv(b"general.alignment", 5, struct.pack("<i", 32))],
            [t(b"a", F32_32, 0, 0)],
            128,
        ),
        "align-array": gguf(
            [*ARCH, kv(b"general.alignment", 9, struct.pack("<IQI", 4, 1, 32))],
            [t(b"a", F32_32, 0, 0)],
            128,
        ),
        "align-0": gguf([*ARCH, kv_u32(b"general.alignment", 0)], [], 0),
        "align-48": gguf([*ARCH, kv_u32(b"general.alignment", 48)], [], 0),
        "dims-0": gguf(ARCH, [t(b"scalar", [], 0, 0)], 32),
        "dims-5": gguf(ARCH, [t(b"a", [1, 1, 1, 1, 32], 0, 0)], 128),
        "dim-zero": gguf(ARCH, [t(b"a", [32, 0], 0, 0), t(b"b", F32_32, 0, 0)], 128),
        "dim-negative": gguf(ARCH, [t(b"a", [32, -1], 0, 0)], 128),
        "dim-zero-first-huge-rest": gguf(ARCH, [t(b"a", [0, 2**62, 8], 0, 0)], 0),
        "dims-overflow": gguf(ARCH, [t(b"a", [2**32, 2**32], 0, 0)], 128),
        "bytes-overflow": gguf(ARCH, [t(b"a", [2**31, 2**31, 2], 0, 0)], 128),
        "q8-row-not-block": gguf(ARCH, [t(b"a", [33], 8, 0)], 64),
        "q8-row-block": gguf(ARCH, [t(b"a", [32], 8, 0)], 64),
        "q2_0": gguf(ARCH, [t(b"a", [64], 42, 0)], 32),
        "type-43": gguf(ARCH, [t(b"a", F32_32, 43, 0)], 128),
        "type-negative": gguf(ARCH, [t(b"a", F32_32, -1, 0)], 128),
        "tensor-last-unpadded": gguf(ARCH, [t(b"a", [8], 0, 0)], 32)[: -32 + 32 - 0][: -0 or None],
        "tensor-last-1-short": gguf(ARCH, [t(b"a", [8], 0, 0)], 32)[: -32 + 31],
        "no-tensors-no-data": gguf(ARCH, [], 0),
        "no-tensors-unaligned-end": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + ARCH[0],
        "data-start-past-end": (b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + ARCH[0])
        + tensor(b"a", [0], 0, 0),
        "version-1": gguf(ARCH, [], 0, version=1),
        "version-2": gguf(ARCH, [], 0, version=2),
        "version-4": gguf(ARCH, [], 0, version=4),
        "big-endian": gguf(ARCH, [], 0, version=3 << 24),
        "bool-2": gguf([*ARCH, kv(b"general.flag", 7, b"\x02")], [], 0),
        "value-type-13": gguf([*ARCH, kv(b"k", 13, b"")], [], 0),
        "array-of-arrays": gguf([*ARCH, kv(b"k", 9, struct.pack("<IQ", 9, 0))], [], 0),
        "array-empty": gguf([*ARCH, kv(b"k", 9, struct.pack("<IQ", 4, 0))], [], 0),
        "array-2**30+1": gguf([*ARCH, kv(b"k", 9, struct.pack("<IQ", 0, 2**30 + 1))], [], 0),
        "string-huge": gguf([*ARCH, kv(b"k", 8, struct.pack("<Q", 2**40))], [], 0),
        "n-tensors-negative": gguf(ARCH, [], 0, n_tensors=2**63),
        "empty": b"",
        "magic-only": b"GGUF",
        "not-gguf": b"GGML" + b"\0" * 60,
    }
    for removed in (4, 5, 31, 32, 33, 36, 37, 38):
        cases[f"type-{removed}-removed"] = gguf(ARCH, [t(b"a", [256], removed, 0)], 4096)
    return cases


def test_hand_made_cases_agree_with_llama_cpp(oracle: Oracle) -> None:
    mismatches = []
    for name, data in crafted().items():
        theirs = oracle.accepts(data)
        mine, why = ours(data)
        if mine != theirs:
            mismatches.append(f"{name}: llama.cpp {'accepts' if theirs else 'rejects'}, "
                              f"read_gguf {'accepts' if mine else 'rejects: ' + why}")  # fmt: skip
    assert mismatches == []


def test_the_review_cases_are_refused() -> None:
    for name in ("overlap", "gap", "name-64", "name-200", "key-empty", "align-u64"):
        accepted, why = ours(crafted()[name])
        assert not accepted, f"{name} accepted"
        assert why


def test_type_table_matches_the_build(oracle: Oracle) -> None:
    for type_id, (block, size) in oracle.types().items():
        if block == 0:
            assert type_id not in GGML_TYPES, f"ggml removed type {type_id}"
        else:
            assert GGML_TYPES.get(type_id, (None, block, size))[1:] == (block, size), type_id
            assert type_id in GGML_TYPES, f"ggml type {type_id} missing from GGML_TYPES"


# --------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from harness.models.synth import synthesize

    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    synthesize(path, preset="tiny", seed=1, n_embd=32, n_layer=1, n_ff=64, n_head=2,
               n_head_kv=1, dtype="q8_0")  # fmt: skip
    data = path.read_bytes()
    read_gguf(path)  # valid to start with
    return data


def field_positions(data: bytes) -> list[tuple[str, int, int]]:
    """(kind, offset, width) of the header's structural fields, for targeted mutations."""
    fields: list[tuple[str, int, int]] = [("version", 4, 4), ("count", 8, 8), ("count", 16, 8)]
    pos = 24
    (n_tensors, n_kv) = struct.unpack_from("<QQ", data, 8)

    def skip_string(kind: str) -> None:
        nonlocal pos
        fields.append((kind, pos, 8))
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n

    for _ in range(n_kv):
        skip_string("key-length")
        fields.append(("value-type", pos, 4))
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if vtype == 9:
            fields.append(("item-type", pos, 4))
            (item,) = struct.unpack_from("<I", data, pos)
            fields.append(("array-count", pos + 4, 8))
            (count,) = struct.unpack_from("<Q", data, pos + 4)
            pos += 12
            if item == 8:
                for _ in range(count):
                    skip_string("string-length")
            else:
                pos += count * [1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8][item]
        elif vtype == 8:
            skip_string("string-length")
        else:
            fields.append(("scalar", pos, 0))
            pos += [1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8][vtype]
    for _ in range(n_tensors):
        skip_string("name-length")
        fields.append(("n-dims", pos, 4))
        (n_dims,) = struct.unpack_from("<I", data, pos)
        pos += 4
        for _ in range(n_dims):
            fields.append(("dim", pos, 8))
            pos += 8
        fields.append(("type", pos, 4))
        fields.append(("offset", pos + 4, 8))
        pos += 12
    return fields


SPECIALS_64 = [0, 1, 2, 31, 32, 33, 63, 64, 2**30 + 1, 2**31, 2**32, 2**63, 2**64 - 1]
SPECIALS_32 = [0, 1, 2, 3, 4, 5, 8, 9, 10, 12, 13, 30, 31, 36, 39, 42, 43, 2**31, 2**32 - 1]


def mutate(data: bytes, fields: list[tuple[str, int, int]], rng: random.Random) -> bytes:
    header_end = max(off + width for _, off, width in fields)
    b = bytearray(data)
    kind = rng.choice(["field", "field", "flip", "u64", "trunc", "offset-swap"])
    if kind == "trunc":
        return bytes(b[: rng.randrange(0, len(b) + 1)])
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(4, header_end)] = rng.randrange(256)
        return bytes(b)
    if kind == "u64":
        p = rng.randrange(4, header_end - 8)
        b[p : p + 8] = rng.choice(SPECIALS_64).to_bytes(8, "little")
        return bytes(b)
    offsets = [off for k, off, _ in fields if k == "offset"]
    if kind == "offset-swap" and len(offsets) > 1:
        a, c = rng.sample(offsets, 2)
        b[a : a + 8], b[c : c + 8] = b[c : c + 8], b[a : a + 8]
        return bytes(b)
    for _ in range(rng.randint(1, 2)):
        _k, off, width = rng.choice([f for f in fields if f[2]])
        if width == 8:
            old = int.from_bytes(b[off : off + 8], "little")
            value = rng.choice([*SPECIALS_64, old + 32, max(old - 32, 0), old + 1, old * 2])
            b[off : off + 8] = (value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
        else:
            b[off : off + 4] = rng.choice(SPECIALS_32).to_bytes(4, "little")
    return bytes(b)


def test_fuzzed_files_agree_with_llama_cpp(oracle: Oracle, base: bytes) -> None:
    fields = field_positions(base)
    rng = random.Random(20261129)
    mismatches: list[str] = []
    accepted = 0
    started = time.monotonic()
    for i in range(FUZZ_CASES):
        data = mutate(base, fields, rng)
        theirs = oracle.accepts(data)
        mine, why = ours(data)  # any exception but GGUFError fails here
        accepted += mine
        if mine != theirs and len(mismatches) < 10:
            path = Path(os.environ.get("PYTEST_TMP", "/tmp")) / f"gguf-mismatch-{i}.gguf"
            path.write_bytes(data)
            mismatches.append(
                f"case {i} ({path}): llama.cpp {'accepts' if theirs else 'rejects'}, "
                f"read_gguf {'accepts' if mine else 'rejects: ' + why}"
            )
    seconds = time.monotonic() - started
    print(f"{FUZZ_CASES} fuzzed files, {accepted} accepted by both, {seconds:.1f} s")
    assert mismatches == []
    assert 0 < accepted < FUZZ_CASES  # the corpus has both kinds, or it proves nothing


def test_read_gguf_on_files_and_the_base_agree(oracle: Oracle, base: bytes, tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    for name, data in list(crafted().items())[:20]:
        if not data:
            continue
        path.write_bytes(data)
        try:
            read_gguf(path)
            from_file = True
        except GGUFError:
            from_file = False
        assert from_file == ours(data)[0] == oracle.accepts(data), name
    assert oracle.accepts(base) and ours(base)[0]
