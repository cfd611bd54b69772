"""Parametric memory: LoRA training lowers the loss on the user's memories; adapters are ciphertext on
disk; serving switches adapters on the shared base model without reloading it."""

from __future__ import annotations

import pytest

from memos.keys.crypto import DecryptionError
from memos.local.lora import (
    AdapterStore,
    LoraTraining,
    memory_loss,
    select_adapter,
    train_adapter,
    unload_adapters,
)
from memos.local.runtime import SamplingParams, build_prompt
from tests.support.local_models import CONVERSATION, FIVE_MEMORIES

FAST = LoraTraining(steps=30, learning_rate=5e-3)
GREEDY = SamplingParams(max_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def trained(registry):  # type: ignore[no-untyped-def]
    private = registry.load_private_copy("tiny")
    return train_adapter(private.model, private.tokenizer, FIVE_MEMORIES, FAST)


@pytest.fixture(scope="module")
def trained_other(registry):  # type: ignore[no-untyped-def]
    private = registry.load_private_copy("tiny")
    other = LoraTraining(steps=10, learning_rate=5e-3)  # only needs to differ from alice's
    return train_adapter(private.model, private.tokenizer, ["I live in Porto and I love coffee."], other)


def test_training_lowers_the_loss_on_the_memories(trained) -> None:  # type: ignore[no-untyped-def]
    assert trained.adapter_loss < 0.5 * trained.base_loss
    assert all("lora_" in k for k in trained.state_dict)


def test_adapter_is_ciphertext_on_disk(loaded, keyring, tmp_path, trained) -> None:  # type: ignore[no-untyped-def]
    store = AdapterStore(tmp_path / "adapters", keyring)
    meta = store.save("acme", "alice", loaded.fingerprint, trained, ["mem_0123456789abcdef"])
    files = list((tmp_path / "adapters").rglob("*"))
    blobs = [f.read_bytes() for f in files if f.is_file()]
    assert blobs and all(b[:1] == b"\x01" for b in blobs)
    some_weights = next(iter(trained.state_dict.values())).numpy().tobytes()[:64]
    for blob in blobs:
        for needle in (
            b"lora_A",
            b"__metadata__",
            b"memos-lora",
            b"q_proj",
            some_weights,
            b"mem_0123456789abcdef",
        ):
            assert needle not in blob
    weights, config = AdapterStore(tmp_path / "adapters", keyring).load_weights(
        "acme", "alice", loaded.fingerprint, meta.adapter_id
    )
    assert set(weights) == set(trained.state_dict) and config["r"] == FAST.rank
    # Bound to its user: alice's file planted as bob's does not decrypt.
    alice_file = next((tmp_path / "adapters").rglob(f"{meta.adapter_id}.lora"))
    bob_store = AdapterStore(tmp_path / "adapters", keyring)
    bob_file = bob_store._dir("acme", "bob", loaded.fingerprint) / alice_file.name
    bob_file.parent.mkdir(parents=True)
    bob_file.write_bytes(alice_file.read_bytes())
    with pytest.raises(DecryptionError):
        bob_store.load_weights("acme", "bob", loaded.fingerprint, meta.adapter_id)


def test_switching_adapters_keeps_the_base_model(
    loaded, runtime, keyring, tmp_path, trained, trained_other
) -> None:  # type: ignore[no-untyped-def]
    store = AdapterStore(tmp_path / "adapters", keyring)
    store.save("acme", "alice", loaded.fingerprint, trained, ["m1"])
    store.save("acme", "bob", loaded.fingerprint, trained_other, ["m2"])
    alice = store.handle("acme", "alice", loaded.fingerprint)
    bob = store.handle("acme", "bob", loaded.fingerprint)
    model_before = loaded.model

    def base_storage() -> set[int]:
        return {p.data_ptr() for n, p in loaded.model.named_parameters() if "lora_" not in n}

    base_before = base_storage()
    prompt = build_prompt(loaded.tokenizer, CONVERSATION, None)
    base_out = runtime.generate(loaded, prompt, GREEDY).token_ids
    a1 = runtime.generate(loaded, prompt, GREEDY, adapter=alice).token_ids
    b1 = runtime.generate(loaded, prompt, GREEDY, adapter=bob).token_ids
    a2 = runtime.generate(loaded, prompt, GREEDY, adapter=alice).token_ids
    base_again = runtime.generate(loaded, prompt, GREEDY).token_ids
    assert loaded.model is model_before  # never reloaded
    assert base_storage() == base_before  # the same base weights in memory, not a copy
    assert a1 == a2 and base_out == base_again
    assert len({tuple(base_out), tuple(a1), tuple(b1)}) == 3
    # The served adapter is the trained one: same loss as right after training.
    with loaded.lock:
        select_adapter(loaded, alice)
        served = memory_loss(loaded.model, loaded.tokenizer, FIVE_MEMORIES)
        select_adapter(loaded, None)
        base = memory_loss(loaded.model, loaded.tokenizer, FIVE_MEMORIES)
    assert served == pytest.approx(trained.adapter_loss, rel=1e-4)
    assert base == pytest.approx(trained.base_loss, rel=1e-4)
    unload_adapters(loaded, [alice.adapter_id, bob.adapter_id])
    assert alice.adapter_id not in loaded.loaded_adapters
    assert runtime.generate(loaded, prompt, GREEDY).token_ids == base_out


def test_erase_user_removes_adapters(loaded, keyring, tmp_path, trained) -> None:  # type: ignore[no-untyped-def]
    store = AdapterStore(tmp_path / "adapters", keyring)
    meta = store.save("acme", "alice", loaded.fingerprint, trained, ["m1"])
    assert store.adapter_ids("acme", "alice") == [meta.adapter_id]
    assert store.erase_user("acme", "alice") == 1
    assert store.latest("acme", "alice", loaded.fingerprint) is None
    assert not list((tmp_path / "adapters").rglob("*.lora"))


def test_training_on_the_served_model_keeps_serving_it_unchanged(loaded, runtime) -> None:  # type: ignore[no-untyped-def]
    import threading

    import torch

    from memos.local.lora import train_on_served

    before = base_weights(loaded)
    prompt = build_prompt(loaded.tokenizer, CONVERSATION)
    baseline = runtime.generate(loaded, prompt, GREEDY).token_ids
    result: list[object] = []
    trainer = threading.Thread(
        target=lambda: result.append(train_on_served(loaded, FIVE_MEMORIES, FAST)), name="trainer"
    )
    trainer.start()
    during = []
    while trainer.is_alive():  # requests between the training's steps answer from the base model
        training = loaded.training_adapter is not None
        tokens = runtime.generate(loaded, prompt, GREEDY).token_ids
        during.append((training and loaded.training_adapter is not None, tokens))
    trainer.join()
    assert any(overlapped for overlapped, _ in during)  # some were answered mid-training
    assert all(tokens == baseline for _, tokens in during)
    trained = result[0]
    assert trained.adapter_loss < 0.5 * trained.base_loss  # it learned, on the served weights
    # Nothing of the training is left: no training adapter, the same weights, the same answers.
    assert loaded.training_adapter is None
    after = base_weights(loaded)
    assert after.keys() == before.keys() and all(torch.equal(v, before[k]) for k, v in after.items())
    assert runtime.generate(loaded, prompt, GREEDY).token_ids == baseline
    # What it learned serves like an adapter trained on a private copy.
    assert set(trained.state_dict) == set(train_adapter_keys(loaded))


def base_weights(loaded) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """The base model's weights by their plain names (peft wraps a layer once an adapter was added)."""
    state = loaded.model.state_dict()
    return {k.replace(".base_layer", ""): v.clone() for k, v in state.items() if "lora_" not in k}


def train_adapter_keys(loaded) -> set[str]:  # type: ignore[no-untyped-def]
    from memos.local.lora import train_adapter

    return set(train_adapter(*_private(loaded), FIVE_MEMORIES, LoraTraining(steps=1)).state_dict)


def _private(loaded):  # type: ignore[no-untyped-def]
    from memos.local.model_registry import load_model

    copy = load_model("tiny", loaded.path, device="cpu", dtype="float32")
    return copy.model, copy.tokenizer


def test_decrypted_adapters_stay_under_their_byte_limit(loaded, keyring, tmp_path, trained) -> None:  # type: ignore[no-untyped-def]
    size = sum(t.numel() * t.element_size() for t in trained.state_dict.values())
    store = AdapterStore(tmp_path / "adapters", keyring, memory_bytes=2 * size)
    metas = [store.save("acme", user, loaded.fingerprint, trained, []) for user in ("a", "b", "c")]
    for user, meta in zip(("a", "b", "c"), metas, strict=True):
        store.load_weights("acme", user, loaded.fingerprint, meta.adapter_id)
    assert store.memory_bytes == 2 * size  # the least recently used was dropped; it reloads from disk
    weights, _ = store.load_weights("acme", "a", loaded.fingerprint, metas[0].adapter_id)
    assert weights.keys() == trained.state_dict.keys() and store.memory_bytes == 2 * size
