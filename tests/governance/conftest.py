import pytest

from memos.db import Database
from memos.governance.audit import AuditLog


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'memos.db'}")
    database.create_all()
    yield database
    database.dispose()


@pytest.fixture
def audit(db):
    return AuditLog(db, b"a" * 32)
