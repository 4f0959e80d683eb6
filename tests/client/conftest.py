"""The client suite: runs against whichever llama_cpp build is installed.

``nox -s test-<variant>`` sets:
- ``LLAMA_HARNESS_VARIANT``: the build variant's name (shown in the report header);
- ``LLAMA_HARNESS_N_GPU_LAYERS``: n_gpu_layers for every client (default 0);
- ``LLAMA_HARNESS_REQUIRE_GPU=1``: GPU assertions must run and pass (never skip);
- ``LLAMA_HARNESS_MODELS``: test models the suite may use (default ``tiny,gemma-3-270m``);
- ``LLAMA_HARNESS_REPORTS``: when set, the build info and results go to
  ``$LLAMA_HARNESS_REPORTS/client-suite-<variant>.json``.

``SAIVERSE_CLIENT_IMPL=module:Class`` runs the suite against another implementation of the
same interface (e.g. ``llm_clients.llama_cpp:LlamaCppClient`` from a SAIVerse checkout);
tests that use this implementation's extensions (load reports, the pool) are skipped then.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

IMPL_ENV = "SAIVERSE_CLIENT_IMPL"
OURS = "saiverse_llm.client:LlamaCppClient"


def _build_info() -> dict[str, Any]:
    try:
        import llama_cpp
    except ImportError as exc:
        return {"llama_cpp": None, "error": str(exc)}
    return {
        "llama_cpp": getattr(llama_cpp, "__version__", "?"),
        "location": str(Path(llama_cpp.__file__).parent),
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "variant": os.environ.get("LLAMA_HARNESS_VARIANT", "(unset)"),
        "n_gpu_layers": n_gpu_layers_from_env(),
        "require_gpu": require_gpu(),
        "client_impl": os.environ.get(IMPL_ENV, OURS),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def pytest_report_header(config: pytest.Config) -> list[str]:
    info = _build_info()
    if info.get("llama_cpp") is None:
        return [f"llama_cpp: NOT INSTALLED ({info.get('error')}); the client suite skips"]
    return [
        f"llama_cpp {info['llama_cpp']} from {info['location']}",
        f"llama_print_system_info(): {info['system_info']}",
        f"llama_supports_gpu_offload(): {info['gpu_offload']}",
        f"variant: {info['variant']}  n_gpu_layers: {info['n_gpu_layers']}  "
        f"require_gpu: {info['require_gpu']}  client: {info['client_impl']}",
    ]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    reports = os.environ.get("LLAMA_HARNESS_REPORTS")
    if not reports:
        return
    counts = {
        key: len(terminalreporter.stats.get(key, []))
        for key in ("passed", "failed", "skipped", "error", "xfailed", "xpassed")
    }
    skipped = [
        {"test": r.nodeid, "reason": str(r.longrepr[-1]) if isinstance(r.longrepr, tuple) else ""}
        for r in terminalreporter.stats.get("skipped", [])
    ]
    data = {
        "build": _build_info(),
        "counts": counts,
        "exitstatus": int(exitstatus),
        "skipped": skipped,
    }
    out = Path(reports) / f"client-suite-{os.environ.get('LLAMA_HARNESS_VARIANT', 'local')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(out)


def n_gpu_layers_from_env() -> int:
    raw = os.environ.get("LLAMA_HARNESS_N_GPU_LAYERS", "").strip()
    return int(raw) if raw else 0


def require_gpu() -> bool:
    return os.environ.get("LLAMA_HARNESS_REQUIRE_GPU", "") == "1"


def models_enabled() -> set[str]:
    raw = os.environ.get("LLAMA_HARNESS_MODELS", "tiny,gemma-3-270m")
    return {m.strip() for m in raw.split(",") if m.strip()}


@pytest.fixture(scope="session")
def n_gpu_layers() -> int:
    return n_gpu_layers_from_env()


@pytest.fixture(scope="session")
def client_class() -> type:
    spec = os.environ.get(IMPL_ENV, OURS)
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise pytest.UsageError(f"{IMPL_ENV}={spec!r}: use 'module:Class'")
    return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def is_ours(client_class: type) -> bool:
    from saiverse_llm.client import LlamaCppClient

    return issubclass(client_class, LlamaCppClient)


@pytest.fixture
def ours_only(is_ours: bool) -> None:
    """Skip a test that checks this implementation's extensions (pool, load report)."""
    if not is_ours:
        pytest.skip(f"uses saiverse_llm extensions; {IMPL_ENV} points at another client")


