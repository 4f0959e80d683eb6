"""Next-token logits of one build, for ``llama-harness agree`` (runs in the variant's venv).

Standard library + numpy + llama_cpp only: :func:`harness.bench.agree.child_command` runs this file
by path in the interpreter of the build under test, so it never imports the project.

Chunks like llama.cpp's ``llama-perplexity --kl-divergence``: the token stream is cut into
chunks of ``n_ctx`` tokens, the first token of each chunk is replaced by BOS when the model
adds one, each chunk is evaluated from an empty KV cache in one batch, and the logits of
positions ``n_ctx/2 .. n_ctx-2`` (each predicting the next token, with at least n_ctx/2
tokens of context) are kept.

Writes ``OUT/logits.npy`` (float32, shape ``[chunks * (n_ctx - 1 - n_ctx/2), n_vocab]``) and
``OUT/meta.json`` (targets, token count, vocab size, timings, llama.cpp's system info and the
offload line of the load log). ``--noise SIGMA`` adds seeded Gaussian noise to the logits
(a self-test: a run with noise must fail the comparison).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_OFFLOAD_RE = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


@contextlib.contextmanager
def _capture_fd2() -> Iterator[list[str]]:
    """What the C library writes to fd 2 (its load log), as lines."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def run(args: argparse.Namespace) -> dict[str, Any]:
    import llama_cpp
    import numpy as np

    text = Path(args.text).read_text(encoding="utf-8")
    start = time.perf_counter()
    with _capture_fd2() as log:
        llm: Any = llama_cpp.Llama(
            model_path=args.model, n_ctx=args.n_ctx, n_batch=args.n_ctx, n_ubatch=args.n_ctx,
            n_gpu_layers=args.n_gpu_layers, n_threads=args.threads,
            n_threads_batch=args.threads, seed=0, verbose=True,
        )  # fmt: skip
    load_s = time.perf_counter() - start
    offload = [m.groups() for m in map(_OFFLOAD_RE.search, log) if m]
    add_bos = bool(llm.tokenize(b"", add_bos=True))
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)
    n_ctx, first = args.n_ctx, args.n_ctx // 2
    n_chunks = min(args.chunks, len(tokens) // n_ctx)
    if n_chunks < 1:
        raise SystemExit(
            f"error: {args.text}: {len(tokens)} tokens, fewer than one chunk of n_ctx={n_ctx}. "
            "Fix: use a longer text or a smaller --n-ctx"
        )
    n_vocab = int(llm.n_vocab())
    per_chunk = n_ctx - 1 - first
    out = np.lib.format.open_memmap(
        Path(args.out) / "logits.npy", mode="w+", dtype=np.float32,
        shape=(n_chunks * per_chunk, n_vocab),
    )  # fmt: skip
    targets: list[int] = []
    rng = np.random.default_rng(1234) if args.noise else None
    ctx = llm.ctx
    # One batch per chunk with logits only for the scored positions, as llama-perplexity does
    # (the output layer over a 262k vocabulary is most of the work on small models).
    batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
    eval_s = 0.0
    try:
        for c in range(n_chunks):
            chunk = list(tokens[c * n_ctx : (c + 1) * n_ctx])
            if add_bos:
                chunk[0] = llm.token_bos()
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            batch.n_tokens = n_ctx
            for i, tok in enumerate(chunk):
                batch.token[i] = tok
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = first <= i < n_ctx - 1
            t0 = time.perf_counter()
            with _capture_fd2():
                rc = llama_cpp.llama_decode(ctx, batch)
                llama_cpp.llama_synchronize(ctx)
            eval_s += time.perf_counter() - t0
            if rc != 0:
                raise SystemExit(f"error: llama_decode returned {rc} on chunk {c}")
            for j in range(per_chunk):
                ptr = llama_cpp.llama_get_logits_ith(ctx, first + j)
                row = np.ctypeslib.as_array(ptr, shape=(n_vocab,))
                if rng is not None:
                    row = row + rng.normal(0.0, args.noise, size=n_vocab).astype(np.float32)
                out[c * per_chunk + j] = row
            targets += chunk[first + 1 : n_ctx]
    finally:
        llama_cpp.llama_batch_free(batch)
    out.flush()
    del out
    raw = llama_cpp.llama_print_system_info()
    meta = {
        "model": args.model,
        "n_ctx": n_ctx,
        "chunks": n_chunks,
        "tokens_in_text": len(tokens),
        "n_vocab": n_vocab,
        "targets": targets,
        "add_bos": add_bos,
        "n_gpu_layers": args.n_gpu_layers,
        "threads": args.threads,
        "offloaded": [int(offload[-1][0]), int(offload[-1][1])] if offload else None,
        "load_seconds": round(load_s, 3),
        "eval_seconds": round(eval_s, 3),
        "noise": args.noise,
        "system_info": raw.decode("utf-8", "replace").strip() if raw else "",
        "llama_cpp_version": str(getattr(llama_cpp, "__version__", "?")),
    }
    llm.close()
    (Path(args.out) / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agree_child", description="Write one build's next-token logits over a text."
    )
    parser.add_argument("--model", required=True, help="GGUF file")
    parser.add_argument("--text", required=True, help="UTF-8 text file")
    parser.add_argument("--out", required=True, help="folder for logits.npy and meta.json")
    parser.add_argument("--n-ctx", type=int, default=128, help="chunk length in tokens")
    parser.add_argument("--chunks", type=int, default=4, help="at most this many chunks")
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.0, help="self-test: logit noise sigma")
    args = parser.parse_args(argv)
    meta = run(args)
    print(json.dumps({k: v for k, v in meta.items() if k != "targets"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
