"""UTC instants: every time memory stores or compares is zone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def aware(value: datetime | None) -> datetime | None:
    """`value` with a zone (SQLite hands back naive datetimes; they are UTC)."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
