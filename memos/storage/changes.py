"""One change of a stored item (`MemVault.update`, `MemVault.rollback`): the fields it sets, and what
follows for the row: its new text, sources and state, and whether it leaves or enters the indices.

Only active items are in the indices (postings, vectors, BM25 statistics): an item leaves them when it
stops being active or its text changes, and enters them when it becomes active or, being active, its
text changes (a new vector and new postings for the new text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from memos.clock import aware
from memos.item import Kind, MemoryItem, Scope, Source, State
from memos.storage.tables import MemoryRow


@dataclass(frozen=True)
class Edit:
    """A change as it applies to one row as it is now."""

    text: str
    sources: list[Source]
    state: State
    text_changed: bool
    leaves_index: bool  # the row's current text leaves the indices
    enters_index: bool  # the new text enters them (needs a vector)


@dataclass(frozen=True)
class MemoryChange:
    """The fields a new version changes; None keeps a field. `metadata` is merged into the first
    source's metadata; `clear` names nullable fields to reset (invalid_at, expires_at, valid_from)."""

    text: str | None = None
    state: State | None = None
    invalid_at: datetime | None = None
    importance: float | None = None
    kind: Kind | str | None = None
    scope: Scope | str | None = None
    expires_at: datetime | None = None
    valid_from: datetime | None = None
    observed_at: datetime | None = None
    sources: list[Source] | None = None
    metadata: dict[str, Any] | None = None
    clear: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def back_to(cls, old: MemoryItem) -> MemoryChange:
        """Every field as in the old version `old` (text, sources, state and the other fields)."""
        return cls(
            text=old.text,
            state=old.state,
            invalid_at=old.invalid_at,
            importance=old.importance,
            kind=old.kind,
            scope=old.scope,
            expires_at=old.expires_at,
            valid_from=old.valid_from,
            observed_at=old.observed_at,
            sources=old.sources,
            metadata=None,
            clear=frozenset(
                name for name in ("invalid_at", "expires_at", "valid_from") if getattr(old, name) is None
            ),
        )

    def edit(self, state: str, text: str, sources: list[Source]) -> Edit:
        """This change applied to a row in `state` holding `text` and `sources`."""
        new_text = self.text if self.text is not None else text
        new_state = self.state if self.state is not None else State(state)
        was_active = state == State.ACTIVE.value
        now_active = new_state == State.ACTIVE
        text_changed = new_text != text
        return Edit(
            text=new_text,
            sources=self._sources_after(sources),
            state=new_state,
            text_changed=text_changed,
            leaves_index=was_active and (not now_active or text_changed),
            enters_index=now_active and (not was_active or text_changed),
        )

    def _sources_after(self, sources: list[Source]) -> list[Source]:
        new_sources = list(self.sources) if self.sources is not None else list(sources)
        if self.metadata:
            if not new_sources:
                new_sources = [Source()]
            first = new_sources[0]
            new_sources[0] = Source(
                request_id=first.request_id,
                message_index=first.message_index,
                session=first.session,
                metadata={**(first.metadata or {}), **self.metadata},
            )
        return new_sources

    def apply(self, row: MemoryRow, edit: Edit, now: datetime) -> None:
        """The row's next version: its scalar fields, dates and state (the payload is the caller's)."""
        row.version += 1
        row.updated_at = now
        row.state = edit.state.value
        if self.importance is not None:
            row.importance = float(self.importance)
        if self.kind is not None:
            row.kind = str(Kind(self.kind))
        if self.scope is not None:
            row.scope = str(Scope(self.scope))
        for name, value in (
            ("invalid_at", self.invalid_at),
            ("expires_at", self.expires_at),
            ("valid_from", self.valid_from),
            ("observed_at", self.observed_at),
        ):
            if value is not None:
                setattr(row, name, aware(value))
            elif name in self.clear:
                setattr(row, name, None)
