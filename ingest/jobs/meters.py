"""四表合一 job: registers -> daily consumption per meter register and China day, register anomalies
(backwards = tamper or fault, detected reset/replacement, jumps, rollovers), day-run anomalies (zero
consumption for N days, water leak by minimum night flow on consecutive nights, gas that never stops) and
the collection success rate per concentrator and day.

A "meter" here is one register series (device, metric): a 四表合一 collector publishing electricity,
water, gas and heat registers is four meters. JSON names (elec_kwh, water_m3, gas_m3, heat_kwh) and the
codecs' (energy_active_import_kwh from DL/T 645, water_volume_m3 / gas_volume_m3 from CJ/T 188) are read
alike. A collector reports a meter replacement with a ``meter_replaced`` reading (value: the new meter's
start register) at the time of the new meter's first register reading.

Each run recomputes whole China days from the watermark's day (with the day before as baseline), then
judges the day-run rules over the stored daily rows of the last complete days.
"""
from __future__ import annotations

import asyncpg
import numpy as np

from wulian.core.const import INVALID_FLAGS, Stream
from wulian.core.meters.anomalies import gas_never_stops, night_leak, register_events, zero_consumption
from wulian.core.meters.consumption import (Code, Consumption, ConsumptionParams, MeterKind, MeterReadings, MeterTable,
                                     consumption, daily_records)
from wulian.core.meters.system_rules import EVENT_RULES, RUN_RULES
from wulian.core.numbers import finite_or_none as finite
from wulian.core.timebase import NS_PER_HOUR as _HOUR
from wulian.core.timebase import china_day, date_day, day_date, day_start_ns
from wulian.ingest import device_store
from wulian.ingest.alert_store import AlertCounts, sync_alert, target_of
from wulian.ingest.device_store import DeviceRef
from wulian.ingest.jobs.base import SpanJob
from wulian.ingest.jobs.binary_copy import fetch_columns
from wulian.ingest.jobs.sql import TS_US, US_OF, us


REGISTERS: dict[str, MeterKind] = {
    "elec_kwh": MeterKind.ELECTRICITY, "energy_active_import_kwh": MeterKind.ELECTRICITY,
    "water_m3": MeterKind.WATER, "water_volume_m3": MeterKind.WATER,
    "gas_m3": MeterKind.GAS, "gas_volume_m3": MeterKind.GAS,
    "heat_kwh": MeterKind.HEAT,
}
REPLACED_METRIC = "meter_replaced"

_DAILY_UPSERT = """
INSERT INTO meter_consumption_daily (device, metric, day, consumption, readings, complete, backwards,
    min_rate_per_h, min_night_rate_per_h)
SELECT * FROM unnest($1::int4[], $2::text[], $3::date[], $4::float8[], $5::int4[], $6::bool[], $7::int4[],
    $8::float8[], $9::float8[])
ON CONFLICT (device, metric, day) DO UPDATE SET consumption = EXCLUDED.consumption, readings = EXCLUDED.readings,
    complete = EXCLUDED.complete, backwards = EXCLUDED.backwards, min_rate_per_h = EXCLUDED.min_rate_per_h,
    min_night_rate_per_h = EXCLUDED.min_night_rate_per_h, updated_at = now()"""
_EVENT_INSERT = f"""
INSERT INTO meter_anomalies (device, metric, kind, start_time, end_time, value, previous, open)
SELECT d, m, k, {TS_US.format('t')}, {TS_US.format('t')}, v, p, false
FROM unnest($1::int4[], $2::text[], $3::text[], $4::int8[], $5::float8[], $6::float8[]) AS u(d, m, k, t, v, p)
ON CONFLICT (device, metric, kind, start_time) DO NOTHING
RETURNING device, metric, kind, {US_OF.format('start_time')} AS t_us"""
_COLLECTION_UPSERT = """
INSERT INTO meter_collection_daily (region, concentrator, day, meters, expected, received, success_rate)
SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::int4[], $5::int4[], $6::int4[], $7::float8[])
ON CONFLICT (region, concentrator, day) DO UPDATE SET meters = EXCLUDED.meters, expected = EXCLUDED.expected,
    received = EXCLUDED.received, success_rate = EXCLUDED.success_rate, updated_at = now()"""


def _num(a: dict, key: str, default: float) -> float:
    try:
        return float(a.get(key, default))
    except (TypeError, ValueError):
        return default


