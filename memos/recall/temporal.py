"""Periods a query names ("in May 2023", "on 9 November, 2022", "in June", "in 2024").

Retrieval prefers memories observed during a period the query names (memos/recall/ranking.py). Only explicit
calendar expressions count: a day with its month and year, a month with or without a year, a year.
Relative phrases ("last week") are left alone: their anchor is ambiguous in a stored conversation.
A month named without a year matches that month of any year. A period is widened by `slack_days`
after its end, because people tell of an event in the days after it happened.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
_MONTHS.update({name.lower(): i for i, name in enumerate(calendar.month_abbr) if name})
_MONTHS["sept"] = 9
_MON = (
    r"(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
_YEAR = r"((?:19|20)\d\d)"
_DAY_MONTH_YEAR = re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MON}\b,?\s*{_YEAR}\b", re.I)
_MONTH_DAY_YEAR = re.compile(rf"\b{_MON}\s+{_DAY}\b,?\s*{_YEAR}\b", re.I)
_MONTH_YEAR = re.compile(rf"\b{_MON},?\s+(?:of\s+)?{_YEAR}\b", re.I)
_YEAR_ONLY = re.compile(rf"\b{_YEAR}\b")
# a bare month only after a word that makes it a time ("in May", not "may I"); short forms are too
# ambiguous alone ("mar", "dec")
_BARE_MONTH = re.compile(
    r"\b(?:in|during|of|since|until|till|before|after|by|early|late|mid)\s+"
    r"(january|february|march|april|may|june|july|august|september|october|november|december)\b",
    re.I,
)


@dataclass(frozen=True)
class Period:
    """[start, end) in UTC; or, with `month` set and no dates, that month in any year."""

    start: datetime | None = None
    end: datetime | None = None
    month: int | None = None

    def contains(self, when: datetime | None, slack_days: float = 7.0) -> bool:
        if when is None:
            return False
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if self.start is not None and self.end is not None:
            return self.start <= when < self.end + timedelta(days=slack_days)
        if self.month is not None:
            return when.month == self.month or (when - timedelta(days=slack_days)).month == self.month
        return False


def _month(name: str) -> int:
    name = name.lower().rstrip(".")
    return _MONTHS.get(name) or _MONTHS[name[:3]]


def _day(year: int, month: int, day: int) -> Period:
    start = datetime(year, month, day, tzinfo=UTC)
    return Period(start, start + timedelta(days=1))


def _month_period(year: int, month: int) -> Period:
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return Period(start, end)


def periods(text: str) -> list[Period]:
    """The periods named in `text`, most specific reading first; overlapping spans are read once."""
    found: list[Period] = []
    taken: list[tuple[int, int]] = []

    def free(span: tuple[int, int]) -> bool:
        return all(span[1] <= a or span[0] >= b for a, b in taken)

    readers = (
        (_DAY_MONTH_YEAR, lambda g: _day(int(g[2]), _month(g[1]), int(g[0]))),
        (_MONTH_DAY_YEAR, lambda g: _day(int(g[2]), _month(g[0]), int(g[1]))),
        (_MONTH_YEAR, lambda g: _month_period(int(g[1]), _month(g[0]))),
        (
            _YEAR_ONLY,
            lambda g: Period(
                datetime(int(g[0]), 1, 1, tzinfo=UTC), datetime(int(g[0]) + 1, 1, 1, tzinfo=UTC)
            ),
        ),
        (_BARE_MONTH, lambda g: Period(month=_month(g[0]))),
    )
    for pattern, read in readers:
        for m in pattern.finditer(text):
            span = m.span(m.lastindex or 0) if pattern is _BARE_MONTH else m.span()
            if not free(span):
                continue
            try:
                period = read(m.groups())
            except (ValueError, KeyError):
                continue
            taken.append(span)
            if period not in found:
                found.append(period)
    return found
