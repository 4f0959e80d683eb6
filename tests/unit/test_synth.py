"""harness.models.synth: deterministic random-weight GGUF models with a real tokenizer and
template."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from harness.models.model_manifest import load_manifest
from harness.models.synth import (
    CHAT_TEMPLATE,
    PRESETS,
    SynthError,
    build_vocab,
    estimate_size,
    resolve_spec,
    synthesize,
)
from saiverse_llm.download import sha256_file
from saiverse_llm.gguf_file import read_gguf


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a.gguf", seed=0)
    b = synthesize(tmp_path / "b.gguf", seed=0)
    assert sha256_file(a) == sha256_file(b)
    assert a.read_bytes() == b.read_bytes()


def test_other_seed_other_bytes(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a.gguf", seed=0)
    b = synthesize(tmp_path / "b.gguf", seed=1)
    assert a.stat().st_size == b.stat().st_size
    assert sha256_file(a) != sha256_file(b)


def test_tiny_matches_the_manifest(tmp_path: Path) -> None:
    """The manifest pins the tiny model's sha256: synthesis is reproducible across machines
    and a change to synth.py that changes the bytes must update the manifest."""
    entry = load_manifest()["tiny"]
    path = synthesize(tmp_path / "tiny.gguf", preset="tiny", seed=0)
    assert path.stat().st_size == entry.size
    assert sha256_file(path) == entry.sha256


def test_header_check_passes(tmp_path: Path) -> None:
    info = read_gguf(synthesize(tmp_path / "t.gguf", n_layer=3, n_ctx=1024))
    assert info.architecture == "llama"
    assert info.block_count == 3
    assert info.context_length == 1024
    assert info.metadata["llama.attention.head_count_kv"] == 2
    assert info.metadata["llama_harness.synth.version"] >= 1
    assert max(t.end for t in info.tensors) == info.file_size


@pytest.mark.parametrize(("dtype", "type_name"), [("f16", "F16"), ("q8_0", "Q8_0")])
def test_dtypes(tmp_path: Path, dtype: str, type_name: str) -> None:
    info = read_gguf(synthesize(tmp_path / "t.gguf", dtype=dtype))
    weights = {t.type_name for t in info.tensors if t.name.endswith("attn_q.weight")}
    norms = {t.type_name for t in info.tensors if t.name.endswith("norm.weight")}
    assert weights == {type_name}
    assert norms == {"F32"}


def test_vocab_has_bytes_and_specials() -> None:
    vocab = build_vocab()
    assert len(set(vocab.tokens)) == len(vocab.tokens)
    byte_tokens = [t for t, k in zip(vocab.tokens, vocab.types, strict=True) if k == 6]
    assert byte_tokens == [f"<0x{b:02X}>" for b in range(256)]
    for special in ("<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"):
        assert vocab.types[vocab.id(special)] in (2, 3)
    # tool-call markers are user-defined so they come out as text when generated
    assert vocab.types[vocab.id("<tool_call>")] == 4
    assert vocab.types[vocab.id("</tool_call>")] == 4
    # every multi-character piece can be reached by SPM merges of its prefix
    for token in vocab.tokens:
        if len(token) > 1 and not token.startswith("<"):
            assert token[:-1] in vocab.tokens, token


def test_vocab_in_file(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(synthesize(tmp_path / "t.gguf"))
    field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode() for i in field.data]
    assert tokens == build_vocab().tokens
    assert "<0xE3>" in tokens  # first byte of most Japanese characters


def test_cut_vocab_keeps_bytes_specials_and_reachable_pieces(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    full = build_vocab()
    cut = build_vocab(378)
    assert cut.tokens == full.tokens[:378]
    assert sum(1 for k in cut.types if k == 6) == 256
    for special in ("<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "<tool_call>"):
        assert special in cut.tokens
    for token in cut.tokens:
        if len(token) > 1 and not token.startswith("<"):
            assert token[:-1] in cut.tokens, token
    reader = gguf.GGUFReader(synthesize(tmp_path / "t.gguf", n_vocab=378))
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 378
    assert reader.get_tensor(0).shape.tolist()[-1] == 378  # token_embd rows follow the vocab


@pytest.mark.parametrize("n_vocab", [263, 10_000, True])
def test_cut_vocab_out_of_range_is_an_error(n_vocab: int) -> None:
    with pytest.raises(SynthError, match="n_vocab"):
        build_vocab(n_vocab)


def _render(**kwargs: Any) -> str:
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    assert jinja2  # llama-cpp-python renders templates the same way
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHAT_TEMPLATE).render(**kwargs)


def test_template_plain_chat() -> None:
    text = _render(
        messages=[
            {"role": "system", "content": "You are Sai."},
            {"role": "user", "content": "こんにちは"},
            {"role": "assistant", "content": "やあ"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        add_generation_prompt=True,
    )
    assert text == (
        "<|im_start|>system\nYou are Sai.<|im_end|>\n"
        "<|im_start|>user\nこんにちは<|im_end|>\n"
        "<|im_start|>assistant\nやあ<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_template_tools_and_tool_calls() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "system", "content": "You are Sai."},
        {"role": "user", "content": "東京の天気は?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "晴れ"},
    ]
    text = _render(messages=messages, tools=tools, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are Sai.\n\n# Tools\n")
    tools_block = text.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    assert json.loads(tools_block) == tools[0]
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Tokyo"}}\n</tool_call><|im_end|>\n'
    ) in text
    assert "<|im_start|>user\n<tool_response>\n晴れ\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    # arguments given as a dict render as JSON too
    messages[2]["tool_calls"][0]["function"]["arguments"] = {"city": "Tokyo"}  # type: ignore[index]
    assert '"arguments": {"city": "Tokyo"}}' in _render(messages=messages, tools=tools)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": "huge"}, "unknown preset 'huge'"),
        ({"n_embd": 130}, "n_embd=130 must be a multiple of n_head=4"),
        ({"n_embd": 100, "n_head": 4}, "head size n_embd/n_head=25 must be even"),
        ({"n_head_kv": 3}, "n_head=4 must be a multiple of n_head_kv=3"),
        ({"dtype": "q4_k"}, "dtype='q4_k' is not supported"),
        ({"n_layer": 0}, "n_layer=0 must be a positive integer"),
        ({"dtype": "q8_0", "n_ff": 100}, "multiples of 32"),
    ],
)
def test_invalid_options(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SynthError, match=re.escape(message)):
        synthesize(tmp_path / "bad.gguf", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    def explode(done: int, total: int) -> None:
        if done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path / "t.gguf", progress=explode)
    assert list(tmp_path.iterdir()) == []


def test_replaces_existing_file_atomically(tmp_path: Path) -> None:
    target = tmp_path / "t.gguf"
    target.write_bytes(b"old")
    synthesize(target)
    read_gguf(target)
    assert [p.name for p in tmp_path.iterdir()] == ["t.gguf"]


def test_preset_sizes() -> None:
    assert estimate_size(resolve_spec("tiny")) < 5_000_000
    assert 0.9e9 < estimate_size(resolve_spec("1b")) < 1.2e9
    assert 1.8e9 < estimate_size(resolve_spec("2b")) < 2.3e9
    assert PRESETS["tiny"].dtype == "f32"  # q8_0 crashes GGML_NATIVE builds on AMX CPUs
