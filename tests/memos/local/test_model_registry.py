"""The local model registry: names, lazy loading off the event loop, fingerprints that tell models apart."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace

import pytest

from memos.local.kvcache import prefill
from memos.local.model_registry import LocalModelRegistry, UnknownLocalModel, model_fingerprint
from memos.local.runtime import SamplingParams, block_ids, build_prompt
from tests.support.local_models import BLOCK, CONVERSATION


def test_names_and_resolution(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    registry = LocalModelRegistry({"tiny": tiny_model_dir, "other": tiny_model_dir})
    assert registry.names() == ["other", "tiny"]
    assert registry.resolve("local/tiny") == "tiny"
    assert registry.resolve("tiny") is None and registry.resolve("local/missing") is None
    assert registry.name_of("local/tiny") == registry.name_of("tiny") == "tiny"
    with pytest.raises(UnknownLocalModel):
        registry.name_of("local/missing")
    assert not registry.is_loaded("tiny")


def test_fingerprint_changes_with_the_weights(tiny_model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert model_fingerprint(copy) == model_fingerprint(tiny_model_dir)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor
    weights.write_bytes(bytes(data))
    assert model_fingerprint(copy) != model_fingerprint(tiny_model_dir)


async def test_loads_once_off_the_event_loop(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    registry = LocalModelRegistry({"tiny": tiny_model_dir}, device="cpu")
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while not registry.is_loaded("tiny"):
            ticks += 1
            await asyncio.sleep(0.001)

    beat = asyncio.create_task(heartbeat())
    first, second = await asyncio.gather(registry.get("tiny"), registry.get("tiny"))
    await beat
    assert first is second and ticks > 1
    assert first.fingerprint == registry.fingerprint("tiny") == model_fingerprint(tiny_model_dir)


def test_a_cache_of_another_model_is_refused(loaded, runtime) -> None:  # type: ignore[no-untyped-def]
    prompt = build_prompt(loaded.tokenizer, CONVERSATION, BLOCK)
    kv = prefill(loaded, block_ids(loaded.tokenizer, BLOCK))
    foreign = replace(kv, model_fingerprint="another-model")
    with pytest.raises(ValueError, match="another model"):
        runtime.generate(loaded, prompt, SamplingParams(max_tokens=2, temperature=0), kv=foreign)
