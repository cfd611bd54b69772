import pytest

from memos.db import Database
from memos.governance.audit import AuditLog


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'memos.db'}")
    database.create_all()
    yield database
    database.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db(request, tmp_path):
    """The same tests on SQLite and on this machine's PostgreSQL (skipped when unreachable)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'memos.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    database = Database(url)
    database.create_all()
    yield database
    database.dispose()


@pytest.fixture
def audit(db):
    return AuditLog(db, b"a" * 32)
