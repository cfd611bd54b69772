"""CORS: with MEMOS_CORS_ORIGINS set, a browser app on an allowed origin gets its preflight answered
(before any key is asked for) and may read the memory headers; other origins are refused; unset, CORS
stays off. The running proxy in front of the loopback upstream, driven over HTTP."""

from __future__ import annotations

import httpx

from tests.support.upstream import FakeUpstream

APP = "https://app.example"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
PREFLIGHT = {
    "Origin": APP,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-memos-user, x-stainless-os",
}


def test_an_allowed_origin_gets_its_preflight_and_the_memory_headers(proxy, upstream: FakeUpstream) -> None:
    running = proxy(embedding_model="hash", cors_origins=[APP])
    key = running.create_key("acme")
    preflight = httpx.options(f"{running.base_url}/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == APP
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "x-memos-user" in preflight.headers["access-control-allow-headers"].lower()
    assert upstream.requests == []  # answered by the proxy alone

    reply = httpx.post(
        f"{running.base_url}/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {key}", "Origin": APP, "X-Memos-User": "ola"},
    )
    assert reply.status_code == 200
    assert reply.headers["access-control-allow-origin"] == APP
    exposed = {h.strip() for h in reply.headers["access-control-expose-headers"].split(",")}
    assert {"x-memos-memory-mode", "x-memos-memories", "x-memos-memory-reason", "x-request-id"} <= exposed

    other = httpx.options(
        f"{running.base_url}/chat/completions", headers={**PREFLIGHT, "Origin": "https://evil.example"}
    )
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default(proxy) -> None:
    running = proxy(embedding_model="hash")
    preflight = httpx.options(f"{running.base_url}/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers
