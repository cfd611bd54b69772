"""Approximate dense search for large owners: an in-process IVF-Flat index over the owner's cached
vectors (memos.storage.vectors keeps one per owner above `VectorIndex.ann_threshold`).

Why in process rather than a LanceDB index: the owner's vectors are already held in memory (the
validated cache), so an inverted-file index over them costs no extra I/O, takes each write as a
delta at once (a LanceDB index misses rows added since its build until it is optimised), and is never
written to disk, so erasing an owner leaves no index file holding its vectors (the whole index is
dropped with the cache entry). Small owners never get one: they stay on the exact search
(memos.storage.vectors.top_k_cosine), bit for bit.

Layout. The vectors are clustered by spherical k-means into `nlist` lists (about sqrt(n) of them);
the "base" holds every vector of the build sorted by list (one contiguous float32 matrix and list
offsets). A search scores the centroids, probes the `nprobe` nearest lists and scores their vectors
exactly (the vectors are the exact rotated ones, so the scores are exact cosines; the only
approximation is which vectors are looked at). Vectors added since the build go to a "tail" that every
search scans exactly (like LanceDB's unindexed fragments); removed ones are masked and zeroed in the
base at once. When the tail or the masked part grows past a fraction of the base, the owner's cache
rebuilds the index in the background (memos.storage.vectors.OwnerVectorCache).

Concurrency: an index object is never changed in a way its readers can see, except that a removed
vector is masked (and zeroed) in place, which only makes an older reader miss a vector that is gone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IvfParams:
    """How the index is built and searched. Measured on bench/scale.py's corpus (sums of random word
    vectors: nearly structureless, a hard case for any IVF index), recall@12 against exact at 100k:
    0.965 probing 10% of 2*sqrt(n) lists, 0.978 at 15%, 0.985 at 20%; it falls slowly with n at a
    fixed fraction (0.973 at 200k, 20%). Embeddings of real text cluster far more."""

    lists_factor: float = 2.0  # nlist = lists_factor * sqrt(n)
    min_lists: int = 16
    probe_fraction: float = 0.25  # lists probed per search, as a fraction of nlist
    min_probe: int = 24
    train_per_list: int = 40  # k-means training sample: this many vectors per list
    iterations: int = 8
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


def train_centroids(sample: np.ndarray, nlist: int, iterations: int, seed: int) -> np.ndarray:
    """Spherical k-means (unit centroids, cosine assignment) over `sample` (unit rows)."""
    rng = np.random.default_rng(seed)
    nlist = max(1, min(nlist, sample.shape[0]))
    centroids = sample[rng.choice(sample.shape[0], nlist, replace=False)].copy()
    for _ in range(iterations):
        assign = _nearest(sample, centroids)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, sample)
        counts = np.bincount(assign, minlength=nlist)
        empty = counts == 0
        if empty.any():  # an empty list takes a random sample vector
            sums[empty] = sample[rng.choice(sample.shape[0], int(empty.sum()), replace=False)]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = (sums / np.maximum(norms, 1e-12)).astype(np.float32)
    return centroids


def _nearest(vectors: np.ndarray, centroids: np.ndarray, chunk: int = 16_384) -> np.ndarray:
    out = np.empty(vectors.shape[0], np.int64)
    for start in range(0, vectors.shape[0], chunk):
        out[start : start + chunk] = np.argmax(vectors[start : start + chunk] @ centroids.T, axis=1)
    return out


class IvfFlat:
    """One owner's IVF-Flat index: (see the module docstring). Build with `IvfFlat.build`."""

    __slots__ = (
        "_pos",
        "alive",
        "base",
        "base_ids",
        "centroids",
        "dead",
        "offsets",
        "params",
        "tail",
        "tail_ids",
    )

    def __init__(
        self,
        params: IvfParams,
        centroids: np.ndarray,
        base: np.ndarray,
        offsets: np.ndarray,
        base_ids: list[str],
        alive: np.ndarray,
        pos: dict[str, int],
        dead: int,
        tail_ids: list[str],
        tail: np.ndarray,
    ) -> None:
        self.params = params
        self.centroids = centroids
        self.base = base
        self.offsets = offsets
        self.base_ids = base_ids
        self.alive = alive
        self._pos = pos  # base id -> row; shared along one lineage, changed by writers only
        self.dead = dead
        self.tail_ids = tail_ids
        self.tail = tail  # buffer; the first len(tail_ids) rows are the tail's vectors

    @classmethod
    def build(cls, ids: Sequence[str], matrix: np.ndarray, params: IvfParams | None = None) -> IvfFlat:
        """Cluster `matrix` (unit rows, one per id) and lay the vectors out by list. Seconds at 1e5."""
        params = params or IvfParams()
        n = len(ids)
        matrix = np.ascontiguousarray(matrix[:n], dtype=np.float32)
        nlist = max(params.min_lists, round(params.lists_factor * math.sqrt(max(n, 1))))
        nlist = max(1, min(nlist, n))
        rng = np.random.default_rng(params.seed)
        sample_n = min(n, nlist * params.train_per_list)
        sample = matrix[np.sort(rng.choice(n, sample_n, replace=False))] if sample_n < n else matrix
        centroids = train_centroids(sample, nlist, params.iterations, params.seed)
        assign = _nearest(matrix, centroids)
        order = np.argsort(assign, kind="stable")
        base = matrix[order]
        counts = np.bincount(assign, minlength=centroids.shape[0])
        offsets = np.zeros(centroids.shape[0] + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        base_ids = [ids[int(i)] for i in order]
        pos = {mid: i for i, mid in enumerate(base_ids)}
        return cls(
            params,
            centroids,
            base,
            offsets,
            base_ids,
            np.ones(n, bool),
            pos,
            0,
            [],
            np.empty((0, matrix.shape[1]), np.float32),
        )

    # ------------------------------------------------------------------ size

    def __len__(self) -> int:
        return len(self.base_ids) - self.dead + len(self.tail_ids)

    @property
    def nbytes(self) -> int:
        return int(self.base.nbytes + self.tail.nbytes + self.centroids.nbytes) + 56 * (
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

    def added(self, ids: Sequence[str], vectors: np.ndarray) -> IvfFlat:
        """This index with vectors appended to the tail (in place in the tail's buffer when it has
        room; rows past an object's tail length are no reader's)."""
        n, extra = len(self.tail_ids), len(ids)
        tail = _grow(self.tail, n, extra)
        tail[n : n + extra] = vectors
        return self._with(tail_ids=self.tail_ids + list(ids), tail=tail)

    def removed(self, ids: Sequence[str]) -> IvfFlat:
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

    def _with(self, **changes: object) -> IvfFlat:
        fields = {name: getattr(self, name) for name in self.__slots__ if name != "_pos"}
        fields.update(changes)
        return IvfFlat(pos=self._pos, **fields)

    # ------------------------------------------------------------------ search

    def nprobe(self) -> int:
        nlist = self.centroids.shape[0]
        return min(nlist, max(self.params.min_probe, math.ceil(self.params.probe_fraction * nlist)))

    def search(self, query: np.ndarray, k: int, nprobe: int | None = None) -> list[tuple[str, float]]:
        """[(id, cosine)] best first over the probed lists and the tail; ties by id; duplicate ids
        collapse to their best (as the exact search)."""
        if k <= 0 or len(self) == 0:
            return []
        q = query.astype(np.float32)
        nlist = self.centroids.shape[0]
        probe = min(nlist, nprobe or self.nprobe())
        cs = self.centroids @ q
        lists = np.sort(np.argpartition(-cs, probe - 1)[:probe]) if probe < nlist else np.arange(nlist)
        # Lists are contiguous in the base, in list order: neighbouring probed lists are one range.
        starts, ends = self.offsets[lists], self.offsets[lists + 1]
        keep = np.ones(lists.shape[0], bool)
        keep[1:] = starts[1:] != ends[:-1]  # a range starts where the previous one does not end
        run_starts = starts[keep]
        run_ends = np.maximum.reduceat(ends, np.flatnonzero(keep)) if lists.shape[0] else ends
        nonempty = run_ends > run_starts
        run_starts, run_ends = run_starts[nonempty], run_ends[nonempty]
        base = self.base
        parts = [base[a:b] @ q for a, b in zip(run_starts.tolist(), run_ends.tolist(), strict=True)]
        lengths = run_ends - run_starts
        score_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if parts else lengths
        if parts:
            scores = np.concatenate(parts)
            if self.dead:
                alive = np.concatenate(
                    [self.alive[int(a) : int(a + n)] for a, n in zip(run_starts, lengths, strict=True)]
                )
                scores[~alive] = -np.inf
        else:
            scores = np.empty(0, np.float32)
        n_base = scores.shape[0]
        n_tail = len(self.tail_ids)
        if n_tail:
            scores = np.concatenate([scores, self.tail[:n_tail] @ q])
        total = scores.shape[0]
        take = min(total, k * 2 + 8)
        if take <= 0:
            return []
        idx = np.argpartition(-scores, take - 1)[:take] if take < total else np.arange(total)
        in_base = idx[idx < n_base]
        runs = np.searchsorted(score_starts, in_base, side="right") - 1
        at = run_starts[runs] + (in_base - score_starts[runs])  # base rows of the base candidates
        rows = dict(zip(in_base.tolist(), at.tolist(), strict=True))
        best: dict[str, float] = {}
        for i, s in zip(idx.tolist(), scores[idx].tolist(), strict=True):
            if s == -np.inf:
                continue
            mid = self.base_ids[rows[i]] if i < n_base else self.tail_ids[i - n_base]
            if s > best.get(mid, -2.0):
                best[mid] = s
        return sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
