"""Keyword search over a blind index: a tokenizer, and BM25 computed in SQL over keyed term hashes.

The index stores `cipher.blind(term)` per (memory, term) with the term frequency and the document's
length; never the term. A query is tokenized the same way, its terms blinded with the same tenant key,
and scored with BM25 by the database (SQLite and PostgreSQL run the same statement).

`tokenize` is the one function that decides what a term is; the index and the query
both call it, so changing it needs a re-index of stored postings (`MemVault.reindex_keywords`).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlmodel import Session

_WORD = re.compile(r"\w+", re.UNICODE)

STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are aren as at be because been before being below
    between both but by can cannot could couldn did didn do does doesn doing don down during each few for
    from further had hadn has hasn have haven having he her here hers herself him himself his how i if in
    into is isn it its itself just ll let me more most mustn my myself no nor not now of off on once only
    or other ought our ours ourselves out over own re same shan she should shouldn so some such t than
    that the their theirs them themselves then there these they this those through to too under until up
    very was wasn we were weren what when where which while who whom why will with won would wouldn you
    your yours yourself yourselves s d m ve y o also yeah yes oh ok okay um uh hey hi hello thanks thank
    really just got get gets like
    """.split()
)


def _stem(word: str) -> str:
    """A light suffix stripper (plural, -ing, -ed): enough to match 'hikes'/'hiking'/'hiked'."""
    if word.isdigit() or len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith(("ches", "shes", "xes", "zes")) and len(word) > 4:
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        word = word[:-1]
    if word.endswith("e") and not word.endswith("ee") and len(word) > 3:
        return word[:-1]  # hike/hikes -> hik, as hiking/hiked
    if word.endswith("ing") and len(word) > 5:
        word = word[:-3]
        if len(word) > 2 and word[-1] == word[-2] and word[-1] not in "aeiouls":
            word = word[:-1]
        return word
    if word.endswith("ied") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("ed") and len(word) > 4:
        word = word[:-2]
        if len(word) > 2 and word[-1] == word[-2] and word[-1] not in "aeiouls":
            word = word[:-1]
        return word
    return word


def tokenize(text: str) -> list[str]:
    """Lowercased unicode words, stopwords dropped, lightly stemmed, in order (duplicates kept)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    out: list[str] = []
    for raw in _WORD.findall(folded):
        word = raw.strip("_")
        if not word or word in STOPWORDS:
            continue
        if len(word) == 1 and not word.isdigit():
            continue
        out.append(_stem(word))
    return out


def normalise_for_duplicate(text: str) -> str:
    """The form two texts must share to be exact duplicates (case, spacing and edge punctuation aside)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(folded.split()).strip(" .!?,;:")


@dataclass(frozen=True)
class DocTerms:
    """A document's blinded terms with frequencies, and its length (number of indexed tokens)."""

    tf: dict[str, int]
    length: int


def doc_terms(tokens: Iterable[str], blind: Callable[[str], str]) -> DocTerms:
    counts = Counter(tokens)
    tf: dict[str, int] = {}
    for term, n in counts.items():
        key = blind(term)
        tf[key] = tf.get(key, 0) + n
    return DocTerms(tf=tf, length=sum(counts.values()))


