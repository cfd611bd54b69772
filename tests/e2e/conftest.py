"""Fixtures of the end-to-end tests (those every directory shares are in tests/conftest.py).

A module whose tests share one proxy defines `stack`: a module-scoped fixture giving a started
FakeUpstream and a RunningProxy in front of it (tests.support.proxy.proxy_stack, or run_proxy where it
needs more), with the settings that module is about. From it come:

- `running`: the module's RunningProxy;
- `key`: an app key of tenant acme, made once for the module;
- `client`: the official openai SDK on that key, without retries (closed after the module).

A module that starts a fresh proxy for each test uses the `proxy` factory (tests/conftest.py) and
defines its own `running`.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.support.proxy import RunningProxy
from tests.support.upstream import FakeUpstream


@pytest.fixture(scope="module")
def running(stack: tuple[FakeUpstream, RunningProxy]) -> RunningProxy:
    """The proxy of the module's `stack`."""
    return stack[1]


@pytest.fixture(scope="module")
def key(running: RunningProxy) -> str:
    """An app key of tenant acme on `running`, made once for the module."""
    return running.create_key("acme", "app")


@pytest.fixture(scope="module")
def client(running: RunningProxy, key: str) -> Iterator[openai.OpenAI]:
    """The openai SDK on `running` with `key`, no retries."""
    with openai.OpenAI(base_url=running.base_url, api_key=key, max_retries=0) as client:
        yield client
