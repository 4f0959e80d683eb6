"""``response_schema``: the JSON schema a reply must follow, as a llama.cpp grammar."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("saiverse_llm")

_grammars: dict[str, Any] = {}
_grammar_lock = threading.Lock()


def schema_grammar(schema: Mapping[str, Any]) -> Any:
    from llama_cpp import llama_grammar

    text = json.dumps(schema, sort_keys=True)
    with _grammar_lock:
        cached = _grammars.get(text)
    if cached is not None:
        return cached
    try:
        grammar = llama_grammar.LlamaGrammar.from_json_schema(text, verbose=False)
    except Exception as exc:
        logger.warning(
            "response_schema could not be converted to a grammar (%s); constraining to "
            "generic JSON instead",
            exc,
        )
        grammar = llama_grammar.LlamaGrammar.from_string(llama_grammar.JSON_GBNF, verbose=False)
    with _grammar_lock:
        _grammars[text] = grammar
    return grammar
