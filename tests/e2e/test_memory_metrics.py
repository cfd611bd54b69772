"""/metrics says what memory did, as the README's metric table says, under a small load of memory-on
chats: /metrics is scraped before and after, and each series moved by what the chats did (modes
served, memories injected and block tokens, retrieval and query-embedding times and batch sizes,
exchanges and memories written back: added, merged, superseded; the outbox's backlog). Tenants are
labelled by an opaque id by default, never by name. The real proxy, the openai SDK and a loopback
upstream. (Write-back failures: tests/memos/writeback/test_worker.py.)
"""

from __future__ import annotations

import re

import httpx
import openai

from tests.support.memory import add_memories, until
from tests.support.proxy import RunningProxy, proxy_env, run_cli
from tests.support.upstream import FakeUpstream

MODEL = "gpt-4o-mini"


def scrape(running: RunningProxy) -> dict[str, float]:
    """Samples by their full name with labels, e.g. 'memos_outbox_pending' or 'x_total{tenant="a"}'."""
    out: dict[str, float] = {}
    for line in httpx.get(running.url + "/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def moved(before: dict[str, float], after: dict[str, float], series: str) -> float:
    return after.get(series, 0.0) - before.get(series, 0.0)


def written_back(running: RunningProxy) -> None:
    until(lambda: scrape(running)["memos_outbox_pending"] == 0, "the outbox is drained")


def test_a_load_of_memory_chats_moves_the_memory_metrics(proxy, upstream: FakeUpstream) -> None:
    running = proxy(
        embedding_model="hash",
        metrics_tenant_label="hash",  # the default, said here because the tests' default is "name"
        worker_poll_interval_s=0.02,
        worker_batch_window_ms=0,
    )
    key = running.create_key("acme")
    add_memories(running, key, "ola", ["Ola likes jasmine tea.", "Ola plays the cello on Sundays."])
    tenant = running.services.metrics.tenant_label("acme")
    assert re.fullmatch(r"t_[0-9a-f]{16}", tenant)
    t = f'tenant="{tenant}"'
    before = scrape(running)

    questions = [
        "I live in Lyon. Which tea do I like?",  # a home: added
        "I live in Paris now. What do I play on Sundays?",  # a new home: Lyon superseded
        "I live in Paris now. Tell me about my tea.",  # the same again: merged
        "My favourite colour is teal. What instrument do I play?",
        "Do I like jasmine tea?",
        "What do I do on Sundays?",
    ]
    with openai.OpenAI(base_url=running.base_url, api_key=key, max_retries=0) as client:
        for i, question in enumerate(questions):
            messages = [{"role": "user", "content": question}]
            if i % 2:
                stream = client.chat.completions.create(
                    model=MODEL, messages=messages, user="ola", stream=True
                )
                assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            else:
                client.chat.completions.create(model=MODEL, messages=messages, user="ola")
            written_back(running)  # each exchange written back before the next (the order matters)
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Just answer, without memory."}],
            user="ola",
            extra_headers={"X-Memos-Memory": "off"},
        )
    after = scrape(running)
    chats, remembering = len(questions) + 1, len(questions)

    assert moved(before, after, f'memos_memory_requests_total{{mode="plaintext",{t}}}') == remembering
    assert moved(before, after, f'memos_memory_requests_total{{mode="off",{t}}}') == 1
    assert moved(before, after, f"memos_memory_injected_count{{{t}}}") == remembering
    assert moved(before, after, f"memos_memory_injected_sum{{{t}}}") >= remembering  # >= 1 memory each
    assert moved(before, after, f"memos_memory_block_tokens_count{{{t}}}") == remembering
    assert moved(before, after, f"memos_memory_block_tokens_sum{{{t}}}") > 0
    assert moved(before, after, f"memos_recall_duration_seconds_count{{{t}}}") == remembering
    assert moved(before, after, f"memos_recall_duration_seconds_sum{{{t}}}") > 0
    assert moved(before, after, "memos_query_embedding_batch_size_sum") >= remembering
    assert moved(before, after, "memos_query_embedding_duration_seconds_count") >= 1
    assert moved(before, after, "memos_memory_embedding_batch_size_sum") >= 1  # facts embedded to store
    assert moved(before, after, "memos_memory_embedding_duration_seconds_count") >= 1
    assert moved(before, after, f"memos_writeback_exchanges_total{{{t}}}") == remembering
    assert moved(before, after, f'memos_writeback_memories_total{{outcome="added",{t}}}') >= 3
    assert moved(before, after, f'memos_writeback_memories_total{{outcome="superseded",{t}}}') >= 1
    assert moved(before, after, f'memos_writeback_memories_total{{outcome="merged",{t}}}') >= 1
    route = 'route="/v1/chat/completions"'
    assert (
        moved(before, after, f'memos_http_requests_total{{method="POST",{route},status="200",{t}}}') == chats
    )
    assert moved(before, after, f"memos_upstream_duration_seconds_count{{{route},{t}}}") == chats
    assert after["memos_outbox_pending"] == 0 and after["memos_outbox_oldest_age_seconds"] == 0
    assert after["memos_outbox_readable"] == 1
    assert not any(k.startswith("memos_writeback_failures_total") for k in after)
    assert "acme" not in httpx.get(running.url + "/metrics").text  # the tenant's name is in no label


def test_an_undrained_outbox_shows_its_backlog(proxy, upstream: FakeUpstream) -> None:
    running = proxy(embedding_model="hash", worker_enabled=False)  # nobody writes back
    key = running.create_key("acme")
    with openai.OpenAI(base_url=running.base_url, api_key=key, max_retries=0) as client:
        for text in ("I live in Lyon.", "I work at the library."):
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": text}], user="ola"
            )
    m = scrape(running)
    assert m["memos_outbox_pending"] == 2 and m["memos_outbox_oldest_age_seconds"] > 0


def test_tenant_labels_are_stable_per_deployment_or_off(proxy, upstream: FakeUpstream, tmp_path) -> None:
    data_dir = tmp_path / "deployment"
    first = proxy(data_dir=data_dir, embedding_model="hash", metrics_tenant_label="hash")
    label = first.services.metrics.tenant_label("acme")
    # Another process of the same deployment (the same master key) labels the tenant alike.
    second = proxy(data_dir=data_dir, embedding_model="hash", metrics_tenant_label="hash")
    assert second.services.metrics.tenant_label("acme") == label
    assert second.services.metrics.tenant_label("globex") != label
    elsewhere = proxy(embedding_model="hash", metrics_tenant_label="hash")  # another master key
    assert elsewhere.services.metrics.tenant_label("acme") != label
    # The operator maps a label seen in a dashboard back to its tenant with the real CLI.
    first.create_key("acme")
    env = proxy_env(data_dir, upstream.base_url)
    named = run_cli("tenants", "labels", "--tenant", "acme", "--tenant", "globex", env=env)
    assert named.returncode == 0, named.stderr
    assert named.stdout.splitlines() == [
        f"acme\t{label}",
        f"globex\t{second.services.metrics.tenant_label('globex')}",
    ]
    every = run_cli("tenants", "labels", env=env)  # every tenant with keys or a trail
    assert f"acme\t{label}" in every.stdout.splitlines()

    off = proxy(embedding_model="hash", metrics_tenant_label="off")
    key = off.create_key("acme")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "user": "ola"}
    answer = httpx.post(
        f"{off.base_url}/chat/completions", json=chat, headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status_code == 200
    text = httpx.get(off.url + "/metrics").text
    assert 'memos_memory_requests_total{mode="plaintext",tenant=""} 1.0' in text
    assert "acme" not in text
