"""An OpenAI-compatible `/v1/embeddings` model through `EmbeddingsClient`, a small protocol the
composition root satisfies with the upstream router."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from memos.embeddings.base import normalise

log = logging.getLogger(__name__)


class EmbeddingsClient(Protocol):
    """What the composition root provides over the upstream router: OpenAI `/v1/embeddings`."""

    async def embeddings(self, model: str, inputs: list[str]) -> list[list[float]]: ...


class UpstreamEmbedder:
    """An upstream embeddings model, served on one event loop.

    The client's connection pool belongs to the loop that serves the app, so every call runs there:
    `aembed` directly when awaited on it, `embed` (blocking, for worker threads such as the vault's and
    the operator's) by submitting to it. The server binds that loop at start-up (`start`, a background
    job awaited on the loop), never from whichever loop happens to call first: a worker thread's
    temporary `asyncio.run` loop would be closed by the next call. Without a bound loop (the CLI) only
    `aembed` works, on the caller's own loop.
    """

    def __init__(
        self,
        client: EmbeddingsClient,
        model: str,
        loop: asyncio.AbstractEventLoop | None = None,
        dim: int | None = None,
    ) -> None:
        self.name = f"upstream:{model}"
        self._client = client
        self._model = model
        self._loop = loop
        self._dim = dim
        self._probe: asyncio.Task[None] | None = None

    @property
    def dim(self) -> int:
        # Never probes here: on the event loop a blocking call would stall (or deadlock) it.
        if self._dim is None:
            raise RuntimeError(
                f"the dimension of {self.name} is not known yet: it is probed at start-up and learnt from "
                "the first embedding"
            )
        return self._dim

    @property
    def ready(self) -> bool:
        """Started on the serving loop (the embeddings model's own availability is the upstream's, as
        for chat: a failing call fails or falls back per request)."""
        return self._loop is not None

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    async def start(self) -> None:
        """On the serving loop: bind it, and probe the dimension without holding up start-up.

        The probe is a task, so an embeddings model that is down or slow at start-up delays nothing
        (chat passthrough still serves); the dimension is then learnt from the first embedding.
        """
        self.bind_loop(asyncio.get_running_loop())
        if self._dim is None and self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self._probe_dim())

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        # A stopped loop never runs what is submitted to it: later blocking callers get a clear error.
        self.bind_loop(None)

    async def _probe_dim(self) -> None:
        try:
            await self._call(["dimension probe"])
        except Exception as exc:
            log.warning(
                "probing the dimension of %s failed (%s); learnt on first use", self.name, type(exc).__name__
            )

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        loop = self._loop
        if loop is None or loop is asyncio.get_running_loop():
            return await self._call(texts)
        # Awaited on another loop (a thread's own asyncio.run): the pool belongs to the bound loop.
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._call(texts), loop))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        loop = self._loop
        if loop is None:
            raise RuntimeError(
                f"{self.name}: no event loop is bound (the server binds its own at start-up); "
                "outside the server use aembed"
            )
        if _running_loop() is loop:
            raise RuntimeError("UpstreamEmbedder.embed is blocking; use aembed on the event loop")
        return asyncio.run_coroutine_threadsafe(self._call(texts), loop).result()

    async def _call(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim or 0), np.float32)
        vectors = normalise(np.asarray(await self._client.embeddings(self._model, list(texts)), np.float32))
        self._dim = int(vectors.shape[1])
        return vectors


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
