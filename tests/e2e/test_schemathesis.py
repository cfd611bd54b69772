"""schemathesis against the memory API's own /openapi.json: what the document admits the server takes,
what it refuses the server refuses, no 5xx, every answer as documented, 405s with a true `Allow`.

The proxy runs in-process on loopback (hash embeddings, a fresh data dir); schemathesis' CLI drives it
from a child process with every check on, every phase (coverage of each limit's edges, fuzzing,
stateful sequences), a fixed seed and a bounded number of examples per operation.

`X-Memos-User` is sent on every request: with a tenant-wide key the user must be named in the body,
the query or that header, which no schema can say across locations, so the header makes every
request name one (the header's own rule is covered by tests/proxy/test_validation.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from proxy.routes.memories import openapi_document

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_PER_OPERATION = 10
SEED = 3
TIMEOUT_S = 240


def test_memory_api_conforms_to_its_openapi_document(proxy, tmp_path: Path) -> None:
    # schemathesis probes every operation with bad credentials; the back-off on failed
    # authentication (tests/proxy/test_auth_backoff.py) would turn those into 429s.
    running = proxy(embedding_model="hash", auth_failures_per_address=0, auth_failures_per_key=0)
    key = running.create_key("acme", "admin")
    served = httpx.get(f"{running.url}/openapi.json", timeout=10).json()
    assert served == openapi_document()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{running.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
            "--header",
            "X-Memos-User: schemathesis",
            "--checks",
            "all",
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--generation-database",
            "none",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks", "PYTHONPATH": str(REPO)},
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "passed" in output and "failure" not in output.lower(), output
