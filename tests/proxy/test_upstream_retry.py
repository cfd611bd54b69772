"""A pooled connection the upstream closed is retried once on a fresh one; a request the upstream
may have acted on is not.

The upstream here is a tiny raw HTTP/1.1 server on loopback whose connections follow a script, so
the close can be put exactly where the race puts it: at the moment a pooled connection is reused.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest

from proxy.upstream import aiohttp_transport
from proxy.upstream.aiohttp_transport import AiohttpTransport
from proxy.upstream.base import ChatCall, UpstreamTarget, UpstreamUnreachable
from proxy.upstream.http import HttpUpstream
from tests.support.proxy import RunningProxy

OK = "ok"  # answer, keep the connection open
CLOSE_AFTER = "close_after"  # answer, then close the connection (no `Connection: close`: idle close)
CLOSE_ON_REUSE = "close_on_reuse"  # close as the request arrives, answering nothing (the race)
DROP_MID_ANSWER = "drop_mid_answer"  # send the head and half the body, then close


def completion(text: str) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-raw",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


@dataclass
class Received:
    connection: int  # 1, 2, ... in the order connections were accepted
    number: int  # the request's number on its connection (1 = first)
    path: str


class RawUpstream:
    """Loopback HTTP/1.1 server; `plan` holds one action per request received (default OK).

    `rst=True` closes with a reset (SO_LINGER 0) instead of a FIN. `closed` is set each time a
    CLOSE_AFTER close has happened."""

    def __init__(self, *, rst: bool = False) -> None:
        self.plan: deque[str] = deque()
        self.received: list[Received] = []
        self.rst = rst
        self.closed = threading.Event()
        self._connections = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="raw-upstream", daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _close(self, writer: asyncio.StreamWriter) -> None:
        if self.rst:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        connection, number = self._connections, 0
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                return
            number += 1
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            action = self.plan.popleft() if self.plan else OK
            if action == CLOSE_ON_REUSE:
                self.received.append(Received(connection, number, path))
                self._close(writer)
                return
            await reader.readexactly(length)
            self.received.append(Received(connection, number, path))
            body = completion(f"answer {len(self.received)}")
            response_head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
            )
            if action == DROP_MID_ANSWER:
                writer.write(response_head + body[: len(body) // 2])
                await writer.drain()
                self._close(writer)
                return
            writer.write(response_head + body)
            await writer.drain()
            if action == CLOSE_AFTER:
                self._close(writer)
                await writer.wait_closed()  # the socket is closed (abort() finishes on the next turn)
                self.closed.set()
                return


@pytest.fixture(params=[False, True], ids=["fin", "rst"])
def raw(request: pytest.FixtureRequest) -> Iterator[RawUpstream]:
    with RawUpstream(rst=request.param) as server:
        yield server


CALL = ChatCall(
    UpstreamTarget(base_url=None, api_key=None),
    {"model": "gpt-4o-mini", "messages": []},
    "rid",
)


def chat(running: RunningProxy, key: str) -> httpx.Response:
    return httpx.post(
        running.base_url + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]},
        headers={"Authorization": f"Bearer {key}", "x-memos-memory": "off"},
        timeout=30,
    )


def upstream_transport(running: RunningProxy) -> AiohttpTransport:
    transport = running.services.upstreams.http._transport
    assert isinstance(transport, AiohttpTransport)
    return transport


def test_a_pooled_connection_closed_as_it_is_reused_is_retried_on_a_fresh_one(
    proxy: Callable[..., RunningProxy], raw: RawUpstream
) -> None:
    running = proxy(upstream_base_url=raw.base_url)
    key = running.create_key("retry", "app")
    assert chat(running, key).status_code == 200
    raw.plan.append(CLOSE_ON_REUSE)
    r = chat(running, key)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "answer 3"
    # The pooled connection took the request and died; the retry came on a new connection.
    assert [(x.connection, x.number) for x in raw.received] == [(1, 1), (1, 2), (2, 1)]
    assert upstream_transport(running).retried == 1


def test_a_request_dropped_mid_answer_is_not_retried(
    proxy: Callable[..., RunningProxy], raw: RawUpstream
) -> None:
    running = proxy(upstream_base_url=raw.base_url)
    key = running.create_key("retry", "app")
    assert chat(running, key).status_code == 200
    raw.plan.append(DROP_MID_ANSWER)  # on the reused connection: the upstream answered, then broke off
    r = chat(running, key)
    assert r.status_code == 502
    assert r.json()["error"]["message"].startswith("upstream answer broke off")
    assert len(raw.received) == 2
    assert upstream_transport(running).retried == 0


def test_a_new_connection_closed_before_answering_is_not_retried(
    proxy: Callable[..., RunningProxy], raw: RawUpstream
) -> None:
    """A connection's first request cannot meet an idle close: a close now may follow the upstream
    acting on it (a crash), so it is not sent again."""
    running = proxy(upstream_base_url=raw.base_url)
    key = running.create_key("retry", "app")
    raw.plan.append(CLOSE_ON_REUSE)
    r = chat(running, key)
    assert r.status_code == 502
    assert r.json()["error"]["message"].startswith("upstream unreachable")
    assert len(raw.received) == 1
    assert upstream_transport(running).retried == 0


def test_a_pooled_connection_the_peer_closed_is_not_written_to(raw: RawUpstream) -> None:
    """The close arrived but the event loop has not seen it (it lags under load): the probe before
    reuse finds it, so the request goes out on a new connection and nothing is retried."""

    async def run() -> tuple[list[str], AiohttpTransport]:
        transport = AiohttpTransport(max_connections=4, keepalive_expiry=60)
        http = HttpUpstream(raw.base_url, transport=transport)
        call = CALL
        texts = []
        raw.plan.append(CLOSE_AFTER)
        reply = await http.chat(call)
        texts.append(reply.data["choices"][0]["message"]["content"])
        # Block this loop (no await) until the upstream has closed: the close is in the kernel only.
        assert raw.closed.wait(10)
        reply = await http.chat(call)
        texts.append(reply.data["choices"][0]["message"]["content"])
        await http.aclose()
        return texts, transport

    texts, transport = asyncio.run(run())
    assert texts == ["answer 1", "answer 2"]
    assert [(x.connection, x.number) for x in raw.received] == [(1, 1), (2, 1)]
    assert (transport.stale_dropped, transport.retried) == (1, 0)


def test_a_close_that_lands_during_the_write_is_retried(
    raw: RawUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close arrives just after the probe: the loop sees it while writing the request (the
    "Can not write request body" ReadError of the load test). Half a request is never acted on, so
    it is sent again on a new connection."""
    monkeypatch.setattr(aiohttp_transport, "_peer_still_there", lambda transport: True)

    async def run() -> list[str]:
        transport = AiohttpTransport(max_connections=4, keepalive_expiry=60)
        http = HttpUpstream(raw.base_url, transport=transport)
        texts = []
        raw.plan.append(CLOSE_AFTER)
        texts.append((await http.chat(CALL)).data["choices"][0]["message"]["content"])
        assert raw.closed.wait(10)  # blocks this loop: the close is in the kernel only
        texts.append((await http.chat(CALL)).data["choices"][0]["message"]["content"])
        await http.aclose()
        assert (transport.stale_dropped, transport.retried) == (0, 1)
        return texts

    assert asyncio.run(run()) == ["answer 1", "answer 2"]
    assert [(x.connection, x.number) for x in raw.received] == [(1, 1), (2, 1)]


async def test_a_failed_retry_is_reported_as_before(raw: RawUpstream) -> None:
    http = HttpUpstream(raw.base_url, transport=AiohttpTransport(max_connections=4))
    call = CALL
    await http.chat(call)
    raw.plan.extend([CLOSE_ON_REUSE, CLOSE_ON_REUSE])
    with pytest.raises(UpstreamUnreachable):
        await http.chat(call)
    assert len(raw.received) == 3  # the first request, the one that met the close, one retry
    await http.aclose()


def test_the_pool_forgets_idle_connections_before_common_server_timers() -> None:
    from proxy.settings import Settings

    settings = Settings()
    assert settings.upstream_keepalive_s < 5.0  # uvicorn, Node.js and Apache close idle ones at 5 s
    assert AiohttpTransport()._keepalive_expiry == settings.upstream_keepalive_s
