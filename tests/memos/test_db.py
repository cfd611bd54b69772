"""Database.write on SQLite: this process's writers queue on one lock, with a bounded wait."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

import memos.db
from memos.db import Database


def _db(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'w.db'}")
    with db.write() as session:
        session.execute(text("CREATE TABLE counter (n INTEGER)"))
        session.execute(text("INSERT INTO counter VALUES (0)"))
    return db


def test_concurrent_writers_all_commit_in_turn(tmp_path: Path) -> None:
    db = _db(tmp_path)
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(25):
                with db.write() as session:
                    n = session.execute(text("SELECT n FROM counter")).scalar_one()
                    session.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with db.session() as session:
        assert session.execute(text("SELECT n FROM counter")).scalar_one() == 100  # no lost update


def test_a_writer_held_too_long_fails_the_next_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _db(tmp_path)
    monkeypatch.setattr(memos.db, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db.write():
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(10)
    try:
        with pytest.raises(OperationalError), db.write():
            pass
    finally:
        release.set()
        holder.join()
    with db.write() as session:  # free again
        session.execute(text("UPDATE counter SET n = 1"))
