"""Memory that cannot keep up says so: a chat answered without memory because retrieval was over its
admission limit carries `x-memos-memory-reason: overloaded` and is counted in
`memos_memory_skipped_total`; a fail-closed tenant is refused (503) instead. Never a silent skip.

The limit is set to 0 concurrent retrievals, so every memory read is over it: the real proxy, the
openai SDK and a loopback upstream, nothing stood in.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.support.memory import add_memories
from tests.support.upstream import FakeUpstream

MODEL = "gpt-4o-mini"
ASK = [{"role": "user", "content": "Which tea do I like?"}]


def memory_skipped(running, tenant: str) -> float:
    for line in httpx.get(running.url + "/metrics").text.splitlines():
        if line.startswith("memos_memory_skipped_total{") and f'tenant="{tenant}"' in line:
            if 'reason="overloaded"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_overloaded_memory_is_answered_without_it_and_says_why(
    proxy, upstream: FakeUpstream, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "strict.yaml").write_text("memory:\n  fail_mode: closed\n")
    running = proxy(embedding_model="hash", memory_max_inflight=0, policy_dir=policies, key_cache_ttl_s=0)
    key, strict = running.create_key("acme"), running.create_key("strict")
    add_memories(running, key, "ola", ["Ola likes jasmine tea."])

    with openai.OpenAI(base_url=running.base_url, api_key=key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK, user="ola")
    assert raw.parse().choices[0].message.content  # answered
    assert raw.headers["x-memos-memory-reason"] == "overloaded"
    assert raw.headers["x-memos-memories"] == "0"
    sent = upstream.chat_requests[-1]["messages"]
    assert sent == ASK  # nothing injected
    assert memory_skipped(running, "acme") == 1

    with openai.OpenAI(base_url=running.base_url, api_key=strict, max_retries=0) as client:
        before = len(upstream.chat_requests)
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model=MODEL, messages=ASK, user="ola")
    assert refused.value.status_code == 503
    assert len(upstream.chat_requests) == before  # refused before the upstream


def test_memory_that_keeps_up_carries_no_reason(proxy, upstream: FakeUpstream) -> None:
    running = proxy(embedding_model="hash")
    key = running.create_key("acme")
    add_memories(running, key, "ola", ["Ola likes jasmine tea."])
    with openai.OpenAI(base_url=running.base_url, api_key=key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK, user="ola")
    assert "x-memos-memory-reason" not in raw.headers
    assert raw.headers["x-memos-memories"] == "1"
    assert "jasmine" in upstream.chat_requests[-1]["messages"][0]["content"]
