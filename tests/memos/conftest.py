"""Fixtures shared by the memos/ tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memos.db import Database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path) -> Iterator[Database]:  # type: ignore[no-untyped-def]
    """A fresh, empty database: SQLite under tmp_path, and the machine's PostgreSQL."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'memos.db'}")
    else:
        db = Database(request.getfixturevalue("pg_url"))
    db.create_all()
    yield db
    db.dispose()
