"""The micro-batcher: concurrent requests share one backend call, off the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np

from memos.embeddings import HashEmbedder, MicroBatcher


class CountingEmbedder:
    name = "counting"

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()
        self.fail = fail

    @property
    def dim(self) -> int:
        return 8

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.threads.add(threading.current_thread().name)
        if self.fail:
            raise RuntimeError("backend down")
        return HashEmbedder(8).embed(texts)


async def test_concurrent_requests_are_batched_off_the_loop() -> None:
    backend = CountingEmbedder()
    batcher = MicroBatcher(backend)
    texts = [f"text {i}" for i in range(10)]
    vectors = await asyncio.gather(*(batcher.embed_one(t) for t in texts))
    assert len(backend.calls) == 1 and sorted(backend.calls[0]) == sorted(texts)
    assert threading.main_thread().name not in backend.threads
    expected = HashEmbedder(8).embed(texts)
    assert np.allclose(np.stack(vectors), expected, atol=1e-6)


async def test_duplicates_and_cache() -> None:
    backend = CountingEmbedder()
    batcher = MicroBatcher(backend)
    a, b = await asyncio.gather(batcher.embed_one("same"), batcher.embed_one("same"))
    assert np.array_equal(a, b) and backend.calls == [["same"]]
    await batcher.embed_one("same")  # served from the LRU
    assert len(backend.calls) == 1


async def test_max_batch_flushes_early_and_big_lists_go_in_one_call() -> None:
    backend = CountingEmbedder()
    batcher = MicroBatcher(backend, max_batch=4)
    await asyncio.wait_for(asyncio.gather(*(batcher.embed_one(f"t{i}") for i in range(4))), 2)
    assert len(backend.calls) == 1
    out = await batcher.embed([f"u{i}" for i in range(10)])
    assert out.shape == (10, 8) and len(backend.calls) == 2


async def test_errors_reach_every_waiter() -> None:
    batcher = MicroBatcher(CountingEmbedder(fail=True))
    results = await asyncio.gather(batcher.embed_one("a"), batcher.embed_one("b"), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


class GatedEmbedder(CountingEmbedder):
    """An async backend whose batch ["a"] runs until released (a slow embedding call)."""

    def __init__(self) -> None:
        super().__init__()
        self.gated_started, self.release = asyncio.Event(), asyncio.Event()

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        if list(texts) == ["a"]:
            self.gated_started.set()
            await self.release.wait()
        return self.embed(texts)


async def test_idle_requests_go_at_once_and_busy_ones_queue_behind_the_batch() -> None:
    backend = GatedEmbedder()
    batcher = MicroBatcher(backend)
    # idle: sent at once
    await asyncio.wait_for(batcher.embed_one("first"), 2)
    # busy: requests made while a batch runs are sent together once it finishes
    first = asyncio.create_task(batcher.embed_one("a"))
    await asyncio.wait_for(backend.gated_started.wait(), 2)
    later = [asyncio.create_task(batcher.embed_one(t)) for t in ("b", "c", "d")]
    await asyncio.sleep(0)  # one loop pass: each new task has queued its text (no timing involved)
    assert backend.calls == [["first"]]  # nothing sent while the batch runs
    backend.release.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 2)
    assert backend.calls[-2:] == [["a"], ["b", "c", "d"]]
