"""LoCoMo retrieval recall through the real proxy, over HTTP.

    .venv/bin/python bench/locomo.py [--data ../shared/data/locomo-dev] [--out bench/results/locomo.json]

Starts `memos-proxy serve` on a fresh data directory (or uses --url/--key of a running proxy), makes a
tenant key, and for every conversation (one user each):

- ingests every turn as one memory through `POST /v1/memories` (`infer: false`): text
  "Speaker: text" plus " [shares <caption>]" when the turn shared an image (`--speaker name`: instead
  one user message with the speaker as its `name` and the turn's own words as content, as a chat client
  sends it), `metadata: {"dia_id"}`, `observed_at` the session's date, one request per session with
  `X-Memos-Session`;
- asks every question of categories 1-4 through `POST /v1/memories/search`, walks the results in rank
  order adding each memory's text (and any context memories a hit carries) while the running total
  stays within 2,000 (then 4,000) characters, and scores the share of the question's evidence
  dia_ids among the sources of the memories taken. recall@5/10/20 (by results) are for reference.
  strict_2000 is the stricter rule of bench/strict_score.py (as bench/locomo_chat.py scores): within the
  same 2,000 characters, an evidence turn counts only when one memory read covers >= half of the turn's
  content words (its text and caption, without the speaker), whatever sources it names.

Evidence ids that name no turn of the conversation are dropped (the data has three typos, one of which,
"D:11:26", is read as D11:26); a question left with no evidence is skipped. Prints a table per category
and writes the figures, with search latency p50/p95 as the client saw it, to the JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from strict_score import strict_recall  # noqa: E402

DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "locomo-dev").resolve()
BUDGETS = (2000, 4000)
KS = (5, 10, 20)
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}


# ---------------------------------------------------------------------------------------------- data


def session_date(raw: str) -> datetime:
    return datetime.strptime(raw.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC)


def turn_text(turn: dict[str, Any]) -> str:
    text = f"{turn['speaker']}: {turn['text']}"
    if turn.get("blip_caption"):
        text += f" [shares {turn['blip_caption']}]"
    return text


def evidence_ids(raw: list[str], known: set[str]) -> list[str]:
    out: list[str] = []
    for part in raw:
        for e in re.split(r"[;,\s]+", part):
            m = re.fullmatch(r"D:?(\d+):(\d+)", e.strip())
            if m:
                e = f"D{m.group(1)}:{m.group(2)}"
            if e in known and e not in out:
                out.append(e)
    return out


def load_conversation(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    conv = data.get("conversation", data)
    numbers = sorted(int(k.split("_")[1]) for k in conv if re.fullmatch(r"session_\d+", k))
    sessions = [
        {"n": n, "date": session_date(conv[f"session_{n}_date_time"]), "turns": conv[f"session_{n}"]}
        for n in numbers
    ]
    known = {t["dia_id"] for s in sessions for t in s["turns"]}
    contents = {
        t["dia_id"]: t["text"] + (f" [shares {t['blip_caption']}]" if t.get("blip_caption") else "")
        for s in sessions
        for t in s["turns"]
    }
    questions = []
    for qa in data["qa"]:
        if qa.get("category") not in CATEGORIES:
            continue
        ev = evidence_ids(qa.get("evidence", []), known)
        if ev:
            questions.append({"question": qa["question"], "category": qa["category"], "evidence": ev})
    return {"name": path.stem, "sessions": sessions, "questions": questions, "contents": contents}


# ---------------------------------------------------------------------------------------------- proxy


class Proxy:
    """`memos-proxy serve` on a fresh data directory, with one tenant key."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.cli = shutil.which("memos-proxy", path=str(Path(sys.executable).parent)) or "memos-proxy"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MEMOS_")}
        self.env.update(
            {
                "MEMOS_DATA_DIR": str(data_dir),
                "MEMOS_POLICY_DIR": str(data_dir / "policies"),
                "MEMOS_UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1",  # never called: no chat here
                "HF_HUB_OFFLINE": "1",
            }
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> Proxy:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "proxy.log").open("ab")
        self.process = subprocess.Popen(
            [self.cli, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"memos-proxy exited:\n{(self.data_dir / 'proxy.log').read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("memos-proxy did not become healthy")

    def create_key(self, tenant: str) -> str:
        result = subprocess.run(
            [self.cli, "keys", "create", "--tenant", tenant, "--role", "app"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


# ---------------------------------------------------------------------------------------------- bench


def turn_entry(turn: dict[str, Any], speaker: str) -> dict[str, Any]:
    """One turn as a POST /v1/memories entry: the speaker written into the text ("text"), or given as the
    message's `name` with the turn's own words as its content ("name": what a chat client sends)."""
    if speaker == "text":
        return {"text": turn_text(turn)}
    content = turn["text"] + (f" [shares {turn['blip_caption']}]" if turn.get("blip_caption") else "")
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", turn["speaker"].strip())[:64] or "user"
    return {"messages": [{"role": "user", "name": name, "content": content}]}


def ingest(client: httpx.Client, conv: dict[str, Any], speaker: str = "text") -> int:
    count = 0
    for s in conv["sessions"]:
        if not s["turns"]:
            continue
        memories = [
            {
                **turn_entry(t, speaker),
                "metadata": {"dia_id": t["dia_id"]},
                "observed_at": s["date"].isoformat(),
            }
            for t in s["turns"]
        ]
        r = client.post(
            "/v1/memories",
            json={"user": conv["name"], "infer": False, "memories": memories},
            headers={"X-Memos-Session": f"{conv['name']}/session_{s['n']}"},
        )
        r.raise_for_status()
        count += len(memories)
    return count


def walk(results: list[dict[str, Any]]) -> list[tuple[str, set[str]]]:
    """The memories a client would read, in order: each hit, then the context memories it carries."""
    out: list[tuple[str, set[str]]] = []
    for hit in results:
        for m in (hit, *(hit.get("context") or ())):
            ids = {str(s.get("metadata", {}).get("dia_id")) for s in m.get("sources", [])}
            out.append((m["memory"], ids))
    return out


def budget_recall(read: list[tuple[str, set[str]]], evidence: list[str], budget: int) -> float:
    used, seen = 0, set()
    for text, ids in read:
        used += len(text)
        if used > budget:
            break
        seen |= ids
    return sum(e in seen for e in evidence) / len(evidence)


def budget_texts(read: list[tuple[str, set[str]]], budget: int) -> list[str]:
    used, out = 0, []
    for text, _ in read:
        used += len(text)
        if used > budget:
            break
        out.append(text)
    return out


def topk_recall(results: list[dict[str, Any]], evidence: list[str], k: int) -> float:
    seen: set[str] = set()
    for text_ids in walk(results[:k]):
        seen |= text_ids[1]
    return sum(e in seen for e in evidence) / len(evidence)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    i = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[i]


def run(args: argparse.Namespace) -> dict[str, Any]:
    files = sorted(Path(args.data).glob("conv-*.json"))
    if args.convs:
        files = [f for f in files if f.stem in set(args.convs.split(","))]
    if not files:
        raise SystemExit(f"no conv-*.json under {args.data}")
    convs = [load_conversation(f) for f in files]

    proxy = None
    tmp = None
    if args.url:
        url, key = args.url.rstrip("/"), args.key
    else:
        tmp = tempfile.TemporaryDirectory(prefix="memos-locomo-")
        proxy = Proxy(Path(tmp.name)).start()
        url, key = proxy.url, proxy.create_key("locomo-bench")
    scores: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    latencies: list[float] = []
    per_question: list[dict[str, Any]] = []
    ingested = 0
    t_ingest = 0.0
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
            for conv in convs:
                t0 = time.perf_counter()
                ingested += ingest(client, conv, args.speaker)
                t_ingest += time.perf_counter() - t0
            # one unmeasured search first (model and caches warm up)
            client.post("/v1/memories/search", json={"user": convs[0]["name"], "query": "hello", "top_k": 1})
            for conv in convs:
                for q in conv["questions"]:
                    t0 = time.perf_counter()
                    r = client.post(
                        "/v1/memories/search",
                        json={"user": conv["name"], "query": q["question"], "top_k": args.top_k},
                    )
                    latencies.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()
                    results = r.json()["data"]
                    read = walk(results)
                    row = {"conv": conv["name"], "category": q["category"]}
                    for b in BUDGETS:
                        v = budget_recall(read, q["evidence"], b)
                        row[f"chars_{b}"] = v
                    evidence_texts = [conv["contents"][e] for e in q["evidence"]]
                    row["strict_2000"] = strict_recall(budget_texts(read, 2000), evidence_texts)
                    for k in KS:
                        row[f"recall@{k}"] = topk_recall(results, q["evidence"], k)
                    for metric, v in row.items():
                        if metric in ("conv", "category"):
                            continue
                        scores[metric][q["category"]].append(v)
                        scores[metric]["all"].append(v)
                        scores[metric][conv["name"]].append(v)
                    per_question.append(row)
    finally:
        if proxy is not None:
            proxy.stop()
        if tmp is not None:
            tmp.cleanup()

    def mean(metric: str, key: Any) -> float:
        return round(statistics.mean(scores[metric][key]), 4)

    metrics = [f"chars_{b}" for b in BUDGETS] + ["strict_2000"] + [f"recall@{k}" for k in KS]
    counts = {c: len(scores["chars_2000"][c]) for c in CATEGORIES}
    return {
        "benchmark": "locomo-retrieval",
        "data": str(args.data),
        "conversations": [c["name"] for c in convs],
        "memories": ingested,
        "questions": len(per_question),
        "top_k": args.top_k,
        "speaker": args.speaker,
        "by_category": {
            CATEGORIES[c]: {"category": c, "questions": counts[c], **{m: mean(m, c) for m in metrics}}
            for c in CATEGORIES
            if counts[c]
        },
        "overall": {m: mean(m, "all") for m in metrics},
        "by_conversation": {c["name"]: {m: mean(m, c["name"]) for m in metrics} for c in convs},
        "search_ms": {
            "p50": round(percentile(latencies, 0.5), 2),
            "p95": round(percentile(latencies, 0.95), 2),
            "mean": round(statistics.mean(latencies), 2),
        },
        "ingest": {"seconds": round(t_ingest, 2), "memories_per_s": round(ingested / max(t_ingest, 1e-9), 1)},
        "targets": {"chars_2000": 0.75, "chars_4000": 0.85},
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def print_table(res: dict[str, Any]) -> None:
    cols = ["chars_2000", "chars_4000", "strict_2000", "recall@5", "recall@10", "recall@20"]
    print(
        f"LoCoMo retrieval: {res['memories']} memories, {res['questions']} questions "
        f"({', '.join(res['conversations'])}), top_k={res['top_k']}"
    )
    print(f"{'category':<14}{'n':>5}" + "".join(f"{c:>12}" for c in cols))
    for name, row in res["by_category"].items():
        print(f"{name:<14}{row['questions']:>5}" + "".join(f"{row[c]:>12.3f}" for c in cols))
    print(f"{'all':<14}{res['questions']:>5}" + "".join(f"{res['overall'][c]:>12.3f}" for c in cols))
    for name, row in res["by_conversation"].items():
        print(f"  {name:<12}     " + "".join(f"{row[c]:>12.3f}" for c in cols))
    s = res["search_ms"]
    print(
        f"search p50 {s['p50']:.1f} ms, p95 {s['p95']:.1f} ms; ingest {res['ingest']['memories_per_s']:.0f} "
        f"memories/s; targets: chars_2000 >= 0.75, chars_4000 >= 0.85"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="directory of conv-*.json (LoCoMo)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "locomo.json"))
    ap.add_argument("--top-k", type=int, default=100, help="results asked per question")
    ap.add_argument("--convs", default="", help="comma-separated subset, e.g. conv-26,conv-30")
    ap.add_argument(
        "--speaker",
        choices=("text", "name"),
        default="text",
        help="the speaker written into each memory's text, or given as the message's name",
    )
    ap.add_argument("--url", default="", help="use a running proxy at this URL instead of starting one")
    ap.add_argument("--key", default="", help="tenant key for --url")
    args = ap.parse_args(argv)
    res = run(args)
    print_table(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
