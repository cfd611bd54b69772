"""Cancel work when the client goes away before the answer starts.

Once the body has been read, the next ASGI `receive()` only returns when the client disconnects, so
waiting on it beside the upstream call tells us when to cancel that call (which closes its
connection, so the upstream sees the cancellation too). During streaming Starlette's
StreamingResponse does the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientDisconnected(Exception):
    pass


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(receive: Receive, awaitable: Awaitable[T]) -> T:
    """Await `awaitable`, cancelling it (and raising ClientDisconnected) if the client disconnects first."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        watcher.cancel()
        raise
    if work.done():
        watcher.cancel()
        return work.result()
    work.cancel()
    await asyncio.wait((work,))
    if not work.cancelled():
        work.exception()  # retrieved, so asyncio does not warn about it
    raise ClientDisconnected
