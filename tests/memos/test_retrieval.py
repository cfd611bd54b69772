"""Ranking (a pure function) and retrieval over the vault: fusion, threshold, budget, determinism."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from memos.governance.policy import Policy
from memos.ranking import Candidate, RankParams, rank
from memos.retrieval import RetrievalParams, Retriever
from tests.memos.vault_support import VaultEnv, db_url, env  # noqa: F401 - fixtures

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_rank_fuses_both_lists_and_orders_ties_by_id() -> None:
    cands = [
        Candidate("b", dense_rank=1, dense_score=0.5),
        Candidate("a", dense_rank=1, dense_score=0.5),
        Candidate("c", dense_rank=2, dense_score=0.4, keyword_rank=1, keyword_score=10.0),
    ]
    out = rank(cands, RankParams(), NOW)
    assert out[0].id == "c"
    assert [s.id for s in out[1:]] == ["a", "b"]
    assert rank(list(reversed(cands)), RankParams(), NOW) == out


def test_rank_recency_and_importance_break_near_ties() -> None:
    old = Candidate("old", dense_rank=1, dense_score=0.6, observed_at=NOW - timedelta(days=900))
    new = Candidate("new", dense_rank=1, dense_score=0.6, observed_at=NOW - timedelta(days=1))
    assert [s.id for s in rank([old, new], RankParams(), NOW)] == ["new", "old"]
    low = Candidate("low", dense_rank=1, dense_score=0.6, importance=0.1)
    high = Candidate("high", dense_rank=1, dense_score=0.6, importance=0.9)
    assert [s.id for s in rank([low, high], RankParams(), NOW)] == ["high", "low"]


def test_scores_are_bounded() -> None:
    best = Candidate(
        "x",
        dense_rank=1,
        dense_score=1.0,
        keyword_rank=1,
        keyword_score=100.0,
        importance=1.0,
        observed_at=NOW,
    )
    (s,) = rank([best], RankParams(), NOW)
    assert 0.9 < s.score < 1.2


def test_params_from_policy() -> None:
    policy = Policy.model_validate({"memory": {"top_k": 5, "token_budget": 100, "min_score": 0.2}})
    p = RetrievalParams.from_policy(policy)
    assert (p.top_k, p.char_budget, p.min_score) == (5, 400, 0.2)
    assert RetrievalParams.from_policy(policy, top_k=3).top_k == 3


def _search(env: VaultEnv, query: str, now: datetime | None = None, **kw):
    vec = env.embedder.embed([query])[0]
    return Retriever(env.vault).search("acme", "alice", query, vec, RetrievalParams(**kw), now=now)


def test_threshold_budget_and_top_k(env: VaultEnv) -> None:
    v = env.vault
    v.add("acme", "alice", "apples are red")
    v.add("acme", "alice", "apples grow on trees in the orchard near the old stone farmhouse")
    v.add("acme", "alice", "bananas are yellow")
    assert len(_search(env, "apples", top_k=1)) == 1
    all_hits = _search(env, "apples")
    assert {h.item.text for h in all_hits[:2]} == {
        "apples are red",
        "apples grow on trees in the orchard near the old stone farmhouse",
    }
    # a budget that fits only the short one skips the long one
    budget = _search(env, "apples", char_budget=len("apples are red") + 5)
    assert [h.item.text for h in budget] == ["apples are red"]
    # a high threshold drops everything weak
    strict = _search(env, "apples", min_score=0.99)
    assert strict == []


def test_search_is_deterministic(env: VaultEnv) -> None:
    for i in range(30):
        env.vault.add("acme", "alice", f"note {i % 7} about topic {i % 3}", dedupe=False)
    now = datetime.now(UTC)
    first = [(h.item.id, h.score) for h in _search(env, "note about topic", now)]
    for _ in range(3):
        assert [(h.item.id, h.score) for h in _search(env, "note about topic", now)] == first


def test_expired_memories_are_not_returned(env: VaultEnv) -> None:
    env.vault.add(
        "acme", "alice", "temporary door code 1234", expires_at=datetime.now(UTC) - timedelta(days=1)
    )
    env.vault.add("acme", "alice", "permanent door code 5678")
    assert [h.item.text for h in _search(env, "door code")] == ["permanent door code 5678"]
