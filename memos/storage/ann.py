"""Approximate dense search for large owners: the owner's cached vectors, plus 4-bit product-quantised
codes of them (faiss's PQ fast scan) that a search scans in full to pick candidates, which it then
scores exactly (memos.storage.vectors keeps one per owner above `VectorIndex.ann_threshold`).

Why codes scanned in full rather than a partitioned (IVF) or graph (HNSW) index. Measured on
bench/scale.py's corpus (sums of random word vectors: nearly structureless, the hard case) at 1M
vectors on a 2-core box, recall@12 against exact: our numpy IVF-Flat needed a quarter of its lists
(~40 ms a search) for 0.98; faiss HNSW (M=32) reached only 0.97 at efSearch 1600 already at 100k;
IVF over PQ codes stalled at 0.975 probing half the lists. A full scan of 48-byte codes (1/32 of the
float32 bytes, SIMD lookups) then an exact score of the best 2,400 took 4.9 ms p50 for 0.988, and its
cost is the codes' size: ~0.5 ms at 100k. Codes need no graph, so an add is one encode, and no build
orders the vectors.

Why in process rather than a LanceDB index: the owner's vectors are already held in memory (the
validated cache), the codes take each write at once (a LanceDB index misses rows added since its
build until it is optimised), and nothing is written to disk, so erasing an owner leaves no index
file holding its vectors (the whole index is dropped with the cache entry). Small owners never get
one: they stay on the exact search (memos.storage.vectors.top_k_cosine), bit for bit.

Layout. The "base" holds every vector of the build (one contiguous float32 matrix, the exact rotated
vectors) and the codes of the same rows. A search scans the codes for the `depth` best rows and
scores those rows exactly, so the scores it returns are exact cosines; the only approximation is
which vectors are scored. Vectors added since the build go to a "tail" that every search scans
exactly; removed ones are masked and zeroed in the base at once (their codes stay, in memory only,
and are never returned). When the tail or the masked part grows past a fraction of the base, the
owner's cache rebuilds the index in the background (memos.storage.vectors.OwnerVectorCache).

Concurrency: an index object is never changed in a way its readers can see, except that a removed
vector is masked (and zeroed) in place, which only makes an older reader miss a vector that is gone.
The codes are read-only once built: faiss searches them from several threads at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PqParams:
    """How the codes are built and searched. Measured on bench/scale.py's corpus at 1M vectors (dim
    384, 96 sub-quantisers: 4 dimensions per 4-bit code), recall@12 against exact and search p50 on
    one thread: 0.945 scoring the best 600 rows exactly (3.3 ms), 0.978 at 1,200 (4.3 ms), 0.988 at
    2,400 (4.9 ms); at 100k 0.998 from 1,200. Embeddings of real text cluster far more."""

    dims_per_code: int = 4  # sub-quantiser width: 384 dims -> 96 codes of 4 bits (48 bytes a vector)
    depth: int = 2400  # rows scored exactly per search (at least; `depth_per_k` * k when larger)
    depth_per_k: int = 8
    train_rows: int = 65_536  # the quantiser's training sample
    threads: int = 1  # faiss's OpenMP threads: searches already run on several recall threads
    tail_fraction: float = 0.05  # rebuild when the tail passes this fraction of the base...
    tail_min: int = 4096  # ...and this many vectors
    dead_fraction: float = 0.2  # rebuild when this fraction of the base was removed
    seed: int = 0


def _grow(buffer: np.ndarray, n: int, extra: int) -> np.ndarray:
    if n + extra <= buffer.shape[0]:
        return buffer
    grown = np.empty((max(n + extra, n + n // 2, 64), buffer.shape[1]), np.float32)
    grown[:n] = buffer[:n]
    return grown


def _padded_dim(dim: int, per_code: int) -> int:
    # fast scan packs codes in pairs: the code count is even, the dimension a multiple of it
    step = 2 * per_code
    return -(-dim // step) * step


def _padded(matrix: np.ndarray, dim: int) -> np.ndarray:
    if matrix.shape[1] == dim:
        return np.ascontiguousarray(matrix, dtype=np.float32)
    out = np.zeros((matrix.shape[0], dim), np.float32)  # zero dimensions change no inner product
    out[:, : matrix.shape[1]] = matrix
    return out


def encode(matrix: np.ndarray, params: PqParams, chunk: int = 65_536) -> Any:
    """faiss codes of `matrix` (unit rows): an IndexPQFastScan searched by inner product. Seconds at 1e6."""
    import faiss  # not on the import path of small deployments: only owners past the threshold need it

    faiss.omp_set_num_threads(params.threads)
    n, dim = matrix.shape
    padded = _padded_dim(dim, params.dims_per_code)
    codes = faiss.IndexPQFastScan(padded, padded // params.dims_per_code, 4, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(params.seed)
    sample = matrix
    if n > params.train_rows:
        sample = matrix[np.sort(rng.choice(n, params.train_rows, replace=False))]
    codes.train(_padded(sample, padded))
    for start in range(0, n, chunk):
        codes.add(_padded(matrix[start : start + chunk], padded))
    return codes


class PqScan:
    """One owner's approximate index: (see the module docstring). Build with `PqScan.build`."""

    __slots__ = ("_pos", "alive", "base", "base_ids", "codes", "dead", "params", "tail", "tail_ids")

    def __init__(
        self,
        params: PqParams,
        codes: Any,
        base: np.ndarray,
        base_ids: list[str],
        alive: np.ndarray,
        pos: dict[str, int],
        dead: int,
        tail_ids: list[str],
        tail: np.ndarray,
    ) -> None:
        self.params = params
        self.codes = codes  # faiss IndexPQFastScan over the base's rows, in row order; read-only
        self.base = base
        self.base_ids = base_ids
        self.alive = alive
        self._pos = pos  # base id -> row; shared along one lineage, changed by writers only
        self.dead = dead
        self.tail_ids = tail_ids
        self.tail = tail  # buffer; the first len(tail_ids) rows are the tail's vectors

    @classmethod
    def build(cls, ids: Sequence[str], matrix: np.ndarray, params: PqParams | None = None) -> PqScan:
        """Train the quantiser on a sample of `matrix` (unit rows, one per id) and encode every row."""
        params = params or PqParams()
        n = len(ids)
        base = np.ascontiguousarray(matrix[:n], dtype=np.float32)
        base_ids = list(ids)
        return cls(
            params,
            encode(base, params),
            base,
            base_ids,
            np.ones(n, bool),
            {mid: i for i, mid in enumerate(base_ids)},
            0,
            [],
            np.empty((0, base.shape[1]), np.float32),
        )

    # ------------------------------------------------------------------ size

    def __len__(self) -> int:
        return len(self.base_ids) - self.dead + len(self.tail_ids)

    @property
    def nbytes(self) -> int:
        code_bytes = len(self.base_ids) * _padded_dim(self.base.shape[1], self.params.dims_per_code) // 8
        return int(self.base.nbytes + self.tail.nbytes + self.alive.nbytes) + code_bytes + 56 * (
            len(self.base_ids) + len(self.tail_ids)
        )

    def wants_rebuild(self) -> bool:
        """Whether the tail or the removed part has outgrown the build (a background rebuild is due)."""
        p, built = self.params, len(self.base_ids)
        return len(self.tail_ids) > max(p.tail_min, p.tail_fraction * built) or self.dead > max(
            p.tail_min, p.dead_fraction * built
        )

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """Every live (id, vector), base then tail: what a rebuild or an exact search starts from."""
        keep = np.flatnonzero(self.alive)
        ids = [self.base_ids[int(i)] for i in keep] + list(self.tail_ids)
        matrix = np.concatenate([self.base[keep], self.tail[: len(self.tail_ids)]])
        return ids, matrix

    # ------------------------------------------------------------------ changes (new objects)

    def added(self, ids: Sequence[str], vectors: np.ndarray) -> PqScan:
        """This index with vectors appended to the tail (in place in the tail's buffer when it has
        room; rows past an object's tail length are no reader's)."""
        n, extra = len(self.tail_ids), len(ids)
        tail = _grow(self.tail, n, extra)
        tail[n : n + extra] = vectors
        return self._with(tail_ids=self.tail_ids + list(ids), tail=tail)

    def removed(self, ids: Sequence[str]) -> PqScan:
        """This index without `ids`: masked and zeroed in the base (in place), dropped from the tail."""
        gone = set(ids)
        dead = self.dead
        for mid in gone:
            i = self._pos.pop(mid, None)
            if i is not None and self.alive[i]:
                self.alive[i] = False
                self.base[i] = 0.0
                dead += 1
        tail_ids, tail = self.tail_ids, self.tail
        if any(mid in gone for mid in tail_ids):
            keep = [i for i, mid in enumerate(tail_ids) if mid not in gone]
            tail_ids = [tail_ids[i] for i in keep]
            tail = self.tail[keep]
        return self._with(dead=dead, tail_ids=tail_ids, tail=tail)

    def _with(self, **changes: object) -> PqScan:
        fields = {name: getattr(self, name) for name in self.__slots__ if name != "_pos"}
        fields.update(changes)
        return PqScan(pos=self._pos, **fields)

    # ------------------------------------------------------------------ search

    def depth(self, k: int) -> int:
        return max(self.params.depth, self.params.depth_per_k * k)

    def search(self, query: np.ndarray, k: int, depth: int | None = None) -> list[tuple[str, float]]:
        """[(id, cosine)] best first: the base rows whose codes score best (`depth` of them), scored
        exactly, and the tail; ties by id; duplicate ids collapse to their best (as the exact search)."""
        if k <= 0 or len(self) == 0:
            return []
        q = query.astype(np.float32)
        n_base = len(self.base_ids)
        take = min(n_base, depth or self.depth(k))
        if take:
            padded = _padded(q[None, :], self.codes.d)
            rows = self.codes.search(padded, take)[1][0]
            rows = rows[rows >= 0]
            rows = rows[self.alive[rows]]
        else:
            rows = np.empty(0, np.int64)
        candidates = [self.base_ids[int(i)] for i in rows]
        scores = self.base[rows] @ q
        n_tail = len(self.tail_ids)
        if n_tail:
            candidates += self.tail_ids
            scores = np.concatenate([scores, self.tail[:n_tail] @ q])
        total = scores.shape[0]
        keep = min(total, k * 2 + 8)
        if keep <= 0:
            return []
        idx = np.argpartition(-scores, keep - 1)[:keep] if keep < total else np.arange(total)
        best: dict[str, float] = {}
        for i, s in zip(idx.tolist(), scores[idx].tolist(), strict=True):
            mid = candidates[i]
            if s > best.get(mid, -2.0):
                best[mid] = s
        return sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
