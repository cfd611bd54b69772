"""Distinct facts told through chat all stay findable: the write-back never merges two facts that
differ in a number, a code, a name or a date, however close their embeddings are.

The real proxy with its default embedder (all-MiniLM-L6-v2: "Flight AZ611 ..." and "Flight AZ610 ..."
score above the operator's near-duplicate threshold) in front of a loopback upstream; facts go in as
chats of one user (X-Memos-User), and each check waits until the outbox is empty (every acknowledged
exchange written back) before it lists and searches that user's memories.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterator
from datetime import date

import numpy as np
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memos.writeback.operator import MemOperator
from memos.writeback.outbox import Outbox
from tests.support.memory import listed, search, until
from tests.support.proxy import RunningProxy, proxy_stack
from tests.support.upstream import FakeUpstream

MODEL = "gpt-4o-mini"
# The operator's default: the proxy builds its MemOperator without overriding it.
NEAR = inspect.signature(MemOperator).parameters["near_threshold"].default


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeUpstream, RunningProxy]]:
    with proxy_stack(
        tmp_path_factory.mktemp("distinct-facts"), key_cache_ttl_s=0, worker_poll_interval_s=0.02
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def outbox(running: RunningProxy) -> Outbox:
    # The proxy's own outbox table, read through a second handle on the same database.
    return Outbox(running.services.core.db, running.services.core.keyring)


def tell(client: openai.OpenAI, user: str, facts: list[str]) -> None:
    """Each fact in its own chat of `user`, answered before the next one is sent."""
    for text in facts:
        answer = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": text}],
            extra_headers={"X-Memos-User": user},
        )
        assert answer.choices[0].message.content


def written_back(outbox: Outbox) -> None:
    """Wait until every acknowledged exchange has been written back (the outbox holds no row)."""
    until(lambda: outbox.pending() == 0, "the outbox drained")


def assert_all_findable(running: RunningProxy, key: str, user: str, facts: list[str]) -> None:
    items = listed(running, key, user)
    active = sorted(m["memory"] for m in items if m["state"] == "active")
    assert active == sorted(facts), "a fact was merged away (or one appeared that was not told)"
    for text in facts:
        assert text in search(running, key, user, text), f"{text!r} is not found by searching for it"
    # every memory carries the chat it came from
    assert all(m["sources"] and m["sources"][0]["request_id"] for m in items)


def closest_pair(running: RunningProxy, facts: list[str]) -> float:
    """The highest cosine between two of the facts under the proxy's own embedder."""
    vectors = np.asarray(running.services.memory.vault.embedder.embed(facts), np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = vectors @ vectors.T
    np.fill_diagonal(cosines, -1.0)
    return float(cosines.max())


def test_thirty_parcels_keep_thirty_memories(
    client: openai.OpenAI, running: RunningProxy, key: str, outbox: Outbox
) -> None:
    facts = [f"Remember that parcel {n} has code kq{n:03d}x." for n in range(1, 31)]
    # Cosine alone would merge some of them: what keeps them apart is the merge rule.
    assert closest_pair(running, facts) >= NEAR
    tell(client, "parcels", facts)
    written_back(outbox)
    assert_all_findable(running, key, "parcels", facts)


def test_flights_that_differ_in_number_and_gate_are_both_kept(
    client: openai.OpenAI, running: RunningProxy, key: str, outbox: Outbox
) -> None:
    facts = ["Flight AZ610 leaves from gate B12.", "Flight AZ611 leaves from gate B14."]
    assert closest_pair(running, facts) >= NEAR
    tell(client, "flights", facts)
    written_back(outbox)
    assert_all_findable(running, key, "flights", facts)


def test_a_repeated_fact_still_merges_and_a_later_contradiction_supersedes(
    client: openai.OpenAI, running: RunningProxy, key: str, outbox: Outbox
) -> None:
    """The rule keeps distinct facts apart without keeping duplicates or contradictions alive."""
    tell(client, "repeats", ["Flight AZ610 leaves from gate B12.", "flight AZ610 leaves from gate B12!"])
    tell(client, "repeats", ["I live in Lyon.", "I live in Paris."])
    written_back(outbox)
    items = listed(running, key, "repeats")
    active = sorted(m["memory"] for m in items if m["state"] == "active")
    assert active == ["Flight AZ610 leaves from gate B12.", "I live in Paris."]
    [flight] = [m for m in items if m["memory"].startswith("Flight")]
    assert len(flight["sources"]) == 2  # the repeat merged: one memory, both chats as its sources


# -------------------------------------------------------------------------------------- property

# Each template differs between the facts of one family in its one slot only. None states a
# single-valued fact about the user (where they live, their name, their birthday...), which a later
# value would rightly supersede.
_NAMES = [
    "Amara", "Bastien", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiroshi", "Ingrid", "Jonas",
    "Kalani", "Leona", "Matteo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Stellan", "Tamsin",
]  # fmt: skip
_TEMPLATES = {
    "number": ["Remember that locker {} holds the spare keys.", "The blue folder is on shelf {} downstairs."],
    "code": ["The side door of the studio opens with code {}.", "Flight {} leaves from gate B12."],
    "name": ["The salad for the picnic comes from {}.", "The spare bike pump is with {} this week."],
    "date": ["The plumber comes to fix the boiler on {}.", "The library books are due back on {}."],
}  # fmt: skip
_VALUES: dict[str, st.SearchStrategy[str]] = {
    "number": st.integers(2, 999).map(str),
    "code": st.from_regex(r"\A[A-Z]{2}[1-9][0-9]{2}\Z"),
    "name": st.sampled_from(_NAMES),
    "date": st.tuples(
        st.dates(date(2025, 1, 1), date(2030, 12, 31)), st.sampled_from(["iso", "long"])
    ).map(lambda d: d[0].isoformat() if d[1] == "iso" else f"{d[0].day} {d[0]:%B %Y}"),
}


@st.composite
def families(draw: st.DrawFn) -> list[str]:
    """3 to 6 facts of one template that differ in a single number, code, name or date."""
    kind = draw(st.sampled_from(sorted(_TEMPLATES)))
    template = draw(st.sampled_from(_TEMPLATES[kind]))
    values = draw(st.lists(_VALUES[kind], min_size=3, max_size=6, unique=True))
    return [template.format(v) for v in values]


_users = itertools.count()


@settings(max_examples=8, deadline=None, database=None)
@given(facts=families())
def test_every_fact_of_a_family_told_through_chat_stays_findable(
    client: openai.OpenAI, running: RunningProxy, key: str, outbox: Outbox, facts: list[str]
) -> None:
    user = f"family-{next(_users)}"  # every example a fresh user: families never meet
    tell(client, user, facts)
    written_back(outbox)
    assert_all_findable(running, key, user, facts)
