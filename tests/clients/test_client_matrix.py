"""The client matrix: every popular client gets memory with nothing changed but its base URL and key.

Each row is a real client library, used as its own docs show it, against the real proxy (in front of
the loopback fake upstream, tests/support/upstream.py). It tells a fact in one chat, the proxy writes
it back (waited for through the memory API, with a deadline), and a later chat of the same user,
through the same client, reaches the upstream with that fact in the memory block: read from the
request body the fake upstream received, never from the client's own view. The user is named as the
README tells users of that client to name it (the body's `user` where the client sends it, a
user-bound key, or X-Memos-User where the client drops `user`, as the litellm SDK does).

Rows: openai-python (chat, structured output with `chat.completions.parse`, streaming, a user-bound
key, `responses.create`), openai-node (chat, streaming), the Vercel AI SDK (`openai(model)`, which
calls /v1/responses, streamed and not; `openai.chat(model)`), LangChain's ChatOpenAI (Chat Completions
and `use_responses_api=True`), LlamaIndex's OpenAI LLM, the litellm SDK, curl, and the request Open WebUI
sends with its user-forwarding headers. The Node rows run with the machine's `node`
(tests/clients/conftest.py; skipped, saying why, without one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import BaseModel

from tests.support.memory import remembered
from tests.support.proxy import RunningProxy, proxy_stack
from tests.support.upstream import FakeUpstream

MODEL = "gpt-4o-mini"
CHAT_PATH, RESPONSES_PATH = "/v1/chat/completions", "/v1/responses"
NODE_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeUpstream, RunningProxy]]:
    data_dir = tmp_path_factory.mktemp("client-matrix")
    (data_dir / "policies").mkdir()
    (data_dir / "policies" / f"{OPEN_WEBUI_TENANT}.yaml").write_text(OPEN_WEBUI_POLICY)
    with proxy_stack(
        data_dir,
        embedding_model="hash",
        key_cache_ttl_s=0,
        worker_poll_interval_s=0.02,
        worker_batch_window_ms=0,
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
def key(running: RunningProxy) -> str:
    """The tenant's app key: what a server-side app holds for all its users."""
    return running.create_key("acme", "app")


# ---------------------------------------------------------------------------------------------- rows
# Each row sends one user turn and returns the answer's text: (base_url, key, user, text) -> str. A row
# on a user-bound key gets that key and does not name the user at all.


def openai_chat(base_url: str, key: str, user: str, text: str) -> str:
    with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        completion = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": text}], user=user
        )
    return completion.choices[0].message.content or ""


class Reply(BaseModel):
    reply: str


def openai_parse(base_url: str, key: str, user: str, text: str) -> str:
    # `safety_identifier`: what OpenAI now asks apps to send in place of `user`.
    with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        completion = client.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": text}],
            response_format=Reply,
            safety_identifier=user,
        )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Reply)
    return parsed.reply


def openai_stream(base_url: str, key: str, user: str, text: str) -> str:
    with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": text}],
            stream=True,
            stream_options={"include_usage": True},
            user=user,
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def openai_bound_key(base_url: str, key: str, user: str, text: str) -> str:
    with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}])
    return completion.choices[0].message.content or ""


def openai_responses(base_url: str, key: str, user: str, text: str) -> str:
    with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        response = client.responses.create(model=MODEL, input=text, user=user)
    return response.output_text


def langchain_chat(base_url: str, key: str, user: str, text: str, *, responses: bool = False) -> str:
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(
        model=MODEL, base_url=base_url, api_key=key, max_retries=0, use_responses_api=responses
    )
    return str(model.invoke(text, user=user).text)


def langchain_responses(base_url: str, key: str, user: str, text: str) -> str:
    return langchain_chat(base_url, key, user, text, responses=True)


def llamaindex_chat(base_url: str, key: str, user: str, text: str) -> str:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai import OpenAI

    llm = OpenAI(model=MODEL, api_base=base_url, api_key=key, max_retries=0, additional_kwargs={"user": user})
    return llm.chat([ChatMessage(role="user", content=text)]).message.content or ""


def litellm_completion(base_url: str, key: str, user: str, text: str) -> str:
    # Its model cost map is read from the package, not fetched (the proxy's own adapter does the same).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    # litellm's openai/ provider drops `user=`: the user is named by header, as the README says.
    response = litellm.completion(
        model=f"openai/{MODEL}",
        api_base=base_url,
        api_key=key,
        messages=[{"role": "user", "content": text}],
        extra_headers={"X-Memos-User": user},
        num_retries=0,
    )
    return response.choices[0].message.content or ""


