"""Helpers of the fault suite (tests/faults/): a full disk, chats with distinct facts, end-state checks.

Every test here ends the same way: each exchange the client saw acknowledged (a 200 with the whole
answer) is findable through the memory API, and `memos-proxy audit verify --all` says the chains are
intact. Traffic stays on loopback; counts and deadlines are bounded; waits poll with a deadline.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.memory import search
from tests.support.proxy import ProxyProcess, RunningProxy, run_cli

MODEL = "gpt-4o-mini"
DEADLINE_S = 90.0


_NAMES = (
    "Ada Bruno Chiara Dmitri Elif Farid Greta Hiro Ines Jonas Kemal Lucia Mateo Nadia Oskar Priya".split()
)
_THINGS = (
    "violins kayaks lanterns telescopes beehives sketchbooks bonsai typewriters "
    "saddles harps globes anchors quilts compasses kites drums"
).split()
_PLACES = (
    "Lisbon Oslo Tbilisi Quito Hanoi Dakar Tallinn Cusco "
    "Malmo Nagoya Rosario Split Ghent Tromso Perth Sapporo"
).split()


def fact(i: int, tag: str) -> str:
    """A statement no other fact(j, ...) shares many words with (so none merges into another), with a
    code of its own."""
    # (a, b, c) of i and j < 256 share at most one of the three words
    a, b = i % 16, (i // 16) % 16
    name, things, place = _NAMES[a], _THINGS[b], _PLACES[(a + b) % 16]
    return f"{name} stores {i + 2} {things} near {place}, tagged {tag}{i:03d}q."


def fill(directory: Path) -> Path:
    """Write zeros into `directory` until its filesystem refuses (ENOSPC); returns the filler file."""
    filler = directory / f"filler-{uuid.uuid4().hex[:6]}"
    block = b"\0" * (64 * 1024)
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(block)
        except OSError:
            pass
    # The last few bytes a block write could not take.
    with filler.open("ab", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 512)
        except OSError:
            pass
    return filler


def chat(
    base_url: str, key: str, user: str, text: str, *, stream: bool = False, timeout: float = 30
) -> httpx.Response:
    """One chat; for a stream, the whole body is read (the client saw it to the end)."""
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    headers = {"Authorization": f"Bearer {key}", "X-Memos-User": user}
    if not stream:
        return httpx.post(f"{base_url}/chat/completions", json=body, headers=headers, timeout=timeout)
    body["stream"] = True
    with httpx.stream(
        "POST", f"{base_url}/chat/completions", json=body, headers=headers, timeout=timeout
    ) as reply:
        reply.read()
    return reply


def acknowledged(reply: httpx.Response, text: str) -> bool:
    """The client got the whole answer: 200, and for streams the terminating [DONE] after the text."""
    if reply.status_code != 200:
        return False
    if reply.headers.get("content-type", "").startswith("text/event-stream"):
        body = reply.text
        return body.rstrip().endswith("data: [DONE]") and '"error"' not in body
    return reply.json()["choices"][0]["message"]["content"] == f"You said: {text}"


def wait_findable(
    running: RunningProxy | ProxyProcess,
    key: str,
    user: str,
    facts: list[str],
    deadline_s: float = DEADLINE_S,
    log: Callable[[], str] = lambda: "",
) -> None:
    """Every fact in `facts` is returned by a search of the memory API, before the deadline."""
    deadline = time.monotonic() + deadline_s
    missing = list(facts)
    while missing:
        missing = [f for f in missing if f not in search(running, key, user, f)]
        if missing:
            assert time.monotonic() < deadline, (
                f"{len(missing)} acknowledged, never findable: {missing[:3]}\n{log()}"
            )
            time.sleep(0.2)


def audit_intact(env: dict[str, str]) -> str:
    """`memos-proxy audit verify --all` exits 0; returns what it printed."""
    result = run_cli("audit", "verify", "--all", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout + result.stderr
    return result.stdout


def metric(text: str, name: str) -> float:
    """A sample's value from Prometheus text (the first line that starts with `name`)."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exported")
