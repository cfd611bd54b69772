"""Failed authentication backs off per address and per key id, audited in aggregate with the address.

End-to-end: the proxy on loopback, clients bound to different loopback source addresses (127.0.0.x),
the limiter's clock a FakeClock the test advances (no waiting for windows). Unit tests drive the
limiter directly for the memory bound and the bookkeeping.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from proxy.auth import AuthFailureAudit
from proxy.auth_limits import ADDRESSES_PER_KEY, OVERFLOW_ADDRESS, AuthLimiter, address_key
from proxy.services import Services
from tests.support.proxy import RunningProxy, proxy_env, run_cli


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def client_from(address: str) -> Iterator[httpx.Client]:
    """An HTTP client whose connections leave from `address` (any 127.0.0.0/8 address is loopback)."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30) as client:
        yield client


def models(client: httpx.Client, proxy: RunningProxy, key: str) -> httpx.Response:
    return client.get(proxy.base_url + "/models", headers={"Authorization": f"Bearer {key}"})


def forged(key_id: str) -> str:
    return f"mp-{key_id}-{secrets.token_urlsafe(32)}"


def failures(proxy: RunningProxy, tenant: str) -> list[dict[str, Any]]:
    entries, _ = proxy.services.audit.list(tenant, 1000, None)
    return [e.to_dict() for e in entries if e.action == "auth.failure"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limited(proxy: Callable[..., RunningProxy], clock: FakeClock) -> Callable[..., RunningProxy]:
    """A proxy whose limiter (the settings' limits) runs on the fake clock."""

    def start(**overrides: Any) -> RunningProxy:
        def configure(services: Services) -> None:
            settings = services.settings
            services.auth_limits = AuthLimiter(
                window_s=settings.auth_failure_window_s,
                per_address=settings.auth_failures_per_address,
                per_key=settings.auth_failures_per_key,
                max_entries=settings.auth_limiter_entries,
                clock=clock,
            )
            # Flushed by hand below (the started one watches the limiter it was built with).
            services.auth_audit = AuthFailureAudit(services.auth_limits, services.audit, services.policies)

        return proxy(configure=configure, key_cache_ttl_s=0, **overrides)

    return start


def test_wrong_keys_from_one_address_get_429_and_one_aggregated_audit_trail(
    limited: Callable[..., RunningProxy], clock: FakeClock
) -> None:
    running = limited()
    settings = running.settings
    assert (settings.auth_failures_per_address, settings.auth_failure_window_s) == (10, 60.0)
    key_id, key = running.services.api_keys.create("victim", "app")

    with client_from("127.0.0.2") as user, client_from("127.0.0.1") as attacker:
        assert models(user, running, key).status_code == 200
        statuses = []
        for _ in range(60):
            r = models(attacker, running, forged(key_id))
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.headers["retry-after"] == "6"  # 60 s / 10: one more check every 6 s
                error = r.json()["error"]
                assert (error["type"], error["code"]) == ("rate_limit_error", "auth_rate_limited")
                assert set(error) == {"message", "type", "param", "code"}
        assert statuses == [401] * 10 + [429] * 50
        # Blocked means unchecked: even the right key from the attacker's address waits.
        assert models(attacker, running, key).status_code == 429
        # The real user, from its own address, and a client from a new address are not held back.
        assert models(user, running, key).status_code == 200
        with client_from("127.0.0.3") as other:
            assert models(other, running, key).status_code == 200

        # One entry so far (the attack began), naming the key id and the address, never the secret.
        [opening] = failures(running, "victim")
        assert opening["key_id"] == key_id
        assert opening["detail"] == {"address": "127.0.0.1", "failures": 1}

        # The window ends: one summary of the rest of it.
        clock.advance(61)
        assert running.services.auth_audit is not None
        running.services.auth_audit.flush()
        entries = failures(running, "victim")
        assert len(entries) == 2
        assert entries[1]["detail"] == {
            "address": "127.0.0.1",
            "failures": 9,
            "refused": 51,
            "window_s": 60.0,
            "summary": True,
        }
        assert sum(e["detail"]["failures"] for e in entries) == 10

        # Back-off, not a ban: the budget has refilled, so the address is checked again.
        assert models(attacker, running, forged(key_id)).status_code == 401
        assert models(attacker, running, key).status_code == 200

    assert running.services.audit.verify("victim").ok
    result = run_cli(
        "audit",
        "verify",
        "--tenant",
        "victim",
        env=proxy_env(settings.data_dir, settings.upstream_base_url),
    )
    assert result.returncode == 0, result.stderr
    assert "victim: intact" in result.stdout


def test_guesses_at_one_key_from_many_addresses_back_off_but_the_key_keeps_working(
    limited: Callable[..., RunningProxy], clock: FakeClock
) -> None:
    running = limited(auth_failures_per_address=3, auth_failures_per_key=4)
    key_id, key = running.services.api_keys.create("spread", "app")
    addresses = [f"127.0.0.{10 + i}" for i in range(12)]
    statuses = []
    for address in addresses:
        with client_from(address) as guesser:
            statuses.append(models(guesser, running, forged(key_id)).status_code)
    # The key id's budget (4) is spent; after that each new address gets one check, answered 429.
    assert statuses == [401] * 4 + [429] * 8
    with client_from(addresses[-1]) as guesser:
        r = models(guesser, running, forged(key_id))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    # The key itself is never refused unchecked, from a new address, while the guessing goes on.
    with client_from("127.0.0.99") as user:
        assert models(user, running, key).status_code == 200

    clock.advance(61)
    assert running.services.auth_audit is not None
    running.services.auth_audit.flush()
    entries = failures(running, "spread")
    # Bounded however many addresses: an opening (and maybe a summary) per named address, one overflow.
    assert len(entries) <= 2 * ADDRESSES_PER_KEY + 1
    assert sum(e["detail"]["failures"] for e in entries) == 12
    named = [e["detail"]["address"] for e in entries if e["detail"]["address"] != OVERFLOW_ADDRESS]
    assert named == addresses[:ADDRESSES_PER_KEY]
    [overflow] = [e for e in entries if e["detail"]["address"] == OVERFLOW_ADDRESS]
    assert overflow["detail"]["addresses"] == len(addresses) - ADDRESSES_PER_KEY
    assert running.services.audit.verify("spread").ok


def test_unknown_key_ids_are_limited_per_address_and_audit_nothing(
    limited: Callable[..., RunningProxy],
) -> None:
    running = limited(auth_failures_per_address=2)
    before = {t: running.services.audit.count(t) for t in running.services.audit.tenants()}
    with client_from("127.0.0.5") as guesser:
        statuses = [models(guesser, running, forged(secrets.token_hex(6))).status_code for _ in range(5)]
        statuses.append(models(guesser, running, "not-a-key").status_code)
    assert statuses == [401, 401, 429, 429, 429, 429]
    after = {t: running.services.audit.count(t) for t in running.services.audit.tenants()}
    assert after == before


# ---------------------------------------------------------------- the limiter alone


def test_limiter_tables_stay_bounded_under_a_spray_of_addresses() -> None:
    clock = FakeClock()
    limiter = AuthLimiter(per_address=2, per_key=5, max_entries=100, clock=clock)
    written = []
    for i in range(5_000):
        address = f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"
        key_id = f"k{i % 300}"
        admission = limiter.admit(address, key_id)
        if admission.retry_after is None:
            written += limiter.failure(admission, "t", None).summaries
        limiter.success(limiter.admit(f"192.168.{i // 256 % 256}.{i % 256}", key_id), key_id)
        clock.advance(0.01)
        assert all(size <= 100 for size in limiter.sizes().values())
    written += limiter.due(everything=True)
    # Windows pushed out of the table were summarised, not dropped.
    assert sum(s.failures for s in written) == 5_000
    assert limiter.sizes()["windows"] == 0


def test_limiter_refills_and_refunds() -> None:
    clock = FakeClock()
    limiter = AuthLimiter(window_s=60, per_address=3, per_key=0, clock=clock)
    first = limiter.admit("198.51.100.7", None)
    assert first.retry_after is None and not first.reserved  # a fresh address: no bookkeeping
    limiter.failure(first, None)
    # Once failed, attempts reserve a token before the check: parallel guesses cannot overshoot.
    a, b = limiter.admit("198.51.100.7", None), limiter.admit("198.51.100.7", None)
    assert a.reserved and b.reserved
    refused = limiter.admit("198.51.100.7", None)
    assert refused.retry_after == pytest.approx(20.0)
    limiter.success(a, "mine")  # a right key returns its token
    c = limiter.admit("198.51.100.7", None)
    assert c.reserved
    limiter.failure(b, None)
    limiter.failure(c, None)
    assert limiter.admit("198.51.100.7", None).retry_after == pytest.approx(20.0)
    clock.advance(20)
    assert limiter.admit("198.51.100.7", None).retry_after is None
    clock.advance(120)
    limiter.due()
    assert limiter.sizes()["addresses"] == 0  # refilled buckets are pruned


def test_known_good_pair_is_checked_while_its_address_is_blocked() -> None:
    clock = FakeClock()
    limiter = AuthLimiter(per_address=1, per_key=0, clock=clock)
    limiter.success(limiter.admit("203.0.113.9", "good"), "good")
    limiter.failure(limiter.admit("203.0.113.9", "other"), "t")
    assert limiter.admit("203.0.113.9", "other").retry_after is not None
    assert limiter.admit("203.0.113.9", "good").retry_after is None
    # A failure of the pair itself ends its exemption.
    limiter.failure(limiter.admit("203.0.113.9", "good"), "t")
    assert limiter.admit("203.0.113.9", "good").retry_after is not None


def test_ipv6_addresses_are_limited_by_their_64() -> None:
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("192.0.2.1") == "192.0.2.1"
    limiter = AuthLimiter(per_address=1, per_key=0, clock=FakeClock())
    limiter.failure(limiter.admit("2001:db8::1", None), None)
    assert limiter.admit("2001:db8::2", None).retry_after is not None
    assert limiter.admit("2001:db9::1", None).retry_after is None
