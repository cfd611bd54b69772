"""`memos-proxy keys rotate-master` while a proxy serves: nothing stops working, the proxy adopts the new
master key without a restart, new tenants are wrapped under it, the audit chain verifies across the
rotation, and a restarted proxy reads everything."""

from __future__ import annotations

import httpx
from sqlmodel import select

from memos.governance.masterkeys import read_key_file
from memos.keys.keyring import TenantKeyRow
from tests.support.memory import until
from tests.support.proxy import proxy_env, proxy_settings, run_cli, run_proxy


def _add(base_url: str, key: str, text: str) -> str:
    reply = httpx.post(
        f"{base_url}/memories",
        headers={"Authorization": f"Bearer {key}"},
        json={"user": "u", "memories": [{"text": text}]},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["data"][0]["id"]


def _get(base_url: str, key: str, memory_id: str) -> str:
    reply = httpx.get(
        f"{base_url}/memories/{memory_id}", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["memory"]


def test_rotation_while_serving(upstream, tmp_path):
    data_dir = tmp_path / "data"
    settings = proxy_settings(data_dir, upstream.base_url, key_cache_ttl_s=0, embedding_model="hash")
    env = proxy_env(data_dir, upstream.base_url)
    with run_proxy(settings) as running:
        acme = running.create_key("acme", "admin")
        memory_id = _add(running.base_url, acme, "the boat is blue")
        old_id = running.services.keyring.master.key_id

        result = run_cli("keys", "rotate-master", "--settle-s", "1.5", env=env)
        assert result.returncode == 0, result.stderr
        keys = read_key_file(data_dir / "master.key")
        new_id = keys.active.key_id
        assert new_id != old_id and keys.previous[0].key_id == old_id

        # Still serving, without a restart; the proxy adopts the new master within about a second.
        assert _get(running.base_url, acme, memory_id) == "the boat is blue"
        until(
            lambda: running.services.keyring.master.key_id == new_id,
            "the running proxy adopted the new master key",
            10,
        )
        beta = running.create_key("beta", "admin")
        beta_id = _add(running.base_url, beta, "the car is red")
        with running.services.db.session() as session:
            rows = {r.tenant: r.master_key_id for r in session.exec(select(TenantKeyRow)).all()}
        assert rows == {"acme": new_id, "beta": new_id}
        _add(running.base_url, acme, "the bike is green")  # audited under the new key

    # Every tenant's trail verifies across the rotation (old entries under the previous key).
    result = run_cli("audit", "verify", "--all", env=env)
    assert result.returncode == 0, result.stderr
    assert "acme: intact" in result.stdout and "beta: intact" in result.stdout

    # A fresh process reads everything.
    with run_proxy(settings) as restarted:
        assert _get(restarted.base_url, acme, memory_id) == "the boat is blue"
        assert _get(restarted.base_url, beta, beta_id) == "the car is red"
