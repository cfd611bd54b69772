"""The errors memory raises on purpose, in one hierarchy; the proxy maps each kind to HTTP once
(proxy/errors.py `memos_error`).

Messages are safe to show to the caller: they name fields and ids, never memory or message text.
"""

from __future__ import annotations


class MemosError(Exception):
    """Base of every error memory raises on purpose. `param` names the offending input, if any."""

    param: str | None = None


class InvalidInput(MemosError, ValueError):
    """The caller's input is wrong (HTTP 400); the message says what, `param` where."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class NotFound(MemosError, LookupError):
    """What the caller named does not exist, or is not theirs to see (HTTP 404)."""


class Denied(MemosError):
    """The principal may not do this (HTTP 403)."""


class Unavailable(MemosError):
    """Memory cannot serve now and the tenant's policy fails closed (HTTP 503); retrying may help."""


class Inconsistent(MemosError):
    """Stored data could not be read back as written (a ciphertext that does not authenticate, a key
    destroyed): never shown as data, answered as a server error."""
