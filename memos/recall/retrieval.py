"""Retrieval: dense + keyword candidates from the vault, widened by their neighbouring turns, ranked
(memos/recall/ranking.py), thresholded and fitted to a budget.

`search` is blocking (it queries the vault) and takes the query vector; `asearch` embeds the query
through the caller's (micro-batched) embedder while the keyword side runs in a worker thread, then
runs the dense side and the ranking in a worker thread: no thread ever waits for the embedding.
Deterministic: the same vault state and query give the same list.

1. Candidates: the `candidates` best of the dense list and of the keyword list (BM25 over the blind
   index). The dense list is read deeper (`dense_lookup`; it costs one dot product per vector either
   way) so that most memories considered below have their own cosine; a memory beyond it gets the
   cosine of the list's last entry, an upper bound.
2. Context: the turns within `len(rank.neighbour_weights)` of the `anchors` most relevant candidates
   in their session join the candidates: the answer is often the turn after the one that matches.
3. `rank` scores every candidate with its session and neighbours, and the periods the query names
   (memos/recall/temporal.py); then the threshold, top_k and the character budget apply, in rank order.

`RetrievalParams.neighbours` additionally attaches same-session turns to each hit as `Hit.context`
(for clients that want the surrounding conversation; off by default).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from memos.item import MemoryItem
from memos.recall.ranking import Candidate, RankParams, named_speakers, own_relevance, rank
from memos.recall.temporal import periods
from memos.storage.owners import OwnerStats
from memos.storage.search import StoredMemory
from memos.storage.vault import MemVault

CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class RetrievalParams:
    top_k: int = 12
    char_budget: int | None = None  # total characters of memories (and context) returned; None: no cap
    min_score: float = 0.0
    candidates: int = 50  # per list (dense, keyword)
    dense_lookup: int = 200  # how deep the dense list is read for the cosines of context turns
    anchors: int = 20  # the most relevant candidates whose neighbouring turns join the candidates
    neighbours: int = 0  # same-session turns on each side of a hit to attach as Hit.context (0: none)
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


def with_context(hits: Sequence[Hit]) -> list[MemoryItem]:
    """The hits' items best first, each followed by the neighbouring turns it brought as context: what
    injection chooses from."""
    items: list[MemoryItem] = []
    for hit in hits:
        items.append(hit.item)
        items.extend(hit.context)
    return items


@dataclass(frozen=True)
class KeywordPhase:
    """What `search` reads before it needs the query vector: the owner's statistics and keyword list."""

    stats: OwnerStats
    keyword: list[tuple[str, float]]


