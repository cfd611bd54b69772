"""A deterministic, dependency-free embedder for tests and benchmarks."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from memos.embeddings.base import normalise


class HashEmbedder:
    """A deterministic, dependency-free embedder for tests and benchmarks (bag of hashed words).

    Texts sharing words get similar vectors; it is not semantic. Never the default.
    """

    name = "hash"

    def __init__(self, dim: int = 384) -> None:
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:

        out = np.zeros((len(texts), self._dim), np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower()) or [""]
            for word in words:
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                seed = int.from_bytes(digest, "little")
                rng = np.random.default_rng(seed)
                out[row] += rng.standard_normal(self._dim).astype(np.float32)
        return normalise(out)
