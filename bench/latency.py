"""Latency the proxy adds over a direct call, side by side with LiteLLM Proxy, against one fast upstream.

    .venv/bin/python bench/latency.py                # full run; writes bench/results/latency.json
    .venv/bin/python bench/latency.py --quick        # a smoke run (fewer requests)
    .venv/bin/python bench/latency.py --skip-litellm # only direct vs memos-proxy

Three processes besides this one: a minimal raw-asyncio OpenAI-compatible upstream (fixed answers,
so differences are the proxies'), `memos-proxy serve` (memory off: `X-Memos-Memory: off`, no user)
and `litellm --config` (LiteLLM Proxy, no database, no UI, the same upstream as an openai-compatible
model). The load generator is a raw HTTP/1.1 keep-alive client on uvloop, so its own cost stays small
and is the same for every target.

Phases:
- sequential latency: one connection per target, rounds interleaved across targets (so background
  noise hits all alike), non-streamed and streamed (time to the last byte of the SSE answer);
  p50/p95/p99; "added" is a target's percentile minus the direct call's.
- throughput: `--concurrency` keep-alive connections for `--seconds` per target (non-streamed),
  requests per second and the p50 under load.

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
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
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


# ---------------------------------------------------------------------------- the upstream


class _UpstreamProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive; answers any POST with the fixed completion (or SSE when the body streams)."""

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

    def request(self, stream: bool) -> bytes:
        body: dict[str, Any] = {
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


def start_memos(workdir: Path, upstream_port: int) -> tuple[subprocess.Popen[bytes], Target]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMOS_")}
    env.update(
        MEMOS_DATA_DIR=str(workdir / "memos-data"),
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
    log = workdir / "memos-proxy.log"
    proc = spawn([str(BIN / "memos-proxy"), "serve", "--host", "127.0.0.1", "--port", str(port)], env, log)
    wait_http(port, "/healthz", proc, 120, log)
    wait_idle(proc.pid)
    headers = {"authorization": f"Bearer {key}", "x-memos-memory": "off"}
    return proc, Target("memos-proxy", port, "/v1/chat/completions", headers, proc.pid)


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


async def measure(args: argparse.Namespace, targets: list[Target]) -> dict[str, Any]:
    per_round = max(1, args.requests // args.rounds)
    seq = {
        "non_stream": await sequential(targets, False, args.warmup, args.rounds, per_round),
        "stream": await sequential(targets, True, args.warmup, args.rounds, per_round),
    }
    thr = {}
    for target in targets:
        thr[target.name] = await throughput(target, args.concurrency, args.seconds)
    return {"sequential": seq, "throughput": thr}


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
    args = parser.parse_args(argv)

    import uvloop

    if args.command == "_upstream":
        uvloop.run(_serve_upstream(args.port))
        return 0
    if args.quick:
        args.requests, args.rounds, args.warmup, args.seconds = 300, 3, 50, 2.0

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
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()

    added: dict[str, dict[str, dict[str, float]]] = {}
    for kind, rows in measured["sequential"].items():
        direct = rows["direct"]
        added[kind] = {
            name: {
                "p50_ms": round(row["p50_ms"] - direct["p50_ms"], 3),
                "p95_ms": round(row["p95_ms"] - direct["p95_ms"], 3),
            }
            for name, row in rows.items()
            if name != "direct"
        }
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
        "ratios": ratios,
    }
    print(table(result))
    machine = result["machine"]
    print(f"\nload average before {machine['loadavg_before']}, after {machine['loadavg_after']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