class MeterJob(SpanJob):
    name = "meters"

    def __init__(self, interval_s: float = 300.0, lag_s: float = 300.0, backfill_h: float = 48.0,
                 max_span_h: float = 24.0, zero_days: int = 7, leak_threshold_per_h: float = 0.02,
                 leak_nights: int = 3, gas_days: int = 1, gas_min_slots: int = 90, slots_per_day: int = 96,
                 params: ConsumptionParams = ConsumptionParams()) -> None:
        self.interval_s = interval_s
        self.lag_ns = int(lag_s * 1e9)
        self.backfill_ns = int(backfill_h * _HOUR)
        self.max_span_ns = int(max_span_h * _HOUR)
        self.zero_days = zero_days
        self.leak_threshold = leak_threshold_per_h
        self.leak_nights = leak_nights
        self.gas_days = gas_days
        self.gas_min_slots = gas_min_slots
        self.slots_per_day = slots_per_day
        self.params = params

    async def _run(self, con: asyncpg.Connection, wm_ns: int, end_ns: int) -> dict:
        rows = await device_store.of_stream(con, Stream.METER.value)
        if not rows:
            return {"meters": 0}
        attrs = {r["id"]: r["attrs"] for r in rows}
        refs = {r["id"]: DeviceRef(r["id"], r["device_id"], r["region"], r["stream"]) for r in rows}
        day_first = china_day(wm_ns)
        day0 = day_first - 1  # baseline day: its readings only give the first interval of day_first
        t_from = day_start_ns(day0)
        metric_ids = {r["name"]: r["id"] for r in await con.fetch(
            "SELECT id, name FROM metrics WHERE name = ANY($1::text[])", [*REGISTERS, REPLACED_METRIC])}
        reg_ids = [i for n, i in metric_ids.items() if n in REGISTERS]
        cols = await fetch_columns(con, f"""
            SELECT r.device, r.metric::int4, {US_OF.format('r.time')}, r.value
            FROM readings r JOIN devices d ON d.id = r.device
            WHERE d.stream = 'meter' AND r.metric = ANY($1::int2[]) AND r.flag <> ALL($2::text[])
              AND r.time >= {TS_US.format('$3::int8')} AND r.time < {TS_US.format('$4::int8')}""",
            (reg_ids, sorted(INVALID_FLAGS), t_from // 1000, end_ns // 1000),
            [("device", "i4"), ("metric", "i4"), ("t", "i8"), ("value", "f8")])
        name_of = {i: n for n, i in metric_ids.items()}
        # Series = (device, metric) seen in the window, plus one per registered device that sent nothing
        # (it still counts against its concentrator's collection rate).
        keep = np.isin(cols["device"], list(refs))
        pair = cols["device"][keep].astype(np.int64) << 16 | cols["metric"][keep].astype(np.int64)
        uniq, series = np.unique(pair, return_inverse=True)
        s_dev = (uniq >> 16).astype(np.int64).tolist()
        s_met = [name_of[int(m)] for m in (uniq & 0xFFFF).tolist()]
        seen = set(s_dev)
        silent = [d for d in refs if d not in seen]
        s_dev += silent
        s_met += [None] * len(silent)
        n_series = len(s_dev)
        ts = cols["t"][keep] * 1000
        value = cols["value"][keep]
        replaced, base = await self._replacements(con, metric_ids, series, s_dev, ts, t_from, end_ns)
        readings = MeterReadings.from_unsorted(series, n_series, ts, value, replaced, base)
        conc_keys: dict[tuple[str, str], int] = {}
        conc = np.array([conc_keys.setdefault((refs[d].region, str(attrs[d]["concentrator"])), len(conc_keys))
                         if attrs[d].get("concentrator") else -1 for d in s_dev], np.int32)
        table = MeterTable(
            np.array([REGISTERS.get(m, MeterKind.ELECTRICITY) if m else 0 for m in s_met], np.int8),
            np.array([_num(attrs[d], "register_width", 1e6) for d in s_dev]),
            np.array([_num(attrs[d], "max_rate_per_h", 0.0) for d in s_dev]), conc)
        n_days = china_day(end_ns - 1) - day0 + 1
        c = consumption(readings, table, day0, n_days, self.params)
        counts = AlertCounts()
        out = {"readings": int(len(readings)), "meters": n_series}
        out["daily_rows"] = await self._daily(con, c, s_dev, s_met, day_first)
        out["register_events"] = await self._register_events(con, readings, c, s_dev, s_met, refs, wm_ns, counts)
        out["run_anomalies"] = await self._run_rules(con, refs, china_day(end_ns) - 1, counts)
        out["collection_rows"] = await self._collection(con, c, s_dev, attrs, conc, conc_keys, day_first)
        out.update(counts.as_dict())
        return out

    async def _replacements(self, con, metric_ids, series, s_dev, ts, t_from, end_ns):
        n = len(ts)
        replaced = np.zeros(n, bool)
        base = np.full(n, np.nan)
        if REPLACED_METRIC not in metric_ids or n == 0:
            return replaced, base
        rows = await con.fetch(
            f"SELECT device, {US_OF.format('time')} AS t_us, value FROM readings WHERE metric = $1"
            f" AND time >= {TS_US.format('$2::int8')} AND time < {TS_US.format('$3::int8')}",
            metric_ids[REPLACED_METRIC], t_from // 1000, end_ns // 1000)
        if not rows:
            return replaced, base
        dev_of_row = np.asarray(s_dev, np.int64)[series]
        for r in rows:
            hit = np.flatnonzero((dev_of_row == r["device"]) & (ts == r["t_us"] * 1000))
            replaced[hit] = True
            base[hit] = r["value"]
        return replaced, base

    async def _daily(self, con, c: Consumption, s_dev, s_met, day_first: int) -> int:
        recs = [r for r in daily_records(c) if r["day"] >= day_first and s_met[r["meter"]] is not None]
        if not recs:
            return 0
        await con.execute(_DAILY_UPSERT, [s_dev[r["meter"]] for r in recs], [s_met[r["meter"]] for r in recs],
                          [day_date(r["day"]) for r in recs], [r["consumption"] for r in recs],
                          [r["readings"] for r in recs], [r["complete"] for r in recs], [r["backwards"] for r in recs],
                          [r["min_rate_per_h"] for r in recs], [r["min_night_rate_per_h"] for r in recs])
        return len(recs)

    async def _register_events(self, con, readings, c, s_dev, s_met, refs, wm_ns, counts) -> int:
        ev = register_events(readings, c)
        new = ev.ts_ns >= wm_ns  # earlier ones were judged by an earlier run
        if not new.any():
            return 0
        idx = np.flatnonzero(new)
        kinds = [EVENT_RULES[Code(int(x))][0] for x in ev.code[idx].tolist()]
        got = await con.fetch(_EVENT_INSERT, [s_dev[m] for m in ev.meter[idx].tolist()],
                              [s_met[m] for m in ev.meter[idx].tolist()], kinds, us(ev.ts_ns[idx]),
                              [finite(x) for x in ev.register[idx].tolist()],
                              [finite(x) for x in ev.previous[idx].tolist()])
        inserted = {(r["device"], r["metric"], r["kind"], r["t_us"]) for r in got}
        by_code = {name: code for code, (name, _) in EVENT_RULES.items()}
        for j, i in enumerate(idx.tolist()):
            m = int(ev.meter[i])
            key = (s_dev[m], s_met[m], kinds[j], int(ev.ts_ns[i]) // 1000)
            rule = EVENT_RULES[by_code[kinds[j]]][1]
            if rule is None or key not in inserted:
                continue
            t = int(ev.ts_ns[i])
            await sync_alert(con, target_of(rule, refs[s_dev[m]], s_met[m]), rule, inserted=True, was_open=None,
                             open_=False, start_ns=t, end_ns=t, value=float(ev.register[i]), counts=counts)
        return len(inserted)

    async def _run_rules(self, con, refs, last_day: int, counts) -> int:
        """Zero consumption, night leak and never-stopping gas over the stored daily rows up to the last
        complete day. A run keeps the start of its open row, so a run longer than the look-back stays one."""
        span = max(self.zero_days, self.leak_nights, self.gas_days)
        first = last_day - span + 1
        rows = await con.fetch(
            "SELECT c.device, c.metric, c.day, c.consumption, c.readings, c.complete, c.min_rate_per_h,"
            " c.min_night_rate_per_h FROM meter_consumption_daily c"
            " WHERE c.day >= $1 AND c.day <= $2", day_date(first), day_date(last_day))
        open_rows = await con.fetch(
            f"SELECT device, metric, kind, {US_OF.format('start_time')} AS s_us FROM meter_anomalies"
            " WHERE open AND kind = ANY($1::text[])", list(RUN_RULES))
        is_open = {(r["device"], r["metric"], r["kind"]): r["s_us"] for r in open_rows}
        keys = sorted({(r["device"], r["metric"]) for r in rows})
        k_of = {k: i for i, k in enumerate(keys)}
        shape = (len(keys), span)
        day_sum, slots, bad = np.zeros(shape), np.zeros(shape, np.int32), np.zeros(shape, np.int32)
        min_rate, min_night = np.full(shape, np.nan), np.full(shape, np.nan)
        for r in rows:
            i, d = k_of[(r["device"], r["metric"])], date_day(r["day"]) - first
            day_sum[i, d], slots[i, d], bad[i, d] = r["consumption"], r["readings"], 0 if r["complete"] else 1
            min_rate[i, d] = np.nan if r["min_rate_per_h"] is None else r["min_rate_per_h"]
            min_night[i, d] = np.nan if r["min_night_rate_per_h"] is None else r["min_night_rate_per_h"]
        c = Consumption(first, np.zeros(0), np.zeros(0, np.int8), day_sum, slots, bad, min_rate, min_night,
                        np.zeros(shape, np.int32))
        kind_of = np.array([REGISTERS.get(m, MeterKind.ELECTRICITY) for _, m in keys], np.int8)
        flags = {}
        if keys:
            flags["zero_consumption"] = zero_consumption(c, self.zero_days)
            leak = night_leak(c, self.leak_threshold, self.leak_nights)
            flags["night_leak"] = type(leak)(leak.longest, leak.current, leak.flagged & (kind_of == MeterKind.WATER))
            gas = gas_never_stops(c, self.gas_days, 0.0, self.gas_min_slots)
            flags["gas_never_stops"] = type(gas)(gas.longest, gas.current, gas.flagged & (kind_of == MeterKind.GAS))
        end_us = day_start_ns(last_day + 1) // 1000
        n = 0
        for kind, rule in RUN_RULES.items():
            f = flags.get(kind)
            flagged = set() if f is None else {keys[i] for i in np.flatnonzero(f.flagged).tolist()}
            for key in sorted(flagged):
                i = k_of[key]
                start_us = is_open.get((*key, kind))
                inserted = start_us is None
                if inserted:
                    start_us = day_start_ns(last_day - int(f.current[i]) + 1) // 1000
                days = (end_us - start_us) / 86_400e6
                await con.execute(
                    f"INSERT INTO meter_anomalies (device, metric, kind, start_time, end_time, value, open)"
                    f" VALUES ($1, $2, $3, {TS_US.format('$4::int8')}, {TS_US.format('$5::int8')}, $6, true)"
                    " ON CONFLICT (device, metric, kind, start_time) DO UPDATE SET end_time = EXCLUDED.end_time,"
                    " value = EXCLUDED.value, open = true, updated_at = now()",
                    key[0], key[1], kind, start_us, end_us, days)
                await sync_alert(con, target_of(rule, refs[key[0]], key[1]), rule, inserted=inserted,
                                 was_open=not inserted, open_=True, start_ns=start_us * 1000, end_ns=end_us * 1000,
                                 value=days, counts=counts)
                n += 1
            for (dev, metric, k), start_us in is_open.items():
                if k != kind or (dev, metric) in flagged or dev not in refs:
                    continue
                row = await con.fetchrow(
                    f"UPDATE meter_anomalies SET open = false, updated_at = now() WHERE device = $1 AND metric = $2"
                    f" AND kind = $3 AND start_time = {TS_US.format('$4::int8')}"
                    f" RETURNING {US_OF.format('end_time')} AS e_us, value", dev, metric, k, start_us)
                await sync_alert(con, target_of(rule, refs[dev], metric), rule, inserted=False, was_open=True,
                                 open_=False, start_ns=start_us * 1000, end_ns=row["e_us"] * 1000, value=row["value"],
                                 counts=counts)
                n += 1
        return n

    async def _collection(self, con, c: Consumption, s_dev, attrs, conc, conc_keys, day_first: int) -> int:
        if not conc_keys:
            return 0
        expected = np.array([int(_num(attrs[d], "slots_per_day", self.slots_per_day)) for d in s_dev], np.int64)
        got = np.minimum(c.day_slots, expected[:, None])
        names = list(conc_keys)
        ok = conc >= 0
        out = []
        for d in range(max(0, day_first - c.day0), got.shape[1]):
            num = np.bincount(conc[ok], weights=got[ok, d], minlength=len(names))
            den = np.bincount(conc[ok], weights=expected[ok], minlength=len(names))
            cnt = np.bincount(conc[ok], minlength=len(names))
            for k, (region, name) in enumerate(names):
                out.append((region, name, day_date(c.day0 + d), int(cnt[k]), int(den[k]), int(num[k]),
                            float(num[k] / den[k]) if den[k] else None))
        await con.execute(_COLLECTION_UPSERT, *[list(x) for x in zip(*out)])
        return len(out)


def create(settings) -> MeterJob:
    e = settings.energy
    return MeterJob(interval_s=e.meters_interval_s, lag_s=e.lag_s, backfill_h=e.backfill_h, max_span_h=e.max_span_h,
                    zero_days=e.zero_consumption_days, leak_threshold_per_h=e.leak_threshold_m3_h,
                    leak_nights=e.leak_nights, slots_per_day=e.meter_slots_per_day)
