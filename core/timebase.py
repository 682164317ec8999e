"""The time base: units, China time and the calendar, defined once.

Times are int64 ns since the epoch, UTC, everywhere below the API. Days, day buckets and the times
devices print (HJ 212 DataTime/QN, JT/T 808 BCD[6], CJ/T 188 meter clocks, permits) are China time:
Asia/Shanghai has kept a fixed UTC+08:00 without daylight saving since 1991, so a constant offset is
exact for every timestamp we can receive (``CHINA_TZ_NAME`` is the IANA name SQL and Grafana use).

China *day numbers* count days since 1970-01-01 in China time: day ``d`` runs from
``day_start_ns(d)`` (16:00 UTC of the day before) to ``day_start_ns(d + 1)``.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np

NS_PER_US = 1_000
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
NS_PER_MIN = 60 * NS_PER_S
NS_PER_HOUR = 60 * NS_PER_MIN
NS_PER_DAY = 24 * NS_PER_HOUR
S_PER_DAY = 86_400
# 2000-01-01T00:00Z in Unix microseconds: the origin of PostgreSQL's binary timestamp (int64 microseconds)
PG_EPOCH_UNIX_US = 946_684_800 * 1_000_000

CHINA_TZ_NAME = "Asia/Shanghai"  # day buckets and DataTime are China time; storage is UTC
CHINA_OFFSET_S = 8 * 3600  # UTC+08:00, no DST since 1991
CHINA_OFFSET_NS = CHINA_OFFSET_S * NS_PER_S
CHINA_TZ = timezone(timedelta(seconds=CHINA_OFFSET_S))  # a tzinfo for datetime users

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_DAY = date(1970, 1, 1)


# --- China days ----------------------------------------------------------------------------------

def china_day(ts_ns, utc_offset_ns: int = CHINA_OFFSET_NS):
    """China day number of ``ts_ns`` (an int, or an int64 array for arrays)."""
    if isinstance(ts_ns, (int, np.integer)):
        return (int(ts_ns) + utc_offset_ns) // NS_PER_DAY
    return (np.asarray(ts_ns, np.int64) + utc_offset_ns) // NS_PER_DAY


def day_start_ns(day: int) -> int:
    """UTC ns of 00:00 China time of day number ``day``."""
    return day * NS_PER_DAY - CHINA_OFFSET_NS


def china_day_start_ns(ts_ns: int) -> int:
    """Start (UTC ns) of the China calendar day containing ``ts_ns``."""
    return day_start_ns(china_day(ts_ns))


def day_date(day: int) -> date:
    """The calendar date of China day number ``day``."""
    return _EPOCH_DAY + timedelta(days=int(day))


def date_day(d: date) -> int:
    """China day number of a calendar date."""
    return (d - _EPOCH_DAY).days


def china_today() -> date:
    """Today's date in China."""
    return datetime.now(CHINA_TZ).date()


# --- the proleptic Gregorian calendar (H. Hinnant's algorithms, with Python's floor division) ------

_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def is_date(y: int, m: int, d: int) -> bool:
    """Whether y-m-d is a date of the proleptic Gregorian calendar."""
    if not 1 <= m <= 12:
        return False
    leap = m == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    return 1 <= d <= _MONTH_DAYS[m - 1] + leap


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (no validation: see ``is_date``)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01 (inverse of ``days_from_civil``)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


# --- China wall-clock times as the codecs print and parse them ---------------------------------

def china_midnight_ns(y: int, m: int, d: int) -> int:
    """UTC ns of 00:00 China time on y-m-d (no validation: see ``is_date``)."""
    return day_start_ns(days_from_civil(y, m, d))


def china_fields(ts_ns: int) -> tuple[int, int, int, int, int, int, int]:
    """(year, month, day, hour, minute, second, ns within the second) of UTC ``ts_ns`` in China time."""
    days, rem = divmod(ts_ns + CHINA_OFFSET_NS, NS_PER_DAY)
    y, m, d = civil_from_days(days)
    secs, sub = divmod(rem, NS_PER_S)
    return y, m, d, secs // 3600, secs // 60 % 60, secs % 60, sub


def as_china(dt: datetime) -> datetime:
    """``dt`` itself when it carries an offset; a naive one is read as China time (how permits, CLI
    arguments and meter clocks are written)."""
    return dt if dt.tzinfo else dt.replace(tzinfo=CHINA_TZ)


# --- datetime <-> ns ------------------------------------------------------------------------------

def ns_to_dt(ts_ns: int) -> datetime:
    """An aware UTC datetime (µs precision, what PostgreSQL keeps) of ``ts_ns``."""
    return datetime.fromtimestamp(ts_ns / 1e9, tz=timezone.utc)


def dt_to_ns(dt: datetime) -> int:
    """Exact ns of an aware datetime (no float rounding)."""
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * NS_PER_S + delta.microseconds * NS_PER_US
