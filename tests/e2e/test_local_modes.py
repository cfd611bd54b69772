"""Local models through the proxy, end to end (openai SDK -> proxy -> local runtime), on a tiny random
Qwen2-shaped model with a tokenizer trained in the test (nothing downloaded):

- with five memories, plaintext and activation modes answer through /v1/chat/completions, the
  x-memos-memory-mode header names the mode, and with the same memory block their greedy outputs are
  token-identical (fp32); two identical activation requests answer identically;
- with five fresh memories (none promoted), the first activation request is served activation, its
  prefill of the block is the cache that is stored, its greedy tokens equal plaintext's, and the next
  one reuses the stored cache (its file unchanged); `auto` still serves plaintext until promotion;
- a mode asked for that cannot serve says why in x-memos-memory-reason (no_memories, no_adapter,
  remote_model);
- after `memos-proxy memory train` (its CLI entry point), parametric mode answers and says so, and
  the adapter lowers the model's loss on the user's memories compared with the base model;
- KV caches and adapters are ciphertext on disk, and erasing the user deletes them;
- /v1/models lists the local model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from memos.local.kvcache import KVKey
from proxy.cli import main as cli_main
from tests.support.local_models import FIVE_MEMORIES
from tests.support.memory import add_memories as add_verbatim
from tests.support.memory import until
from tests.support.proxy import RunningProxy, proxy_env, proxy_settings, run_cli, run_proxy
from tests.support.upstream import FakeUpstream

MODEL = "local/tiny"
QUESTION = [{"role": "user", "content": "Where do I live and what do I drink?"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from memos.local.synthetic import build_model_dir

    torch.set_num_threads(2)
    return build_model_dir(tmp_path_factory.mktemp("local-model") / "tiny")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Iterator[tuple[FakeUpstream, RunningProxy]]:
    data_dir = tmp_path_factory.mktemp("local-e2e")
    with FakeUpstream() as upstream:
        settings = proxy_settings(
            data_dir,
            upstream.base_url,
            key_cache_ttl_s=0,
            embedding_model="hash",
            local_models={"tiny": model_dir},
            local_device="cpu",
            scheduler_interval_s=3600,  # the tests run the scheduler's steps themselves
        )
        with run_proxy(settings) as proxy:
            yield upstream, proxy


@pytest.fixture
def client(running: RunningProxy, key: str) -> openai.OpenAI:
    # `running` and `key` are those of tests/e2e/conftest.py; a local model answers slower.
    return openai.OpenAI(base_url=running.base_url, api_key=key, max_retries=0, timeout=120)


@pytest.fixture
def generations(running: RunningProxy, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every GenerationResult of the local runtime (token ids included), in order."""
    runtime = running.services.upstreams.local.runtime
    seen: list[Any] = []
    original = runtime.generate

    def recording(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        seen.append(result)
        return result

    monkeypatch.setattr(runtime, "generate", recording)
    return seen


def add_memories(running: RunningProxy, key: str, user: str, texts: list[str]) -> list[str]:
    # A day apart: the block's order (oldest first, then by random id) and so the prompt, and what the
    # random model generates from it, are the same in every run.
    memories = [{"text": t, "observed_at": f"2026-01-{i + 1:02d}T12:00:00Z"} for i, t in enumerate(texts)]
    return add_verbatim(running, key, user, memories)


def ask(
    client: openai.OpenAI, user: str, mode: str, *, stream: bool = False, max_tokens: int = 24
) -> tuple[str, httpx.Headers]:
    headers = {"X-Memos-User": user, "X-Memos-Memory-Mode": mode, "X-Memos-Memory": "read"}
    if not stream:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=QUESTION, temperature=0, max_tokens=max_tokens, extra_headers=headers
        )
        return raw.parse().choices[0].message.content or "", raw.headers
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=headers,
    ) as response:
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
        return text, response.headers


