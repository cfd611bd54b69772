"""LoCoMo ablations of the ranking, offline: what each part of memos/recall/ranking.py is worth.

    .venv/bin/python bench/locomo_ablation.py [--data ../shared/data/locomo-dev]

The same data, memory texts and budgeted metric as bench/locomo.py, without the proxy: every turn of a
conversation is a candidate with its BM25 (memos.storage.keyword.tokenize, the blind index's tokenizer) and
its all-MiniLM-L6-v2 cosine, ranked by memos.recall.ranking.rank with one part changed at a time. A quick
check that a change to the ranking helps for the right reason, and that its optimum is flat (each
weight halved and doubled). Embeddings are cached under the system's temp directory. Prints a table;
writes bench/results/locomo_ablation.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from locomo import CATEGORIES, DEFAULT_DATA, budget_recall, load_conversation, turn_text  # noqa: E402

from memos.recall.ranking import Candidate, RankParams, named_speakers, rank  # noqa: E402
from memos.recall.temporal import periods  # noqa: E402
from memos.storage.keyword import tokenize  # noqa: E402

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def embed_all(texts: list[str], cache: Path) -> np.ndarray:
    known: dict[str, np.ndarray] = {}
    if cache.exists():
        z = np.load(cache)
        known = dict(zip(z["keys"].tolist(), z["vecs"], strict=True))
    keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in known}.items())
    if missing:
        from memos.embeddings import MiniLMEmbedder

        vecs = MiniLMEmbedder().embed([t for _, t in missing])
        known.update({k: v for (k, _), v in zip(missing, vecs, strict=True)})
        np.savez(cache, keys=np.array(list(known)), vecs=np.stack(list(known.values())))
    return np.stack([known[k] for k in keys]).astype(np.float32)


class Bm25:
    """BM25 over one conversation's turns, as memos.storage.keyword.Bm25 scores it in SQL
    (same k1, b, idf)."""

    def __init__(self, docs: list[list[str]], k1: float = 1.2, b: float = 0.75) -> None:
        self.n = len(docs)
        avg = max(sum(len(d) for d in docs) / max(self.n, 1), 1.0)
        self.postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for i, d in enumerate(docs):
            norm = k1 * (1 - b + b * len(d) / avg)
            for term, tf in Counter(d).items():
                self.postings[term].append((i, tf * (k1 + 1) / (tf + norm)))

    def scores(self, query: list[str]) -> np.ndarray:
        out = np.zeros(self.n)
        for term in set(query):
            posting = self.postings.get(term, [])
            if posting:
                idf = math.log(1 + (self.n - len(posting) + 0.5) / (len(posting) + 0.5))
                for i, w in posting:
                    out[i] += idf * w
        return out


def variants() -> dict[str, tuple[RankParams, bool]]:
    """name -> (params, read periods from the query)."""
    p = RankParams()
    out = {
        "production (defaults)": (p, True),
        "no periods": (p, False),
        "no speaker term": (replace(p, other_speaker=0.0), True),
        "no neighbour weights": (replace(p, neighbour_weights=()), True),
        "no session weight": (replace(p, session_weight=0.0), True),
        "no context (neither)": (replace(p, neighbour_weights=(), session_weight=0.0), True),
        "fusion only (no context, no periods)": (replace(p, neighbour_weights=(), session_weight=0.0), False),
        "keyword only (no context, no periods)": (
            replace(p, keyword_weight=1.0, neighbour_weights=(), session_weight=0.0),
            False,
        ),
        "dense only (no context, no periods)": (
            replace(p, keyword_weight=0.0, neighbour_weights=(), session_weight=0.0),
            False,
        ),
    }
    for factor in (0.5, 2.0):
        out[f"keyword_weight x{factor}"] = (replace(p, keyword_weight=p.keyword_weight * factor), True)
        out[f"neighbour_weights x{factor}"] = (
            replace(p, neighbour_weights=tuple(w * factor for w in p.neighbour_weights)),
            True,
        )
        out[f"session_weight x{factor}"] = (replace(p, session_weight=p.session_weight * factor), True)
        out[f"other_speaker x{factor}"] = (replace(p, other_speaker=min(1.0, p.other_speaker * factor)), True)
        out[f"outside_period x{factor}"] = (
            replace(p, outside_period=min(1.0, p.outside_period * factor)),
            True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "memos-locomo-minilm.npz"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "locomo_ablation.json"))
    args = ap.parse_args(argv)
    convs = [load_conversation(f) for f in sorted(Path(args.data).glob("conv-*.json"))]
    cache = Path(args.cache)
    named = variants()
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for conv in convs:
        turns = [(s, t) for s in conv["sessions"] for t in s["turns"]]
        texts = [turn_text(t) for _, t in turns]
        bm25 = Bm25([tokenize(x) for x in texts])
        vectors = embed_all(texts, cache)
        qvecs = embed_all([q["question"] for q in conv["questions"]], cache)
        for q, qv in zip(conv["questions"], qvecs, strict=True):
            kw = bm25.scores(tokenize(q["question"]))
            cos = vectors @ qv
            cands = [
                Candidate(
                    id=f"{i:06d}",
                    dense_score=float(cos[i]),
                    keyword_score=float(kw[i]) or None,
                    session=f"s{s['n']}",
                    seq=i,
                    observed_at=s["date"],
                    speaker=t["speaker"].casefold(),
                )
                for i, (s, t) in enumerate(turns)
            ]
            found = periods(q["question"])
            speakers = named_speakers(q["question"], cands)
            for name, (params, use_periods) in named.items():
                ranked = rank(cands, params, NOW, found if use_periods else (), speakers)
                read = [(texts[int(r.id)], {turns[int(r.id)][1]["dia_id"]}) for r in ranked[:100]]
                for budget in (2000, 4000):
                    v = budget_recall(read, q["evidence"], budget)
                    for key in ("all", f"c{q['category']}", conv["name"]):
                        scores[name][f"{key}@{budget}"].append(v)
        print(f"{conv['name']}: {len(conv['questions'])} questions", file=sys.stderr, flush=True)
    table = {name: {k: round(statistics.mean(v), 4) for k, v in d.items()} for name, d in scores.items()}
    cats = [f"c{c}" for c in CATEGORIES]
    print(f"{'variant':<42}{'2k':>7}{'4k':>7}  " + " ".join(f"{c:>11}" for c in cats))
    for name, row in table.items():
        per_cat = " ".join(f"{row[f'{c}@2000']:.2f}/{row[f'{c}@4000']:.2f}" for c in cats)
        print(f"{name:<42}{row['all@2000']:>7.3f}{row['all@4000']:>7.3f}   {per_cat}")
    prod = table["production (defaults)"]
    print(
        "by conversation (production): "
        + ", ".join(
            f"{c['name']} {prod[c['name'] + '@2000']:.3f}/{prod[c['name'] + '@4000']:.3f}" for c in convs
        )
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": str(args.data), "variants": table}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
