"""llama.cpp's own answer on a GGUF: does the build's ``gguf_init_from_buffer`` (the same reader
``gguf_init_from_file`` uses) accept it, and does every tensor's data lie inside the bytes
(llama_model_loader's "tensor data is not within the file bounds" check)?

Run as a child process (``python gguf_oracle.py``) so that an abort inside llama.cpp cannot
take the test run down with it. Protocol on stdin/stdout, one request at a time:

* request: 8-byte little-endian length, then that many bytes of GGUF;
* answer: one line, ``ACCEPT`` or ``REJECT`` (or ``TYPES <json>`` for the ``types``
  request: length 0xFFFFFFFFFFFFFFFF), the type table of this ggml build.

The library is the wheel's ``libggml-base`` next to ``llama_cpp`` (imported, never mocked).
"""

from __future__ import annotations

import ctypes
import json
import struct
import sys
from pathlib import Path

GGML_TYPE_COUNT = 43  # ggml/include/ggml.h of the pinned llama.cpp
TYPES_REQUEST = 0xFFFFFFFFFFFFFFFF


class GGUFInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


def load_library() -> ctypes.CDLL:
    import llama_cpp

    folder = Path(llama_cpp.__file__).parent / "lib"
    lib = ctypes.CDLL(str(next(folder.glob("libggml-base.so*"))))
    lib.gguf_init_from_buffer.restype = ctypes.c_void_p
    lib.gguf_init_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_size_t, GGUFInitParams]
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    lib.ggml_free.argtypes = [ctypes.c_void_p]
    lib.gguf_get_n_tensors.restype = ctypes.c_int64
    lib.gguf_get_n_tensors.argtypes = [ctypes.c_void_p]
    lib.gguf_get_data_offset.restype = ctypes.c_size_t
    lib.gguf_get_data_offset.argtypes = [ctypes.c_void_p]
    lib.gguf_get_tensor_offset.restype = ctypes.c_size_t
    lib.gguf_get_tensor_offset.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_tensor_size.restype = ctypes.c_size_t
    lib.gguf_get_tensor_size.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.ggml_blck_size.restype = ctypes.c_int64
    lib.ggml_blck_size.argtypes = [ctypes.c_int]
    lib.ggml_type_size.restype = ctypes.c_size_t
    lib.ggml_type_size.argtypes = [ctypes.c_int]
    return lib


_LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_quiet = _LOG_CALLBACK(lambda level, text, data: None)


def accepts(lib: ctypes.CDLL, data: bytes) -> bool:
    """gguf_init_from_buffer(no_alloc, with a ggml context, as llama_model_loader asks) and the
    loader's per-tensor bounds check."""
    if not data:
        return False  # gguf_init_from_buffer refuses size 0 before reading
    buf = ctypes.create_string_buffer(data, len(data))
    ggml_ctx = ctypes.c_void_p()
    params = GGUFInitParams(no_alloc=True, ctx=ctypes.pointer(ggml_ctx))
    ctx = lib.gguf_init_from_buffer(buf, len(data), params)
    if not ctx:
        return False
    try:
        base = lib.gguf_get_data_offset(ctx)
        for i in range(lib.gguf_get_n_tensors(ctx)):
            start = base + lib.gguf_get_tensor_offset(ctx, i)
            end = start + lib.gguf_get_tensor_size(ctx, i)
            if end < start or end > len(data):
                return False
        return True
    finally:
        lib.gguf_free(ctx)
        if ggml_ctx.value:
            lib.ggml_free(ggml_ctx)


def type_table(lib: ctypes.CDLL) -> dict[int, list[int]]:
    """type id -> [block size, type size] for every id ggml has (block size 0: removed)."""
    return {
        t: [int(lib.ggml_blck_size(t)), int(lib.ggml_type_size(t))] for t in range(GGML_TYPE_COUNT)
    }


def serve() -> None:
    lib = load_library()
    lib.ggml_log_set(_quiet, None)
    stdin, stdout = sys.stdin.buffer, sys.stdout
    while header := stdin.read(8):
        (n,) = struct.unpack("<Q", header)
        if n == TYPES_REQUEST:
            stdout.write("TYPES " + json.dumps(type_table(lib)) + "\n")
        else:
            stdout.write("ACCEPT\n" if accepts(lib, stdin.read(n)) else "REJECT\n")
        stdout.flush()


if __name__ == "__main__":
    serve()
