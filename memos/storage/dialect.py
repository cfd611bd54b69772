"""INSERT ... ON CONFLICT in the database's own dialect: SQLite and PostgreSQL spell it alike, from
different SQLAlchemy modules (the owner statistics row is created once, term frequencies upserted)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlmodel import SQLModel

from memos.db import Database

if TYPE_CHECKING:
    from sqlalchemy.dialects.postgresql import Insert as PostgresInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert


def upsert(db: Database, table: type[SQLModel]) -> PostgresInsert | SqliteInsert:
    """An INSERT into `table` that takes ON CONFLICT clauses, for `db`'s dialect."""
    if db.is_postgres:
        from sqlalchemy.dialects.postgresql import insert as postgres_insert

        return postgres_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)
