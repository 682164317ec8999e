"""Job ``source_hourly``: pollution sources (重点污染源) and petrochemical boundary monitors.

Per run (new hours since the watermark, with a look-back to the day's start): HJ 76 hourly means with
validity from minute/real-time data, device-made hourly values (CN 2061) taken where ours are not
valid and compared where both exist, reference-O2 conversion for stack gas, emission mass per hour
and day, daily means and the daily valid-data rate per device, exceedance episodes on the converted
1-h mean against the registry's permit limits (boundary monitors: the plant's limits), and the
alerts ``source_exceedance`` / ``boundary_exceedance`` / ``low_valid_rate``. Registry keys: see
``core/sql/0010_environment.sql``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wulian.core.const import Stream
from wulian.core.timebase import NS_PER_DAY, NS_PER_HOUR
from wulian.core.environment.metric_names import source_metric
from wulian.core.environment.online import episode_actions
from wulian.core.environment.sources import (
    DEFAULT_BOUNDARY_LIMITS,
    DEFAULT_REFERENCE_O2,
    SourceSpec,
    evaluate_source,
)
from wulian.core.environment.system_rules import BOUNDARY_EXCEEDANCE, LOW_VALID_RATE, SOURCE_EXCEEDANCE
from wulian.core.environment.validity import HourlyGrid, aggregate_daily, compare_uploaded_hourly
from wulian.core.numbers import finite_or_none as fnum
from wulian.core.timebase import ns_to_dt
from wulian.ingest.alert_store import apply_actions, clear_alert, raise_once
from wulian.ingest.jobs.env_common import EnvDevice, EnvJob, hourly_grid, target
from wulian.settings import Settings

AUX = ("O2", "flow")
VALIDITY_RULE = "HJ76-2017 >=45 valid min/h"
UPLOADED_RULE = "HJ212 CN2061 as uploaded"


@dataclass(frozen=True, slots=True)
class SourceJobConfig:
    interval_s: float = 300.0
    lag_s: float = 900.0
    backfill_h: int = 48
    max_span_h: int = 168
    min_valid_rate: float = 0.9
    min_hours: int = 1
    o2_ceiling: float | None = None
    reference_o2: dict = field(default_factory=dict)
    uploaded_rel_tol: float = 0.05


def medium(dev: EnvDevice) -> str:
    kind = dev.attrs.get("source_kind", "stack")
    return {"outlet": "water", "boundary": "boundary"}.get(kind, "gas")


def spec_of(dev: EnvDevice, default_rate: float) -> SourceSpec:
    a = dev.attrs
    limits = {k: float(v) for k, v in (a.get("limits") or {}).items()}
    if medium(dev) == "boundary":
        limits = {**DEFAULT_BOUNDARY_LIMITS, **limits}
    ref = a.get("reference_o2")
    return SourceSpec(dev.device_id, medium(dev), limits, str(a.get("source_type") or ""),
                      None if ref is None else float(ref), float(a.get("min_valid_rate", default_rate)))


def _rows(grid: HourlyGrid, idx: list[int]) -> HourlyGrid:
    return HourlyGrid(grid.t0_ns, grid.mean[idx], grid.n_valid_minutes[idx], grid.n_minutes[idx], grid.valid[idx])


_HOURLY_SQL = """
INSERT INTO env_source_hourly (time, device, pollutant, measured, converted, reference_o2, valid_minutes, minutes,
    valid, uploaded, uploaded_mismatch, flow, mass_kg, limit_value, exceeded, rule)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
