"""SIGKILL right after replies were delivered loses none of those exchanges' memories.

`memos-proxy serve` runs as a child process. Every reply the client received (plain and streamed) had
its exchange committed to the outbox before its last byte; the process is then killed with SIGKILL
(no shutdown hook runs) and started again on the same data directory, whose worker drains what was
left. Polls with a deadline; no assertion on wall time.
"""

from __future__ import annotations

from pathlib import Path

import openai

from tests.support.faults import wait_findable
from tests.support.proxy import ProxyProcess, proxy_env
from tests.support.upstream import FakeUpstream

MODEL = "gpt-4o-mini"
FACTS = [
    "I restore antique clocks on weekends.",
    "My sister Ingrid teaches violin in Tromso.",
    "I am training for a marathon in Kyoto.",
    "Our cat Pixel only eats salmon.",
    "I started learning Portuguese in March.",
    "My car is a green Volvo estate.",
    "I grow chili peppers on the balcony.",
    "I volunteer at the harbour museum.",
]


def chat(client: openai.OpenAI, user: str, text: str, stream: bool) -> str:
    messages = [{"role": "user", "content": text}]
    headers = {"X-Memos-User": user}
    if not stream:
        return (
            client.chat.completions.create(model=MODEL, messages=messages, extra_headers=headers)
            .choices[0]
            .message.content
        )
    parts = client.chat.completions.create(model=MODEL, messages=messages, stream=True, extra_headers=headers)
    return "".join(chunk.choices[0].delta.content or "" for chunk in parts if chunk.choices)


def wait_all(proc: ProxyProcess, key: str, user: str, facts: list[str]) -> None:
    """Every fact is found by a search after the restart (tests/support/faults.py: 90 s at most)."""
    wait_findable(proc, key, user, facts, log=lambda: proc.log()[-3000:])


def tell_then_kill(proc: ProxyProcess, key: str, user: str) -> None:
    client = openai.OpenAI(base_url=proc.base_url, api_key=key, max_retries=0)
    for i, fact in enumerate(FACTS):
        answer = chat(client, user, fact, stream=i % 2 == 1)
        assert answer == f"You said: {fact}"  # the whole reply was delivered
    proc.kill()


def test_sigkill_with_the_worker_off_loses_nothing(tmp_path: Path) -> None:
    """Nothing is written back before the crash: everything rests on the outbox."""
    with FakeUpstream() as upstream:
        env = proxy_env(tmp_path, upstream.base_url, MEMOS_EMBEDDING_MODEL="hash")
        proc = ProxyProcess({**env, "MEMOS_WORKER_ENABLED": "false"})
        with proc:
            key = proc.create_key("acme", "app")
            tell_then_kill(proc, key, "alice")
            proc.env = env  # the same data directory, the worker on
            proc.start()
            wait_all(proc, key, "alice", FACTS)


def test_sigkill_mid_write_back_loses_nothing(tmp_path: Path) -> None:
    """The worker is busy when the process dies: claimed rows are taken over after the restart."""
    with FakeUpstream() as upstream:
        env = proxy_env(tmp_path, upstream.base_url, MEMOS_EMBEDDING_MODEL="hash")
        with ProxyProcess(env) as proc:
            key = proc.create_key("acme", "app")
            tell_then_kill(proc, key, "bob")
            proc.start()
            wait_all(proc, key, "bob", FACTS)
