"""``traffic`` job: every 5 minutes, forecast every road segment 5..60 minutes ahead and detect incidents.

The job's clock is the newest complete bin, ``lag_s`` after its end; when the data lag further behind
(a time-compressed replay stamped in the past), the bin before the newest observation instead.
Per region with traffic detectors, each run
1. refits when due (no model yet and a day of history, a day of data since the last fit, or a new
   segment reporting for an hour): the 5-minute grid of the last ``history_days`` from
   ``traffic_observations``, the road graph from ``road_links``, a new ``traffic_models`` row;
2. builds the grid of the bins completed since its watermark (bins [t, t + 5 min), labelled t, processed
   once ``lag_s`` has passed after their end), forecasts 1..12 steps from every bin into
   ``traffic_forecasts`` (issued_at = the bin, upserted, so a re-run is a no-op);
3. feeds each bin's observed speeds with the forecasts issued ``incident_horizon`` bins earlier (from
   this run or from the table; with a residual net, without its term and those before the run made
   again: ``core.traffic.incidents.DETECTOR_NET``) to the incident detector; raises and clears
   ``traffic_incidents`` rows and their alerts (built-in rule ``core.traffic.system_rules.TRAFFIC_INCIDENT``);
4. saves the detector's state with the model and advances the region's watermark
   (``job_watermarks.job = 'traffic/<region>'``).
Each region is one unit of the job framework (ingest.jobs.base): steps 1-4 run in one transaction under
the region's advisory lock.
A restart reloads the newest model and its detector state from the database; nothing is refitted.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import asyncpg
import numpy as np
import orjson

from wulian.core.const import Stream
from wulian.core.timebase import NS_PER_US as _US
from wulian.core.traffic.forecaster import TrafficForecaster
from wulian.core.traffic.incidents import (
    CLEAR, DETECTOR_NET, FAULT, FAULT_CLEAR, FAULT_NAMES, RAISE, IncidentDetector,
)
from wulian.core.timebase import dt_to_ns, ns_to_dt
from wulian.core.traffic.online import (
    OnlineParams, adjacency_matrix, carry_detector, dense_grid, detector_from_bytes, detector_to_bytes, fit_online,
    last_complete_bin,
)
from wulian.core.traffic.system_rules import TRAFFIC_DETECTOR_FAULT, TRAFFIC_INCIDENT
from wulian.ingest.alert_store import clear_alert, raise_alert, target_of, update_alert
from wulian.ingest.device_store import DeviceRef
from wulian.ingest.jobs.base import Done, WindowedJob
from wulian.settings import Settings

log = logging.getLogger(__name__)
JOB = "traffic"
_TS = "timestamptz 'epoch' + ({}::bigint) * interval '1 microsecond'"

# Per (bin, segment) means over a region's detectors; row = bin index from $2, at step $4 seconds.
_GRID = """
SELECT floor(extract(epoch FROM (o.time - $2))::float8 / $4::float8)::bigint AS row, o.device,
       avg(o.speed_kmh)::float8 AS speed, avg(o.flow_vph)::float8 AS flow
FROM traffic_observations o JOIN devices d ON d.id = o.device
WHERE d.region = $1 AND d.stream = 'traffic' AND o.time >= $2 AND o.time < $3
  AND ($5::int[] IS NULL OR o.device = ANY($5))
GROUP BY 1, 2"""
_STAGE = """CREATE TEMP TABLE traffic_forecast_stage (issued_us bigint, target_us bigint, device integer,
    horizon_steps smallint, horizon_min smallint, speed_kmh real, flow_vph real, model_id bigint) ON COMMIT DROP"""
_FROM_STAGE = f"""
INSERT INTO traffic_forecasts (issued_at, time, device, horizon_steps, horizon_min, speed_kmh, flow_vph, model_id)
SELECT {_TS.format('issued_us')}, {_TS.format('target_us')}, device, horizon_steps, horizon_min, speed_kmh,
       flow_vph, model_id FROM traffic_forecast_stage
ON CONFLICT (device, horizon_steps, issued_at) DO NOTHING"""
_OPEN = f"""
INSERT INTO traffic_incidents (device, region, state, started_at, detected_at, expected_kmh, observed_kmh,
                               min_speed_kmh, min_residual, band_kmh, model_id)
