"""Write-back fairness, end to end: one user's huge chat does not hold up other users' write-back.

A chat of 2,000 user messages (and no assistant one: all of them "new") is written back as its latest
MAX_EXCHANGE_TURNS turns and yields at most MAX_FACTS_PER_EXCHANGE memories; while it is still being
read (its extractor call held open by the test), other users' chats are written back. The order is
read from what happened (the extractor's request, the outbox, the memory API), never from timings.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import orjson

from memos.writeback.outbox import Outbox
from memos.writeback.reader import MAX_EXCHANGE_TURNS, MAX_FACTS_PER_EXCHANGE
from tests.support.memory import listed, remembered, until
from tests.support.proxy import RunningProxy, proxy_settings, run_proxy
from tests.support.upstream import FakeUpstream

MODEL = "gpt-4o-mini"
EXTRACTOR = "extractor-model"
HUGE = 2_000
NORMAL = [("ann", "My locker code is 4711."), ("bob", "I live in Tromso."), ("cid", "My dog is called Rex.")]


def chat(running: RunningProxy, key: str, user: str, messages: list[dict]) -> None:
    reply = httpx.post(
        f"{running.base_url}/chat/completions",
        json={"model": MODEL, "messages": messages, "user": user},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text


def huge_chat() -> list[dict]:
    return [{"role": "user", "content": f"I have a note with number {i}."} for i in range(HUGE)]


def memories(running: RunningProxy, key: str, user: str) -> list[str]:
    return [item["memory"] for item in listed(running, key, user)]


def pending(running: RunningProxy, tenant: str) -> int:
    return Outbox(running.services.db, running.services.keyring).pending(tenant)


def test_other_users_are_written_back_while_a_huge_chat_is_still_being_read(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """The huge chat's tenant reads with an extractor model on its own upstream, which the test holds
    until the other users' memories are in: the worker must not wait for it to take their rows."""
    release = threading.Event()
    extraction_prompts: list[str] = []

    def extractor(body: dict) -> str:
        prompt = body["messages"][-1]["content"]
        if not prompt.startswith("Exchange date"):
            return "{}"  # the operator's questions (contradiction, duplicate): nothing to say
        extraction_prompts.append(prompt)
        release.wait(60)  # the huge exchange is being read, for as long as the test says
        facts = [{"text": f"The user has a note numbered {i}."} for i in range(200)]
        return orjson.dumps({"facts": facts}).decode()

    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    chat_upstream = f"upstream:\n  base_url: {upstream.base_url}\n"
    (policy_dir / "bigco.yaml").write_text(f"{chat_upstream}memory:\n  extractor: llm:{EXTRACTOR}\n")
    (policy_dir / "acme.yaml").write_text(chat_upstream)
    with FakeUpstream() as extractor_upstream:  # the process's default upstream: the extractor's
        extractor_upstream.responder = extractor
        settings = proxy_settings(
            tmp_path,
            extractor_upstream.base_url,
            policy_dir=policy_dir,
            key_cache_ttl_s=0,
            embedding_model="hash",
            worker_poll_interval_s=0.02,
        )
        try:
            with run_proxy(settings) as running:
                big_key, key = running.create_key("bigco"), running.create_key("acme")
                chat(running, big_key, "hugo", huge_chat())
                until(lambda: extraction_prompts, "the huge exchange is claimed and being read")

                for user, fact in NORMAL:
                    chat(running, key, user, [{"role": "user", "content": fact}])
                for user, fact in NORMAL:
                    remembered(running, key, user, fact)
                # ...while the huge one is still being read: its row is in the outbox, nothing written.
                assert not release.is_set() and pending(running, "bigco") == 1
                assert memories(running, big_key, "hugo") == []

                # What the extractor was shown: the chat's latest turns only.
                [prompt] = extraction_prompts
                transcript = orjson.loads(prompt.split("Exchange (JSON):\n", 1)[1])
                said = [turn["content"] for turn in transcript if turn["role"] == "user"]
                assert len(said) == MAX_EXCHANGE_TURNS
                assert said[-1] == f"I have a note with number {HUGE - 1}."

                release.set()
                until(lambda: pending(running, "bigco") == 0, "the huge exchange is written back")
                stored = memories(running, big_key, "hugo")
                assert 0 < len(stored) <= MAX_FACTS_PER_EXCHANGE
                assert "The user has a note numbered 199." in stored  # the newest facts are kept
        finally:
            release.set()


def test_a_huge_chat_read_heuristically_yields_at_most_the_capped_memories(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """The default reader: 2,000 distinct statements in one chat, sent with other users' chats; every
    one of those is remembered, and the huge chat leaves at most MAX_FACTS_PER_EXCHANGE memories, the
    newest statements among them."""
    settings = proxy_settings(
        tmp_path, upstream.base_url, key_cache_ttl_s=0, embedding_model="hash", worker_poll_interval_s=0.02
    )
    with run_proxy(settings) as running:
        key = running.create_key("acme")
        chat(running, key, "hugo", huge_chat())
        for user, fact in NORMAL:
            chat(running, key, user, [{"role": "user", "content": fact}])
        for user, fact in NORMAL:
            remembered(running, key, user, fact)
        until(lambda: pending(running, "acme") == 0, "every exchange is written back")
        stored = memories(running, key, "hugo")
        assert 0 < len(stored) <= MAX_FACTS_PER_EXCHANGE
        assert any(f"number {HUGE - 1}." in m for m in stored)
        assert not any("number 0." in m for m in stored)
