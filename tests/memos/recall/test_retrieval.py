"""Retrieval over the vault: neighbouring turns, periods, threshold, budget, determinism (ranking itself:
test_ranking.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from memos.governance.policy import Policy
from memos.recall.ranking import RankParams
from memos.recall.retrieval import RetrievalParams, Retriever
from tests.memos.vault_support import VaultEnv, db_url, env  # noqa: F401 - fixtures

NOW = datetime(2025, 1, 1, tzinfo=UTC)


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


def _session(env: VaultEnv, name: str, turns: list[str], when: datetime | None = None) -> list[str]:
    return [env.vault.add("acme", "alice", t, session=name, observed_at=when, dedupe=False).id for t in turns]


def test_the_reply_to_a_matching_turn_is_retrieved_before_an_equal_turn_elsewhere(env: VaultEnv) -> None:
    _session(env, "s1", ["Bob: how is the garden?", "Alice: the roses are blooming"])
    _session(
        env, "s2", ["Bob: did you pick a name for the new puppy?", "Alice: Biscuit, after my favourite snack"]
    )
    _session(env, "s3", ["Bob: lunch?", "Alice: Pancakes, after my favourite breakfast name"])
    for i in range(20):
        _session(env, f"filler{i}", [f"Alice: errand number {i} at the shop"])
    texts = [h.item.text for h in _search(env, "What name did Alice pick for her puppy?", top_k=3)]
    # the question turn matches; the answer shares no word with the query but sits next to it
    assert texts[:2] == [
        "Bob: did you pick a name for the new puppy?",
        "Alice: Biscuit, after my favourite snack",
    ]


def test_neighbouring_turns_join_even_when_no_list_found_them(env: VaultEnv) -> None:
    ids = _session(env, "s1", ["Bob: where did you go on holiday?", "Alice: Lisbon, it was sunny"])
    for i in range(30):
        _session(env, f"other{i}", [f"note {i} about groceries and errands"])
    hits = _search(env, "holiday destination", candidates=1, dense_lookup=1, top_k=2)
    assert [h.item.id for h in hits] == ids
    # without context weights the reply is not among the candidates at all
    plain = RankParams(neighbour_weights=(), session_weight=0.0)
    hits = _search(env, "holiday destination", candidates=1, dense_lookup=1, top_k=2, rank=plain)
    assert hits[0].item.id == ids[0]
    assert ids[1] not in [h.item.id for h in hits]


def test_a_period_named_in_the_query_prefers_memories_observed_then(env: VaultEnv) -> None:
    may = env.vault.add(
        "acme", "alice", "Alice ran a charity race", observed_at=datetime(2023, 5, 20, tzinfo=UTC)
    )
    june = env.vault.add(
        "acme", "alice", "Alice ran a charity race again", observed_at=datetime(2023, 6, 20, tzinfo=UTC)
    )
    assert _search(env, "charity race")[0].item.id == may.id  # shorter text: better BM25
    assert _search(env, "charity race in June 2023")[0].item.id == june.id


async def test_concurrent_searches_cannot_starve_their_own_pool(env: VaultEnv) -> None:
    """The issue's stack dump: every pool thread in a search, waiting for an embedding queued behind
    them on the same pool. Here the embedding even shares the searches' one-thread pool, and 64
    concurrent searches all finish: no task of the pool waits on another task of it."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from memos.embeddings import MicroBatcher

    for i in range(20):
        env.vault.add("acme", "alice", f"parcel {i} waits at the counter by the door")
    one_thread = ThreadPoolExecutor(max_workers=1)
    try:
        embedder = MicroBatcher(env.embedder, executor=one_thread)
        retriever = Retriever(env.vault, executor=one_thread)
        searches = [
            retriever.asearch("acme", "alice", f"where does parcel {i} wait", embedder.embed_one)
            for i in range(64)
        ]
        # A liveness guard, not a timing: starved, the searches never finish.
        results = await asyncio.wait_for(asyncio.gather(*searches), 120)
    finally:
        one_thread.shutdown(wait=False, cancel_futures=True)
    assert all(hits for hits in results)
    assert embedder.batches < 64  # the queries were embedded in shared batches


def test_a_question_naming_a_speaker_prefers_their_own_turns(env: VaultEnv) -> None:
    """The speaker the reader keeps in a memory's first source is what a question naming them matches."""
    from memos.item import Source

    def said(who: str, text: str) -> None:
        env.vault.add("acme", "alice", f"{who}: {text}", sources=[Source(metadata={"speaker": who})])

    said("Caroline", "Melanie, running is how I relax after a long week.")
    said("Melanie", "I go to pottery class to unwind.")
    env.vault.add("acme", "alice", "I relax by reading novels.")  # the user's own words, no speaker
    query = "How does Melanie relax?"
    off = _search(env, query, rank=RankParams(other_speaker=0.0))
    scores = {h.item.text: h.score for h in off}
    on = {h.item.text: h.score for h in _search(env, query)}
    caroline = "Caroline: Melanie, running is how I relax after a long week."
    assert on[caroline] < scores[caroline]  # what another named speaker said weighs less
    assert on["I relax by reading novels."] == scores["I relax by reading novels."]  # the user's: untouched
    melanie = "Melanie: I go to pottery class to unwind."
    assert on[melanie] / on[caroline] > scores[melanie] / scores[caroline]
