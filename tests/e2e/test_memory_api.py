"""The memory REST API end to end: a running proxy on loopback, real HTTP, the real vault.

Most tests use the dependency-free hash embedder (fast); one runs the default all-MiniLM-L6-v2.
"""

from __future__ import annotations

import httpx
import pytest

from memos.governance.audit import AuditLog


def _client(running, key: str) -> httpx.Client:
    return httpx.Client(base_url=running.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


@pytest.fixture
def api(proxy):
    running = proxy(embedding_model="hash")
    with _client(running, running.create_key("acme", "admin")) as client:
        client.running = running  # type: ignore[attr-defined]
        yield client


def _add(api: httpx.Client, user: str, *texts: str, **extra) -> list[dict]:
    reply = api.post(
        "/memories",
        json={
            "user": user,
            "memories": [{"text": t, "metadata": {"n": i}} for i, t in enumerate(texts)],
            **extra,
        },
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


def test_add_then_search_reads_its_writes(api: httpx.Client) -> None:
    items = _add(api, "alice", "Alice adopted a greyhound named Comet", "Alice's sister lives in Porto")
    assert [i["memory"] for i in items] == [
        "Alice adopted a greyhound named Comet",
        "Alice's sister lives in Porto",
    ]
    assert items[0]["user"] == "alice" and items[0]["version"] == 1 and items[0]["state"] == "active"
    assert items[0]["sources"][0]["metadata"] == {"n": 0}
    hits = api.post(
        "/memories/search", json={"user": "alice", "query": "greyhound Comet", "top_k": 5}
    ).json()["data"]
    assert hits[0]["id"] == items[0]["id"]
    assert hits[0]["memory"] == "Alice adopted a greyhound named Comet"
    assert hits[0]["sources"][0]["metadata"] == {"n": 0}
    assert isinstance(hits[0]["score"], float)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_messages_entries_and_observed_at(api: httpx.Client) -> None:
    reply = api.post(
        "/memories",
        json={
            "user": "bob",
            "memories": [
                {
                    "messages": [{"role": "user", "content": "I started learning the cello"}],
                    "observed_at": "2023-05-08T13:56:00Z",
                    "metadata": {"dia_id": "D1:3"},
                }
            ],
            "infer": False,
        },
    )
    assert reply.status_code == 200, reply.text
    item = reply.json()["data"][0]
    assert item["memory"] == "I started learning the cello"
    assert item["observed_at"].startswith("2023-05-08T13:56:00")
    hits = api.post("/memories/search", json={"user": "bob", "query": "cello"}).json()["data"]
    assert hits[0]["sources"][0]["metadata"] == {"dia_id": "D1:3"}


def test_list_with_cursor(api: httpx.Client) -> None:
    ids = [i["id"] for i in _add(api, "carol", *[f"carol memory {n}" for n in range(5)])]
    seen, cursor = [], None
    while True:
        params = {"user": "carol", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/memories", params=params).json()
        seen += [i["id"] for i in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


def test_get_patch_history_rollback_delete(api: httpx.Client) -> None:
    (item,) = _add(api, "dave", "Dave lives in Oslo")
    mid = item["id"]
    assert api.get(f"/memories/{mid}").json()["memory"] == "Dave lives in Oslo"
    patched = api.patch(f"/memories/{mid}", json={"text": "Dave lives in Bergen", "importance": 0.9}).json()
    assert patched["version"] == 2 and patched["memory"] == "Dave lives in Bergen"
    assert patched["importance"] == 0.9
    history = api.get(f"/memories/{mid}/history").json()["data"]
    assert [(h["version"], h["memory"]) for h in history] == [
        (1, "Dave lives in Oslo"),
        (2, "Dave lives in Bergen"),
    ]
    rolled = api.patch(f"/memories/{mid}", json={"rollback_to": 1}).json()
    assert rolled["version"] == 3 and rolled["memory"] == "Dave lives in Oslo"
    hits = api.post("/memories/search", json={"user": "dave", "query": "Oslo"}).json()["data"]
    assert hits[0]["id"] == mid
    archived = api.patch(f"/memories/{mid}", json={"state": "archived"}).json()
    assert archived["state"] == "archived"
    assert api.post("/memories/search", json={"user": "dave", "query": "Oslo"}).json()["data"] == []
    api.patch(f"/memories/{mid}", json={"state": "active"})
    gone = api.delete(f"/memories/{mid}")
    assert gone.status_code == 200 and gone.json() == {"id": mid, "object": "memory.deleted", "deleted": True}
    assert api.get(f"/memories/{mid}").status_code == 404
    assert api.get(f"/memories/{mid}/history").status_code == 404
    assert api.delete(f"/memories/{mid}").status_code == 404
    assert api.post("/memories/search", json={"user": "dave", "query": "Oslo"}).json()["data"] == []


def test_erase_user(api: httpx.Client) -> None:
    _add(api, "erin", "Erin's bike is teal", "Erin plays chess")
    _add(api, "frank", "Frank's bike is teal")
    reply = api.delete("/memories", params={"user": "erin"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["deleted"] is True and body["counts"]["MemVault"] == 2
    assert api.get("/memories", params={"user": "erin"}).json()["data"] == []
    assert api.post("/memories/search", json={"user": "erin", "query": "bike"}).json()["data"] == []
    assert len(api.post("/memories/search", json={"user": "frank", "query": "bike"}).json()["data"]) == 1


def test_tenant_boundary_answers_404(api: httpx.Client) -> None:
    (item,) = _add(api, "gina", "Gina's secret recipe uses saffron")
    running = api.running  # type: ignore[attr-defined]
    with _client(running, running.create_key("globex", "admin")) as other:
        assert other.get(f"/memories/{item['id']}").status_code == 404
        assert other.patch(f"/memories/{item['id']}", json={"text": "x"}).status_code == 404
        assert other.delete(f"/memories/{item['id']}").status_code == 404
        assert other.get(f"/memories/{item['id']}/history").status_code == 404
        assert other.post("/memories/search", json={"user": "gina", "query": "saffron"}).json()["data"] == []
    assert api.get(f"/memories/{item['id']}").status_code == 200


def test_user_bound_key_sees_only_its_user(api: httpx.Client) -> None:
    (mine,) = _add(api, "hana", "Hana collects stamps")
    (theirs,) = _add(api, "ivan", "Ivan collects coins")
    running = api.running  # type: ignore[attr-defined]
    with _client(running, running.create_key("acme", "user", user="hana")) as bound:
        assert bound.get(f"/memories/{mine['id']}").status_code == 200
        assert bound.get(f"/memories/{theirs['id']}").status_code == 404
        assert bound.post("/memories/search", json={"user": "ivan", "query": "coins"}).status_code == 403
        # the bound user is the default user
        hits = bound.post("/memories/search", json={"query": "stamps"}).json()["data"]
        assert [h["id"] for h in hits] == [mine["id"]]
    with _client(running, running.create_key("acme", "readonly")) as ro:
        assert ro.get(f"/memories/{mine['id']}").status_code == 200
        assert ro.delete(f"/memories/{mine['id']}").status_code == 403
        assert ro.post("/memories", json={"user": "hana", "memories": [{"text": "x"}]}).status_code == 403


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/memories", {"user": "u"}, "memories"),
        ("/memories", {"user": "u", "memories": []}, "memories"),
        ("/memories", {"user": "u", "memories": [{}]}, "memories[0]"),
        ("/memories", {"user": "u", "memories": [{"text": 3}]}, "memories[0].text"),
        ("/memories", {"user": "u", "memories": [{"text": "a", "metadata": []}]}, "memories[0].metadata"),
        (
            "/memories",
            {"user": "u", "memories": [{"text": "a", "observed_at": "yesterday"}]},
            "memories[0].observed_at",
        ),
        (
            "/memories",
            {"user": "u", "memories": [{"messages": [{"content": "x"}]}]},
            "memories[0].messages[0]",
        ),
        ("/memories", {"user": 5, "memories": [{"text": "a"}]}, "user"),
        ("/memories", {"memories": [{"text": "a"}]}, "user"),
        ("/memories", {"user": "u", "memories": [{"text": "a"}], "infer": "yes"}, "infer"),
        ("/memories/search", {"user": "u"}, "query"),
        ("/memories/search", {"user": "u", "query": "q", "top_k": 0}, "top_k"),
        ("/memories/search", {"user": "u", "query": "q", "top_k": "many"}, "top_k"),
    ],
)
def test_bad_input_names_the_field(api: httpx.Client, path: str, body: dict, param: str) -> None:
    reply = api.post(path, json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert reply.headers.get("x-request-id")


def test_bad_query_params_and_patch(api: httpx.Client) -> None:
    assert api.get("/memories", params={"user": "u", "limit": "0"}).json()["error"]["param"] == "limit"
    assert api.get("/memories", params={"user": "u", "cursor": "nope"}).json()["error"]["param"] == "cursor"
    assert api.delete("/memories").json()["error"]["param"] == "user"
    (item,) = _add(api, "jo", "Jo likes tea")
    mid = item["id"]
    assert api.patch(f"/memories/{mid}", json={}).status_code == 400
    assert api.patch(f"/memories/{mid}", json={"state": "deleted"}).json()["error"]["param"] == "state"
    assert api.patch(f"/memories/{mid}", json={"importance": 3}).json()["error"]["param"] == "importance"
    assert api.patch(f"/memories/{mid}", json={"bogus": 1}).json()["error"]["param"] == "bogus"
    assert api.patch(f"/memories/{mid}", json={"rollback_to": 9}).json()["error"]["param"] == "rollback_to"
    assert api.get("/memories/mem_doesnotexist").status_code == 404


def test_unauthenticated_is_401(api: httpx.Client) -> None:
    running = api.running  # type: ignore[attr-defined]
    reply = httpx.get(f"{running.base_url}/memories", params={"user": "u"})
    assert reply.status_code == 401


def test_redaction_before_storage(api: httpx.Client) -> None:
    (item,) = _add(api, "kim", "Kim's email is kim.lee@example.com")
    assert "kim.lee@example.com" not in item["memory"]


def test_audit_names_ids_and_never_text(api: httpx.Client) -> None:
    (item,) = _add(api, "lou", "Lou's passport number is in the drawer")
    api.post("/memories/search", json={"user": "lou", "query": "passport"})
    api.delete(f"/memories/{item['id']}")
    running = api.running  # type: ignore[attr-defined]
    audit: AuditLog = running.services.audit
    entries, _ = audit.list("acme", 100, None)
    actions = [(e.action, e.memory_ids) for e in entries]
    assert ("memory.write", [item["id"]]) in actions
    assert ("memory.read", [item["id"]]) in actions
    assert ("memory.delete", [item["id"]]) in actions
    assert not any("passport" in str(e.to_dict()) for e in entries)


def test_openapi_document_covers_the_memory_api(api: httpx.Client) -> None:
    running = api.running  # type: ignore[attr-defined]
    doc = httpx.get(f"{running.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in (
        "/v1/memories",
        "/v1/memories/search",
        "/v1/memories/{memory_id}",
        "/v1/memories/{memory_id}/history",
    ):
        assert path in doc["paths"]
    assert set(doc["paths"]["/v1/memories"]) >= {"get", "post", "delete"}
    assert set(doc["paths"]["/v1/memories/{memory_id}"]) >= {"get", "patch", "delete"}


def test_infer_true_goes_through_the_reader(api: httpx.Client) -> None:
    reply = api.post(
        "/memories",
        json={
            "user": "max",
            "memories": [{"messages": [{"role": "user", "content": "hi! I live in Lyon."}]}],
            "infer": True,
        },
    )
    assert reply.status_code == 200, reply.text
    texts = [i["memory"] for i in reply.json()["data"]]
    assert texts and all("hi!" not in t for t in texts)
    assert any("Lyon" in t for t in texts)


def test_default_minilm_embeddings(proxy) -> None:
    running = proxy()
    with _client(running, running.create_key("acme", "app")) as client:
        _add(client, "nia", "My daughter's birthday party is on Saturday", "I repaired the garden fence")
        hits = client.post(
            "/memories/search", json={"user": "nia", "query": "when is the kid's celebration?"}
        )
        assert hits.status_code == 200, hits.text
        assert hits.json()["data"][0]["memory"] == "My daughter's birthday party is on Saturday"
