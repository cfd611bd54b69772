"""The write-back worker is killed (SIGKILL) in the middle of a batch.

`memos-proxy serve` answers the chats with its own worker off, so every acknowledged exchange waits
in the outbox; a `memos-proxy worker` process claims them as one batch and writes back each user's
rows, while one user's extraction (an `llm:` extractor on the upstream) is held open: the process is
killed with that batch half done. A second worker takes the dead one's claims over and finishes;
every acknowledged exchange is findable exactly once and the audit chain verifies.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.support.faults import acknowledged, audit_intact, chat, fact, wait_findable
from tests.support.memory import search, until
from tests.support.proxy import CLI, ProxyProcess, proxy_env
from tests.support.upstream import FakeUpstream

EXTRACTOR = "slow-extractor"
USERS = ["ann", "ben", "cai", "dee"]
PER_USER = 3


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    try:
        return subprocess.Popen([*CLI, "worker"], env=env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()


def test_a_worker_killed_mid_batch_loses_no_acknowledged_exchange(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "acme.yaml").write_text(f"memory:\n  extractor: llm:{EXTRACTOR}\n")
    with FakeUpstream() as upstream:
        env = proxy_env(tmp_path / "data", upstream.base_url, MEMOS_EMBEDDING_MODEL="hash")
        env["MEMOS_POLICY_DIR"] = str(policies)
        serving = {**env, "MEMOS_WORKER_ENABLED": "false"}
        log = tmp_path / "worker.log"
        with ProxyProcess(serving) as proc:
            key = proc.create_key("acme")
            told: dict[str, list[str]] = {user: [] for user in USERS}
            for n in range(PER_USER):
                for u, user in enumerate(USERS):
                    text = fact(n * len(USERS) + u, "k")
                    assert acknowledged(chat(proc.base_url, key, user, text, stream=n % 2 == 1), text)
                    told[user].append(text)

            # The first extraction the worker asks for hangs: that user's rows stay in hand.
            upstream.hang(seconds=120, model=EXTRACTOR)
            first = start_worker(env, log)
            try:
                held = lambda: any(r.json and r.json.get("model") == EXTRACTOR for r in upstream.requests)  # noqa: E731
                until(lambda: first.poll() is not None or held(), "the worker asked the extractor", 60)
                assert first.poll() is None, log.read_text()
                # Mid-batch: the other users' rows of the same claim are written back meanwhile.
                until(
                    lambda: (
                        first.poll() is not None
                        or any(told[u][0] in search(proc, key, u, told[u][0]) for u in USERS)
                    ),
                    "part of the batch was written back",
                    60,
                )
            finally:
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=30)

            second = start_worker(env, log)
            try:
                for user in USERS:
                    wait_findable(proc, key, user, told[user], log=log.read_text)
                for user in USERS:  # a row done twice (killed before its acknowledgement) added nothing
                    for text in told[user]:
                        assert search(proc, key, user, text).count(text) == 1
                second.send_signal(signal.SIGTERM)
                assert second.wait(timeout=60) == 0, log.read_text()
            finally:
                if second.poll() is None:
                    second.kill()
                    second.wait(timeout=30)
            audit_intact(env)
