"""Job ``air_quality``: station AQI hourly (real-time) and daily per HJ 633, city AQI, heavy-pollution
warnings.

Hourly means come from minute/real-time data with the 45-minute validity (GB 3095 Table 4), or from
device-made hourly values (HJ 212 CN 2061) where ours are not valid. Each period is judged with the
HJ 633 edition in force at its start (``core.environment.editions``) and every row names it. The grid
starts a day before the new hours so 24-h and 8-h moving means have their history. City AQI follows
HJ 663: per indicator the mean over the city's stations (``attrs.city``, else the region), then HJ 633.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wulian.core.const import Stream
from wulian.core.environment.aqi_series import (
    POLLUTANTS,
    AqiGrid,
    aqi_many,
    city_indicators,
    daily_indicators,
    heavy_pollution_warnings,
    hourly_indicators,
)
from wulian.core.timebase import NS_PER_DAY, NS_PER_HOUR
from wulian.core.environment.metric_names import air_metric
from wulian.core.environment.online import episode_actions
from wulian.core.environment.system_rules import HEAVY_POLLUTION
from wulian.core.environment.tables import AQI_CATEGORIES, INDICATORS
from wulian.core.timebase import ns_to_dt
from wulian.ingest.alert_store import apply_actions
from wulian.ingest.jobs.env_common import EnvJob, hourly_grid, jdump, target
from wulian.settings import Settings

_STATION_COLS = ("time, device, edition, aqi, level, category, color, primary_pollutants, iaqi, concentrations,"
                 " missing, publishable")
_STATION_SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in _STATION_COLS.split(", ")[2:])
_HOURLY_SQL = (f"INSERT INTO env_aqi_hourly ({_STATION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb,"
               f" $10::jsonb, $11, $12) ON CONFLICT (device, time) DO UPDATE SET {_STATION_SET}")
_DAILY_SQL = _HOURLY_SQL.replace("env_aqi_hourly", "env_aqi_daily")
_CITY_SQL = """
INSERT INTO env_city_aqi (time, city, report, edition, aqi, level, category, color, primary_pollutants, iaqi, stations)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11)
ON CONFLICT (city, report, time) DO UPDATE SET edition = EXCLUDED.edition, aqi = EXCLUDED.aqi,
    level = EXCLUDED.level, category = EXCLUDED.category, color = EXCLUDED.color,
    primary_pollutants = EXCLUDED.primary_pollutants, iaqi = EXCLUDED.iaqi, stations = EXCLUDED.stations"""


@dataclass(frozen=True, slots=True)
class AirJobConfig:
    interval_s: float = 300.0
    lag_s: float = 900.0
    backfill_h: int = 48
    max_span_h: int = 168
    heavy_hours: int = 4


def _record(grid: AqiGrid, ind: np.ndarray, s: int, p: int) -> tuple:
    """(edition, aqi, level, category, colour, primary, iaqi json, concentrations json, missing, publishable)."""
    level = int(grid.level[s, p])
    cat = AQI_CATEGORIES[level - 1]
    iaqi = {k: int(grid.iaqi[i, s, p]) for i, k in enumerate(INDICATORS) if grid.iaqi[i, s, p] >= 0}
    conc = {k: round(float(ind[i, s, p]), 4) for i, k in enumerate(INDICATORS) if np.isfinite(ind[i, s, p])}
    return (grid.edition_name(p), int(grid.aqi[s, p]), level, cat[3], cat[6], list(grid.primary(s, p)),
            jdump(iaqi), jdump(conc), int(grid.n_missing[s, p]), bool(grid.publishable[s, p]))


class AirQualityJob(EnvJob):
    name = "air_quality"
    stream = Stream.AIR.value
    counters = ("stations", "hourly_rows", "daily_rows", "city_rows", "alerts_raised", "alerts_cleared")

    def __init__(self, cfg: AirJobConfig = AirJobConfig()) -> None:
        super().__init__(cfg)

    @property
    def lookback_h(self) -> int:
        return 24 + max(self.cfg.heavy_hours, 1)  # 24-h moving means, then the warning's hours

    def metric_role(self, metric, dev):
        return air_metric(metric)

    async def _compute(self, con, devices, samples, window, stats) -> None:
        grid, uploaded = hourly_grid(samples, window)
        hourly = np.where(grid.valid, grid.mean, uploaded)  # valid hours only, NaN elsewhere
        st_index: dict[int, int] = {}
        for i, _ in samples.series:
            st_index.setdefault(i, len(st_index))
        stations = [devices[i] for i in st_index]
        n_st, n_h = len(stations), window.n_hours
        means = {p: np.full((n_st, n_h), np.nan) for p in POLLUTANTS}
        for k, (i, name) in enumerate(samples.series):
            means[name][st_index[i]] = hourly[k]
        stats["stations"] = n_st
        starts = window.t0_ns + np.arange(n_h, dtype=np.int64) * NS_PER_HOUR
        ind = hourly_indicators(means)
        hg = aqi_many(ind, starts, "hourly")
        new = window.new_hours()
        rows = [(ns_to_dt(int(starts[p])), st.id, *_record(hg, ind, s, p))
                for s, st in enumerate(stations) for p in new if hg.aqi[s, p] >= 0]
        if rows:
            await con.executemany(_HOURLY_SQL, rows)
        stats["hourly_rows"] = len(rows)
        # cities
        cities = sorted({st.attrs.get("city") or st.region for st in stations})
        city_of = np.array([cities.index(st.attrs.get("city") or st.region) for st in stations])
        counts = np.bincount(city_of, minlength=len(cities))
        cg_ind = city_indicators(ind, city_of, len(cities))
        cg = aqi_many(cg_ind, starts, "hourly")
        city_rows = [(ns_to_dt(int(starts[p])), c, "hourly", *self._city(cg, c_i, p), int(counts[c_i]))
                     for c_i, c in enumerate(cities) for p in new if cg.aqi[c_i, p] >= 0]
        # heavy-pollution warnings over the hourly AQI
        min_h = max(self.cfg.heavy_hours, 1)
        eps = heavy_pollution_warnings(hg, [st.device_id for st in stations], min_h)
        by_id = {st.device_id: st for st in stations}
        actions = episode_actions(eps, window.new_from_ns, window.end_ns, NS_PER_HOUR, min_h)
        out = await apply_actions(con, actions, lambda a: target(
            HEAVY_POLLUTION, by_id[a.episode.subject], "AQI", f"AQI >= 201 for {min_h} h, {a.episode.basis}"))
        stats["alerts_raised"] += out["alerts_raised"]
        stats["alerts_cleared"] += out["alerts_cleared"]
        days = window.completed_days()
        if days:
            d_ind = daily_indicators(means)
            d_starts = window.t0_ns + np.arange(d_ind.shape[2], dtype=np.int64) * NS_PER_DAY
            dg = aqi_many(d_ind, d_starts, "daily")
            drows = [(ns_to_dt(int(d_starts[d])), st.id, *_record(dg, d_ind, s, d))
                     for s, st in enumerate(stations) for d in days if dg.aqi[s, d] >= 0]
            if drows:
                await con.executemany(_DAILY_SQL, drows)
            stats["daily_rows"] = len(drows)
            cdg = aqi_many(city_indicators(d_ind, city_of, len(cities)), d_starts, "daily")
            city_rows += [(ns_to_dt(int(d_starts[d])), c, "daily", *self._city(cdg, c_i, d), int(counts[c_i]))
                          for c_i, c in enumerate(cities) for d in days if cdg.aqi[c_i, d] >= 0]
        if city_rows:
            await con.executemany(_CITY_SQL, city_rows)
        stats["city_rows"] = len(city_rows)

    @staticmethod
    def _city(grid: AqiGrid, c: int, p: int) -> tuple:
        level = int(grid.level[c, p])
        cat = AQI_CATEGORIES[level - 1]
        iaqi = {k: int(grid.iaqi[i, c, p]) for i, k in enumerate(INDICATORS) if grid.iaqi[i, c, p] >= 0}
        return (grid.edition_name(p), int(grid.aqi[c, p]), level, cat[3], cat[6], list(grid.primary(c, p)),
                jdump(iaqi))


def create(settings: Settings) -> AirQualityJob:
    e = settings.environment
    return AirQualityJob(AirJobConfig(interval_s=e.interval_s, lag_s=e.lag_s, backfill_h=e.backfill_h,
                                      max_span_h=e.max_span_h, heavy_hours=e.heavy_pollution_hours))
