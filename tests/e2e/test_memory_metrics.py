"""/metrics says what memory did: modes served, memories injected and block size, retrieval and
query-embedding times and batch sizes, exchanges and memories written back, and the outbox's backlog
(write-back failures: tests/memos/writeback/test_worker.py). The real proxy, the openai SDK and a
loopback upstream."""

from __future__ import annotations

import httpx
import openai

from memos.writeback.outbox import Outbox
from tests.support.memory import add_memories, until
from tests.support.upstream import FakeUpstream

MODEL = "gpt-4o-mini"


def scrape(running) -> dict[str, float]:
    """Samples by their full name with labels, e.g. 'memos_outbox_pending' or 'x_total{tenant="a"}'."""
    out: dict[str, float] = {}
    for line in httpx.get(running.url + "/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_memory_work_shows_in_metrics(proxy, upstream: FakeUpstream) -> None:
    running = proxy(embedding_model="hash", worker_poll_interval_s=0.02)
    key = running.create_key("acme")
    outbox = Outbox(running.services.core.db, running.services.core.keyring)
    add_memories(running, key, "ola", ["Ola likes jasmine tea."])

    with openai.OpenAI(base_url=running.base_url, api_key=key, max_retries=0) as client:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Which tea do I like? I also live in Lyon."}],
            user="ola",
        )
    until(lambda: outbox.pending() == 0, "the exchange was written back")

    m = scrape(running)
    assert m['memos_memory_requests_total{mode="plaintext",tenant="acme"}'] == 1
    assert m['memos_memory_injected_count{tenant="acme"}'] == 1
    assert m['memos_memory_injected_sum{tenant="acme"}'] == 1
    assert m['memos_memory_block_tokens_sum{tenant="acme"}'] > 0
    assert m['memos_recall_duration_seconds_count{tenant="acme"}'] == 1
    assert m["memos_query_embedding_batch_size_count"] >= 1
    assert m['memos_writeback_exchanges_total{tenant="acme"}'] == 1
    assert m['memos_writeback_memories_total{outcome="added",tenant="acme"}'] >= 1
    assert m["memos_outbox_pending"] == 0 and m["memos_outbox_oldest_age_seconds"] == 0
