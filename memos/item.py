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


# Provenance kept per memory: the first source (where it was learned), a count of the sources left out,
# and the latest ones. A fact a user repeats in every chat would otherwise carry every request it was
# seen in, and each merge would rewrite and version an ever longer list (measured: 90 sources on one
# memory after 900 chats). The count keeps the cut visible: no source vanishes without trace.
MAX_SOURCES = 20
# The metadata key of the one source that stands for those left out (second in the list, no request).
OMITTED_SOURCES = "memos.omitted_sources"


def omitted_marker(count: int) -> Source:
    """The source that records `count` sources left out of a memory's list."""
    return Source(metadata={OMITTED_SOURCES: count})


def omitted_count(source: Source) -> int | None:
    """How many sources `source` stands for when it is the left-out marker; None for a real source."""
    if source.request_id is not None or source.message_index is not None or source.session is not None:
        return None
    metadata = source.metadata or {}
    value = metadata.get(OMITTED_SOURCES)
    if len(metadata) != 1 or isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def omitted_sources(sources: list[Source]) -> int:
    """How many sources were left out of this list (0 when it holds every one)."""
    return sum(n for n in (omitted_count(s) for s in sources) if n is not None)


def bounded_sources(sources: list[Source]) -> list[Source]:
    """At most MAX_SOURCES entries: the first source, a marker counting those left out (earlier ones
    included), and the latest; the list as it is when nothing needs to be left out."""
    omitted = omitted_sources(sources)
    if not omitted and len(sources) <= MAX_SOURCES:
        return sources
    real = [s for s in sources if omitted_count(s) is None]
    latest = MAX_SOURCES - 2
    dropped = max(0, len(real) - 1 - latest)
    return [*real[:1], omitted_marker(omitted + dropped), *real[1:][-latest:]]


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
