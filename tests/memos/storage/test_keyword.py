"""The tokenizer and BM25 over the blind index (SQLite and PostgreSQL)."""

from __future__ import annotations

from memos.keys.keyring import Keyring
from memos.storage.keyword import Bm25, normalise_for_duplicate, tokenize
from memos.storage.vault import MemVault
from memos.storage.vectors import VectorIndex
from tests.memos.vault_support import VaultEnv, db_url, env  # noqa: F401 - fixtures


def _with_bm25(env: VaultEnv, bm25: Bm25) -> MemVault:
    """A vault over the same stores that scores with `bm25` (its search takes it at construction)."""
    return MemVault(env.db, Keyring(env.db, env.master), VectorIndex(env.vector_uri), env.embedder, bm25=bm25)


def test_tokenize_lowercases_drops_stopwords_and_stems() -> None:
    assert tokenize("The Hikes and hiking I HIKED!") == ["hik", "hik", "hik"]
    assert tokenize("I have two dogs and a cat") == ["two", "dog", "cat"]
    assert tokenize("Café in Zürich, 2023") == ["café", "zürich", "2023"]
    assert tokenize("") == []


def test_tokenize_same_stem_for_inflections() -> None:
    assert tokenize("parties")[0] == tokenize("party")[0]
    assert tokenize("running")[0] == tokenize("run")[0]
    assert tokenize("painted")[0] == tokenize("paint")[0]
    assert tokenize("boxes")[0] == tokenize("box")[0]
    assert tokenize("hike")[0] == tokenize("hiking")[0] == tokenize("hikes")[0]


def test_normalise_for_duplicate() -> None:
    assert normalise_for_duplicate("  I love  Jazz. ") == normalise_for_duplicate("i love jazz")
    assert normalise_for_duplicate("I love jazz") != normalise_for_duplicate("I love rock")


def test_bm25_prefers_rare_terms_and_shorter_documents(env: VaultEnv) -> None:
    v = env.vault
    for i in range(10):
        v.add("acme", "alice", f"ordinary note {i} about the garden")
    rare = v.add("acme", "alice", "the garden has a rare orchid")
    long = v.add("acme", "alice", "orchid " + " ".join(f"word{i}" for i in range(40)))
    hits = v.keyword("acme", "alice", "garden orchid", 5)
    assert hits[0][0] == rare.id
    assert long.id in [h[0] for h in hits]
    scores = [h[1] for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_bm25_unknown_terms_and_empty_query(env: VaultEnv) -> None:
    env.vault.add("acme", "alice", "something stored")
    assert env.vault.keyword("acme", "alice", "nonexistentterm", 5) == []
    assert env.vault.keyword("acme", "alice", "the and of", 5) == []
    assert env.vault.keyword("acme", "nobody", "something", 5) == []


def test_bm25_ties_are_ordered_by_id(env: VaultEnv) -> None:
    ids = [env.vault.add("acme", "alice", f"zebra {i}", dedupe=False).id for i in range(3)]
    # same tf, same length: equal scores, ordered by id
    hits = env.vault.keyword("acme", "alice", "zebra", 10)
    assert [h[0] for h in hits] == sorted(ids)


def test_reindex_keywords_rebuilds_postings(env: VaultEnv) -> None:
    v = env.vault
    item = v.add("acme", "alice", "penguins waddle")
    assert v.reindex_keywords("acme", "alice") == 1
    assert v.keyword("acme", "alice", "penguin", 5)[0][0] == item.id
    assert v.stats("acme", "alice").doc_count == 1


def _df_consistent(env: VaultEnv) -> None:
    from sqlalchemy import text as sql

    with env.db.session() as s:
        stats = {
            (t, o, term): df
            for t, o, term, df in s.execute(
                sql("SELECT tenant, owner, term, df FROM memory_term_stats")
            ).all()
            if df
        }
        counted = {
            (t, o, term): n
            for t, o, term, n in s.execute(
                sql("SELECT tenant, owner, term, COUNT(*) FROM memory_postings GROUP BY tenant, owner, term")
            ).all()
        }
    assert stats == counted


def test_document_frequencies_follow_every_change(env: VaultEnv) -> None:
    v = env.vault
    a = v.add("acme", "alice", "red apples and red cherries")
    b = v.add("acme", "alice", "green apples")
    v.add("acme", "bob", "red wine")
    _df_consistent(env)
    v.update("acme", a.id, text="yellow bananas")
    _df_consistent(env)
    v.update("acme", b.id, state="archived")
    _df_consistent(env)
    v.rollback("acme", b.id, 1)
    v.delete("acme", a.id)
    _df_consistent(env)
    v.reindex_keywords("acme", "alice")
    _df_consistent(env)
    v.erase_user("acme", "alice")
    _df_consistent(env)


def test_bounded_bm25_keeps_the_best_documents(env: VaultEnv) -> None:
    v = env.vault
    for i in range(60):
        v.add(
            "acme",
            "alice",
            f"common words everywhere note {i} " + ("rare" if i % 20 == 0 else ""),
            dedupe=False,
        )
    exact = v.keyword("acme", "alice", "common rare words", 10)
    # forces the split (and the impact-ordered path for one-term queries)
    bounded_vault = _with_bm25(env, Bm25(max_postings=10))
    bounded = bounded_vault.keyword("acme", "alice", "common rare words", 10)
    assert [m for m, _ in bounded[:3]] == [m for m, _ in exact[:3]]
    assert [round(s, 6) for _, s in bounded[:3]] == [round(s, 6) for _, s in exact[:3]]
    assert len(bounded_vault.keyword("acme", "alice", "common", 5)) == 5



def test_a_one_word_query_of_a_common_word_reads_only_the_bound_and_keeps_the_top(env: VaultEnv) -> None:
    """One query term held by more memories than the bound: its postings are read from
    the shortest of each term frequency, never all (before, every posting was scored), and the best
    documents and their scores are still the exact scoring's."""
    from typing import Any

    from sqlalchemy import event

    v = env.vault
    for i in range(40):
        # tf 1..3 and varying lengths, so impact order is not the insertion order
        v.add("acme", "alice", ("lake " * (1 + i % 3)) + "filler " * (i % 7) + f"n{i}", dedupe=False)
    exact = v.keyword("acme", "alice", "lake", 5)
    bounded_vault = _with_bm25(env, Bm25(max_postings=10))
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.append(statement)

    event.listen(env.db.engine, "before_cursor_execute", record)
    try:
        bounded = bounded_vault.keyword("acme", "alice", "lake", 5)
    finally:
        event.remove(env.db.engine, "before_cursor_execute", record)
    assert [m for m, _ in bounded] == [m for m, _ in exact]
    assert [round(s, 6) for _, s in bounded] == [round(s, 6) for _, s in exact]
    for k in (1, 2, 3):  # exact while (term frequencies read) x k fits the bound: 3 x 3 <= 10
        got, want = bounded_vault.keyword("acme", "alice", "lake", k), v.keyword("acme", "alice", "lake", k)
        assert [(m, round(s, 6)) for m, s in got] == [(m, round(s, 6)) for m, s in want]
    postings = [s for s in statements if "FROM memory_postings" in s]
    assert postings and not any("GROUP BY" in s for s in postings)  # no statement scores them all
    assert all("LIMIT" in s or "MAX(tf)" in s for s in postings)
