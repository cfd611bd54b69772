"""memos.readiness: each part says whether it can serve now, by asking it (a read, a listing), and
an embedder that must load first is not ready until it has (nothing is loaded to find out)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from memos.db import Database
from memos.embeddings import HashEmbedder, MiniLMEmbedder
from memos.embeddings.upstream import UpstreamEmbedder
from memos.readiness import check_readiness
from memos.storage.vectors import VectorIndex


class NoEmbeddings:
    async def embeddings(self, model: str, inputs: list[str]) -> list[list[float]]:
        raise AssertionError("readiness never embeds")


def test_ready_parts(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'memos.db'}")
    ready = check_readiness(db, VectorIndex(str(tmp_path / "vectors")), HashEmbedder())
    assert (ready.vault, ready.vectors, ready.embedder, ready.embedder_name) == (True, True, True, "hash")
    assert ready.ready
    db.dispose()


def test_parts_that_cannot_serve(tmp_path: Path) -> None:
    unreachable = Database("postgresql://memos@127.0.0.1:1/memos")  # nothing listens on port 1
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    minilm = MiniLMEmbedder()
    ready = check_readiness(unreachable, VectorIndex(str(blocker / "vectors")), minilm)
    assert (ready.vault, ready.vectors, ready.embedder) == (False, False, False)
    assert not ready.ready and ready.embedder_name == "minilm"
    assert not minilm.ready  # finding out loaded nothing
    unreachable.dispose()


def test_an_upstream_embedder_is_ready_once_started() -> None:
    embedder = UpstreamEmbedder(NoEmbeddings(), "text-embedding-3-small", dim=8)
    assert not embedder.ready
    loop = asyncio.new_event_loop()
    try:
        embedder.bind_loop(loop)
        assert embedder.ready
    finally:
        embedder.bind_loop(None)
        loop.close()
