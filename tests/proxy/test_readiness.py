"""/readyz follows write-back: red while the outbox's oldest exchange has waited longer than
MEMOS_READY_OUTBOX_MAX_AGE_S (no worker drains it), and it says whether this process's worker runs."""

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


def test_a_serving_worker_is_reported(proxy) -> None:
    running = proxy(embedding_model="hash")
    ready = httpx.get(f"{running.url}/readyz")
    assert ready.status_code == 200 and ready.json()["worker"] == "running"
