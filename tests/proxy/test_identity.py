"""Who the user is (proxy/identity.py), on every route that acts for one, and why memory did not run.

The order: X-Memos-User, a user-bound key, the body's `user`, `safety_identifier`, the body fields the
tenant policy names, the headers it names. A chat whose memory cannot run says why in
`x-memos-memory-reason` and is counted in `memos_memory_skipped_total`.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from memos.chat.contract import ChatContext, ChatMemory, FinishedExchange, MemoryPlan
from memos.governance.policy import AclPolicy, IdentityPolicy, MemoryPolicy, Policy
from proxy.services import DefaultPolicies
from tests.proxy.conftest import Api
from tests.support.proxy import RunningProxy
from tests.support.upstream import FakeUpstream

CHAT = "/chat/completions"
OPEN_WEBUI = "X-OpenWebUI-User-Id"


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra}


class Recorder:
    """The real chat memory, with the user each request was planned for recorded."""

    def __init__(self, inner: ChatMemory) -> None:
        self.inner = inner
        self.users: list[str | None] = []

    async def plan(self, ctx: ChatContext, body: dict[str, Any]) -> MemoryPlan:
        self.users.append(ctx.user)
        return await self.inner.plan(ctx, body)

    async def complete(self, ctx: ChatContext, plan: MemoryPlan, exchange: FinishedExchange) -> None:
        await self.inner.complete(ctx, plan, exchange)


@pytest.fixture
def seen(running: RunningProxy) -> Recorder:
    recorder = Recorder(running.services.chat_memory)
    running.services.chat_memory = recorder
    return recorder


def use_policy(running: RunningProxy, **fields: Any) -> None:
    running.services.policies = DefaultPolicies({"acme": Policy(**fields)})


NAMING = IdentityPolicy(body_fields=["prompt_cache_key"], headers=[OPEN_WEBUI])


def skipped(running: RunningProxy, reason: str) -> float:
    for line in httpx.get(running.url + "/metrics").text.splitlines():
        if line.startswith("memos_memory_skipped_total{") and f'reason="{reason}"' in line:
            if 'tenant="acme"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# Every source, and each one wins over those after it: (headers, body fields, the user).
ALL_SOURCES = (
    {"X-Memos-User": "h-user", OPEN_WEBUI: "owui-user"},
    {"user": "b-user", "safety_identifier": "s-user", "prompt_cache_key": "p-user"},
)


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        ((), "h-user"),
        (("X-Memos-User",), "b-user"),
        (("X-Memos-User", "user"), "s-user"),
        (("X-Memos-User", "user", "safety_identifier"), "p-user"),
        (("X-Memos-User", "user", "safety_identifier", "prompt_cache_key"), "owui-user"),
        (("X-Memos-User", "user", "safety_identifier", "prompt_cache_key", OPEN_WEBUI), None),
    ],
)
def test_each_source_names_the_user_in_order(
    api: Api, running: RunningProxy, seen: Recorder, drop: tuple[str, ...], expected: str | None
) -> None:
    use_policy(running, identity=NAMING)
    headers = {k: v for k, v in ALL_SOURCES[0].items() if k not in drop}
    fields = {k: v for k, v in ALL_SOURCES[1].items() if k not in drop}
    r = api.post(CHAT, body(**fields), headers=headers)
    assert r.status_code == 200, r.text
    assert seen.users == [expected]
    assert ("x-memos-memory-reason" in r.headers) is (expected is None)


def test_policy_named_sources_count_only_when_the_policy_names_them(
    api: Api, running: RunningProxy, seen: Recorder
) -> None:
    r = api.post(CHAT, body(prompt_cache_key="p-user"), headers={OPEN_WEBUI: "owui-user"})
    assert r.status_code == 200 and seen.users == [None]
    assert r.headers["x-memos-memory-reason"] == "no_user" and r.headers["x-memos-memory-mode"] == "off"
    # A policy-named field that is not a string is the upstream's own field: not a user, not an error.
    use_policy(running, identity=NAMING)
    assert api.post(CHAT, body(prompt_cache_key=["x"])).status_code == 200 and seen.users[-1] is None


def test_the_sdk_fields_reach_the_upstream_untouched(
    api: Api, running: RunningProxy, upstream: FakeUpstream, seen: Recorder
) -> None:
    use_policy(running, identity=NAMING)
    sent = body(safety_identifier="s-user", prompt_cache_key="conv-1")
    assert api.post(CHAT, sent).status_code == 200
    forwarded = upstream.chat_requests[-1]
    assert (forwarded["safety_identifier"], forwarded["prompt_cache_key"]) == ("s-user", "conv-1")


def test_a_bound_key_wins_over_the_implicit_sources_and_refuses_other_explicit_users(
    running: RunningProxy, seen: Recorder
) -> None:
    use_policy(running, identity=NAMING)
    api = Api(running, running.create_key("acme", "user", user="alice"))
    implicit = body(safety_identifier="mallory", prompt_cache_key="mallory")
    assert api.post(CHAT, implicit, headers={OPEN_WEBUI: "mallory"}).status_code == 200
    assert seen.users == ["alice"]
    assert api.post(CHAT, body(user="alice"), headers={"X-Memos-User": "alice"}).status_code == 200
    for explicit in ({"headers": {"X-Memos-User": "mallory"}}, {"json": body(user="mallory")}):
        r = api.post(CHAT, explicit.get("json", body()), headers=explicit.get("headers"))
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"


@pytest.mark.parametrize(
    ("fields", "headers", "param"),
    [
        ({"safety_identifier": 5}, {}, "safety_identifier"),
        ({"safety_identifier": "x" * 300}, {}, "safety_identifier"),
        ({"safety_identifier": "\x00bad"}, {}, "safety_identifier"),
        ({"prompt_cache_key": "x" * 300}, {}, "prompt_cache_key"),
        ({}, {OPEN_WEBUI: "x" * 300}, OPEN_WEBUI),
        ({}, {OPEN_WEBUI: b"\xff\xfe"}, OPEN_WEBUI),  # not UTF-8
    ],
)
def test_a_source_that_is_used_must_be_a_valid_user_id(
    api: Api,
    running: RunningProxy,
    upstream: FakeUpstream,
    fields: dict[str, Any],
    headers: dict[str, str],
    param: str,
) -> None:
    use_policy(running, identity=NAMING)
    r = api.post(CHAT, body(**fields), headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert upstream.requests == []
    # An earlier source names the user: the later one is not read (it is the upstream's business).
    assert api.post(CHAT, body(**fields), headers={**headers, "X-Memos-User": "alice"}).status_code == 200


def test_embeddings_and_relayed_calls_act_for_the_same_user(
    running: RunningProxy, upstream: FakeUpstream
) -> None:
    key_id, raw = running.services.api_keys.create("acme", "app")
    # This key may act for alice only (acl.key_users); the user comes from the forwarded header.
    use_policy(running, identity=NAMING, acl=AclPolicy(key_users={key_id: ["alice"]}))
    api = Api(running, raw)
    embed = {"model": "text-embedding-3-small", "input": "hi"}
    assert api.post("/embeddings", embed, headers={OPEN_WEBUI: "alice"}).status_code == 200
    assert api.post("/embeddings", embed, headers={OPEN_WEBUI: "bob"}).status_code == 403
    relayed = {"model": "gpt-4o-mini", "prompt": "hi", "safety_identifier": "bob"}
    assert api.post("/completions", relayed).status_code == 403


def test_why_memory_did_not_run_is_said_and_counted(api: Api, running: RunningProxy) -> None:
    before = skipped(running, "no_user")
    r = api.post(CHAT, body())
    assert r.headers["x-memos-memory-reason"] == "no_user" and r.headers["x-memos-memory-mode"] == "off"
    r, lines = api.stream_lines(body(stream=True))
    assert r.headers["x-memos-memory-reason"] == "no_user" and lines[-1] == "data: [DONE]"
    assert skipped(running, "no_user") == before + 2
    # Turned off by the client: nothing to explain.
    r = api.post(CHAT, body(), headers={"X-Memos-Memory": "off"})
    assert "x-memos-memory-reason" not in r.headers
    # A named user with memory on: no reason.
    assert "x-memos-memory-reason" not in api.post(CHAT, body(user="alice")).headers
    # The policy turns memory off, or allows no mode that serves: `policy`.
    before = skipped(running, "policy")
    use_policy(running, memory=MemoryPolicy(inject=False, write=False))
    r = api.post(CHAT, body(user="alice"))
    assert r.headers["x-memos-memory-reason"] == "policy" and r.headers["x-memos-memory-mode"] == "off"
    use_policy(running, memory=MemoryPolicy(allowed_modes=["off"]))
    assert api.post(CHAT, body(user="alice")).headers["x-memos-memory-reason"] == "policy"
    assert skipped(running, "policy") == before + 2
    # A readonly key reads but is not written back: memory did not run as asked either.
    use_policy(running)
    readonly = Api(running, running.create_key("acme", "readonly"))
    r = readonly.post(CHAT, body(user="alice"))
    assert r.headers["x-memos-memory-reason"] == "policy" and r.headers["x-memos-memory-mode"] == "plaintext"
