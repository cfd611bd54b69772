"""An auth failure is audited with the key id of the failing key (public), never its secret."""

from __future__ import annotations

import json

from tests.proxy.conftest import Api
from tests.support.proxy import RunningProxy


def _secret(raw_key: str) -> str:
    return raw_key.split("-", 2)[2]


def test_revoked_key_failure_names_its_key_id(running: RunningProxy) -> None:
    key_id, raw = running.services.api_keys.create("audited-revoked", "app")
    running.services.api_keys.revoke(key_id)
    r = Api(running, raw).get("/models")
    assert r.status_code == 401
    entries, _ = running.services.audit.list("audited-revoked", 10, None)
    failures = [e for e in entries if e.action == "auth.failure"]
    assert len(failures) == 1
    assert failures[0].key_id == key_id
    assert _secret(raw) not in json.dumps([e.to_dict() for e in entries])


def test_wrong_secret_failure_names_the_key_id_not_the_secret(running: RunningProxy) -> None:
    key_id, raw = running.services.api_keys.create("audited-wrong", "app")
    forged = f"mp-{key_id}-{'x' * 43}"
    r = Api(running, forged).get("/models")
    assert r.status_code == 401
    entries, _ = running.services.audit.list("audited-wrong", 10, None)
    assert [(e.action, e.key_id) for e in entries] == [("auth.failure", key_id)]
    dumped = json.dumps([e.to_dict() for e in entries])
    assert "x" * 43 not in dumped and _secret(raw) not in dumped