@dataclass(frozen=True)
class Bm25:
    """BM25 in SQL, with a bounded amount of work per query (MaxScore-style term splitting).

    Terms are taken rarest first into an "essential" set while their postings fit `max_postings`; the
    essential terms are scored exactly in SQL and give the candidates; the remaining (common, low-idf)
    terms only add their contributions to those candidates. So a query's cost is bounded by
    `max_postings` rows however large the owner's collection, and documents that match nothing but
    very common terms may be missed (their score is bounded by the common terms' small idf). When
    even the rarest term is too common (a one-word query among them), its best documents are read
    exactly from the shortest of each term frequency (`_impact_ordered`), never all its postings.
    Queries whose postings fit the bound are exact. Measured at 200k memories (SQLite,
    bench/scale.py's corpus): one-word queries of a common word took ~150 ms scoring every posting,
    against a p50 of 7 ms; bounded, they cost what any other query does.
    """

    k1: float = 1.2
    b: float = 0.75
    max_postings: int = 4_000
    candidates_factor: int = 4

    def search(
        self,
        session: Session,
        tenant: str,
        owner: str,
        term_hashes: Sequence[str],
        doc_count: int,
        total_len: int,
        limit: int,
    ) -> list[tuple[str, float]]:
        """[(memory id, BM25 score)] best first (ties by id), over the owner's active memories."""
        terms = sorted(set(term_hashes))
        if not terms or doc_count <= 0 or limit <= 0:
            return []
        df_rows = session.execute(
            text(
                "SELECT term, df FROM memory_term_stats "
                "WHERE tenant = :tenant AND owner = :owner AND term IN :terms AND df > 0"
            ).bindparams(bindparam("terms", expanding=True)),
            {"tenant": tenant, "owner": owner, "terms": terms},
        ).all()
        if not df_rows:
            return []
        df = {term: int(n) for term, n in df_rows}
        idf = {term: math.log(1.0 + (doc_count - n + 0.5) / (n + 0.5)) for term, n in df.items()}
        avgdl = max(total_len / doc_count, 1.0)
        by_rarity = sorted(df, key=lambda t: (df[t], t))
        essential: list[str] = []
        total = 0
        for term in by_rarity:
            if essential and total + df[term] > self.max_postings:
                break
            essential.append(term)
            total += df[term]
        common = [t for t in by_rarity if t not in set(essential)]
        base = {
            "tenant": tenant,
            "owner": owner,
            "k1": self.k1,
            "k1b": self.k1 * (1.0 - self.b),
            "k1bavg": self.k1 * self.b / avgdl,
        }
        pool = max(limit * self.candidates_factor, 100)
        # The rarest term alone is over the bound (a query of one common word, "common" below or
        # not): its best documents are read by term-frequency group, never all its postings.
        too_common = len(essential) == 1 and df[essential[0]] > self.max_postings
        if not common and not too_common:
            return self._scored(session, base, idf, essential, limit, None)
        if too_common:
            term = essential[0]
            scores = self._impact_ordered(session, base, term, idf[term], pool if common else limit)
        else:
            scores = dict(self._scored(session, base, idf, essential, pool, None))
        if not scores:
            return []
        ids = sorted(scores, key=lambda m: (-scores[m], m))[:pool]
        if common:
            for mid, extra in self._scored(session, base, idf, common, len(ids), ids):
                scores[mid] = scores.get(mid, 0.0) + extra
        ranked = sorted(ids, key=lambda m: (-scores[m], m))[:limit]
        return [(m, scores[m]) for m in ranked]

    def _scored(
        self,
        session: Session,
        base: dict[str, object],
        idf: dict[str, float],
        terms: Sequence[str],
        limit: int,
        within: Sequence[str] | None,
    ) -> list[tuple[str, float]]:
        # The idf of each term is a bound parameter; the statement text only depends on how many terms.
        cases = " ".join(f"WHEN :t{i} THEN :w{i}" for i in range(len(terms)))
        params: dict[str, object] = {**base, "terms": list(terms), "limit": limit}
        for i, term in enumerate(terms):
            params[f"t{i}"] = term
            params[f"w{i}"] = idf[term]
        if within is not None:
            # Candidates already belong to this tenant and owner: look them up by primary key
            # (memory_id, term) rather than scanning the common terms' long posting lists.
            params["ids"] = list(within)
            where = "memory_id IN :ids AND term IN :terms"
        else:
            where = "tenant = :tenant AND owner = :owner AND term IN :terms"
        statement = text(
            "SELECT memory_id, SUM((CASE term "
            + cases
            + " ELSE 0.0 END) * (tf * (:k1 + 1.0)) / (tf + :k1b + :k1bavg * dl)) AS score "
            "FROM memory_postings WHERE "
            + where
            + " GROUP BY memory_id ORDER BY score DESC, memory_id LIMIT :limit"
        ).bindparams(bindparam("terms", expanding=True))
        if within is not None:
            statement = statement.bindparams(bindparam("ids", expanding=True))
        return [(row[0], float(row[1])) for row in session.execute(statement, params).all()]

    def _impact_ordered(
        self, session: Session, base: dict[str, object], term: str, weight: float, limit: int
    ) -> dict[str, float]:
        """The `limit` best documents of one term, exactly, without reading all its postings.

        Within one term frequency BM25 falls as the document grows, so the best documents are among
        the `limit` shortest of each tf; those are index range reads ((tenant, owner, term, tf desc, dl)
        is the covering index's order), one group at a time from the highest tf down, stopping when
        no document of the next group (at best as short as its tf) can beat the `limit`-th score held.
        Never more than `max_postings` rows: exact while the groups read times `limit` fit in them."""
        k1, k1b, k1bavg = float(base["k1"]), float(base["k1b"]), float(base["k1bavg"])  # type: ignore[arg-type]

        def score(tf: int, dl: int) -> float:
            return weight * tf * (k1 + 1.0) / (tf + k1b + k1bavg * dl)

        where = "tenant = :tenant AND owner = :owner AND term = :term"
        params: dict[str, object] = {"tenant": base["tenant"], "owner": base["owner"], "term": term}
        next_tf = text(f"SELECT MAX(tf) FROM memory_postings WHERE {where} AND tf < :below")
        group = text(
            f"SELECT memory_id, dl FROM memory_postings WHERE {where} AND tf = :tf "
            "ORDER BY dl, memory_id LIMIT :n"
        )
        scores: dict[str, float] = {}
        below = 1 << 30
        while len(scores) < self.max_postings:
            tf = session.execute(next_tf, {**params, "below": below}).scalar()
            if tf is None or tf < 1:
                break
            if len(scores) >= limit:
                kth = sorted(scores.values(), reverse=True)[limit - 1]
                if score(int(tf), int(tf)) < kth:  # its best possible document: dl >= tf (a tie reads on)
                    break
            n = min(limit, self.max_postings - len(scores))
            for mid, dl in session.execute(group, {**params, "tf": tf, "n": n}).all():
                scores[mid] = score(int(tf), int(dl))
            below = int(tf)
        return scores
