"""POST /v1/responses: the Responses API with memory, as chat completions have it.

The same headers, policy, ACL, audit, outbox and write-back as /v1/chat/completions, through the same
planner (`memos` reads the body as the Responses API's, `ApiShape.RESPONSES`: the turns are `input`'s
items, the block is a system input item after the client's leading system/developer items, and
`instructions` stays where the client put it). Everything else in the body (`previous_response_id`,
`store`, `conversation`, tools, ...) goes upstream untouched; what is written back is this request's
input and the answer, never history held upstream.

Non-streamed: the upstream's response is relayed byte for byte, after the exchange was recorded.
Streamed: the first event is awaited before the answer starts (an upstream failing early keeps its HTTP
status); events are relayed as they come, their payloads untouched (`event: <type>` + `data:`); the
exchange is recorded before `response.completed` (or `response.incomplete`) is relayed, so nothing
acknowledged is lost. An error after the first byte is the API's `error` event. A `response.failed`
or `error` event from the upstream is relayed as it is and nothing is written back.

Models served by the local runtime (`local/<name>`) or through litellm are refused with a 400 that
says so: those upstreams speak chat completions only, and answering without memory would be silent.
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

from memos import ApiShape, FinishedExchange, conversation_of, exception_summary
from proxy import memory_call
from proxy.auth import authenticate
from proxy.disconnect import ClientDisconnected, until_disconnect
from proxy.errors import (
    ApiError,
    bad_request,
    client_gone_response,
    raw_json_response,
    upstream_error_response,
)
from proxy.responses_wire import (
    FINISHED,
    ResponsesAssembler,
    ResponsesRequest,
    early_error,
    error_event,
    event_frame,
    output_of,
)
from proxy.services import Services
from proxy.sse import SSE_HEADERS
from proxy.targets import upstream_target
from proxy.upstream.base import ChatCall, EventStream, ResponsesUpstream, UpstreamError, UpstreamHTTPError
from proxy.upstream.events import Event, close_stream, next_event, open_stream, parsed
from proxy.upstream.router import UpstreamKind
from proxy.wire import read_json_object

log = logging.getLogger(__name__)

ROUTE = "/v1/responses"
_SERVED_BY = {UpstreamKind.LOCAL: "the local runtime", UpstreamKind.LITELLM: "the litellm adapter"}


def routes() -> list[BaseRoute]:
    # Only the creation of a response: GET/DELETE /v1/responses/{id}, its input_items and cancel are
    # relayed by the passthrough (no memory is involved in reading a stored response).
    return [Route(ROUTE, create_response, methods=["POST"])]


async def create_response(request: Request) -> Response:
    services: Services = request.app.state.services
    caller = await authenticate(request, services)
    body = await read_json_object(request)
    wire = ResponsesRequest(body)
    admitted = memory_call.admit(request, services, caller, body, wire.model)
    kind, upstream = admitted.kind, admitted.upstream
    if kind in _SERVED_BY or not isinstance(upstream, ResponsesUpstream):
        raise bad_request(
            f"The model `{wire.model}` is served by {_SERVED_BY.get(kind, 'an upstream')}, which does not "
            f"serve the Responses API: call POST /v1/chat/completions for it.",
            param="model",
            code="unsupported_model",
        )

    # This request's turns, read before memory adds anything (write-back records these).
    asked = conversation_of(ApiShape.RESPONSES, body)
    # MemoryUnavailable: 503 (fails closed)
    memory = await memory_call.plan(request, services, caller, body, admitted, ApiShape.RESPONSES)
    call = ChatCall(
        upstream_target(services.settings, caller, kind, request.headers),
        memory.plan.body,
        memory.ctx.request_id,
    )
    relay = _Relay(services, request, memory, asked)
    if wire.stream:
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
        self.asked = asked
        self.headers = memory.headers
        self.tenant = memory.principal.tenant
        self.writes = memory.plan.writes

    def _upstream_failed(self, exc: UpstreamError) -> Response:
        self.services.metrics.upstream_error(self.tenant, ROUTE, exc.kind)
        return upstream_error_response(exc, self.headers)

    async def _record(self, answer: tuple[str, list[dict[str, Any]]]) -> None:
        """The exchange, durable when this returns; ApiError(503) if it cannot be recorded."""
        text, tool_calls = answer
        exchange = FinishedExchange(
            request_messages=list(self.asked), assistant_text=text, tool_calls=tool_calls
        )
        await memory_call.record(self.services, self.memory, exchange)

    async def once(self, upstream: ResponsesUpstream, call: ChatCall) -> Response:
        started = time.perf_counter()
        try:
            reply = await until_disconnect(self.request.receive, upstream.responses(call))
        except UpstreamError as exc:
            return self._upstream_failed(exc)
        except ClientDisconnected:
            return client_gone_response()
        self.services.metrics.observe_upstream(self.tenant, ROUTE, time.perf_counter() - started)
        if self.writes:
            try:
                response = reply.data
            except orjson.JSONDecodeError:
                return self._upstream_failed(UpstreamHTTPError(502, reply.content))
            if not (isinstance(response, dict) and response.get("status") == "failed"):
                await self._record(output_of(response))
        return raw_json_response(reply.content, reply.status, {**reply.headers, **self.headers})

    async def stream(self, upstream: ResponsesUpstream, call: ChatCall) -> Response:
        started = time.perf_counter()
        try:
            events, first = await until_disconnect(
                self.request.receive, open_stream(upstream.responses_stream(call))
            )
        except UpstreamError as exc:
            return self._upstream_failed(exc)
        except ClientDisconnected:
            return client_gone_response()
        self.services.metrics.observe_upstream(self.tenant, ROUTE, time.perf_counter() - started)
        if first is not None:
            failed = early_error(first[1])
            if failed is not None:
                await close_stream(events)
                return self._upstream_failed(UpstreamHTTPError(*failed))
        return StreamingResponse(
            self._events(events, first),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **self.headers},
        )

    async def _events(self, events: EventStream, first: Event | None) -> AsyncIterator[bytes]:
        assembler = ResponsesAssembler() if self.writes else None
        recorded = False
        sequence = -1  # the last sequence_number relayed (an error event of ours follows it)
        # Events that arrived together go out in one write (an optional method of the stream).
        drain: Callable[[], list[bytes]] | None = getattr(events, "drain", None)
        out: list[bytes] = []  # frames not yet written
        try:
            current = first
            while current is not None:
                burst = iter(drain() if drain is not None else ())
                item: Event | None = current
                while item is not None:
                    payload, event = item
                    if event.get("type") == "error":
                        self.services.metrics.upstream_error(self.tenant, ROUTE, "stream_error")
                    if assembler is not None:
                        assembler.add(event)
                        if event.get("type") in FINISHED and not assembler.failed and not recorded:
                            # Durable before the client sees the response complete.
                            if out:
                                yield b"".join(out)
                                out.clear()
                            await self._record(assembler.answer)
                            recorded = True
                    out.append(event_frame(payload, event))
                    number = event.get("sequence_number")
                    if isinstance(number, int) and not isinstance(number, bool):
                        sequence = number
                    following = next(burst, None)
                    item = parsed(following) if following is not None else None
                if out:
                    data = b"".join(out)
                    out.clear()
                    yield data
                current = await next_event(events)
            if assembler is not None and not recorded and not assembler.failed:
                await self._record(assembler.answer)  # a stream that ended without its terminal event
        except UpstreamError as exc:
            self.services.metrics.upstream_error(self.tenant, ROUTE, exc.kind)
            yield b"".join(out) + error_event(
                exc.message, code=exc.code or exc.kind, sequence_number=sequence + 1
            )
        except ApiError as exc:
            code = None if exc.code is None else str(exc.code)
            yield b"".join(out) + error_event(exc.message, code=code, sequence_number=sequence + 1)
        except Exception as exc:
            log.error(
                "stream relay failed (request %s): %s", self.memory.ctx.request_id, exception_summary(exc)
            )
            yield b"".join(out) + error_event(
                "Internal error.", code="internal_error", sequence_number=sequence + 1
            )
        finally:
            await close_stream(events)
