"""The one tool definition the client suite calls with (OpenAI function format): shared by
the tool-call, model-load and batching tests. Import it as ``from weather_tool import
WEATHER_TOOLS`` (pytest puts this folder on sys.path, as benchmarks/ does for benchlib)."""

from __future__ import annotations

from typing import Any

WEATHER_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
