"""Smart-grid job: power quality per meter and China day, quality episodes, feeder outages, transformer
trend warnings and per-feeder load forecasts.

Each run reads grid samples from the midnight (China time) before the watermark's day to ``now - lag``,
so day statistics are always recomputed from whole days and an outage or episode keeps its start across
runs of the same day. Readings with an invalid flag (core.const.INVALID_FLAGS) are left out. JSON metric
names (Ua, Ia, PF, freq, P) and the DL/T 645 codec's (voltage_a_v, current_a_a, power_factor, ...) are
read alike.
"""
from __future__ import annotations

import asyncpg
import numpy as np

from wulian.core.const import INVALID_FLAGS, Stream
from wulian.core.grid.forecast import fit_profile, forecast
from wulian.core.grid.outage import feeder_outages
from wulian.core.grid.quality import GridMeters, GridParams, GridSamples, VoltageClass, day_quality, \
    quality_records, violation_runs
from wulian.core.grid.system_rules import EPISODES, OUTAGE, TRANSFORMER
from wulian.core.grid.transformer import trend_warnings
from wulian.core.numbers import finite_or_none as finite
from wulian.core.timebase import NS_PER_HOUR as _HOUR
from wulian.core.timebase import NS_PER_MIN as _MIN
from wulian.core.timebase import china_day, day_date, day_start_ns
from wulian.ingest import device_store
from wulian.ingest.alert_store import AlertCounts, sync_alert, target_of
from wulian.ingest.device_store import DeviceRef
from wulian.ingest.jobs.base import SpanJob
from wulian.ingest.jobs.binary_copy import fetch_columns
from wulian.ingest.jobs.sql import TS_US, US_OF, existing_open, us

SLOT_NS = 15 * _MIN

# Metric names per quantity: the JSON telemetry's and the DL/T 645 codec's.
QUANTITIES: dict[str, tuple[str, ...]] = {
    "ua": ("Ua", "voltage_a_v"), "ub": ("Ub", "voltage_b_v"), "uc": ("Uc", "voltage_c_v"),
    "ia": ("Ia", "current_a_a"), "ib": ("Ib", "current_b_a"), "ic": ("Ic", "current_c_a"),
    "pf": ("PF", "power_factor"), "freq": ("freq", "frequency_hz"), "p": ("P", "power_active_kw"),
    "oil_temp": ("oil_temp",),
}

_VCLASS = {"220V": VoltageClass.V220, "20kV": VoltageClass.KV20_AND_BELOW, "35kV": VoltageClass.KV35_AND_ABOVE}

_QUALITY_UPSERT = """
INSERT INTO grid_quality_daily (device, day, samples, interruptions, voltage_rate, frequency_rate, unbalance_rate,
    unbalance_day_ok, kv35_day_ok, dev_max_pct, dev_min_pct, unbalance_max_pct, overload_samples, low_pf_samples)
SELECT * FROM unnest($1::int4[], $2::date[], $3::int4[], $4::int4[], $5::float8[], $6::float8[], $7::float8[],
    $8::bool[], $9::bool[], $10::float8[], $11::float8[], $12::float8[], $13::int4[], $14::int4[])
ON CONFLICT (device, day) DO UPDATE SET samples = EXCLUDED.samples, interruptions = EXCLUDED.interruptions,
    voltage_rate = EXCLUDED.voltage_rate, frequency_rate = EXCLUDED.frequency_rate,
    unbalance_rate = EXCLUDED.unbalance_rate, unbalance_day_ok = EXCLUDED.unbalance_day_ok,
    kv35_day_ok = EXCLUDED.kv35_day_ok, dev_max_pct = EXCLUDED.dev_max_pct, dev_min_pct = EXCLUDED.dev_min_pct,
    unbalance_max_pct = EXCLUDED.unbalance_max_pct, overload_samples = EXCLUDED.overload_samples,
    low_pf_samples = EXCLUDED.low_pf_samples, updated_at = now()"""
_EPISODE_UPSERT = f"""
INSERT INTO grid_events (device, kind, start_time, end_time, open)
SELECT d, k, {TS_US.format('s')}, {TS_US.format('e')}, o
FROM unnest($1::int4[], $2::text[], $3::int8[], $4::int8[], $5::bool[]) AS u(d, k, s, e, o)
ON CONFLICT (device, kind, start_time) DO UPDATE SET end_time = EXCLUDED.end_time, open = EXCLUDED.open,
    updated_at = now()"""
