"""Charging profile: utilisation per charger and China day (share of the day spent charging), which the
API and the dashboard aggregate by station and district. Offline and fault alerts are the profile's
default rules (missing_data on ``state``, upper on ``fault_code``), not this job's.

Each run recomputes whole China days from the watermark's day; a state reading from up to
``max_hold`` before the day still counts for the start of the day."""
from __future__ import annotations

import asyncpg
import numpy as np

from wulian.core.profiles.held import held_seconds
from wulian.core.timebase import NS_PER_DAY, NS_PER_HOUR, NS_PER_S, china_day, day_date, day_start_ns
from wulian.ingest import device_store
from wulian.ingest.jobs.base import SpanJob
from wulian.ingest.jobs.profile_readings import stream_readings

STREAM = "charging"
STATES = ("idle", "charging", "fault", "reserved")  # the profile's ``state`` codes 0..3
_UPSERT = """
INSERT INTO charger_utilisation_daily (device, day, station, district, period_s, charging_s, idle_s, fault_s,
    reserved_s, offline_s, utilisation)
SELECT * FROM unnest($1::int4[], $2::date[], $3::text[], $4::text[], $5::float8[], $6::float8[], $7::float8[],
    $8::float8[], $9::float8[], $10::float8[], $11::float8[])
ON CONFLICT (device, day) DO UPDATE SET station = EXCLUDED.station, district = EXCLUDED.district,
    period_s = EXCLUDED.period_s, charging_s = EXCLUDED.charging_s, idle_s = EXCLUDED.idle_s,
    fault_s = EXCLUDED.fault_s, reserved_s = EXCLUDED.reserved_s, offline_s = EXCLUDED.offline_s,
    utilisation = EXCLUDED.utilisation, updated_at = now()"""


def station_district(dev: dict) -> tuple[str, str]:
    """A charger's station and district from its attrs (default: the device itself and its region)."""
    a = dev["attrs"] or {}
    return str(a.get("station") or dev["device_id"]), str(a.get("district") or dev["region"])


class ChargingJob(SpanJob):
    name = "charging"

    def __init__(self, interval_s: float = 300.0, lag_s: float = 120.0, backfill_h: float = 48.0,
                 max_span_h: float = 24.0, max_hold_s: float = 900.0) -> None:
        self.interval_s = interval_s
        self.lag_ns = int(lag_s * NS_PER_S)
        self.backfill_ns = int(backfill_h * NS_PER_HOUR)
        self.max_span_ns = int(max_span_h * NS_PER_HOUR)
        self.max_hold_ns = int(max_hold_s * NS_PER_S)

    async def _run(self, con: asyncpg.Connection, wm_ns: int, end_ns: int) -> dict:
        devices = await device_store.of_stream(con, STREAM)
        if not devices:
            return {"chargers": 0}
        d0, d1 = china_day(wm_ns), china_day(end_ns - 1)
        t_from = day_start_ns(d0) - self.max_hold_ns
        states = (await stream_readings(con, STREAM, ["state"], t_from, end_ns))["state"]
        rows = []
        empty = (np.empty(0, np.int64), np.empty(0))
        for dev in devices:
            t, v = states.get(dev["id"], empty)
            codes = np.where(np.isfinite(v), np.rint(v), -1).astype(np.int64)
            station, district = station_district(dev)
            for day in range(d0, d1 + 1):
                lo, hi = day_start_ns(day), min(day_start_ns(day) + NS_PER_DAY, end_ns)
                secs = held_seconds(t, codes, lo, hi, self.max_hold_ns, len(STATES))
                period = (hi - lo) / NS_PER_S
                rows.append((dev["id"], day_date(day), station, district, period, secs[1], secs[0], secs[2],
                             secs[3], max(period - float(secs.sum()), 0.0), secs[1] / period))
        if rows:
            await con.execute(_UPSERT, *[list(c) for c in zip(*rows)])
        return {"chargers": len(devices), "days": d1 - d0 + 1, "rows": len(rows)}


def create(settings) -> ChargingJob:
    p = settings.profiles
    return ChargingJob(interval_s=p.interval_s, lag_s=p.lag_s, backfill_h=p.backfill_h, max_span_h=p.max_span_h,
                       max_hold_s=p.charger_max_hold_s)
