"""Chat templates: which renderer a loaded model uses, and rendering messages into tokens.

A model's template is the GGUF's own Jinja template (``tokenizer.chat_template``), or a
llama-cpp-python ``chat_format`` named in the config.

Templates that refuse some turns: SAIVerse sends system (``host``) messages first and also
in the middle of a history. Some templates raise on any system turn (Gemma 2), on one that
is not first, or on two user turns in a row. :func:`render_prompt` then tries, in order,
the messages as they are; later system turns as user turns wrapped in ``<system>`` tags
(SAIVerse's own convention for providers without mid-history system turns); all system
text folded into the first user turn (:func:`~saiverse_llm.messages.fold_system_messages`,
what ``chat_format: "gemma"`` does). Same-role neighbours are merged in the last two.
The first that renders is remembered for the model.

Control tokens: only the template's own markers may become control tokens. Message text
that the tokenizer would read as a control token (a user typing ``<|im_end|>`` or
``<start_of_turn>``) is tokenized as plain text (:meth:`~saiverse_llm.vocab.Vocab.control_texts`),
so no message can close its own turn and open a fake system turn.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from saiverse_llm.errors import GenerationError, TemplateError
from saiverse_llm.messages import Message, fold_system_messages
from saiverse_llm.tools import tool_system_prompt
from saiverse_llm.vocab import Vocab

logger = logging.getLogger("saiverse_llm")

_FORMAT_FUNCTIONS = {
    "llama-2": "format_llama2",
    "llama-3": "format_llama3",
    "baichuan-2": "format_baichuan2",
    "vicuna": "format",
}

#: Named formats whose renderer drops system messages (they are folded into the first turn).
_NO_SYSTEM_ROLE = frozenset({"gemma"})


#: How messages are adapted to a template, weakest first (see the module docstring).
RENDER_MODES = ("as-is", "inline-system", "fold-system")


@dataclass
class ChatTemplate:
    """How prompts are rendered for one loaded model. ``mode`` starts at "as-is" (or
    "fold-system" for formats without a system role) and only ever moves forward."""

    name: str  # "gguf" or a llama-cpp-python chat_format name
    formatter: Callable[..., Any]
    renders_tools: bool
    system_role: bool
    mode: str = "as-is"

    def __post_init__(self) -> None:
        if not self.system_role:
            self.mode = "fold-system"


def resolve_template(llm: Any, chat_format: str | None, architecture: str | None) -> ChatTemplate:
    from llama_cpp import llama_chat_format

    metadata: Mapping[str, str] = llm.metadata
    if chat_format is None or chat_format.startswith("chat_template"):
        key = "tokenizer.chat_template"
        if chat_format and chat_format != "chat_template.default":
            key = "tokenizer." + chat_format
        template = metadata.get(key)
        if template:
            eos_id, bos_id = llm.token_eos(), llm.token_bos()
            eos = llm._model.token_get_text(eos_id) if eos_id != -1 else ""
            bos = llm._model.token_get_text(bos_id) if bos_id != -1 else ""
            formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id]
            )
            return ChatTemplate("gguf", formatter, "tools" in template, True)
        if chat_format is not None:
            raise GenerationError(
                f"chat_format {chat_format!r}: the GGUF has no {key}; remove chat_format "
                "or name a format such as 'chatml' or 'gemma'"
            )
        if architecture and architecture.startswith("gemma"):
            logger.info("GGUF has no chat template; using chat_format 'gemma' (%s)", architecture)
            chat_format = "gemma"
        else:
            logger.warning(
                "GGUF has no chat template and no chat_format is configured; falling back to "
                "'llama-2'. Fix: set \"chat_format\" in the model config"
            )
            chat_format = "llama-2"
    attr = _FORMAT_FUNCTIONS.get(chat_format, "format_" + chat_format.replace("-", "_"))
    named: Callable[..., Any] | None = getattr(llama_chat_format, attr, None)
    if named is None:
        raise GenerationError(
            f"chat_format {chat_format!r} is not a prompt format saiverse_llm can render "
            "(function-calling handlers such as 'functionary' are not supported); use e.g. "
            "'chatml', 'llama-3', 'gemma', 'mistral-instruct', or leave it unset to use the "
            "GGUF's own template"
        )
    return ChatTemplate(chat_format, named, False, chat_format not in _NO_SYSTEM_ROLE)


@dataclass
class PromptInfo:
    """A rendered prompt: the text, its tokens, and the stops the format adds."""

    text: str
    tokens: list[int]
    stop: list[str]
    template: str
    stopping_criteria: Any = None


#: Turn markers that end a reply in formats whose llama-cpp-python formatter names no stop:
#: without them a model (a base model above all) writes the next "### Instruction:" itself.
FORMAT_STOPS: dict[str, list[str]] = {"alpaca": ["\n### "]}


def _merge_neighbours(messages: list[Message]) -> list[Message]:
    """Join consecutive user (or assistant) turns without tool calls into one turn."""
    out: list[Message] = []
    for message in messages:
        prev = out[-1] if out else None
        if (
            prev is not None
            and prev["role"] == message["role"]
            and message["role"] in ("user", "assistant")
            and not prev.get("tool_calls")
            and not message.get("tool_calls")
        ):
            joined = "\n\n".join(t for t in (prev["content"], message["content"]) if t)
            out[-1] = {**prev, "content": joined}
        else:
            out.append(dict(message))
    return out


def adapt_messages(messages: list[Message], mode: str) -> list[Message]:
    """``messages`` as the render ``mode`` hands them to a template."""
    if mode == "as-is":
        return [dict(m) for m in messages]
    if mode == "inline-system":
        out: list[Message] = []
        for i, m in enumerate(messages):
            if m["role"] == "system" and i > 0:
                out.append({"role": "user", "content": f"<system>\n{m['content']}\n</system>"})
            else:
                out.append(dict(m))
        return _merge_neighbours(out)
    if mode == "fold-system":
        return _merge_neighbours(fold_system_messages(messages))
    raise ValueError(f"render mode: bad value {mode!r}; use one of {', '.join(RENDER_MODES)}")


class _Protected:
    """Control-token texts found in message data (content, tool-call arguments, names, tool
    results) and in tool definitions, swapped for sentinels while the template renders and
    tokenized as plain text afterwards. A sentinel that a template wrote through
    ``tojson(ensure_ascii=True)`` (``\\ue000...``) is found too."""

    def __init__(self, vocab: Vocab | None, messages: list[Message]) -> None:
        self.table: dict[str, str] = {}
        self._vocab = vocab
        if vocab is None:
            return
        self._nonce = secrets.token_hex(4)
        self._pattern = re.compile(f"(?:\ue000|\\\\ue000){self._nonce}:(\\d+)(?:\ue001|\\\\ue001)")
        for message in messages:
            for key, value in message.items():
                if key != "role":
                    message[key] = self.protect(value)

    def protect(self, value: Any) -> Any:
        """``value`` with every control-token text in its strings (dicts and lists walked,
        keys left alone) replaced by a sentinel; the input is not changed."""
        if self._vocab is None:
            return value
        if isinstance(value, str):
            for text in self._vocab.control_texts(value):
                key = f"\ue000{self._nonce}:{len(self.table)}\ue001"
                self.table[key] = text
                value = value.replace(text, key)
            return value
        if isinstance(value, Mapping):
            return {k: self.protect(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.protect(v) for v in value]
        return value

    def _original(self, match: re.Match[str]) -> str:
        original = self.table.get(f"\ue000{self._nonce}:{match.group(1)}\ue001")
        if original is None:
            return match.group(0)
        if match.group(0).startswith("\\"):  # written by tojson(ensure_ascii=True)
            return json.dumps(original)[1:-1]
        return original

    def restore(self, text: str) -> str:
        if not self.table:
            return text
        return self._pattern.sub(self._original, text)

    def tokenize(self, llm: Any, text: str, *, add_bos: bool) -> list[int]:
        """Template text with ``special=True``, protected texts with ``special=False``."""
        if not self.table:
            tokens: list[int] = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
            return tokens
        out: list[int] = []
        pos = 0
        for match in self._pattern.finditer(text):
            if match.start() > pos or not out:
                out += llm.tokenize(
                    text[pos : match.start()].encode("utf-8"), add_bos=add_bos, special=True
                )
            add_bos = False
            plain = self._original(match)
            out += llm.tokenize(plain.encode("utf-8"), add_bos=False, special=False)
            pos = match.end()
        out += llm.tokenize(text[pos:].encode("utf-8"), add_bos=add_bos, special=True)
        return out


def render_prompt(
    llm: Any,
    template: ChatTemplate,
    messages: list[Message],
    tools: list[dict[str, Any]],
    *,
    source: str,
    vocab: Vocab | None = None,
) -> PromptInfo:
    """Render ``messages`` (already normalised) through ``template`` and tokenize them.

    Tries the render modes from ``template.mode`` on (see the module docstring) and
    remembers the first that works. With ``vocab``, message text is never tokenized into
    control tokens. ``source`` (the model file) names the template's owner in a
    :class:`TemplateError`."""
    msgs = [dict(m) for m in messages]
    if tools and not template.renders_tools:
        instructions = tool_system_prompt(tools)
        if msgs and msgs[0]["role"] == "system":
            msgs[0]["content"] = f"{msgs[0]['content']}\n\n{instructions}".strip()
        else:
            msgs.insert(0, {"role": "system", "content": instructions})
    protected = _Protected(vocab, msgs)
    tools = protected.protect(tools)
    first_error: Exception | None = None
    start = RENDER_MODES.index(template.mode)
    for mode in RENDER_MODES[start:]:
        try:
            result = template.formatter(
                messages=adapt_messages(msgs, mode), tools=tools or None, tool_choice=None
            )
        except Exception as exc:
            first_error = first_error or exc
            continue
        if mode != template.mode:
            logger.info(
                "the chat template (%s) of %s refused the messages as they are (%s: %s); "
                "rendering them with mode %r from now on",
                template.name,
                source,
                type(first_error).__name__,
                first_error,
                mode,
            )
            template.mode = mode
        break
    else:
        assert first_error is not None
        raise TemplateError(
            f"the chat template ({template.name}) of {source} rejected the "
            f"messages: {type(first_error).__name__}: {first_error}"
        ) from first_error
    rendered: str = result.prompt
    tokens = protected.tokenize(llm, rendered, add_bos=not result.added_special)
    stop = result.stop
    stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
    stops += FORMAT_STOPS.get(template.name, [])
    return PromptInfo(
        text=protected.restore(rendered),
        tokens=tokens,
        stop=[s for s in stops if s],
        template=template.name,
        stopping_criteria=result.stopping_criteria,
    )
