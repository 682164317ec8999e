"""AQI for station x hour and station x day grids (the numba path), heavy-pollution warnings, city AQI.

Inputs are hourly means of valid hours only (NaN elsewhere), keyed by pollutant
(``POLLUTANTS``), each (n_stations, n_hours) from ``t0_ns``. Every period is judged with the HJ 633
edition in force at its start (``AqiGrid.edition``, 0 = 2012, 1 = 2026).

Real-time (hourly) indicators:
* 2026: the six 1-h means; PM 1-h values against the daily PM columns (HJ 633-2026 §4.2).
* 2012: the six 1-h means plus the O3 8-h moving mean (HJ 633-2012 §5.1.3). For PM the default is the
  1-h value against the 24-h column (national platform practice from 2014-01-01); ``pm_2012="24h"``
  uses the 24-h moving means instead (platform practice in 2013). The SO2 24-h moving mean is carried
  too, for the SO2 1-h > 800 rule.
Daily indicators: 24-h means with >= 20 valid hours; O3 daily maximum 8-h mean (windows inside the day,
>= 6 hours each, >= 14 windows or above the 160 limit, HJ 663); 2012 also O3 daily maximum 1-h (taken
with >= 20 valid hours, like the 24-h means).
Moving means need history: pass 23 hours before the first hour you want reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from wulian.core.environment.editions import edition_index_many

from wulian.core.timebase import CHINA_OFFSET_NS, NS_PER_DAY, NS_PER_HOUR
from wulian.core.environment.episodes import Episode, episodes_from_grid
from wulian.core.environment.tables import (
    AQI_CATEGORIES,
    BREAKPOINTS,
    EDITIONS,
    IAQI_LEVELS,
    INDICATORS,
    POLLUTANT_LABEL,
    REPORT_INDICATORS,
)
from wulian.core.kernels.aqi_kernels import aqi_grid
from wulian.core.kernels.hourly_validity import daily_max_1h, daily_max_8h, hourly_to_daily, moving_mean

POLLUTANTS = ("SO2", "NO2", "CO", "O3", "PM10", "PM2.5")
_IDX = {k: i for i, k in enumerate(INDICATORS)}
_LEVEL_UPPER = np.array([c[0] for c in AQI_CATEGORIES[:-1]], dtype=np.int64)  # 50,100,150,200,300


@lru_cache(maxsize=None)
def aqi_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Breakpoints (2, n_indicators, 8) int64, defined-mask, and IAQI levels, for the kernels."""
    bp = np.zeros((2, len(INDICATORS), len(IAQI_LEVELS)), dtype=np.int64)
    ok = np.zeros(bp.shape, dtype=np.bool_)
    for e, ed in enumerate(EDITIONS):
        for i, key in enumerate(INDICATORS):
            for k, v in enumerate(BREAKPOINTS[ed][key]):
                if v is not None:
                    bp[e, i, k] = v
                    ok[e, i, k] = True
    return bp, ok, np.array(IAQI_LEVELS, dtype=np.int64)


@lru_cache(maxsize=None)
def report_members(report: str) -> np.ndarray:
    """(2, n_indicators) bool: the indicators of ``report`` ("hourly"/"daily") in each edition."""
    m = np.zeros((2, len(INDICATORS)), dtype=np.bool_)
    for e, ed in enumerate(EDITIONS):
        for key in REPORT_INDICATORS[(ed, report)]:
            m[e, _IDX[key]] = True
    return m


