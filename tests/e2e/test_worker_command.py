"""`memos-proxy worker`: write-back run apart from the server that answered the chats.

The server runs with its worker off (`MEMOS_WORKER_ENABLED=false`), so what a chat teaches waits in the
outbox; a `memos-proxy worker` process on the same data directory drains it, and the server then
finds the memory. SIGTERM stops the worker cleanly. Polls with a deadline; no assertion on wall time.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import openai

from tests.support.memory import search, until
from tests.support.proxy import CLI, ProxyProcess, proxy_env
from tests.support.upstream import FakeUpstream

DEADLINE_S = 90.0
FACT = "I keep bees on the roof of the old library."


def test_a_worker_process_drains_what_the_server_enqueued(tmp_path: Path) -> None:
    with FakeUpstream() as upstream:
        env = proxy_env(
            tmp_path, upstream.base_url, MEMOS_EMBEDDING_MODEL="hash", MEMOS_WORKER_ENABLED="false"
        )
        with ProxyProcess(env) as proc:
            key = proc.create_key("acme", "app")
            client = openai.OpenAI(base_url=proc.base_url, api_key=key, max_retries=0)
            answer = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": FACT}],
                extra_headers={"X-Memos-User": "carol"},
            )
            assert answer.choices[0].message.content == f"You said: {FACT}"
            assert FACT not in search(proc, key, "carol", FACT)  # the server writes nothing back itself

            log = (tmp_path / "worker.log").open("wb")
            # The same environment, worker setting included: the command is the worker whatever it says.
            worker = subprocess.Popen([*CLI, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            try:
                until(
                    lambda: worker.poll() is not None or FACT in search(proc, key, "carol", FACT),
                    "the worker wrote the chat back",
                    DEADLINE_S,
                )
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()
                worker.send_signal(signal.SIGTERM)
                assert worker.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()
            finally:
                if worker.poll() is None:
                    worker.kill()
