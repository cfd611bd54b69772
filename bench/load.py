"""Closed-loop load: many concurrent clients, each its own user, memory off / read / on.

    .venv/bin/python bench/load.py                         # 1, 8, 32, 64 clients; bench/results/load.json
    .venv/bin/python bench/load.py --clients 8 32 --seconds 10
    .venv/bin/python bench/load.py --quick                 # a smoke run

Processes: this one is the load generator (uvloop; each client an `openai.AsyncOpenAI` of its own
with one keep-alive connection, so each client costs what a real one does; `--client httpx`: a bare
`httpx.AsyncClient`, the SDK's transport alone, the cheapest realistic client); a
minimal raw-asyncio upstream (bench/latency.py's, fixed answers) and `memos-proxy serve` (default
embeddings, all-MiniLM-L6-v2) are separate processes, so the generator's CPU is not the
proxy's. Before the run, `--users` users are seeded with `--memories` short memories each through
`POST /v1/memories` (infer: false).

For each mode and each client count, every client loops for `--seconds`: one chat, then the next, no
think time. Client i is user `load-user-<i>` (distinct users; the first `--users` have memories). Each
request carries a distinct turn: a question for `read` (a new query every time, so the query-embedding
cache never hits), a new fact followed by a question for `on` (so write-back has something to write).

Reported per row: requests per second, p50 / p95 / p99 latency, errors, how many requests ran with
memory (x-memos-memory-mode), how many skipped it *with* a reason (x-memos-memory-reason, e.g.
`overloaded`), how many skipped it silently (no reason: the number that must be zero), and the proxy's
CPU time per request (its process and children, from /proc). Between rows of `on` the proxy is let
finish its write-back (idle), so a row is not charged for the one before.

Never asserts on timings: it prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The sibling benchmark's upstream, client and process helpers.
from latency import (
    MODEL,
    cpu_seconds,
    percentiles,
    questions,
    start_memos,
    start_upstream,
    stop_all,
    told_texts,
    wait_idle,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "load.json"
MODES = ("off", "read", "on")


def user_of(client: int) -> str:
    return f"load-user-{client}"


def seed(port: int, key: str, users: int, per_user: int) -> dict[str, Any]:
    """`per_user` distinct memories for each of the first `users` users, batched."""
    import httpx

    texts = told_texts(per_user * users, seed=3)
    started = time.perf_counter()
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"authorization": f"Bearer {key}"}, timeout=600
    ) as client:
        for u in range(users):
            chunk = texts[u * per_user : (u + 1) * per_user]
            for start in range(0, len(chunk), 250):
                part = chunk[start : start + 250]
                answer = client.post(
                    "/v1/memories",
                    json={"user": user_of(u), "memories": [{"text": t} for t in part], "infer": False},
                )
                answer.raise_for_status()
    elapsed = time.perf_counter() - started
    return {"users": users, "per_user": per_user, "seconds": round(elapsed, 1)}


class Turns:
    """Distinct request turns for every (mode, clients) row: nothing is asked or told twice in a run
    (the templates give a few thousand distinct texts; a running number makes every one new)."""

    def __init__(self, seed: int) -> None:
        self._asked = questions(2000, seed=seed)
        self._told = told_texts(1000, seed=seed + 1)
        self._count = 0

    def messages(self, mode: str) -> list[dict[str, str]]:
        self._count += 1
        n = self._count
        system = {"role": "system", "content": "You are a helpful assistant."}
        question = f"{self._asked[n % len(self._asked)]} (question {n})"
        if mode == "on":
            told = f"{self._told[n % len(self._told)]} My reference number for that is {n}."
            # Both user turns are new (no assistant turn after them): the fact is written back.
            return [system, {"role": "user", "content": told}, {"role": "user", "content": question}]
        return [system, {"role": "user", "content": question}]


class _Client:
    """One simulated user: its own client with one keep-alive connection. `openai`: the openai SDK's
    AsyncOpenAI (what users run: request building, retries off, response parsing into models);
    `httpx`: a bare httpx.AsyncClient (the SDK's transport alone, the cheapest realistic client)."""

    def __init__(self, kind: str, port: int, key: str, mode: str, user: str) -> None:
        import httpx

        headers = {"x-memos-memory": mode, "x-memos-user": user}
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"authorization": f"Bearer {key}", **headers},
            limits=limits,
            timeout=120,
        )
        self._sdk = None
        if kind == "openai":
            import openai

            self._sdk = openai.AsyncOpenAI(
                base_url=f"http://127.0.0.1:{port}/v1",
                api_key=key,
                default_headers=headers,
                max_retries=0,
                timeout=120,
                http_client=self._http,
            )

    async def warm(self) -> None:
        await self._http.get("/healthz")

    async def chat(self, messages: list[dict[str, str]]) -> tuple[int, Any]:
        if self._sdk is None:
            answer = await self._http.post(
                "/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 16}
            )
            return answer.status_code, answer.headers
        import openai

        try:
            raw = await self._sdk.chat.completions.with_raw_response.create(
                model=MODEL, messages=messages, max_tokens=16  # type: ignore[arg-type]
            )
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.headers
        raw.parse()  # what a caller does with the answer
        return raw.status_code, raw.headers

    async def aclose(self) -> None:
        await self._http.aclose()


