"""Back-off for failed authentication, per client address and per key id, in bounded memory.

Who is held back:
- An address (IPv4 as is, IPv6 by its /64, which one host usually owns whole) has a budget of
  `per_address` failed attempts per `window_s`, refilled continuously (a token bucket). Once it is
  spent, that address's attempts are answered 429 with Retry-After *without being checked* until a
  token is back (`window_s / per_address`, 6 s by default): a guesser gets that many checked tries
  per window whatever rate it sends at. Refused attempts cost nothing and do not extend the wait.
- A key id (the public part of a key) has a budget of `per_key` failures per window over all
  addresses. While it is spent the key id is "backing off": a wrong key naming it answers 429 and
  spends its address's whole budget, so guesses spread over many addresses get one check per
  address per refill. A correct key naming it is still accepted, from any address.

The trade-off: the key id is public, so an attacker who names it in wrong keys could lock its real
user out if per-key limiting refused unchecked; denying service that way would cost him nothing.
Per-key limiting therefore never refuses a key it has not checked: it backs guessers off, it never
bans the key. The price is that an attacker with many addresses still gets one check per address
per refill; against a 256-bit secret that buys nothing. Per-address limiting does refuse unchecked,
so a client sharing an address with a guesser (a NAT) shares the wait, except for a key id it last
authenticated with successfully from that address (a "known good" pair, dropped at its first
failure).

Concurrency: once an address has failed, each of its unchecked attempts reserves a token before
the check (returned on success), so parallel guesses cannot overshoot the budget. A fresh address's
first burst is not held back (a busy legitimate client must not pay bookkeeping on every request);
it is bounded by that client's own concurrency.

Audit: failures are summarised, never one chained entry per guess. The first failure naming an
existing key id from an address opens a window (per key id and address) that is audited at once,
so the start of an attack is visible; the rest of the window (failures, refused attempts) becomes
one entry when it ends. Per key id at most `ADDRESSES_PER_KEY` addresses get a window of their own;
the others share one whose summary names address "*" and how many addresses there were. Summing
`failures` over the entries gives the number of failed checks.

Memory: each table (addresses, key ids, known-good pairs, open windows) holds at most
`max_entries`, the least recently used dropped first; buckets that have refilled are pruned, as
they say nothing. Under a spray of more addresses than that the oldest blocks are forgotten:
bounded memory wins over exact accounting (the per-key back-off still holds). A window that is
dropped is summarised, never lost.

The clock is injectable (monotonic seconds); every method is thread-safe and never blocks.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ADDRESSES_PER_KEY = 4
OVERFLOW_ADDRESS = "*"
_MAX_DISTINCT = 10_000  # distinct addresses counted in an overflow window (the count saturates)


def address_key(client: str) -> str:
    """What an address is limited as: IPv4 as is, IPv6 by its /64 (IPv4-mapped ones as IPv4)."""
    if ":" not in client:
        return client
    try:
        ip = ipaddress.IPv6Address(client.split("%", 1)[0])
    except ValueError:
        return client
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class _Window:
    tenant: str
    key_id: str
    address: str
    opened_at: float
    request_id: str | None
    failures: int = 0  # after the opening one (overflow windows: all of them)
    refused: int = 0
    addresses: set[str] | None = None  # overflow windows only


@dataclass(frozen=True)
class FailureSummary:
    """One audit entry: failed checks and refused (429, unchecked) attempts naming a key id."""

    tenant: str
    key_id: str
    address: str
    failures: int
    refused: int
    window_s: float
    opening: bool  # the first failure of a window, audited when it happens
    request_id: str | None = None
    addresses: int | None = None  # overflow summaries: how many distinct addresses

    def detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"address": self.address, "failures": self.failures}
        if not self.opening:
            detail.update(refused=self.refused, window_s=self.window_s, summary=True)
        if self.addresses is not None:
            detail["addresses"] = self.addresses
        return detail


@dataclass(frozen=True)
class Admission:
    """An attempt let through to be checked (or refused: `retry_after` set)."""

    client: str  # the address as seen
    address: str  # as limited (address_key)
    key_id: str | None
    retry_after: float | None = None
    reserved: bool = False  # a token of the address was taken for it


@dataclass(frozen=True)
class Verdict:
    """What a failed check answers: 429 when `retry_after` is set, else 401; and what to audit."""

    retry_after: float | None
    summaries: list[FailureSummary]


class AuthLimiter:
    def __init__(
        self,
        *,
        window_s: float = 60.0,
        per_address: int = 10,
        per_key: int = 20,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = window_s
        self.per_address = per_address  # 0: no per-address limit
        self.per_key = per_key  # 0: no per-key limit
        self.max_entries = max(1, max_entries)
        self.clock = clock
        self._lock = threading.Lock()
        self._addresses: OrderedDict[str, _Bucket] = OrderedDict()
        self._keys: OrderedDict[str, _Bucket] = OrderedDict()
        self._known: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self._windows_per_key: dict[str, int] = {}

    # ---------------------------------------------------------------- the request path

    def admit(self, client: str, key_id: str | None) -> Admission:
        """Before checking a key: refuse (retry_after) when the address's budget is spent."""
        address = address_key(client)
        with self._lock:
            bucket = self._addresses.get(address)
            if bucket is None or self.per_address <= 0:
                return Admission(client, address, key_id)  # never failed lately: nothing to hold
            if key_id is not None and (address, key_id) in self._known:
                return Admission(client, address, key_id)
            now = self.clock()
            tokens = self._refill(bucket, self.per_address, now)
            self._addresses.move_to_end(address)
            if tokens >= 1:
                bucket.tokens -= 1
                return Admission(client, address, key_id, reserved=True)
            if key_id is not None:
                window = self._windows.get((key_id, client))
                if window is not None:
                    window.refused += 1
            return Admission(client, address, key_id, retry_after=self._wait(tokens, self.per_address))

    def success(self, admission: Admission, key_id: str) -> None:
        """The key was right: return the reserved token; the pair (address, key id) is known good."""
        with self._lock:
            if admission.reserved:
                self._refund(admission.address)
            pair = (admission.address, key_id)
            if pair in self._known:
                self._known.move_to_end(pair)
            else:
                self._known[pair] = None
                while len(self._known) > self.max_entries:
                    self._known.popitem(last=False)

    def abandon(self, admission: Admission) -> None:
        """The check did not happen (an error): return the reserved token."""
        if admission.reserved:
            with self._lock:
                self._refund(admission.address)

    def failure(self, admission: Admission, tenant: str | None, request_id: str | None = None) -> Verdict:
        """The key was wrong. `tenant`: the tenant of the key id it names, None when that id is no key."""
        now = self.clock()
        summaries: list[FailureSummary] = []
        retry_after: float | None = None
        address, key_id = admission.address, admission.key_id
        with self._lock:
            bucket: _Bucket | None = None
            if self.per_address > 0:
                bucket = self._addresses.get(address)
                if bucket is None:
                    bucket = self._addresses[address] = _Bucket(float(self.per_address), now)
                    while len(self._addresses) > self.max_entries:
                        self._addresses.popitem(last=False)
                else:
                    self._refill(bucket, self.per_address, now)
                    self._addresses.move_to_end(address)
                if not admission.reserved:
                    bucket.tokens = max(0.0, bucket.tokens - 1)
            if key_id is not None and tenant is not None:
                self._known.pop((address, key_id), None)
                if self.per_key > 0:
                    key_bucket = self._keys.get(key_id)
                    if key_bucket is None:
                        key_bucket = self._keys[key_id] = _Bucket(float(self.per_key), now)
                        while len(self._keys) > self.max_entries:
                            self._keys.popitem(last=False)
                    else:
                        self._refill(key_bucket, self.per_key, now)
                        self._keys.move_to_end(key_id)
                    backing_off = key_bucket.tokens < 1
                    key_bucket.tokens = max(0.0, key_bucket.tokens - 1)  # never below 0: no ban
                    if backing_off:
                        if bucket is not None:
                            bucket.tokens = 0.0
                            retry_after = self._wait(0.0, self.per_address)
                        else:
                            retry_after = self._wait(key_bucket.tokens, self.per_key)
                summaries.extend(self._count(tenant, key_id, admission.client, now, request_id))
            summaries.extend(self._due(now, everything=False))
        return Verdict(retry_after, summaries)

    # ---------------------------------------------------------------- summaries

    def due(self, everything: bool = False) -> list[FailureSummary]:
        """Summaries of windows that ended (all open ones with `everything`); prunes refilled buckets."""
        now = self.clock()
        with self._lock:
            summaries = self._due(now, everything)
            self._prune(self._addresses, self.per_address, now)
            self._prune(self._keys, self.per_key, now)
        return summaries

    def sizes(self) -> dict[str, int]:
        with self._lock:
            return {
                "addresses": len(self._addresses),
                "keys": len(self._keys),
                "known": len(self._known),
                "windows": len(self._windows),
            }

    # ---------------------------------------------------------------- internals (lock held)

    def _rate(self, capacity: int) -> float:
        return capacity / self.window_s

    def _refill(self, bucket: _Bucket, capacity: int, now: float) -> float:
        if now > bucket.at:
            bucket.tokens = min(float(capacity), bucket.tokens + (now - bucket.at) * self._rate(capacity))
            bucket.at = now
        return bucket.tokens

    def _wait(self, tokens: float, capacity: int) -> float:
        return max(0.0, 1 - tokens) / self._rate(capacity)

    def _refund(self, address: str) -> None:
        bucket = self._addresses.get(address)
        if bucket is not None:
            bucket.tokens = min(float(self.per_address), bucket.tokens + 1)

    def _prune(self, table: OrderedDict[str, _Bucket], capacity: int, now: float) -> None:
        # Least recently touched first; a bucket that has refilled is the same as none.
        while table:
            name, bucket = next(iter(table.items()))
            if bucket.tokens + (now - bucket.at) * self._rate(max(capacity, 1)) < capacity:
                break
            del table[name]

    def _count(
        self, tenant: str, key_id: str, client: str, now: float, request_id: str | None
    ) -> list[FailureSummary]:
        out: list[FailureSummary] = []
        window = self._open_window((key_id, client), now, out)
        if window is not None:
            window.failures += 1
            return out
        if self._windows_per_key.get(key_id, 0) < ADDRESSES_PER_KEY:
            self._insert_window(_Window(tenant, key_id, client, now, request_id), out)
            self._windows_per_key[key_id] = self._windows_per_key.get(key_id, 0) + 1
            out.append(FailureSummary(tenant, key_id, client, 1, 0, self.window_s, True, request_id))
            return out
        overflow = self._open_window((key_id, OVERFLOW_ADDRESS), now, out)
        if overflow is None:
            overflow = _Window(tenant, key_id, OVERFLOW_ADDRESS, now, request_id, addresses=set())
            self._insert_window(overflow, out)
        overflow.failures += 1
        assert overflow.addresses is not None
        if len(overflow.addresses) < _MAX_DISTINCT:
            overflow.addresses.add(client)
        return out

    def _open_window(self, name: tuple[str, str], now: float, out: list[FailureSummary]) -> _Window | None:
        """The window under `name` if it is still open; one that ended is closed (summarised)."""
        window = self._windows.get(name)
        if window is not None and now - window.opened_at >= self.window_s:
            del self._windows[name]
            self._close(window, out)
            return None
        return window

    def _insert_window(self, window: _Window, out: list[FailureSummary]) -> None:
        self._windows[(window.key_id, window.address)] = window
        while len(self._windows) > self.max_entries:
            _, oldest = self._windows.popitem(last=False)
            self._close(oldest, out)

    def _due(self, now: float, everything: bool) -> list[FailureSummary]:
        out: list[FailureSummary] = []
        # Windows are inserted as they open, so the oldest come first.
        while self._windows:
            name, window = next(iter(self._windows.items()))
            if not everything and now - window.opened_at < self.window_s:
                break
            del self._windows[name]
            self._close(window, out)
        return out

    def _close(self, window: _Window, out: list[FailureSummary]) -> None:
        overflow = window.addresses is not None
        if not overflow:
            left = self._windows_per_key.get(window.key_id, 1) - 1
            if left > 0:
                self._windows_per_key[window.key_id] = left
            else:
                self._windows_per_key.pop(window.key_id, None)
        if window.failures == 0 and window.refused == 0:
            return  # the opening entry said it all
        out.append(
            FailureSummary(
                window.tenant,
                window.key_id,
                window.address,
                window.failures,
                window.refused,
                self.window_s,
                False,
                None,
                len(window.addresses) if window.addresses is not None else None,
            )
        )
