"""Reading the OpenAI wire format: a JSON object body, checked only where the proxy relies on a field.

Everything else in the body (tools, response_format, n, logprobs, unknown fields) is the upstream's
business and passes through untouched. Errors name the field in `param`.

Every JSON body read here (and every JSON body relayed, see `check_json_shape`) is bounded in shape:
containers nest at most MAX_JSON_DEPTH levels (the body object is level 1) and no array or object
has more than MAX_JSON_ITEMS members. Deeper bodies could not be re-encoded for the upstream or the
outbox (orjson stops at 255 levels), so they are refused here with a 400 naming the field.

User ids follow one rule (memos.limits) wherever they come from. `X-Memos-User` is read as UTF-8:
the header's raw bytes are decoded as UTF-8 (no percent-decoding), so the same name sent in the
header and in a body's `user` is the same user; bytes that are not UTF-8 are a 400, and so is a
header that is present but empty.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request

from memos.limits import json_shape_problem, user_id_problem
from proxy.errors import bad_request

MAX_JSON_DEPTH = 64
MAX_JSON_ITEMS = 100_000
USER_HEADER = "X-Memos-User"


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
    check_json_shape(body, data)
    return data


def check_json_shape(raw: bytes, data: Any) -> None:
    """400 when a parsed JSON body breaks the depth or member limits (names the field)."""
    # Fast path, almost every body: fewer brackets than the depth limit cannot nest deeper, and no
    # container has more members than there are commas plus one (brackets and commas inside strings
    # only overcount).
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH and raw.count(b",") < MAX_JSON_ITEMS:
        return
    found = json_shape_problem(data, max_depth=MAX_JSON_DEPTH, max_items=MAX_JSON_ITEMS)
    if found is None:
        return
    path, reason = found
    # The first three steps name the field (`messages[0].content`, `memories[0].metadata`); the
    # rest of a path that deep says nothing more.
    param = field_path(path[:3]) or None
    where = f"'{param}'" if param else "The request body"
    raise bad_request(
        f"{where} {reason} (JSON bodies nest at most {MAX_JSON_DEPTH} levels and hold at most "
        f"{MAX_JSON_ITEMS} members per array or object).",
        param=param,
        code="invalid_value",
    )


def field_path(path: list[str | int]) -> str:
    """`["memories", 0, "metadata"]` -> `memories[0].metadata`."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def user_id(value: Any, param: str) -> str:
    """`value` if it is a valid user id (memos.limits), else a 400 naming `param`."""
    problem = user_id_problem(value)
    if problem is not None:
        raise bad_request(
            f"Invalid value for '{param}': a user id {problem}.", param=param, code="invalid_value"
        )
    return value  # type: ignore[no-any-return]


def header_user(request: Request) -> str | None:
    """The user named by `X-Memos-User` (raw bytes as UTF-8), None when the header is absent or empty.

    Empty counts as absent: clients that template the header send it empty when they have no user."""
    raw = request.headers.get(USER_HEADER)
    if not raw:
        return None
    try:
        # Starlette decodes header bytes as latin-1, which gives the raw bytes back losslessly.
        value = raw.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(
            f"Invalid value for header {USER_HEADER}: it must be UTF-8.",
            param=USER_HEADER,
            code="invalid_value",
        ) from None
    return user_id(value, USER_HEADER)


def query_param(request: Request, name: str) -> str | None:
    """A query parameter decoded strictly (percent-escapes must spell UTF-8), the last one if repeated.

    Starlette's own decoding replaces bad bytes with U+FFFD, which would make different raw values
    the same one."""
    found: str | None = None
    # latin-1 keeps every byte as it came; only the parameter asked for is then read as UTF-8.
    for key, value in parse_qsl(
        request.scope["query_string"].decode("latin-1"), keep_blank_values=True, encoding="latin-1"
    ):
        if key == name:
            found = value
    if found is None:
        return None
    try:
        return found.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(
            f"Invalid value for '{name}': percent-escapes must spell UTF-8.", param=name, code="invalid_value"
        ) from None


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
        user = body.get("user")
        self.user: str | None = None if user is None else user_id(user, "user")


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
