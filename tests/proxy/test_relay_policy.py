"""Embeddings and the catch-all relay obey the same policy as chat: the key's `chat` right and the
tenant's `upstream.allowed_models`, refused before anything reaches the upstream."""

from __future__ import annotations

from typing import Any

import pytest

from memos.governance.policy import AclPolicy, Policy, UpstreamPolicy
from proxy.services import DefaultPolicies
from tests.proxy.conftest import Api
from tests.support.proxy import RunningProxy
from tests.support.upstream import FakeUpstream

EMBEDDINGS = ("/embeddings", {"model": "text-embedding-3-small", "input": "x"})
COMPLETIONS = ("/completions", {"model": "text-embedding-3-small", "prompt": "x"})
RESPONSES = ("/responses", {"model": "o1-pro", "input": "x"})


def set_policy(running: RunningProxy, **policy: Any) -> None:
    running.services.policies = DefaultPolicies({"acme": Policy(**policy)})


def allow(running: RunningProxy, *patterns: str) -> None:
    set_policy(running, upstream=UpstreamPolicy(allowed_models=list(patterns)))


@pytest.mark.parametrize(("path", "payload"), [EMBEDDINGS, COMPLETIONS, RESPONSES])
def test_a_model_outside_the_allow_list_is_refused(
    api: Api, running: RunningProxy, upstream: FakeUpstream, path: str, payload: dict[str, Any]
) -> None:
    allow(running, "gpt-4o*")
    r = api.post(path, payload)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "model_not_allowed"
    assert r.json()["error"]["type"] == "permission_error"
    assert upstream.requests == []


def test_allowed_models_still_pass(api: Api, running: RunningProxy, upstream: FakeUpstream) -> None:
    allow(running, "text-embedding-*", "gpt-4o*")
    assert api.post(*EMBEDDINGS).status_code == 200
    api.post("/completions", {"model": "gpt-4o-mini", "prompt": "x"})  # the fake has no such route
    assert [s.path for s in upstream.requests] == ["/v1/embeddings", "/v1/completions"]


def test_the_relay_checks_json_without_a_content_type(
    api: Api, running: RunningProxy, upstream: FakeUpstream
) -> None:
    allow(running, "gpt-4o*")
    r = api.post("/completions", content=b'{"model": "o1-pro", "prompt": "x"}', headers={"content-type": ""})
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    r = api.post("/completions", {"model": ["o1-pro"], "prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert upstream.requests == []


def test_bodies_without_a_model_are_relayed(api: Api, running: RunningProxy, upstream: FakeUpstream) -> None:
    allow(running, "gpt-4o*")
    api.post("/files", content=b"not json", headers={"content-type": "text/plain"})
    api.get("/files")
    assert [s.path for s in upstream.requests] == ["/v1/files", "/v1/files"]


@pytest.mark.parametrize(("path", "payload"), [EMBEDDINGS, COMPLETIONS, ("/files", None)])
def test_a_role_without_chat_may_not_spend_upstream(
    api: Api, running: RunningProxy, upstream: FakeUpstream, path: str, payload: dict[str, Any] | None
) -> None:
    set_policy(running, acl=AclPolicy(roles={"app": ["memory.read"]}))
    r = api.post(path, payload) if payload is not None else api.get(path)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "permission_denied"
    assert "'chat'" in r.json()["error"]["message"]
    assert upstream.requests == []


def test_a_user_bound_key_may_not_act_for_another_user(running: RunningProxy, upstream: FakeUpstream) -> None:
    api = Api(running, running.create_key("acme", "app", user="alice"))
    assert api.post(*EMBEDDINGS, headers={"X-Memos-User": "alice"}).status_code == 200
    for path, payload in (EMBEDDINGS, COMPLETIONS):
        r = api.post(path, payload, headers={"X-Memos-User": "bob"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    assert [s.path for s in upstream.requests] == ["/v1/embeddings"]
