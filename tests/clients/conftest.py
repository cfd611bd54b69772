"""Fixtures of the client matrix (tests/clients/test_client_matrix.py).

- `node_clients`: the Node package under tests/clients/node (openai-node and the AI SDK, pinned by its
  package-lock.json), installed with `npm ci` into its git-ignored node_modules once per lockfile and
  Node version; the path of its script. Without `node` (>= 20) or `npm` on PATH the Node rows are
  skipped, saying why.

Every skipped or expected-to-fail row of the matrix is listed, with its reason, at the end of the run
(pytest -q shows only counts), so a missing runtime is never silent.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_MAJOR = 20
_noted: list[str] = []


def _node_version(node: str) -> tuple[int, str]:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True)
    version = out.stdout.strip()
    return int(version.lstrip("v").split(".")[0]), version


@pytest.fixture(scope="session")
def node_clients() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = "node" if node is None else "npm"
        pytest.skip(f"Node rows need Node.js >= {NODE_MAJOR} with npm on PATH: no {missing} found")
    major, version = _node_version(node)
    if major < NODE_MAJOR:
        pytest.skip(f"Node rows need Node.js >= {NODE_MAJOR}; this machine's node is {version}")
    lock = NODE_DIR / "package-lock.json"
    digest = hashlib.sha256(lock.read_bytes() + version.encode()).hexdigest()
    stamp = NODE_DIR / "node_modules" / ".memos-installed"
    if not stamp.exists() or stamp.read_text() != digest:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {NODE_DIR} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        stamp.write_text(digest)
    return NODE_DIR / "clients.mjs"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/clients/" not in report.nodeid.replace("\\", "/"):
        return
    if report.skipped and hasattr(report, "wasxfail"):
        _noted.append(f"XFAIL {report.nodeid}: {report.wasxfail}")
    elif report.skipped and isinstance(report.longrepr, tuple):
        _noted.append(f"SKIPPED {report.nodeid}: {report.longrepr[2]}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _noted:
        terminalreporter.section("client matrix: rows not run as passing")
        for line in _noted:
            terminalreporter.write_line(line)
