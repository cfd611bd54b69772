"""Ranking is a pure function: fusion, context from the session, periods, floors, determinism."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from memos.recall.ranking import Candidate, RankParams, named_speakers, own_relevance, rank
from memos.recall.temporal import periods

NOW = datetime(2025, 1, 1, tzinfo=UTC)
P = RankParams()


def ids(scored) -> list[str]:  # type: ignore[no-untyped-def]
    return [s.id for s in scored]


def test_both_signals_beat_either_alone_and_ties_order_by_id() -> None:
    cands = [
        Candidate("dense-only", dense_score=0.6),
        Candidate("both", dense_score=0.6, keyword_score=8.0),
        Candidate("kw-only", keyword_score=8.0),
        Candidate("b-twin", dense_score=0.3),
        Candidate("a-twin", dense_score=0.3),
    ]
    out = rank(cands, P, NOW)
    assert out[0].id == "both"
    assert ids(out)[-2:] == ["a-twin", "b-twin"]


def test_order_does_not_depend_on_input_order_and_is_repeatable() -> None:
    cands = [
        Candidate(f"m{i}", dense_score=0.1 * (i % 5), keyword_score=float(i % 3), session=f"s{i % 2}", seq=i)
        for i in range(20)
    ]
    first = rank(cands, P, NOW)
    assert rank(list(reversed(cands)), P, NOW) == first
    assert rank(cands, P, NOW) == first


def test_weights_shift_the_fusion() -> None:
    kw = Candidate("kw", keyword_score=10.0, dense_score=0.2)
    dense = Candidate("dense", keyword_score=2.0, dense_score=0.6)
    assert rank([kw, dense], replace(P, keyword_weight=0.9), NOW)[0].id == "kw"
    assert rank([kw, dense], replace(P, keyword_weight=0.1), NOW)[0].id == "dense"


def test_a_turn_next_to_a_strong_hit_outranks_an_equal_turn_elsewhere() -> None:
    hit = Candidate("hit", dense_score=0.7, keyword_score=9.0, session="s1", seq=10)
    answer = Candidate("answer", dense_score=0.2, session="s1", seq=11)  # the reply after the match
    far = Candidate("far", dense_score=0.2, session="s1", seq=12)  # two turns away: less
    other = Candidate("other", dense_score=0.2, session="s2", seq=11)  # another session: none
    out = ids(rank([hit, answer, far, other], P, NOW))
    assert out == ["hit", "answer", "far", "other"]


def test_neighbours_are_only_within_a_session() -> None:
    hit = Candidate("hit", dense_score=0.7, session="s1", seq=10)
    next_seq_other_session = Candidate("x", dense_score=0.2, session="s2", seq=11)
    lone = Candidate("y", dense_score=0.2, session="s3", seq=40)
    scores = {s.id: s.score for s in rank([hit, next_seq_other_session, lone], P, NOW)}
    assert scores["x"] == scores["y"]


def test_the_session_of_a_strong_hit_lifts_its_other_turns() -> None:
    hit = Candidate("hit", dense_score=0.7, session="s1", seq=1)
    same_session = Candidate("same", dense_score=0.25, session="s1", seq=9)
    other_session = Candidate("other", dense_score=0.3, session="s2", seq=30)
    assert ids(rank([hit, same_session, other_session], P, NOW)) == ["hit", "same", "other"]
    # without the session term the better own score wins
    flat = replace(P, session_weight=0.0, neighbour_weights=())
    assert ids(rank([hit, same_session, other_session], flat, NOW)) == ["hit", "other", "same"]


def test_a_memory_without_session_is_not_penalised() -> None:
    alone = Candidate("alone", dense_score=0.5)
    lone_turn = Candidate("turn", dense_score=0.5, session="s", seq=3)
    scores = {s.id: s.score for s in rank([alone, lone_turn], P, NOW)}
    assert scores["alone"] == scores["turn"]


def test_a_period_in_the_query_prefers_memories_observed_in_it() -> None:
    may = Candidate("may", dense_score=0.5, observed_at=datetime(2023, 5, 20, tzinfo=UTC))
    june = Candidate("june", dense_score=0.55, observed_at=datetime(2023, 6, 20, tzinfo=UTC))
    assert ids(rank([may, june], P, NOW)) == ["june", "may"]
    assert ids(rank([may, june], P, NOW, periods("what happened in May 2023?"))) == ["may", "june"]
    # a period no candidate falls in changes nothing
    assert ids(rank([may, june], P, NOW, periods("in March 2020"))) == ["june", "may"]


def test_a_person_named_in_the_query_is_answered_in_their_own_words_first() -> None:
    mel = Candidate("mel", dense_score=0.50, speaker="melanie")
    caro = Candidate("caro", dense_score=0.55, speaker="caroline")
    mine = Candidate("mine", dense_score=0.52)  # the user's own words: never penalised
    question = "What does Melanie do to destress?"
    named = named_speakers(question, [mel, caro, mine])
    assert named == {"melanie"}
    assert ids(rank([mel, caro, mine], P, NOW)) == ["caro", "mine", "mel"]
    assert ids(rank([mel, caro, mine], P, NOW, speakers=named)) == ["mine", "mel", "caro"]
    # Names are whole words in any case; a name no candidate spoke changes nothing.
    assert named_speakers("what did MELANIE say?", [mel]) == {"melanie"}
    assert named_speakers("Melanies and Carolines", [mel, caro]) == frozenset()
    assert ids(rank([mel, caro], P, NOW, speakers=named_speakers("What did Jon do?", [mel, caro]))) == [
        "caro",
        "mel",
    ]
    # Off by the weight.
    off = replace(P, other_speaker=0.0)
    assert ids(rank([mel, caro, mine], off, NOW, speakers=named)) == ["caro", "mine", "mel"]


def test_floors_keep_weak_queries_low_and_scores_bounded() -> None:
    weak = rank([Candidate("w", dense_score=0.15, keyword_score=0.5)], P, NOW)[0]
    strong = rank(
        [Candidate("s", dense_score=0.9, keyword_score=20.0, importance=1.0, observed_at=NOW)], P, NOW
    )[0]
    assert weak.score < 0.3
    # alone, a perfect match scores its own relevance with the session term (1.5 / 1.9), nudged up by
    # importance and recency; context from a matching session could only add to it
    assert 0.75 < strong.score <= 1.1
    assert strong.relevance == pytest.approx(1.0)


def test_own_relevance_is_max_normalised_per_query() -> None:
    own = own_relevance(
        [Candidate("a", keyword_score=12.0, dense_score=0.8), Candidate("b", keyword_score=6.0)], P
    )
    assert own["a"] == pytest.approx(1.0)
    assert own["b"] == pytest.approx(P.keyword_weight * 0.5)


def test_recency_and_importance_break_near_ties() -> None:
    old = Candidate("old", dense_score=0.6, observed_at=NOW - timedelta(days=900))
    new = Candidate("new", dense_score=0.6, observed_at=NOW - timedelta(days=1))
    assert ids(rank([old, new], P, NOW)) == ["new", "old"]
    low = Candidate("low", dense_score=0.6, importance=0.1)
    high = Candidate("high", dense_score=0.6, importance=0.9)
    assert ids(rank([low, high], P, NOW)) == ["high", "low"]


def test_duplicate_candidates_collapse() -> None:
    a = Candidate("a", dense_score=0.5)
    assert len(rank([a, a], P, NOW)) == 1
