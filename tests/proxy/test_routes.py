"""Models, embeddings, the catch-all relay, health, metrics, request ids, body limit, auth errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.proxy.conftest import BODY_LIMIT, Api
from tests.support.proxy import RunningProxy
from tests.support.upstream import FakeUpstream

# ---------------------------------------------------------------- embeddings and models


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "e"}, "input"),
        ({"model": "e", "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_embeddings_validation(api: Api, upstream: FakeUpstream, payload: dict, param: str) -> None:
    r = api.post("/embeddings", payload)
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert upstream.requests == []


def test_embeddings_upstream_error_is_relayed(api: Api, upstream: FakeUpstream) -> None:
    upstream.fail(429, path="/v1/embeddings")
    r = api.post("/embeddings", {"model": "e", "input": "x"})
    assert r.status_code == 429 and r.headers["retry-after"] == "0"


def test_embeddings_token_input_passes_through(api: Api, upstream: FakeUpstream) -> None:
    r = api.post("/embeddings", {"model": "e", "input": [[1, 2, 3]], "user": "u"})
    assert r.status_code == 200
    assert upstream.requests[-1].json == {"model": "e", "input": [[1, 2, 3]], "user": "u"}


def test_models_upstream_failure_is_relayed(api: Api, upstream: FakeUpstream) -> None:
    upstream.fail(500, path="/v1/models")
    assert api.get("/models").status_code == 500


def test_local_embeddings_without_runtime_is_404(api: Api) -> None:
    r = api.post("/embeddings", {"model": "local/x", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


# ---------------------------------------------------------------- the catch-all relay


def test_other_v1_paths_are_relayed(api: Api, upstream: FakeUpstream) -> None:
    r = api.post("/responses?stream=false", {"model": "gpt-4o-mini", "input": "hi"})
    assert r.status_code == 404  # the fake upstream has no /responses: its answer comes back as is
    assert "no route POST /v1/responses" in r.json()["error"]["message"]
    seen = upstream.requests[-1]
    assert seen.path == "/v1/responses" and seen.json == {"model": "gpt-4o-mini", "input": "hi"}
    assert "authorization" not in seen.headers  # the tenant key never goes upstream


def test_relay_needs_a_key(running: RunningProxy, upstream: FakeUpstream) -> None:
    assert httpx.get(running.base_url + "/files").status_code == 401
    assert upstream.requests == []


# ---------------------------------------------------------------- auth


def test_missing_and_malformed_authorization(running: RunningProxy, key: str) -> None:
    url = running.base_url + "/models"
    for headers in (
        {},
        {"Authorization": key},
        {"Authorization": f"Basic {key}"},
        {"Authorization": "Bearer"},
    ):
        r = httpx.get(url, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["type"] == "authentication_error"


def test_revocation_in_process_is_immediate_despite_the_cache(proxy: Callable[..., RunningProxy]) -> None:
    running = proxy(key_cache_ttl_s=600)
    key_id, raw = running.services.api_keys.create("acme", "app")
    api = Api(running, raw)
    assert api.get("/models").status_code == 200
    assert running.services.keys.revoke(key_id)
    assert api.get("/models").status_code == 401


def test_auth_failure_is_audited(running: RunningProxy) -> None:
    key_id, raw = running.services.api_keys.create("audited", "app")
    running.services.api_keys.revoke(key_id)
    r = Api(running, raw).get("/models")
    assert r.status_code == 401
    entries, _ = running.services.audit.list("audited", 10, None)
    assert [e.action for e in entries] == ["auth.failure"]
    assert entries[0].request_id == r.headers["x-request-id"]


# ---------------------------------------------------------------- middleware


def test_request_id_is_honoured_when_sane(running: RunningProxy) -> None:
    r = httpx.get(running.url + "/healthz", headers={"X-Request-Id": "abc-123.x:y"})
    assert r.headers["x-request-id"] == "abc-123.x:y"
    for bad in ("has space", "x" * 200, "semi;colon"):
        r = httpx.get(running.url + "/healthz", headers={"X-Request-Id": bad})
        assert r.headers["x-request-id"].startswith("req_")


def test_body_limit_without_content_length(api: Api, upstream: FakeUpstream) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(BODY_LIMIT // 1024 + 1):
            yield b"x" * 1024
        yield b'"}]}'

    r = httpx.post(api.proxy.base_url + "/chat/completions", content=chunks(), headers=api.headers())
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert upstream.requests == []


def test_unknown_route_and_method(running: RunningProxy) -> None:
    r = httpx.get(running.url + "/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.delete(running.url + "/healthz")
    assert r.status_code == 405 and "error" in r.json()


def test_metrics_by_tenant_and_route(api: Api, upstream: FakeUpstream, running: RunningProxy) -> None:
    api.post("/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    upstream.fail(503)
    api.post("/chat/completions", {"model": "gpt-4o-mini", "messages": []})
    text = httpx.get(running.url + "/metrics").text
    assert (
        'memos_http_requests_total{method="POST",route="/v1/chat/completions",status="200",tenant="acme"}'
        in text
    )
    assert 'memos_upstream_errors_total{kind="503",route="/v1/chat/completions",tenant="acme"}' in text
    assert (
        'memos_http_request_duration_seconds_bucket{le="0.005",route="/v1/chat/completions",tenant="acme"}'
        in text
    )
    assert "memos_upstream_duration_seconds_count" in text


def test_healthz(running: RunningProxy) -> None:
    r = httpx.get(running.url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
