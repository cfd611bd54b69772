"""What every embedder is: the blocking `Embedder`, its async face `AsyncEmbedder` (the micro-batcher),
`TimedEmbedder` (an embedder whose calls are reported), and `normalise`, the float32 unit vectors of
shape (n, dim) every embedder returns."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Blocking: run it in a worker thread (MicroBatcher does)."""

    name: str

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class AsyncEmbedder(Protocol):
    name: str

    @property
    def dim(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def embed_one(self, text: str) -> np.ndarray: ...


class TimedEmbedder:
    """An embedder whose every call is reported as (texts, seconds): the stored side's embeddings
    (write-back, patches, imports) are timed with it, as MicroBatcher times the queries."""

    def __init__(self, inner: Embedder, report: Callable[[int, float], None]) -> None:
        self._inner = inner
        self._report = report
        self.name = inner.name

    @property
    def dim(self) -> int:
        return self._inner.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        started = time.perf_counter()
        vectors = self._inner.embed(texts)
        self._report(len(texts), time.perf_counter() - started)
        return vectors


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
