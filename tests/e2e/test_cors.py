"""CORS, end to end: the running proxy in front of the loopback upstream, driven over HTTP with the
headers a browser sends.

Off by default: no Access-Control-* header on any answer, and a preflight is an ordinary OPTIONS (405).
On (MEMOS_CORS_ORIGINS): a preflight from an allowed origin is answered by the proxy alone, before any
key is asked for, with the methods and headers of the settings; an actual request may read the
x-memos-* headers; credentials are allowed only when the settings say so; a refused preflight is a 400
in the API's error envelope. A tenant's policy narrows the origins its keys may be used from: an
authenticated request from any other origin is a 403, and never reaches the upstream.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from proxy.settings import Settings
from tests.support.upstream import FakeUpstream

APP = "https://app.example"
OTHER = "https://other.example"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
PREFLIGHT = {
    "Origin": APP,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-memos-user, x-stainless-os",
}
MEMORY_HEADERS = {"x-memos-memory-mode", "x-memos-memories", "x-memos-memory-reason", "x-request-id"}


def chat(base_url: str, key: str, origin: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "X-Memos-User": "ola"}
    if origin is not None:
        headers["Origin"] = origin
    return httpx.post(f"{base_url}/chat/completions", json=CHAT, headers=headers, timeout=30)


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def test_cors_is_off_by_default(proxy, upstream: FakeUpstream) -> None:
    running = proxy(embedding_model="hash")
    preflight = httpx.options(f"{running.base_url}/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 405
    assert preflight.json()["error"]["code"] == "method_not_allowed"
    assert cors_headers(preflight) == {}

    reply = chat(running.base_url, running.create_key("acme"), APP)
    assert reply.status_code == 200 and cors_headers(reply) == {}


def test_an_allowed_origin_gets_its_preflight_and_the_memory_headers(proxy, upstream: FakeUpstream) -> None:
    running = proxy(embedding_model="hash", cors_origins=[APP], cors_max_age_s=120)
    key = running.create_key("acme")
    preflight = httpx.options(f"{running.base_url}/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == APP
    assert "POST" in preflight.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in preflight.headers["access-control-allow-headers"].lower().split(",")}
    assert {"authorization", "x-memos-user", "x-stainless-os"} <= allowed
    assert preflight.headers["access-control-max-age"] == "120"
    assert "access-control-allow-credentials" not in preflight.headers
    assert upstream.requests == []  # answered by the proxy alone, without a key

    reply = chat(running.base_url, key, APP)
    assert reply.status_code == 200
    assert reply.headers["access-control-allow-origin"] == APP
    assert "access-control-allow-credentials" not in reply.headers
    exposed = {h.strip() for h in reply.headers["access-control-expose-headers"].split(",")}
    assert exposed >= MEMORY_HEADERS
    assert reply.headers["x-memos-memory-mode"]  # what the exposed names name is there to read

    # Errors are readable from the browser too (the middleware is outermost).
    refused = chat(running.base_url, "mp-wrong", APP)
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == APP

    other = httpx.options(f"{running.base_url}/chat/completions", headers={**PREFLIGHT, "Origin": OTHER})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    error = other.json()["error"]
    assert error["code"] == "cors_not_allowed" and "origin" in error["message"]


def test_methods_headers_and_credentials_come_from_the_settings(proxy, upstream: FakeUpstream) -> None:
    running = proxy(
        embedding_model="hash",
        cors_origins=[APP],
        cors_allow_methods=["GET", "POST"],
        cors_allow_headers=["authorization", "content-type", "x-memos-user"],
        cors_allow_credentials=True,
    )
    preflight = httpx.options(f"{running.base_url}/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 400  # x-stainless-os is not among the allowed headers
    assert preflight.json()["error"]["code"] == "cors_not_allowed"
    assert "headers" in preflight.json()["error"]["message"]

    narrow = {**PREFLIGHT, "Access-Control-Request-Headers": "authorization, x-memos-user"}
    ok = httpx.options(f"{running.base_url}/chat/completions", headers=narrow)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-credentials"] == "true"
    assert ok.headers["access-control-allow-origin"] == APP

    delete = httpx.options(
        f"{running.base_url}/memories/some-id", headers={**narrow, "Access-Control-Request-Method": "DELETE"}
    )
    assert delete.status_code == 400 and "method" in delete.json()["error"]["message"]

    reply = chat(running.base_url, running.create_key("acme"), APP)
    assert reply.status_code == 200
    assert reply.headers["access-control-allow-credentials"] == "true"


def test_settings_read_comma_separated_origins_and_refuse_bad_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMOS_CORS_ORIGINS", f"{APP}, http://localhost:5173")
    monkeypatch.setenv("MEMOS_CORS_ALLOW_METHODS", "GET,POST")
    settings = Settings()
    assert settings.cors_origins == [APP, "http://localhost:5173"]
    assert settings.cors_allow_methods == ["GET", "POST"]
    monkeypatch.setenv("MEMOS_CORS_ORIGINS", f'["{APP}"]')
    assert Settings().cors_origins == [APP]
    monkeypatch.setenv("MEMOS_CORS_ORIGINS", f"{APP}/")
    with pytest.raises(ValidationError, match="not an origin"):
        Settings()
    monkeypatch.setenv("MEMOS_CORS_ORIGINS", "*")
    monkeypatch.setenv("MEMOS_CORS_ALLOW_CREDENTIALS", "true")
    with pytest.raises(ValidationError, match="not \\*"):
        Settings()


def test_a_tenant_policy_narrows_the_origins_its_keys_may_be_used_from(
    proxy, upstream: FakeUpstream, tmp_path: Path
) -> None:
    data_dir = tmp_path / "narrowed"
    (data_dir / "policies").mkdir(parents=True)
    (data_dir / "policies" / "acme.yaml").write_text(f"cors:\n  allowed_origins: [{APP.upper()}]\n")
    running = proxy(embedding_model="hash", cors_origins=["*"], data_dir=data_dir)
    acme, globex = running.create_key("acme"), running.create_key("globex")

    refused = chat(running.base_url, acme, OTHER)
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["type"] == "permission_error" and error["code"] == "origin_not_allowed"
    assert OTHER in error["message"]
    assert refused.headers["access-control-allow-origin"] == "*"  # the browser can read why
    assert upstream.chat_requests == []

    # The memory API is held to the same rule: it is the same key.
    listed = httpx.get(
        f"{running.base_url}/memories",
        params={"user": "ola"},
        headers={"Authorization": f"Bearer {acme}", "Origin": OTHER},
    )
    assert listed.status_code == 403 and listed.json()["error"]["code"] == "origin_not_allowed"

    assert chat(running.base_url, acme, APP).status_code == 200
    assert chat(running.base_url, acme, None).status_code == 200  # servers and SDKs send no Origin
    assert chat(running.base_url, globex, OTHER).status_code == 200  # no narrowing for that tenant

    # A preflight carries no key: it follows the settings, whoever's key comes after it.
    preflight = httpx.options(f"{running.base_url}/chat/completions", headers={**PREFLIGHT, "Origin": OTHER})
    assert preflight.status_code == 200
