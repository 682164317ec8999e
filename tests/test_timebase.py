"""core.timebase against independent references: the standard library's calendar and the IANA zone."""
from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from wulian.core.numbers import finite_or_none
from wulian.core.timebase import (
    CHINA_TZ, CHINA_TZ_NAME, NS_PER_DAY, NS_PER_S, as_china, china_day, china_day_start_ns, china_fields,
    china_midnight_ns, civil_from_days, date_day, day_date, day_start_ns, days_from_civil, dt_to_ns, is_date,
    ns_to_dt,
)

SHANGHAI = ZoneInfo(CHINA_TZ_NAME)
EPOCH_ORD = date(1970, 1, 1).toordinal()


@pytest.mark.parametrize("d", [date(1, 1, 1), date(1600, 2, 29), date(1969, 12, 31), date(1970, 1, 1),
                               date(2000, 2, 29), date(2026, 3, 1), date(2099, 12, 31), date(9999, 12, 31)])
def test_civil_days_match_the_standard_library(d):
    n = d.toordinal() - EPOCH_ORD
    assert days_from_civil(d.year, d.month, d.day) == n == date_day(d)
    assert civil_from_days(n) == (d.year, d.month, d.day)
    assert day_date(n) == d


def test_civil_days_every_day_of_four_centuries():
    for n in range(-146097 - 719468, 146097, 97):  # strides through 0000-03-01 .. 2370, all months and leap rules
        y, m, d = civil_from_days(n)
        assert days_from_civil(y, m, d) == n and is_date(y, m, d)
        if y >= 1:
            assert date(y, m, d).toordinal() - EPOCH_ORD == n


@pytest.mark.parametrize("ymd,ok", [((2024, 2, 29), True), ((2100, 2, 29), False), ((2000, 2, 29), True),
                                    ((2026, 4, 31), False), ((2026, 13, 1), False), ((2026, 0, 1), False)])
def test_is_date(ymd, ok):
    assert is_date(*ymd) is ok


def test_china_day_and_midnight_match_asia_shanghai():
    for ts in (0, 1_772_294_400 * NS_PER_S - 1, 1_772_294_400 * NS_PER_S, 1_800_000_000 * NS_PER_S + 123):
        local = datetime.fromtimestamp(ts // NS_PER_S, SHANGHAI)  # whole seconds: no float rounding
        assert china_day(ts) == local.date().toordinal() - EPOCH_ORD
        midnight = datetime(local.year, local.month, local.day, tzinfo=SHANGHAI)
        assert day_start_ns(china_day(ts)) == china_day_start_ns(ts) == int(midnight.timestamp()) * NS_PER_S
        assert china_midnight_ns(local.year, local.month, local.day) == int(midnight.timestamp()) * NS_PER_S
        assert CHINA_TZ.utcoffset(None) == local.utcoffset()
    arr = np.array([0, NS_PER_DAY - 8 * 3600 * NS_PER_S], np.int64)
    assert china_day(arr).tolist() == [0, 1]


def test_china_fields_and_datetime_round_trip():
    ts = 1_764_151_507 * NS_PER_S + 250_000_000  # 2025-11-26 18:05:07.25 China time
    assert china_fields(ts) == (2025, 11, 26, 18, 5, 7, 250_000_000)
    assert dt_to_ns(ns_to_dt(ts)) == ts
    assert dt_to_ns(as_china(datetime(2025, 11, 26, 18, 5, 7, 250_000))) == ts
    aware = datetime(2025, 11, 26, 10, 5, 7, tzinfo=timezone.utc)
    assert as_china(aware) is aware
    assert ns_to_dt(ts).astimezone(CHINA_TZ).hour == 18 and aware.astimezone(CHINA_TZ).utcoffset() == timedelta(hours=8)


def test_finite_or_none():
    assert finite_or_none(None) is None
    assert finite_or_none(float("nan")) is None and finite_or_none(np.float64("inf")) is None
    assert finite_or_none(np.int32(3)) == 3.0 and isinstance(finite_or_none(np.float32(1.5)), float)
    assert finite_or_none(-0.0) == 0.0 and math.copysign(1, finite_or_none(-0.0)) == -1
