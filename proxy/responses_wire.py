"""The Responses API on the wire (POST /v1/responses): what the proxy reads of a request body, the answer
read from a response's output items, and its stream's framing and error event.

Request: only what the proxy relies on is checked (`model`, `input`'s shape as far as memory reads it,
`stream`, `user`); everything else (`instructions`, `tools`, `previous_response_id`, `store`,
`conversation`, `text`, `reasoning`, unknown fields) is the upstream's business and is forwarded as the
client sent it. Errors are the API's HTTP error envelope, `{"error": {"message", "type", "param",
"code"}}` (as on every OpenAI endpoint), naming the field (`input[2].content`).

Stream: each event goes out as `event: <type>` + `data: <payload as received>`, as the API frames it;
there is no `[DONE]`. An error after the first byte is the API's `error` event (openai-python's
ResponseErrorEvent: `{"type": "error", "code", "message", "param", "sequence_number"}`).

The answer written back: the output items' `output_text` parts (assistant messages) and function calls,
from the non-streamed response, or from the stream's `response.completed` (or `response.incomplete`)
event, falling back to the `response.output_text.delta` events when that carries no output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, cast

import orjson
from pydantic import (
    ConfigDict,
    PlainValidator,
    StrictBool,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from proxy.wire import UserId, WireModel, invalid_input, json_type

# Terminal events after which the answer is complete (write-back runs before they are relayed).
FINISHED = ("response.completed", "response.incomplete")
FAILED = ("response.failed", "error")


def _string(obj: dict[str, Any], key: str, where: str, why: str) -> None:
    """`obj[key]` must be a string: a 400 naming `where` (missing, or another type) otherwise."""
    value = obj.get(key)
    if key not in obj:
        raise PydanticCustomError("missing_required_parameter", f"({why})", {"field": where})
    if not isinstance(value, str):
        raise PydanticCustomError(
            "invalid_type", "expected a string, but got {got}", {"got": json_type(value), "field": where}
        )


def _content_part(part: Any, where: str) -> None:
    if not isinstance(part, dict):
        raise PydanticCustomError(
            "invalid_type",
            "expected a content part (an object), but got {got}",
            {"got": json_type(part), "field": where},
        )
    _string(part, "type", f"{where}.type", "a content part names its type")


def _input_item(item: Any) -> Any:
    """An input item as far as memory reads it; kept as the client sent it."""
    if not isinstance(item, dict):
        raise PydanticCustomError(
            "invalid_type", "expected an input item (an object), but got {got}", {"got": json_type(item)}
        )
    kind = item.get("type")
    if kind is not None and not isinstance(kind, str):
        raise PydanticCustomError(
            "invalid_type", "expected a string, but got {got}", {"got": json_type(kind), "field": "type"}
        )
    if kind is None and "role" not in item:
        raise PydanticCustomError(
            "invalid_value", "an input item has a `type`, or a `role` for a message", {"field": "type"}
        )
    if kind not in (None, "message"):
        return item  # function_call, function_call_output, reasoning, item_reference, ...: the upstream's
    _string(item, "role", "role", "a message has a role")
    content = item.get("content")
    if isinstance(content, list):
        for index, part in enumerate(content):
            _content_part(part, f"content[{index}]")
    elif "content" not in item:
        raise PydanticCustomError(
            "missing_required_parameter", "(a message has a content)", {"field": "content"}
        )
    elif not isinstance(content, str):
        raise PydanticCustomError(
            "invalid_type",
            "expected a string or an array of content parts, but got {got}",
            {"got": json_type(content), "field": "content"},
        )
    return item


def _input(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise PydanticCustomError(
            "invalid_type",
            "expected a string or an array of input items, but got {got}",
            {"got": json_type(value)},
        )
    handler(value)
    return value  # the client's own list and items


InputItems = list[Annotated[Any, PlainValidator(_input_item)]]


class ResponsesRequest(WireModel):
    """The fields of a Responses request the proxy reads. `ResponsesRequest(body)` validates; the body
    itself is what goes upstream (memory's block added to `input`)."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[str, StringConstraints(min_length=1)]
    # A string or a list of items (`_input` lets a string through before the list is validated).
    input: Annotated[InputItems, WrapValidator(_input)] | None = None
    stream: StrictBool | None = None
    user: UserId | None = None

    def __init__(self, body: Mapping[str, Any], /) -> None:
        try:
            self.__pydantic_validator__.validate_python(body, self_instance=self)
        except ValidationError as exc:
            raise invalid_input(exc) from None


# -- the answer ---------------------------------------------------------------------------------------


def output_of(response: Any) -> tuple[str, list[dict[str, Any]]]:
    """The assistant's text (its messages' output_text parts, a line between messages) and function
    calls (as chat tool calls) of a response object; tolerant of odd shapes."""
    if not isinstance(response, dict) or not isinstance(response.get("output"), list):
        return "", []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response["output"]:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message" and item.get("role", "assistant") == "assistant":
            parts = item.get("content") if isinstance(item.get("content"), list) else []
            text = "".join(
                p["text"]
                for p in cast("list[Any]", parts)
                if isinstance(p, dict) and p.get("type") == "output_text" and isinstance(p.get("text"), str)
            )
            if text:
                texts.append(text)
        elif item.get("type") == "function_call":
            function = {"name": str(item.get("name") or ""), "arguments": str(item.get("arguments") or "")}
            calls.append({"id": item.get("call_id"), "type": "function", "function": function})
    return "\n".join(texts), calls


class ResponsesAssembler:
    """The answer of a streamed response, from its events (see the module's docstring)."""

    def __init__(self) -> None:
        self._deltas: list[str] = []
        self._response: Any = None
        self.finished = False  # response.completed / response.incomplete seen
        self.failed = False  # response.failed or an error event seen: nothing is written back

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "response.output_text.delta":
            delta = event.get("delta")
            if isinstance(delta, str):
                self._deltas.append(delta)
        elif kind in FINISHED:
            self.finished = True
            self._response = event.get("response")
        elif kind in FAILED:
            self.failed = True

    @property
    def answer(self) -> tuple[str, list[dict[str, Any]]]:
        text, calls = output_of(self._response)
        return (text or "".join(self._deltas)), calls


# -- the stream ---------------------------------------------------------------------------------------


def event_frame(payload: bytes, event: dict[str, Any]) -> bytes:
    """One event as the API frames it: its type on an `event:` line, the payload as received."""
    kind = event.get("type")
    if isinstance(kind, str) and kind and "\n" not in kind and "\r" not in kind:
        return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"
    return b"data: " + payload + b"\n\n"


def error_event(message: str, *, code: str | None, sequence_number: int, param: str | None = None) -> bytes:
    """The API's `error` event, framed."""
    event: dict[str, Any] = {"type": "error", "code": code, "message": message, "param": param}
    event["sequence_number"] = sequence_number
    return event_frame(orjson.dumps(event), event)


def early_error(event: dict[str, Any]) -> tuple[int, bytes] | None:
    """When the first event of a stream is an error, the HTTP status and error envelope to answer with
    instead (the upstream failed before anything was sent)."""
    if event.get("type") == "error":
        code = event.get("code")
        status = 429 if code == "rate_limit_exceeded" else 502
        message = event.get("message") if isinstance(event.get("message"), str) else "upstream error"
        error = {"message": message, "type": "upstream_error", "param": event.get("param"), "code": code}
        return status, orjson.dumps({"error": error})
    envelope = event.get("error")
    if isinstance(envelope, dict) and "type" not in event:  # a chat-style error envelope as an event
        status = next(
            (
                v
                for k in ("status", "status_code", "code")
                if isinstance(v := envelope.get(k), int) and v >= 400
            ),
            502,
        )
        return (status if status < 600 else 502), orjson.dumps(event)
    return None
