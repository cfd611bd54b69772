"""The memory item as the rest of the system sees it (plaintext, in memory only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Scope(StrEnum):
    USER = "user"
    AGENT = "agent"
    TENANT = "tenant"


class Kind(StrEnum):
    PLAINTEXT = "plaintext"
    ACTIVATION = "activation"
    PARAMETRIC = "parametric"


class State(StrEnum):
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    ARCHIVED = "archived"
    DELETED = "deleted"


@dataclass
class Source:
    """Provenance of a memory: where it was learned, plus the caller's metadata."""

    request_id: str | None = None
    message_index: int | None = None
    session: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


# Provenance kept per memory: the first source (where it was learned) and the latest ones. A fact a
# user repeats in every chat would otherwise carry every request it was seen in, and each merge would
# rewrite and version an ever longer list (measured: 90 sources on one memory after 900 chats).
MAX_SOURCES = 20


def bounded_sources(sources: list[Source]) -> list[Source]:
    """The first source and the latest MAX_SOURCES - 1 (all of them when there are few)."""
    if len(sources) <= MAX_SOURCES:
        return sources
    return [sources[0], *sources[-(MAX_SOURCES - 1) :]]


@dataclass
class MemoryItem:
    id: str
    tenant: str
    owner: str
    text: str
    scope: Scope = Scope.USER
    kind: Kind = Kind.PLAINTEXT
    state: State = State.ACTIVE
    version: int = 1
    sources: list[Source] = field(default_factory=list)
    observed_at: datetime | None = None
    valid_from: datetime | None = None
    invalid_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    hits: int = 0
    last_hit_at: datetime | None = None
    importance: float = 0.5
    expires_at: datetime | None = None


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with a zone (naive times are UTC), or None."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def source_dict(source: Source) -> dict[str, Any]:
    return {
        "request_id": source.request_id,
        "message_index": source.message_index,
        "session": source.session,
        "metadata": source.metadata or {},
    }


def snapshot(item: MemoryItem) -> dict[str, Any]:
    """What one version of an item holds, as JSON-ready data (version history, export)."""
    return {
        "text": item.text,
        "sources": [source_dict(s) for s in item.sources],
        "scope": str(item.scope),
        "kind": str(item.kind),
        "state": str(item.state),
        "importance": item.importance,
        "observed_at": iso(item.observed_at),
        "valid_from": iso(item.valid_from),
        "invalid_at": iso(item.invalid_at),
        "expires_at": iso(item.expires_at),
        "created_at": iso(item.created_at),
        "updated_at": iso(item.updated_at),
    }
