"""SSE framing as OpenAI clients expect it, and the tee that assembles a streamed answer for write-back."""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def frame_json(data: Any) -> bytes:
    return frame(orjson.dumps(data))


def is_usage_only(chunk: dict[str, Any]) -> bool:
    """The final usage chunk of `stream_options.include_usage`: usage set, `choices == []`."""
    return chunk.get("usage") is not None and chunk.get("choices") == []


def error_event_status(chunk: dict[str, Any]) -> int | None:
    """When an upstream event is an error (`{"error": {...}}`), the HTTP status it stands for."""
    error = chunk.get("error")
    if not isinstance(error, dict):
        return None
    for key in ("status", "status_code", "code"):
        value = error.get(key)
        if isinstance(value, int) and 400 <= value < 600:
            return value
    return 502


class StreamAssembler:
    """Collects the first choice's text and tool calls from `chat.completion.chunk` events."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._tool_calls: dict[int, dict[str, Any]] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            content = delta.get("content")
            if isinstance(content, str):
                self._text.append(content)
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    self._add_tool_call(call)

    def _add_tool_call(self, call: dict[str, Any]) -> None:
        index = call.get("index", 0)
        entry = self._tool_calls.get(index)
        if entry is None:
            entry = self._tool_calls[index] = {
                "id": None,
                "type": "function",
                "function": {"name": "", "arguments": ""},
            }
        if call.get("id"):
            entry["id"] = call["id"]
        if call.get("type"):
            entry["type"] = call["type"]
        function = call.get("function")
        if isinstance(function, dict):
            if function.get("name"):
                entry["function"]["name"] += function["name"]
            if function.get("arguments"):
                entry["function"]["arguments"] += function["arguments"]

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return [self._tool_calls[i] for i in sorted(self._tool_calls)]


def message_of(completion: Any) -> tuple[str, list[dict[str, Any]]]:
    """The first choice's text and tool calls of a non-streamed completion (tolerant of odd shapes)."""
    try:
        message = completion["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return "", []
    if not isinstance(message, dict):
        return "", []
    content = message.get("content")
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    tool_calls = message.get("tool_calls")
    return (content if isinstance(content, str) else ""), (tool_calls if isinstance(tool_calls, list) else [])
