"""Query time ranges shared by the routes: naive timestamps are UTC, 'to' never before 'from', and a
request of China days spans at most ``MAX_DAYS`` (one query's rows stay bounded)."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from wulian.api.errors import BadQuery
from wulian.core.timebase import china_today

MAX_DAYS = 366  # a year and a day: a leap year's daily rows in one request


def utc(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


def check_range(start, end) -> None:
    if start is not None and end is not None and end < start:
        raise BadQuery("'to' must not be before 'from'")


def day_range(first: date | None, last: date | None, default_days: int = 30,
              max_days: int = MAX_DAYS) -> tuple[date, date]:
    """The China days [first, last] a request asks for: ``last`` defaults to today, ``first`` to
    ``default_days`` before it (cut at the first representable day for a 'to' in year 1)."""
    last = last or china_today()
    if first is None:
        try:
            first = last - timedelta(days=default_days)
        except OverflowError:
            first = date.min
    check_range(first, last)
    if (last - first).days >= max_days:
        raise BadQuery(f"at most {max_days} days per request")
    return first, last
