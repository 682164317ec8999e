"""Energy profile: daily energy per enterprise by carrier and in tonnes of standard coal (GB/T 2589-2020,
core/profiles/standard_coal.py), and electricity use against the enterprise's own hour-of-week profile
(core/profiles/baseline.py) -> ``energy_anomalies`` rows and alerts.

Consumption of a cumulative register over an interval is the sum of its positive steps between
consecutive readings, each step counted in the China day (hour) its later reading closes; a negative step
(a meter replaced or reset) is never subtracted. An enterprise is the meters sharing attrs
``enterprise`` (default: each meter alone) in one region; its coefficients are the first meter's attrs
(``gas_kgce_per_m3``, ``steam_enthalpy_kj_kg``).

Why a derive job and not an alarm rule kind: the baseline is four weeks of hourly history per enterprise
and hour of the week (672 numbers, medians of sums over several meters) - stored data, not per-reading
state - and an hour is judged once it is complete, which a job does naturally.
"""
from __future__ import annotations

from collections import defaultdict

import asyncpg
import numpy as np

from wulian.core.profiles.baseline import HOURS_PER_WEEK, baseline, high_hours, runs
from wulian.core.profiles.standard_coal import CARRIERS, CoalFactors
from wulian.core.profiles.system_rules import ENERGY_ANOMALY
from wulian.core.timebase import NS_PER_DAY, NS_PER_HOUR, NS_PER_S, china_day, day_date, day_start_ns
from wulian.ingest import device_store
from wulian.ingest.alert_store import AlertCounts, sync_alert, target_of
from wulian.ingest.device_store import DeviceRef
from wulian.ingest.jobs.base import SpanJob
from wulian.ingest.jobs.profile_readings import stream_readings
from wulian.ingest.jobs.sql import TS_US, existing_open

STREAM = "energy"
ELECTRICITY = "electricity_kwh"
_DAILY_UPSERT = """
INSERT INTO energy_daily (region, enterprise, day, meters, electricity_kwh, gas_m3, steam_t, water_t, tce)
SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::int4[], $5::float8[], $6::float8[], $7::float8[],
    $8::float8[], $9::float8[])
ON CONFLICT (region, enterprise, day) DO UPDATE SET meters = EXCLUDED.meters,
    electricity_kwh = EXCLUDED.electricity_kwh, gas_m3 = EXCLUDED.gas_m3, steam_t = EXCLUDED.steam_t,
    water_t = EXCLUDED.water_t, tce = EXCLUDED.tce, updated_at = now()"""
_ANOMALY_UPSERT = f"""
INSERT INTO energy_anomalies (region, enterprise, start_time, end_time, open, hours, consumption_kwh, baseline_kwh)
SELECT r, e, {TS_US.format('s')}, {TS_US.format('t')}, o, h, c, b
FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::bool[], $6::int4[], $7::float8[], $8::float8[])
    AS u(r, e, s, t, o, h, c, b)
ON CONFLICT (region, enterprise, start_time) DO UPDATE SET end_time = EXCLUDED.end_time, open = EXCLUDED.open,
    hours = EXCLUDED.hours, consumption_kwh = EXCLUDED.consumption_kwh, baseline_kwh = EXCLUDED.baseline_kwh,
    updated_at = now()"""


def steps_by_bin(t_ns: np.ndarray, v: np.ndarray, bin_ns: int, origin_ns: int, n_bins: int) -> np.ndarray:
    """Sum of a register's positive steps per bin ``(origin + i*bin, origin + (i+1)*bin]`` of their later
    reading (a reading exactly at a bin's end closes that bin, as a midnight reading closes the day); bins
    with no reading at all are NaN (unknown, not zero)."""
    out = np.full(n_bins, np.nan)
    if t_ns.shape[0] == 0:
        return out
    idx = (t_ns - 1 - origin_ns) // bin_ns
    ok = (idx >= 0) & (idx < n_bins)
    seen = np.unique(idx[ok])
    out[seen] = 0.0
    step = np.maximum(np.diff(v), 0.0)
    later = idx[1:]
    m = (later >= 0) & (later < n_bins)
    np.add.at(out, later[m], step[m])
    return out


def enterprise_of(dev: dict) -> str:
    return str((dev["attrs"] or {}).get("enterprise") or dev["device_id"])


