"""Reading an upstream's EventStream as the relaying routes do: each event parsed once (its payload bytes
kept for relaying untouched), the first one awaited before the answer starts (so that an upstream failing
early keeps its HTTP status), and the stream closed shielded from cancellation (closing it cancels the
upstream call)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

import anyio
import orjson

from memos import exception_summary
from proxy.upstream.base import EventStream, UpstreamError

log = logging.getLogger(__name__)

Event = tuple[bytes, dict[str, Any]]  # the payload as received, and what it says


def parsed(payload: bytes) -> Event:
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("upstream sent an event that is not JSON") from exc
    if not isinstance(event, dict):
        raise UpstreamError("upstream sent an event that is not a JSON object")
    return payload, event


async def next_event(events: EventStream) -> Event | None:
    try:
        payload = await events.__anext__()
    except StopAsyncIteration:
        return None
    return parsed(payload)


async def open_stream(opening: Awaitable[EventStream]) -> tuple[EventStream, Event | None]:
    """The stream and its first event (None: it ended at once)."""
    events = await opening
    try:
        return events, await next_event(events)
    except BaseException:
        await close_stream(events)
        raise


async def close_stream(events: EventStream) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await events.aclose()
        except Exception as exc:
            log.debug("closing an upstream stream failed: %s", exception_summary(exc))
