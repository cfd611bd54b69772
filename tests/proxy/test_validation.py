"""Bad input at the HTTP edge: a clear 400 in the OpenAI envelope naming the field, and nothing changed.

One proxy (hash embeddings, so no model loads) in front of the fake upstream for the module; every
test uses its own users, so what one stores cannot hide what another checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from memos.limits import METADATA_MAX_DEPTH, METADATA_MAX_VALUES, USER_ID_MAX_CHARS
from proxy.wire import MAX_JSON_DEPTH, MAX_JSON_ITEMS
from tests.support.proxy import RunningProxy, proxy_stack
from tests.support.upstream import FakeUpstream

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeUpstream, RunningProxy]]:
    with proxy_stack(
        tmp_path_factory.mktemp("validation"), embedding_model="hash", key_cache_ttl_s=0
    ) as pair:
        yield pair


@pytest.fixture
def upstream(stack: tuple[FakeUpstream, RunningProxy]) -> FakeUpstream:
    stack[0].reset()
    return stack[0]


@pytest.fixture(scope="module")
def running(stack: tuple[FakeUpstream, RunningProxy]) -> RunningProxy:
    return stack[1]


@pytest.fixture(scope="module")
def admin(running: RunningProxy) -> Iterator[httpx.Client]:
    key = running.create_key("acme", "admin")
    with httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        yield c


def nested(depth: int, leaf: Any = 1) -> Any:
    """A value whose containers nest `depth` levels: nested(1) == {"a": 1}."""
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def nested_json(depth: int) -> str:
    """`nested(depth)` as JSON text (JSON encoders refuse to nest that deep themselves)."""
    return '{"a":' * depth + "1" + "}" * depth


def post_json_text(client: httpx.Client, path: str, text: str) -> httpx.Response:
    return client.post(path, content=text.encode(), headers={"content-type": "application/json"})


def assert_400(reply: httpx.Response, param: str | None) -> dict[str, Any]:
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    return error


def listed(admin: httpx.Client, user: str) -> list[str]:
    reply = admin.get("/v1/memories", params={"user": user})
    assert reply.status_code == 200, reply.text
    return [m["memory"] for m in reply.json()["data"]]


def add(admin: httpx.Client, user: str, **entry: Any) -> httpx.Response:
    return admin.post("/v1/memories", json={"user": user, "memories": [{"text": "A fact.", **entry}]})


# ---------------------------------------------------------------- JSON shape


def test_deep_metadata_is_refused_and_nothing_is_stored(admin: httpx.Client) -> None:
    body = '{"user": "deep-meta", "memories": [{"text": "A fact.", "metadata": ' + nested_json(300) + "}]}"
    error = assert_400(post_json_text(admin, "/v1/memories", body), "memories[0].metadata")
    assert str(MAX_JSON_DEPTH) in error["message"]
    assert listed(admin, "deep-meta") == []
    # Within the body limit but over the metadata limit: refused as well.
    assert_400(add(admin, "deep-meta", metadata=nested(METADATA_MAX_DEPTH + 1)), "memories[0].metadata")
    assert_400(
        add(admin, "deep-meta", metadata={"k": list(range(METADATA_MAX_VALUES))}), "memories[0].metadata"
    )
    assert listed(admin, "deep-meta") == []
    # At the limit it is stored, and the user's list and search still answer.
    assert add(admin, "deep-meta", metadata=nested(METADATA_MAX_DEPTH)).status_code == 200
    assert listed(admin, "deep-meta") == ["A fact."]
    search = admin.post("/v1/memories/search", json={"user": "deep-meta", "query": "fact"})
    assert search.status_code == 200 and search.json()["data"][0]["metadata"] == nested(METADATA_MAX_DEPTH)


def test_deep_patch_metadata_is_refused(admin: httpx.Client) -> None:
    (item,) = add(admin, "deep-patch").json()["data"]
    reply = admin.patch(f"/v1/memories/{item['id']}", json={"metadata": nested(METADATA_MAX_DEPTH + 1)})
    assert_400(reply, "metadata")
    assert admin.get(f"/v1/memories/{item['id']}").json()["version"] == 1


def test_vault_refuses_metadata_it_could_not_answer(running: RunningProxy) -> None:
    """Whatever reaches the vault past the edge: too deep to read back means never sealed."""
    from memos.item import Source
    from memos.storage.batch import NewMemory

    vault = running.services.memory.vault
    source = Source(request_id="r", message_index=0, session=None, metadata=nested(300))
    with pytest.raises(ValueError, match="metadata"):
        vault.add_many("acme", "vault-deep", [NewMemory(text="never stored", sources=[source])])
    items, _ = vault.list("acme", "vault-deep", 10, None)
    assert items == []


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 254, 300, 1000])
def test_deep_chat_body_is_a_400_before_the_upstream(
    admin: httpx.Client, upstream: FakeUpstream, depth: int
) -> None:
    # `nested(d)` under a top-level field makes the body d + 1 levels deep.
    body = orjson.dumps(CHAT).decode()[:-1] + ', "metadata_x": ' + nested_json(depth) + "}"
    reply = post_json_text(admin, "/v1/chat/completions", body)
    error = assert_400(reply, "metadata_x.a.a")
    assert f"deeper than {MAX_JSON_DEPTH} levels" in error["message"]
    assert upstream.requests == []


def test_chat_body_at_the_depth_limit_passes(admin: httpx.Client, upstream: FakeUpstream) -> None:
    reply = admin.post(
        "/v1/chat/completions",
        json={**CHAT, "metadata_x": nested(MAX_JSON_DEPTH - 1)},
        headers={"X-Memos-Memory": "off"},
    )
    assert reply.status_code == 200, reply.text
    assert upstream.chat_requests[-1]["metadata_x"] == nested(MAX_JSON_DEPTH - 1)


def test_deep_embeddings_and_relayed_bodies_are_400(admin: httpx.Client, upstream: FakeUpstream) -> None:
    reply = admin.post("/v1/embeddings", json={"model": "e", "input": "x", "extra": nested(100)})
    assert_400(reply, "extra.a.a")
    reply = admin.post("/v1/responses", json={"model": "gpt-4o-mini", "input": [nested(100)]})
    assert_400(reply, "input[0].a")
    assert upstream.requests == []


def test_too_many_members_in_one_array(admin: httpx.Client, upstream: FakeUpstream) -> None:
    reply = admin.post("/v1/chat/completions", json={**CHAT, "stop": [0] * (MAX_JSON_ITEMS + 1)})
    error = assert_400(reply, "stop")
    assert str(MAX_JSON_ITEMS) in error["message"]
    assert upstream.requests == []


# ---------------------------------------------------------------- times


@pytest.mark.parametrize(
    "observed_at",
    [
        "9999-12-31T23:00:00-05:00",
        "0001-01-01T01:00:00+05:00",
        "0999-12-31T23:59:59Z",
        1e18,
        -1e15,
        221845392000,
    ],
)
def test_observed_at_out_of_range(admin: httpx.Client, observed_at: Any) -> None:
    user = "times-out"
    assert_400(add(admin, user, observed_at=observed_at), "memories[0].observed_at")
    assert listed(admin, user) == []


def test_observed_at_at_the_edges_of_the_range(admin: httpx.Client) -> None:
    for value in ("1000-01-01T00:00:00+14:00", "8999-12-31T23:59:59-12:00", -30610224000):
        reply = add(admin, "times-edge", observed_at=value)
        assert reply.status_code == 200, reply.text
    search = admin.post("/v1/memories/search", json={"user": "times-edge", "query": "fact in January"})
    assert search.status_code == 200, search.text


def test_patch_times_out_of_range(admin: httpx.Client) -> None:
    (item,) = add(admin, "times-patch").json()["data"]
    for name in ("valid_from", "invalid_at", "expires_at", "observed_at"):
        reply = admin.patch(f"/v1/memories/{item['id']}", json={name: "9999-12-31T23:30:00-01:00"})
        assert_400(reply, name)
    assert admin.get(f"/v1/memories/{item['id']}").json()["version"] == 1


def test_patch_valid_from_after_invalid_at(admin: httpx.Client) -> None:
    (item,) = add(admin, "validity").json()["data"]
    path = f"/v1/memories/{item['id']}"
    both = {"valid_from": "2024-06-01T00:00:00Z", "invalid_at": "2024-01-01T00:00:00Z"}
    assert_400(admin.patch(path, json=both), "valid_from")
    # Against the stored value when only one side changes.
    assert admin.patch(path, json={"invalid_at": "2024-03-01T00:00:00Z"}).status_code == 200
    assert_400(admin.patch(path, json={"valid_from": "2024-04-01T00:00:00Z"}), "valid_from")
    assert admin.patch(path, json={"valid_from": "2024-02-01T00:00:00Z"}).status_code == 200
    assert_400(admin.patch(path, json={"invalid_at": "2024-01-15T00:00:00Z"}), "invalid_at")
    # Equal is allowed; clearing one side lifts the constraint.
    assert admin.patch(path, json={"invalid_at": "2024-02-01T00:00:00Z"}).status_code == 200
    assert (
        admin.patch(path, json={"invalid_at": None, "valid_from": "2030-01-01T00:00:00Z"}).status_code == 200
    )
    current = admin.get(path).json()
    assert current["invalid_at"] is None and current["valid_from"].startswith("2030-01-01")


# ---------------------------------------------------------------- cursors


@pytest.mark.parametrize("cursor", ["%C2%B2", "1" * 30, "-1", "1_0", "%20%31", "abc"])
def test_audit_cursor_is_checked(admin: httpx.Client, cursor: str) -> None:
    assert_400(admin.get(f"/v1/audit?cursor={cursor}"), "cursor")


def test_audit_cursor_round_trip(admin: httpx.Client) -> None:
    for fact in ("One audited fact.", "Another audited fact."):  # two entries at least, whatever ran first
        admin.post("/v1/memories", json={"user": "audit-pages", "memories": [fact]}).raise_for_status()
    page = admin.get("/v1/audit", params={"limit": 1}).json()
    assert page["next_cursor"] is not None
    assert admin.get("/v1/audit", params={"limit": 1, "cursor": page["next_cursor"]}).status_code == 200


@pytest.mark.parametrize(
    "cursor",
    [
        "czo5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OQ",  # "s:" and 30 digits
        "czotMQ",  # "s:-1"
        "%C2%B2",
        "x" * 300,
        "not base64!",
    ],
)
def test_memory_list_cursor_is_checked(admin: httpx.Client, cursor: str) -> None:
    assert_400(admin.get(f"/v1/memories?user=cursor-user&cursor={cursor}"), "cursor")


def test_memory_list_cursor_round_trip(admin: httpx.Client) -> None:
    admin.post("/v1/memories", json={"user": "pages", "memories": ["One fact.", "Another fact."]})
    page = admin.get("/v1/memories", params={"user": "pages", "limit": 1}).json()
    assert page["next_cursor"]
    rest = admin.get("/v1/memories", params={"user": "pages", "cursor": page["next_cursor"]})
    assert rest.status_code == 200 and len(rest.json()["data"]) == 1


# ---------------------------------------------------------------- user ids


BAD_USERS = [
    pytest.param("x" * (USER_ID_MAX_CHARS + 1), id="too-long"),
    pytest.param("x" * 100_000, id="100KB"),
    pytest.param("al\x00ice", id="NUL"),
    pytest.param("bob\n", id="newline"),
    pytest.param("\x85", id="C1"),
    pytest.param("", id="empty"),
    pytest.param(" \t ", id="whitespace"),
    pytest.param(7, id="number"),
]


@pytest.mark.parametrize("user", BAD_USERS)
def test_bad_user_in_chat_is_a_400(admin: httpx.Client, upstream: FakeUpstream, user: Any) -> None:
    assert_400(admin.post("/v1/chat/completions", json={**CHAT, "user": user}), "user")
    assert upstream.requests == []


@pytest.mark.parametrize("user", BAD_USERS)
def test_bad_user_in_the_memory_api_is_a_400(admin: httpx.Client, user: Any) -> None:
    assert_400(admin.post("/v1/memories", json={"user": user, "memories": ["A fact."]}), "user")
    assert_400(admin.post("/v1/memories/search", json={"user": user, "query": "fact"}), "user")
    if isinstance(user, str) and len(user) < 1000:  # (a 100 KB query string is refused by the HTTP server)
        assert_400(admin.get("/v1/memories", params={"user": user}), "user")
        assert_400(admin.delete("/v1/memories", params={"user": user}), "user")


def test_longest_user_works_everywhere(admin: httpx.Client, upstream: FakeUpstream) -> None:
    user = "u" * USER_ID_MAX_CHARS
    reply = admin.post(
        "/v1/chat/completions", json={**CHAT, "user": user}, headers={"X-Memos-Memory": "read"}
    )
    assert reply.status_code == 200, reply.text
    assert add(admin, user).status_code == 200
    assert listed(admin, user) == ["A fact."]
    assert admin.delete("/v1/memories", params={"user": user}).status_code == 200
    assert listed(admin, user) == []


def test_user_header_is_utf8(admin: httpx.Client, running: RunningProxy, upstream: FakeUpstream) -> None:
    name = "zoë-日本"
    raw = name.encode("utf-8")
    reply = admin.post("/v1/memories", json={"memories": ["Zoë likes tea."]}, headers={"X-Memos-User": raw})
    assert reply.status_code == 200, reply.text
    assert reply.json()["data"][0]["user"] == name
    assert listed(admin, name) == ["Zoë likes tea."]  # the same user as in a query (and a body)
    # A key bound to that user may chat as it through the header.
    bound = running.create_key("acme", "user", user=name)
    reply = httpx.post(
        running.base_url + "/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {bound}", "X-Memos-User": raw, "X-Memos-Memory": "off"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    # A percent-encoded header is not decoded: it names another user, whom this key may not act for.
    reply = httpx.post(
        running.base_url + "/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {bound}", "X-Memos-User": "zo%C3%AB-%E6%97%A5%E6%9C%AC"},
        timeout=30,
    )
    assert reply.status_code == 403, reply.text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/memories"])
def test_user_header_that_is_not_utf8(admin: httpx.Client, upstream: FakeUpstream, path: str) -> None:
    body = CHAT if path.endswith("completions") else {"memories": ["A fact."]}
    reply = admin.post(path, json=body, headers={"X-Memos-User": b"zo\xeb"})  # latin-1, not UTF-8
    assert_400(reply, "X-Memos-User")
    assert upstream.requests == []


def test_user_query_that_is_not_utf8(admin: httpx.Client) -> None:
    assert_400(admin.get("/v1/memories?user=zo%EB"), "user")


def test_control_character_in_user_header(admin: httpx.Client) -> None:
    # C0 and DEL never get past the HTTP parser; a C1 control spelt in UTF-8 does, and is refused here.
    headers = {"X-Memos-User": "a\x85b".encode()}
    assert_400(admin.post("/v1/memories", json={"memories": ["A fact."]}, headers=headers), "X-Memos-User")


def test_empty_user_header_names_no_user(admin: httpx.Client) -> None:
    # Empty is absent: a chat goes through without memory, the memory API asks for a user.
    reply = admin.post("/v1/chat/completions", json=CHAT, headers={"X-Memos-User": ""})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-memos-memory-mode"] == "off"
    no_user = admin.post("/v1/memories", json={"memories": ["A fact."]}, headers={"X-Memos-User": ""})
    assert_400(no_user, "user")


# ---------------------------------------------------------------- methods


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/memories", {"GET", "POST", "DELETE"}),
        ("OPTIONS", "/v1/memories", {"GET", "POST", "DELETE"}),
        ("PUT", "/v1/memories/search", {"POST"}),  # never read as a memory id
        ("PUT", f"/v1/memories/mem_{'0' * 28}", {"GET", "PATCH", "DELETE"}),
        ("POST", f"/v1/memories/mem_{'a' * 28}/history", {"GET"}),
        ("POST", "/v1/audit", {"GET"}),
        ("POST", "/openapi.json", {"GET"}),
        ("DELETE", "/healthz", {"GET"}),
    ],
)
def test_405_carries_allow(admin: httpx.Client, method: str, path: str, allowed: set[str]) -> None:
    reply = admin.request(method, path)
    assert reply.status_code == 405, reply.text
    assert reply.json()["error"]["code"] == "method_not_allowed"
    assert {m.strip() for m in reply.headers["allow"].split(",")} - {"HEAD"} == allowed


# ---------------------------------------------------------------- what backs the edge up


def test_upstream_body_deeper_than_orjson_is_still_encoded() -> None:
    from proxy.upstream.http import encode_body

    body = {"model": "m", "x": nested(300)}
    assert orjson.loads(encode_body(body)) == body
    assert encode_body({"a": [1, "é"]}) == orjson.dumps({"a": [1, "é"]})


def test_cursor_pattern_admits_exactly_the_vaults_cursors() -> None:
    import re

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from memos.storage.vault import decode_cursor, encode_cursor
    from proxy.memory_wire import CURSOR_MAX_CHARS, CURSOR_PATTERN

    pattern = re.compile(CURSOR_PATTERN)
    for seq in [0, 1, 9, 10, 99, 100, 12345, 2**31, 10**18 - 1]:
        assert pattern.fullmatch(encode_cursor(seq)) and len(encode_cursor(seq)) <= CURSOR_MAX_CHARS

    @settings(max_examples=300, deadline=None)
    @given(st.from_regex(pattern, fullmatch=True))
    def decodes(cursor: str) -> None:
        assert len(cursor) <= CURSOR_MAX_CHARS
        if cursor:  # empty: the first page
            assert 0 <= decode_cursor(cursor) < 10**18

    decodes()


def test_openapi_states_the_enforced_limits(admin: httpx.Client) -> None:
    from memos.limits import NOT_BLANK_PATTERN, USER_ID_PATTERN, YEAR_PATTERN
    from proxy.memory_wire import PATCH_FIELDS

    doc = admin.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    user = schemas["SearchMemories"]["properties"]["user"]["anyOf"][0]
    assert (user["minLength"], user["maxLength"], user["pattern"]) == (1, USER_ID_MAX_CHARS, USER_ID_PATTERN)
    entry = schemas["MemoryEntry"]["properties"]
    text = entry["text"]["anyOf"][0]
    assert text["minLength"] == 1 and text["pattern"] == NOT_BLANK_PATTERN
    changes, rollback = schemas["PatchMemory"]["oneOf"]
    assert set(changes["properties"]) - {"user"} == PATCH_FIELDS - {"rollback_to"}
    assert set(rollback["properties"]) == {"rollback_to", "user"}
    assert entry["observed_at"]["anyOf"][0]["oneOf"][0]["pattern"] == YEAR_PATTERN
    assert f"{METADATA_MAX_DEPTH} levels" in entry["metadata"]["anyOf"][0]["description"]
    assert f"at most {MAX_JSON_DEPTH} levels" in doc["info"]["description"]
    header = next(
        p for p in doc["paths"]["/v1/memories"]["post"]["parameters"] if p["name"] == "X-Memos-User"
    )
    assert header["schema"]["pattern"] == USER_ID_PATTERN and "UTF-8" in header["description"]


def test_patch_state_of_the_wrong_type_is_a_400(admin: httpx.Client) -> None:
    (item,) = add(admin, "state-type").json()["data"]
    for state in ({}, [], 3, None):
        assert_400(admin.patch(f"/v1/memories/{item['id']}", json={"state": state}), "state")
    assert_400(admin.patch(f"/v1/memories/{item['id']}", json={"rollback_to": None}), "rollback_to")


def test_blank_text_in_any_dialect_is_a_400(admin: httpx.Client) -> None:
    # U+001C counts as whitespace to Python (str.strip) though not to JSON Schema's regex dialect
    assert_400(
        admin.post("/v1/memories", json={"user": "blank", "memories": [{"text": "\x1c "}]}),
        "memories[0].text",
    )
    (item,) = add(admin, "blank").json()["data"]
    assert_400(admin.patch(f"/v1/memories/{item['id']}", json={"text": "\x1c\u3000"}), "text")


# ---------------------------------------------------------------- the wire models


def test_chat_request_reads_its_fields_and_leaves_the_body_as_sent() -> None:
    import copy

    from proxy.wire import ChatRequest

    messages = [{"content": "be brief", "role": "system"}, {"role": "user", "content": "hi", "name": "x"}]
    body = {
        "model": "gpt-4o-mini",
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True, "future_option": 1},
        "user": "alice",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "unknown_field": {"nested": [1, 2]},
    }
    sent = copy.deepcopy(body)
    chat = ChatRequest(body)
    assert (chat.model, chat.stream, chat.include_usage, chat.user) == ("gpt-4o-mini", True, True, "alice")
    assert all(a is b for a, b in zip(chat.messages, messages, strict=True))  # the client's own objects
    assert body == sent and list(body["messages"][0]) == ["content", "role"]  # untouched, key order too
    bare = ChatRequest({"model": "m", "messages": [], "stream": None, "stream_options": None, "user": None})
    assert (bare.stream, bare.include_usage, bare.user) == (None, False, None)


def test_a_validation_error_names_its_first_field() -> None:
    from proxy.errors import ApiError
    from proxy.memory_wire import AddMemories, PatchMemory
    from proxy.wire import parse

    def refused(model: Any, data: dict[str, Any]) -> ApiError:
        with pytest.raises(ApiError) as info:
            parse(model, data)
        assert info.value.status == 400
        return info.value

    body = {"memories": ["A fact.", {"text": "a"}, {"text": "b"}, {"text": 5, "metadata": []}]}
    error = refused(AddMemories, body)
    assert (error.param, error.code) == ("memories[3].text", "invalid_type")
    assert error.message == "Invalid type for 'memories[3].text': expected a string, but got number."
    error = refused(AddMemories, {"memories": [{"messages": [{"role": "user", "content": {}}]}]})
    assert error.param == "memories[0].messages[0].content"
    error = refused(PatchMemory, {"txet": "typo"})
    assert (error.param, error.code, error.message) == (
        "txet",
        "unknown_parameter",
        "Unknown parameter: 'txet'.",
    )
    error = refused(PatchMemory, {"rollback_to": 2, "text": "b"})
    assert (error.param, error.code) == ("rollback_to", "invalid_value")
    error = refused(PatchMemory, {"user": "u"})
    assert error.param is None and error.message.startswith("Nothing to change: give at least one of")
    # Never the value itself: a message names the field and the kind of problem.
    secret = "my password is hunter2 " * 3
    for data in ({"text": [secret]}, {"state": secret}, {"importance": secret}, {"expires_at": secret}):
        assert secret.strip() not in refused(PatchMemory, data).message


def test_the_models_hold_each_limit_at_the_constant() -> None:
    from memos import MAX_ENTRIES, METADATA_MAX_VALUES, USER_ID_MAX_CHARS
    from proxy.errors import ApiError
    from proxy.memory_wire import (
        MAX_LIMIT,
        MAX_QUERY_CHARS,
        MAX_TOP_K,
        MAX_VERSION,
        AddMemories,
        ListQuery,
        PatchMemory,
        SearchMemories,
    )
    from proxy.wire import parse

    cases: list[tuple[Any, dict[str, Any], dict[str, Any], str]] = [
        (AddMemories, {"memories": ["x"] * MAX_ENTRIES}, {"memories": ["x"] * (MAX_ENTRIES + 1)}, "memories"),
        (
            SearchMemories,
            {"query": "q" * MAX_QUERY_CHARS},
            {"query": "q" * (MAX_QUERY_CHARS + 1)},
            "query",
        ),
        (SearchMemories, {"query": "q", "top_k": MAX_TOP_K}, {"query": "q", "top_k": MAX_TOP_K + 1}, "top_k"),
        (SearchMemories, {"query": "q", "top_k": 1}, {"query": "q", "top_k": 0}, "top_k"),
        (
            SearchMemories,
            {"query": "q", "user": "u" * USER_ID_MAX_CHARS},
            {"query": "q", "user": "u" * (USER_ID_MAX_CHARS + 1)},
            "user",
        ),
        (ListQuery, {"limit": str(MAX_LIMIT)}, {"limit": str(MAX_LIMIT + 1)}, "limit"),
        (PatchMemory, {"rollback_to": MAX_VERSION}, {"rollback_to": MAX_VERSION + 1}, "rollback_to"),
        (PatchMemory, {"importance": 1}, {"importance": 1.01}, "importance"),
        (
            PatchMemory,
            {"metadata": {str(i): i for i in range(METADATA_MAX_VALUES)}},
            {"metadata": {str(i): i for i in range(METADATA_MAX_VALUES + 1)}},
            "metadata",
        ),
    ]
    for model, at_the_limit, past_it, param in cases:
        parse(model, at_the_limit)
        with pytest.raises(ApiError) as info:
            parse(model, past_it)
        assert info.value.param == param, (model, param)
    # Booleans are not integers, numeric strings and integral floats still are (as before).
    assert parse(SearchMemories, {"query": "q", "top_k": "5"}).top_k == 5
    assert parse(SearchMemories, {"query": "q", "top_k": 5.0}).top_k == 5
    with pytest.raises(ApiError):
        parse(SearchMemories, {"query": "q", "top_k": True})


def test_text_longer_than_the_limit_is_refused_after_redaction(admin: httpx.Client) -> None:
    from memos import MAX_TEXT_CHARS

    assert add(admin, "long-text", text="x" * MAX_TEXT_CHARS).status_code == 200
    assert_400(add(admin, "long-text", text="y" * (MAX_TEXT_CHARS + 1)), "memories[0].text")
    (item,) = add(admin, "long-patch").json()["data"]
    assert_400(admin.patch(f"/v1/memories/{item['id']}", json={"text": "z" * (MAX_TEXT_CHARS + 1)}), "text")
