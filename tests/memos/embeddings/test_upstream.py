"""The upstream embedder: served on the loop it is bound to, from that loop, a worker thread or another
loop; the dimension probed at start-up without holding it up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from memos.embeddings import MicroBatcher, UpstreamEmbedder, build_embedder
from proxy.upstream.completer import default_target
from proxy.upstream.embeddings import UpstreamEmbeddings
from proxy.upstream.http import HttpUpstream
from proxy.upstream.router import UpstreamRouter
from tests.support.upstream import FakeUpstream


class FakeClient:
    def __init__(self) -> None:
        self.calls = 0

    async def embeddings(self, model: str, inputs: list[str]) -> list[list[float]]:
        self.calls += 1
        return [[float(len(t)), 1.0, 0.0] for t in inputs]


async def test_upstream_embedder_async_and_from_a_thread() -> None:
    client = FakeClient()
    embedder = build_embedder("upstream:text-embedding-3-small", client)
    assert isinstance(embedder, UpstreamEmbedder)
    await embedder.start()
    try:
        batcher = MicroBatcher(embedder)
        v = await batcher.embed_one("abc")
        assert v.shape == (3,) and abs(float(np.linalg.norm(v)) - 1) < 1e-5
        # a worker thread (the vault) can call the blocking face while the loop runs
        out = await asyncio.to_thread(embedder.embed, ["hello"])
        assert out.shape == (1, 3) and embedder.dim == 3
    finally:
        await embedder.stop()


def test_upstream_embedder_without_a_bound_loop_refuses_the_blocking_call() -> None:
    # Not a private asyncio.run loop: the client's pool would be used from a loop that is then closed.
    client = FakeClient()
    embedder = UpstreamEmbedder(client, "m")
    with pytest.raises(RuntimeError, match="no event loop is bound"):
        embedder.embed(["hello"])
    assert client.calls == 0


async def test_upstream_embedder_dim_never_blocks_the_loop() -> None:
    client = FakeClient()
    embedder = UpstreamEmbedder(client, "m")
    with pytest.raises(RuntimeError, match="not known yet"):
        embedder.dim  # noqa: B018 - the property is what is tested
    assert client.calls == 0
    assert UpstreamEmbedder(client, "m", dim=7).dim == 7  # configured: nothing to probe


@pytest.fixture
async def router(upstream: FakeUpstream) -> AsyncIterator[UpstreamRouter]:
    router = UpstreamRouter(HttpUpstream(upstream.base_url))
    yield router
    await router.aclose()


def embedding_inputs(upstream: FakeUpstream) -> list[list[str]]:
    return [r.json["input"] for r in upstream.requests if r.path.endswith("/embeddings")]


async def until_known(embedder: UpstreamEmbedder) -> int:
    for _ in range(1000):
        try:
            return embedder.dim
        except RuntimeError:
            await asyncio.sleep(0.01)
    raise AssertionError("the start-up probe never learnt the dimension")


async def test_real_upstream_client_from_a_thread_first_then_the_loop_then_a_thread(
    upstream: FakeUpstream, router: UpstreamRouter
) -> None:
    """The operator/vault may embed from a worker thread before anything embeds on the loop."""
    embedder = build_embedder("upstream:embed-model", UpstreamEmbeddings(router, default_target(None)))
    assert isinstance(embedder, UpstreamEmbedder)
    await embedder.start()
    try:
        assert await until_known(embedder) == upstream.embedding_dim  # probed asynchronously at start
        assert embedding_inputs(upstream) == [["dimension probe"]]
        first = await asyncio.to_thread(embedder.embed, ["from a thread"])
        second = await embedder.aembed(["from the loop"])
        third = await asyncio.to_thread(embedder.embed, ["from a thread again", "and one more"])
        # awaited on a thread's own loop: still served on the bound loop, whose pool it is
        fourth = await asyncio.to_thread(asyncio.run, embedder.aembed(["on another loop"]))
    finally:
        await embedder.stop()
    dim = upstream.embedding_dim
    for texts, out in (
        (["from a thread"], first),
        (["from the loop"], second),
        (["from a thread again", "and one more"], third),
        (["on another loop"], fourth),
    ):
        expected = np.asarray([FakeUpstream.vector(t, dim) for t in texts], np.float32)
        assert out.shape == (len(texts), dim) and np.allclose(out, expected, atol=1e-5)
    assert embedding_inputs(upstream)[1:] == [
        ["from a thread"],
        ["from the loop"],
        ["from a thread again", "and one more"],
        ["on another loop"],
    ]
    assert all(r.json["model"] == "embed-model" for r in upstream.requests if r.path.endswith("/embeddings"))
    # stopped: a late blocking caller gets a clear error instead of waiting on a loop that is gone
    with pytest.raises(RuntimeError, match="no event loop is bound"):
        await asyncio.to_thread(embedder.embed, ["too late"])


async def test_a_failed_start_up_probe_leaves_the_dimension_to_the_first_embedding(
    upstream: FakeUpstream, router: UpstreamRouter
) -> None:
    upstream.fail(status=500, path="/v1/embeddings")
    embedder = UpstreamEmbedder(UpstreamEmbeddings(router, default_target(None)), "embed-model")
    await embedder.start()  # start-up never waits for the embeddings model
    try:
        await asyncio.to_thread(upstream.wait_for, lambda: bool(embedding_inputs(upstream)))
        out = await asyncio.to_thread(embedder.embed, ["hello"])
        assert out.shape == (1, upstream.embedding_dim) and embedder.dim == upstream.embedding_dim
    finally:
        await embedder.stop()
