"""/readyz follows write-back: red while the outbox's oldest exchange has waited longer than
MEMOS_READY_OUTBOX_MAX_AGE_S (no worker drains it), and it says whether this process's worker runs.
It names the vault, the vector store and the embedder, red while one of them cannot serve; every
body is of the shape /openapi.json publishes."""

from __future__ import annotations

import httpx

from tests.support.upstream import FakeUpstream

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "I live in Lyon."}]}


def test_a_stalled_outbox_turns_readiness_red(proxy, upstream: FakeUpstream) -> None:
    running = proxy(embedding_model="hash", worker_enabled=False, ready_outbox_max_age_s=0.0)
    key = running.create_key("acme")
    ready = httpx.get(f"{running.url}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["outbox"] == {"pending": 0, "oldest_age_s": 0.0, "stalled": False}
    assert "worker" not in ready.json()  # this process runs none (`memos-proxy worker` would)

    chat = httpx.post(
        f"{running.base_url}/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {key}", "X-Memos-User": "ola"},
    )
    assert chat.status_code == 200
    stalled = httpx.get(f"{running.url}/readyz")
    assert stalled.status_code == 503
    body = stalled.json()
    assert body["status"] == "not_ready" and body["outbox"]["pending"] == 1 and body["outbox"]["stalled"]
    published(body)


def test_a_serving_worker_is_reported(proxy) -> None:
    running = proxy(embedding_model="hash")
    ready = httpx.get(f"{running.url}/readyz")
    assert ready.status_code == 200 and ready.json()["worker"] == "running"


def published(body: dict) -> None:
    """`body` validates against the Readiness schema of /openapi.json."""
    import jsonschema

    from proxy.openapi import openapi_document

    doc = openapi_document()
    schema = {"$ref": "#/components/schemas/Readiness", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


def test_readiness_names_the_vault_the_vectors_and_the_embedder(proxy) -> None:
    running = proxy(embedding_model="hash")
    ready = httpx.get(f"{running.url}/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["vault"] == "ok" and body["vectors"] == "ok"
    assert body["embedder"] == {"name": "hash", "ready": True}
    published(body)


def test_a_vector_store_that_does_not_answer_turns_readiness_red(proxy, tmp_path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the vector store's directory should be")
    running = proxy(embedding_model="hash", vector_uri=str(blocker / "vectors"))
    ready = httpx.get(f"{running.url}/readyz")
    assert ready.status_code == 503, ready.text
    body = ready.json()
    assert body["status"] == "not_ready" and body["vectors"] == "unreachable" and body["vault"] == "ok"
    published(body)
    assert httpx.get(f"{running.url}/healthz").status_code == 200  # alive all the same
