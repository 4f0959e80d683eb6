"""Templates that refuse some turns still get SAIVerse's messages (issue #11, item 3).

Gemma 2's GGUF template raises on any role but user/assistant; others raise on a system
turn that is not first, or on two user turns in a row. The client adapts the messages
(system text into the first user turn, later system turns as ``<system>`` user turns,
same-role neighbours merged) instead of failing every turn over to the fallback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="the client suite needs a llama_cpp build")

TURN = (
    "{{ '<|im_start|>' + ('model' if m['role'] == 'assistant' else 'user') + '\\n' "
    "+ m['content'] + '<|im_end|>\\n' }}"
)
GEN = "{% if add_generation_prompt %}{{ '<|im_start|>model\\n' }}{% endif %}"
#: Gemma 2 style: any role but user/assistant raises.
NO_SYSTEM = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('System role not supported') }}{% endif %}" + TURN + "{% endfor %}" + GEN
)
#: A system turn only as the first message; roles must alternate after it.
SYSTEM_FIRST = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('System message must be at the beginning') }}{% endif %}"
    "{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
    "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}" + GEN
)

HISTORY = [
    {"role": "host", "content": "You run a small cafe in Kyoto."},
    {"role": "user", "content": "こんにちは"},
    {"role": "assistant", "content": "いらっしゃいませ"},
    {"role": "host", "content": "A new guest enters the cafe."},
    {"role": "user", "content": "What do you recommend?"},
]


def forced(text: str) -> Any:
    return llama_cpp.LlamaGrammar.from_string(f"root ::= {json.dumps(text)}", verbose=False)


@pytest.fixture(scope="module")
def no_system_gguf(tiny_with_template: Callable[[str, str], Path]) -> Path:
    return tiny_with_template("gemma2-like", NO_SYSTEM)


@pytest.fixture(scope="module")
def system_first_gguf(tiny_with_template: Callable[[str, str], Path]) -> Path:
    return tiny_with_template("system-first", SYSTEM_FIRST)


def test_template_without_a_system_role_gets_it_in_the_first_user_turn(
    make_client: Callable[..., Any], no_system_gguf: Path, ours_only: None
) -> None:
    client = make_client(no_system_gguf, context_length=512)
    messages = [
        {"role": "host", "content": "You run a small cafe in Kyoto. Answer in one word."},
        {"role": "user", "content": "こんにちは"},
    ]
    prompt = client.format_prompt(messages)
    assert "small cafe in Kyoto" in prompt.text
    assert prompt.text.index("small cafe") < prompt.text.index("こんにちは")
    assert client.generate(messages, grammar=forced("ok"), max_tokens=4, seed=1) == "ok"
    prompt = client.format_prompt(HISTORY)  # a whole SAIVerse history renders too
    assert "A new guest enters" in prompt.text


def test_no_fallback_for_a_template_that_refuses_system_turns(
    tmp_path: Path, no_system_gguf: Path, tiny: Path, n_gpu_layers: int, ours_only: None
) -> None:
    """As shipped models/gemma-2-9b-instruct-q8.json has it: fallback_on_error true. The
    model itself must answer, not the fallback."""
    from saiverse_llm.client import get_llm_client

    for key, path, extra in (
        ("gemma2-persona", no_system_gguf, {"fallback_model": "tiny-local"}),
        ("tiny-local", tiny, {}),
    ):
        config = {
            "model": key,
            "provider": "llama_cpp",
            "model_path": str(path),
            "context_length": 512,
            "n_gpu_layers": n_gpu_layers,
            "fallback_on_error": True,
            "parameters": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 8},
            **extra,
        }
        (tmp_path / f"{key}.json").write_text(json.dumps(config), encoding="utf-8")
    client = get_llm_client("gemma2-persona", dirs=[tmp_path])
    client.generate(HISTORY, seed=1)
    usage = client.consume_usage()
    assert (usage.answered_by, usage.fallback) == ("gemma2-persona", False)


def test_mid_history_system_turns_become_user_turns_when_refused(
    make_client: Callable[..., Any], system_first_gguf: Path, ours_only: None
) -> None:
    client = make_client(system_first_gguf, context_length=512)
    prompt = client.format_prompt(HISTORY)
    text = prompt.text
    assert text.count("<|im_start|>system") == 1  # the first one stays a system turn
    assert "<system>\nA new guest enters the cafe.\n</system>" in text
    # the later host turn and the next user turn are merged into one user turn
    assert "</system>\n\nWhat do you recommend?" in text
    assert client.generate(HISTORY, grammar=forced("ok"), max_tokens=4, seed=1) == "ok"