@pytest.fixture
def make_client(client_class: type, is_ours: bool, n_gpu_layers: int) -> Callable[..., Any]:
    """``make_client(path, **kwargs)``: a client with the suite's defaults (n_gpu_layers
    from the environment, 2 threads, no fallback unless asked)."""

    def make(path: Path | str, **kwargs: Any) -> Any:
        kwargs.setdefault("n_gpu_layers", n_gpu_layers)
        kwargs.setdefault("fallback_on_error", False)
        if is_ours:
            kwargs.setdefault("n_threads", 2)
        else:
            for key in ("pool", "chunk_hook", "context_cap", "max_retries", "n_seq_max"):
                kwargs.pop(key, None)
        return client_class(str(path), **kwargs)

    return make


@pytest.fixture(scope="session")
def tiny(tiny_gguf: Path) -> Path:
    if "tiny" not in models_enabled():
        pytest.skip("tiny not in LLAMA_HARNESS_MODELS")
    return tiny_gguf


@pytest.fixture(scope="session")
def gemma(request: pytest.FixtureRequest) -> Path:
    if "gemma-3-270m" not in models_enabled():
        pytest.skip("gemma-3-270m not in LLAMA_HARNESS_MODELS")
    path: Path = request.getfixturevalue("gemma_gguf")
    return path


# --- derived test models ------------------------------------------------------------

#: A ChatML template that raises on anything a chat template should never see: unknown
#: roles (SAIVerse's "host"), extra keys ("metadata"), non-string content, tool results
#: without tool_call_id, assistant tool_calls not in OpenAI shape (JSON-string arguments).
STRICT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m.role not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{ raise_exception('unknown role: ' ~ m.role) }}{%- endif -%}"
    "{%- for k in m -%}"
    "{%- if k not in ['role', 'content', 'name', 'tool_calls', 'tool_call_id'] -%}"
    "{{ raise_exception('unexpected message key: ' ~ k) }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if m.content is not string -%}"
    "{{ raise_exception('content is not a string in a ' ~ m.role ~ ' message') }}{%- endif -%}"
    "{%- if m.role == 'tool' and (m.tool_call_id is not defined or not m.tool_call_id) -%}"
    "{{ raise_exception('tool message without tool_call_id') }}{%- endif -%}"
    "{%- if m.tool_calls is defined -%}{%- for c in m.tool_calls -%}"
    "{%- if c.type != 'function' or c.id is not defined or c.function is not defined "
    "or c.function.arguments is not string -%}"
    "{{ raise_exception('assistant tool_calls not in OpenAI shape') }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_start|>' + m.role + '\\n' + m.content -}}"
    "{%- if m.tool_calls is defined -%}{%- for c in m.tool_calls -%}"
    "{{- '<tool_call>' + c.function.arguments + '</tool_call>' -}}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def copy_with_template(src: Path, dst: Path, template: str) -> Path:
    """A copy of ``src`` whose ``tokenizer.chat_template`` is ``template``."""
    import gguf

    return copy_with_metadata(
        src, dst, {gguf.Keys.Tokenizer.CHAT_TEMPLATE: (gguf.GGUFValueType.STRING, template)}
    )


