"""Chat templates: which renderer a loaded model uses, and rendering messages into tokens.

A model's template is the GGUF's own Jinja template (``tokenizer.chat_template``), or a
llama-cpp-python ``chat_format`` named in the config. Models without a system role get the
system text folded into the first user turn (:func:`~saiverse_llm.messages.fold_system_messages`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from saiverse_llm.errors import GenerationError, TemplateError
from saiverse_llm.messages import Message, fold_system_messages
from saiverse_llm.tools import tool_system_prompt

logger = logging.getLogger("saiverse_llm")

_FORMAT_FUNCTIONS = {
    "llama-2": "format_llama2",
    "llama-3": "format_llama3",
    "baichuan-2": "format_baichuan2",
    "vicuna": "format",
}

#: Named formats whose renderer drops system messages (they are folded into the first turn).
_NO_SYSTEM_ROLE = frozenset({"gemma"})


@dataclass
class ChatTemplate:
    """How prompts are rendered for one loaded model."""

    name: str  # "gguf" or a llama-cpp-python chat_format name
    formatter: Callable[..., Any]
    renders_tools: bool
    system_role: bool


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


def render_prompt(
    llm: Any,
    template: ChatTemplate,
    messages: list[Message],
    tools: list[dict[str, Any]],
    *,
    source: str,
) -> PromptInfo:
    """Render ``messages`` (already normalised) through ``template`` and tokenize them.

    ``source`` (the model file) names the template's owner in a :class:`TemplateError`."""
    msgs = [dict(m) for m in messages]
    if tools and not template.renders_tools:
        instructions = tool_system_prompt(tools)
        if msgs and msgs[0]["role"] == "system":
            msgs[0]["content"] = f"{msgs[0]['content']}\n\n{instructions}".strip()
        else:
            msgs.insert(0, {"role": "system", "content": instructions})
    if not template.system_role:
        msgs = fold_system_messages(msgs)
    try:
        result = template.formatter(messages=msgs, tools=tools or None, tool_choice=None)
    except Exception as exc:
        raise TemplateError(
            f"the chat template ({template.name}) of {source} rejected the "
            f"messages: {type(exc).__name__}: {exc}"
        ) from exc
    text: str = result.prompt
    tokens: list[int] = llm.tokenize(
        text.encode("utf-8"), add_bos=not result.added_special, special=True
    )
    stop = result.stop
    stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
    stops += FORMAT_STOPS.get(template.name, [])
    return PromptInfo(
        text=text,
        tokens=tokens,
        stop=[s for s in stops if s],
        template=template.name,
        stopping_criteria=result.stopping_criteria,
    )