_OUTAGE_UPSERT = f"""
INSERT INTO grid_outages (region, feeder, start_time, end_time, open, meters)
SELECT r, f, {TS_US.format('s')}, {TS_US.format('e')}, o, m
FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::bool[], $6::int4[]) AS u(r, f, s, e, o, m)
ON CONFLICT (region, feeder, start_time) DO UPDATE SET end_time = EXCLUDED.end_time, open = EXCLUDED.open,
    meters = EXCLUDED.meters, updated_at = now()"""
_TRANSFORMER_UPSERT = f"""
INSERT INTO transformer_warnings (device, quantity, evaluated_at, level, slope_per_h, limit_value, eta, warn)
SELECT d, q, {TS_US.format('t')}, l, s, lim, CASE WHEN eta >= 0 THEN {TS_US.format('t + eta')} END, w
FROM unnest($1::int4[], $2::text[], $3::int8[], $4::float8[], $5::float8[], $6::float8[], $7::int8[], $8::bool[])
     AS u(d, q, t, l, s, lim, eta, w)
ON CONFLICT (device, quantity) DO UPDATE SET evaluated_at = EXCLUDED.evaluated_at, level = EXCLUDED.level,
    slope_per_h = EXCLUDED.slope_per_h, limit_value = EXCLUDED.limit_value, eta = EXCLUDED.eta,
    warn = EXCLUDED.warn, updated_at = now()
RETURNING device, quantity"""
_FORECAST_UPSERT = f"""
INSERT INTO feeder_forecasts (region, feeder, target_time, issued_at, load_kw)
SELECT r, f, {TS_US.format('t')}, {TS_US.format('i')}, l
FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::float8[]) AS u(r, f, t, i, l)
ON CONFLICT (region, feeder, target_time) DO UPDATE SET issued_at = EXCLUDED.issued_at, load_kw = EXCLUDED.load_kw,
    updated_at = now()"""


def _num(a: dict, key: str, default: float) -> float:
    try:
        return float(a.get(key, default))
    except (TypeError, ValueError):
        return default