def copy_with_metadata(src: Path, dst: Path, values: dict[str, tuple[Any, Any]]) -> Path:
    """A copy of ``src`` with the metadata keys of ``values`` (key -> (GGUFValueType,
    value)) set (gguf-py's ``gguf_new_metadata``)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(src, "r")
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch is not None
    writer = gguf.GGUFWriter(dst, arch.contents(), endianess=reader.endianess)
    meta = {key: MetadataDetails(kind, value) for key, (kind, value) in values.items()}
    copy_with_new_metadata(reader, writer, meta, [])
    return dst


def copy_with_output(src: Path, dst: Path, edit: Callable[[Any], None]) -> Path:
    """A copy of ``src`` (an f32 model: the tiny one) whose final projection
    ``output.weight`` has been changed in place by ``edit(data)`` (``data``: the tensor as
    a writable numpy array, one row per token)."""
    import gguf

    dst.write_bytes(src.read_bytes())
    reader = gguf.GGUFReader(dst, "r+")
    (output,) = [t for t in reader.tensors if t.name == "output.weight"]
    assert output.tensor_type == gguf.GGMLQuantizationType.F32
    edit(output.data)
    reader.data.flush()
    return dst


@pytest.fixture(scope="session")
def strict_gguf(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_with_template(
        tiny, tmp_path_factory.mktemp("strict") / "strict-tiny.gguf", STRICT_TEMPLATE
    )


def write_unloadable_gguf(path: Path) -> Path:
    """A structurally valid GGUF (passes the header check) that llama.cpp refuses to load:
    its architecture does not exist."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, "no-such-architecture")
    writer.add_context_length(256)
    writer.add_tensor("weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def unloadable_gguf(tmp_path: Path) -> Path:
    return write_unloadable_gguf(tmp_path / "bad.gguf")


#: Weight seed of :func:`byte_vocab_gguf`: with the old ``create_completion`` client this
#: model's ``generate`` returned '' (96 completion tokens) for "a" at temperature 0, seed 3,
#: while ``generate_stream`` gave 54 characters (issue #11's second case).
BYTE_VOCAB_SEED = 24


@pytest.fixture(scope="session")
def byte_vocab_gguf(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama GGUF (2 layers, ctx 2048) whose 378-token vocabulary is mostly
    the 256 byte tokens: nearly every reply is spelled byte by byte, often invalid UTF-8."""
    from harness.models.synth import synthesize

    path = tmp_path_factory.mktemp("bytevocab") / "byte-vocab-378.gguf"
    return synthesize(path, preset="tiny", seed=BYTE_VOCAB_SEED, n_vocab=378)


#: :func:`deep_kv_gguf` takes 32 KiB of KV cache per token (32 layers x 256 K + 256 V
#: values, f16): at this context the KV cache is 204,799,475,712 bytes (190.73 GiB), beyond
#: any machine's memory, while llama.cpp's per-cell bookkeeping stays near 250 MB.
HUGE_CONTEXT = 6_249_984  # a multiple of 256: llama.cpp pads n_ctx to one


@pytest.fixture(scope="session")
def huge_context() -> int:
    return HUGE_CONTEXT


@pytest.fixture(scope="session")
def deep_kv_gguf(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32-layer random model (~30 MB, trained context 2048) with a large KV cache per
    token. Memory-error tests load it at :data:`HUGE_CONTEXT`: the tiny model would need
    400,000,000 tokens for the same KV cache, and llama.cpp's per-cell state for those
    (~20 GB, written before the KV buffer is asked for) got the test process killed by the
    OOM killer on a shared 24 GiB machine."""
    from harness.models.synth import synthesize

    path = tmp_path_factory.mktemp("deepkv") / "deep-kv.gguf"
    return synthesize(
        path, preset="tiny", n_layer=32, n_embd=256, n_head=4, n_head_kv=4, n_ff=256, dtype="f16"
    )


@pytest.fixture
def fresh_pool(is_ours: bool) -> Iterator[Any]:
    from saiverse_llm.pool import ModelPool

    pool: ModelPool[Any] = ModelPool()
    yield pool
    pool.unload_all()


@pytest.fixture(scope="session")
def tiny_with_template(
    tiny: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str], Path]:
    """``tiny_with_template(name, template)``: a copy of the tiny model with that template."""

    def make(name: str, template: str) -> Path:
        return copy_with_template(tiny, tmp_path_factory.mktemp("tmpl") / f"{name}.gguf", template)

    return make
