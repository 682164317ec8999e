"""Cold-chain profile: trips (waybills, ``trip`` = 1 from dispatch to delivery sign-off) and their
temperature compliance (core/profiles/coldchain.py), one ``coldchain_trips`` row per trip.

Each run re-reads ``trip_context`` before the watermark, so a trip that began in an earlier run (and
was stored open) is recomputed whole and closed when its stop arrives. A run of ``trip = 1`` already
going at the start of the re-read window began before it: it is left alone (a trip longer than the
context keeps the row written while it was shorter). The band is the device's attrs ``temp_low`` /
``temp_high`` (frozen goods: e.g. -25/-18 °C), else the settings' (2-8 °C, GSP chilled)."""
from __future__ import annotations

import asyncpg
import numpy as np

from wulian.core.profiles.coldchain import trip_compliance, trip_spans
from wulian.core.timebase import NS_PER_HOUR, NS_PER_S
from wulian.ingest import device_store
from wulian.ingest.jobs.base import SpanJob
from wulian.ingest.jobs.profile_readings import stream_readings
from wulian.ingest.jobs.sql import TS_US

STREAM = "coldchain"
_UPSERT = f"""
INSERT INTO coldchain_trips (device, start_time, end_time, open, low_c, high_c, duration_s, in_range_s,
    out_of_range_s, no_data_s, compliance, max_temp, min_temp, readings)
SELECT d, {TS_US.format('s')}, {TS_US.format('e')}, o, lo, hi, du, ir, oor, nd, c, mx, mn, n
FROM unnest($1::int4[], $2::int8[], $3::int8[], $4::bool[], $5::float8[], $6::float8[], $7::float8[],
    $8::float8[], $9::float8[], $10::float8[], $11::float8[], $12::float8[], $13::float8[], $14::int4[])
    AS u(d, s, e, o, lo, hi, du, ir, oor, nd, c, mx, mn, n)
ON CONFLICT (device, start_time) DO UPDATE SET end_time = EXCLUDED.end_time, open = EXCLUDED.open,
    low_c = EXCLUDED.low_c, high_c = EXCLUDED.high_c, duration_s = EXCLUDED.duration_s,
    in_range_s = EXCLUDED.in_range_s, out_of_range_s = EXCLUDED.out_of_range_s, no_data_s = EXCLUDED.no_data_s,
    compliance = EXCLUDED.compliance, max_temp = EXCLUDED.max_temp, min_temp = EXCLUDED.min_temp,
    readings = EXCLUDED.readings, updated_at = now()"""


def band_of(attrs: dict, low: float, high: float) -> tuple[float, float]:
    """The device's temperature band (attrs temp_low/temp_high when both are numbers, low < high)."""
    try:
        lo, hi = float(attrs["temp_low"]), float(attrs["temp_high"])
    except (KeyError, TypeError, ValueError):
        return low, high
    return (lo, hi) if lo < hi else (low, high)


class ColdchainJob(SpanJob):
    name = "coldchain"

    def __init__(self, interval_s: float = 300.0, lag_s: float = 120.0, backfill_h: float = 48.0,
                 max_span_h: float = 24.0, low_c: float = 2.0, high_c: float = 8.0, max_hold_s: float = 300.0,
                 context_h: float = 72.0) -> None:
        self.interval_s = interval_s
        self.lag_ns = int(lag_s * NS_PER_S)
        self.backfill_ns = int(backfill_h * NS_PER_HOUR)
        self.max_span_ns = int(max_span_h * NS_PER_HOUR)
        self.low, self.high = low_c, high_c
        self.max_hold_ns = int(max_hold_s * NS_PER_S)
        self.context_ns = int(context_h * NS_PER_HOUR)

    async def _run(self, con: asyncpg.Connection, wm_ns: int, end_ns: int) -> dict:
        devices = await device_store.of_stream(con, STREAM)
        if not devices:
            return {"trucks": 0}
        data = await stream_readings(con, STREAM, ["trip", "temperature"], wm_ns - self.context_ns, end_ns)
        rows = []
        for dev in devices:
            if dev["id"] not in data["trip"]:
                continue
            tt, tv = data["trip"][dev["id"]]
            temp_t, temp_v = data["temperature"].get(dev["id"], (np.empty(0, np.int64), np.empty(0)))
            lo, hi = band_of(dev["attrs"] or {}, self.low, self.high)
            for start, stop, open_ in trip_spans(tt, tv):
                if start == int(tt[0]):
                    continue  # began before the re-read window: see the module docstring
                trip = trip_compliance(start, stop, open_, temp_t, temp_v, lo, hi, self.max_hold_ns)
                rows.append((dev["id"], start // 1000, stop // 1000, trip.open, lo, hi, trip.duration_s,
                             trip.in_range_s, trip.out_of_range_s, trip.no_data_s, trip.compliance, trip.max_temp,
                             trip.min_temp, trip.readings))
        if rows:
            await con.execute(_UPSERT, *[list(c) for c in zip(*rows)])
        return {"trucks": len(devices), "trips": len(rows), "open": sum(r[3] for r in rows)}


def create(settings) -> ColdchainJob:
    p = settings.profiles
    return ColdchainJob(interval_s=p.interval_s, lag_s=p.lag_s, backfill_h=p.backfill_h, max_span_h=p.max_span_h,
                        low_c=p.coldchain_low_c, high_c=p.coldchain_high_c, max_hold_s=p.coldchain_max_hold_s,
                        context_h=p.trip_context_h)
