"""``response_schema``: the JSON schema a reply must follow.

A schema is checked before any generation (:func:`check_schema`: a valid JSON schema, and
only local ``$ref``s, since nothing is fetched at run time), turned into a llama.cpp
grammar that constrains sampling (:func:`schema_grammar`), and the finished reply is
validated against it with the ``jsonschema`` library (:func:`validate_reply`), because the
grammar converter does not enforce every keyword. A schema the converter cannot handle is
a :class:`SchemaError` naming the part; a reply that does not satisfy the schema is a
:class:`SchemaMismatchError`. The client never returns a dict that ignores the schema.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from saiverse_llm.errors import GenerationError

logger = logging.getLogger("saiverse_llm")

_grammars: dict[str, Any] = {}
_grammar_lock = threading.Lock()


class SchemaError(ValueError):
    """The response_schema cannot be used (invalid, or a part the grammar cannot express)."""


class SchemaMismatchError(GenerationError):
    """The model's reply does not satisfy the response_schema."""


def _path(parts: Iterator[object] | list[object]) -> str:
    out = "response_schema"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _refs(node: Any, where: list[object]) -> Iterator[tuple[list[object], str]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield [*where, key], value
            else:
                yield from _refs(value, [*where, key])
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, [*where, i])


def normalize_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A plain JSON-schema dict; Gemini-style upper-case ``type`` values are lowered."""

    def lower(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {
                k: (v.lower() if k == "type" and isinstance(v, str) else lower(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [lower(v) for v in node]
        return node

    out: dict[str, Any] = lower(schema)
    return out


def check_schema(schema: Mapping[str, Any]) -> None:
    """Raise :class:`SchemaError` for an invalid schema or a non-local ``$ref``."""
    import jsonschema

    for where, ref in _refs(schema, []):
        if not ref.startswith("#"):
            raise SchemaError(
                f"{_path(where)}: {ref!r} is a remote reference; remote schemas are never "
                "fetched, so the reply could not be constrained or checked. Fix: put the "
                "referenced schema under \"$defs\" and refer to it as '#/$defs/NAME'"
            )
    try:
        jsonschema.validators.validator_for(schema).check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        raise SchemaError(
            f"{_path(list(exc.absolute_path))}: not a valid JSON schema: {exc.message}"
        ) from exc


def schema_grammar(schema: Mapping[str, Any]) -> Any:
    """The llama.cpp grammar (``LlamaGrammar``) for ``schema``, cached by its text."""
    from llama_cpp import llama_grammar

    text = json.dumps(schema, sort_keys=True)
    with _grammar_lock:
        cached = _grammars.get(text)
    if cached is not None:
        return cached
    check_schema(schema)
    try:
        grammar = llama_grammar.LlamaGrammar.from_json_schema(text, verbose=False)
    except Exception as exc:
        raise SchemaError(
            "response_schema: llama.cpp's JSON-schema-to-grammar converter cannot handle it "
            f"({type(exc).__name__}: {exc}). Fix: simplify that part of the schema"
        ) from exc
    with _grammar_lock:
        _grammars[text] = grammar
    return grammar


def validate_reply(schema: Mapping[str, Any], value: Any, *, model: str) -> None:
    """Raise :class:`SchemaMismatchError` naming the first place ``value`` breaks
    ``schema``."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = "".join(f"[{p!r}]" for p in error.absolute_path) or "(the whole reply)"
        raise SchemaMismatchError(
            f"{model}: the reply does not satisfy response_schema at {where}: {error.message}"
        )
