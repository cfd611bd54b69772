"""Memory through the proxy, end to end: the official openai SDK -> proxy -> loopback upstream.

What a user tells the model in one chat reaches the upstream request of a later chat of that user (as
a system message after the client's own system prompt, first when it has none), never another user's;
the memory switch and the policy decide what is injected and what is written back; contradicted facts
stop being injected; the LLM extractor is a model on the same upstream. Every wait polls with a
deadline; nothing asserts on wall time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.support.memory import remembered, search, search_hits, until
from tests.support.proxy import RunningProxy, proxy_settings, proxy_stack, run_proxy
from tests.support.upstream import FakeUpstream

MODEL = "gpt-4o-mini"
EXTRACTOR = "extractor-model"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeUpstream, RunningProxy]]:
    # The real default embedder: this module is the product's core promise end to end.
    data_dir = tmp_path_factory.mktemp("memory-e2e")
    with proxy_stack(data_dir, key_cache_ttl_s=0, worker_poll_interval_s=0.02) as stack:
        yield stack


@pytest.fixture
def upstream(stack: tuple[FakeUpstream, RunningProxy]) -> FakeUpstream:
    stack[0].reset()
    return stack[0]


def say(
    client: openai.OpenAI, user: str, text: str, *, stream: bool = False, headers: dict | None = None
) -> tuple[str, httpx.Headers]:
    """One chat turn as user `user`; returns the answer and the response headers."""
    extra = {"X-Memos-User": user, **(headers or {})}
    messages = [{"role": "user", "content": text}]
    if not stream:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, extra_headers=extra
        )
        return raw.parse().choices[0].message.content or "", raw.headers
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=messages, stream=True, extra_headers=extra
    ) as response:
        text_out = "".join(
            chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
        )
        return text_out, response.headers


def last_sent(upstream: FakeUpstream) -> list[dict]:
    """The messages of the last chat request that reached the upstream (not the extractor's)."""
    bodies = [b for b in upstream.chat_requests if b.get("model") == MODEL]
    return bodies[-1]["messages"]


def memory_block(messages: list[dict]) -> str | None:
    first = messages[0]
    if first["role"] == "system" and "reference data" in first["content"]:
        return first["content"]
    return None


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_fact_reaches_a_later_chat_of_the_same_user_only(
    client: openai.OpenAI, upstream: FakeUpstream, running: RunningProxy, key: str, stream: bool
) -> None:
    user, other = f"alice-{stream}", f"bob-{stream}"
    fact = "My favourite colour is teal." if not stream else "My favourite tree is the ginkgo."
    _, headers = say(client, user, fact, stream=stream)
    assert headers["x-request-id"]
    remembered(running, key, user, fact)

    answer, headers = say(client, user, "Tell me about it, what is my favourite one?", stream=stream)
    assert answer.startswith("You said:")
    block = memory_block(last_sent(upstream))
    assert block is not None and fact in block
    assert last_sent(upstream)[1] == {
        "role": "user",
        "content": "Tell me about it, what is my favourite one?",
    }
    assert headers["x-memos-memory-mode"] == "plaintext" and int(headers["x-memos-memories"]) >= 1

    # Another user of the same tenant never sees it.
    say(client, other, "Tell me about it, what is my favourite one?", stream=stream)
    sent = last_sent(upstream)
    assert all(fact not in m["content"] for m in sent)


def test_the_block_is_byte_stable_across_turns(
    client: openai.OpenAI, upstream: FakeUpstream, running: RunningProxy, key: str
) -> None:
    say(client, "carol", "I keep bees on my balcony.")
    remembered(running, key, "carol", "I keep bees on my balcony.")
    say(client, "carol", "How many bees on a balcony is too many?")
    first = memory_block(last_sent(upstream))
    say(client, "carol", "And do balcony bees need water?")
    second = memory_block(last_sent(upstream))
    assert first is not None and first.encode() == second.encode()


def test_memory_switch(
    client: openai.OpenAI, upstream: FakeUpstream, running: RunningProxy, key: str
) -> None:
    user = "dave"
    say(client, user, "I am allergic to peanuts.")
    remembered(running, key, user, "I am allergic to peanuts.")
    question = "Is a peanut allergy serious?"

    _, headers = say(client, user, question, headers={"X-Memos-Memory": "off"})
    assert memory_block(last_sent(upstream)) is None
    assert headers["x-memos-memories"] == "0" and headers["x-memos-memory-mode"] == "off"

    _, headers = say(client, user, question, headers={"X-Memos-Memory": "write"})
    assert memory_block(last_sent(upstream)) is None

    _, headers = say(client, user, question, headers={"X-Memos-Memory": "read"})
    assert "peanuts" in (memory_block(last_sent(upstream)) or "")

    # Nothing told with `off` or `read` is written back; `write` is. The worker keeps each user's rows in
    # order, so once the later marker is searchable the earlier exchanges have been processed too.
    say(client, user, "I own a red canoe.", headers={"X-Memos-Memory": "off"})
    say(client, user, "I own a green kayak.", headers={"X-Memos-Memory": "read"})
    say(client, user, "I own a blue sailboat.", headers={"X-Memos-Memory": "write"})
    say(client, user, "I own a yellow submarine.")
    remembered(running, key, user, "I own a yellow submarine.")
    everything = search(running, key, user, "I own a boat canoe kayak sailboat submarine")
    assert "I own a blue sailboat." in everything
    assert not any("canoe" in m or "kayak" in m for m in everything)


def test_a_contradicted_fact_is_no_longer_injected_but_kept_in_history(
    client: openai.OpenAI, upstream: FakeUpstream, running: RunningProxy, key: str
) -> None:
    user = "erin"
    say(client, user, "I live in Paris.")
    remembered(running, key, user, "I live in Paris.")
    [paris_id] = [
        h["id"]
        for h in search_hits(running, key, user, "I live in Paris.")
        if h["memory"] == "I live in Paris."
    ]
    say(client, user, "I moved to Lyon last month.", stream=True)
    remembered(running, key, user, "I moved to Lyon last month.")
    until(lambda: "I live in Paris." not in search(running, key, user, "live Paris"), "Paris superseded")

    say(client, user, "Any tips for where I live, Paris or Lyon?")
    block = memory_block(last_sent(upstream)) or ""
    assert "Lyon" in block and "I live in Paris." not in block

    auth = {"Authorization": f"Bearer {key}"}
    history = httpx.get(f"{running.base_url}/memories/{paris_id}/history", headers=auth, timeout=30)
    assert history.status_code == 200, history.text
    versions = history.json()["data"]
    assert versions[0]["state"] == "active" and versions[0]["memory"] == "I live in Paris."
    assert versions[-1]["state"] == "superseded" and versions[-1]["invalid_at"]


def test_redaction_before_storage(
    client: openai.OpenAI, upstream: FakeUpstream, running: RunningProxy, key: str
) -> None:
    user = "frank"
    say(client, user, "You can reach me at frank.canary@example.org, I am a pilot.")
    remembered(running, key, user, "I am a pilot.")
    stored = search(running, key, user, "reach me pilot")
    assert any("[EMAIL]" in m for m in stored)
    assert not any("frank.canary@example.org" in m for m in stored)


def test_llm_extractor_mode(tmp_path: Path) -> None:
    """The extractor is a model on the upstream; its JSON facts (dated, third person) are what is stored,
    and it is asked whether a new fact contradicts an old one."""
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    (policy_dir / "llmco.yaml").write_text(f"memory:\n  extractor: llm:{EXTRACTOR}\n")

    def respond(body: dict) -> str:
        if body.get("model") != EXTRACTOR:
            return "ok"
        prompt = body["messages"][-1]["content"]
        if prompt.startswith("Existing memories"):
            return (
                '{"contradicted": [1], "duplicate": null}'
                if "Oslo" in prompt.split("New memory")[1]
                else "{}"
            )
        if "Bergen" in prompt:
            facts = [{"text": "The user lives in Bergen.", "date": "2026-01-05"}]
        elif "Oslo" in prompt:
            facts = [{"text": "The user relocated to Oslo.", "date": "2026-04-01"}]
        else:
            facts = []
        return "```json\n" + orjson.dumps({"facts": facts}).decode() + "\n```"

    with FakeUpstream() as upstream:
        upstream.responder = respond
        settings = proxy_settings(
            tmp_path,
            upstream.base_url,
            key_cache_ttl_s=0,
            embedding_model="hash",
            worker_poll_interval_s=0.02,
        )
        with run_proxy(settings) as running:
            key = running.create_key("llmco", "app")
            client = openai.OpenAI(base_url=running.base_url, api_key=key, max_retries=0)
            say(client, "gus", "hey, so I've been living in Bergen for a while now")
            remembered(running, key, "gus", "The user lives in Bergen.")
            extractor_calls = [b for b in upstream.chat_requests if b.get("model") == EXTRACTOR]
            assert extractor_calls and "Bergen" in extractor_calls[0]["messages"][-1]["content"]

            say(client, "gus", "big news: we just packed everything up and went to Oslo", stream=True)
            remembered(running, key, "gus", "The user relocated to Oslo.")
            until(
                lambda: "The user lives in Bergen." not in search(running, key, "gus", "Bergen"),
                "Bergen superseded by the extractor's judgement",
            )
            say(client, "gus", "what should I do this weekend?")
            block = memory_block(last_sent(upstream)) or ""
            assert "[2026-" in block and "The user relocated to Oslo." in block and "Bergen" not in block


def test_erasing_a_user_right_after_a_chat_leaves_nothing_behind(
    client: openai.OpenAI, upstream: FakeUpstream, running: RunningProxy, key: str
) -> None:
    """The exchange may still be in the outbox, or being written, when the erasure comes."""
    user = "hana"
    for n in range(3):
        say(client, user, f"My storage unit code is zebra-{n}-quartz.", stream=n == 1)
    erased = httpx.delete(
        f"{running.base_url}/memories",
        params={"user": user},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert erased.status_code in (200, 204), erased.text
    # Rows of one user are written in order: once a later fact is searchable, the earlier ones were done.
    say(client, user, "I fly a red kite on Sundays.")
    remembered(running, key, user, "I fly a red kite on Sundays.")
    assert not any("quartz" in m for m in search(running, key, user, "storage unit code zebra quartz"))


def test_the_injection_preview_is_the_block_a_chat_gets(
    client: openai.OpenAI, upstream: FakeUpstream, running: RunningProxy, key: str
) -> None:
    """POST /v1/memories/search with injection: true answers the block a chat with that query as its
    latest turn is sent, byte for byte, with the ids the chat's headers count."""
    facts = ["I keep three hives of carniolan bees.", "My sister Ines lives in Porto.", "I cycle to work."]
    for fact in facts:
        say(client, "dora", fact)
    for fact in facts:
        remembered(running, key, "dora", fact)
    question = "Where does my sister live, and what bees do I keep?"
    api = httpx.Client(base_url=running.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    preview = api.post("/memories/search", json={"user": "dora", "query": question, "injection": True})
    assert preview.status_code == 200, preview.text
    injection = preview.json()["injection"]
    _, headers = say(client, "dora", question)
    sent = memory_block(last_sent(upstream))
    assert sent is not None and injection["block"] == sent
    assert len(injection["memory_ids"]) == int(headers["x-memos-memories"]) >= 2
    assert 0 < injection["tokens"] <= 600
    # Without the flag the answer is the search alone.
    plain = api.post("/memories/search", json={"user": "dora", "query": question})
    assert "injection" not in plain.json()
    # Nobody to remember: an empty block, never another user's.
    empty = api.post("/memories/search", json={"user": "nobody-here", "query": question, "injection": True})
    assert empty.json()["injection"] == {"block": "", "memory_ids": [], "tokens": 0}
