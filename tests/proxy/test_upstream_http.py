"""The httpx passthrough: SSE cutting for any framing and split, error mapping, targets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.upstream.base import (
    ChatCall,
    UpstreamHTTPError,
    UpstreamTarget,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.upstream.http import HttpUpstream
from tests.support.upstream import FakeUpstream

PAYLOADS = [b'{"a":1}', b'{"b":"x: y\\n"}', b'{"c":[1,2,3]}']


def sse_body(newline: bytes) -> bytes:
    parts = [b": keep-alive comment" + newline + newline]
    for payload in PAYLOADS:
        parts.append(b"event: message" + newline + b"data: " + payload + newline + newline)
    parts.append(b"data: [DONE]" + newline + newline)
    parts.append(b'data: {"after": "done"}' + newline + newline)  # never read
    return b"".join(parts)


class _Chunked(httpx.AsyncByteStream):
    def __init__(self, body: bytes, cuts: list[int]) -> None:
        self.body = body
        self.cuts = sorted({c % (len(body) + 1) for c in cuts})

    async def __aiter__(self) -> AsyncIterator[bytes]:
        start = 0
        for cut in [*self.cuts, len(self.body)]:
            if cut > start:
                yield self.body[start:cut]
                start = cut


def upstream_for(handler: httpx.MockTransport) -> HttpUpstream:
    return HttpUpstream("http://upstream.test/v1", transport=handler)


def call(body: dict | None = None) -> ChatCall:
    return ChatCall(
        UpstreamTarget(base_url=None, api_key="sk-x"), body or {"model": "m"}, "rid"
    )


async def collect(upstream: HttpUpstream) -> list[bytes]:
    stream = await upstream.chat_stream(call({"model": "m", "stream": True}))
    try:
        return [payload async for payload in stream]
    finally:
        await stream.aclose()


@settings(max_examples=60, deadline=None)
@given(
    newline=st.sampled_from([b"\n", b"\r\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
async def test_sse_events_survive_any_split(newline: bytes, cuts: list[int]) -> None:
    body = sse_body(newline)
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=_Chunked(body, cuts)
        )
    )
    assert await collect(upstream_for(transport)) == PAYLOADS


async def test_multiline_data_and_missing_final_blank_line() -> None:
    body = b'data: {"a":\ndata: 1}\n\ndata: {"z":2}'
    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=body))
    assert await collect(upstream_for(transport)) == [b'{"a":\n1}', b'{"z":2}']


async def test_request_carries_key_body_and_request_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"ok": True}, headers={"x-ratelimit-remaining-requests": "9", "server": "x"}
        )

    upstream = upstream_for(httpx.MockTransport(handler))
    reply = await upstream.chat(call({"model": "m", "weird": [1]}))
    assert reply.data == {"ok": True}
    assert reply.headers == {"x-ratelimit-remaining-requests": "9"}
    (request,) = seen
    assert str(request.url) == "http://upstream.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-x" and request.headers["x-request-id"] == "rid"
    assert orjson.loads(request.content) == {"model": "m", "weird": [1]}


async def test_target_base_url_wins() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"data": [{"id": "a"}, "junk"]})

    upstream = upstream_for(httpx.MockTransport(handler))
    assert await upstream.models(UpstreamTarget(base_url="http://other.test/api/")) == [{"id": "a"}]
    assert seen == ["http://other.test/api/models"]


async def test_json_answer_to_a_stream_request_is_an_error() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"error": {"message": "nope"}}))
    with pytest.raises(UpstreamHTTPError) as info:
        await collect(upstream_for(transport))
    assert info.value.envelope()["error"]["message"] == "nope"


@pytest.mark.parametrize(
    ("exc", "expected", "status"),
    [
        (httpx.ConnectError("refused"), UpstreamUnreachable, 502),
        (httpx.ReadTimeout("slow"), UpstreamTimeout, 504),
        (httpx.ConnectTimeout("slow"), UpstreamTimeout, 504),
        (httpx.RemoteProtocolError("cut"), UpstreamUnreachable, 502),
    ],
)
async def test_transport_failures_are_mapped(exc: Exception, expected: type, status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    upstream = upstream_for(httpx.MockTransport(handler))
    with pytest.raises(expected) as info:
        await upstream.chat(call())
    assert info.value.status == status
    with pytest.raises(expected):
        await upstream.chat_stream(call())


async def test_error_status_keeps_upstream_envelope_and_headers() -> None:
    envelope = {"error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rl"}}
    transport = httpx.MockTransport(
        lambda r: httpx.Response(429, json=envelope, headers={"retry-after": "3"})
    )
    with pytest.raises(UpstreamHTTPError) as info:
        await upstream_for(transport).chat(call())
    assert info.value.status == 429 and info.value.envelope() == envelope
    assert info.value.headers == {"retry-after": "3"}


def test_aiohttp_transport_serves_successive_event_loops(upstream: FakeUpstream) -> None:
    import asyncio

    http = HttpUpstream(upstream.base_url)
    for _ in range(2):  # e.g. a CLI calling asyncio.run twice with one upstream object
        reply = asyncio.run(http.chat(call({"model": "m", "messages": [{"role": "user", "content": "x"}]})))
        assert reply.data["choices"][0]["message"]["content"] == "You said: x"
    assert len(upstream.chat_requests) == 2


async def test_aiohttp_transport_maps_failures(upstream: FakeUpstream) -> None:
    http = HttpUpstream(upstream.base_url, read_timeout_s=0.3)
    upstream.hang(5)
    with pytest.raises(UpstreamTimeout):
        await http.chat(call({"model": "m", "messages": []}))
    upstream.drop()
    with pytest.raises(UpstreamUnreachable):
        await http.chat(call({"model": "m", "messages": []}))
    closed = HttpUpstream("http://127.0.0.1:9/v1")
    with pytest.raises(UpstreamUnreachable):
        await closed.chat(call())
    await http.aclose()
    await closed.aclose()
