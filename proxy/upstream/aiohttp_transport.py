"""An httpx transport over aiohttp's connection pool: httpx requests and responses, aiohttp sockets.

httpx's own pool (httpcore 1.0) does per-request bookkeeping that grows with the number of pooled
connections (encode/httpx#3215), which a proxy under concurrent load pays on every call; aiohttp's
pool and C parser cost a fraction of it. The upstream code keeps speaking httpx (and tests keep
using httpx.MockTransport); only the transport is swapped, as httpx intends.

Errors are mapped to httpx's exceptions (ConnectError, ConnectTimeout, ReadTimeout, ReadError,
RemoteProtocolError) so callers handle one family. Timeouts come from the request's "timeout"
extension: connect (also waiting for a pooled connection) and read (between two received pieces).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx

# Headers aiohttp computes itself from the URL and the body.
_OWN_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding"})


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, max_connections: int = 512, keepalive_expiry: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Made on first use inside the running event loop, which aiohttp binds it to; a caller on
        # another loop (a CLI's asyncio.run, say) gets its own session for that loop.
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._loop = loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections,
                    keepalive_timeout=self._keepalive_expiry,
                    enable_cleanup_closed=False,
                ),
                auto_decompress=False,  # httpx decodes (or the passthrough relays the encoded bytes)
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

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
        with _mapped():
            response = await self._get_session().request(
                request.method,
                str(request.url),
                headers=headers,
                data=request.content or None,
                allow_redirects=False,
                timeout=client_timeout,
                compress=None,
            )
        return httpx.Response(
            status_code=response.status,
            headers=[(k, v) for k, v in response.raw_headers],
            stream=_ResponseStream(response),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


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
