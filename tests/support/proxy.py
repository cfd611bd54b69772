"""Run the proxy for tests: in-process (uvicorn in a thread, a real socket) or as a subprocess.

    settings = proxy_settings(tmp_path, upstream.base_url, key_cache_ttl_s=0)
    with run_proxy(settings) as proxy:             # or the `proxy` fixture factory (tests/conftest.py)
        key = proxy.create_key("acme", role="app")  # a tenant key, made through the running services
        client = openai.OpenAI(base_url=proxy.base_url, api_key=key)
        proxy.services                              # the live Services container (swap parts in `configure`)

    with ProxyProcess(proxy_env(tmp_path, upstream.base_url)) as proc:   # `memos-proxy serve`
        key = proc.create_key("acme")               # through `memos-proxy keys create` (last line)
        proc.kill()                                 # SIGKILL, for crash tests; proc.restart() starts again

`run_cli(*args, env=...)` runs any `memos-proxy` subcommand and returns the CompletedProcess; `CLI` is
the command line that starts `memos-proxy` (see `cli_command`), for tests that spawn it themselves.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from proxy.app import create_app
from proxy.services import Services
from proxy.settings import Settings
from tests.support.upstream import FakeUpstream


def cli_command() -> tuple[str, ...]:
    """How to start `memos-proxy` from the environment of the interpreter running the tests: the
    console script installed with it (its virtualenv's or prefix's scripts dir, the interpreter's own
    dir, the user scripts dir), else the CLI module run by this interpreter (importable, not installed
    as a script)."""
    scripts = [
        sysconfig.get_path("scripts"),
        str(Path(sys.executable).parent),
        sysconfig.get_path("scripts", sysconfig.get_preferred_scheme("user")),
    ]
    for directory in dict.fromkeys(scripts):
        found = shutil.which("memos-proxy", path=directory)
        if found:
            return (found,)
    return (sys.executable, "-m", "proxy.cli")


CLI = cli_command()


def proxy_settings(data_dir: Path, upstream_url: str, **overrides: Any) -> Settings:
    """Settings for a test proxy: its own data dir, the given upstream, no upstream key, and tenants
    named in metric labels (tests read `tenant="acme"`; tests of the label modes set their own)."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "upstream_base_url": upstream_url,
        "policy_dir": data_dir / "policies",
        "upstream_read_timeout_s": 30.0,
        "upstream_connect_timeout_s": 5.0,
        "metrics_tenant_label": "name",
    }
    values.update(overrides)
    return Settings(**values)


class Loopback:
    """A proxy listening on 127.0.0.1:`port`: its root URL and its OpenAI base URL."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


class RunningProxy(Loopback):
    def __init__(self, app: Any, settings: Settings, port: int) -> None:
        self.app = app
        self.settings = settings
        self.port = port

    @property
    def services(self) -> Services:
        return self.app.state.services

    def create_key(self, tenant: str = "acme", role: str = "app", user: str | None = None) -> str:
        return self.services.api_keys.create(tenant, role, bound_user=user)[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def run_proxy(
    settings: Settings, configure: Callable[[Services], None] | None = None
) -> Iterator[RunningProxy]:
    """The proxy app served by uvicorn on 127.0.0.1 (random port) in a background thread."""
    app = create_app(settings, configure=configure)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_config=None, log_level="warning", access_log=False, timeout_graceful_shutdown=2
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-proxy", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the proxy did not start (see the log above)")
        time.sleep(0.005)
    try:
        yield RunningProxy(app, settings, port)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def proxy_env(data_dir: Path, upstream_url: str, **extra: str) -> dict[str, str]:
    """Environment for a `memos-proxy` subprocess (the parent's MEMOS_* variables are dropped)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMOS_")}
    env.update(
        {
            "MEMOS_DATA_DIR": str(data_dir),
            "MEMOS_UPSTREAM_BASE_URL": upstream_url,
            "MEMOS_POLICY_DIR": str(data_dir / "policies"),
        }
    )
    env.update(extra)
    return env


def run_cli(*args: str, env: Mapping[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )


class ProxyProcess(Loopback):
    """`memos-proxy serve` as a child process; waits for /healthz."""

    def __init__(self, env: Mapping[str, str], port: int | None = None) -> None:
        self.env = dict(env)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(self.env["MEMOS_DATA_DIR"]) / f"proxy-{self.port}.log"

    def start(self, timeout: float = 60) -> ProxyProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*CLI, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"memos-proxy exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"memos-proxy did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def create_key(self, tenant: str = "acme", role: str = "app", user: str | None = None) -> str:
        args = ["keys", "create", "--tenant", tenant, "--role", role]
        if user:
            args += ["--user", user]
        result = run_cli(*args, env=self.env)
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        return result.stdout.strip().splitlines()[-1]

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run (crash tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> ProxyProcess:
        self.stop()
        return self.start()

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.stop()
        if exc_type is not None:
            print(self.log(), file=sys.stderr)


@contextmanager
def proxy_stack(
    data_dir: Path, configure: Callable[[Services], None] | None = None, **overrides: Any
) -> Iterator[tuple[FakeUpstream, RunningProxy]]:
    """A FakeUpstream and a proxy in front of it (for module-scoped fixtures)."""
    with (
        FakeUpstream() as upstream,
        run_proxy(proxy_settings(data_dir, upstream.base_url, **overrides), configure) as proxy,
    ):
        yield upstream, proxy
