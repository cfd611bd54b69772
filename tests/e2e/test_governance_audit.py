"""The audit trail of real traffic: it names the memory ids read, written, injected, changed and
erased, records key, policy and auth events, never holds text, pages with a cursor, and the real
`memos-proxy audit verify` passes on it and fails, naming the first bad entry, once it is tampered with."""

from __future__ import annotations

import sqlite3

import httpx
import openai
import pytest

from tests.support.memory import until
from tests.support.proxy import RunningProxy, proxy_env, run_cli

WORDS = ["quibbleworth", "marzipanic", "zephyrine", "glockenspar", "trundlewick"]
MODEL = "gpt-4o-mini"


def _all_entries(api: httpx.Client, limit: int = 1000) -> list[dict]:
    entries, cursor, pages = [], None, 0
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        reply = api.get("/audit", params=params)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        entries.extend(body["data"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    return entries


@pytest.fixture
def running(proxy, upstream) -> RunningProxy:
    return proxy(key_cache_ttl_s=0, embedding_model="hash", worker_poll_interval_s=0.02)


def test_audit_trail_of_real_traffic(running: RunningProxy, upstream, tmp_path):
    env = proxy_env(running.settings.data_dir, upstream.base_url)
    admin_key = run_cli("keys", "create", "--tenant", "acme", "--role", "admin", env=env).stdout.splitlines()[
        -1
    ]
    app_key = running.create_key("acme", "app")
    bound_key = running.create_key("acme", "user", user="u1")
    admin = httpx.Client(
        base_url=running.base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
    )
    app = httpx.Client(base_url=running.base_url, headers={"Authorization": f"Bearer {app_key}"}, timeout=30)

    # Writes, reads, an update, a delete, history.
    written = app.post(
        "/memories",
        json={"user": "u1", "memories": [{"text": f"I collect {w} figurines"} for w in WORDS[:3]]},
    ).json()["data"]
    written_ids = [m["id"] for m in written]
    hits = app.post("/memories/search", json={"user": "u1", "query": f"{WORDS[0]} figurines"}).json()["data"]
    hit_ids = [h["id"] for h in hits]
    assert hit_ids and set(hit_ids) <= set(written_ids)
    assert app.get(f"/memories/{written_ids[1]}").status_code == 200
    assert (
        app.patch(f"/memories/{written_ids[1]}", json={"text": f"I collect {WORDS[3]} now"}).status_code
        == 200
    )
    assert app.get(f"/memories/{written_ids[1]}/history").status_code == 200
    assert app.delete(f"/memories/{written_ids[2]}").status_code == 200

    # Chat: injection (ids read into the prompt) and write-back (ids written by the worker).
    client = openai.OpenAI(base_url=running.base_url, api_key=app_key, max_retries=0)
    reply = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": f"Do you remember my {WORDS[0]} figurines? Also I adore {WORDS[4]}."}
        ],
        extra_headers={"X-Memos-User": "u1"},
    )
    assert int(reply.headers["x-memos-memories"]) >= 1

    # Another user, then erased.
    app.post("/memories", json={"user": "u2", "memories": [{"text": f"u2 likes {WORDS[4]}"}]})
    assert app.delete("/memories", params={"user": "u2"}).status_code == 200

    # An auth failure (right key id, wrong secret), a revoked key, a policy reload.
    key_id = app_key.split("-")[1]
    bad = httpx.get(f"{running.base_url}/audit", headers={"Authorization": f"Bearer mp-{key_id}-nope"})
    assert bad.status_code == 401
    spare = run_cli("keys", "create", "--tenant", "acme", "--role", "readonly", env=env).stdout.splitlines()[
        -1
    ]
    assert run_cli("keys", "revoke", spare.split("-")[1], env=env).returncode == 0
    policies = running.settings.resolved_policy_dir
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "acme.yaml").write_text("audit_level: all\n")
    running.services.policies.reload()

    # Only admins read the audit trail.
    assert app.get("/audit").status_code == 403
    assert (
        httpx.get(f"{running.base_url}/audit", headers={"Authorization": f"Bearer {bound_key}"}).status_code
        == 403
    )

    # Wait for the write-back of the chat to land in the trail.
    def writes() -> list[dict]:
        return [e for e in _all_entries(admin) if e["action"] == "memory.write"]

    until(lambda: len(writes()) >= 3, "the write-back is audited")
    entries = _all_entries(admin, limit=3)  # page by page, following the cursor
    assert entries == _all_entries(admin)
    by_action: dict[str, list[dict]] = {}
    for e in entries:
        by_action.setdefault(e["action"], []).append(e)

    first_write = by_action["memory.write"][0]
    assert first_write["memory_ids"] == written_ids and first_write["user"] == "u1"
    assert first_write["key_id"] == key_id and first_write["request_id"]
    reads = by_action["memory.read"]
    assert any(e["memory_ids"] == hit_ids and e["detail"].get("op") == "search" for e in reads)
    assert any(e["memory_ids"] == [written_ids[1]] and e["detail"].get("op") == "get" for e in reads)
    assert [e["memory_ids"] for e in by_action["memory.update"]] == [[written_ids[1]]]
    assert [e["memory_ids"] for e in by_action["memory.delete"]] == [[written_ids[2]]]
    injected = by_action["memory.inject"]
    assert injected and injected[-1]["user"] == "u1" and set(injected[-1]["memory_ids"]) <= set(written_ids)
    assert injected[-1]["request_id"] == reply.headers["x-request-id"]
    assert any(e["request_id"] == reply.headers["x-request-id"] for e in by_action["memory.write"][1:])
    assert [e["user"] for e in by_action["memory.erase"]] == ["u2"]
    assert by_action["auth.failure"][0]["key_id"] in (None, key_id)
    assert {e["action"] for e in entries} >= {"key.create", "key.revoke", "policy.reload"}

    # Never text: none of the words told, in any field of any entry.
    dump = str(entries).lower()
    for word in WORDS:
        assert word not in dump
    assert "figurine" not in dump

    # The real CLI verifies the trail; then tampering is caught and named.
    result = run_cli("audit", "verify", "--tenant", "acme", env=env)
    assert result.returncode == 0, result.stderr
    target = next(e["seq"] for e in entries if e["action"] == "memory.delete")
    db_path = running.settings.data_dir / "memos.db"
    with sqlite3.connect(db_path) as conn:  # hide the deletion: rewrite it as a read
        conn.execute("UPDATE audit_entries SET action='memory.read' WHERE tenant='acme' AND seq=?", (target,))
    result = run_cli("audit", "verify", "--tenant", "acme", env=env)
    assert result.returncode == 1
    assert f"BROKEN at entry {target}:" in result.stderr


