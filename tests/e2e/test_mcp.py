"""/mcp: the memory API as MCP tools, end to end with the `mcp` SDK's own client (its streamable HTTP
transport, in both of its protocol eras) against the real proxy over loopback.

- the tools are listed with descriptions and input schemas whose limits are the REST API's constants;
- add, search, get, update, history, list and delete through the tools, each audited exactly like its
  REST twin (the same sequence through REST gives the same audit entries), never a memory's text;
- a user-bound key reaches only its user: another user's search is refused, another user's memory is
  not found (tool errors, with the REST error's envelope);
- bad input, unknown tools and unknown arguments are tool errors naming the argument; a missing or
  unknown key is a 401 in the API's error envelope before MCP is spoken at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from proxy.memory_wire import MAX_LIMIT, MAX_QUERY_CHARS, MAX_TOP_K, MEMORY_ID_PATTERN
from tests.support.proxy import RunningProxy, proxy_stack
from tests.support.upstream import FakeUpstream

TOOLS = {
    "search_memories",
    "add_memory",
    "list_memories",
    "get_memory",
    "update_memory",
    "delete_memory",
    "memory_history",
}
SECRET = "Ola keeps the spare key under the blue flowerpot."


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeUpstream, RunningProxy]]:
    with proxy_stack(tmp_path_factory.mktemp("mcp"), embedding_model="hash", key_cache_ttl_s=0) as stack:
        yield stack


@pytest.fixture(scope="module")
def admin(running: RunningProxy) -> str:
    return running.create_key("acme", "admin")


@asynccontextmanager
async def mcp_client(
    running: RunningProxy, key: str, *, request_id: str | None = None, mode: str = "auto"
) -> AsyncIterator[Client]:
    """The SDK's client on /mcp with `key`; `request_id` is sent as x-request-id on every call."""
    headers = {"Authorization": f"Bearer {key}"}
    if request_id is not None:
        headers["x-request-id"] = request_id
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(f"{running.url}/mcp", http_client=http), mode=mode) as client,
    ):
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def refused(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool error: its text is the REST error's message, its structured content the envelope."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    error = result.structured_content["error"]
    assert result.content[0].text == error["message"]
    return error


def audit_of(running: RunningProxy, admin: str, request_id: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = httpx.get(
            f"{running.base_url}/audit",
            params={"limit": 1000, **({"cursor": cursor} if cursor else {})},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert page.status_code == 200, page.text
        entries += [e for e in page.json()["data"] if e["request_id"] == request_id]
        cursor = page.json()["next_cursor"]
        if not cursor:
            return entries


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_tools_are_listed_with_schemas_an_agent_can_use(
    running: RunningProxy, key: str, mode: str
) -> None:
    async with mcp_client(running, key, mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 40
        schema = tool.input_schema
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert all(
            p.get("description") or p.get("enum") or p.get("type") for p in schema["properties"].values()
        )
        reads = {"search_memories", "list_memories", "get_memory", "memory_history"}
        assert tool.annotations is not None and tool.annotations.read_only_hint == (tool.name in reads)
    search = tools["search_memories"].input_schema
    assert search["required"] == ["query"] and "user" in search["properties"]
    assert search["properties"]["query"]["maxLength"] == MAX_QUERY_CHARS
    assert search["properties"]["top_k"]["maximum"] == MAX_TOP_K
    assert tools["list_memories"].input_schema["properties"]["limit"]["maximum"] == MAX_LIMIT
    for name in ("get_memory", "update_memory", "delete_memory", "memory_history"):
        schema = tools[name].input_schema
        assert "memory_id" in schema["required"]
        assert schema["properties"]["memory_id"]["pattern"] == MEMORY_ID_PATTERN
    update = tools["update_memory"].input_schema["properties"]
    assert {"text", "metadata", "importance", "state", "rollback_to"} <= set(update)
    assert tools["delete_memory"].annotations.destructive_hint is True  # type: ignore[union-attr]


async def test_each_tool_does_and_audits_what_its_rest_twin_does(
    running: RunningProxy, key: str, admin: str
) -> None:
    # Through MCP, for user "mcp-ola".
    async with mcp_client(running, key, request_id="req_mcp_lifecycle") as client:
        added = await call(client, "add_memory", user="mcp-ola", text=SECRET, metadata={"via": "agent"})
        (memory,) = added["data"]
        memory_id = memory["id"]
        assert memory["memory"] == SECRET and memory["user"] == "mcp-ola" and memory["version"] == 1
        hits = (await call(client, "search_memories", user="mcp-ola", query="where is the spare key"))["data"]
        assert hits[0]["id"] == memory_id and hits[0]["score"] > 0
        got = await call(client, "get_memory", memory_id=memory_id)
        assert got["memory"] == SECRET and got["metadata"] == {"via": "agent"}
        updated = await call(client, "update_memory", memory_id=memory_id, text="The spare key is gone.")
        assert updated["version"] == 2 and updated["memory"] == "The spare key is gone."
        history = (await call(client, "memory_history", memory_id=memory_id))["data"]
        assert [v["version"] for v in history] == [1, 2]
        listed = await call(client, "list_memories", user="mcp-ola", limit=10)
        assert [m["id"] for m in listed["data"]] == [memory_id] and listed["has_more"] is False
        deleted = await call(client, "delete_memory", memory_id=memory_id)
        assert deleted == {"id": memory_id, "object": "memory.deleted", "deleted": True}
        gone = await refused(client, "get_memory", memory_id=memory_id)
        assert gone["code"] == "not_found"

    # The same calls through REST, for user "rest-ola".
    async with httpx.AsyncClient(
        base_url=running.base_url,
        headers={"Authorization": f"Bearer {key}", "x-request-id": "req_rest_lifecycle"},
    ) as rest:
        entry = {"text": SECRET, "metadata": {"via": "agent"}}
        added = await rest.post("/memories", json={"user": "rest-ola", "memories": [entry]})
        rest_id = added.json()["data"][0]["id"]
        calls = [
            rest.post("/memories/search", json={"user": "rest-ola", "query": "where is the spare key"}),
            rest.get(f"/memories/{rest_id}"),
            rest.patch(f"/memories/{rest_id}", json={"text": "The spare key is gone."}),
            rest.get(f"/memories/{rest_id}/history"),
            rest.get("/memories", params={"user": "rest-ola", "limit": 10}),
            rest.delete(f"/memories/{rest_id}"),
        ]
        for pending in calls:  # one after the other, in this order
            assert (await pending).is_success
        assert (await rest.get(f"/memories/{rest_id}")).status_code == 404

    def shape(entries: list[dict[str, Any]], user: str, memory: str) -> list[tuple[Any, ...]]:
        return [
            (e["action"], e["key_id"], e["user"] == user, [i == memory for i in e["memory_ids"]], e["detail"])
            for e in entries
        ]

    via_mcp = audit_of(running, admin, "req_mcp_lifecycle")
    via_rest = audit_of(running, admin, "req_rest_lifecycle")
    assert [e["action"] for e in via_mcp] == [
        "memory.write",
        "memory.read",
        "memory.read",
        "memory.update",
        "memory.read",
        "memory.read",
        "memory.delete",
    ]
    assert shape(via_mcp, "mcp-ola", memory_id) == shape(via_rest, "rest-ola", rest_id)
    assert "spare key" not in str(via_mcp)  # ids and counts, never text


async def test_a_user_bound_key_reaches_only_its_user(running: RunningProxy, key: str) -> None:
    async with mcp_client(running, key) as client:
        bobs = (await call(client, "add_memory", user="bob", text="Bob's locker code is 4711."))["data"][0][
            "id"
        ]
        await call(client, "add_memory", user="ola", text="Ola drinks jasmine tea.")
    ola_key = running.create_key("acme", "app", user="ola")
    async with mcp_client(running, ola_key) as client:
        own = (await call(client, "search_memories", query="tea"))["data"]  # the key's user: ola
        assert own and {h["user"] for h in own} == {"ola"}
        denied = await refused(client, "search_memories", user="bob", query="locker code")
        assert denied["type"] == "permission_error" and denied["code"] == "permission_denied"
        assert (await refused(client, "list_memories", user="bob"))["code"] == "permission_denied"
        assert (await refused(client, "add_memory", user="bob", text="Bob likes me."))[
            "code"
        ] == "permission_denied"
        # Another user's memory is not found (a bound key cannot probe which ids exist).
        for tool in ("get_memory", "memory_history", "delete_memory"):
            assert (await refused(client, tool, memory_id=bobs))["code"] == "not_found", tool
        assert (await refused(client, "update_memory", memory_id=bobs, text="x"))["code"] == "not_found"
    async with mcp_client(running, key) as client:
        assert (await call(client, "get_memory", memory_id=bobs))["memory"] == "Bob's locker code is 4711."


async def test_bad_input_is_a_tool_error_naming_the_argument(running: RunningProxy, key: str) -> None:
    async with mcp_client(running, key) as client:
        blank = await refused(client, "add_memory", user="ola", text="   ")
        assert blank["param"] == "text" and blank["code"] == "invalid_value"
        too_many = await refused(client, "search_memories", user="ola", query="tea", top_k=MAX_TOP_K + 1)
        assert too_many["param"] == "top_k" and f"at most {MAX_TOP_K}" in too_many["message"]
        assert (await refused(client, "search_memories", query="tea"))["param"] == "user"  # nobody named
        unknown = await refused(client, "search_memories", user="ola", query="tea", topk=3)
        assert unknown["param"] == "topk" and unknown["code"] == "unknown_parameter"
        assert (await refused(client, "get_memory", memory_id="mem_nope"))["param"] == "memory_id"
        memory_id = (await call(client, "add_memory", user="ola", text="Ola lives in Lyon."))["data"][0]["id"]
        nothing = await refused(client, "update_memory", memory_id=memory_id)
        assert nothing["message"].startswith("Nothing to change")
        both = await refused(client, "update_memory", memory_id=memory_id, rollback_to=1, text="x")
        assert both["param"] == "rollback_to"
        assert (await refused(client, "forget_everything"))["code"] == "unknown_tool"


def test_no_key_no_mcp(running: RunningProxy, tmp_path: Path) -> None:
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Accept": "application/json, text/event-stream"}
    for auth in ({}, {"Authorization": "Bearer sk-memos-nope"}, {"Authorization": "Basic Zm9vOmJhcg=="}):
        answer = httpx.post(f"{running.url}/mcp", json=listing, headers={**headers, **auth})
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["type"] == "authentication_error"
        assert answer.headers["x-request-id"]
    # No sessions: no standalone stream to open, none to end.
    assert httpx.get(f"{running.url}/mcp").status_code == 405
    assert httpx.delete(f"{running.url}/mcp").status_code == 405


def counted(running: RunningProxy) -> dict[str, float]:
    text = httpx.get(f"{running.url}/metrics").text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("memos_mcp_tool_calls_total{")
    }


async def test_tool_calls_are_counted(running: RunningProxy, key: str) -> None:
    ok = 'memos_mcp_tool_calls_total{outcome="ok",tenant="acme",tool="list_memories"}'
    bad = 'memos_mcp_tool_calls_total{outcome="unknown_tool",tenant="acme",tool="unknown"}'
    before = counted(running)
    async with mcp_client(running, key) as client:
        await call(client, "list_memories", user="ola")
        await refused(client, "no_such_tool")
    after = counted(running)
    assert after[ok] == before.get(ok, 0) + 1
    assert after[bad] == before.get(bad, 0) + 1  # a tool name the client made up is not a label
