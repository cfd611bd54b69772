"""POST /v1/chat/completions: auth, memory around the call, the upstream call, SSE relayed as it arrives.

Streaming: the first upstream event is awaited before the response starts, so an upstream that fails
early keeps its HTTP status; then events are relayed as they come (payload bytes untouched), the
usage chunk (`choices == []`) is sent last, memory's `complete()` runs, and only then `data: [DONE]`.
An error after the first byte is sent as a `data: {"error": ...}` event (no [DONE]). When the client
goes away the upstream call is cancelled (its connection closed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from memos import ApiShape, FinishedExchange, exception_summary
from proxy import memory_call
from proxy.auth import authenticate
from proxy.disconnect import ClientDisconnected, until_disconnect
from proxy.errors import (
    ApiError,
    client_gone_response,
    error_envelope,
    raw_json_response,
    upstream_error_response,
)
from proxy.services import Services
from proxy.sse import (
    DONE,
    SSE_HEADERS,
    StreamAssembler,
    error_event_status,
    frame,
    frame_json,
    is_usage_only,
    message_of,
)
from proxy.targets import upstream_target
from proxy.upstream.base import ChatCall, EventStream, Upstream, UpstreamError, UpstreamHTTPError
from proxy.upstream.events import Event, close_stream, next_event, open_stream, parsed
from proxy.wire import ChatRequest, read_json_object

log = logging.getLogger(__name__)

ROUTE = "/v1/chat/completions"


def routes() -> list[BaseRoute]:
    return [Route(ROUTE, chat_completions, methods=["POST"])]


async def chat_completions(request: Request) -> Response:
    services: Services = request.app.state.services
    caller = await authenticate(request, services)
    body = await read_json_object(request)
    chat = ChatRequest(body)
    admitted = memory_call.admit(request, services, caller, body, chat.model)
    kind, upstream = admitted.kind, admitted.upstream

    # What was asked, before memory adds anything (a shallow copy: nothing may edit it afterwards).
    asked = list(chat.sent_messages)
    # MemoryUnavailable: 503 (fails closed)
    memory = await memory_call.plan(request, services, caller, body, admitted, ApiShape.CHAT)
    call = ChatCall(
        upstream_target(services.settings, caller, kind, request.headers),
        memory.plan.body,
        memory.ctx.request_id,
        local_memory=memory.plan.local,
    )
    relay = _Relay(services, request, memory, asked)
    if chat.stream:
        return await relay.stream(upstream, call)
    return await relay.once(upstream, call)


class _Relay:
    def __init__(
        self,
        services: Services,
        request: Request,
        memory: memory_call.MemoryCall,
        asked: list[dict[str, Any]],
    ) -> None:
        self.services = services
        self.request = request
        self.memory = memory
        self.ctx = memory.ctx
        self.plan = memory.plan
        self.asked = asked
        self.headers = memory.headers
        self.tenant = memory.principal.tenant

    def _upstream_failed(self, exc: UpstreamError) -> Response:
        self.services.metrics.upstream_error(self.tenant, ROUTE, exc.kind)
        return upstream_error_response(exc, self.headers)

    async def _complete(self, text: str, tool_calls: list[dict[str, Any]]) -> None:
        """Hand the finished exchange to memory; raises ApiError(503) if it cannot be recorded."""
        exchange = FinishedExchange(request_messages=self.asked, assistant_text=text, tool_calls=tool_calls)
        await memory_call.record(self.services, self.memory, exchange)

    async def once(self, upstream: Upstream, call: ChatCall) -> Response:
        started = time.perf_counter()
        try:
            reply = await until_disconnect(self.request.receive, upstream.chat(call))
        except UpstreamError as exc:
            return self._upstream_failed(exc)
        except ClientDisconnected:
            return client_gone_response()
        self.services.metrics.observe_upstream(self.tenant, ROUTE, time.perf_counter() - started)
        if self.plan.writes:
            try:
                text, tool_calls = message_of(reply.data)
            except orjson.JSONDecodeError:
                return self._upstream_failed(UpstreamHTTPError(502, reply.content))
            await self._complete(text, tool_calls)
        return raw_json_response(reply.content, reply.status, {**reply.headers, **self.headers})

    async def stream(self, upstream: Upstream, call: ChatCall) -> Response:
        started = time.perf_counter()
        try:
            events, first = await until_disconnect(
                self.request.receive, open_stream(upstream.chat_stream(call))
            )
        except UpstreamError as exc:
            return self._upstream_failed(exc)
        except ClientDisconnected:
            return client_gone_response()
        self.services.metrics.observe_upstream(self.tenant, ROUTE, time.perf_counter() - started)
        if first is not None:
            status = error_event_status(first[1])
            if status is not None:
                await close_stream(events)
                return self._upstream_failed(UpstreamHTTPError(status, first[0]))
        return StreamingResponse(
            self._events(events, first),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **self.headers},
        )

    async def _events(self, events: EventStream, first: Event | None) -> AsyncIterator[bytes]:
        assembler = StreamAssembler() if self.plan.writes else None
        usage: bytes | None = None
        # Events that arrived together go out in one write (an optional method of the stream).
        drain: Callable[[], list[bytes]] | None = getattr(events, "drain", None)
        out: list[bytes] = []  # frames not yet written
        try:
            current = first
            while current is not None:
                burst = iter(drain() if drain is not None else ())
                item: Event | None = current
                while item is not None:
                    payload, chunk = item
                    if error_event_status(chunk) is not None:
                        self.services.metrics.upstream_error(self.tenant, ROUTE, "stream_error")
                        out.append(frame(payload))
                        yield b"".join(out)
                        return
                    if is_usage_only(chunk):
                        usage = payload  # held back: the usage chunk goes last
                    else:
                        if assembler is not None:
                            assembler.add(chunk)
                        out.append(frame(payload))
                    following = next(burst, None)
                    item = parsed(following) if following is not None else None
                if out:
                    data = b"".join(out)
                    out.clear()
                    yield data
                current = await next_event(events)
            if usage is not None:
                yield frame(usage)
            if assembler is not None:
                await self._complete(assembler.text, assembler.tool_calls)
            yield DONE
        except UpstreamError as exc:
            self.services.metrics.upstream_error(self.tenant, ROUTE, exc.kind)
            yield b"".join(out) + frame_json(exc.envelope())
        except ApiError as exc:
            yield b"".join(out) + frame_json(exc.envelope())
        except Exception as exc:
            log.error("stream relay failed (request %s): %s", self.ctx.request_id, exception_summary(exc))
            envelope = error_envelope("Internal error.", type="server_error", code="internal_error")
            yield b"".join(out) + frame_json(envelope)
        finally:
            await close_stream(events)