class EnergyJob(SpanJob):
    name = "energy"

    def __init__(self, interval_s: float = 300.0, lag_s: float = 120.0, backfill_h: float = 48.0,
                 max_span_h: float = 24.0, weeks: int = 4, k: float = 4.0, min_rel_spread: float = 0.05,
                 min_hours: int = 3, context_h: float = 48.0) -> None:
        self.interval_s = interval_s
        self.lag_ns = int(lag_s * NS_PER_S)
        self.backfill_ns = int(backfill_h * NS_PER_HOUR)
        self.max_span_ns = int(max_span_h * NS_PER_HOUR)
        self.weeks, self.k, self.min_rel_spread, self.min_hours = weeks, k, min_rel_spread, min_hours
        self.context_ns = int(context_h * NS_PER_HOUR)  # anomaly runs re-judged this far before the watermark

    async def _run(self, con: asyncpg.Connection, wm_ns: int, end_ns: int) -> dict:
        devices = await device_store.of_stream(con, STREAM)
        if not devices:
            return {"enterprises": 0}
        groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for dev in devices:
            groups[(dev["region"], enterprise_of(dev))].append(dev)
        daily = await self._daily(con, groups, wm_ns, end_ns)
        counts = await self._anomalies(con, groups, wm_ns, end_ns)
        return {"enterprises": len(groups), "daily_rows": daily, "anomalies_raised": counts.raised,
                "anomalies_cleared": counts.cleared}

    async def _daily(self, con, groups, wm_ns: int, end_ns: int) -> int:
        d0, d1 = china_day(wm_ns), china_day(end_ns - 1)
        origin = day_start_ns(d0)
        n = d1 - d0 + 1
        data = await stream_readings(con, STREAM, list(CARRIERS), origin - NS_PER_DAY, end_ns)
        rows = []
        for (region, ent), devs in groups.items():
            per = {c: np.zeros(n) for c in CARRIERS}
            for dev in devs:
                for c in CARRIERS:
                    if dev["id"] in data[c]:
                        t, v = data[c][dev["id"]]
                        per[c] += np.nan_to_num(steps_by_bin(t, v, NS_PER_DAY, origin, n))
            factors = CoalFactors.of(devs[0]["attrs"] or {})
            for i in range(n):
                q = {c: float(per[c][i]) for c in CARRIERS}
                rows.append((region, ent, day_date(d0 + i), len(devs), *(q[c] for c in CARRIERS), factors.tce(q)))
        if rows:
            await con.execute(_DAILY_UPSERT, *[list(c) for c in zip(*rows)])
        return len(rows)

    async def _anomalies(self, con, groups, wm_ns: int, end_ns: int) -> AlertCounts:
        counts = AlertCounts()
        h0 = (wm_ns - self.context_ns) // NS_PER_HOUR * NS_PER_HOUR
        h1 = end_ns // NS_PER_HOUR * NS_PER_HOUR  # complete hours only
        n = (h1 - h0) // NS_PER_HOUR
        if n <= 0:
            return counts
        hist = self.weeks * HOURS_PER_WEEK
        origin = h0 - hist * NS_PER_HOUR
        data = (await stream_readings(con, STREAM, [ELECTRICITY], origin - NS_PER_HOUR, h1))[ELECTRICITY]
        found = []
        for (region, ent), devs in groups.items():
            series = np.full(hist + n, np.nan)
            for dev in devs:
                if dev["id"] in data:
                    t, v = data[dev["id"]]
                    s = steps_by_bin(t, v, NS_PER_HOUR, origin, hist + n)
                    series = np.where(np.isnan(series), s, series + np.nan_to_num(s))
            now = series[hist:]
            history = np.stack([series[hist - HOURS_PER_WEEK * (w + 1): hist - HOURS_PER_WEEK * (w + 1) + n]
                                for w in range(self.weeks)])
            med, mad = baseline(history)
            for a, b in runs(high_hours(now, med, mad, self.k, self.min_rel_spread), self.min_hours):
                found.append((region, ent, devs[0], h0 + a * NS_PER_HOUR, h0 + b * NS_PER_HOUR, b == n, b - a,
                              float(np.sum(now[a:b])), float(np.sum(med[a:b]))))
        if not found:
            return counts
        keys = [(f[0], f[1], f[3] // 1000) for f in found]
        was = await existing_open(con, "energy_anomalies", ("region", "enterprise", "start_time"),
                                  ("text", "text", "int8"), keys)
        await con.execute(_ANOMALY_UPSERT, *[list(c) for c in zip(*[
            (f[0], f[1], f[3] // 1000, f[4] // 1000, f[5], f[6], f[7], f[8]) for f in found])])
        for f, key in zip(found, keys):
            dev = f[2]
            target = target_of(ENERGY_ANOMALY, DeviceRef(dev["id"], dev["device_id"], dev["region"], dev["stream"]),
                               ELECTRICITY, title=f"{ENERGY_ANOMALY.title}: {f[1]}")
            await sync_alert(con, target, ENERGY_ANOMALY, inserted=key not in was, was_open=was.get(key), open_=f[5],
                             start_ns=f[3], end_ns=f[4], value=f[7], counts=counts)
        return counts


def create(settings) -> EnergyJob:
    p = settings.profiles
    return EnergyJob(interval_s=p.interval_s, lag_s=p.lag_s, backfill_h=p.backfill_h, max_span_h=p.max_span_h,
                     weeks=p.baseline_weeks, k=p.anomaly_k, min_rel_spread=p.anomaly_min_rel_spread,
                     min_hours=p.anomaly_hours)
