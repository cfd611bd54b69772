"""Vault scale: search latency for one user at 1k, 10k and 100k memories (or --sizes), and ingest rates.

    .venv/bin/python bench/scale.py                       # 1k, 10k, 100k on SQLite in a temp dir
    .venv/bin/python bench/scale.py --sizes 1000,10000    # fewer sizes
    .venv/bin/python bench/scale.py --database-url postgresql://postgres@localhost/bench
    .venv/bin/python bench/scale.py --query-embedder hash # no model (measures the vault alone)

What it does, on the real vault (encryption, blind keyword index, LanceDB, versions):
- Bulk-loads synthetic memories of one user (sentences of 8-30 words drawn from a 6,000-word Zipfian
  vocabulary, ~20 words like chat turns) through `MemVault.add_many` in batches, up to each size in
  turn. Bulk vectors come from a fast bag-of-words embedder (so 100k memories load in minutes); the
  search path does not depend on which model made the vectors, only on their number and dimension.
- At each size: `--queries` searches through `Retriever.search` (dense + BM25 + fusion + hydration and
  decryption of the hits, top_k 12, 50 candidates per list), p50/p95/p99, both
  "retrieve" (query vector given) and "embed+retrieve" (query embedded by the query embedder, the
  default all-MiniLM-L6-v2, as the memory API and chat injection do). "cold" is the first search
  after the owner's cache was dropped (as after another replica's write): small owners reload at once,
  large ones are searched in LanceDB while the cache reloads in the background; "cache load" is how
  long a full reload of the owner's vectors takes.
- The approximate index (owners from `VectorIndex.ann_threshold` vectors, memos.storage.ann): its
  build time on the owner's load, "recall@12": the share of the exact dense top 12 (over the same
  cached vectors) that the approximate dense search returns, on the bench's queries, and dense-only
  p50s both ways; "update": one add and one delete of the large owner (vault.add with a vector,
  vault.delete), which the index takes as deltas.
- Ingest: the bulk rate (memories/s through add_many, vectors precomputed), and the one-at-a-time
  rate through `MemVault.add` with the query embedder computing each vector (as POST /v1/memories
  with one entry does).
Prints a table and writes bench/results/scale.json (with the machine's CPU count and load). It
measures; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from memos.db import Database  # noqa: E402
from memos.embeddings import HashEmbedder, MiniLMEmbedder, normalise  # noqa: E402
from memos.item import Source  # noqa: E402
from memos.keys.crypto import MasterKey  # noqa: E402
from memos.keys.keyring import Keyring  # noqa: E402
from memos.recall.retrieval import RetrievalParams, Retriever  # noqa: E402
from memos.storage.vault import MemVault, NewMemory  # noqa: E402
from memos.storage.vectors import VectorIndex, _Entry  # noqa: E402

RESULTS = REPO / "bench" / "results" / "scale.json"
TENANT, USER = "bench", "bench-user"
DIM = 384


class Corpus:
    """Synthetic chat-like memories: Zipfian words, a few names/places/numbers per sentence."""

    def __init__(self, seed: int = 7, vocab: int = 6000) -> None:
        self.rng = np.random.default_rng(seed)
        syll = ["ka", "lo", "mi", "ren", "to", "sa", "vel", "dor", "an", "is", "pu", "ge", "shi", "ra", "nor"]
        words: set[str] = set()
        while len(words) < vocab:
            n = int(self.rng.integers(2, 5))  # 15^2 + 15^3 + 15^4 possible words
            words.add("".join(self.rng.choice(syll, n)))
        self.words = sorted(words)
        ranks = np.arange(1, vocab + 1)
        self.p = (1.0 / ranks**1.07) / np.sum(1.0 / ranks**1.07)
        self.word_vectors = normalise(self.rng.standard_normal((vocab, DIM)).astype(np.float32))

    def sentence_ids(self) -> np.ndarray:
        return self.rng.choice(len(self.words), size=int(self.rng.integers(8, 31)), p=self.p)

    def text(self, ids: np.ndarray) -> str:
        return " ".join(self.words[i] for i in ids).capitalize() + "."

    def vector(self, ids: np.ndarray) -> np.ndarray:
        return normalise(self.word_vectors[ids].sum(axis=0))[0]

    def batch(self, n: int) -> list[tuple[str, np.ndarray]]:
        out = []
        for _ in range(n):
            ids = self.sentence_ids()
            out.append((self.text(ids), self.vector(ids)))
        return out

    def query(self) -> tuple[str, np.ndarray]:
        ids = self.rng.choice(len(self.words), size=int(self.rng.integers(3, 9)), p=self.p)
        return " ".join(self.words[i] for i in ids) + "?", self.vector(ids)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(pct(ms, 0.50), 2),
        "p95_ms": round(pct(ms, 0.95), 2),
        "p99_ms": round(pct(ms, 0.99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--single-adds", type=int, default=100)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--query-embedder", choices=["minilm", "hash"], default="minilm")
    parser.add_argument("--updates", type=int, default=20, help="adds and deletes timed per size")
    parser.add_argument("--ann-threshold", type=int, default=None, help="VectorIndex.ann_threshold")
    parser.add_argument(
        "--lance-index-rows",
        type=int,
        default=None,
        help="VectorIndex.lance_index_rows: the LanceDB index for owners searched in LanceDB (0: none)",
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    tmp = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="memos-scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    db_url = args.database_url or f"sqlite:///{tmp / 'memos.db'}"
    db = Database(db_url)
    db.create_all()
    keyring = Keyring(db, MasterKey.generate())
    query_embedder = MiniLMEmbedder() if args.query_embedder == "minilm" else HashEmbedder()
    t0 = time.perf_counter()
    query_embedder.embed(["warm up"])
    load_s = time.perf_counter() - t0
    index_args = {} if args.ann_threshold is None else {"ann_threshold": args.ann_threshold}
    if args.lance_index_rows is not None:
        index_args["lance_index_rows"] = args.lance_index_rows
    vault = MemVault(db, keyring, VectorIndex(str(tmp / "vectors"), **index_args), query_embedder)
    retriever = Retriever(vault)
    params = RetrievalParams(top_k=12, candidates=50)
    corpus = Corpus()
    load_avg_before = os.getloadavg()

    print(
        f"vault: {db.url.split('://')[0]}  data dir: {tmp}  query embedder: {query_embedder.name} "
        f"(loaded in {load_s:.1f}s)  cpus: {os.cpu_count()}  load: {load_avg_before[0]:.2f}"
    )
    rows: list[dict[str, Any]] = []
    have = 0
    bulk_seconds = 0.0
    for size in sizes:
        while have < size:
            n = min(args.batch, size - have)
            batch = corpus.batch(n)
            news = [
                NewMemory(text=t, vector=v, sources=[Source(metadata={"i": have + i})])
                for i, (t, v) in enumerate(batch)
            ]
            t = time.perf_counter()
            vault.add_many(TENANT, USER, news, dedupe=False)
            bulk_seconds += time.perf_counter() - t
            have += n
        t = time.perf_counter()
        vault.vectors.compact_now(TENANT)  # what the background compaction does every N writes
        compact_ms = (time.perf_counter() - t) * 1000
        queries = [corpus.query() for _ in range(args.queries)]
        # a process that just started (or saw another replica write) reloads the owner's vectors;
        # for owners over VectorIndex.sync_load_max that happens in the background: wait for it
        vault.vectors.cache.wait_for_builds()  # a rebuild started by the adds above
        builds_before = vault.vectors.cache.index_stats.builds
        t = time.perf_counter()
        vault.warm_owner(TENANT, USER, DIM)
        load_ms = (time.perf_counter() - t) * 1000
        stats = vault.vectors.cache.index_stats
        build_ms = stats.last_build_ms if stats.builds > builds_before else None
        owner_key = vault.owner_key(TENANT, USER)
        entry = vault.vectors.cache.get((TENANT, owner_key), vault.stats(TENANT, USER).changes)
        kind = "exact" if entry is None or isinstance(entry, _Entry) else "pq"
        # cold: the first search after the owner changed elsewhere (LanceDB search, background reload)
        vault.vectors.cache.invalidate(TENANT)
        t = time.perf_counter()
        retriever.search(TENANT, USER, queries[0][0], queries[0][1], params)
        cold_ms = (time.perf_counter() - t) * 1000
        vault.warm_owner(TENANT, USER, DIM)
        for q, v in queries[:10]:
            retriever.search(TENANT, USER, q, v, params)
        retrieve_ms, embed_ms, hits = [], [], []
        for q, v in queries:
            t = time.perf_counter()
            found = retriever.search(TENANT, USER, q, v, params)
            retrieve_ms.append((time.perf_counter() - t) * 1000)
            hits.append(len(found))
        for q, _ in queries:
            t = time.perf_counter()
            qv = query_embedder.embed([q])[0]
            retriever.search(TENANT, USER, q, qv, params)
            embed_ms.append((time.perf_counter() - t) * 1000)
        # the approximate dense search against the exact one over the same vectors, and both timed
        recall, approx_ms, exact_ms = [], [], []
        for _, v in queries:
            t = time.perf_counter()
            approx = vault.dense(TENANT, USER, v, 12)
            approx_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            exact = vault.dense(TENANT, USER, v, 12, exact=True)
            exact_ms.append((time.perf_counter() - t) * 1000)
            recall.append(len({h[1] for h in approx} & {h[1] for h in exact}) / max(1, len(exact)))
        # updates of the large owner: each add and delete is a delta to its index (and a SQL write)
        add_ms, delete_ms, added = [], [], []
        for text, vec in corpus.batch(args.updates):
            t = time.perf_counter()
            added.append(vault.add(TENANT, USER, text, vector=vec, dedupe=False))
            add_ms.append((time.perf_counter() - t) * 1000)
        for item in added:
            t = time.perf_counter()
            vault.delete(TENANT, item.id)
            delete_ms.append((time.perf_counter() - t) * 1000)
        row = {
            "memories": size,
            "dense_path": kind,
            "recall_at_12_vs_exact": round(statistics.fmean(recall), 4),
            "dense_p50_ms": round(pct(approx_ms, 0.5), 2),
            "dense_exact_p50_ms": round(pct(exact_ms, 0.5), 2),
            "index_build_ms": None if build_ms is None else round(build_ms, 1),
            "update_add_p50_ms": round(pct(add_ms, 0.5), 2) if add_ms else None,
            "update_delete_p50_ms": round(pct(delete_ms, 0.5), 2) if delete_ms else None,
            "compact_ms": round(compact_ms, 1),
            "retrieve": summary(retrieve_ms),
            "embed_and_retrieve": summary(embed_ms),
            "cold_first_search_ms": round(cold_ms, 1),
            "cache_load_ms": round(load_ms, 1),
            "mean_hits": round(statistics.fmean(hits), 1),
        }
        rows.append(row)
        print(
            f"  {size:>7} memories: retrieve p50 {row['retrieve']['p50_ms']:.1f} ms, "
            f"p95 {row['retrieve']['p95_ms']:.1f} ms; embed+retrieve p50 "
            f"{row['embed_and_retrieve']['p50_ms']:.1f} ms (cold {cold_ms:.0f} ms); dense {kind} "
            f"recall@12 {row['recall_at_12_vs_exact']:.3f}",
            flush=True,
        )
        flat = {k: v for k, v in row.items() if not isinstance(v, dict)}
        print(f"           {json.dumps(flat)}", flush=True)
        # what was measured so far, in case a long run is stopped before the end
        partial = Path(args.out).with_suffix(".partial.json")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"database": db.url.split("://")[0], "search": rows}, indent=2) + "\n")

    # one-at-a-time adds with the embedder computing each vector (POST /v1/memories, one entry)
    single_ms = []
    for i in range(args.single_adds):
        text, _ = corpus.batch(1)[0]
        t = time.perf_counter()
        vault.add(TENANT, "single-add-user", text, sources=[Source(metadata={"i": i})])
        single_ms.append((time.perf_counter() - t) * 1000)

    result = {
        "bench": "scale",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_before": [round(x, 2) for x in load_avg_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "database": db.url.split("://")[0],
        "query_embedder": query_embedder.name,
        "params": {
            "top_k": params.top_k,
            "candidates": params.candidates,
            "queries": args.queries,
            "ann_threshold": vault.vectors.cache.ann_threshold,
            "lance_index_rows": vault.vectors.lance_index_rows,
        },
        "search": rows,
        "ingest": {
            "bulk_memories_per_s": round(have / bulk_seconds, 1) if bulk_seconds else None,
            "bulk_batch": args.batch,
            "single_add_with_embedding": {
                **summary(single_ms),
                "per_s": round(1000 / statistics.fmean(single_ms), 1),
            },
        },
    }
    print()
    head = f"{'memories':>9} | {'retrieve p50':>12} | {'p95':>7} | {'embed+retrieve p50':>18} | {'p95':>7}"
    print(head + f" | {'cold':>7}")
    print("-" * 75)
    for r in rows:
        print(
            f"{r['memories']:>9} | {r['retrieve']['p50_ms']:>9.1f} ms | {r['retrieve']['p95_ms']:>4.1f} ms | "
            f"{r['embed_and_retrieve']['p50_ms']:>15.1f} ms | {r['embed_and_retrieve']['p95_ms']:>4.1f} ms | "
            f"{r['cold_first_search_ms']:>4.0f} ms"
        )
    print()
    print(
        f"{'memories':>9} | {'dense':>5} | {'recall@12':>9} | {'dense p50':>9} | {'exact p50':>9} | "
        f"{'load':>8} | {'build':>8} | {'add p50':>8} | {'del p50':>8}"
    )
    print("-" * 98)
    for r in rows:
        build = "-" if r["index_build_ms"] is None else f"{r['index_build_ms'] / 1000:.1f} s"
        print(
            f"{r['memories']:>9} | {r['dense_path']:>5} | {r['recall_at_12_vs_exact']:>9.3f} | "
            f"{r['dense_p50_ms']:>6.2f} ms | {r['dense_exact_p50_ms']:>6.2f} ms | "
            f"{r['cache_load_ms'] / 1000:>6.1f} s | {build:>8} | {r['update_add_p50_ms'] or 0:>5.1f} ms | "
            f"{r['update_delete_p50_ms'] or 0:>5.1f} ms"
        )
    print(
        f"\ningest: bulk {result['ingest']['bulk_memories_per_s']} memories/s (batches of {args.batch}); "
        f"one at a time with embedding: {result['ingest']['single_add_with_embedding']['per_s']}/s "
        f"(p50 {result['ingest']['single_add_with_embedding']['p50_ms']} ms)"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    db.dispose()


if __name__ == "__main__":
    main()
