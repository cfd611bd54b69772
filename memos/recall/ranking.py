"""Ranking: a pure function from candidate features to an ordered, scored list.

No I/O, no clock, no randomness: `rank(candidates, params, now, periods)` is deterministic (ties by
id), so retrieval quality can be iterated on (bench/locomo.py) without touching storage.

Each candidate first gets its own relevance, a weighted sum of its keyword and dense scores, each
divided by the best score of the query's candidates (or by a floor, when the best is weak, so that a
query nothing matches keeps low scores and a threshold means something):

    own = kw * bm25 / max(best_bm25, bm25_floor) + (1 - kw) * max(cosine, 0) / max(best_cosine, cosine_floor)

A query that names a period ("in May 2023", memos/recall/temporal.py) multiplies the own relevance of the
memories observed outside it by (1 - outside_period), when any candidate was observed inside it.
A query that names a speaker of the candidates ("What does Melanie do to destress?") multiplies the own
relevance of what other named speakers said by (1 - other_speaker): a question about a person is
answered first in that person's own words. Memories without a speaker (the user's own) are untouched.

Then context: a conversation is told in turns, and the turn that answers is often next to the one
that matches (a question and its answer), in a session that matches as a whole. So a candidate gains
from the best candidate at each distance d of its own session (neighbour_weights[d-1]) and from the
best candidate of its session (session_weight); a memory without a session is a session of its own.

    score = (own + sum_d w_d * best_own_at_distance_d + w_s * best_own_in_session) / (1 + sum_d w_d + w_s)

in [0, 1], finally nudged by importance and recency (both small; equal memories break by them):

    score *= 1 + importance_weight * (importance - 0.5) + recency_weight * 2^(-age_days / half_life)

The defaults were chosen on LoCoMo dev from a flat optimum, and bench/locomo_ablation.py shows what
each part is worth: without periods 0.813 -> 0.791 within 2,000 characters, without the speaker term
-> 0.800, without the neighbours -> 0.786, without the session term -> 0.786, without both -> 0.733.
Halving or doubling the context weights, the period penalty or the speaker term moves it by at most
0.018; the keyword share matters more (x0.5 or x2 cost 0.03-0.05).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from memos.recall.temporal import Period

_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")


@dataclass(frozen=True)
class Candidate:
    id: str
    dense_score: float | None = None  # cosine with the query; None when unknown
    keyword_score: float | None = None  # BM25; None when no query term occurs
    session: str | None = None  # opaque session key: memories of one conversation session
    seq: int = 0  # writing order of the owner's memories: neighbours in a session are close in seq
    observed_at: datetime | None = None
    created_at: datetime | None = None
    importance: float = 0.5
    hits: int = 0
    speaker: str | None = None  # who said it, casefolded (a named chat participant); None: the user


@dataclass(frozen=True)
class RankParams:
    keyword_weight: float = 0.4
    bm25_floor: float = 6.0
    cosine_floor: float = 0.5
    neighbour_weights: tuple[float, ...] = (0.3, 0.1)
    session_weight: float = 0.5
    outside_period: float = 0.4
    period_slack_days: float = 7.0
    other_speaker: float = 0.3
    recency_weight: float = 0.05
    recency_half_life_days: float = 90.0
    importance_weight: float = 0.1


@dataclass(frozen=True)
class Scored:
    id: str
    score: float
    relevance: float  # the candidate's own relevance, before context, importance and recency


def _age_days(c: Candidate, now: datetime) -> float | None:
    when = c.observed_at or c.created_at
    if when is None:
        return None
    if when.tzinfo is None and now.tzinfo is not None:
        when = when.replace(tzinfo=now.tzinfo)
    elif when.tzinfo is not None and now.tzinfo is None:
        now = now.replace(tzinfo=when.tzinfo)
    return max(0.0, (now - when).total_seconds() / 86400.0)


def own_relevance(
    candidates: Sequence[Candidate],
    params: RankParams,
    periods: Sequence[Period] = (),
    speakers: Collection[str] = (),
) -> dict[str, float]:
    """Each candidate's own relevance (keyword and dense fused, the period and the named speakers
    applied), in [0, 1]. `speakers`: the candidates' speakers the query names, casefolded."""
    p = params
    best_kw = max((c.keyword_score or 0.0 for c in candidates), default=0.0)
    best_dense = max((c.dense_score or 0.0 for c in candidates), default=0.0)
    kw_scale = max(best_kw, p.bm25_floor)
    dense_scale = max(best_dense, p.cosine_floor)
    own: dict[str, float] = {}
    for c in candidates:
        kw = max(0.0, c.keyword_score or 0.0) / kw_scale
        dense = max(0.0, c.dense_score or 0.0) / dense_scale
        own[c.id] = p.keyword_weight * kw + (1.0 - p.keyword_weight) * dense
    if periods and p.outside_period > 0:
        inside = {
            c.id for c in candidates if any(x.contains(c.observed_at, p.period_slack_days) for x in periods)
        }
        if inside:
            for c in candidates:
                if c.id not in inside:
                    own[c.id] *= 1.0 - p.outside_period
    if speakers and p.other_speaker > 0:
        for c in candidates:
            if c.speaker is not None and c.speaker not in speakers:
                own[c.id] *= 1.0 - p.other_speaker
    return own


def named_speakers(query: str, candidates: Iterable[Candidate]) -> frozenset[str]:
    """The candidates' speakers the query names (as a whole word, any case)."""
    words = set(_WORD.findall(query.casefold()))
    return frozenset(c.speaker for c in candidates if c.speaker is not None and c.speaker in words)


def rank(
    candidates: Sequence[Candidate],
    params: RankParams,
    now: datetime,
    periods: Sequence[Period] = (),
    speakers: Collection[str] = (),
) -> list[Scored]:
    """Score and order candidates, best first; equal scores are ordered by id."""
    p = params
    unique = list({c.id: c for c in sorted(candidates, key=lambda c: c.id)}.values())
    own = own_relevance(unique, p, periods, speakers)
    by_session: dict[str, dict[int, float]] = defaultdict(dict)  # session -> seq -> own relevance
    for c in unique:
        if c.session is not None:
            seqs = by_session[c.session]
            seqs[c.seq] = max(seqs.get(c.seq, 0.0), own[c.id])
    best_in_session = {s: max(seqs.values()) for s, seqs in by_session.items()}
    total_weight = 1.0 + sum(p.neighbour_weights) + p.session_weight
    out: list[Scored] = []
    for c in unique:
        mine = own[c.id]
        if c.session is None:
            context = p.session_weight * mine
        else:
            seqs = by_session[c.session]
            context = p.session_weight * best_in_session[c.session]
            for d, w in enumerate(p.neighbour_weights, start=1):
                context += w * max(seqs.get(c.seq - d, 0.0), seqs.get(c.seq + d, 0.0))
        score = (mine + context) / total_weight
        boost = 1.0 + p.importance_weight * (c.importance - 0.5)
        age = _age_days(c, now)
        if age is not None and p.recency_half_life_days > 0:
            boost += p.recency_weight * 2.0 ** (-age / p.recency_half_life_days)
        out.append(Scored(c.id, round(score * boost, 9), round(mine, 9)))
    out.sort(key=lambda s: (-s.score, s.id))
    return out
