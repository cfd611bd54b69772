"""The local runtime: token-aligned memory block, plaintext == activation (greedy, fp32), sampling
options, streaming off the event loop."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from memos.local.kvcache import prefill
from memos.local.runtime import (
    GenerationResult,
    SamplingParams,
    block_ids,
    build_prompt,
    render_block_prefix,
)
from tests.support.local_models import BLOCK, CONVERSATION

GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


def _digest(block) -> str:  # type: ignore[no-untyped-def]
    h = hashlib.sha256()
    for t in (*block.keys, *block.values):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    "conversation",
    [
        CONVERSATION,
        [{"role": "system", "content": "Be brief."}, *CONVERSATION],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}, *CONVERSATION],
        [{"role": "user", "content": [{"type": "text", "text": "multi"}, {"type": "text", "text": "part"}]}],
    ],
)
def test_block_is_a_token_aligned_prefix(loaded, conversation) -> None:  # type: ignore[no-untyped-def]
    tok = loaded.tokenizer
    prompt = build_prompt(tok, conversation, BLOCK)
    # The block's ids do not depend on what follows it ...
    assert prompt.block_ids == block_ids(tok, BLOCK)
    assert tok.decode(prompt.block_ids) == render_block_prefix(tok, BLOCK)
    # ... the ids are the whole rendered prompt ...
    convo = [
        {"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else "multipart"}
        for m in conversation
    ]
    full = tok.apply_chat_template(
        [{"role": "system", "content": BLOCK}, *convo], tokenize=False, add_generation_prompt=True
    )
    assert tok.decode(prompt.ids) == full
    # ... and with ChatML the block ends at `<|im_end|>\n`, so nothing merges across the boundary:
    # tokenizing the whole text at once gives the same ids (a body with the block injected as text
    # would be tokenized identically).
    assert prompt.ids == tuple(tok(full, add_special_tokens=False)["input_ids"])


def test_prompt_without_block(loaded) -> None:  # type: ignore[no-untyped-def]
    prompt = build_prompt(loaded.tokenizer, CONVERSATION, None)
    assert prompt.block_ids == ()
    assert loaded.tokenizer.decode(prompt.rest_ids).endswith("<|im_start|>assistant\n")


def test_plaintext_and_activation_are_token_identical(loaded, runtime) -> None:  # type: ignore[no-untyped-def]
    prompt = build_prompt(loaded.tokenizer, CONVERSATION, BLOCK)
    kv = prefill(loaded, prompt.block_ids)
    before = _digest(kv)
    plaintext = runtime.generate(loaded, prompt, GREEDY)
    activation = runtime.generate(loaded, prompt, GREEDY, kv=kv)
    again = runtime.generate(loaded, prompt, GREEDY, kv=kv)
    assert len(plaintext.token_ids) == 24 and len(set(plaintext.token_ids)) > 5  # varied, not degenerate
    assert activation.token_ids == plaintext.token_ids
    assert again.token_ids == plaintext.token_ids
    assert _digest(kv) == before  # the stored cache was not mutated by generation
    assert activation.cached_tokens == len(prompt.block_ids) and plaintext.cached_tokens == 0
    # The cache really carries the memory: without the block the answer differs.
    bare = runtime.generate(loaded, build_prompt(loaded.tokenizer, CONVERSATION, None), GREEDY)
    assert bare.token_ids != plaintext.token_ids


def test_cache_must_match_the_block(loaded, runtime) -> None:  # type: ignore[no-untyped-def]
    prompt = build_prompt(loaded.tokenizer, CONVERSATION, BLOCK)
    other = prefill(loaded, block_ids(loaded.tokenizer, BLOCK + " and Porto"))
    with pytest.raises(ValueError, match="memory block"):
        runtime.generate(loaded, prompt, GREEDY, kv=other)


def test_max_tokens_and_stop(loaded, runtime) -> None:  # type: ignore[no-untyped-def]
    prompt = build_prompt(loaded.tokenizer, CONVERSATION, None)
    full = runtime.generate(loaded, prompt, SamplingParams(max_tokens=16, temperature=0.0))
    assert full.finish_reason == "length" and full.completion_tokens == 16
    text = full.text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop and stop in text
    cut = runtime.generate(loaded, prompt, SamplingParams(max_tokens=16, temperature=0.0, stop=(stop,)))
    assert cut.finish_reason == "stop"
    assert cut.text == text[: text.index(stop)]


def test_sampling_is_seeded(loaded, runtime) -> None:  # type: ignore[no-untyped-def]
    prompt = build_prompt(loaded.tokenizer, CONVERSATION, None)
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    a = runtime.generate(loaded, prompt, params)
    b = runtime.generate(loaded, prompt, params)
    c = runtime.generate(loaded, prompt, SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=8))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    # top_p near 0 keeps only the most likely token: the same as greedy.
    narrow = runtime.generate(loaded, prompt, SamplingParams(max_tokens=12, temperature=1.0, top_p=1e-6))
    greedy = runtime.generate(loaded, prompt, SamplingParams(max_tokens=12, temperature=0.0))
    assert narrow.token_ids == greedy.token_ids


def test_params_from_openai_body() -> None:
    p = SamplingParams.from_body({"max_tokens": 5, "temperature": 0, "top_p": 0.5, "stop": "\n", "seed": 3})
    assert p == SamplingParams(max_tokens=5, temperature=0.0, top_p=0.5, stop=("\n",), seed=3)
    assert SamplingParams.from_body({"max_completion_tokens": 9, "stop": ["a", ""]}).stop == ("a",)


async def test_stream_does_not_block_the_event_loop(loaded, runtime) -> None:  # type: ignore[no-untyped-def]
    prompt = build_prompt(loaded.tokenizer, CONVERSATION, BLOCK)
    ticks = 0
    stop = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    beat = asyncio.create_task(heartbeat())
    pieces, result = [], None
    async for item in runtime.stream(loaded, prompt, SamplingParams(max_tokens=64, temperature=0.0)):
        if isinstance(item, GenerationResult):
            result = item
        else:
            pieces.append(item)
    stop.set()
    await beat
    assert result is not None and "".join(pieces) == result.text
    assert ticks > 5
    once = await runtime.complete(loaded, prompt, SamplingParams(max_tokens=64, temperature=0.0))
    assert once.token_ids == result.token_ids


async def test_closing_a_stream_stops_generation(loaded, runtime) -> None:  # type: ignore[no-untyped-def]
    prompt = build_prompt(loaded.tokenizer, CONVERSATION, None)
    events = runtime.stream(loaded, prompt, SamplingParams(max_tokens=5000, temperature=0.0))
    async for _ in events:
        break
    await events.aclose()
    # The worker notices the cancel flag at its next token and releases the model lock.
    for _ in range(500):
        if not loaded.lock.locked():
            break
        await asyncio.sleep(0.01)
    assert not loaded.lock.locked()