@dataclass(frozen=True, slots=True)
class AqiGrid:
    """AQI per station (rows) and period (columns); IAQI codes as in ``core.kernels.aqi_kernels``."""

    report: str
    period_start_ns: np.ndarray  # int64 (n_periods,)
    edition: np.ndarray  # int8 (n_periods,), index into EDITIONS
    iaqi: np.ndarray  # int16 (n_indicators, n_stations, n_periods)
    aqi: np.ndarray  # int16 (n_stations, n_periods); -1 = nothing to compute from
    primary_mask: np.ndarray  # int32 bitmask over INDICATORS, 0 when AQI <= 50
    n_missing: np.ndarray  # int8 report indicators without a valid value

    @property
    def level(self) -> np.ndarray:
        """AQI level 1..6 (0 where there is no AQI)."""
        lv = np.searchsorted(_LEVEL_UPPER, self.aqi, side="left") + 1
        return np.where(self.aqi >= 0, lv, 0).astype(np.int8)

    @property
    def publishable(self) -> np.ndarray:
        """HJ 633-2026 §5.3.1: with an indicator missing, AQI/primary/level are published only above 100."""
        ed = np.broadcast_to(self.edition, self.aqi.shape)
        return (self.aqi >= 0) & ((self.n_missing == 0) | (ed == 0) | (self.aqi > 100))

    def edition_name(self, period: int) -> str:
        return EDITIONS[int(self.edition[period])]

    def primary(self, station: int, period: int) -> tuple[str, ...]:
        mask = int(self.primary_mask[station, period])
        return tuple(dict.fromkeys(POLLUTANT_LABEL[k] for i, k in enumerate(INDICATORS) if mask >> i & 1))

    def rows(self, stations: list[str]) -> list[dict]:
        """One record per station and period with an AQI, each naming its edition (for storage/API)."""
        out = []
        level = self.level
        publishable = self.publishable
        for s, p in zip(*np.nonzero(self.aqi >= 0)):
            aqi = int(self.aqi[s, p])
            cat = AQI_CATEGORIES[int(level[s, p]) - 1]
            out.append({
                "station": stations[s],
                "period_start_ns": int(self.period_start_ns[p]),
                "report": self.report,
                "edition": self.edition_name(p),
                "aqi": aqi,
                "level": int(level[s, p]),
                "category_zh": cat[3],
                "primary": list(self.primary(s, p)),
                "iaqi": {k: int(self.iaqi[i, s, p]) for i, k in enumerate(INDICATORS) if self.iaqi[i, s, p] >= 0},
                "missing": int(self.n_missing[s, p]),
                "publishable": bool(publishable[s, p]),
            })
        return out


def aqi_many(conc: np.ndarray, period_start_ns: np.ndarray, report: str) -> AqiGrid:
    """AQI from an indicator grid (n_indicators, n_stations, n_periods), NaN = missing."""
    conc = np.asarray(conc, dtype=np.float64)
    n_ind, n_st, n_per = conc.shape
    if n_ind != len(INDICATORS):
        raise ValueError(f"first axis must be the {len(INDICATORS)} indicators {INDICATORS}")
    starts = np.asarray(period_start_ns, dtype=np.int64)
    ed = edition_index_many(starts)
    flat = np.ascontiguousarray(conc.reshape(n_ind, n_st * n_per))
    ed_flat = np.empty((n_st, n_per), np.int8)  # writable and contiguous: one kernel signature
    ed_flat[:] = ed
    ed_flat = ed_flat.reshape(-1)
    iaqi = np.empty((n_ind, n_st * n_per), np.int16)
    aqi = np.empty(n_st * n_per, np.int16)
    prim = np.empty(n_st * n_per, np.int32)
    nmiss = np.empty(n_st * n_per, np.int8)
    bp, ok, levels = aqi_arrays()
    aqi_grid(flat, ed_flat, report_members(report), bp, ok, levels, iaqi, aqi, prim, nmiss)
    shape = (n_st, n_per)
    return AqiGrid(report, starts, ed, iaqi.reshape(n_ind, *shape), aqi.reshape(shape),
                   prim.reshape(shape), nmiss.reshape(shape))


def _valid(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x)


def hourly_indicators(
    hourly: dict[str, np.ndarray], pm_2012: str = "1h", edition: np.ndarray | None = None
) -> np.ndarray:
    """Real-time indicator grid (n_indicators, n_stations, n_hours) from hourly pollutant means.

    Both editions' indicators are filled; each period's edition picks its own members. With
    ``pm_2012="24h"`` the PM columns hold the 24-h moving means in 2012 hours (``edition`` per hour,
    0 = 2012) and the 1-h values in 2026 hours.
    """
    if pm_2012 not in ("1h", "24h"):
        raise ValueError("pm_2012 must be '1h' or '24h'")
    first = hourly[POLLUTANTS[0]]
    out = np.full((len(INDICATORS), *first.shape), np.nan)
    f = {p: np.ascontiguousarray(hourly[p], dtype=np.float64) for p in POLLUTANTS}
    out[_IDX["SO2_1H"]] = f["SO2"]
    out[_IDX["SO2_24H"]] = moving_mean(f["SO2"], _valid(f["SO2"]), 24, 20)
    out[_IDX["NO2_1H"]] = f["NO2"]
    out[_IDX["CO_1H"]] = f["CO"]
    out[_IDX["O3_1H"]] = f["O3"]
    out[_IDX["O3_8H"]] = moving_mean(f["O3"], _valid(f["O3"]), 8, 6)
    for key, p in (("PM10_24H", "PM10"), ("PM25_24H", "PM2.5")):
        out[_IDX[key]] = f[p]
        if pm_2012 == "24h":
            moving = moving_mean(f[p], _valid(f[p]), 24, 20)
            in_2012 = np.ones(first.shape[1], bool) if edition is None else np.asarray(edition) == 0
            out[_IDX[key]] = np.where(in_2012, moving, f[p])
    return out