def local_lookups(running: RunningProxy) -> dict[str, float]:
    """memos_kv_cache_lookups_total and memos_adapter_lookups_total of tenant acme, by result."""
    out: dict[str, float] = {}
    for line in httpx.get(running.url + "/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(("memos_kv_cache_lookups_total{", "memos_adapter_lookups_total{")):
            if 'tenant="acme"' in name:
                out[name.removeprefix("memos_").split(",")[0]] = float(value)
    return out


def test_models_lists_the_local_model(client: openai.OpenAI) -> None:
    assert MODEL in {m.id for m in client.models.list().data}


def test_plaintext_and_activation_are_token_identical(
    running: RunningProxy, key: str, client: openai.OpenAI, generations: list[Any]
) -> None:
    ids = add_memories(running, key, "alice", FIVE_MEMORIES)
    # Put the five into the activation block, as the background pass does for hot, stable memories.
    running.services.scheduler.promote("acme", "alice", ids)

    plain_text, plain_headers = ask(client, "alice", "plaintext")
    act_text, act_headers = ask(client, "alice", "activation")
    again_text, again_headers = ask(client, "alice", "activation")
    plain, act, again = generations[-3:]

    assert plain_headers["x-memos-memory-mode"] == "plaintext"
    assert act_headers["x-memos-memory-mode"] == again_headers["x-memos-memory-mode"] == "activation"
    assert plain_headers["x-memos-memories"] == act_headers["x-memos-memories"] == "5"
    assert plain.cached_tokens == 0 and act.cached_tokens > 0  # the block came from the KV cache
    assert plain.prompt_tokens == act.prompt_tokens  # the same ids: block + conversation
    # A real answer (the random model may end it early at its end-of-turn token), not a constant.
    assert len(plain.token_ids) >= 8 and len(set(plain.token_ids)) > 5
    assert act.token_ids == plain.token_ids and act_text == plain_text
    assert again.token_ids == act.token_ids and again_text == act_text  # the stored cache is unchanged

    # The memory matters: without it the answer differs; auto now picks the ready cache; streaming
    # gives the same text.
    _, off_headers = ask(client, "alice", "off")
    assert off_headers["x-memos-memory-mode"] == "off" and generations[-1].token_ids != plain.token_ids
    auto_text, auto_headers = ask(client, "alice", "auto")
    assert auto_headers["x-memos-memory-mode"] == "activation" and auto_text == act_text
    streamed, stream_headers = ask(client, "alice", "activation", stream=True)
    assert stream_headers["x-memos-memory-mode"] == "activation" and streamed == act_text


def test_memory_train_then_parametric_mode(
    stack: tuple[FakeUpstream, RunningProxy],
    key: str,
    client: openai.OpenAI,
    generations: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream, running = stack
    add_memories(running, key, "bob", FIVE_MEMORIES)
    # No adapter yet: parametric is not possible, the scheduler falls back (and says so).
    _, headers = ask(client, "bob", "parametric")
    assert headers["x-memos-memory-mode"] != "parametric"
    assert headers["x-memos-memory-reason"] == "no_adapter"

    # `memos-proxy memory train`, run in this process (the subprocess would spend most of its time
    # importing torch); settings come from the environment, as for the installed command.
    settings = running.settings
    env = proxy_env(
        settings.data_dir,
        upstream.base_url,
        MEMOS_LOCAL_MODELS=json.dumps({"tiny": str(settings.local_models["tiny"])}),
        MEMOS_LOCAL_DEVICE="cpu",
        MEMOS_EMBEDDING_MODEL="hash",
    )
    for name, value in env.items():
        if name.startswith("MEMOS_"):
            monkeypatch.setenv(name, value)
    argv = ["memory", "train", "--tenant", "acme", "--user", "bob", "--model", MODEL, "--steps", "40"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "trained adapter" in out and "5 memories" in out

    ask(client, "bob", "off")
    base = generations[-1]
    text, headers = ask(client, "bob", "parametric")
    assert headers["x-memos-memory-mode"] == "parametric"
    assert text and generations[-1].token_ids != base.token_ids

    # The adapter lowers the model's loss on bob's memories, measured on the served model itself.
    from memos.local.lora import memory_loss, select_adapter

    scheduler = running.services.scheduler
    loaded = scheduler.registry.load("tiny")
    handle = scheduler.adapter_store.handle("acme", "bob", loaded.fingerprint)
    with loaded.lock:
        select_adapter(loaded, handle)
        adapter_loss = memory_loss(loaded.model, loaded.tokenizer, FIVE_MEMORIES)
        select_adapter(loaded, None)
        base_loss = memory_loss(loaded.model, loaded.tokenizer, FIVE_MEMORIES)
    assert adapter_loss < 0.7 * base_loss


def test_the_installed_command_names_the_configured_models(tmp_path: Path, model_dir: Path) -> None:
    env = proxy_env(tmp_path, "http://127.0.0.1:9", MEMOS_LOCAL_MODELS=json.dumps({"tiny": str(model_dir)}))
    result = run_cli("memory", "train", "--tenant", "acme", "--user", "bob", "--model", "local/nope", env=env)
    assert result.returncode == 2 and "configured: local/tiny" in result.stderr
    result = run_cli("memory", "train", "--tenant", "acme", "--user", "bob", "--model", MODEL, env=env)
    assert result.returncode == 1 and "no stable memories" in result.stderr


def test_caches_and_adapters_are_ciphertext_and_erased_with_the_user(
    running: RunningProxy, key: str, client: openai.OpenAI
) -> None:
    ids = add_memories(running, key, "carol", FIVE_MEMORIES)
    scheduler = running.services.scheduler
    scheduler.promote("acme", "carol", ids)
    before = local_lookups(running)
    assert ask(client, "carol", "activation")[1]["x-memos-memory-mode"] == "activation"  # built
    assert ask(client, "carol", "activation", max_tokens=2)[1]["x-memos-memory-mode"] == "activation"  # hit
    scheduler.train("acme", "carol", "tiny", min_age_s=0)
    assert ask(client, "carol", "parametric")[1]["x-memos-memory-mode"] == "parametric"
    after = local_lookups(running)
    for series in (
        'kv_cache_lookups_total{result="built"',
        'kv_cache_lookups_total{result="hit"',
        'adapter_lookups_total{result="hit"',
    ):
        assert after.get(series, 0) - before.get(series, 0) == 1, series  # as the README says

    data_dir = running.settings.data_dir
    files = [p for sub in ("kv", "adapters") for p in (data_dir / sub).rglob("*") if p.is_file()]
    assert any(p.suffix == ".kv" for p in files) and any(p.suffix == ".lora" for p in files)
    secrets = [t.encode() for t in FIVE_MEMORIES] + [b"carol", b"__metadata__", b"token_ids", b"lora_A"]
    for path in files:
        blob = path.read_bytes()
        assert blob[:1] == b"\x01", path  # memos ciphertext format, not a safetensors header
        for secret in secrets:
            assert secret not in blob, (path, secret)

    before = set(files)
    response = httpx.delete(
        f"{running.base_url}/memories",
        params={"user": "carol"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert response.status_code in (200, 204), response.text
    after = {p for sub in ("kv", "adapters") for p in (data_dir / sub).rglob("*") if p.is_file()}
    fingerprint = scheduler.registry.fingerprint("tiny")
    assert not scheduler.kv_store.path(KVKey("acme", "carol", fingerprint)).exists()
    assert scheduler.adapter_store.adapter_ids("acme", "carol") == []
    assert scheduler.adapter_store.latest("acme", "carol", fingerprint) is None
    assert after < before
    # Nothing of carol's is served any more, and the answers say why.
    _, headers = ask(client, "carol", "activation")
    assert headers["x-memos-memory-mode"] == "plaintext" and headers["x-memos-memory-reason"] == "no_memories"
    _, headers = ask(client, "carol", "parametric")
    assert headers["x-memos-memory-mode"] == "plaintext" and headers["x-memos-memory-reason"] == "no_adapter"


def test_plaintext_hits_promote_memories_into_the_activation_block(
    running: RunningProxy, key: str, client: openai.OpenAI
) -> None:
    scheduler = running.services.scheduler
    vault = running.services.memory.vault
    ids = add_memories(running, key, "dave", FIVE_MEMORIES)
    # Nothing is promoted yet: auto serves plaintext, and each injection counts a hit.
    for _ in range(2):
        assert ask(client, "dave", "auto", max_tokens=2)[1]["x-memos-memory-mode"] == "plaintext"
    until(lambda: all(vault.get("acme", i).hits >= 2 for i in ids), "both injections counted", 30)
    assert all(vault.get("acme", i).hits == 2 for i in ids)
    # The background pass's lifecycle step, with thresholds a test can reach.
    scheduler.config = replace(scheduler.config, promote_min_hits=2, stable_min_age_s=0)
    promoted = scheduler.lifecycle("acme", "dave")
    assert sorted(t.memory_id for t in promoted) == sorted(ids)
    assert all(vault.history("acme", i)[-1].kind == "activation" for i in ids)
    assert ask(client, "dave", "activation", max_tokens=2)[1]["x-memos-memory-mode"] == "activation"


def test_activation_serves_fresh_memories_on_the_first_request(
    running: RunningProxy, key: str, client: openai.OpenAI, generations: list[Any]
) -> None:
    scheduler = running.services.scheduler
    add_memories(running, key, "erin", FIVE_MEMORIES)  # through POST /v1/memories; none promoted
    path = scheduler.kv_store.path(KVKey("acme", "erin", scheduler.registry.fingerprint("tiny")))
    assert not path.exists()
    before = local_lookups(running)

    act_text, act_headers = ask(client, "erin", "activation")
    act = generations[-1]
    assert act_headers["x-memos-memory-mode"] == "activation" and act_headers["x-memos-memories"] == "5"
    assert "x-memos-memory-reason" not in act_headers
    assert act.cached_tokens > 0  # the block's prefill was the cache: the conversation came after it
    stored = hashlib.sha256(path.read_bytes()).hexdigest()  # and it was stored

    plain_text, plain_headers = ask(client, "erin", "plaintext")
    plain = generations[-1]
    assert plain_headers["x-memos-memory-mode"] == "plaintext" and plain_headers["x-memos-memories"] == "5"
    assert plain.cached_tokens == 0 and plain.prompt_tokens == act.prompt_tokens  # the same ids
    assert len(set(plain.token_ids)) > 5
    assert act.token_ids == plain.token_ids and act_text == plain_text

    again_text, again_headers = ask(client, "erin", "activation")
    again = generations[-1]
    assert again_headers["x-memos-memory-mode"] == "activation" and again_text == act_text
    assert again.cached_tokens == act.cached_tokens and again.token_ids == act.token_ids
    assert hashlib.sha256(path.read_bytes()).hexdigest() == stored  # reused, not rebuilt
    after = local_lookups(running)
    for series in ('kv_cache_lookups_total{result="built"', 'kv_cache_lookups_total{result="hit"'):
        assert after.get(series, 0) - before.get(series, 0) == 1, series
    # The cache is held in memory, under its bound, and the scrape says so.
    scrape = httpx.get(running.url + "/metrics").text
    gauges = dict(line.rsplit(" ", 1) for line in scrape.splitlines() if line.startswith("memos_local_"))
    held, bound = (
        float(gauges["memos_local_kv_cache_memory_bytes"]),
        gauges['memos_local_memory_limit_bytes{store="kv_cache"}'],
    )
    assert 0 < held <= float(bound)
    # ... and on disk: the tenant's cache files, the one file just written among them.
    on_disk = [float(v) for k, v in gauges.items() if k.startswith("memos_local_kv_cache_disk_bytes{")]
    assert on_disk and on_disk[0] >= path.stat().st_size

    # `auto` keeps its rule: activation only for promoted memories with a built cache.
    assert ask(client, "erin", "auto", max_tokens=2)[1]["x-memos-memory-mode"] == "plaintext"


def test_a_mode_that_cannot_serve_says_why(
    stack: tuple[FakeUpstream, RunningProxy], key: str, client: openai.OpenAI
) -> None:
    _, running = stack
    # A user with no memories asks for activation.
    _, headers = ask(client, "frank", "activation", max_tokens=2)
    assert headers["x-memos-memory-mode"] == "plaintext" and headers["x-memos-memory-reason"] == "no_memories"
    # A remote model cannot serve activation or parametric memory.
    add_memories(running, key, "frank", FIVE_MEMORIES[:1])
    for mode in ("activation", "parametric"):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=QUESTION,
            extra_headers={"X-Memos-User": "frank", "X-Memos-Memory-Mode": mode, "X-Memos-Memory": "read"},
        )
        assert raw.headers["x-memos-memory-mode"] == "plaintext"
        assert raw.headers["x-memos-memory-reason"] == "remote_model"


def test_activation_with_the_users_adapter(
    running: RunningProxy, key: str, client: openai.OpenAI, generations: list[Any]
) -> None:
    from memos.local.runtime import SamplingParams, build_prompt

    scheduler = running.services.scheduler
    add_memories(running, key, "gina", FIVE_MEMORIES)
    meta = scheduler.train("acme", "gina", "tiny", min_age_s=0)
    text, headers = ask(client, "gina", "activation")
    served = generations[-1]
    assert headers["x-memos-memory-mode"] == "activation" and served.cached_tokens > 0
    fingerprint = scheduler.registry.fingerprint("tiny")
    assert scheduler.kv_store.path(KVKey("acme", "gina", fingerprint, meta.adapter_id)).exists()

    # The same answer as the block prefilled in full through the adapter (plaintext with the adapter).
    loaded = scheduler.registry.load("tiny")
    block = scheduler.render_block(scheduler.fill_memories(scheduler.memories("acme", "gina")))
    prompt = build_prompt(loaded.tokenizer, QUESTION, block)
    handle = scheduler.adapter_store.handle("acme", "gina", fingerprint)
    greedy = SamplingParams(max_tokens=24, temperature=0.0)
    runtime = running.services.upstreams.local.runtime
    assert served.token_ids == runtime.generate(loaded, prompt, greedy, adapter=handle).token_ids
    assert served.token_ids != runtime.generate(loaded, prompt, greedy).token_ids  # the adapter counts
    assert text
