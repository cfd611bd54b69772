"""The tokenizer and BM25 over the blind index (SQLite and PostgreSQL)."""

from __future__ import annotations

from memos.storage.keyword import normalise_for_duplicate, tokenize
from tests.memos.vault_support import VaultEnv, db_url, env  # noqa: F401 - fixtures


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
    from memos.storage.keyword import Bm25

    v = env.vault
    for i in range(60):
        v.add(
            "acme",
            "alice",
            f"common words everywhere note {i} " + ("rare" if i % 20 == 0 else ""),
            dedupe=False,
        )
    exact = v.keyword("acme", "alice", "common rare words", 10)
    v.bm25 = Bm25(max_postings=10)  # forces the split (and the impact-ordered path for one-term queries)
    bounded = v.keyword("acme", "alice", "common rare words", 10)
    assert [m for m, _ in bounded[:3]] == [m for m, _ in exact[:3]]
    assert [round(s, 6) for _, s in bounded[:3]] == [round(s, 6) for _, s in exact[:3]]
    assert len(v.keyword("acme", "alice", "common", 5)) == 5
