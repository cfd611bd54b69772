"""The default upstream: any OpenAI-compatible HTTP endpoint, called through one pooled httpx transport.

Bodies go out as the client sent them (after memory's changes), answers come back as raw bytes, and
streams are cut into SSE events without re-encoding their payloads.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import orjson

from proxy.upstream.aiohttp_transport import AiohttpTransport
from proxy.upstream.base import (
    ChatCall,
    JsonCall,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamReply,
    UpstreamTarget,
    UpstreamTimeout,
    UpstreamUnreachable,
    relayed_headers,
)


def encode_body(body: dict[str, Any]) -> bytes:
    """The JSON sent upstream. orjson stops at 255 levels of nesting, which the edge's own limit
    (proxy.wire.MAX_JSON_DEPTH) keeps bodies far from; should a deeper one get here all the same, the
    standard library encodes it instead of the call failing as a 500."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class HttpUpstream:
    """Calls go straight to an httpx transport (no client layer: no cookies, auth flows, redirects or
    event hooks, which a proxy does not want); URLs are parsed once per base and path. The default
    transport pools connections with aiohttp (see proxy.upstream.aiohttp_transport)."""

    def __init__(
        self,
        default_base_url: str,
        *,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 600.0,
        max_connections: int = 512,
        keepalive_s: float = 4.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.default_base_url = default_base_url.rstrip("/")
        # A pooled connection that was closed under us is retried once on a fresh one, when nothing
        # of it can have been acted on upstream (see proxy.upstream.aiohttp_transport).
        self._transport = transport or AiohttpTransport(
            max_connections=max_connections, keepalive_expiry=keepalive_s
        )
        self._timeout = {
            "connect": connect_timeout_s,
            "read": read_timeout_s,
            "write": read_timeout_s,
            "pool": connect_timeout_s,
        }
        self._urls: dict[tuple[str, str], httpx.URL] = {}

    def _url(self, target: UpstreamTarget, path: str) -> httpx.URL:
        base = target.base_url or self.default_base_url
        url = self._urls.get((base, path))
        if url is None:
            if len(self._urls) >= 1024:
                self._urls.clear()
            url = self._urls[(base, path)] = httpx.URL(f"{base.rstrip('/')}/{path}")
        return url

    @staticmethod
    def _headers(target: UpstreamTarget, request_id: str | None, *, json_body: bool) -> dict[str, str]:
        headers = {"user-agent": "memos-proxy", **target.headers}
        if json_body:
            headers["content-type"] = "application/json"
        if target.api_key:
            headers["authorization"] = f"Bearer {target.api_key}"
        if request_id:
            headers["x-request-id"] = request_id
        return headers

    async def _send(
        self, method: str, url: httpx.URL, headers: dict[str, str], content: bytes | None = None
    ) -> httpx.Response:
        """Send; the answer's body is not read yet (the caller reads or streams it, then closes it)."""
        request = httpx.Request(
            method, url, headers=headers, content=content, extensions={"timeout": self._timeout}
        )
        with _mapped_errors("upstream unreachable", "upstream did not answer in time"):
            return await self._transport.handle_async_request(request)

    async def _read(self, response: httpx.Response) -> bytes:
        try:
            with _mapped_errors("upstream answer broke off", "upstream answer stalled"):
                return await response.aread()
        finally:
            await response.aclose()

    async def _post_json(
        self, path: str, target: UpstreamTarget, body: dict[str, Any], rid: str
    ) -> UpstreamReply:
        response = await self._send(
            "POST", self._url(target, path), self._headers(target, rid, json_body=True), encode_body(body)
        )
        content = await self._read(response)
        if response.status_code >= 400:
            raise UpstreamHTTPError(response.status_code, content, response.headers)
        return UpstreamReply(content, response.status_code, relayed_headers(response.headers))

    async def chat(self, call: ChatCall) -> UpstreamReply:
        return await self._post_json("chat/completions", call.target, call.body, call.request_id)

    async def embeddings(self, call: JsonCall) -> UpstreamReply:
        return await self._post_json("embeddings", call.target, call.body, call.request_id)

    async def chat_stream(self, call: ChatCall) -> SSEEventStream:
        return await self._stream("chat/completions", call)

    async def responses(self, call: ChatCall) -> UpstreamReply:
        """POST /responses (the Responses API), non-streamed."""
        return await self._post_json("responses", call.target, call.body, call.request_id)

    async def responses_stream(self, call: ChatCall) -> SSEEventStream:
        """POST /responses with `stream: true`: the data payloads of its events (each names its type)."""
        return await self._stream("responses", call)

    async def _stream(self, path: str, call: ChatCall) -> SSEEventStream:
        headers = self._headers(call.target, call.request_id, json_body=True)
        headers["accept"] = "text/event-stream"
        response = await self._send("POST", self._url(call.target, path), headers, encode_body(call.body))
        if response.status_code >= 400:
            try:
                content = await self._read(response)
            except UpstreamError:
                content = b""
            raise UpstreamHTTPError(response.status_code, content, response.headers)
        return SSEEventStream(response)

    async def models(self, target: UpstreamTarget) -> list[dict[str, Any]]:
        headers = self._headers(target, None, json_body=False)
        response = await self._send("GET", self._url(target, "models"), headers)
        content = await self._read(response)
        if response.status_code >= 400:
            raise UpstreamHTTPError(response.status_code, content, response.headers)
        try:
            return [m for m in orjson.loads(content)["data"] if isinstance(m, dict)]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise UpstreamError("upstream answered /models with an unexpected body") from exc

    async def send_raw(
        self,
        method: str,
        path: str,
        target: UpstreamTarget,
        headers: Mapping[str, str],
        content: bytes,
        query: bytes = b"",
    ) -> httpx.Response:
        """Any other request, relayed as is (streamed answer). The caller closes the response."""
        base = (target.base_url or self.default_base_url).rstrip("/")
        url = httpx.URL(f"{base}/{path.lstrip('/')}" + (f"?{query.decode('latin-1')}" if query else ""))
        out = {**headers, **self._headers(target, None, json_body=False)}
        return await self._send(method, url, out, content or None)

    async def aclose(self) -> None:
        await self._transport.aclose()


@contextmanager
def _mapped_errors(unreachable: str, timeout: str) -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"{timeout} ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise UpstreamUnreachable(f"{unreachable} ({type(exc).__name__})") from exc


class SSEEventStream:
    """Cuts an upstream SSE body into the data payloads of its events; ends at `[DONE]` or EOF.

    Events that arrived together are kept ready: `drain()` hands them over without waiting, so the
    relay can forward a burst in one write. After `[DONE]` the rest of the body (normally nothing)
    is read briefly so the pooled connection can be reused.
    """

    _DRAIN_AFTER_DONE_S = 0.1

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._pieces = response.aiter_bytes()
        self._ready: deque[bytes] = deque()
        self._buffer = b""
        self._data: list[bytes] = []
        self._done = False  # [DONE] seen or body ended
        self._is_json = response.headers.get("content-type", "").startswith("application/json")

    def __aiter__(self) -> SSEEventStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._ready:
            if self._done:
                raise StopAsyncIteration
            await self._read()
        return self._ready.popleft()

    def drain(self) -> list[bytes]:
        """The payloads already received and cut, without waiting for more."""
        ready = list(self._ready)
        self._ready.clear()
        return ready

    async def _read(self) -> None:
        try:
            if self._is_json:
                # A 200 with a JSON body where a stream was asked for: usually an error in disguise.
                raise UpstreamHTTPError(502, await self._response.aread(), self._response.headers)
            try:
                piece = await self._pieces.__anext__()
            except StopAsyncIteration:
                self._feed(b"\n\n")  # a last line or event without its terminator
                self._done = True
                return
            self._feed(piece)
            if self._done:
                await self._finish_body()
        except httpx.TimeoutException as exc:
            await self.aclose()
            raise UpstreamTimeout(f"upstream stream stalled ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            await self.aclose()
            raise UpstreamUnreachable(f"upstream stream broke ({type(exc).__name__})") from exc

    def _feed(self, piece: bytes) -> None:
        lines = (self._buffer + piece).split(b"\n")
        self._buffer = lines.pop()  # an incomplete last line waits for the next piece
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if line:
                if line.startswith(b"data:"):
                    self._data.append(line[6:] if line.startswith(b"data: ") else line[5:])
                continue  # comments (":"), event:, id:, retry: are not relayed
            if self._data:
                payload = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                self._data = []
                if payload == b"[DONE]":
                    self._done = True
                    return
                self._ready.append(payload)

    async def _finish_body(self) -> None:
        with anyio.move_on_after(self._DRAIN_AFTER_DONE_S):
            async for _ in self._pieces:
                pass
        await self._response.aclose()

    async def aclose(self) -> None:
        self._done = True
        await self._response.aclose()
