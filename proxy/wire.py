"""Reading the OpenAI wire format: a JSON object body, checked only where the proxy relies on a field.

Everything else in the body (tools, response_format, n, logprobs, unknown fields) is the upstream's
business and passes through untouched. Errors name the field in `param`.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from proxy.errors import bad_request


async def read_json_object(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(
            f"We could not parse the JSON body of your request ({exc.msg} at position {exc.pos}).",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return data


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )


def require_string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise bad_request(
            f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
        )
    if not isinstance(value, str) or not value:
        raise bad_request(
            f"Invalid type for '{name}': expected a non-empty string, but got {_type_name(value)}.",
            param=name,
            code="invalid_type",
        )
    return value


def optional(body: dict[str, Any], name: str, kind: type, expected: str) -> Any:
    value = body.get(name)
    if value is None or isinstance(value, kind):
        return value
    raise bad_request(
        f"Invalid type for '{name}': expected {expected}, but got {_type_name(value)}.",
        param=name,
        code="invalid_type",
    )


class ChatRequest:
    """The few fields of a chat request the proxy itself uses (the body is kept as is)."""

    __slots__ = ("include_usage", "messages", "model", "stream", "user")

    def __init__(self, body: dict[str, Any]) -> None:
        self.model = require_string(body, "model")
        messages = body.get("messages")
        if messages is None:
            raise bad_request(
                "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
            )
        if not isinstance(messages, list):
            raise bad_request(
                f"Invalid type for 'messages': expected an array, but got {_type_name(messages)}.",
                param="messages",
                code="invalid_type",
            )
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise bad_request(
                    f"Invalid type for 'messages[{index}]': expected an object, "
                    f"but got {_type_name(message)}.",
                    param=f"messages[{index}]",
                    code="invalid_type",
                )
            if not isinstance(message.get("role"), str):
                raise bad_request(
                    f"Invalid value for 'messages[{index}].role': expected a string.",
                    param=f"messages[{index}].role",
                    code="invalid_type",
                )
        self.messages: list[dict[str, Any]] = messages
        self.stream: bool = bool(optional(body, "stream", bool, "a boolean"))
        options = optional(body, "stream_options", dict, "an object")
        self.include_usage = False
        if options is not None:
            include = options.get("include_usage")
            if include is not None and not isinstance(include, bool):
                raise bad_request(
                    "Invalid type for 'stream_options.include_usage': expected a boolean.",
                    param="stream_options.include_usage",
                    code="invalid_type",
                )
            self.include_usage = bool(include)
        self.user: str | None = optional(body, "user", str, "a string")


def check_embeddings(body: dict[str, Any]) -> str:
    """The model of an embeddings request; `input` must be present (its shapes are the upstream's)."""
    model = require_string(body, "model")
    if body.get("input") is None:
        raise bad_request(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise bad_request(
            "Invalid value for 'encoding_format': expected 'float' or 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    return model
