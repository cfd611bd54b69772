"""What one abusive client costs everyone else: a 10,000-message chat, and 2,000 wrong keys.

    .venv/bin/python bench/abuse.py            # both; bench/results/abuse.json
    .venv/bin/python bench/abuse.py --messages 2000 --guesses 500

Processes: `memos-proxy serve` (default embeddings and reader, memory on) on a fresh data dir in
front of bench/latency.py's raw-asyncio upstream; this process is the client (httpx).

- huge chat: user `hugo` sends one chat of `--messages` user turns, each a distinct fact (all of it
  new, so all of it is the exchange to write back); right after it, `--others` users send one
  ordinary chat each.
  Reported: how long until every other user's fact is findable (do they wait behind the huge one?),
  how long until the outbox is empty, how many memories `hugo` ends with, and the proxy's peak RSS.
- wrong keys: `--guesses` requests from one address as fast as one connection sends them, half with
  random keys, half naming the real key's id with a wrong secret. Reported: how many answered 401 and
  how many 429 (back-off), how many audit entries the tenant gained, and what the real key gets from
  the same address right after (429 while the address backs off).

Never asserts: it prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import BIN, MODEL, free_port, spawn, start_upstream, stop_all, wait_http, wait_idle

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "abuse.json"


def start_proxy(workdir: Path, upstream_port: int) -> tuple[subprocess.Popen[bytes], int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMOS_")}
    env.update(
        MEMOS_DATA_DIR=str(workdir / "data"),
        MEMOS_UPSTREAM_BASE_URL=f"http://127.0.0.1:{upstream_port}/v1",
        MEMOS_UPSTREAM_API_KEY="sk-bench",
        MEMOS_LOG_LEVEL="warning",
    )

    def key(role: str) -> str:
        made = subprocess.run(
            [str(BIN / "memos-proxy"), "keys", "create", "--tenant", "bench", "--role", role],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return made.stdout.strip().splitlines()[-1]

    app, admin = key("app"), key("admin")
    port = free_port()
    log = workdir / "proxy.log"
    proc = spawn([str(BIN / "memos-proxy"), "serve", "--host", "127.0.0.1", "--port", str(port)], env, log)
    wait_http(port, "/healthz", proc, 120, log)
    wait_idle(proc.pid)
    return proc, port, app, admin


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def all_pages(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a cursor-paged list (GET /v1/memories, GET /v1/audit)."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.get(path, params={**params, "limit": 1000, **({"cursor": cursor} if cursor else {})})
        page.raise_for_status()
        body = page.json()
        items.extend(body["data"])
        cursor = body.get("next_cursor")
        if not cursor:
            return items


def memories_of(client: httpx.Client, user: str) -> int:
    return len(all_pages(client, "/v1/memories", user=user))


def findable(client: httpx.Client, user: str, text: str) -> bool:
    """A memory of `user` holds the fact's number (the reader may reword the rest)."""
    found = client.post("/v1/memories/search", json={"user": user, "query": text, "top_k": 5}).json()
    code = text.rstrip(".").rsplit(" ", 1)[1]
    return any(code in hit["memory"] for hit in found.get("data", []))


def huge_chat(port: int, app: str, admin: str, pid: int, messages: int, others: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    chat = httpx.Client(base_url=base, headers={"authorization": f"Bearer {app}"}, timeout=600)
    api = httpx.Client(base_url=base, headers={"authorization": f"Bearer {admin}"}, timeout=600)
    # Every message a new user turn (a pasted log, say): all of it is the exchange to write back.
    turns = [
        {"role": "user", "content": f"Remember that locker {n} holds box code zq{n:05d}x."}
        for n in range(messages)
    ]
    started = time.perf_counter()
    answer = chat.post(
        "/v1/chat/completions",
        headers={"x-memos-user": "hugo"},
        json={"model": MODEL, "messages": turns},
    )
    huge_answered_s = time.perf_counter() - started
    told = {}
    for i in range(others):
        user = f"other-{i}"
        told[user] = f"My bicycle lock code is {1000 + i}."
        chat.post(
            "/v1/chat/completions",
            headers={"x-memos-user": user},
            json={"model": MODEL, "messages": [{"role": "user", "content": told[user]}]},
        ).raise_for_status()
    after_others = time.perf_counter()
    waiting = dict(told)
    others_findable_s = None
    deadline = after_others + 900
    while waiting and time.perf_counter() < deadline:
        for user, text in list(waiting.items()):
            if findable(api, user, text):
                del waiting[user]
        if not waiting:
            others_findable_s = round(time.perf_counter() - after_others, 2)
        else:
            time.sleep(0.2)
    hugo_before = memories_of(api, "hugo")
    # The outbox is empty once hugo's count stops moving and the proxy is idle.
    idle_s = wait_idle(pid, 900.0)
    drained_s = round(time.perf_counter() - started, 1)
    return {
        "messages": len(turns),
        "huge_status": answer.status_code,
        "huge_answered_s": round(huge_answered_s, 2),
        "others": others,
        "others_findable_s": others_findable_s,
        "others_never_findable": len(waiting),
        "hugo_memories_when_others_done": hugo_before,
        "hugo_memories": memories_of(api, "hugo"),
        "idle_after_s": idle_s,
        "drained_s": drained_s,
        "proxy_peak_rss_mb": peak_rss_mb(pid),
    }


def wrong_keys(port: int, app: str, admin: str, guesses: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    api = httpx.Client(base_url=base, headers={"authorization": f"Bearer {admin}"}, timeout=60)

    def audit_entries() -> int:
        return len(all_pages(api, "/v1/audit"))

    before = audit_entries()
    key_id = app.split("-")[1]
    statuses: dict[int, int] = {}
    retry_after: set[str] = set()
    started = time.perf_counter()
    with httpx.Client(base_url=base, timeout=60) as guesser:
        for n in range(guesses):
            wrong = f"mp-{key_id}-{secrets.token_urlsafe(32)}" if n % 2 else f"mp-{secrets.token_hex(6)}-x"
            r = guesser.post(
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {wrong}"},
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            )
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if "retry-after" in r.headers:
                retry_after.add(r.headers["retry-after"])
    elapsed = time.perf_counter() - started
    # The back-off's audit entries are written per window: give the window time to close.
    time.sleep(2)
    real = httpx.post(
        f"{base}/v1/chat/completions",
        headers={"authorization": f"Bearer {app}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    return {
        "guesses": guesses,
        "per_second": round(guesses / elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "retry_after_values": sorted(retry_after)[:5],
        "audit_entries_added": audit_entries() - before,
        "real_key_same_address_status": real.status_code,  # 429 while that address backs off
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--others", type=int, default=20)
    parser.add_argument("--guesses", type=int, default=2_000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="memos-abuse-") as tmp:
        workdir = Path(tmp)
        try:
            up_proc, up_port = start_upstream(workdir)
            procs.append(up_proc)
            proc, port, app, admin = start_proxy(workdir, up_port)
            procs.append(proc)
            huge = huge_chat(port, app, admin, proc.pid, args.messages, args.others)
            keys = wrong_keys(port, app, admin, args.guesses)
        finally:
            stop_all(procs)
    result = {"machine": {"cpus": os.cpu_count()}, "huge_chat": huge, "wrong_keys": keys}
    for name, row in (("huge chat", huge), ("wrong keys", keys)):
        print(f"{name}:")
        for k, v in row.items():
            print(f"  {k:<34} {v}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
