"""Waiting for write-back through the memory API: search, and poll with a deadline (never a timing)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.support.proxy import ProxyProcess, RunningProxy

DEADLINE_S = 60.0


def search_hits(running: RunningProxy | ProxyProcess, key: str, user: str, query: str) -> list[dict]:
    reply = httpx.post(
        f"{running.base_url}/memories/search",
        json={"user": user, "query": query, "top_k": 20},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


def add_memories(
    running: RunningProxy | ProxyProcess, key: str, user: str, memories: list[str] | list[dict]
) -> list[str]:
    """Store `memories` (texts, or entries such as {"text": ..., "observed_at": ...}) as the user's
    memories, verbatim (POST /v1/memories, infer: false); returns their ids."""
    reply = httpx.post(
        f"{running.base_url}/memories",
        headers={"Authorization": f"Bearer {key}"},
        json={"user": user, "memories": memories, "infer": False},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return [item["id"] for item in reply.json()["data"]]


def listed(running: RunningProxy | ProxyProcess, key: str, user: str) -> list[dict]:
    """The user's memories (the first 1,000, newest first), as GET /v1/memories answers them."""
    reply = httpx.get(
        f"{running.base_url}/memories",
        params={"user": user, "limit": 1000},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


def search(running: RunningProxy | ProxyProcess, key: str, user: str, query: str) -> list[str]:
    return [hit["memory"] for hit in search_hits(running, key, user, query)]


def until(predicate: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < deadline, f"not reached before the deadline: {what}"
        time.sleep(0.05)


def remembered(running: RunningProxy, key: str, user: str, text: str) -> None:
    """Wait until the user's memories hold `text` (the worker has written it back)."""
    until(lambda: any(text in m for m in search(running, key, user, text)), f"{user} remembers {text!r}")
