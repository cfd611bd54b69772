"""One plain ASGI middleware for every HTTP request: request id, body limit, metrics, last-resort errors.

- `x-request-id` on every response: the client's own when it is sane, else a new one; routes read it
  from `request.state.request_id`.
- The body limit: a Content-Length over the limit is refused before reading; a body that grows past
  it while being read raises `BodyTooLarge`; both answer 413 in the OpenAI envelope.
- Metrics: requests and latency by tenant (`request.state.tenant`, set by auth) and route template.
- An exception nobody handled becomes an error envelope if no byte was sent yet (the message stays in
  the log, which never holds bodies): 507 for a full disk, 503 for an unreachable database
  (proxy.errors.storage_error), else 500.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memos import exception_summary
from proxy.errors import error_envelope, server_error
from proxy.metrics import NO_TENANT, Metrics

log = logging.getLogger(__name__)

_SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


class BodyTooLarge(Exception):
    pass


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


class ProxyMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id: str | None = None
        content_length: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _SANE_REQUEST_ID.match(value):
                    request_id = value.decode("ascii")
            elif name == b"content-length":
                content_length = value
        if request_id is None:
            request_id = new_request_id()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        rid_header = (b"x-request-id", request_id.encode("ascii"))
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        limit = self.max_body_bytes
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        try:
            if content_length is not None and content_length.isdigit() and int(content_length) > limit:
                raise BodyTooLarge
            await self.app(scope, limited_receive, send_with_id)
        except BodyTooLarge:
            if response_started:
                raise
            await _send_error(
                send_with_id, 413, f"Request body is larger than {limit} bytes.", "request_too_large"
            )
        except Exception as exc:
            error = server_error(exc)  # a storage failure answers 507/503, anything else 500
            log.error(
                "unhandled error (request %s, answered %d): %s",
                request_id,
                error.status,
                exception_summary(exc),
            )
            if response_started:
                raise
            await _send_error(
                send_with_id, error.status, error.message, str(error.code), error.type, error.headers
            )
        finally:
            route = scope.get("route")
            self.metrics.observe_request(
                state.get("tenant", NO_TENANT),
                getattr(route, "path", "unmatched"),
                scope["method"],
                status,
                time.perf_counter() - started,
            )


async def _send_error(
    send: Send,
    status: int,
    message: str,
    code: str,
    type: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> None:
    body = orjson.dumps(error_envelope(message, type=type, code=code))
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
