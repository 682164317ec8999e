"""Query time ranges shared by the routes: naive timestamps are UTC, and 'to' never before 'from'."""
from __future__ import annotations

from datetime import datetime, timezone

from wulian.api.errors import BadQuery


def utc(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


def check_range(start, end) -> None:
    if start is not None and end is not None and end < start:
        raise BadQuery("'to' must not be before 'from'")
