"""Reading the OpenAI wire format: a JSON object body, checked only where the proxy relies on a field.

Everything else in the body (tools, response_format, n, logprobs, unknown fields) is the upstream's
business and passes through untouched. Errors name the field in `param`.

Bodies (and queries) are read through pydantic models, WireModel: ChatRequest here, the memory API's in
proxy/memory_wire.py. `parse` reads one; `invalid_input` is the one place a ValidationError becomes the
400 envelope. A model validates and reads; what is forwarded upstream is still the client's own body.

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

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar, cast, get_args
from urllib.parse import parse_qsl

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    PlainValidator,
    StrictBool,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)
from pydantic_core import PydanticCustomError
from starlette.requests import Request
from typing_extensions import TypedDict

from memos import USER_ID_MAX_CHARS, USER_ID_PATTERN, json_shape_problem, user_id_problem
from proxy.errors import ApiError, bad_request

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
    return value


def header_value(request: Request, name: str) -> str | None:
    """A header's raw bytes read as UTF-8, None when it is absent or empty; a 400 when not UTF-8."""
    raw = request.headers.get(name)
    if not raw:
        return None
    try:
        # Starlette decodes header bytes as latin-1, which gives the raw bytes back losslessly.
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(
            f"Invalid value for header {name}: it must be UTF-8.", param=name, code="invalid_value"
        ) from None


def header_user(request: Request) -> str | None:
    """The user named by `X-Memos-User` (raw bytes as UTF-8), None when the header is absent or empty.

    Empty counts as absent: clients that template the header send it empty when they have no user."""
    value = header_value(request, USER_HEADER)
    return None if value is None else user_id(value, USER_HEADER)


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


def json_type(value: Any) -> str:
    """The JSON type of a parsed value, for messages (`object`, `array`, `number`, ...)."""
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
            f"Invalid type for '{name}': expected a non-empty string, but got {json_type(value)}.",
            param=name,
            code="invalid_type",
        )
    return value


# ---------------------------------------------------------------------------------------------- models
#
# Request bodies (and queries) are read through pydantic models: the model validates, and its JSON
# schema is what the OpenAPI document publishes (proxy/openapi.py). A ValidationError becomes the
# 400 envelope in one place, `invalid_input`: the first error, its location as `param`
# (`memories[3].text`), a message naming the field and never echoing its value.
#
# Validators that need their own words raise PydanticCustomError with one of the envelope's codes as
# its type (ErrorCode) and a reason as its message; a model-level rule names its field with
# `ctx["field"]`.

ErrorCode = Literal["invalid_type", "invalid_value", "missing_required_parameter", "invalid_request"]
_CUSTOM_CODES: frozenset[str] = frozenset(get_args(ErrorCode))

# What a pydantic type error expected, in the wire's words.
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}
# Why a string did not match a pattern, by pattern (see `matching`).
_PATTERN_REASONS: dict[str, str] = {}


def no_bool(value: Any) -> Any:
    # JSON's true is not 1 here (pydantic's lax integers would take it); numeric strings still are.
    if isinstance(value, bool):
        raise PydanticCustomError("invalid_type", "expected an integer, but got boolean")
    return value


def matching(pattern: str, reason: str) -> StringConstraints:
    """A pattern that both validates a string and is published in the schema; `reason` is what the
    client reads when a value does not match (a pattern itself says little)."""
    _PATTERN_REASONS[pattern] = reason
    return StringConstraints(pattern=pattern)


def _value_reason(kind: str, ctx: Mapping[str, Any], msg: str) -> str:
    if kind in ("too_short", "string_too_short"):
        unit = "characters" if kind.startswith("string") else "items"
        n = ctx["min_length"]
        return "must not be empty" if n == 1 else f"must have at least {n} {unit}"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters long"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "less_than_equal": ("at most", "le"),
        "greater_than": ("greater than", "gt"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx[key]}"
    if kind in ("literal_error", "enum"):
        return f"expected {ctx['expected']}"
    if kind == "string_pattern_mismatch":
        return _PATTERN_REASONS.get(ctx["pattern"], f"must match the pattern {ctx['pattern']!r}")
    if kind == "finite_number":
        return "must be a finite number"
    return msg[:1].lower() + msg[1:]


