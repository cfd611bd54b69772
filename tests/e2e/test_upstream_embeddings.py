"""Memory on an upstream embeddings model (`embedding_model="upstream:<model>"`), end to end.

The write-back embeds from a worker thread (operator, vault) while search and recall embed on the
serving loop; both must reach the upstream through the loop the server bound at start-up, chat after
chat (a first embedding from a thread once bound a private, soon closed, loop for good).
Every wait polls with a deadline; nothing asserts on wall time.
"""

from __future__ import annotations

from collections.abc import Callable

import openai

from memos.embeddings import UpstreamEmbedder
from tests.support.memory import remembered, search
from tests.support.proxy import RunningProxy
from tests.support.upstream import FakeUpstream

EMBED_MODEL = "embed-model"


def test_write_back_lands_and_is_searchable_chat_after_chat(
    proxy: Callable[..., RunningProxy], upstream: FakeUpstream
) -> None:
    running = proxy(embedding_model=f"upstream:{EMBED_MODEL}", worker_poll_interval_s=0.02, key_cache_ttl_s=0)
    embedder = running.services.memory.embedder.sync
    assert isinstance(embedder, UpstreamEmbedder)
    key = running.create_key("acme", "app")
    client = openai.OpenAI(base_url=running.base_url, api_key=key, max_retries=0)
    facts = ["My favourite colour is teal.", "I keep bees on my balcony.", "My sister lives in Porto."]
    # Write-only chats (no recall on the loop first): each write-back embeds from a worker thread, the
    # first of them before anything of this app but the start-up probe has embedded on the loop.
    for fact in facts:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": fact}],
            extra_headers={"X-Memos-User": "alice", "X-Memos-Memory": "write"},
        )
        remembered(running, key, "alice", fact)
    for fact in facts:
        assert any(fact in m for m in search(running, key, "alice", fact))
    assert all(fact not in m for m in search(running, key, "bob", facts[0]) for fact in facts)
    embedded = [r.json for r in upstream.requests if r.path.endswith("/embeddings")]
    assert embedded and all(body["model"] == EMBED_MODEL for body in embedded)
    assert embedder.dim == upstream.embedding_dim
    texts = [t for body in embedded for t in body["input"]]
    assert all(any(fact in t for t in texts) for fact in facts)  # the write-backs' embeddings went upstream
