"""Property-based isolation over the running proxy (memory API and chat injection).

Hypothesis draws a key (two tenants; roles admin, app, readonly, user-bound, an app key restricted by
the tenant policy to some users, a user-role key bound to nobody), an operation (list, search, get,
history, add, patch, delete, chat with injection), a user and a memory id from either tenant. Every
memory text carries its true place (`note <tenant> <user>`), so whatever comes back (API answers, the
memory block the upstream receives) can be checked against the key's rights:

- nothing of another tenant ever appears, and another tenant's ids answer 404;
- a key restricted to some users never sees, changes or deletes memories of any other user;
- a readonly key never writes.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.proxy import RunningProxy, proxy_settings, run_proxy
from tests.support.upstream import FakeUpstream

TENANTS = ("t1", "t2")
USERS = ("u1", "u2", "u3")
MARK = re.compile(r"note (t\d) (u\d)")
MODEL = "gpt-4o-mini"


@dataclass(frozen=True)
class Key:
    name: str
    tenant: str
    raw: str
    users: frozenset[str]  # who it may act for
    writes: bool
    bound: str | None = None

    def __repr__(self) -> str:  # hypothesis prints this on failure
        return f"Key({self.name})"


@dataclass
class World:
    upstream: FakeUpstream
    proxy: RunningProxy
    keys: list[Key]
    ids: dict[str, tuple[str, str]]  # memory id -> (tenant, user)
    seeded: list[str]  # the ids made at the start (what hypothesis draws from: a fixed list)
    admin: dict[str, str]
    counter: itertools.count


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp("isolation")
    with FakeUpstream() as upstream:
        settings_ = proxy_settings(data_dir, upstream.base_url, key_cache_ttl_s=0, embedding_model="hash")
        with run_proxy(settings_) as proxy:
            api_keys = proxy.services.api_keys
            keys: list[Key] = []
            admin: dict[str, str] = {}
            policy_lines: dict[str, list[str]] = {}
            for tenant in TENANTS:
                every = frozenset(USERS)
                raw_admin = api_keys.create(tenant, "admin")[1]
                admin[tenant] = raw_admin
                keys.append(Key(f"{tenant}-admin", tenant, raw_admin, every, True))
                keys.append(Key(f"{tenant}-app", tenant, api_keys.create(tenant, "app")[1], every, True))
                keys.append(Key(f"{tenant}-ro", tenant, api_keys.create(tenant, "readonly")[1], every, False))
                for user in ("u1", "u2"):
                    raw = api_keys.create(tenant, "user", bound_user=user)[1]
                    keys.append(Key(f"{tenant}-user-{user}", tenant, raw, frozenset({user}), True, user))
                restricted_id, raw = api_keys.create(tenant, "app")
                keys.append(Key(f"{tenant}-app-u1u2", tenant, raw, frozenset({"u1", "u2"}), True))
                keys.append(
                    Key(
                        f"{tenant}-user-nobody", tenant, api_keys.create(tenant, "user")[1], frozenset(), True
                    )
                )
                policy_lines[tenant] = [f"acl:\n  key_users:\n    {restricted_id}: [u1, u2]\n"]
            policy_dir = proxy.settings.resolved_policy_dir
            policy_dir.mkdir(parents=True, exist_ok=True)
            for tenant, lines in policy_lines.items():
                (policy_dir / f"{tenant}.yaml").write_text("".join(lines))
            proxy.services.policies.reload()
            assert not proxy.services.policies.errors()

            ids: dict[str, tuple[str, str]] = {}
            with httpx.Client(base_url=proxy.base_url, timeout=30) as client:
                for tenant in TENANTS:
                    for user in USERS:
                        reply = client.post(
                            "/memories",
                            headers={"Authorization": f"Bearer {admin[tenant]}"},
                            json={
                                "user": user,
                                "memories": [
                                    {"text": f"note {tenant} {user} likes gardening and tea number {n}"}
                                    for n in range(3)
                                ],
                            },
                        )
                        assert reply.status_code == 200, reply.text
                        for item in reply.json()["data"]:
                            ids[item["id"]] = (tenant, user)
            yield World(upstream, proxy, keys, ids, sorted(ids), admin, itertools.count())


def _marks(payload: object) -> set[tuple[str, str]]:
    return set(MARK.findall(str(payload)))


def _check_visible(key: Key, user: str | None, payload: object) -> None:
    """Everything a key got to see belongs to its tenant and to a user it may act for."""
    for tenant, owner in _marks(payload):
        assert tenant == key.tenant, f"{key} saw tenant {tenant}'s memory"
        assert owner in key.users, f"{key} saw {owner}'s memory"
        if user is not None:
            assert owner == user, f"{key} asked for {user} and got {owner}'s memory"


OPS = ("list", "search", "get", "history", "add", "patch", "delete", "chat")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_call_crosses_a_tenant_or_a_user_boundary(world: World, data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(world.keys), label="key")
    op = data.draw(st.sampled_from(OPS), label="op")
    asked = data.draw(st.sampled_from((*USERS, None)), label="user")
    memory_id = data.draw(st.sampled_from(world.seeded), label="memory id")
    effective = asked if asked is not None else key.bound
    may_act = effective is not None and effective in key.users
    headers = {"Authorization": f"Bearer {key.raw}"}
    owner_tenant, owner = world.ids[memory_id]
    visible_id = owner_tenant == key.tenant and owner in key.users

    n = next(world.counter)
    importance = round(0.1 + (n % 800) / 1000, 3)  # unique per example: a foreign patch would show

    def as_owner(client: httpx.Client) -> httpx.Response:
        return client.get(
            f"/memories/{memory_id}", headers={"Authorization": f"Bearer {world.admin[owner_tenant]}"}
        )

    with httpx.Client(base_url=world.proxy.base_url, headers=headers, timeout=30) as client:
        before = as_owner(client)
        params = {"user": asked} if asked is not None else {}
        if op == "list":
            r = client.get("/memories", params={**params, "limit": 100})
        elif op == "search":
            r = client.post("/memories/search", json={**params, "query": "gardening tea note", "top_k": 50})
        elif op == "get":
            r = client.get(f"/memories/{memory_id}")
        elif op == "history":
            r = client.get(f"/memories/{memory_id}/history")
        elif op == "add":
            text = (
                f"note {key.tenant} {effective} added {n}" if effective else f"note {key.tenant} u0 added {n}"
            )
            r = client.post("/memories", json={**params, "memories": [{"text": text}]})
        elif op == "patch":
            r = client.patch(f"/memories/{memory_id}", json={"importance": importance})
        elif op == "delete":
            r = client.delete(f"/memories/{memory_id}")
        else:
            world.upstream.reset()
            r = client.post(
                "/chat/completions",
                headers={"X-Memos-User": asked or "", "X-Memos-Memory": "read"},
                json={"model": MODEL, "messages": [{"role": "user", "content": "gardening tea note"}]},
            )

        assert r.status_code < 500, r.text
        if r.status_code == 200:
            _check_visible(key, effective if op in ("list", "search", "add", "chat") else None, r.json())

        if op in ("list", "search"):
            assert (r.status_code == 200) == may_act, (r.status_code, r.text)
        elif op in ("get", "history"):
            if not visible_id:
                assert r.status_code == 404, r.text  # another tenant's or user's id: not found
            elif before.status_code == 200:
                # Every key may read what it may see: isolation must not turn into over-denial.
                assert r.status_code == 200, r.text
                assert _marks(r.json()) <= {(owner_tenant, owner)}
        elif op in ("patch", "delete"):
            if not visible_id:
                assert r.status_code == 404, r.text
                # ... and the memory is untouched: its own tenant's admin still sees it as before.
                after = as_owner(client)
                assert after.status_code == before.status_code
                if after.status_code == 200:
                    assert after.json()["version"] == before.json()["version"]
                    assert after.json()["importance"] != importance
            if not key.writes:
                assert r.status_code in (403, 404), r.text
            elif visible_id and before.status_code == 200:
                assert r.status_code == 200, r.text  # its own user's live memory: the write goes through
        elif op == "add":
            if not (may_act and key.writes):
                assert r.status_code in (400, 403), r.text
            else:
                assert r.status_code == 200, r.text
                for item in r.json()["data"]:
                    assert item["user"] == effective
                    world.ids[item["id"]] = (key.tenant, effective)
        elif op == "chat":
            if asked is None and key.bound is None:
                assert r.status_code == 200  # a chat without a user: no memory at all
            if r.status_code == 200:
                sent = [b for b in world.upstream.chat_requests if b.get("model") == MODEL]
                assert sent, "the chat reached the upstream"
                block = sent[-1]["messages"]
                _check_visible(key, effective, block)
                if not may_act:
                    assert not _marks(block)
