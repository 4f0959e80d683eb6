"""The Gemini fallback, for real through the google-genai SDK, against a local server.

The server speaks the REST shape the SDK uses: ``POST /v1beta/models/<m>:generateContent``
and ``POST /v1beta/models/<m>:streamGenerateContent?alt=sse`` (server-sent events, one
``data: {GenerateContentResponse}`` per chunk). The primary model is a missing file, so no
llama_cpp build is needed: the load fails before llama.cpp would be imported.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.genai", reason="the Gemini fallback needs google-genai")

from saiverse_llm.client import LlamaCppClient
from saiverse_llm.fallback import FallbackError
from saiverse_llm.pool import ModelLoadError


@dataclass
class FakeGemini:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    parts: list[dict[str, Any]] = field(
        default_factory=lambda: [{"text": "こんにちは、Gemini です"}]
    )
    chunks: list[str] = field(default_factory=lambda: ["こんにちは、", "Gemini", " です"])


def _response(parts: list[dict[str, Any]], prompt: int, out: int) -> dict[str, Any]:
    return {
        "candidates": [
            {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": {
            "promptTokenCount": prompt,
            "candidatesTokenCount": out,
            "totalTokenCount": prompt + out,
        },
        "modelVersion": "gemini-2.0-flash",
    }


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    state = FakeGemini(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.requests.append(
                {
                    "path": self.path,
                    "key": self.headers.get("x-goog-api-key"),
                    "body": json.loads(body or b"{}"),
                }
            )
            if state.status != 200:
                payload = json.dumps(
                    {"error": {"code": state.status, "message": "boom", "status": "INTERNAL"}}
                ).encode()
                self.send_response(state.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            if ":streamGenerateContent" in self.path:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for i, text in enumerate(state.chunks):
                    last = i == len(state.chunks) - 1
                    event = _response([{"text": text}], 7, 3 if last else 0)
                    if not last:
                        del event["usageMetadata"]
                    self.wfile.write(f"data: {json.dumps(event)}\r\n\r\n".encode())
                    self.wfile.flush()
                return
            payload = json.dumps(_response(state.parts, 7, 3)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def env(gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch) -> FakeGemini:
    """The default fallback path: GEMINI_API_KEY plus the SDK's own base-URL variable."""
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", gemini.url)
    return gemini


MESSAGES = [
    {"role": "host", "content": "You are Air, a calm persona.", "metadata": {"x": 1}},
    {"role": "user", "content": "こんにちは"},
]


def missing_client(tmp_path: Path, **kwargs: Any) -> LlamaCppClient:
    kwargs.setdefault("fallback_on_error", True)
    return LlamaCppClient(tmp_path / "absent.gguf", n_gpu_layers=0, **kwargs)


def test_generate_falls_back_to_gemini(
    tmp_path: Path, env: FakeGemini, caplog: pytest.LogCaptureFixture
) -> None:
    client = missing_client(tmp_path, model="local-8b")
    with caplog.at_level(logging.WARNING, logger="saiverse_llm"):
        reply = client.generate(MESSAGES, temperature=0.3, max_tokens=50)
    assert reply == "こんにちは、Gemini です"
    usage = client.consume_usage()
    assert usage is not None
    assert (usage.model, usage.answered_by, usage.fallback) == (
        "local-8b",
        "gemini-2.0-flash",
        True,
    )
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 3)
    assert "model file not found" in (usage.fallback_reason or "")
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("gemini-2.0-flash" in r.getMessage() for r in warning)
    [request] = env.requests
    # The SDK's default API version (v1 or v1beta, depending on its release).
    assert re.fullmatch(r"/v1(beta)?/models/gemini-2\.0-flash:generateContent", request["path"])
    assert request["key"] == "test-key"
    body = request["body"]
    assert body["systemInstruction"]["parts"][0]["text"] == "You are Air, a calm persona."
    assert [c["role"] for c in body["contents"]] == ["user"]
    assert body["generationConfig"]["temperature"] == 0.3
    assert body["generationConfig"]["maxOutputTokens"] == 50
    assert "metadata" not in json.dumps(body)


def test_stream_falls_back_to_gemini_sse(tmp_path: Path, env: FakeGemini) -> None:
    client = missing_client(tmp_path)
    chunks = list(client.generate_stream(MESSAGES))
    assert chunks == ["こんにちは、", "Gemini", " です"]
    assert re.fullmatch(
        r"/v1(beta)?/models/gemini-2\.0-flash:streamGenerateContent\?alt=sse",
        env.requests[0]["path"],
    )
    usage = client.consume_usage()
    assert usage is not None and usage.answered_by == "gemini-2.0-flash"
    assert usage.completion_tokens == 3
    assert client.consume_usage() is None


def test_gemini_tool_call_comes_back_as_tool_call(tmp_path: Path, env: FakeGemini) -> None:
    env.parts = [{"functionCall": {"name": "get_weather", "args": {"city": "東京"}}}]
    tools = [{"name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    out = missing_client(tmp_path).generate(MESSAGES, tools=tools)
    assert out["type"] == "tool_call"
    assert (out["tool_name"], out["tool_args"]) == ("get_weather", {"city": "東京"})
    declared = env.requests[0]["body"]["tools"][0]["functionDeclarations"][0]
    assert declared["name"] == "get_weather"


def test_gemini_json_mode(tmp_path: Path, env: FakeGemini) -> None:
    env.parts = [{"text": '{"mood": "happy"}'}]
    schema = {"type": "object", "properties": {"mood": {"type": "string"}}}
    out = missing_client(tmp_path).generate(MESSAGES, response_schema=schema)
    assert out == {"mood": "happy"}
    config = env.requests[0]["body"]["generationConfig"]
    assert config["responseMimeType"] == "application/json"


def test_no_key_names_both_failures_and_the_fix(
    tmp_path: Path, gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", gemini.url)
    client = missing_client(tmp_path)
    with pytest.raises(FallbackError) as info:
        client.generate(MESSAGES)
    text = str(info.value)
    assert "absent.gguf" in text
    assert "GEMINI_API_KEY is not set" in text
    assert "Fix:" in text
    assert gemini.requests == []
    assert client.consume_usage() is None


def test_fallback_failing_too_is_an_error_not_a_reply(tmp_path: Path, env: FakeGemini) -> None:
    env.status = 500
    client = missing_client(tmp_path)
    with pytest.raises(FallbackError) as info:
        client.generate(MESSAGES)
    assert "absent.gguf" in str(info.value)
    assert "500" in str(info.value)
    with pytest.raises(FallbackError):
        list(client.generate_stream(MESSAGES))


def test_no_fallback_when_disabled(tmp_path: Path, env: FakeGemini) -> None:
    client = missing_client(tmp_path, fallback_on_error=False)
    with pytest.raises(ModelLoadError, match="model file not found"):
        client.generate(MESSAGES)
    assert env.requests == []


def test_usage_does_not_leak_into_a_failed_call(tmp_path: Path, env: FakeGemini) -> None:
    client = missing_client(tmp_path)
    client.generate(MESSAGES)  # usage pending, not consumed
    env.status = 500
    with pytest.raises(FallbackError):
        client.generate(MESSAGES)
    assert client.consume_usage() is None
