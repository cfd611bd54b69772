"""The async face used by the service: concurrent requests are embedded in one batch on a thread of its
own (what arrives while a batch runs goes as the next one); a small LRU keeps recent query vectors."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from memos.embeddings.base import Embedder
from memos.observe import MemoryObserver, NoObserver


class MicroBatcher:
    """Batches concurrent embedding requests into one call, off the event loop.

    Batching adds no latency when idle: a request is sent at once (with whatever other requests arrived
    in the same event-loop tick). While a batch is being embedded, new requests wait for it to finish
    and then go together as the next batch (at most `max_batch`; a full batch goes at once), so the
    cost per query falls as load grows. One batch runs at a time, on `executor` (a pool of its own,
    one thread: nothing else queues there, so a query's embedding never waits behind other blocking
    work, and no task of that pool waits on another). `sync` is the underlying blocking embedder, for
    code already running in a worker thread.
    """

    def __init__(
        self,
        embedder: Embedder,
        max_batch: int = 64,
        cache_size: int = 2048,
        *,
        executor: concurrent.futures.Executor | None = None,
        observer: MemoryObserver | None = None,
    ) -> None:
        self.sync = embedder
        self._executor = executor
        self._observer: MemoryObserver = observer or NoObserver()
        self.name = embedder.name
        self._max_batch = max_batch
        self._pending: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._inflight = 0
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self.batches = 0  # how many backend calls were made (observability and tests)

    @property
    def dim(self) -> int:
        return self.sync.dim

    def cached(self, text: str) -> np.ndarray | None:
        """The vector of a recently embedded text, or None (never computes; call on the event loop)."""
        return self._cache.get(text)

    async def embed_one(self, text: str) -> np.ndarray:
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((text, future))
        if len(self._pending) >= self._max_batch:
            self._flush_now()
        elif self._flusher is None and not self._inflight:
            # Idle: go at the end of this tick. Busy: the running batch's end sends what waits.
            self._flusher = loop.create_task(self._flush_at_end_of_tick())
        vector = await future
        self._remember(text, vector)
        return vector

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if len(texts) >= self._max_batch:
            self.batches += 1
            return await self._run(list(texts))
        vectors = await asyncio.gather(*(self.embed_one(t) for t in texts))
        return np.stack(vectors)

    def _remember(self, text: str, vector: np.ndarray) -> None:
        if self._cache_size <= 0 or len(text) > 2000:
            return
        self._cache[text] = vector
        self._cache.move_to_end(text)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _flush_at_end_of_tick(self) -> None:
        try:
            await asyncio.sleep(0)  # let the rest of this tick's requests join
            if self._inflight:
                return  # a batch started meanwhile (a full one): its end sends what waits
        finally:
            self._flusher = None
        self._flush_now()

    def _flush_now(self) -> None:
        batch, self._pending = self._pending, []
        if self._flusher is not None and not self._pending:
            self._flusher.cancel()
            self._flusher = None
        if batch:
            self.batches += 1
            self._inflight += 1
            asyncio.get_running_loop().create_task(self._complete(batch))

    async def _complete(self, batch: list[tuple[str, asyncio.Future[np.ndarray]]]) -> None:
        texts = list(dict.fromkeys(text for text, _ in batch))
        try:
            vectors = await self._run(texts)
        except BaseException as exc:
            self._done_one()
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._done_one()
        by_text = {text: vectors[i] for i, text in enumerate(texts)}
        for text, future in batch:
            if not future.done():
                future.set_result(by_text[text])

    def _done_one(self) -> None:
        self._inflight -= 1
        if self._pending and self._inflight == 0:
            self._flush_now()  # what queued up while the batch ran goes now

    async def _run(self, texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        aembed = getattr(self.sync, "aembed", None)
        if aembed is not None:
            vectors = await aembed(texts)
        else:
            vectors = await asyncio.get_running_loop().run_in_executor(self._executor, self.sync.embed, texts)
        self._observer.query_embedded(len(texts), time.perf_counter() - started)
        return vectors
