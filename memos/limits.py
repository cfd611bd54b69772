"""The limits on what the memory layer accepts, in one place: user ids, caller metadata, timestamps.

The HTTP edge (proxy/wire.py, proxy/routes/memories.py) checks them on every input and its OpenAPI
document states them from these same constants; the vault checks the metadata shape again before it
seals a payload, so nothing it could not read back (and answer as JSON) is ever stored.

- A user id is 1 to 256 characters, has no control character (C0, DEL, C1; NUL included) and is not
  only whitespace. The same rule holds for the chat body's `user`, `X-Memos-User` and the memory
  API's `user` (body, query), so every user that can be written can be listed and erased.
- Caller metadata nests at most METADATA_MAX_DEPTH levels (the metadata object itself is level 1)
  and holds at most METADATA_MAX_VALUES values in all.
- A timestamp's year lies in [YEAR_MIN, YEAR_MAX] (as written, in its own offset; a Unix timestamp's
  in UTC): far inside what Python's datetime holds, so converting it to UTC and date arithmetic on a
  stored time (a day's slack, a retention period) never overflow.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

USER_ID_MAX_CHARS = 256
# Control characters (Unicode Cc) and the characters str.isspace() calls whitespace, as regex classes.
_CONTROL = r"\x00-\x1f\x7f-\x9f"
_SPACE = r"\x20\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# One pattern for the rule and for the OpenAPI document: no control character anywhere, and at least
# one character that is neither control nor whitespace. (The length is checked separately.)
USER_ID_PATTERN = f"^[^{_CONTROL}]*[^{_CONTROL}{_SPACE}][^{_CONTROL}]*$"
_USER_ID = re.compile(USER_ID_PATTERN)
# Text that is not only whitespace (what str.strip() leaves non-empty). Spelt as an explicit class,
# since `\S` differs between regex dialects (ECMA-262, which JSON Schema uses, counts U+001C-U+001F
# and U+0085 as non-space; Python does not).
NOT_BLANK_PATTERN = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"

METADATA_MAX_DEPTH = 16
METADATA_MAX_VALUES = 1000

YEAR_MIN = 1000
YEAR_MAX = 8999
# The same rule for ISO 8601 text (a prefix; the rest is the date-time format) and Unix timestamps.
YEAR_PATTERN = "^[1-8][0-9]{3}-"
TIMESTAMP_MIN = datetime(YEAR_MIN, 1, 1, tzinfo=UTC).timestamp()
TIMESTAMP_END = datetime(YEAR_MAX + 1, 1, 1, tzinfo=UTC).timestamp()  # exclusive


def user_id_problem(value: object) -> str | None:
    """Why `value` is not a valid user id (a sentence to show the client), or None when it is one."""
    if not isinstance(value, str):
        return "must be a string"
    if not value:
        return "must not be empty"
    if len(value) > USER_ID_MAX_CHARS:
        return f"is too long ({USER_ID_MAX_CHARS} characters at most)"
    if _USER_ID.fullmatch(value) is None:
        return "must not contain control characters or be only whitespace"
    return None


def time_problem(value: datetime) -> str | None:
    """Why a datetime cannot be stored (its year outside [YEAR_MIN, YEAR_MAX]), or None."""
    if not YEAR_MIN <= value.year <= YEAR_MAX:
        return f"must lie in the years {YEAR_MIN} to {YEAR_MAX}"
    return None


def json_shape_problem(
    value: Any, *, max_depth: int, max_values: int | None = None, max_items: int | None = None
) -> tuple[list[str | int], str] | None:
    """The first place where a parsed JSON value breaks a shape limit, as (path, reason), or None.

    Depth counts containers: `{}` is 1 deep, `{"a": []}` 2. `max_values` bounds the members of all
    containers together, `max_items` those of any one array or object. Iterative, so a value nested
    as deep as a JSON parser allows cannot exhaust the stack here; a path is kept as a linked chain
    (key, parent) and spelled out only for the answer."""
    if not isinstance(value, dict | list):
        return None
    values = 0
    stack: list[tuple[Any, int, _Chain]] = [(value, 1, None)]
    while stack:
        node, depth, chain = stack.pop()
        if depth > max_depth:
            return _path(chain), f"is nested deeper than {max_depth} levels"
        if max_items is not None and len(node) > max_items:
            return _path(chain), f"has more than {max_items} members"
        values += len(node)
        if max_values is not None and values > max_values:
            return _path(chain), f"holds more than {max_values} values"
        members = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in members:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1, (key, chain)))
    return None


_Chain = tuple[str | int, "_Chain"] | None


def _path(chain: _Chain) -> list[str | int]:
    out: list[str | int] = []
    while chain is not None:
        out.append(chain[0])
        chain = chain[1]
    return out[::-1]


def metadata_problem(metadata: Any) -> str | None:
    """Why caller metadata cannot be stored (too deep or too many values), or None."""
    found = json_shape_problem(metadata, max_depth=METADATA_MAX_DEPTH, max_values=METADATA_MAX_VALUES)
    return None if found is None else found[1]
