"""Fixtures shared by every test directory (helpers live in tests/support/).

- `upstream`: a started FakeUpstream (tests/support/upstream.py), a real OpenAI-compatible server
  on loopback that records what it received and can be scripted to fail.
- `proxy`: a factory; `proxy(**settings_overrides, configure=fn)` starts the proxy in-process against
  `upstream` with a fresh data dir and returns a RunningProxy (stopped after the test).
- `pg_url`: a fresh, uniquely named PostgreSQL database on this machine (dropped after the test);
  tests using it are marked `postgres` and skipped when PostgreSQL is unreachable. The server is
  taken from MEMOS_TEST_PG_URL (default: the local socket, current user).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from tests.support.proxy import RunningProxy, proxy_settings, run_proxy
from tests.support.upstream import FakeUpstream

DEFAULT_PG_ADMIN_URL = "postgresql:///postgres"


@pytest.fixture(autouse=True, scope="session")
def _no_memos_environment() -> Iterator[None]:
    """Settings in tests come from the test, never from the developer's MEMOS_* environment."""
    saved = {
        k: v for k, v in os.environ.items() if k.startswith("MEMOS_") and not k.startswith("MEMOS_TEST_")
    }
    for key in saved:
        del os.environ[key]
    yield
    os.environ.update(saved)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def proxy(upstream: FakeUpstream, tmp_path: Path) -> Iterator[Callable[..., RunningProxy]]:
    with ExitStack() as stack:
        count = 0

        def start(configure: Callable[[Any], None] | None = None, **overrides: Any) -> RunningProxy:
            nonlocal count
            count += 1
            data_dir = overrides.pop("data_dir", tmp_path / f"proxy-{count}")
            settings = proxy_settings(
                data_dir, overrides.pop("upstream_base_url", upstream.base_url), **overrides
            )
            return stack.enter_context(run_proxy(settings, configure))

        yield start


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "pg_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
def pg_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    admin_url = os.environ.get("MEMOS_TEST_PG_URL", DEFAULT_PG_ADMIN_URL)
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL unreachable at {admin_url}: {exc}")
    name = f"memos_test_{uuid.uuid4().hex[:12]}"
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        info = psycopg.conninfo.conninfo_to_dict(admin_url)
        host = str(info.get("host") or "")
        socket_dir = host.startswith("/")
        url = URL.create(
            "postgresql+psycopg",
            username=info.get("user"),
            password=info.get("password"),
            host=None if socket_dir or not host else host,
            port=int(info["port"]) if info.get("port") else None,
            database=name,
            query={"host": host} if socket_dir else {},
        )
        yield url.render_as_string(hide_password=False)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