VALUES ($1, $2, 'open', {_TS.format('$3')}, {_TS.format('$4')}, $5, $6, $6, $7, $8, $9)
ON CONFLICT DO NOTHING RETURNING id"""
_TOUCH = """
UPDATE traffic_incidents SET min_residual = LEAST(min_residual, $2), min_speed_kmh = LEAST(min_speed_kmh, $3),
       updated_at = now() WHERE device = $1 AND state = 'open'"""
_CLOSE = f"""
UPDATE traffic_incidents SET state = 'cleared', ended_at = {_TS.format('$2')}, updated_at = now()
WHERE device = $1 AND state = 'open'"""


@dataclass(slots=True)
class _Model:
    id: int
    segments: np.ndarray  # int64 device ids, model column order
    speed: TrafficForecaster
    flow: TrafficForecaster | None
    bands: np.ndarray
    data_to_ns: int


def _us(ts_ns: int) -> int:
    return int(ts_ns) // _US


class TrafficJob(WindowedJob):
    """See the module docstring. One instance per ``wulian derive`` process; state lives in the database,
    the instance only caches the newest model per region by its id."""

    name = JOB

    def __init__(self, params: OnlineParams | None = None, interval_s: float = 300.0) -> None:
        self.params = params or OnlineParams()
        self.interval_s = interval_s
        self._models: dict[str, _Model] = {}

    async def keys(self, con: asyncpg.Connection) -> list[str]:
        """One watermark per region with traffic detectors."""
        return [f"{JOB}/{r['region']}" for r in await con.fetch(
            "SELECT DISTINCT region FROM devices WHERE stream = $1 ORDER BY 1", Stream.TRAFFIC.value)]

    def summary(self, by_key: dict[str, dict]) -> dict:
        out = {key.split("/", 1)[1]: stats for key, stats in by_key.items()}
        totals = {k: sum(r.get(k, 0) for r in out.values()) for k in ("forecasts", "fitted", "raised", "cleared")}
        return {**totals, "regions": out}

    # -- one region ---------------------------------------------------------------------------------
    async def run_key(self, con: asyncpg.Connection, key: str, watermark_ns: int | None, now_ns: int) -> Done:
        p = self.params
        region = key.split("/", 1)[1]
        wall_last_bin = last_complete_bin(now_ns, p.step_s, p.lag_s)
        stats: dict = {"fitted": 0, "forecasts": 0, "raised": 0, "cleared": 0, "bins": 0}
        last_bin = await self._data_last_bin(con, region, wall_last_bin, now_ns)
        if last_bin is None:
            stats["waiting"] = "no recent observations"
            return Done(None, stats)
        stats["upto"] = ns_to_dt(last_bin).isoformat()
        head = await con.fetchrow(
            "SELECT id, data_to, segments, detector FROM traffic_models WHERE region = $1 ORDER BY id DESC LIMIT 1",
            region)
        if await self._refit_due(con, region, head, last_bin):
            t = time.perf_counter()
            if await self._refit(con, region, head, last_bin):
                stats["fitted"] = 1
                stats["fit_s"] = round(time.perf_counter() - t, 3)
        model = await self._load(con, region)
        if model is None:
            stats["waiting"] = "not enough history for a first fit"
            return Done(None, stats)
        stats["model_id"] = model.id
        if watermark_ns is None:
            start = last_bin - (p.backfill_bins - 1) * p.step_ns
        else:
            start = max(watermark_ns + p.step_ns, last_bin - (p.max_bins_per_run - 1) * p.step_ns)
        if start > last_bin:
            return Done(None, stats)
        await self._forecast_and_detect(con, region, model, start, last_bin, stats)
        return Done(last_bin, stats)

    async def _data_last_bin(self, con: asyncpg.Connection, region: str, wall_last_bin: int, now_ns: int):
        """The newest complete bin by the clock (``lag_s`` after its end), unless the data lag behind it
        by more than a bin (a replay stamped in the past, or detectors gone silent): then the bin before
        the newest observation, so a replay is processed as it arrives. None when the region sent
        nothing within ``max_bins_per_run`` bins."""
        p = self.params
        newest = await con.fetchval(
            "SELECT max(o.time) FROM traffic_observations o JOIN devices d ON d.id = o.device"
            " WHERE d.region = $1 AND d.stream = 'traffic' AND o.time >= $2 AND o.time < $3",
            region, ns_to_dt(wall_last_bin - p.max_bins_per_run * p.step_ns), ns_to_dt(now_ns))
        if newest is None:
            return None
        data_bin = dt_to_ns(newest) // p.step_ns * p.step_ns - p.step_ns
        return wall_last_bin if wall_last_bin - data_bin <= p.step_ns else data_bin

    async def _refit_due(self, con: asyncpg.Connection, region: str, head, last_bin: int) -> bool:
        p = self.params
        if head is None:
            first = await con.fetchval(
                "SELECT min(o.time) FROM traffic_observations o JOIN devices d ON d.id = o.device"
                " WHERE d.region = $1 AND d.stream = 'traffic' AND o.time >= $2 AND o.time < $3",
                region, ns_to_dt(self._history_start(last_bin)), ns_to_dt(last_bin + p.step_ns))
            return first is not None and (last_bin - dt_to_ns(first)) // p.step_ns + 1 >= p.min_fit_bins
        age_ns = last_bin - dt_to_ns(head["data_to"])
        if age_ns >= p.refit_every_s * 1_000_000_000 or _readable_detector(head["detector"]) is None:
            return True
        if age_ns < p.new_segment_refit_s * 1_000_000_000:
            return False
        since = last_bin + p.step_ns - p.new_segment_refit_s * 1_000_000_000
        new = await con.fetchval(
            "SELECT count(DISTINCT o.device) FROM traffic_observations o JOIN devices d ON d.id = o.device"
            " WHERE d.region = $1 AND d.stream = 'traffic' AND o.time >= $2 AND NOT (o.device = ANY($3))",
            region, ns_to_dt(since), list(head["segments"]))
        return new > 0

    def _history_start(self, last_bin: int) -> int:
        p = self.params
        n_bins = int(p.history_days * 86_400 // p.step_s)
        return last_bin - (n_bins - 1) * p.step_ns

    async def _refit(self, con: asyncpg.Connection, region: str, head, last_bin: int) -> bool:
        """Fit on the region's history; insert the model row. False when the history is still too short."""
        p = self.params
        t0 = self._history_start(last_bin)
        rows = await con.fetch(_GRID, region, ns_to_dt(t0), ns_to_dt(last_bin + p.step_ns), float(p.step_s), None)
        if not rows:
            return False
        row = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        dev = np.fromiter((r[1] for r in rows), np.int64, len(rows))
        speed = np.fromiter((r[2] for r in rows), np.float64, len(rows))
        flow = np.fromiter((np.nan if r[3] is None else r[3] for r in rows), np.float64, len(rows))
        devices, counts = np.unique(dev, return_counts=True)
        segments = devices[counts >= p.min_segment_bins]
        first = int(row.min())
        n_bins = int(row.max()) + 1 - first
        if segments.size == 0 or n_bins < p.min_fit_bins:
            return False
        col = np.searchsorted(segments, dev)
        col[(col >= segments.size) | (segments[np.minimum(col, segments.size - 1)] != dev)] = -1
        t_first = t0 + first * p.step_ns
        bins = t_first + (row - first) * p.step_ns
        speed_grid = dense_grid(bins, col, speed, t_first, n_bins, segments.size, p.step_s)
        flow_grid = dense_grid(bins, col, flow, t_first, n_bins, segments.size, p.step_s)
        links = await con.fetch("SELECT a, b, weight FROM road_links WHERE a = ANY($1) AND b = ANY($1)",
                                segments.tolist())
        adjacency = adjacency_matrix(segments, np.array([r[0] for r in links], np.int64),
                                     np.array([r[1] for r in links], np.int64),
                                     np.array([r[2] for r in links], np.float64))
        t = time.perf_counter()
        try:
            fitted = await asyncio.to_thread(fit_online, speed_grid, flow_grid, adjacency, t_first, p)
        except ValueError as exc:  # e.g. min_fit_bins configured below what the model needs
            log.warning("traffic %s: cannot fit on %d bins: %s", region, n_bins, exc)
            return False
        fit_s = time.perf_counter() - t
        detector = carry_detector(_readable_detector(head["detector"]) if head is not None else None,
                                  head["segments"] if head is not None else [], segments, fitted.detector)
        stats = {"bins": n_bins, "segments": int(segments.size), "links": len(links),
                 "observed": int(np.isfinite(speed_grid).sum()), "flow": fitted.flow is not None,
                 "band_median_kmh": float(np.median(fitted.bands))}
        model_id = await con.fetchval(
            "INSERT INTO traffic_models (region, data_from, data_to, step_s, segments, adjacency_source, speed_model,"
            " flow_model, bands, detector, fit_seconds, stats) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
            " $12::jsonb) RETURNING id",
            region, ns_to_dt(t_first), ns_to_dt(last_bin), p.step_s, segments.tolist(),
            "road_links" if links else "none", fitted.speed.to_bytes(),
            fitted.flow.to_bytes() if fitted.flow is not None else None, fitted.bands.tolist(),
            detector_to_bytes(detector), fit_s, orjson.dumps(stats).decode())
        log.info("traffic %s: fitted model %d on %d segments x %d bins in %.2fs", region, model_id,
                 segments.size, n_bins, fit_s)
        return True

    async def _load(self, con: asyncpg.Connection, region: str) -> _Model | None:
        """The region's newest model, from the cache when its id has not changed."""
        model_id = await con.fetchval("SELECT max(id) FROM traffic_models WHERE region = $1", region)
        if model_id is None:
            return None
        cached = self._models.get(region)
        if cached is not None and cached.id == model_id:
            return cached
        row = await con.fetchrow("SELECT segments, speed_model, flow_model, bands, data_to FROM traffic_models"
                                 " WHERE id = $1", model_id)
        model = _Model(
            id=model_id, segments=np.asarray(row["segments"], np.int64),
            speed=TrafficForecaster.from_bytes(row["speed_model"]),
            flow=TrafficForecaster.from_bytes(row["flow_model"]) if row["flow_model"] is not None else None,
            bands=np.asarray(row["bands"], np.float64), data_to_ns=dt_to_ns(row["data_to"]))
        self._models[region] = model
        return model

    # -- forecasts and incidents --------------------------------------------------------------------
    async def _forecast_and_detect(self, con: asyncpg.Connection, region: str, m: _Model, start: int,
                                   last_bin: int, stats: dict) -> None:
        p = self.params
        step = p.step_ns
        n_lags = m.speed.params.n_lags
        n_h = m.speed.params.horizons
        n_seg = m.segments.size
        n_bins = (last_bin - start) // step + 1
        hz = p.incident_horizon
        # the detector's forecasts (DETECTOR_NET) are the stored ones unless the model has a residual net
        # and its blend without it: then those issued in the hz bins before this run are made again, from
        # hz more rows of the grid
        lead = hz if m.speed.blend_linear is not None and not DETECTOR_NET else 0
        g0 = start - (n_lags - 1 + lead) * step
        rows = await con.fetch(_GRID, region, ns_to_dt(g0), ns_to_dt(last_bin + step), float(p.step_s),
                               m.segments.tolist())
        row = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        col = np.searchsorted(m.segments, np.fromiter((r[1] for r in rows), np.int64, len(rows)))
        bins = g0 + row * step
        size = n_bins + n_lags - 1 + lead
        speed = dense_grid(bins, col, np.fromiter((r[2] for r in rows), np.float64, len(rows)), g0, size, n_seg,
                           p.step_s)
        flow = dense_grid(bins, col, np.fromiter((np.nan if r[3] is None else r[3] for r in rows), np.float64,
                                                 len(rows)), g0, size, n_seg, p.step_s)

        blob = await con.fetchval("SELECT detector FROM traffic_models WHERE id = $1", m.id)
        det = _readable_detector(blob)
        if det is None or det.n_segments != n_seg:
            log.warning("traffic %s: model %d has no usable detector state; refit pending", region, m.id)
            return
        ip = det.params

        def seen_at(k: int, grid: np.ndarray) -> np.ndarray:
            """Segments that reported within the input window of bin k of this run (k < 0: before it)."""
            return np.isfinite(grid[lead + k:lead + k + n_lags]).any(axis=0)

        def issue(k: int, model: TrafficForecaster, grid: np.ndarray, seen: np.ndarray, net: bool = True):
            """Forecasts [H, N] issued at bin k for the segments seen (else NaN), from a window without the
            detectors the detector holds back (fault evidence or an open fault)."""
            window = grid[lead + k:lead + k + n_lags]
            out = model.forecast(np.where(det.held, np.nan, window), start + k * step, net)
            out[:, ~seen] = np.nan
            return out

        fc_h = np.full((n_bins, n_seg), np.nan)  # each bin's forecast issued incident_horizon bins before
        earlier = [] if lead else await con.fetch(
            "SELECT round(extract(epoch FROM (issued_at - $4))::float8 / $5::float8)::bigint AS k, device,"
            " speed_kmh::float8 FROM traffic_forecasts"
            " WHERE horizon_steps = $1 AND device = ANY($2) AND issued_at >= $3 AND issued_at < $4",
            hz, m.segments.tolist(), ns_to_dt(start - hz * step), ns_to_dt(start), float(p.step_s))
        for k_rel, dev, v in earlier:
            target = int(k_rel) + hz  # issued at start + k_rel bins: targets bin k_rel + hz of this run
            c = int(np.searchsorted(m.segments, dev))
            if 0 <= target < n_bins and c < n_seg and m.segments[c] == dev:
                fc_h[target, c] = v
        for target in range(min(lead, n_bins)):  # held as now, not as when they were issued: a near copy
            seen = seen_at(target - hz, speed)
            if seen.any():
                fc_h[target] = issue(target - hz, m.speed, speed, seen, DETECTOR_NET)[hz - 1]
        observed = speed[lead + n_lags - 1:]
        resid = np.full((n_bins, n_seg), np.nan)
        prof = m.speed.profile_at(start + np.arange(n_bins, dtype=np.int64) * step)
        fc = np.full((n_bins, n_h, n_seg), np.nan)
        fc_det = np.full((n_bins, n_seg), np.nan)  # the detector's forecasts issued at each bin, hz ahead
        ffc = np.full((n_bins, n_h, n_seg), np.nan)
        ops: list[tuple] = []
        for k in range(n_bins):
            t = start + k * step
            # the detector first: the bin's reading against the forecast issued hz bins before ...
            if k >= hz:
                fc_h[k] = fc_det[k - hz]
            resid[k] = observed[k] - fc_h[k]
            ev = det.update_bin(t, observed[k], fc_h[k], prof[k])
            raised = set()
            for s, kind, code, r in zip(ev.segment.tolist(), ev.kind.tolist(), ev.code.tolist(), ev.value.tolist()):
                if kind == FAULT:
                    ops.append(("fault", s, t, FAULT_NAMES.get(code, "fault"), float(observed[k, s]), None))
                elif kind == FAULT_CLEAR:
                    ops.append(("fault_clear", s, t, FAULT_NAMES.get(code, "fault"), float(observed[k, s]), None))
                elif kind == RAISE:
                    low = resid[max(0, k - ip.raise_after + 1):k + 1, s]
                    ops.append(("raise", s, t, float(np.nanmin(low)), float(observed[k, s]), float(fc_h[k, s])))
                    raised.add(s)
                elif kind == CLEAR:
                    ops.append(("clear", s, t, r, float(observed[k, s]), float(fc_h[k, s])))
            for s in np.flatnonzero(det.active[:n_seg]).tolist():
                if s not in raised and np.isfinite(resid[k, s]):
                    ops.append(("touch", s, t, float(resid[k, s]), float(observed[k, s]), float(fc_h[k, s])))
            # ... then the forecasts issued at this bin, for segments that reported within the input window
            seen = seen_at(k, speed)
            if seen.any():
                fc[k] = issue(k, m.speed, speed, seen)
                fc_det[k] = issue(k, m.speed, speed, seen, DETECTOR_NET)[hz - 1] if lead else fc[k, hz - 1]
            if m.flow is not None:
                fseen = seen_at(k, flow) & seen
                if fseen.any():
                    ffc[k] = issue(k, m.flow, flow, fseen)
        kk, hh, ss = np.nonzero(np.isfinite(fc))
        issued = start + kk * step
        flow_vals = ffc[kk, hh, ss]
        records = [
            (i // _US, (i + (h + 1) * step) // _US, d, h + 1, (h + 1) * p.step_s // 60, v, None if f != f else f, m.id)
            for i, h, d, v, f in zip(issued.tolist(), hh.tolist(), m.segments[ss].tolist(), fc[kk, hh, ss].tolist(),
                                     flow_vals.tolist())
        ]
        stats["bins"] = int(n_bins)

        if records:
            await con.execute(_STAGE)
            await con.copy_records_to_table("traffic_forecast_stage", records=records)
            status = await con.execute(_FROM_STAGE)
            stats["forecasts"] = int(status.split()[-1])
        if ops:
            await self._apply(con, region, m, ops, det, stats)
        await con.execute("UPDATE traffic_models SET detector = $2, detector_upto = $3 WHERE id = $1",
                          m.id, detector_to_bytes(det), ns_to_dt(last_bin))

    async def _apply(self, con: asyncpg.Connection, region: str, m: _Model, ops: list[tuple],
                     det: IncidentDetector, stats: dict) -> None:
        """Incident rows and alerts for the detector's events, in event order."""
        ids = sorted({int(m.segments[op[1]]) for op in ops})
        names = {r["id"]: r["device_id"] for r in await con.fetch(
            "SELECT id, device_id FROM devices WHERE id = ANY($1)", ids)}
        ip = det.params
        for kind, s, t, r, obs, fc in ops:
            dev = int(m.segments[s])
            ref = DeviceRef(dev, names[dev], region, Stream.TRAFFIC.value)
            if kind in ("fault", "fault_clear"):  # a broken detector: its own alert, never an incident
                fault = target_of(TRAFFIC_DETECTOR_FAULT, ref, "speed_kmh", title=f"{TRAFFIC_DETECTOR_FAULT.title} ({r})")
                if kind == "fault":
                    stats["faults"] = stats.get("faults", 0) + int(await raise_alert(con, fault, t, obs) is not None)
                else:
                    stats["faults_cleared"] = stats.get("faults_cleared", 0) + int(
                        await clear_alert(con, fault, t, obs) is not None)
                continue
            target = target_of(TRAFFIC_INCIDENT, ref, "speed_kmh")
            if kind == "raise":
                started = t - (ip.raise_after - 1) * ip.step_s * 1_000_000_000
                inc = await con.fetchval(_OPEN, dev, region, _us(started), _us(t), fc, obs, r,
                                         float(det.band(t)[s]), m.id)
                if inc is None:
                    continue  # already recorded (a re-run) or one is open
                ev = await raise_alert(con, target, t, obs)
                if ev is not None:
                    await con.execute("UPDATE traffic_incidents SET alert_id = $2 WHERE id = $1", inc, ev["id"])
                stats["raised"] += 1
            elif kind == "touch":
                await con.execute(_TOUCH, dev, r, obs)
                await update_alert(con, target, t, obs, lower_is_worse=True)
            else:
                status = await con.execute(_CLOSE, dev, _us(t))
                await clear_alert(con, target, t, obs)
                stats["cleared"] += int(status.split()[-1])


def _readable_detector(blob: bytes | None) -> IncidentDetector | None:
    """The saved detector, or None when there is none or it is of an earlier format (a refit replaces it)."""
    if not blob:
        return None
    try:
        return detector_from_bytes(blob)
    except ValueError:
        return None


def create(settings: Settings) -> TrafficJob:
    t = settings.traffic
    params = OnlineParams(
        history_days=t.history_days, min_fit_bins=t.min_fit_bins, refit_every_s=int(t.refit_every_h * 3600),
        backfill_bins=t.backfill_bins, lag_s=t.lag_s, utc_offset_s=int(round(t.utc_offset_h * 3600)),
        min_drop_kmh=t.min_drop_kmh, net_hidden=t.net_hidden)
    return TrafficJob(params, interval_s=t.interval_s)
