"""Retrieval: dense + keyword candidates from the vault, ranked (memos/ranking.py), thresholded, fitted
to a budget, with neighbouring turns of the same session as context.

Blocking (it queries the vault); the query vector is computed by the caller (the async service embeds
through the micro-batcher). Deterministic: the same vault state and query give the same list.

v1 by H2a; H3 (retrieval quality) owns this module and memos/ranking.py from 00:35 UTC.
Notes for H3:
- `Candidate` carries everything the ranker may use; add fields there and fill them in `_candidates`.
- vault.dense returns (memory id, vector id, cosine) unvalidated; a hit counts only when the SQL row's
  vector_id matches (stale vectors of older versions are dropped here).
- vault.keyword scores BM25 in SQL over blinded terms from memos.keyword.tokenize; changing the
  tokenizer requires MemVault.reindex_keywords for stored memories.
- vault.neighbours(window) gives same-session items by per-owner sequence number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from memos.item import MemoryItem
from memos.ranking import Candidate, RankParams, rank
from memos.vault import MemVault, StoredMemory

CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class RetrievalParams:
    top_k: int = 12
    char_budget: int | None = None  # total characters of memories (and context) returned; None: no cap
    min_score: float = 0.0
    candidates: int = 50  # per list (dense, keyword)
    neighbours: int = 0  # same-session turns on each side of a hit to attach as context (0: none)
    rank: RankParams = field(default_factory=RankParams)

    @classmethod
    def from_policy(
        cls, policy: Any, *, top_k: int | None = None, neighbours: int | None = None
    ) -> RetrievalParams:
        memory = policy.memory
        budget = int(memory.token_budget) * CHARS_PER_TOKEN if memory.token_budget else None
        return cls(
            top_k=int(top_k or memory.top_k),
            char_budget=budget,
            min_score=float(memory.min_score),
            neighbours=0 if neighbours is None else neighbours,
        )


@dataclass
class Hit:
    item: MemoryItem
    score: float
    dense: float | None = None
    keyword: float | None = None
    context: list[MemoryItem] = field(default_factory=list)  # neighbouring turns, session order


class Retriever:
    def __init__(self, vault: MemVault, params: RetrievalParams | None = None) -> None:
        self.vault = vault
        self.params = params or RetrievalParams()

    def search(
        self,
        tenant: str,
        owner: str,
        query: str,
        query_vector: np.ndarray | None,
        params: RetrievalParams | None = None,
        now: datetime | None = None,
    ) -> list[Hit]:
        p = params or self.params
        now = now or datetime.now(UTC)
        stats = self.vault.stats(tenant, owner)
        if stats.doc_count <= 0 or p.top_k <= 0:
            return []
        dense = (
            self.vault.dense(tenant, owner, query_vector, p.candidates, changes=stats.changes)
            if query_vector is not None
            else []
        )
        keyword = self.vault.keyword(tenant, owner, query, p.candidates, stats=stats) if query.strip() else []
        stored = self.vault.get_many(tenant, {h[0] for h in dense} | {h[0] for h in keyword}, owner=owner)
        candidates = _candidates(stored, dense, keyword, now)
        ranked = rank(list(candidates.values()), p.rank, now)
        hits: list[Hit] = []
        used = 0
        chosen: set[str] = set()
        for s in ranked:
            if len(hits) >= p.top_k:
                break
            if s.score < p.min_score:
                break
            item = stored[s.id].item
            cost = len(item.text)
            if p.char_budget is not None and used + cost > p.char_budget:
                continue
            used += cost
            chosen.add(s.id)
            c = candidates[s.id]
            hits.append(Hit(item=item, score=s.score, dense=c.dense_score, keyword=c.keyword_score))
        if p.neighbours > 0 and hits:
            around = self.vault.neighbours(tenant, owner, [stored[h.item.id] for h in hits], p.neighbours)
            for hit in hits:
                for n in around.get(hit.item.id, []):
                    if n.id in chosen or _expired(n, now):
                        continue
                    cost = len(n.item.text)
                    if p.char_budget is not None and used + cost > p.char_budget:
                        continue
                    used += cost
                    chosen.add(n.id)
                    hit.context.append(n.item)
        return hits


def _expired(s: StoredMemory, now: datetime) -> bool:
    if s.expires_at is not None and s.expires_at <= now:
        return True
    return s.invalid_at is not None and s.invalid_at <= now


def _candidates(
    stored: dict[str, StoredMemory],
    dense: Sequence[tuple[str, str, float]],
    keyword: Sequence[tuple[str, float]],
    now: datetime,
) -> dict[str, Candidate]:
    out: dict[str, Candidate] = {}

    def base(mid: str) -> Candidate:
        s = stored[mid]
        return out.get(mid) or Candidate(
            id=mid,
            observed_at=s.observed_at,
            created_at=s.created_at,
            importance=s.importance,
            hits=s.hits,
            seq=s.seq,
        )

    rank_no = 0
    for mid, vid, score in dense:
        s = stored.get(mid)
        if s is None or s.vector_id != vid or _expired(s, now) or (mid in out and out[mid].dense_rank):
            continue
        rank_no += 1
        out[mid] = replace(base(mid), dense_rank=rank_no, dense_score=score)
    rank_no = 0
    for mid, score in keyword:
        s = stored.get(mid)
        if s is None or _expired(s, now):
            continue
        rank_no += 1
        out[mid] = replace(base(mid), keyword_rank=rank_no, keyword_score=score)
    return out
