"""Activation memory on the model shapes people run, each a tiny random model built from its config:
grouped-query attention (Qwen2), sliding-window attention (Qwen2 and Mistral with the window on) and
local/global layouts (Gemma-2 alternating, Gemma-3 five to one). The memory block is longer than the
window, so a cache that kept only the window, or lost count of the tokens before it, would show.
Models whose layers keep more than keys and values (linear attention, chunked attention) are refused
for activation with their reason, never served inexactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from memos.chat.contract import MemoryReason
from memos.chat.planner import plan_local
from memos.db import Database
from memos.embeddings import HashEmbedder
from memos.governance.policy import Policy
from memos.keys.crypto import MasterKey
from memos.keys.keyring import Keyring
from memos.local.kvcache import KVBlock, KVCacheStore, cache_unsupported, prefill
from memos.local.lora import AdapterStore
from memos.local.model_registry import LocalModelRegistry
from memos.local.runtime import LocalRuntime, SamplingParams, block_ids, build_prompt
from memos.local.scheduler import MemScheduler
from memos.local.synthetic import ModelShape, build_model_dir
from memos.modes import MemoryMode
from memos.storage.vault import MemVault
from memos.storage.vectors import VectorIndex
from tests.support.local_models import BLOCK, CONVERSATION, FIVE_MEMORIES

WINDOW = 16
SERVABLE = ["qwen2", "qwen2-sliding", "mistral", "gemma2", "gemma3"]
REFUSED = ["qwen3-next", "llama4"]
GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> LocalModelRegistry:
    root = tmp_path_factory.mktemp("shapes")
    dirs = {
        name: build_model_dir(
            root / name,
            ModelShape(num_hidden_layers=6 if name == "gemma3" else 4),
            architecture=name,
            sliding_window=WINDOW,
        )
        for name in SERVABLE + REFUSED
    }
    return LocalModelRegistry(dirs, device="cpu", dtype="float32")


def last_logits(loaded: Any, ids: tuple[int, ...], kv: KVBlock | None = None) -> torch.Tensor:
    """The model's next-token logits after `ids`, from scratch or on top of `kv` (which holds a prefix)."""
    with torch.inference_mode():
        if kv is None:
            return loaded.model(input_ids=torch.tensor([ids])).logits[0, -1]
        cache = kv.new_cache(loaded.model.config)
        rest = torch.tensor([ids[len(kv.token_ids) :]])
        return loaded.model(input_ids=rest, past_key_values=cache, use_cache=True).logits[0, -1]


@pytest.mark.parametrize("name", SERVABLE)
def test_activation_is_exact_on_each_shape(shapes: LocalModelRegistry, name: str) -> None:
    loaded = shapes.load(name)
    assert cache_unsupported(loaded.model.config) is None
    config = loaded.model.config
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention everywhere
    layer_types = getattr(config, "layer_types", None) or ["sliding_attention"] * config.num_hidden_layers
    prompt = build_prompt(loaded.tokenizer, CONVERSATION, BLOCK)
    kv = prefill(loaded, prompt.block_ids)
    if name != "qwen2":
        assert "sliding_attention" in layer_types and len(prompt.block_ids) > 3 * WINDOW
    # Every layer keeps the whole block (a sliding layer's window is cut when a request's cache is made).
    assert all(k.shape[2] == len(prompt.block_ids) for k in kv.keys)

    # Stored and read back, the cache gives the same next-token logits as prefilling everything ...
    kv = KVBlock.from_safetensors(kv.to_safetensors())
    torch.testing.assert_close(last_logits(loaded, prompt.ids, kv), last_logits(loaded, prompt.ids))
    # ... and the same greedy answer as plaintext.
    runtime = LocalRuntime()
    try:
        plain = runtime.generate(loaded, prompt, GREEDY)
        activation = runtime.generate(loaded, prompt, GREEDY, kv=kv)
    finally:
        runtime.close()
    assert activation.cached_tokens == len(prompt.block_ids) and plain.cached_tokens == 0
    assert activation.token_ids == plain.token_ids and len(set(plain.token_ids)) > 2


@pytest.mark.parametrize("name", ["mistral", "gemma3"])
def test_extending_a_sliding_window_cache_equals_rebuilding_it(shapes: LocalModelRegistry, name: str) -> None:
    loaded = shapes.load(name)
    longer = BLOCK + "\n- [2026-01-04] plays the piano on weekends"
    old = prefill(loaded, block_ids(loaded.tokenizer, BLOCK))
    new_ids = block_ids(loaded.tokenizer, longer)
    extended = prefill(loaded, new_ids, reuse=old)
    rebuilt = prefill(loaded, new_ids)
    for a, b in zip((*extended.keys, *extended.values), (*rebuilt.keys, *rebuilt.values), strict=True):
        torch.testing.assert_close(a, b)
    prompt = build_prompt(loaded.tokenizer, CONVERSATION, longer)
    torch.testing.assert_close(last_logits(loaded, prompt.ids, extended), last_logits(loaded, prompt.ids))


@pytest.mark.parametrize("name", REFUSED)
async def test_a_model_the_cache_cannot_serve_exactly_is_refused(
    shapes: LocalModelRegistry, name: str, tmp_path: Path
) -> None:
    loaded = shapes.load(name)
    why = cache_unsupported(loaded.model.config)
    assert why is not None and ("linear_attention" in why or "chunked_attention" in why)
    with pytest.raises(ValueError, match="cannot serve this model exactly"):
        prefill(loaded, block_ids(loaded.tokenizer, BLOCK))

    db = Database(f"sqlite:///{tmp_path / 'memos.db'}")
    db.create_all()
    keyring = Keyring(db, MasterKey.generate())
    vault = MemVault(db, keyring, VectorIndex(str(tmp_path / "vectors")), HashEmbedder())
    scheduler = MemScheduler(
        vault=vault,
        registry=shapes,
        kv_store=KVCacheStore(tmp_path / "kv", keyring),
        adapter_store=AdapterStore(tmp_path / "adapters", keyring),
    )
    try:
        items = [vault.add("acme", "alice", text) for text in FIVE_MEMORIES]
        for requested in (MemoryMode.ACTIVATION, MemoryMode.AUTO):
            mode, memory, reason = await plan_local(scheduler, "acme", "alice", name, requested, Policy())
            assert mode is MemoryMode.PLAINTEXT and memory is None
            assert reason is (MemoryReason.UNSUPPORTED_MODEL if requested is MemoryMode.ACTIVATION else None)
        # Promoted memories change nothing: the background pass builds no cache for such a model.
        scheduler.promote("acme", "alice", [i.id for i in items])
        scheduler.note("acme", "alice", name)
        await scheduler.tick()
        assert not list((tmp_path / "kv").rglob("*.kv"))
        mode, _, reason = await plan_local(scheduler, "acme", "alice", name, MemoryMode.ACTIVATION, Policy())
        assert mode is MemoryMode.PLAINTEXT and reason is MemoryReason.UNSUPPORTED_MODEL
    finally:
        db.dispose()
