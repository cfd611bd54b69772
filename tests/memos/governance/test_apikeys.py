"""API keys: stored only as hashes, resolved to principals, listed without secrets, revocable."""

from __future__ import annotations

import pytest
from sqlmodel import select

from memos.db import Database
from memos.governance.apikeys import ApiKeyRow, ApiKeyStore, parse_key_id
from memos.governance.principal import Principal, Role


@pytest.fixture
def store(tmp_path) -> ApiKeyStore:
    db = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    db.create_all()
    return ApiKeyStore(db)


def test_create_and_resolve(store: ApiKeyStore) -> None:
    key_id, raw = store.create("acme", "app")
    assert raw.startswith(f"mp-{key_id}-")
    assert store.resolve(raw) == Principal(tenant="acme", key_id=key_id, role=Role.APP)


def test_bound_user_is_kept(store: ApiKeyStore) -> None:
    _, raw = store.create("acme", Role.USER, bound_user="alice")
    principal = store.resolve(raw)
    assert principal is not None and principal.bound_user == "alice" and principal.role is Role.USER


def test_only_the_hash_is_stored(store: ApiKeyStore) -> None:
    _, raw = store.create("acme", "admin")
    secret = raw.split("-", 2)[2]
    with store._db.session() as session:
        rows = session.exec(select(ApiKeyRow)).all()
    assert len(rows) == 1
    assert all(secret not in str(value) for value in rows[0].model_dump().values())


@pytest.mark.parametrize("bad", ["", "mp", "mp-", "mp-abc", "xx-abc-def", "mp--secret"])
def test_malformed_keys_resolve_to_none(store: ApiKeyStore, bad: str) -> None:
    assert store.resolve(bad) is None


def test_wrong_secret_and_unknown_id(store: ApiKeyStore) -> None:
    key_id, raw = store.create("acme", "app")
    assert store.resolve(raw + "x") is None
    assert store.resolve(f"mp-{key_id}0-whatever") is None
    assert store.tenant_of_failed(raw + "x") == "acme"
    assert store.tenant_of_failed("mp-unknown-x") is None


def test_revoke(store: ApiKeyStore) -> None:
    key_id, raw = store.create("acme", "app")
    assert store.revoke(key_id) is True
    assert store.resolve(raw) is None
    assert store.revoke(key_id) is False
    assert store.revoke("nope") is False
    (info,) = store.list()
    assert info.key_id == key_id and not info.active


def test_list_by_tenant_never_has_secrets(store: ApiKeyStore) -> None:
    store.create("acme", "app")
    store.create("globex", "admin")
    assert [k.tenant for k in store.list("acme")] == ["acme"]
    assert len(store.list()) == 2
    assert not hasattr(store.list()[0], "key_hash")


def test_unknown_role_is_refused(store: ApiKeyStore) -> None:
    with pytest.raises(ValueError):
        store.create("acme", "root")


def test_parse_key_id() -> None:
    assert parse_key_id("mp-abc123-s3cr-et") == "abc123"
    assert parse_key_id("mp-abc123") is None