ON CONFLICT (device, pollutant, time) DO UPDATE SET measured = EXCLUDED.measured, converted = EXCLUDED.converted,
    reference_o2 = EXCLUDED.reference_o2, valid_minutes = EXCLUDED.valid_minutes, minutes = EXCLUDED.minutes,
    valid = EXCLUDED.valid, uploaded = EXCLUDED.uploaded, uploaded_mismatch = EXCLUDED.uploaded_mismatch,
    flow = EXCLUDED.flow, mass_kg = EXCLUDED.mass_kg, limit_value = EXCLUDED.limit_value,
    exceeded = EXCLUDED.exceeded, rule = EXCLUDED.rule"""
_DAILY_SQL = """
INSERT INTO env_source_daily (time, device, pollutant, mean, valid_hours, valid, mass_kg, mass_hours, rule)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (device, pollutant, time) DO UPDATE SET mean = EXCLUDED.mean, valid_hours = EXCLUDED.valid_hours,
    valid = EXCLUDED.valid, mass_kg = EXCLUDED.mass_kg, mass_hours = EXCLUDED.mass_hours, rule = EXCLUDED.rule"""
_RATE_SQL = """
INSERT INTO env_completeness_daily (time, device, valid_rate, items, min_rate) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (device, time) DO UPDATE SET valid_rate = EXCLUDED.valid_rate, items = EXCLUDED.items,
    min_rate = EXCLUDED.min_rate"""
_EPISODE_START_SQL = """
SELECT start_time FROM env_exceedances WHERE device = $1 AND pollutant = $2 AND start_time <= $3 AND end_time >= $3
ORDER BY start_time DESC LIMIT 1"""
_EPISODE_SQL = """
INSERT INTO env_exceedances (start_time, end_time, device, pollutant, rule, peak, peak_time, hours, limit_value,
    basis, open)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (device, pollutant, start_time) DO UPDATE SET
    end_time = GREATEST(env_exceedances.end_time, EXCLUDED.end_time),
    peak_time = CASE WHEN EXCLUDED.peak > env_exceedances.peak THEN EXCLUDED.peak_time
                     ELSE env_exceedances.peak_time END,
    peak = GREATEST(env_exceedances.peak, EXCLUDED.peak),
    hours = (extract(epoch FROM GREATEST(env_exceedances.end_time, EXCLUDED.end_time) - env_exceedances.start_time)
             / 3600)::integer,
    limit_value = EXCLUDED.limit_value, basis = EXCLUDED.basis, open = EXCLUDED.open"""


class SourceHourlyJob(EnvJob):
    name = "source_hourly"
    stream = Stream.POLLUTION.value
    counters = ("devices", "hourly_rows", "daily_rows", "episodes", "alerts_raised", "alerts_cleared",
                "uploaded_compared", "uploaded_mismatches")

    def __init__(self, cfg: SourceJobConfig = SourceJobConfig()) -> None:
        super().__init__(cfg)
        self.ref_defaults = {**DEFAULT_REFERENCE_O2, **cfg.reference_o2}

    @property
    def lookback_h(self) -> int:
        return max(self.cfg.min_hours, 1)

    def metric_role(self, metric, dev):
        return source_metric(metric, medium(dev))

    async def _compute(self, con, devices, samples, window, stats) -> None:
        cfg = self.cfg
        ours, uploaded = hourly_grid(samples, window)
        cmp = compare_uploaded_hourly(ours, uploaded, rel_tol=cfg.uploaded_rel_tol)
        stats["uploaded_compared"], stats["uploaded_mismatches"] = cmp.compared, cmp.mismatches
        first = np.full(len(samples.series), np.iinfo(np.int64).max)
        np.minimum.at(first, samples.keys, samples.ts)
        by_dev: dict[int, list[int]] = {}
        for k, (i, _name) in enumerate(samples.series):
            by_dev.setdefault(i, []).append(k)
        for i, keys in by_dev.items():
            await self._device(con, devices[i], keys, samples.series, ours, uploaded, cmp.mismatch,
                               window, stats, int(first[keys].min()))
            stats["devices"] += 1

    async def _device(self, con, dev: EnvDevice, keys: list[int], series, ours: HourlyGrid, uploaded: np.ndarray,
                      mismatch: np.ndarray, window, stats: dict, first_ns: int) -> None:
        cfg = self.cfg
        spec = spec_of(dev, cfg.min_valid_rate)
        names = [series[k][1] for k in keys]
        poll = [k for k, n in zip(keys, names) if n not in AUX]
        pollutants = [series[k][1] for k in poll]
        aux = {n: k for k, n in zip(keys, names) if n in AUX}
        # Device-made hourly values (CN 2061) stand where our own hour is not valid.
        have_up = np.isfinite(uploaded[keys])
        own_valid = ours.valid[keys]
        merged = HourlyGrid(ours.t0_ns, np.where(own_valid | ~have_up, ours.mean[keys], uploaded[keys]),
                            ours.n_valid_minutes[keys], ours.n_minutes[keys], own_valid | have_up)
        pos = {k: j for j, k in enumerate(keys)}
        if not poll:
            judged = mass = ref = None
            episodes = []
        else:
            sh = evaluate_source(
                spec, _rows(merged, [pos[k] for k in poll]), pollutants,
                o2=_rows(merged, [pos[aux["O2"]]]) if "O2" in aux else None,
                flow=_rows(merged, [pos[aux["flow"]]]) if "flow" in aux else None,
                reference_o2_defaults=self.ref_defaults, o2_ceiling=cfg.o2_ceiling, min_hours=cfg.min_hours)
            judged, mass, episodes, ref = sh.judged, sh.mass, sh.episodes, sh.reference_o2
        basis = f"converted at {ref:g} % O2" if ref else "measured"
        flow_mean = merged.mean[pos[aux["flow"]]] if "flow" in aux else None
        hours = window.new_hours()
        t0 = window.t0_ns
        rows = []
        for k, name in zip(keys, names):
            j = pos[k]
            p = pollutants.index(name) if name in pollutants else None
            limit = spec.limits.get(name) if p is not None else None
            for h in hours:
                if ours.n_minutes[k, h] == 0 and not have_up[j, h]:
                    continue
                from_upload = have_up[j, h] and not own_valid[j, h]
                conv = judged.mean[p, h] if p is not None else merged.mean[j, h]
                valid = bool(judged.valid[p, h]) if p is not None else bool(merged.valid[j, h])
                exceeded = bool(valid and limit is not None and conv > limit)
                rows.append((
                    ns_to_dt(t0 + h * NS_PER_HOUR), dev.id, name, fnum(merged.mean[j, h]),
                    fnum(conv) if valid or np.isfinite(conv) else None,
                    float(ref) if (ref and p is not None) else None,
                    int(ours.n_valid_minutes[k, h]), int(ours.n_minutes[k, h]), valid, fnum(uploaded[k, h]),
                    bool(mismatch[k, h]) if have_up[j, h] and own_valid[j, h] else None,
                    fnum(flow_mean[h]) if flow_mean is not None else None,
                    fnum(mass.hourly_kg[p, h]) if (mass is not None and p is not None) else None,
                    limit, exceeded,
                    f"{UPLOADED_RULE if from_upload else VALIDITY_RULE}; {basis if p is not None else 'measured'}",
                ))
        if rows:
            await con.executemany(_HOURLY_SQL, rows)
            stats["hourly_rows"] += len(rows)
        await self._daily(con, dev, spec, keys, names, pollutants, merged, mass, window, stats, first_ns)
        await self._episodes(con, dev, spec, episodes, window, basis, stats)

    async def _daily(self, con, dev, spec, keys, names, pollutants, merged, mass, window, stats, first_ns) -> None:
        # Days that ended before the device's first reading in the window are not judged: it was not
        # reporting yet (a silent day after it has reported counts, with rate 0).
        days = [d for d in window.completed_days() if window.t0_ns + (d + 1) * NS_PER_DAY > first_ns]
        if not days:
            return
        daily = aggregate_daily(merged)
        rows, rates, ends = [], [], []
        for d in days:
            day = ns_to_dt(window.t0_ns + d * NS_PER_DAY)
            for j, name in enumerate(names):
                p = pollutants.index(name) if name in pollutants else None
                rows.append((day, dev.id, name, fnum(daily.mean[j, d]), int(daily.n_valid_hours[j, d]),
                             bool(daily.valid[j, d]),
                             fnum(mass.daily_kg[p, d]) if (mass is not None and p is not None) else None,
                             int(mass.daily_hours[p, d]) if (mass is not None and p is not None) else None,
                             "HJ76-2017 >=20 valid h/day"))
            rate = float(daily.n_valid_hours[:, d].sum()) / (24.0 * len(names))
            rates.append((day, dev.id, rate, len(names), spec.min_valid_rate))
            ends.append(window.t0_ns + (d + 1) * NS_PER_DAY)
        await con.executemany(_DAILY_SQL, rows)
        await con.executemany(_RATE_SQL, rates)
        stats["daily_rows"] += len(rows)
        t = target(LOW_VALID_RATE, dev, "")
        for (_day, _dev, rate, _n, min_rate), end_ns in zip(rates, ends):
            if rate < min_rate:
                if await raise_once(con, t, end_ns, rate, lower_is_worse=True):
                    stats["alerts_raised"] += 1
            else:
                if await clear_alert(con, t, end_ns, rate) is not None:
                    stats["alerts_cleared"] += 1

    async def _episodes(self, con, dev, spec, episodes, window, basis, stats) -> None:
        rule = BOUNDARY_EXCEEDANCE if spec.medium == "boundary" else SOURCE_EXCEEDANCE
        live = [e for e in episodes if e.end_ns >= window.new_from_ns]
        for ep in live:
            start = ns_to_dt(ep.start_ns)
            known = await con.fetchval(_EPISODE_START_SQL, dev.id, ep.item, start)
            first = known or start
            end = ns_to_dt(ep.end_ns)
            await con.execute(_EPISODE_SQL, first, end, dev.id, ep.item, rule.name, ep.peak, ns_to_dt(ep.peak_ns),
                              int(round((end - first).total_seconds() / 3600)), ep.threshold, ep.basis,
                              ep.end_ns >= window.end_ns)
        stats["episodes"] += len(live)
        actions = episode_actions(episodes, window.new_from_ns, window.end_ns, NS_PER_HOUR, self.cfg.min_hours)
        out = await apply_actions(
            con, actions, lambda a: target(rule, dev, a.episode.item, f"limit {a.episode.threshold:g}, {basis}"))
        stats["alerts_raised"] += out["alerts_raised"]
        stats["alerts_cleared"] += out["alerts_cleared"]


def create(settings: Settings) -> SourceHourlyJob:
    e = settings.environment
    return SourceHourlyJob(SourceJobConfig(
        interval_s=e.interval_s, lag_s=e.lag_s, backfill_h=e.backfill_h, max_span_h=e.max_span_h,
        min_valid_rate=e.min_valid_rate, min_hours=e.exceedance_min_hours, o2_ceiling=e.o2_ceiling,
        reference_o2=dict(e.reference_o2)))
