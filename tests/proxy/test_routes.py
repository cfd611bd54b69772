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
    # Legacy completions are relayed without memory (POST /v1/responses has memory: its own route).
    r = api.post("/completions?stream=false", {"model": "gpt-4o-mini", "prompt": "hi"})
    assert r.status_code == 404  # the fake upstream has no /completions: its answer comes back as is
    assert "no route POST /v1/completions" in r.json()["error"]["message"]
    seen = upstream.requests[-1]
    assert seen.path == "/v1/completions" and seen.json == {"model": "gpt-4o-mini", "prompt": "hi"}
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


# ---------------------------------------------------------------- the memory API's OpenAPI document
#
# Generated from the wire models (proxy/memory_wire.py, proxy/openapi.py); these pin that it is a valid
# OpenAPI 3.1 document, that every operation, parameter, header and status stays documented, and that
# each limit it states is the constant the server enforces.


def _walk(node: object, path: str = "") -> Iterator[tuple[str, str, object]]:
    """(path, keyword, value) of every keyword in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


def test_openapi_document_is_valid_openapi_31() -> None:
    import jsonschema
    from schemathesis.specs.openapi.definitions import OPENAPI_31

    from proxy.openapi import openapi_document

    doc = openapi_document()
    assert doc["openapi"] == "3.1.0"
    jsonschema.Draft202012Validator(OPENAPI_31).validate(doc)
    schemas = doc["components"]["schemas"]
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    for path, key, value in _walk(doc):
        if key == "$ref":
            assert isinstance(value, str) and value.startswith("#/components/schemas/"), path
            assert value.removeprefix("#/components/schemas/") in schemas, (path, value)
        if key == "schema" and "/parameters/" in path:
            jsonschema.Draft202012Validator.check_schema(value)  # type: ignore[arg-type]
    # Nothing pydantic-only leaks into the published schemas (titles, a `default: null`, raw names).
    keywords = {key for path, key, _ in _walk(schemas) if not path.endswith("/properties")}
    assert not keywords & {"title", "ge", "le", "gt", "lt", "$defs"}
    assert all(v is not None for _, key, v in _walk(schemas) if key == "default")


def test_openapi_document_keeps_every_operation_parameter_and_status() -> None:
    from proxy.openapi import openapi_document

    doc = openapi_document()
    ops = {
        (path, method): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method != "parameters"
    }
    memory_errors = ["200", "400", "401", "403", "429"]
    expected = {
        ("/v1/memories", "post"): ("addMemories", memory_errors, ["X-Memos-User", "X-Memos-Session"]),
        ("/v1/memories", "get"): ("listMemories", memory_errors, ["user", "limit", "cursor", "X-Memos-User"]),
        ("/v1/memories", "delete"): ("eraseUser", memory_errors, ["user"]),
        ("/v1/memories/search", "post"): ("searchMemories", memory_errors, ["X-Memos-User"]),
        ("/v1/memories/{memory_id}", "get"): ("getMemory", [*memory_errors, "404"], []),
        ("/v1/memories/{memory_id}", "patch"): ("patchMemory", [*memory_errors, "404"], []),
        ("/v1/memories/{memory_id}", "delete"): ("deleteMemory", [*memory_errors, "404"], []),
        ("/v1/memories/{memory_id}/history", "get"): ("memoryHistory", [*memory_errors, "404"], []),
        ("/v1/users", "get"): ("listUsers", ["200", "401", "429"], []),
        ("/healthz", "get"): ("healthz", ["200"], []),
        ("/readyz", "get"): ("readyz", ["200", "503"], []),
    }
    assert set(ops) == set(expected)
    for where, (operation_id, statuses, parameters) in expected.items():
        op = ops[where]
        assert op["operationId"] == operation_id
        assert sorted(op["responses"]) == sorted(statuses), where
        assert all(r["description"] for r in op["responses"].values())
        assert [p["name"] for p in op.get("parameters", [])] == parameters, where
        assert op["summary"]
    for path in ("/v1/memories/{memory_id}", "/v1/memories/{memory_id}/history"):
        (memory_id,) = doc["paths"][path]["parameters"]
        assert memory_id["name"] == "memory_id" and memory_id["in"] == "path" and memory_id["required"]
    (erase_user,) = ops[("/v1/memories", "delete")]["parameters"]
    assert erase_user["required"] is True and erase_user["in"] == "query"
    assert ops[("/healthz", "get")]["security"] == [] == ops[("/readyz", "get")]["security"]
    # /readyz publishes its body, part by part (proxy/health_wire.py; tests/proxy/test_readiness.py
    # validates real answers against it).
    for status in ("200", "503"):
        answer = ops[("/readyz", "get")]["responses"][status]["content"]["application/json"]["schema"]
        assert answer == {"$ref": "#/components/schemas/Readiness"}
    parts = doc["components"]["schemas"]["Readiness"]["properties"]
    assert set(parts) == {
        *("status", "storage", "vault", "vectors", "embedder", "write_retry", "worker", "outbox")
    }


def test_every_limit_in_the_openapi_document_is_the_constant() -> None:
    from memos import (
        MAX_ENTRIES,
        MAX_TEXT_CHARS,
        METADATA_MAX_DEPTH,
        METADATA_MAX_VALUES,
        NOT_BLANK_PATTERN,
        TIMESTAMP_END,
        TIMESTAMP_MIN,
        USER_ID_MAX_CHARS,
        USER_ID_PATTERN,
        YEAR_PATTERN,
    )
    from proxy.memory_wire import (
        CURSOR_MAX_CHARS,
        CURSOR_PATTERN,
        DEFAULT_LIMIT,
        MAX_LIMIT,
        MAX_QUERY_CHARS,
        MAX_TOP_K,
        MAX_VERSION,
        MEMORY_ID_PATTERN,
    )
    from proxy.openapi import openapi_document
    from proxy.wire import MAX_JSON_DEPTH, MAX_JSON_ITEMS

    doc = openapi_document()
    schemas = doc["components"]["schemas"]

    def nonnull(schema: dict) -> dict:
        return next(s for s in schema.get("anyOf", [schema]) if s.get("type") != "null")

    add = schemas["AddMemories"]["properties"]
    assert (add["memories"]["minItems"], add["memories"]["maxItems"]) == (1, MAX_ENTRIES)
    entry = schemas["MemoryEntry"]["properties"]
    assert nonnull(entry["text"])["maxLength"] == MAX_TEXT_CHARS
    assert nonnull(entry["metadata"])["maxProperties"] == METADATA_MAX_VALUES
    assert f"{METADATA_MAX_DEPTH} levels" in nonnull(entry["metadata"])["description"]
    string_time, number_time = nonnull(entry["observed_at"])["oneOf"]
    assert string_time["pattern"] == YEAR_PATTERN
    assert (number_time["minimum"], number_time["exclusiveMaximum"]) == (TIMESTAMP_MIN, TIMESTAMP_END)
    search = schemas["SearchMemories"]["properties"]
    assert search["query"]["maxLength"] == MAX_QUERY_CHARS == MAX_TEXT_CHARS
    assert search["query"]["pattern"] == NOT_BLANK_PATTERN
    assert (nonnull(search["top_k"])["minimum"], nonnull(search["top_k"])["maximum"]) == (1, MAX_TOP_K)
    changes, rollback = schemas["PatchMemory"]["oneOf"]
    assert changes["properties"]["text"]["maxLength"] == MAX_TEXT_CHARS
    assert changes["properties"]["importance"].items() >= {"minimum": 0, "maximum": 1}.items()
    assert rollback["properties"]["rollback_to"]["maximum"] == MAX_VERSION
    listing = {p["name"]: p for p in doc["paths"]["/v1/memories"]["get"]["parameters"]}
    limit = {"minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}
    assert listing["limit"]["schema"].items() >= limit.items()
    assert listing["cursor"]["schema"]["maxLength"] == CURSOR_MAX_CHARS
    assert listing["cursor"]["schema"]["pattern"] == CURSOR_PATTERN
    memory_id = doc["paths"]["/v1/memories/{memory_id}"]["parameters"][0]
    assert memory_id["schema"]["pattern"] == MEMORY_ID_PATTERN
    assert f"at most {MAX_JSON_DEPTH} levels" in doc["info"]["description"]
    assert f"more than {MAX_JSON_ITEMS} members" in doc["info"]["description"]

    # Wherever a user id is published (bodies, queries, the header), it is the one rule.
    users = [
        nonnull(v)
        for path, key, v in _walk(doc)
        if (key == "user" and path.endswith("/properties")) or (key == "schema" and "/parameters/" in path)
    ]
    users = [u for u in users if u.get("pattern") == USER_ID_PATTERN]
    assert len(users) >= 7
    assert all((u["minLength"], u["maxLength"]) == (1, USER_ID_MAX_CHARS) for u in users)
    # And no other number is stated as a limit anywhere: each is one of the constants above.
    allowed = {
        "maxLength": {MAX_TEXT_CHARS, USER_ID_MAX_CHARS, CURSOR_MAX_CHARS},
        "minLength": {1},
        "maxItems": {MAX_ENTRIES},
        "minItems": {1},
        "maxProperties": {METADATA_MAX_VALUES},
        "maximum": {MAX_TOP_K, MAX_LIMIT, MAX_VERSION, 1},
        "minimum": {0, 1, TIMESTAMP_MIN},
        "exclusiveMaximum": {TIMESTAMP_END},
        "pattern": {NOT_BLANK_PATTERN, USER_ID_PATTERN, YEAR_PATTERN, CURSOR_PATTERN, MEMORY_ID_PATTERN},
    }
    for path, key, value in _walk(doc):
        if key in allowed and not path.endswith("/properties"):
            assert value in allowed[key], (path, key, value)


def test_answers_are_the_published_shapes() -> None:
    """What the handlers answer has exactly the fields of the response types, and validates against
    the schema the document publishes for them."""
    from datetime import UTC, datetime
    from typing import get_type_hints

    import jsonschema

    from memos.item import Kind, MemoryItem, Scope, Source, State
    from memos.recall.retrieval import Hit
    from proxy.errors import bad_request, not_found
    from proxy.memory_wire import Memory, SearchHit, hit_json, memory_json
    from proxy.openapi import openapi_document

    doc = openapi_document()

    def check(value: object, name: str) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        jsonschema.Draft202012Validator(schema).validate(value)

    item = MemoryItem(
        id="mem_" + "a" * 28,
        tenant="acme",
        owner="alice",
        text="Alice likes tea.",
        sources=[Source(request_id="req_1", message_index=0, session="s", metadata={"k": 1})],
        observed_at=datetime(2024, 5, 1, 12, tzinfo=UTC),
    )
    answer = memory_json(item)
    assert set(answer) == set(get_type_hints(Memory))
    assert answer["observed_at"] == "2024-05-01T12:00:00+00:00"  # ISO 8601 with its offset, as ever
    check(answer, "Memory")
    hit = hit_json(Hit(item=item, score=0.5, context=[item]))
    assert set(hit) == set(get_type_hints(SearchHit))
    check(hit, "SearchHit")
    check({"object": "list", "data": [answer]}, "Memories")
    check({"object": "list", "data": [answer], "next_cursor": None, "has_more": False}, "MemoryList")
    for error in (bad_request("x", param="user", code="invalid_value"), not_found("x")):
        check(error.envelope(), "Error")
    # The enums the document lists are memos' own.
    schema = doc["components"]["schemas"]["Memory"]["properties"]
    assert schema["scope"]["enum"] == [s.value for s in Scope]
    assert schema["kind"]["enum"] == [k.value for k in Kind]
    assert schema["state"]["enum"] == [s.value for s in State]


def test_openapi_json_is_the_generated_document(running: RunningProxy) -> None:
    from proxy.openapi import openapi_document
    from proxy.routes.memories import openapi_document as served_by_the_routes

    assert served_by_the_routes is openapi_document
    r = httpx.get(running.url + "/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == openapi_document()
