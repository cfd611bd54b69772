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
