"""Nothing of what users say reaches the disk in the clear: a canary written through chat write-back and
through the memory API is found in no file under MEMOS_DATA_DIR.

The proxy runs as a real `memos-proxy serve` process (default embeddings, debug logging captured into a
file inside the data dir), clients are the openai SDK and httpx, the upstream is the loopback fake. The
canaries are first proven to be stored and retrievable (search finds them, the chat injects them), then
every byte of every file under the data dir (database, WAL, LanceDB fragments and manifests, the log,
the key file, everything) is scanned for them in UTF-8/16/32, base64, hex and percent-encoding, both
while the proxy runs (WAL not yet checkpointed) and after it stopped.
"""

from __future__ import annotations

import random
import string

import httpx
import openai

from tests.support.bytescan import describe, files_under, scan
from tests.support.memory import until
from tests.support.proxy import ProxyProcess, proxy_env
from tests.support.upstream import FakeUpstream

MODEL = "gpt-4o-mini"
DEADLINE_S = 90.0


def _canary(rng: random.Random) -> str:
    # Letters only, so no tokenizer, redactor or stemmer splits it; long enough to be unique.
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(24))


def test_canaries_never_reach_the_disk_in_the_clear(tmp_path):
    rng = random.Random()
    api_canary, chat_canary = _canary(rng), _canary(rng)
    secrets = {
        "api canary": api_canary,
        "chat canary": chat_canary,
        # a stemmer or truncation would leave a prefix behind
        "api canary prefix": api_canary[:14],
        "chat canary prefix": chat_canary[:14],
    }
    data_dir = tmp_path / "data"
    with FakeUpstream() as upstream:
        env = proxy_env(data_dir, upstream.base_url, MEMOS_LOG_LEVEL="debug", MEMOS_ACCESS_LOG="true")
        with ProxyProcess(env) as proc:
            key = proc.create_key("acme", "admin")
            headers = {"Authorization": f"Bearer {key}"}
            api = httpx.Client(base_url=proc.base_url, headers=headers, timeout=60)
            client = openai.OpenAI(base_url=proc.base_url, api_key=key, max_retries=0)

            # 1. Through the memory API.
            reply = api.post(
                "/memories",
                json={
                    "user": "u1",
                    "memories": [
                        {"text": f"My locker password word is {api_canary}.", "metadata": {"k": api_canary}}
                    ],
                    "infer": False,
                },
            )
            assert reply.status_code == 200, reply.text

            # 2. Through chat write-back (streamed, so the SSE tee path is covered too).
            stream = client.chat.completions.create(
                model=MODEL,
                messages=[
                    {"role": "user", "content": f"Remember that my project codename is {chat_canary}."}
                ],
                stream=True,
                extra_headers={"X-Memos-User": "u1"},
            )
            assert chat_canary in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

            # Both are stored and retrievable: the write-back worker has processed the exchange.
            def found(canary: str) -> bool:
                hits = api.post("/memories/search", json={"user": "u1", "query": canary, "top_k": 20})
                assert hits.status_code == 200, hits.text
                return any(canary in h["memory"] for h in hits.json()["data"])

            until(lambda: found(api_canary), "the API canary is searchable", DEADLINE_S)
            until(lambda: found(chat_canary), "the chat canary is written back and searchable", DEADLINE_S)
            listed = api.get("/memories", params={"user": "u1", "limit": 100}).json()["data"]
            assert any(chat_canary in item["memory"] for item in listed)

            # 3. And injected into a later chat (the injection path handles them too).
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "What is my project codename and locker word?"}],
                extra_headers={"X-Memos-User": "u1"},
            )
            block = upstream.chat_requests[-1]["messages"][0]["content"]
            assert chat_canary in block or api_canary in block

            # The audit trail and the log exist (so they were scanned too) and hold no canary.
            audit = api.get("/audit", params={"limit": 1000}).json()["data"]
            assert audit and not any(c in str(audit) for c in (api_canary, chat_canary))
            assert proc.log_path.exists() and proc.log_path.stat().st_size > 0
            assert proc.log_path.parent == data_dir

            running_hits = scan(data_dir, secrets)
            assert not running_hits, describe(running_hits)
        stopped_hits = scan(data_dir, secrets)
        assert not stopped_hits, describe(stopped_hits)

    names = {p.name for p in files_under(data_dir)}
    assert "memos.db" in names and any(p.suffix == ".lance" for p in files_under(data_dir))
