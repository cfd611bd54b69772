"""The thread pools of memory's blocking work: one per kind of work, each bounded.

Why separate pools: a search waits (on the event loop) for its query's embedding; if the embedding
queued on the pool the searches fill, enough concurrent searches starve it (seen: every default
executor thread in a search, the embeddings queued behind them, requests answered after 5 s without
memory). Here no task of a pool waits on another task of the same pool:
- `query_embedding`: one thread; the MicroBatcher runs one batch at a time there, and a batch holds
  every query that arrived while the previous one ran (torch uses its own threads inside a batch);
- `recall`: the two blocking phases of a search (keyword list, then dense list and ranking); they
  never wait for the embedding, which the event loop awaits between them.
- `audit`: one thread; the request path's audit appends, one group commit at a time
  (memos.governance.group_commit).
Write-back and the memory API's vault calls keep the loop's default executor.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryPools:
    query_embedding: ThreadPoolExecutor
    recall: ThreadPoolExecutor
    audit: ThreadPoolExecutor

    @classmethod
    def create(cls, recall_threads: int) -> MemoryPools:
        return cls(
            query_embedding=ThreadPoolExecutor(max_workers=1, thread_name_prefix="memos-embed-query"),
            recall=ThreadPoolExecutor(max_workers=max(1, recall_threads), thread_name_prefix="memos-recall"),
            audit=ThreadPoolExecutor(max_workers=1, thread_name_prefix="memos-audit"),
        )

    def start(self) -> None:
        return None

    def stop(self) -> None:
        """A background job's stop (proxy.services.Background): threads end once their work is done."""
        self.query_embedding.shutdown(wait=False, cancel_futures=True)
        self.recall.shutdown(wait=False, cancel_futures=True)
        self.audit.shutdown(wait=True)  # a commit in flight finishes: its callers were told it would
