"""proxy/upstream/local.py: the OpenAI wire format of local answers, their errors, how the memory the
scheduler chose reaches the runtime; and that nothing heavy is imported without local models."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from memos.builder import LocalModels
from memos.local.kvcache import prefill
from memos.local.runtime import LocalMemory, LocalRuntime, block_ids
from memos.modes import MemoryMode
from proxy.upstream.base import ChatCall, UpstreamError, UpstreamTarget
from proxy.upstream.local import LocalUpstream
from tests.support.local_models import BLOCK, CONVERSATION


@pytest.fixture
def upstream(registry):  # type: ignore[no-untyped-def]
    up = LocalUpstream(LocalModels(registry, LocalRuntime()))
    yield up
    up.runtime.close()


def call(body: dict, local_memory: LocalMemory | None = None) -> ChatCall:  # type: ignore[type-arg]
    return ChatCall(UpstreamTarget(None), body, "req-1", local_memory=local_memory)


def body(**extra) -> dict:  # type: ignore[no-untyped-def, type-arg]
    return {"model": "local/tiny", "messages": CONVERSATION, "temperature": 0, "max_tokens": 12, **extra}


async def test_completion_shape(upstream) -> None:  # type: ignore[no-untyped-def]
    reply = await upstream.chat(call(body()))
    data = reply.data
    assert data["object"] == "chat.completion" and data["model"] == "local/tiny"
    assert data["id"] == "chatcmpl-req-1"
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    usage = data["usage"]
    assert usage["completion_tokens"] == 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + 12


async def test_stream_shape_matches_the_completion(upstream) -> None:  # type: ignore[no-untyped-def]
    whole = (await upstream.chat(call(body()))).data
    events = await upstream.chat_stream(call(body(stream=True, stream_options={"include_usage": True})))
    chunks = [orjson.loads(e) async for e in events]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"model": "local/nope"}, 404),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400),
        ({"n": 2}, 400),
        ({"n": "x"}, 400),
        ({"n": 1.5}, 400),
        ({"messages": []}, 400),
        ({"max_tokens": "many"}, 400),
    ],
)
async def test_errors_keep_their_status(upstream, extra, status) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UpstreamError) as info:
        await upstream.chat(call(body(**extra)))
    assert info.value.status == status
    with pytest.raises(UpstreamError):  # before the first byte of a stream, too
        await upstream.chat_stream(call(body(stream=True, **extra)))


@pytest.mark.parametrize("value", ["x", 1.5, True, [1]])
async def test_a_malformed_n_is_400_naming_the_field(upstream, value) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UpstreamError) as info:
        await upstream.chat(call(body(n=value)))
    assert info.value.status == 400 and info.value.code == "invalid_type"
    assert "'n'" in info.value.message


async def test_memory_modes_reach_the_runtime(upstream, loaded) -> None:  # type: ignore[no-untyped-def]
    kv = prefill(loaded, block_ids(loaded.tokenizer, BLOCK))
    activation = await upstream.chat(
        call(body(), local_memory=LocalMemory(MemoryMode.ACTIVATION, BLOCK, kv))
    )
    assert activation.data["usage"]["prompt_tokens_details"]["cached_tokens"] == len(kv.token_ids)
    # Plaintext hands the block over apart from the conversation: same ids, same answer, no cache.
    plaintext = await upstream.chat(call(body(), local_memory=LocalMemory(MemoryMode.PLAINTEXT, BLOCK)))
    assert plaintext.data["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert plaintext.data["usage"]["prompt_tokens"] == activation.data["usage"]["prompt_tokens"]
    assert plaintext.data["choices"] == activation.data["choices"]
    bare = await upstream.chat(call(body()))
    assert bare.data["choices"] != activation.data["choices"]


async def test_models_lists_local_names(upstream) -> None:  # type: ignore[no-untyped-def]
    assert [m["id"] for m in await upstream.models(UpstreamTarget(None))] == ["local/tiny"]


def test_no_heavy_imports_until_a_local_model_is_used(tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = f"""
import sys
from pathlib import Path
import proxy.services, proxy.upstream.local, memos.builder, memos.local.scheduler, memos.local.kvcache
import memos.local.lora, memos.local.runtime, memos.local.model_registry
from memos.keys.crypto import MasterKey
from memos.db import Database
from memos.keys.keyring import Keyring
from proxy.services import memory_config
from proxy.settings import Settings
from proxy.upstream.local import LocalUpstream
from memos.builder import build_local_models, build_scheduler
db = Database("sqlite:///{tmp_path}/k.db"); db.create_all()
settings = Settings(data_dir=Path("{tmp_path}"), local_models={{"tiny": "{tmp_path}/missing"}})
config = memory_config(settings)
models = build_local_models(config)
assert models is not None and LocalUpstream(models).registry.names() == ["tiny"]
scheduler = build_scheduler(config, Keyring(db, MasterKey.generate()), None, None, models)
assert scheduler.registry.names() == ["tiny"]
heavy = [m for m in ("torch", "transformers", "peft", "safetensors") if m in sys.modules]
assert not heavy, heavy
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
