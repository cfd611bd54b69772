"""Periods named in a query."""

from __future__ import annotations

from datetime import UTC, datetime

from memos.recall.temporal import Period, periods


def d(y: int, m: int, day: int) -> datetime:
    return datetime(y, m, day, tzinfo=UTC)


def test_day_month_year_in_either_order() -> None:
    for text in ("on 9 November, 2022", "on November 9, 2022", "on 9th November 2022", "Nov. 9, 2022"):
        assert periods(text) == [Period(d(2022, 11, 9), d(2022, 11, 10))], text


def test_month_year_and_year() -> None:
    assert periods("in July 2022") == [Period(d(2022, 7, 1), d(2022, 8, 1))]
    assert periods("in December 2023") == [Period(d(2023, 12, 1), d(2024, 1, 1))]
    assert periods("recently in 2024") == [Period(d(2024, 1, 1), d(2025, 1, 1))]


def test_a_bare_month_needs_a_time_word_and_matches_any_year() -> None:
    (june,) = periods("When did she go camping in June?")
    assert june == Period(month=6)
    assert june.contains(d(2021, 6, 3)) and june.contains(d(2023, 6, 30))
    assert not june.contains(d(2023, 8, 1))
    assert periods("May I ask something?") == []
    assert periods("I may go") == []
    assert periods("this may help") == []


def test_the_most_specific_reading_wins_and_spans_are_read_once() -> None:
    assert periods("on 23 January, 2022") == [Period(d(2022, 1, 23), d(2022, 1, 24))]
    got = periods("between 1 May 2023 and June 2023")
    assert got == [Period(d(2023, 5, 1), d(2023, 5, 2)), Period(d(2023, 6, 1), d(2023, 7, 1))]


def test_contains_allows_a_few_days_after_the_end() -> None:
    (day,) = periods("on 9 November, 2022")
    assert day.contains(d(2022, 11, 9))
    assert day.contains(d(2022, 11, 15))  # told about it a few days later
    assert not day.contains(d(2022, 11, 8))
    assert not day.contains(d(2022, 11, 20))
    assert not day.contains(None)
    assert day.contains(datetime(2022, 11, 9, 12))  # naive datetimes are read as UTC


def test_no_period() -> None:
    assert periods("What books has Tim read?") == []
    assert periods("") == []
    assert periods("call 555 1234") == []