def invalid_input(exc: ValidationError) -> ApiError:
    """The 400 a ValidationError answers: its first error, named by where it is in the body."""
    error = exc.errors(include_url=False)[0]
    kind, ctx = error["type"], error.get("ctx") or {}
    loc = [*error["loc"], *([ctx["field"]] if "field" in ctx else [])]
    param = field_path(loc) or None
    where = f"'{param}'" if param else "the request body"
    code: str | None
    if kind in _CUSTOM_CODES:  # a validator's own words
        reason = error["msg"]
        code, message = {
            "invalid_type": (kind, f"Invalid type for {where}: {reason}."),
            "invalid_value": (kind, f"Invalid value for {where}: {reason}."),
            "missing_required_parameter": (kind, f"Missing required parameter: {where} {reason}."),
            "invalid_request": (None, f"{reason}."),
        }[kind]
    elif kind == "missing":
        code, message = "missing_required_parameter", f"Missing required parameter: {where}."
    elif kind == "extra_forbidden":
        code, message = "unknown_parameter", f"Unknown parameter: {where}."
    elif kind in _EXPECTED:
        got = json_type(error["input"])
        code, message = (
            "invalid_type",
            f"Invalid type for {where}: expected {_EXPECTED[kind]}, but got {got}.",
        )
    else:
        code = "invalid_value"
        message = f"Invalid value for {where}: {_value_reason(kind, ctx, error['msg'])}."
    return bad_request(message, param=param, code=code)


class WireModel(BaseModel):
    """A request body or query as the proxy reads it (unknown fields ignored unless a model says)."""

    model_config = ConfigDict(frozen=True)


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Mapping[str, Any]) -> M:
    """`data` read as `model`, or the 400 that says what is wrong with it."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc) from None


def parse_query(request: Request, model: type[M]) -> M:
    """The query parameters a model names (each decoded strictly, see `query_param`), read as it."""
    data = {name: value for name in model.model_fields if (value := query_param(request, name)) is not None}
    return parse(model, data)


def _user_id(value: Any) -> str:
    problem = user_id_problem(value)
    if problem is not None:
        raise PydanticCustomError("invalid_value", "a user id {problem}", {"problem": problem})
    return value


USER_ID_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": USER_ID_MAX_CHARS,
    "pattern": USER_ID_PATTERN,
    "description": f"A user id: 1 to {USER_ID_MAX_CHARS} characters, no control characters (NUL "
    "included), not only whitespace. The same rule holds for the chat body's `user` and X-Memos-User.",
}
# One rule wherever a user id comes from (memos.limits.user_id_problem, as `user_id` for headers and
# queries), published from the same constants.
UserId = Annotated[str, PlainValidator(_user_id), WithJsonSchema(USER_ID_SCHEMA)]


def _as_sent(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validated, but kept as the client sent it (the same object, key order and all)."""
    handler(value)
    return value


class ChatMessage(TypedDict):
    """A chat message as far as the proxy reads it: an object with a string `role`."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]

    role: str


class StreamOptions(WireModel):
    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool | None = None


class ChatRequest(WireModel):
    """The fields of a chat request the proxy itself reads. `ChatRequest(body)` validates; the body
    itself (unknown fields, tools, response_format, ...) is forwarded as the client sent it, and
    `messages` holds the client's own message objects."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[str, StringConstraints(min_length=1)]
    messages: list[Annotated[ChatMessage, WrapValidator(_as_sent)]]
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    user: UserId | None = None

    def __init__(self, body: Mapping[str, Any], /) -> None:
        try:
            self.__pydantic_validator__.validate_python(body, self_instance=self)
        except ValidationError as exc:
            raise invalid_input(exc) from None

    @property
    def sent_messages(self) -> list[dict[str, Any]]:
        """The client's own message objects (`_as_sent` keeps them, not a validated copy)."""
        return cast("list[dict[str, Any]]", self.messages)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options is not None and self.stream_options.include_usage)


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
