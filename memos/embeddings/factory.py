"""The embedder a setting names (settings.embedding_model)."""

from __future__ import annotations

from memos.embeddings.base import Embedder
from memos.embeddings.hashing import HashEmbedder
from memos.embeddings.minilm import MiniLMEmbedder
from memos.embeddings.upstream import EmbeddingsClient, UpstreamEmbedder


def build_embedder(spec: str, client: EmbeddingsClient | None = None) -> Embedder:
    """From settings.embedding_model: "minilm", "upstream:<model>" (needs a client), or "hash"."""
    if spec == "minilm":
        return MiniLMEmbedder()
    if spec == "hash":
        return HashEmbedder()
    if spec.startswith("upstream:"):
        if client is None:
            raise ValueError("an upstream embeddings model needs an EmbeddingsClient")
        return UpstreamEmbedder(client, spec.split(":", 1)[1])
    raise ValueError(f"unknown embedding model {spec!r} (use 'minilm' or 'upstream:<model>')")
