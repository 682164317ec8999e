"""Which edition of HJ 633 / GB 3095 applies to a piece of data: chosen by the data's own timestamp.

Both HJ 633-2026 and GB 3095-2026 took effect on 2026-03-01. The date is a China date, so the switch is
at 2026-03-01 00:00 China time (UTC+8, no daylight saving since 1991). Hourly values are judged by the
start of their hour, daily values by the start of their China day: the hour 00:00-01:00 and the whole day
of 2026-03-01 already fall under the 2026 rules. History is never recomputed with the new tables.
"""
from __future__ import annotations

import numpy as np

from wulian.core.environment.tables import EDITION_2012, EDITION_2026
from wulian.core.timebase import NS_PER_S


# 2026-03-01T00:00:00+08:00 == 2026-02-28T16:00:00Z
EDITION_2026_START_NS = 1_772_294_400 * NS_PER_S

GB3095_2012 = "GB3095-2012"
GB3095_2026 = "GB3095-2026"


def aqi_edition_for(ts_ns: int) -> str:
    """HJ 633 edition for data whose period starts at ``ts_ns``."""
    return EDITION_2026 if ts_ns >= EDITION_2026_START_NS else EDITION_2012


def gb3095_edition_for(ts_ns: int) -> str:
    """GB 3095 edition for data whose period starts at ``ts_ns`` (same switch date as HJ 633)."""
    return GB3095_2026 if ts_ns >= EDITION_2026_START_NS else GB3095_2012


def edition_index_many(period_start_ns: np.ndarray) -> np.ndarray:
    """Edition index per period (0 = 2012, 1 = 2026), the form the kernels take."""
    return (np.asarray(period_start_ns, dtype=np.int64) >= EDITION_2026_START_NS).astype(np.int8)

