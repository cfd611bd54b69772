"""An httpx transport over aiohttp's connection pool: httpx requests and responses, aiohttp sockets.

httpx's own pool (httpcore 1.0) does per-request bookkeeping that grows with the number of pooled
connections (encode/httpx#3215), which a proxy under concurrent load pays on every call; aiohttp's
pool and C parser cost a fraction of it. The upstream code keeps speaking httpx (and tests keep
using httpx.MockTransport); only the transport is swapped, as httpx intends.

Errors are mapped to httpx's exceptions (ConnectError, ConnectTimeout, ReadTimeout, ReadError,
RemoteProtocolError) so callers handle one family. Timeouts come from the request's "timeout"
extension: connect (also waiting for a pooled connection) and read (between two received pieces).

Pooled connections the upstream closed. Servers close idle keep-alive connections on their own
timer (uvicorn, Node.js and Apache after 5 s, gunicorn 2 s, nginx 75 s), without a word. When that
close meets our reuse of the connection, the request goes into a dead socket and fails with a reset
or a disconnect (seen as 502 "upstream unreachable (ReadError)" under load, where the event loop
lags behind the close it has not processed yet). Three layers keep that from reaching a client:
- the pool forgets idle connections after `keepalive_expiry` (4 s by default: before the common
  5 s server timers fire);
- a pooled connection is probed before reuse (a non-blocking MSG_PEEK on its socket): one whose
  peer already closed it (EOF, reset, or bytes nobody asked for) is dropped, never written to;
- a request is retried once, on a new connection outside the pool, when the upstream application
  cannot have acted on it: it was not written whole (the connection closed under the write, the
  ReadError seen under load: "Can not write request body"; a server does not act on half a
  request), or it went out whole on a *reused* connection that broke before a single byte of an
  answer. That second case is the race above when the close was still on the wire; it is also
  what a server crash before answering looks like, which is why a connection's first request is
  never retried that way. Timeouts, connect errors and anything after the first byte of an answer
  (a drop mid-answer) are never retried: the upstream may have acted.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from aiohttp.abc import AbstractStreamWriter
from aiohttp.tracing import Trace

# Headers aiohttp computes itself from the URL and the body.
_OWN_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding"})


# Errnos of a connection the peer reset or closed under a write.
_BROKEN = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


@dataclass
class _Counts:
    stale_dropped: int = 0  # pooled connections found closed by the peer before reuse
    retried: int = 0  # requests sent again on a new connection


@dataclass
class _Attempt:
    written: bool  # the whole request was handed to the socket
    connected: bool = False  # a connection was got for it
    reused: bool = False  # ... one that had carried a request before


# Which connection the request in this task got: set by the connector, read by the retry decision.
_attempt: ContextVar[_Attempt | None] = ContextVar("memos_upstream_attempt", default=None)


class _PoolConnector(aiohttp.TCPConnector):
    """aiohttp's pool, telling reused connections apart and dropping those the peer has closed."""

    def __init__(self, counts: _Counts, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._used: weakref.WeakSet[Any] = weakref.WeakSet()
        self._counts = counts

    async def connect(  # aiohttp's signature (it passes `timeout` by name)
        self,
        req: aiohttp.ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109
    ) -> aiohttp.connector.Connection:
        # Each pass takes a pooled connection (finitely many) or makes a new one (returned).
        while True:
            conn = await super().connect(req, traces, timeout)
            proto = conn.protocol
            reused = proto is not None and proto in self._used
            if not reused or _peer_still_there(conn.transport):
                if proto is not None:
                    self._used.add(proto)
                attempt = _attempt.get()
                if attempt is not None:
                    attempt.connected, attempt.reused = True, reused
                return conn
            self._counts.stale_dropped += 1
            conn.close()


def _peer_still_there(transport: asyncio.BaseTransport | None) -> bool:
    """False when the peer has closed (or reset, or spoken on) an idle pooled connection.

    The event loop may not have processed the close yet (it lags under load): the kernel knows."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return True  # nothing to look at; the retry below still covers the race
    try:
        # A view of the same descriptor, detached again below, so it is never closed here.
        probe = socket.socket(sock.family, sock.type, 0, sock.fileno())
    except OSError:
        return False
    try:
        probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True  # nothing to read: still open
    except OSError:
        return False
    finally:
        probe.detach()
    return False  # EOF, or bytes on an idle connection (a server's parting 408): it is closing


class _RequestBody(aiohttp.BytesPayload):
    """The request's bytes (as aiohttp would wrap them), noting when all were handed to the socket.

    aiohttp writes the body in a task of its own, which sees the caller's _Attempt (tasks copy the
    context they are made in)."""

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        await super().write_with_length(writer, content_length)
        attempt = _attempt.get()
        if attempt is not None:
            attempt.written = True


def _never_answered(exc: aiohttp.ClientError, attempt: _Attempt) -> bool:
    """Whether a failed request cannot have been acted on by the upstream application (retry once)."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ServerTimeoutError):
        return False  # not connected (a retry would only connect again), or it went quiet: no
    if not attempt.connected:
        return False
    if not attempt.written:
        return True  # the connection broke under the write: the upstream has half a request at most
    if not attempt.reused:
        return False
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return isinstance(exc.message, str)  # closed before any answer (not a partly read one)
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno in _BROKEN


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, max_connections: int = 512, keepalive_expiry: float = 4.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None  # for retries: a new connection each
        self._loop: asyncio.AbstractEventLoop | None = None
        self._counts = _Counts()

    @property
    def stale_dropped(self) -> int:
        return self._counts.stale_dropped

    @property
    def retried(self) -> int:
        return self._counts.retried

    def _sessions(self) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
        # Made on first use inside the running event loop, which aiohttp binds them to; a caller on
        # another loop (a CLI's asyncio.run, say) gets its own sessions for that loop.
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._loop = loop
            self._session = self._new_session(
                _PoolConnector(
                    self._counts,
                    limit=self._max_connections,
                    keepalive_timeout=self._keepalive_expiry,
                    enable_cleanup_closed=False,
                )
            )
            self._fresh = self._new_session(
                aiohttp.TCPConnector(limit=self._max_connections, force_close=True)
            )
        assert self._fresh is not None
        return self._session, self._fresh

    @staticmethod
    def _new_session(connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # httpx decodes (or the passthrough relays the encoded bytes)
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        client_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeout.get("pool"),
            sock_connect=timeout.get("connect"),
            sock_read=timeout.get("read"),
        )
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in _OWN_HEADERS
        ]
        pooled, fresh = self._sessions()
        content = request.content or None
        args: dict[str, Any] = {
            "method": request.method,
            "url": str(request.url),
            "headers": headers,
            "allow_redirects": False,
            "timeout": client_timeout,
            "compress": None,
        }
        # Without a body there is nothing to see written; only the reused-connection rule applies.
        attempt = _Attempt(written=content is None)
        token = _attempt.set(attempt)
        try:
            with _mapped():
                try:
                    response = await pooled.request(
                        data=_RequestBody(content) if content is not None else None, **args
                    )
                except aiohttp.ClientError as exc:
                    if not _never_answered(exc, attempt):
                        raise
                    self._counts.retried += 1
                    response = await fresh.request(data=content, **args)
        finally:
            _attempt.reset(token)
        return httpx.Response(
            status_code=response.status,
            headers=[(k, v) for k, v in response.raw_headers],
            stream=_ResponseStream(response),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped():
            async for piece in self._response.content.iter_any():
                yield piece

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # fully read: the connection goes back to the pool
        else:
            self._response.close()  # abandoned mid-answer (e.g. the client left): drop the connection


@contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:  # connecting, or waiting for a pooled connection
        raise httpx.ConnectTimeout(str(exc) or "connect timeout") from exc
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:  # nothing received for `read` seconds
        raise httpx.ReadTimeout(str(exc) or "read timeout") from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc)) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise httpx.RemoteProtocolError(str(exc)) from exc
    except aiohttp.ClientError as exc:
        raise httpx.ReadError(str(exc)) from exc