class GridJob(SpanJob):
    name = "grid"

    def __init__(self, interval_s: float = 60.0, lag_s: float = 120.0, backfill_h: float = 48.0,
                 max_span_h: float = 24.0, outage_silence_min: float = 15.0, trend_window_h: float = 2.0,
                 trend_horizon_h: float = 4.0, forecast_history_days: int = 14, forecast_horizon_h: float = 6.0,
                 params: GridParams = GridParams()) -> None:
        self.interval_s = interval_s
        self.lag_ns = int(lag_s * 1e9)
        self.backfill_ns = int(backfill_h * _HOUR)
        self.max_span_ns = int(max_span_h * _HOUR)
        self.silence_ns = int(outage_silence_min * _MIN)
        self.trend_window_ns = int(trend_window_h * _HOUR)
        self.trend_horizon_ns = int(trend_horizon_h * _HOUR)
        self.history_days = forecast_history_days
        self.horizon_ns = int(forecast_horizon_h * _HOUR)
        self.params = params

    async def _run(self, con: asyncpg.Connection, wm_ns: int, end_ns: int) -> dict:
        rows = await device_store.of_stream(con, Stream.GRID.value)
        if not rows:
            return {"meters": 0}
        attrs = [r["attrs"] for r in rows]
        refs = [DeviceRef(r["id"], r["device_id"], r["region"], r["stream"]) for r in rows]
        n = len(rows)
        vclass = np.array([_VCLASS.get(str(a.get("voltage_class", "220V")), VoltageClass.V220) for a in attrs], np.int8)
        u_nom = np.array([_num(a, "u_nom", 220.0) for a in attrs])
        feeders: dict[tuple[str, str], int] = {}
        feeder = np.array([feeders.setdefault((r["region"], str(a["feeder"])), len(feeders)) if a.get("feeder")
                           else -1 for r, a in zip(rows, attrs)], np.int32)
        meters = GridMeters(u_nom, vclass, np.array([_num(a, "rated_a", 0.0) for a in attrs]),
                            np.array([bool(a.get("line_voltages", False)) for a in attrs]), feeder)

        day_first = china_day(wm_ns) - 1
        t_from = day_start_ns(day_first)
        ids = {r["name"]: r["id"] for r in await con.fetch("SELECT id, name FROM metrics")}
        # One column per quantity; metric ids are integers from the catalogue, inlined as literals.
        q_ids = [[ids[m] for m in names if m in ids] or [-1] for names in QUANTITIES.values()]
        sel = ", ".join(f"coalesce(max(r.value) FILTER (WHERE r.metric IN ({', '.join(map(str, q))})), 'NaN'::float8)"
                        for q in q_ids)
        all_ids = sorted({i for q in q_ids for i in q if i >= 0})
        cols = await fetch_columns(con, f"""
            SELECT r.device, {US_OF.format('r.time')}, {sel}
            FROM readings r JOIN devices d ON d.id = r.device
            WHERE d.stream = 'grid' AND r.metric = ANY($1::int2[]) AND r.flag <> ALL($2::text[])
              AND r.time >= {TS_US.format('$3::int8')} AND r.time < {TS_US.format('$4::int8')}
            GROUP BY r.device, r.time""", (all_ids, sorted(INVALID_FLAGS), t_from // 1000, end_ns // 1000),
            [("device", "i4"), ("t", "i8")] + [(q, "f8") for q in QUANTITIES])
        index = {r["id"]: i for i, r in enumerate(rows)}
        meter = np.array([index.get(d, -1) for d in cols["device"].tolist()], np.int64)
        ok = meter >= 0
        ts = cols["t"][ok] * 1000
        order = np.lexsort((ts, meter[ok]))
        samples = GridSamples.from_unsorted(meter[ok], n, ts, **{q: cols[q][ok] for q in
                                                                  ("ua", "ub", "uc", "freq", "ia", "ib", "ic", "pf")})
        n_days = china_day(end_ns - 1) - day_first + 1
        q = day_quality(samples, meters, day_first, n_days, self.params)
        counts = AlertCounts()
        out = {"samples": int(len(samples)), "meters": n}
        out["quality_rows"] = await self._quality(con, q, refs, vclass)
        before = {r["id"] for r in await con.fetch(
            f"""SELECT d.id FROM devices d WHERE d.stream = 'grid' AND EXISTS (
                    SELECT 1 FROM readings r WHERE r.device = d.id
                    AND r.time < {TS_US.format('$1::int8')} AND r.time >= {TS_US.format('$2::int8')})""",
            t_from // 1000, (t_from - 86_400 * 10**9) // 1000)}
        out["episodes"] = await self._episodes(con, samples, q.bits, refs, before, counts)
        out["outages"] = await self._outages(con, samples, q.bits, meters, feeders, refs, t_from, end_ns, counts)
        p_sorted = cols["p"][ok][order]
        t_sorted = ts[order]
        temp_sorted = cols["oil_temp"][ok][order]
        out["transformers"] = await self._transformers(con, refs, attrs, samples.starts, t_sorted, temp_sorted,
                                                       p_sorted, end_ns, counts)
        out["forecast_rows"] = await self._forecast(con, feeders, end_ns)
        out.update(counts.as_dict())
        return out

    async def _quality(self, con, q, refs: list[DeviceRef], vclass) -> int:
        recs = quality_records(q, list(range(len(refs))), vclass)
        if not recs:
            return 0
        col = lambda k: [r.get(k) for r in recs]  # noqa: E731
        await con.execute(_QUALITY_UPSERT, [refs[r["meter"]].id for r in recs], [day_date(r["day"]) for r in recs],
                          col("samples"), col("interruptions"), col("voltage_rate"), col("frequency_rate"),
                          col("unbalance_rate"), col("unbalance_day_ok"), col("kv35_day_ok"), col("dev_max_pct"),
                          col("dev_min_pct"), col("unbalance_max_pct"), col("overload_samples"), col("low_pf_samples"))
        return len(recs)

    async def _episodes(self, con, samples, bits, refs, before: set[int], counts: AlertCounts) -> int:
        """Upsert quality episodes. One starting at its meter's first sample of the window may have begun
        earlier if the meter reported before the window (``before``: device ids), so it only updates a
        row found before. The rest are inserted when new, also if they started before the watermark (an
        episode is only known once it lasted ``min_ns``)."""
        recs = []
        for kind, (rule, which, min_ns) in EPISODES.items():
            runs = violation_runs(samples, bits, int(which), min_ns)
            for m, t0, t1, op in zip(runs.meter.tolist(), runs.start_ns.tolist(), runs.end_ns.tolist(),
                                     runs.open.tolist()):
                recs.append((refs[m], kind, rule, t0, t1, bool(op)))
        keys = [(ref.id, kind, t0 // 1000) for ref, kind, _, t0, _, _ in recs]
        known = await existing_open(con, "grid_events", ("device", "kind", "start_time"), ("int4", "text", "int8"),
                                    keys)
        first = samples.ts_ns[np.minimum(samples.starts[:-1], max(len(samples) - 1, 0))] if len(samples) else None
        index = {ref.id: m for m, ref in enumerate(refs)}
        take = [i for i, k in enumerate(keys) if k in known or recs[i][0].id not in before
                or recs[i][3] > first[index[recs[i][0].id]]]
        if not take:
            return 0
        await con.execute(_EPISODE_UPSERT, [recs[i][0].id for i in take], [recs[i][1] for i in take],
                          [keys[i][2] for i in take], us([recs[i][4] for i in take]), [recs[i][5] for i in take])
        for i in sorted(take, key=lambda j: recs[j][3]):
            ref, kind, rule, t0, t1, op = recs[i]
            await sync_alert(con, target_of(rule, ref), rule, inserted=keys[i] not in known, was_open=known.get(keys[i]),
                             open_=op, start_ns=t0, end_ns=t1, value=(t1 - t0) / _MIN, counts=counts)
        return len(take)

    async def _outages(self, con, samples, bits, meters, feeders, refs, t_from, t_to, counts) -> int:
        """Upsert feeder outages; one starting at the window's start may have begun earlier and only
        updates a row found before."""
        if not feeders:
            return 0
        o = feeder_outages(samples, bits, meters, t_from, t_to, self.silence_ns)
        names = list(feeders)
        fe = np.asarray(meters.feeder)
        n_meters = np.bincount(fe[fe >= 0], minlength=len(names))
        # The alert goes to the feeder's first meter (by device id): a feeder is not a device.
        head = {}
        for m, f in enumerate(fe.tolist()):
            if f >= 0 and (f not in head or refs[m].device_id < refs[head[f]].device_id):
                head[f] = m
        recs = [(f, t0, t1, bool(op)) for f, t0, t1, op in zip(o.feeder.tolist(), o.start_ns.tolist(),
                                                               o.end_ns.tolist(), o.open.tolist()) if f >= 0]
        keys = [(names[f][0], names[f][1], t0 // 1000) for f, t0, _, _ in recs]
        known = await existing_open(con, "grid_outages", ("region", "feeder", "start_time"), ("text", "text", "int8"),
                                    keys)
        take = [i for i, k in enumerate(keys) if recs[i][1] > t_from or k in known]
        if not take:
            return 0
        await con.execute(_OUTAGE_UPSERT, [keys[i][0] for i in take], [keys[i][1] for i in take],
                          [keys[i][2] for i in take], us([recs[i][2] for i in take]), [recs[i][3] for i in take],
                          [int(n_meters[recs[i][0]]) for i in take])
        for i in sorted(take, key=lambda j: recs[j][1]):
            f, t0, t1, op = recs[i]
            ref = refs[head[f]]
            target = target_of(OUTAGE, ref, f"feeder.{names[f][1]}", f"{OUTAGE.title}: {names[f][1]}")
            await sync_alert(con, target, OUTAGE, inserted=keys[i] not in known, was_open=known.get(keys[i]),
                             open_=op, start_ns=t0, end_ns=t1, value=(t1 - t0) / _MIN, counts=counts)
        return len(take)

    async def _transformers(self, con, refs, attrs, starts, ts, temp, p, end_ns, counts) -> int:
        # Transformers that reported within the trend window (a silent one keeps its last evaluation).
        tx = [m for m, a in enumerate(attrs) if a.get("kind") == "transformer" and starts[m + 1] > starts[m]
              and ts[starts[m + 1] - 1] >= end_ns - self.trend_window_ns]
        if not tx:
            return 0
        recs = []
        for quantity in ("oil_temp", "load_pct"):
            sel = [m for m in tx if quantity == "oil_temp" or _num(attrs[m], "rated_kw", 0.0) > 0]
            if not sel:
                continue
            parts_t, parts_v, st = [], [], [0]
            for m in sel:
                s, e = int(starts[m]), int(starts[m + 1])
                v = temp[s:e] if quantity == "oil_temp" else p[s:e] / _num(attrs[m], "rated_kw", 1.0) * 100.0
                parts_t.append(ts[s:e])
                parts_v.append(v)
                st.append(st[-1] + e - s)
            limits = np.array([_num(attrs[m], "temp_limit_c", 85.0) if quantity == "oil_temp" else 100.0 for m in sel])
            w = trend_warnings(np.array(st, np.int64), np.concatenate(parts_t), np.concatenate(parts_v), limits,
                               self.trend_window_ns, self.trend_horizon_ns)
            for j, m in enumerate(sel):
                if w.samples[j] < 3:
                    continue
                recs.append((m, quantity, float(w.level[j]), float(w.slope_per_h[j]), float(limits[j]),
                             int(w.eta_ns[j]), bool(w.warn[j])))
        if not recs:
            return 0
        prev = {(r["device"], r["quantity"]): r["warn"] for r in await con.fetch(
            "SELECT device, quantity, warn FROM transformer_warnings WHERE device = ANY($1::int4[])",
            [refs[r[0]].id for r in recs])}
        await con.execute(_TRANSFORMER_UPSERT, [refs[r[0]].id for r in recs], [r[1] for r in recs],
                          [end_ns // 1000] * len(recs), [finite(r[2]) for r in recs], [finite(r[3]) for r in recs],
                          [r[4] for r in recs], [r[5] // 1000 if r[5] >= 0 else -1 for r in recs],
                          [r[6] for r in recs])
        for m, quantity, level, _, _, _, warn in recs:
            rule = TRANSFORMER[quantity]
            await sync_alert(con, target_of(rule, refs[m], quantity), rule, inserted=False,
                             was_open=prev.get((refs[m].id, quantity)), open_=warn, start_ns=end_ns, end_ns=end_ns,
                             value=level, counts=counts)
        return len(recs)

    async def _forecast(self, con, feeders: dict, end_ns: int) -> int:
        """Feeder load = sum over its meters of their mean P per 15-min slot; profile over the history,
        level from the last complete slot."""
        if not feeders:
            return 0
        hist_from = end_ns - self.history_days * 86_400 * 10**9
        rows = await con.fetch(f"""
            SELECT d.region, d.attrs->>'feeder' AS feeder, {US_OF.format('b')} AS t_us, sum(p) AS load
            FROM (SELECT r.device, time_bucket('15 minutes', r.time) AS b, avg(r.value) AS p
                  FROM readings r JOIN metrics m ON m.id = r.metric
                  WHERE m.name = ANY($1::text[]) AND r.flag <> ALL($2::text[])
                    AND r.time >= {TS_US.format('$3::int8')} AND r.time < {TS_US.format('$4::int8')}
                    AND r.device IN (SELECT id FROM devices WHERE stream = 'grid' AND attrs ? 'feeder'
                                     AND coalesce(attrs->>'kind', 'meter') <> 'transformer')
                  GROUP BY 1, 2) x JOIN devices d ON d.id = x.device
            GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
            list(QUANTITIES["p"]), sorted(INVALID_FLAGS), hist_from // 1000, end_ns // 1000)
        if not rows:
            return 0
        f_idx = np.array([feeders.get((r["region"], r["feeder"]), -1) for r in rows], np.int64)
        t = np.array([r["t_us"] for r in rows], np.int64) * 1000
        load = np.array([r["load"] for r in rows], np.float64)
        ok = f_idx >= 0
        prof = fit_profile(f_idx[ok], t[ok], load[ok], len(feeders), SLOT_NS)
        names = list(feeders)
        out_r, out_f, out_t, out_l = [], [], [], []
        issued = (end_ns // SLOT_NS) * SLOT_NS
        for f in range(len(feeders)):
            mine = ok & (f_idx == f)
            if not mine.any():
                continue
            last = int(t[mine].max())
            if last + SLOT_NS > end_ns:  # the newest slot may be incomplete: take the one before if there
                prev = t[mine][t[mine] < last]
                if len(prev):
                    last = int(prev.max())
            level = float(load[mine][t[mine] == last][0])
            ft, fl = forecast(prof, f, last, level, issued + self.horizon_ns - last)
            keep = ft > issued
            out_r += [names[f][0]] * int(keep.sum())
            out_f += [names[f][1]] * int(keep.sum())
            out_t += us(ft[keep])
            out_l += fl[keep].tolist()
        if out_t:
            await con.execute(_FORECAST_UPSERT, out_r, out_f, out_t, [issued // 1000] * len(out_t), out_l)
        return len(out_t)


def create(settings) -> GridJob:
    e = settings.energy
    return GridJob(interval_s=e.grid_interval_s, lag_s=e.lag_s, backfill_h=e.backfill_h, max_span_h=e.max_span_h,
                   outage_silence_min=e.outage_silence_min, forecast_horizon_h=e.forecast_horizon_h,
                   params=GridParams(kv35_upper_pct=e.kv35_upper_pct, kv35_lower_pct=e.kv35_lower_pct))