def curl(base_url: str, key: str, user: str, text: str) -> str:
    """The README's curl line: the user in X-Memos-User."""
    binary = shutil.which("curl")
    if binary is None:
        pytest.skip("the curl row needs curl on PATH")
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}]})
    headers = [f"Authorization: Bearer {key}", "Content-Type: application/json", f"X-Memos-User: {user}"]
    done = subprocess.run(
        [binary, "-sS", "--fail-with-body", f"{base_url}/chat/completions", "--data-binary", "@-"]
        + [arg for header in headers for arg in ("-H", header)],
        input=body,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return orjson.loads(done.stdout)["choices"][0]["message"]["content"]


# What Open WebUI sends to an OpenAI connection with ENABLE_FORWARD_USER_INFO_HEADERS=true: a streamed
# chat with no `user`, and its user in these headers (the id is a UUID, the name URL-quoted). Open
# WebUI itself (a full web application) is not run here; its request is, byte for byte in what
# matters to the proxy, and the tenant's policy names the header as the README's recipe does.
OPEN_WEBUI_TENANT = "webui"
OPEN_WEBUI_POLICY = "identity:\n  headers: [X-OpenWebUI-User-Id]\n"


def open_webui_request(base_url: str, key: str, user: str, text: str) -> str:
    headers = {
        "Authorization": f"Bearer {key}",
        "X-OpenWebUI-User-Name": "Ola%20Nordmann",
        "X-OpenWebUI-User-Id": user,
        "X-OpenWebUI-User-Email": "ola@example.com",
        "X-OpenWebUI-User-Role": "user",
    }
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": True}
    out = []
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = orjson.loads(line.removeprefix("data: "))["choices"]
                out += [c["delta"].get("content") or "" for c in choices]
    return "".join(out)


def node_row(name: str) -> Callable[..., str]:
    def run(base_url: str, key: str, user: str, text: str, *, script: Path) -> str:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MEMOS_"))},
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": key,
            "MATRIX_USER": user,
            "MATRIX_TEXT": text,
        }
        done = subprocess.run(
            ["node", str(script), name],
            cwd=script.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 0, f"node {name} exited {done.returncode}:\n{done.stderr}"
        return done.stdout

    return run


@dataclass(frozen=True)
class Row:
    name: str
    send: Callable[..., str]
    path: str  # the upstream path it calls
    bound_key: bool = False
    node: bool = False
    tenant: str = "acme"


ROWS = [
    Row("openai-python-chat", openai_chat, CHAT_PATH),
    Row("openai-python-parse", openai_parse, CHAT_PATH),
    Row("openai-python-stream", openai_stream, CHAT_PATH),
    Row("openai-python-bound-key", openai_bound_key, CHAT_PATH, bound_key=True),
    Row("openai-python-responses", openai_responses, RESPONSES_PATH),
    Row("openai-node-chat", node_row("openai-node-chat"), CHAT_PATH, node=True),
    Row("openai-node-stream", node_row("openai-node-stream"), CHAT_PATH, node=True),
    Row("ai-sdk-default", node_row("ai-sdk-default"), RESPONSES_PATH, node=True),
    Row("ai-sdk-default-stream", node_row("ai-sdk-default-stream"), RESPONSES_PATH, node=True),
    Row("ai-sdk-chat", node_row("ai-sdk-chat"), CHAT_PATH, node=True),
    Row("langchain-chat", langchain_chat, CHAT_PATH),
    Row("langchain-responses", langchain_responses, RESPONSES_PATH),
    Row("llamaindex", llamaindex_chat, CHAT_PATH),
    Row("litellm-sdk", litellm_completion, CHAT_PATH),
    Row("curl", curl, CHAT_PATH),
    Row("open-webui-headers", open_webui_request, CHAT_PATH, tenant=OPEN_WEBUI_TENANT),
]


# ----------------------------------------------------------------------- what reached the upstream


def text_of(content: Any) -> str:
    """A message's or input item's text: a string, or its parts' text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def turns(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages (chat) or input items (responses) of a forwarded body."""
    items = body.get("messages")
    if items is None:
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
    return [item for item in items or [] if isinstance(item, dict)]


def system_text(body: dict[str, Any]) -> str:
    """Everything in the forwarded body that is not a user's, assistant's or tool's turn: the system and
    developer messages (input items), and the Responses API's `instructions`."""
    roles = ("system", "developer")
    parts = [text_of(item.get("content")) for item in turns(body) if item.get("role") in roles]
    if isinstance(body.get("instructions"), str):
        parts.append(body["instructions"])
    return "\n".join(parts)


def user_text(body: dict[str, Any]) -> str:
    return "\n".join(text_of(item.get("content")) for item in turns(body) if item.get("role") == "user")


def forwarded(upstream: FakeUpstream, path: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.body) for r in upstream.requests if r.path == path and r.body]


def structured_replies(body: dict[str, Any]) -> str:
    """The fake upstream's answer, as JSON when the client asks for structured output."""
    said = f"You said: {user_text(body).splitlines()[-1] if user_text(body) else ''}"
    if isinstance(body.get("response_format"), dict):
        return orjson.dumps({"reply": said}).decode()
    return said


# ------------------------------------------------------------------------------------------ the test


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_a_fact_told_in_one_chat_is_injected_into_a_later_one(
    row: Row, request: pytest.FixtureRequest, running: RunningProxy, key: str, upstream: FakeUpstream
) -> None:
    send = row.send
    if row.node:
        script = request.getfixturevalue("node_clients")

        def send(*args: str) -> str:
            return row.send(*args, script=script)

    upstream.responder = structured_replies
    user = f"{row.name}-user"
    colour = row.name.replace("-", " ")
    fact = f"My favourite colour is {colour}"
    question = "Which colour is my favourite colour?"
    if row.tenant != "acme":
        key = running.create_key(row.tenant, "app")
    client_key = running.create_key(row.tenant, "user", user=user) if row.bound_key else key

    answer = send(running.base_url, client_key, user, f"{fact}.")
    assert fact in answer  # the fake upstream's "You said: ...", through the client
    (first,) = forwarded(upstream, row.path)
    assert fact in user_text(first) and fact not in system_text(first)
    remembered(running, key, user, fact)

    upstream.requests.clear()
    send(running.base_url, client_key, user, question)
    (later,) = forwarded(upstream, row.path)
    assert question in user_text(later) and fact not in user_text(later)
    assert fact in system_text(later), f"no memory block in what {row.name} sent upstream: {later}"