def test_chats_memory_skipped_are_summarised_in_the_trail(proxy, upstream):
    """A client that names no user (Open WebUI's default, litellm's openai/ provider) skips memory on
    every chat: the trail gets one memory.skipped entry per window with the counts, not one per chat."""
    running = proxy(embedding_model="hash", memory_skip_audit_interval_s=0.05)
    admin = httpx.Client(
        base_url=running.base_url,
        headers={"Authorization": f"Bearer {running.create_key('acme', 'admin')}"},
        timeout=30,
    )
    client = openai.OpenAI(
        base_url=running.base_url, api_key=running.create_key("acme", "app"), max_retries=0
    )
    request_ids = []
    for word in WORDS[:3]:
        reply = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"I keep {word} bees."}]
        )
        assert reply.headers["x-memos-memory-reason"] == "no_user"
        request_ids.append(reply.headers["x-request-id"])
    answer = client.responses.with_raw_response.create(model=MODEL, input=f"My cat is {WORDS[3]}.")
    assert answer.headers["x-memos-memory-reason"] == "no_user"

    def skipped() -> list[dict]:
        return [e for e in _all_entries(admin) if e["action"] == "memory.skipped"]

    until(lambda: sum(e["detail"].get("total", 0) for e in skipped()) >= 4, "the skips are audited")
    entries = skipped()
    assert sum(e["detail"]["no_user"] for e in entries) == 4 and len(entries) <= 4
    assert entries[0]["detail"]["request_ids"] == [request_ids[0]]
    assert all(e["user"] is None and e["memory_ids"] == [] for e in entries)
    assert not any(word in str(entries).lower() for word in WORDS)
    assert admin.get("/audit/verify").json()["ok"] is True