async def run_row(
    port: int, key: str, mode: str, clients: int, seconds: float, turns: Turns, pid: int, kind: str
) -> dict[str, Any]:
    conns = [_Client(kind, port, key, mode, user_of(i)) for i in range(clients)]
    for conn in conns:  # connect before the clock starts
        await conn.warm()

    latencies: list[float] = []
    errors = 0
    with_memory = 0
    skipped: dict[str, int] = {}
    silent = 0
    deadline = time.perf_counter() + seconds

    async def loop(conn: _Client) -> None:
        nonlocal errors, with_memory, silent
        clock = time.perf_counter
        while True:
            messages = turns.messages(mode)
            start = clock()
            if start >= deadline:
                return
            status, headers = await conn.chat(messages)
            latencies.append(clock() - start)
            if status != 200:
                errors += 1
                continue
            if mode == "off":
                continue
            served = headers.get("x-memos-memory-mode", "off")
            reason = headers.get("x-memos-memory-reason")
            if served != "off":
                with_memory += 1
            elif reason:
                skipped[reason] = skipped.get(reason, 0) + 1
            else:
                silent += 1

    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in conns))
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before
    for conn in conns:
        await conn.aclose()
    row = percentiles(latencies)
    return {
        "mode": mode,
        "clients": clients,
        "rps": round(len(latencies) / elapsed, 1),
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": row["p50_ms"],
        "p95_ms": row["p95_ms"],
        "p99_ms": row["p99_ms"],
        "with_memory": with_memory,
        "skipped_with_reason": skipped,
        "skipped_silently": silent,
        # The proxy's CPU while the row ran (its write-back included) per request answered.
        "proxy_cpu_ms_per_request": round(cpu * 1000 / max(1, len(latencies)), 2),
    }


async def measure(args: argparse.Namespace, port: int, key: str, pid: int) -> list[dict[str, Any]]:
    turns = Turns(seed=17)
    rows = []
    for mode in args.modes:
        for clients in args.clients:
            row = await run_row(port, key, mode, clients, args.seconds, turns, pid, args.client)
            rows.append(row)
            print(_line(row), flush=True)
            if mode == "on":
                row["settle_s"] = await asyncio.to_thread(wait_idle, pid, 300.0)
    return rows


HEADER = (
    f"{'mode':<5} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6} "
    f"{'memory':>7} {'skipped (reason)':>18} {'silent':>6} {'cpu ms/req':>10}"
)


def _line(row: dict[str, Any]) -> str:
    reasons = ",".join(f"{k}:{v}" for k, v in sorted(row["skipped_with_reason"].items())) or "0"
    return (
        f"{row['mode']:<5} {row['clients']:>7} {row['rps']:>8.1f} {row['p50_ms']:>8.1f} "
        f"{row['p95_ms']:>8.1f} "
        f"{row['p99_ms']:>8.1f} {row['errors']:>6} {row['with_memory']:>7} {reasons:>18} "
        f"{row['skipped_silently']:>6} {row['proxy_cpu_ms_per_request']:>10.2f}"
    )


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Against the issue's targets: memory throughput as a share of memory off at the same clients,
    p99 / p50, and whether more clients ever lowered throughput below the 8-client figure."""
    off = {r["clients"]: r["rps"] for r in rows if r["mode"] == "off"}
    out: dict[str, Any] = {}
    for r in rows:
        if r["mode"] == "off":
            continue
        name = f"{r['mode']}@{r['clients']}"
        out[name] = {
            "share_of_off": round(r["rps"] / off[r["clients"]], 3) if off.get(r["clients"]) else None,
            "p99_over_p50": round(r["p99_ms"] / r["p50_ms"], 2) if r["p50_ms"] else None,
        }
    for mode in MODES:
        by = {r["clients"]: r["rps"] for r in rows if r["mode"] == mode}
        if 8 in by and 64 in by:
            out[f"{mode}: 64 clients / 8 clients"] = round(by[64] / by[8], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--seconds", type=float, default=15.0, help="per row")
    parser.add_argument("--users", type=int, default=64, help="users seeded with memories")
    parser.add_argument("--memories", type=int, default=200, help="memories per seeded user")
    parser.add_argument(
        "--client",
        choices=("openai", "httpx"),
        default="openai",
        help="each simulated user's client: the openai SDK (default) or bare httpx",
    )
    parser.add_argument("--quick", action="store_true", help="8 and 32 clients, 5 s rows, small seed")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.seconds, args.users, args.memories = [8, 32], 5.0, 32, 50
    import uvloop

    with tempfile.TemporaryDirectory(prefix="memos-load-") as tmp:
        workdir = Path(tmp)
        procs = []
        try:
            up_proc, up_port = start_upstream(workdir)
            procs.append(up_proc)
            proc, target = start_memos(workdir, up_port, "memos-load", "on")
            procs.append(proc)
            key = target.headers["authorization"].split(" ", 1)[1]
            seeded = seed(target.port, key, args.users, args.memories)
            seeded["idle_wait_s"] = wait_idle(proc.pid, 300.0)
            load_before = os.getloadavg()
            print(HEADER, flush=True)
            rows = uvloop.run(measure(args, target.port, key, proc.pid))
            load_after = os.getloadavg()
        finally:
            stop_all(procs)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "config": {
            "seconds_per_row": args.seconds,
            "clients": args.clients,
            "modes": args.modes,
            "seed": seeded,
            "load_generator": (
                f"this process (uvloop); each client its own {args.client} client with one keep-alive"
                " connection"
            ),
            "client": args.client,
        },
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "rows": rows,
        "summary": summary(rows),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
