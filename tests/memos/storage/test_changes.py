"""MemoryChange: what one update or rollback does to a row (fields, sources, and the indices it
leaves or enters), without a database."""

from __future__ import annotations

from datetime import UTC, datetime

from memos.item import MemoryItem, Source, State
from memos.storage.changes import MemoryChange
from memos.storage.tables import MemoryRow

WHEN = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _row(**fields: object) -> MemoryRow:
    base: dict[str, object] = {
        "id": "mem_1",
        "tenant": "acme",
        "owner": "alice",
        "seq": 1,
        "content_hash": "h",
        "created_at": WHEN,
        "updated_at": WHEN,
        "expires_at": WHEN,
        "valid_from": WHEN,
    }
    return MemoryRow(**{**base, **fields})


def test_the_indices_follow_the_state_and_the_text() -> None:
    same = MemoryChange(importance=0.9).edit("active", "a text", [])
    assert (same.leaves_index, same.enters_index, same.text_changed) == (False, False, False)
    retext = MemoryChange(text="another text").edit("active", "a text", [])
    assert (retext.leaves_index, retext.enters_index, retext.text_changed) == (True, True, True)
    retire = MemoryChange(state=State.SUPERSEDED).edit("active", "a text", [])
    assert (retire.leaves_index, retire.enters_index) == (True, False)
    revive = MemoryChange(state=State.ACTIVE).edit("superseded", "a text", [])
    assert (revive.leaves_index, revive.enters_index, revive.text) == (False, True, "a text")
    inactive_retext = MemoryChange(text="another text").edit("archived", "a text", [])
    assert (inactive_retext.leaves_index, inactive_retext.enters_index) == (False, False)


def test_metadata_merges_into_the_first_source() -> None:
    sources = [Source(request_id="r1", metadata={"a": 1}), Source(request_id="r2")]
    edit = MemoryChange(metadata={"b": 2}).edit("active", "t", sources)
    assert [s.request_id for s in edit.sources] == ["r1", "r2"]
    assert edit.sources[0].metadata == {"a": 1, "b": 2}
    assert sources[0].metadata == {"a": 1}  # the row's own sources are not touched
    assert MemoryChange(metadata={"b": 2}).edit("active", "t", []).sources[0].metadata == {"b": 2}
    replaced = MemoryChange(sources=[Source(session="s")]).edit("active", "t", sources)
    assert [s.session for s in replaced.sources] == ["s"]


def test_apply_writes_the_next_version_and_clears_only_what_is_named() -> None:
    row = _row(version=3)
    later = datetime(2025, 1, 1)  # naive: taken as UTC
    change = MemoryChange(
        state=State.ARCHIVED, importance=0.2, invalid_at=later, clear=frozenset({"expires_at"})
    )
    change.apply(row, change.edit(row.state, "t", []), WHEN)
    assert (row.version, row.state, row.importance, row.updated_at) == (4, "archived", 0.2, WHEN)
    assert row.invalid_at == later.replace(tzinfo=UTC)
    assert row.expires_at is None and row.valid_from == WHEN


def test_back_to_an_old_version_clears_the_dates_it_had_not() -> None:
    old = MemoryItem(
        id="mem_1", tenant="acme", owner="alice", text="old", state=State.ACTIVE, valid_from=WHEN
    )
    change = MemoryChange.back_to(old)
    assert change.text == "old" and change.state == State.ACTIVE and change.valid_from == WHEN
    assert change.clear == frozenset({"invalid_at", "expires_at"})
