"""Per-tenant policies over a running proxy: a malformed file gets a precise error, its tenant keeps its
last good policy, and every other tenant keeps working (and keeps hot-reloading)."""

from __future__ import annotations

import os
from pathlib import Path

import openai
import pytest

from tests.support.memory import until
from tests.support.proxy import RunningProxy


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # a new stamp on coarse clocks


def _wait(predicate) -> None:
    until(predicate, "the policy store reloaded", 10.0)


def _chat(client: openai.OpenAI, model: str) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "ping"}], extra_headers={"X-Memos-Memory": "off"}
    )
    return reply.choices[0].message.content or ""


def _denied(client: openai.OpenAI, model: str) -> bool:
    try:
        _chat(client, model)
    except openai.PermissionDeniedError:
        return True
    return False


@pytest.fixture
def stack(proxy, tmp_path):
    data_dir = tmp_path / "data"
    policies = data_dir / "policies"
    policies.mkdir(parents=True)
    _write(policies / "acme.yaml", "upstream:\n  allowed_models: [gpt-a]\n")
    _write(policies / "beta.yaml", "upstream:\n  allowed_models: [gpt-b]\n")
    running: RunningProxy = proxy(data_dir=data_dir, key_cache_ttl_s=0)
    acme = openai.OpenAI(
        base_url=running.base_url, api_key=running.create_key("acme", "admin"), max_retries=0
    )
    beta = openai.OpenAI(base_url=running.base_url, api_key=running.create_key("beta", "app"), max_retries=0)
    return running, policies, acme, beta


def test_malformed_policy_is_precise_and_isolated(stack):
    running, policies, acme, beta = stack
    assert _chat(acme, "gpt-a") and _denied(acme, "gpt-b")
    assert _chat(beta, "gpt-b") and _denied(beta, "gpt-a")

    # Break acme's file: an unknown field on line 4, under `upstream`.
    broken = policies / "acme.yaml"
    _write(broken, "upstream:\n  allowed_models: [gpt-a, gpt-b]\nmemory:\n  top_kk: 5\n")
    store = running.services.policies
    _wait(lambda: str(broken) in store.errors())
    message = store.errors()[str(broken)]
    assert message == f"{broken}:4: memory.top_kk: unknown field"

    # acme keeps its last good policy (gpt-b still refused, gpt-a still served); beta is untouched.
    assert _chat(acme, "gpt-a") and _denied(acme, "gpt-b")
    assert _chat(beta, "gpt-b") and _denied(beta, "gpt-a")

    # Other tenants still hot-reload while acme's file is broken.
    _write(policies / "beta.yaml", "upstream:\n  allowed_models: [gpt-b, gpt-c]\n")
    _wait(lambda: store.get("beta").upstream.allowed_models == ["gpt-b", "gpt-c"])
    assert _chat(beta, "gpt-c")

    # A YAML syntax error: named with its line too; still the last good policy.
    _write(broken, "upstream:\n  allowed_models: [gpt-a\n")
    _wait(lambda: "YAML syntax error" in store.errors().get(str(broken), ""))
    assert store.errors()[str(broken)].startswith(f"{broken}:")
    assert _chat(acme, "gpt-a") and _denied(acme, "gpt-b")

    # Fixed: the new policy applies and the error is gone.
    _write(broken, "upstream:\n  allowed_models: [gpt-a, gpt-b]\n")
    _wait(lambda: not store.errors())
    assert _chat(acme, "gpt-b")

    # Every reload is in the tenant's audit trail (ok or not), and the trail verifies.
    entries, _ = running.services.audit.list("acme", 100)
    reloads = [e.detail["ok"] for e in entries if e.action == "policy.reload"]
    assert reloads == [False, False, True]
    assert running.services.audit.verify("acme").ok


def test_a_broken_file_at_start_gives_defaults_and_an_error(proxy, tmp_path):
    data_dir = tmp_path / "data"
    policies = data_dir / "policies"
    policies.mkdir(parents=True)
    _write(policies / "acme.yaml", "memory:\n  top_k: -1\n")
    running: RunningProxy = proxy(data_dir=data_dir)
    errors = running.services.policies.errors()
    assert errors == {
        str(policies / "acme.yaml"): f"{policies / 'acme.yaml'}:2: memory.top_k: "
        "-1 is less than the minimum of 1"
    }
    client = openai.OpenAI(
        base_url=running.base_url, api_key=running.create_key("acme", "app"), max_retries=0
    )
    assert _chat(client, "any-model")  # defaults: any model
