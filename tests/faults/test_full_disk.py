"""A full disk: the data dir is a 30 MiB tmpfs, filled to the last byte while the proxy serves.

What must hold (issue 11): every chat of a fail-open tenant is answered and, once space is freed, every
one is written back (none lost: they waited in the retry queue); a fail-closed tenant is refused with
503 before its upstream is called; the memory API answers 507 with a clear message and changes nothing
(a 50-memory POST that failed leaves no memory and no audit entry); /readyz is red while writes fail
and green again after; /healthz stays ok; the audit chains verify. Runs as root (tmpfs mount); skipped,
saying why, where mounting is not allowed.
"""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.support.faults import acknowledged, audit_intact, chat, fact, fill, metric, wait_findable
from tests.support.memory import until
from tests.support.proxy import proxy_env
from tests.support.upstream import FakeUpstream

CHATS = 64
BULK = 50


def truncate_wal(db_path: Path) -> None:
    """Empty the WAL file, so that on the full disk the next commit needs space it cannot get (a WAL
    that already has room would take a few commits more)."""
    conn = sqlite3.connect(db_path, timeout=10)
    try:
        deadline = time.monotonic() + 30
        while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] != 0:
            assert time.monotonic() < deadline, "the WAL could not be checkpointed"
            time.sleep(0.05)
    finally:
        conn.close()


def test_a_full_disk_loses_no_acknowledged_exchange(
    small_tmpfs, upstream: FakeUpstream, proxy, tmp_path
) -> None:
    data_dir = small_tmpfs(30) / "data"
    policies = tmp_path / "policies"  # off the tmpfs: the policy store is not under test
    policies.mkdir()
    (policies / "strict.yaml").write_text("memory:\n  fail_mode: closed\n")
    running = proxy(data_dir=data_dir, policy_dir=policies, embedding_model="hash", key_cache_ttl_s=60)
    open_key, closed_key = running.create_key("acme"), running.create_key("strict")
    base = running.base_url
    auth = {"Authorization": f"Bearer {open_key}"}

    # Warm: tables, vector table and caches exist before the disk fills.
    warm = fact(200, "w")
    assert acknowledged(chat(base, open_key, "olga", warm), warm)
    assert acknowledged(chat(base, closed_key, "carl", fact(201, "w")), fact(201, "w"))
    wait_findable(running, open_key, "olga", [warm])
    truncate_wal(data_dir / "memos.db")
    filler = fill(data_dir.parent)

    # A fail-open tenant: every chat answered, none lost.
    facts = [fact(i, "o") for i in range(CHATS)]
    with ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(lambda i: chat(base, open_key, "olga", facts[i], stream=i % 2 == 1), range(CHATS))
        )
    assert [acknowledged(r, f) for r, f in zip(replies, facts, strict=True)] == [True] * CHATS
    scraped = httpx.get(f"{running.url}/metrics", timeout=10).text
    waiting = metric(scraped, "memos_write_retry_waiting")
    assert waiting >= 1, "no chat's outbox commit failed: the disk was not full"
    assert metric(scraped, "memos_write_retry_lost_total") == 0
    assert metric(scraped, "memos_storage_writes_failing") == 1

    ready = httpx.get(f"{running.url}/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["storage"]["writes"] == "failing", ready.text
    assert httpx.get(f"{running.url}/healthz", timeout=10).status_code == 200  # liveness

    # A fail-closed tenant: refused before the upstream is called.
    asked = len(upstream.chat_requests)
    refused = chat(base, closed_key, "carl", fact(202, "c"))
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "memory_unavailable"
    assert len(upstream.chat_requests) == asked

    # The memory API: 507 with a clear message, and nothing written.
    bulk = [{"text": fact(i, "b")} for i in range(BULK)]
    started = time.perf_counter()
    failed = httpx.post(f"{base}/memories", json={"user": "bert", "memories": bulk}, headers=auth, timeout=30)
    seconds_to_507 = time.perf_counter() - started
    assert failed.status_code == 507, failed.text
    error = failed.json()["error"]
    assert error["code"] == "insufficient_storage" and "full" in error["message"]

    # Space comes back: the waiting exchanges are written, readiness turns green.
    filler.unlink()
    until(lambda: httpx.get(f"{running.url}/readyz", timeout=10).status_code == 200, "ready again", 60)
    until(
        lambda: (
            metric(httpx.get(f"{running.url}/metrics", timeout=10).text, "memos_write_retry_waiting") == 0
        ),
        "the retry queue drained",
        60,
    )
    wait_findable(running, open_key, "olga", facts)
    scraped = httpx.get(f"{running.url}/metrics", timeout=10).text
    assert metric(scraped, "memos_write_retry_lost_total") == 0

    listed = httpx.get(f"{base}/memories", params={"user": "bert"}, headers=auth, timeout=10)
    assert listed.status_code == 200 and listed.json()["data"] == []  # the failed POST left nothing
    trail = running.services.audit.list("acme", 1000, None)[0]
    assert not [e for e in trail if e.user == "bert" and e.action == "memory.write"]

    env = proxy_env(data_dir, upstream.base_url)
    audit_intact(env)
    print(
        f"\nfull disk: {CHATS} chats acknowledged, {int(waiting)} waited for storage, "
        f"{CHATS} written back after space was freed, 0 lost; memory API 507 after "
        f"{seconds_to_507:.3f}s; /readyz 503 while full, 200 after"
    )
