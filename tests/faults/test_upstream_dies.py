"""The upstream dies mid-answer: its connection is cut after a few streamed chunks (or mid-body).

The client of a cut answer gets an error (an error event and no `[DONE]` for a stream, 502 otherwise):
it was not acknowledged, so nothing of it is written back. Every chat answered in full before and after
the cuts is written back, and the audit chain verifies.
"""

from __future__ import annotations

from memos.writeback.outbox import Outbox
from tests.support.faults import acknowledged, audit_intact, chat, fact, wait_findable
from tests.support.memory import search, until
from tests.support.proxy import proxy_env
from tests.support.upstream import FakeUpstream

ROUNDS = 6


def test_an_upstream_cut_mid_stream_loses_no_acknowledged_exchange(
    upstream: FakeUpstream, proxy, tmp_path
) -> None:
    running = proxy(data_dir=tmp_path / "data", embedding_model="hash")
    key = running.create_key("acme")
    told: list[str] = []
    cut: list[str] = []
    for i in range(ROUNDS):
        good = fact(i, "u")
        reply = chat(running.base_url, key, "uma", good, stream=i % 2 == 0)
        assert acknowledged(reply, good), reply.text
        told.append(good)

        lost = fact(100 + i, "x")
        upstream.drop(after_chunks=1 + i % 3, path="/v1/chat/completions")  # streamed: after a few chunks
        reply = chat(running.base_url, key, "uma", lost, stream=True)
        assert reply.status_code == 200 and "data: [DONE]" not in reply.text and '"error"' in reply.text
        cut.append(lost)

        lost = fact(150 + i, "x")
        upstream.drop(path="/v1/chat/completions")  # plain: mid-body
        reply = chat(running.base_url, key, "uma", lost)
        assert reply.status_code == 502, reply.text
        cut.append(lost)

    last = fact(99, "u")
    assert acknowledged(chat(running.base_url, key, "uma", last), last)
    told.append(last)

    wait_findable(running, key, "uma", told)
    # One user's exchanges are written back in order: with the last one findable and the outbox empty,
    # a cut answer that had been recorded would be findable too.
    outbox = Outbox(running.services.db, running.services.keyring)
    until(lambda: outbox.pending() == 0, "the outbox drained", 60)
    for text in cut:
        assert text not in search(running, key, "uma", text)
    assert running.services.write_retry.snapshot().lost == 0
    audit_intact(proxy_env(tmp_path / "data", upstream.base_url))
