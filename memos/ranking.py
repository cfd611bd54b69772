"""Ranking: a pure function from candidate features to an ordered, scored list.

No I/O, no clock, no randomness: `rank(candidates, params, now)` is deterministic (ties by id), so
retrieval quality can be iterated on (bench/locomo.py) without touching storage.

v1 (H2a): reciprocal-rank fusion of the dense and keyword lists, blended with an absolute relevance
signal (so that a threshold means something: RRF alone gives the best of an irrelevant list a high
score), then nudged by recency and importance.

    fused     = (w_dense / (k + rank_dense) + w_kw / (k + rank_kw)) / ((w_dense + w_kw) / (k + 1))   in [0, 1]
    relevance = max(max(cosine, 0), bm25 / (bm25 + bm25_half))                                      in [0, 1]
    base      = rrf_share * fused + (1 - rrf_share) * relevance
    score     = base * (1 + recency_weight * 2^(-age_days / half_life)
                      + importance_weight * (importance - 0.5))

H3 (retrieval quality) owns this module and memos/retrieval.py from 00:35 UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Candidate:
    id: str
    dense_rank: int | None = None  # 1-based rank in the dense list; None when absent
    dense_score: float | None = None  # cosine
    keyword_rank: int | None = None
    keyword_score: float | None = None  # BM25
    observed_at: datetime | None = None
    created_at: datetime | None = None
    importance: float = 0.5
    hits: int = 0
    seq: int = 0


@dataclass(frozen=True)
class RankParams:
    rrf_k: float = 60.0
    dense_weight: float = 1.0
    keyword_weight: float = 1.0
    rrf_share: float = 0.5
    bm25_half: float = 6.0  # the BM25 score that counts as relevance 0.5
    recency_weight: float = 0.05
    recency_half_life_days: float = 90.0
    importance_weight: float = 0.1


@dataclass(frozen=True)
class Scored:
    id: str
    score: float
    fused: float
    relevance: float


def _age_days(c: Candidate, now: datetime) -> float | None:
    when = c.observed_at or c.created_at
    if when is None:
        return None
    if when.tzinfo is None and now.tzinfo is not None:
        when = when.replace(tzinfo=now.tzinfo)
    elif when.tzinfo is not None and now.tzinfo is None:
        now = now.replace(tzinfo=when.tzinfo)
    return max(0.0, (now - when).total_seconds() / 86400.0)


def rank(candidates: Sequence[Candidate], params: RankParams, now: datetime) -> list[Scored]:
    """Score and order candidates, best first; equal scores are ordered by id."""
    p = params
    norm = (p.dense_weight + p.keyword_weight) / (p.rrf_k + 1.0)
    out: list[Scored] = []
    for c in candidates:
        rrf = 0.0
        if c.dense_rank is not None:
            rrf += p.dense_weight / (p.rrf_k + c.dense_rank)
        if c.keyword_rank is not None:
            rrf += p.keyword_weight / (p.rrf_k + c.keyword_rank)
        fused = rrf / norm if norm > 0 else 0.0
        dense_rel = max(0.0, c.dense_score or 0.0)
        kw = max(0.0, c.keyword_score or 0.0)
        kw_rel = kw / (kw + p.bm25_half) if kw > 0 else 0.0
        relevance = max(dense_rel, kw_rel)
        base = p.rrf_share * fused + (1.0 - p.rrf_share) * relevance
        boost = 1.0 + p.importance_weight * (c.importance - 0.5)
        age = _age_days(c, now)
        if age is not None and p.recency_half_life_days > 0:
            boost += p.recency_weight * 2.0 ** (-age / p.recency_half_life_days)
        out.append(Scored(c.id, round(base * boost, 9), fused, relevance))
    out.sort(key=lambda s: (-s.score, s.id))
    return out