class Retriever:
    def __init__(
        self,
        vault: MemVault,
        params: RetrievalParams | None = None,
        *,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.vault = vault
        self.params = params or RetrievalParams()
        # Where `asearch` runs its blocking phases (None: the loop's default executor). Neither phase
        # ever waits for the embedding: the event loop awaits it between them, so a pool full of
        # searches cannot starve the embedder.
        self._executor = executor

    async def asearch(
        self,
        tenant: str,
        owner: str,
        query: str,
        embed_one: Callable[[str], Awaitable[np.ndarray]],
        params: RetrievalParams | None = None,
    ) -> list[Hit]:
        """`search` with the query embedded meanwhile: the keyword list and the owner's statistics are
        read in a worker thread while the embedder computes the vector, then the dense side and the
        ranking run in a worker thread with it."""
        p = params or self.params
        loop = asyncio.get_running_loop()
        embedding = asyncio.ensure_future(embed_one(query))
        try:
            first = await loop.run_in_executor(self._executor, self.keyword_phase, tenant, owner, query, p)
            if first is None:
                return []
            vector = await embedding
        finally:
            if not embedding.done():
                embedding.cancel()
        return await loop.run_in_executor(
            self._executor, lambda: self.dense_phase(tenant, owner, query, vector, p, first)
        )

    def search(
        self,
        tenant: str,
        owner: str,
        query: str,
        query_vector: np.ndarray | None,
        params: RetrievalParams | None = None,
        now: datetime | None = None,
    ) -> list[Hit]:
        """Blocking: both phases of `asearch` in the calling thread."""
        p = params or self.params
        first = self.keyword_phase(tenant, owner, query, p)
        if first is None:
            return []
        return self.dense_phase(tenant, owner, query, query_vector, p, first, now)

    def keyword_phase(self, tenant: str, owner: str, query: str, p: RetrievalParams) -> KeywordPhase | None:
        """The owner's statistics and the keyword list; None when there is nothing to search."""
        stats = self.vault.stats(tenant, owner)
        if stats.doc_count <= 0 or p.top_k <= 0:
            return None
        width = max(p.candidates, p.top_k)
        keyword = self.vault.keyword(tenant, owner, query, width, stats=stats) if query.strip() else []
        return KeywordPhase(stats=stats, keyword=keyword)

    def dense_phase(
        self,
        tenant: str,
        owner: str,
        query: str,
        query_vector: np.ndarray | None,
        p: RetrievalParams,
        first: KeywordPhase,
        now: datetime | None = None,
    ) -> list[Hit]:
        now = now or datetime.now(UTC)
        stats, keyword = first.stats, first.keyword
        width = max(p.candidates, p.top_k)
        dense = (
            self.vault.dense(tenant, owner, query_vector, max(width, p.dense_lookup), changes=stats.changes)
            if query_vector is not None
            else []
        )
        wanted = {h[0] for h in dense[:width]} | {h[0] for h in keyword}
        stored = self.vault.get_many(tenant, wanted, owner=owner, changes=stats.changes)
        scores = _Scores(dense, keyword)
        candidates = {
            mid: scores.candidate(s) for mid, s in stored.items() if not _expired(s, now) and scores.known(s)
        }
        named = periods(query)
        speakers = named_speakers(query, candidates.values()) if p.rank.other_speaker > 0 else frozenset()
        window = len(p.rank.neighbour_weights)
        if window and p.anchors > 0 and candidates:
            own = own_relevance(list(candidates.values()), p.rank, named, speakers)
            anchors = sorted(candidates, key=lambda mid: (-own[mid], mid))[: p.anchors]
            around = self.vault.neighbours(tenant, owner, [stored[mid] for mid in anchors], window)
            for turns in around.values():
                for s in turns:
                    if s.id not in candidates and not _expired(s, now):
                        stored[s.id] = s
                        candidates[s.id] = scores.candidate(s)
        ranked = rank(list(candidates.values()), p.rank, now, named, speakers)
        hits: list[Hit] = []
        used = 0
        chosen: set[str] = set()
        for scored in ranked:
            if len(hits) >= p.top_k or scored.score < p.min_score:
                break
            item = stored[scored.id].item
            cost = len(item.text)
            if p.char_budget is not None and used + cost > p.char_budget:
                continue
            used += cost
            chosen.add(scored.id)
            c = candidates[scored.id]
            hits.append(Hit(item=item, score=scored.score, dense=c.dense_score, keyword=c.keyword_score))
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


class _Scores:
    """The dense and keyword scores of the query, looked up per stored memory."""

    def __init__(self, dense: Sequence[tuple[str, str, float]], keyword: Sequence[tuple[str, float]]) -> None:
        self.cosine = {vid: score for _, vid, score in dense}  # by vector id: a stale vector never counts
        self.cosine_floor = dense[-1][2] if dense else None
        self.bm25 = dict(keyword)

    def known(self, s: StoredMemory) -> bool:
        """Found by a list: a keyword hit, or a dense hit whose vector is the memory's current one."""
        return s.id in self.bm25 or (s.vector_id is not None and s.vector_id in self.cosine)

    def candidate(self, s: StoredMemory) -> Candidate:
        cosine = None
        if s.vector_id is not None:
            cosine = self.cosine.get(s.vector_id, self.cosine_floor)
        return Candidate(
            id=s.id,
            dense_score=cosine,
            keyword_score=self.bm25.get(s.id),
            session=s.session_key,
            seq=s.seq,
            observed_at=s.observed_at,
            created_at=s.created_at,
            importance=s.importance,
            hits=s.hits,
            speaker=speaker_of(s.item),
        )


def speaker_of(item: MemoryItem) -> str | None:
    """Who said it (memos.writeback.reader keeps a named speaker in the first source), casefolded."""
    for source in item.sources[:1]:
        speaker = source.metadata.get("speaker")
        if isinstance(speaker, str) and speaker:
            return speaker.casefold()
    return None


def _expired(s: StoredMemory, now: datetime) -> bool:
    if s.expires_at is not None and s.expires_at <= now:
        return True
    return s.invalid_at is not None and s.invalid_at <= now
