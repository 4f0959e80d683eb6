"""What answers when the local model cannot: ``fallback_on_error``.

The seed promises that a model with ``fallback_on_error: true`` falls back to Gemini 2.0
Flash when loading fails. Here both load and generation failures fall back, never
silently: the client logs a WARNING and the usage record names the model that answered.
Two fallbacks exist:

- :class:`GeminiFallback` (default): ``gemini-2.0-flash`` through the ``google-genai`` SDK
  with ``$GEMINI_API_KEY`` (or ``$GOOGLE_API_KEY``). ``base_url`` (or the SDK's own
  ``$GOOGLE_GEMINI_BASE_URL``) points it elsewhere, e.g. at a proxy or a test server.
- :class:`LocalModelFallback`: another model config key (the config's ``fallback_model``),
  e.g. a smaller local GGUF.

When the fallback is unavailable (no key) or fails too, :class:`FallbackError` names both
failures and the fix. Error text is never returned as a reply.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from saiverse_llm.redact import redact_text
from saiverse_llm.request import Reply, Request
from saiverse_llm.tools import ToolCall

logger = logging.getLogger("saiverse_llm.fallback")

DEFAULT_GEMINI_MODEL = "gemini-2.0-flash"


class FallbackUnavailable(RuntimeError):
    """The fallback cannot even be tried (e.g. no API key); ``fix`` says what to do."""

    def __init__(self, message: str, fix: str) -> None:
        self.fix = fix
        super().__init__(f"{message}. Fix: {fix}")


class FallbackError(RuntimeError):
    """The local model failed and so did its fallback: names both failures and the fix."""

    def __init__(
        self, model: str, primary: BaseException, fallback_name: str, fallback_error: BaseException
    ) -> None:
        self.primary = primary
        self.fallback_error = fallback_error
        fix = getattr(fallback_error, "fix", None) or (
            "check the fallback's settings (see saiverse_log.txt), or fix the local model"
        )
        super().__init__(
            redact_text(
                f"model {model!r} failed: {type(primary).__name__}: {primary}; "
                f"fallback {fallback_name!r} failed too: {type(fallback_error).__name__}: "
                f"{fallback_error}. Fix: {fix}"
            )
        )


class Fallback(Protocol):
    name: str

    def generate(self, request: Request) -> Reply: ...

    def stream(self, request: Request) -> Iterator[str | Reply]:
        """Text chunks, then one final :class:`Reply` (with the whole text and usage)."""
        ...


# --- Gemini ----------------------------------------------------------------------------


def gemini_api_key() -> str | None:
    return os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY") or None


class GeminiFallback:
    """Gemini through the ``google-genai`` SDK (``generateContent``/``streamGenerateContent``)."""

    def __init__(
        self,
        model: str = DEFAULT_GEMINI_MODEL,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.name = model
        self._api_key = api_key
        self.base_url = base_url or os.environ.get("SAIVERSE_GEMINI_BASE_URL") or None
        self.timeout_s = timeout_s

    def _client(self) -> Any:
        key = self._api_key or gemini_api_key()
        if not key:
            raise FallbackUnavailable(
                "GEMINI_API_KEY is not set, so the Gemini fallback cannot run",
                "put GEMINI_API_KEY=... in SAIVerse's .env (or the environment), or set "
                '"fallback_model" to another local model key, or "fallback_on_error": false',
            )
        try:
            from google import genai
            from google.genai import types
        except ImportError as exc:
            raise FallbackUnavailable(
                f"the google-genai package is not installed ({exc})",
                "pip install google-genai (or saiverse-llama-harness[gemini])",
            ) from exc
        options = types.HttpOptions(
            base_url=self.base_url,
            timeout=int(self.timeout_s * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        return genai.Client(api_key=key, http_options=options)

    def _contents_and_config(self, request: Request) -> tuple[list[Any], Any]:
        from google.genai import types

        system: list[str] = []
        contents: list[Any] = []
        for message in request.messages:
            role = message["role"]
            if role == "system":
                if message["content"]:
                    system.append(message["content"])
                continue
            if role == "tool":
                try:
                    payload: Any = json.loads(message["content"])
                except (json.JSONDecodeError, TypeError):
                    payload = message["content"]
                if not isinstance(payload, dict):
                    payload = {"result": payload}
                part = types.Part(
                    function_response=types.FunctionResponse(
                        name=message.get("name") or message["tool_call_id"], response=payload
                    )
                )
                contents.append(types.Content(role="user", parts=[part]))
                continue
            parts: list[Any] = []
            if message["content"]:
                parts.append(types.Part(text=message["content"]))
            for call in message.get("tool_calls", []):
                fn = call["function"]
                parts.append(
                    types.Part(
                        function_call=types.FunctionCall(
                            name=fn["name"], args=json.loads(fn["arguments"])
                        )
                    )
                )
            if not parts:
                parts.append(types.Part(text=""))
            contents.append(
                types.Content(role="model" if role == "assistant" else "user", parts=parts)
            )
        config: dict[str, Any] = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_output_tokens": request.max_tokens,
            "automatic_function_calling": types.AutomaticFunctionCallingConfig(disable=True),
        }
        if request.seed is not None:
            config["seed"] = request.seed
        if request.stop:
            config["stop_sequences"] = list(request.stop)
        if system:
            config["system_instruction"] = "\n\n".join(system)
        if request.tools:
            config["tools"] = [
                types.Tool(
                    function_declarations=[
                        types.FunctionDeclaration(
                            name=t["function"]["name"],
                            description=t["function"]["description"],
                            parameters_json_schema=t["function"]["parameters"],
                        )
                        for t in request.tools
                    ]
                )
            ]
        if request.response_schema is not None:
            config["response_mime_type"] = "application/json"
            config["response_json_schema"] = request.response_schema
        return contents, types.GenerateContentConfig(**config)

    @staticmethod
    def _parts(response: Any) -> tuple[str, list[ToolCall]]:
        texts: list[str] = []
        calls: list[ToolCall] = []
        for candidate in response.candidates or []:
            content = candidate.content
            for part in (content.parts if content is not None else None) or []:
                if part.function_call is not None:
                    fc = part.function_call
                    calls.append(
                        ToolCall(
                            name=fc.name or "",
                            arguments=dict(fc.args or {}),
                            id=fc.id or f"call_{len(calls)}",
                        )
                    )
                elif part.text and not part.thought:
                    texts.append(part.text)
            break  # first candidate only
        return "".join(texts), calls

    @staticmethod
    def _usage(response: Any) -> tuple[int, int]:
        meta = response.usage_metadata
        if meta is None:
            return 0, 0
        return int(meta.prompt_token_count or 0), int(meta.candidates_token_count or 0)

    def generate(self, request: Request) -> Reply:
        client = self._client()
        contents, config = self._contents_and_config(request)
        response = client.models.generate_content(model=self.name, contents=contents, config=config)
        text, calls = self._parts(response)
        if not text and not calls:
            raise RuntimeError(f"{self.name} returned no text and no function call")
        prompt, completion = self._usage(response)
        return Reply(
            text=text,
            raw=text,
            tool_calls=calls,
            answered_by=self.name,
            prompt_tokens=prompt,
            completion_tokens=completion,
        )

    def stream(self, request: Request) -> Iterator[str | Reply]:
        client = self._client()
        contents, config = self._contents_and_config(request)
        texts: list[str] = []
        calls: list[ToolCall] = []
        prompt = completion = 0
        for chunk in client.models.generate_content_stream(
            model=self.name, contents=contents, config=config
        ):
            text, chunk_calls = self._parts(chunk)
            calls.extend(chunk_calls)
            if chunk.usage_metadata is not None:
                prompt, completion = self._usage(chunk)
            if text:
                texts.append(text)
                yield text
        if not texts and not calls:
            raise RuntimeError(f"{self.name} streamed no text and no function call")
        whole = "".join(texts)
        yield Reply(
            text=whole,
            raw=whole,
            tool_calls=calls,
            answered_by=self.name,
            prompt_tokens=prompt,
            completion_tokens=completion,
        )


# --- another local model ------------------------------------------------------------


class LocalGenerator(Protocol):
    """What a local fallback model must offer: the local generation of a client, without
    its own fallback (:class:`~saiverse_llm.client.LlamaCppClient` satisfies it)."""

    def run_local(self, request: Request) -> Reply: ...

    def stream_local(self, request: Request) -> Iterator[str | Reply]:
        """Text chunks, then one final :class:`Reply`."""
        ...


#: Makes the generator for a config key (``fallback_model``) in the given config dirs. The
#: client passes its own factory, so this module never imports the client.
LocalFactory = Callable[[str, Sequence[Path] | None], LocalGenerator]


class LocalModelFallback:
    """Another model config (``fallback_model`` key) served by its own local generator,
    made on first use by ``factory(key, dirs)``."""

    def __init__(
        self, key: str, *, factory: LocalFactory, dirs: Sequence[Path] | None = None
    ) -> None:
        self.name = key
        self.dirs = list(dirs) if dirs is not None else None
        self._factory = factory
        self._generator: LocalGenerator | None = None

    def _local(self) -> LocalGenerator:
        if self._generator is None:
            self._generator = self._factory(self.name, self.dirs)
        return self._generator

    def generate(self, request: Request) -> Reply:
        return self._local().run_local(request)

    def stream(self, request: Request) -> Iterator[str | Reply]:
        return self._local().stream_local(request)


def make_fallback(
    fallback_model: str | None,
    *,
    local_factory: LocalFactory,
    dirs: Sequence[Path] | None = None,
) -> Fallback:
    """The fallback a config asks for: a local model key (served by ``local_factory``), or
    Gemini 2.0 Flash when None or a ``gemini-*`` name."""
    if fallback_model is None or fallback_model.startswith("gemini"):
        return GeminiFallback(fallback_model or DEFAULT_GEMINI_MODEL)
    return LocalModelFallback(fallback_model, factory=local_factory, dirs=dirs)


def fallback_cycles(edges: Mapping[str, str]) -> list[list[str]]:
    """The loops in ``edges`` (config key -> the key of its ``fallback_model``) of two or more
    configs, each once, starting at its smallest key, in order: ``[["a", "b"]]`` for a -> b -> a.

    Harmless at run time (a fallback model never falls back itself: one hop at most), but a
    sign of a mistake, so ``saiverse-llm list`` warns about each. A config naming itself is
    not listed here (``list`` has its own note for it)."""
    cycles: list[list[str]] = []
    seen: set[str] = set()
    for start in sorted(edges):
        path: list[str] = []
        where: dict[str, int] = {}
        key = start
        while key in edges and key not in seen and key not in where:
            where[key] = len(path)
            path.append(key)
            key = edges[key]
        if key in where and len(path) - where[key] > 1:
            cycle = path[where[key] :]
            first = cycle.index(min(cycle))
            cycles.append(cycle[first:] + cycle[:first])
        seen.update(path)
    return sorted(cycles)
