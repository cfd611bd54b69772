"""One proxy + fake upstream per test module (fast); each test gets them reset.

Tests may swap `running.services.policies` / `.chat_memory`; they are restored after each test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.proxy import RunningProxy, proxy_stack
from tests.support.upstream import FakeUpstream

BODY_LIMIT = 64 * 1024
READ_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeUpstream, RunningProxy]]:
    with proxy_stack(
        tmp_path_factory.mktemp("proxy"),
        max_body_bytes=BODY_LIMIT,
        upstream_read_timeout_s=READ_TIMEOUT_S,
        key_cache_ttl_s=0,
    ) as pair:
        yield pair


@pytest.fixture
def upstream(stack: tuple[FakeUpstream, RunningProxy]) -> FakeUpstream:
    stack[0].reset()
    return stack[0]


@pytest.fixture
def running(stack: tuple[FakeUpstream, RunningProxy]) -> Iterator[RunningProxy]:
    services = stack[1].services
    saved = (services.policies, services.chat_memory)
    yield stack[1]
    services.policies, services.chat_memory = saved


@pytest.fixture(scope="module")
def key(stack: tuple[FakeUpstream, RunningProxy]) -> str:
    return stack[1].create_key("acme", "app")


class Api:
    """httpx against the running proxy with a tenant key."""

    def __init__(self, proxy: RunningProxy, key: str) -> None:
        self.proxy = proxy
        self.key = key

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **(extra or {})}

    def post(
        self, path: str, json: Any = None, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        return httpx.post(
            self.proxy.base_url + path, json=json, headers=self.headers(headers), timeout=30, **kw
        )

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(self.proxy.base_url + path, headers=self.headers(headers), timeout=30)

    def stream_lines(
        self, json: Any, headers: dict[str, str] | None = None
    ) -> tuple[httpx.Response, list[str]]:
        with httpx.stream(
            "POST",
            self.proxy.base_url + "/chat/completions",
            json=json,
            headers=self.headers(headers),
            timeout=30,
        ) as response:
            if response.status_code != 200:
                response.read()
                return response, []
            return response, [line for line in response.iter_lines() if line]


@pytest.fixture
def api(running: RunningProxy, key: str, upstream: FakeUpstream) -> Api:
    return Api(running, key)
