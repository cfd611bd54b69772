"""PostgreSQL connections are killed mid-write (`pg_terminate_backend`) while chats and memory writes run.

A killer keeps terminating every backend of the test database for a bounded number of rounds while
chats (fail-open) and `POST /v1/memories` calls go on. A chat whose outbox commit was cut is still
answered, and its exchange waits in the retry queue until a fresh connection takes it; a memory-API
call that was cut answers 503 (`storage_unavailable`), not a bare 500. Afterwards every acknowledged
chat and every memory the API acknowledged is findable, nothing was lost, and the audit chain
verifies.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.support.faults import acknowledged, audit_intact, chat, fact, wait_findable
from tests.support.proxy import proxy_env
from tests.support.upstream import FakeUpstream

CHATS = 40
POSTS = 12
KILL_ROUNDS = 200
KILL_EVERY_S = 0.03


class Killer:
    """Terminates the database's other backends, round after round, until stopped (at most `rounds`)."""

    def __init__(self, pg_url: str, rounds: int) -> None:
        url = make_url(pg_url)
        self.database = url.database
        self.admin = psycopg.connect(
            url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False),
            autocommit=True,
        )
        self.rounds = rounds
        self.killed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-killer", daemon=True)

    def _run(self) -> None:
        for _ in range(self.rounds):
            if self._stop.wait(KILL_EVERY_S):
                return
            row = self.admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.database,),
            ).fetchone()
            self.killed += int(row[0]) if row else 0

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.admin.close()


def test_killed_postgres_connections_lose_no_acknowledged_write(
    pg_url: str, upstream: FakeUpstream, proxy, tmp_path
) -> None:
    data_dir = tmp_path / "data"
    running = proxy(data_dir=data_dir, database_url=pg_url, embedding_model="hash", key_cache_ttl_s=600)
    key = running.create_key("acme")
    auth = {"Authorization": f"Bearer {key}"}
    warm = fact(250, "w")
    assert acknowledged(chat(running.base_url, key, "pia", warm), warm)
    wait_findable(running, key, "pia", [warm])

    facts = [fact(i, "p") for i in range(CHATS)]
    posted = [[fact(100 + 5 * i + j, "m") for j in range(5)] for i in range(POSTS)]

    def one_chat(i: int) -> bool:
        try:
            return acknowledged(chat(running.base_url, key, "pia", facts[i], stream=i % 2 == 1), facts[i])
        except httpx.HTTPError:
            return False

    def one_post(i: int) -> int:
        return one_post_of(posted[i])

    def one_post_of(texts: list[str]) -> int:
        body = {"user": "max", "memories": [{"text": t} for t in texts]}
        reply = httpx.post(f"{running.base_url}/memories", json=body, headers=auth, timeout=30)
        if reply.status_code >= 500:
            assert reply.json()["error"]["code"] == "storage_unavailable", reply.text
        return reply.status_code

    with Killer(pg_url, KILL_ROUNDS) as killer, ThreadPoolExecutor(6) as pool:
        chats = pool.map(one_chat, range(CHATS))
        posts = pool.map(one_post, range(POSTS))
        chat_ok, post_status = list(chats), list(posts)
    if killer.killed == 0:
        pytest.fail("no backend was terminated: the fault was not injected")

    told = [f for f, ok in zip(facts, chat_ok, strict=True) if ok]
    assert len(told) >= CHATS // 2, f"only {len(told)} of {CHATS} chats were answered"
    stored = [t for texts, status in zip(posted, post_status, strict=True) if status == 200 for t in texts]
    after = [fact(190 + j, "m") for j in range(5)]  # with the killer gone, a write goes through at once
    assert one_post_of(after) == 200
    stored += after
    wait_findable(running, key, "pia", told)
    wait_findable(running, key, "max", stored)
    retry = running.services.write_retry.snapshot()
    assert retry.lost == 0 and retry.waiting == 0
    env = proxy_env(data_dir, upstream.base_url, MEMOS_DATABASE_URL=pg_url)
    audit_intact(env)
    print(
        f"\npostgres killed: {killer.killed} backends terminated; {len(told)}/{CHATS} chats acknowledged "
        f"({retry.held} waited in the retry queue), all written back; "
        f"{post_status.count(200)}/{POSTS} memory POSTs acknowledged, all findable"
    )
