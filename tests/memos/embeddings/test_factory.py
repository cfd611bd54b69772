"""build_embedder: the embedder a setting names."""

from __future__ import annotations

import pytest

from memos.embeddings import build_embedder


def test_build_embedder_rejects_unknown() -> None:
    with pytest.raises(ValueError):
        build_embedder("word2vec")
    with pytest.raises(ValueError):
        build_embedder("upstream:x")