def hourly_aqi(hourly: dict[str, np.ndarray], t0_ns: int, pm_2012: str = "1h") -> AqiGrid:
    """Real-time AQI for every station and hour from hourly means (NaN = invalid hour)."""
    n_hours = hourly[POLLUTANTS[0]].shape[1]
    starts = t0_ns + np.arange(n_hours, dtype=np.int64) * NS_PER_HOUR
    ind = hourly_indicators(hourly, pm_2012, edition_index_many(starts))
    return aqi_many(ind, starts, "hourly")


def daily_indicators(hourly: dict[str, np.ndarray], min_hours: int = 20) -> np.ndarray:
    """Daily indicator grid (n_indicators, n_stations, n_days); the hourly grid starts at China midnight."""
    f = {p: np.ascontiguousarray(hourly[p], dtype=np.float64) for p in POLLUTANTS}
    n_st, n_h = f["SO2"].shape
    out = np.full((len(INDICATORS), n_st, n_h // 24), np.nan)
    for key, p in (("SO2_24H", "SO2"), ("NO2_24H", "NO2"), ("CO_24H", "CO"), ("PM10_24H", "PM10"),
                   ("PM25_24H", "PM2.5")):
        mean, _, ok = hourly_to_daily(f[p], _valid(f[p]), min_hours)
        out[_IDX[key]] = np.where(ok, mean, np.nan)
    o3ok = _valid(f["O3"])
    m8, ok8 = daily_max_8h(f["O3"], o3ok, 6, 14, 160.0)
    out[_IDX["O3_8H"]] = np.where(ok8, m8, np.nan)
    m1, ok1 = daily_max_1h(f["O3"], o3ok, min_hours)
    out[_IDX["O3_1H"]] = np.where(ok1, m1, np.nan)
    return out


def daily_aqi(hourly: dict[str, np.ndarray], t0_ns: int) -> AqiGrid:
    """Daily AQI per station and China day; ``t0_ns`` must be a China midnight."""
    if (t0_ns + CHINA_OFFSET_NS) % NS_PER_DAY:
        raise ValueError("daily AQI needs an hourly grid starting at a China midnight")
    ind = daily_indicators(hourly)
    starts = t0_ns + np.arange(ind.shape[2], dtype=np.int64) * NS_PER_DAY
    return aqi_many(ind, starts, "daily")


def city_indicators(ind: np.ndarray, region_of_station: np.ndarray, n_regions: int) -> np.ndarray:
    """Per region and period the mean of each indicator over the region's stations that have it
    (HJ 663: a city's concentration is the arithmetic mean of its evaluation stations). The AQI of a city
    is then ``aqi_many`` of these means, never a mean or max of station AQIs."""
    reg = np.asarray(region_of_station, dtype=np.int64)
    n_ind, _, n_per = ind.shape
    have = np.isfinite(ind)
    sums = np.zeros((n_ind, n_regions, n_per))
    counts = np.zeros((n_ind, n_regions, n_per))
    np.add.at(sums, (slice(None), reg), np.where(have, ind, 0.0))
    np.add.at(counts, (slice(None), reg), have.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def heavy_pollution_warnings(
    grid: AqiGrid, stations: list[str], min_hours: int, threshold: int = 201
) -> list[Episode]:
    """Warnings where AQI stays >= ``threshold`` (201: 重度污染) for ``min_hours`` consecutive periods."""
    cond = grid.aqi >= threshold
    step = NS_PER_HOUR if grid.report == "hourly" else NS_PER_DAY
    t0 = int(grid.period_start_ns[0]) if len(grid.period_start_ns) else 0
    eds = sorted({EDITIONS[int(e)] for e in grid.edition})
    return episodes_from_grid(
        cond, grid.aqi.astype(np.float64), t0, step, rule="heavy_pollution", subjects=list(stations),
        items=["AQI"] * len(stations), thresholds=float(threshold), min_periods=min_hours,
        basis=f"{grid.report} AQI, {'+'.join(eds)}",
    )
