"""Job ``water_quality``: Lianjiang stations - GB 3838-2002 class per hour and per day (single-factor
evaluation, worst item), compliance with each station's target class and the ``water_below_target``
alert, and pollution-pulse tracing along each river (``pollution_pulse`` alert at the detecting station).

The class is judged on the routine items (no TN, fecal coliform, temperature). Water stations sample
sparsely (every few minutes to every 4 h), so an hour's mean takes whatever valid samples it has; a
day's class needs ``water_min_daily_hours`` hourly means. Pulse tracing works on a finer grid
(``pulse_step_min``) over the new periods plus ``pulse_lookback_h`` of baseline; stations of one river
(``attrs.river``) are ordered by ``attrs.km``, travel times use ``attrs.flow_m3s``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wulian.core.const import Stream
from wulian.core.timebase import NS_PER_DAY, NS_PER_HOUR, NS_PER_MIN
from wulian.core.environment.metric_names import water_metric
from wulian.core.environment.online import episode_actions
from wulian.core.environment.pulse import PulseParams, trace_pulses
from wulian.core.environment.river import River, RiverStation
from wulian.core.environment.system_rules import POLLUTION_PULSE, WATER_BELOW_TARGET
from wulian.core.environment.tables import ROUTINE_WATER_ITEMS
from wulian.core.environment.water import below_target_episodes, class_name, class_number, classify_grid
from wulian.core.kernels.hourly_validity import hourly_to_daily
from wulian.core.timebase import ns_to_dt
from wulian.ingest.alert_store import apply_actions, raise_once
from wulian.ingest.jobs.env_common import EnvDevice, EnvJob, hourly_grid, jdump, target
from wulian.settings import Settings

STANDARD = "GB3838-2002"
_COLS = "time, device, standard, overall, overall_class, item_class, means, target, compliant"
_SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLS.split(", ")[2:])
_HOURLY_SQL = (f"INSERT INTO env_water_hourly ({_COLS}) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9)"
               f" ON CONFLICT (device, time) DO UPDATE SET {_SET}")
_DAILY_SQL = _HOURLY_SQL.replace("env_water_hourly", "env_water_daily")
_PULSE_SEEN_SQL = """
SELECT 1 FROM env_pulse_events WHERE river = $1 AND item = $2 AND entry_downstream = $3
  AND time BETWEEN $4::timestamptz - interval '6 hours' AND $4::timestamptz + interval '6 hours' LIMIT 1"""
_PULSE_SQL = """
INSERT INTO env_pulse_events (time, device, river, item, peak_value, peak_score, entry_upstream, entry_downstream,
    entry_km_from, entry_km_to, confidence, evidence)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb)
ON CONFLICT (device, item, time) DO NOTHING"""


@dataclass(frozen=True, slots=True)
class WaterJobConfig:
    interval_s: float = 300.0
    lag_s: float = 900.0
    backfill_h: int = 48
    max_span_h: int = 168
    below_target_hours: int = 6
    min_daily_hours: int = 6
    pulse_items: tuple[str, ...] = ("NH3_N", "CODMn", "TP")
    pulse_step_min: int = 10
    pulse_threshold: float = 5.0
    pulse_lookback_h: int = 12
    default_flow_m3s: float = 10.0
    pulse_params: dict = field(default_factory=dict)  # extra PulseParams fields


def _target(dev: EnvDevice) -> int:
    return class_number(str(dev.attrs.get("target_class") or "III"))


def _routine(means: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The items the class is judged on: the routine ones (no TN, fecal coliform, temperature)."""
    return {k: v for k, v in means.items() if k in ROUTINE_WATER_ITEMS}


def _classes(means: dict[str, np.ndarray], lake: np.ndarray, s: int, p: int, items_cls, overall) -> tuple:
    item_class = {k: class_name(int(items_cls[j, s, p])) for j, k in enumerate(_routine(means))
                  if items_cls[j, s, p] > 0}
    vals = {k: round(float(m[s, p]), 6) for k, m in means.items() if np.isfinite(m[s, p])}
    return int(overall[s, p]), class_name(int(overall[s, p])), jdump(item_class), jdump(vals)


class WaterQualityJob(EnvJob):
    name = "water_quality"
    stream = Stream.WATER.value
    counters = ("stations", "hourly_rows", "daily_rows", "pulses", "alerts_raised", "alerts_cleared")

    def __init__(self, cfg: WaterJobConfig = WaterJobConfig()) -> None:
        super().__init__(cfg)

    @property
    def lookback_h(self) -> int:
        return max(self.cfg.below_target_hours, self.cfg.pulse_lookback_h, 1)

    def metric_role(self, metric, dev):
        return water_metric(metric)

    async def _compute(self, con, devices, samples, window, stats) -> None:
        await self._classes(con, devices, samples, window, stats)
        await self._pulses(con, devices, samples, window, stats)

    async def _classes(self, con, devices, samples, window, stats) -> None:
        cfg = self.cfg
        grid, uploaded = hourly_grid(samples, window, min_minutes=1)
        hourly = np.where(grid.valid, grid.mean, uploaded)
        st_index: dict[int, int] = {}
        for i, _ in samples.series:
            st_index.setdefault(i, len(st_index))
        stations = [devices[i] for i in st_index]
        n_st, n_h = len(stations), window.n_hours
        items = sorted({name for _, name in samples.series})
        means = {k: np.full((n_st, n_h), np.nan) for k in items}
        for k, (i, name) in enumerate(samples.series):
            means[name][st_index[i]] = hourly[k]
        stats["stations"] = n_st
        lake = np.array([bool(st.attrs.get("lake", False)) for st in stations])
        tgt = np.array([_target(st) for st in stations], dtype=np.int8)
        if not _routine(means):
            return
        cls, overall = classify_grid(_routine(means), lake)
        t0 = window.t0_ns
        rows = [(ns_to_dt(t0 + p * NS_PER_HOUR), st.id, STANDARD, *_classes(means, lake, s, p, cls, overall),
                 int(tgt[s]), bool(overall[s, p] <= tgt[s]))
                for s, st in enumerate(stations) for p in window.new_hours() if overall[s, p] > 0]
        if rows:
            await con.executemany(_HOURLY_SQL, rows)
        stats["hourly_rows"] = len(rows)
        eps = below_target_episodes(overall, tgt, [st.device_id for st in stations], t0, NS_PER_HOUR,
                                    cfg.below_target_hours)
        by_id = {st.device_id: st for st in stations}
        actions = episode_actions(eps, window.new_from_ns, window.end_ns, NS_PER_HOUR, cfg.below_target_hours)
        out = await apply_actions(con, actions, lambda a: target(
            WATER_BELOW_TARGET, by_id[a.episode.subject], "",
            f"target {class_name(int(a.episode.threshold))}, worst {class_name(int(a.episode.peak))}"))
        stats["alerts_raised"] += out["alerts_raised"]
        stats["alerts_cleared"] += out["alerts_cleared"]
        days = window.completed_days()
        if days:
            daily = {}
            for k, m in means.items():
                mean, _, ok = hourly_to_daily(m, np.isfinite(m), cfg.min_daily_hours)
                daily[k] = np.where(ok, mean, np.nan)
            dcls, doverall = classify_grid(_routine(daily), lake)
            drows = [(ns_to_dt(t0 + d * NS_PER_DAY), st.id, STANDARD, *_classes(daily, lake, s, d, dcls, doverall),
                      int(tgt[s]), bool(doverall[s, d] <= tgt[s]))
                     for s, st in enumerate(stations) for d in days if doverall[s, d] > 0]
            if drows:
                await con.executemany(_DAILY_SQL, drows)
            stats["daily_rows"] = len(drows)

    async def _pulses(self, con, devices, samples, window, stats) -> None:
        cfg = self.cfg
        step = cfg.pulse_step_min * NS_PER_MIN
        start = window.new_from_ns - cfg.pulse_lookback_h * NS_PER_HOUR
        n_per = int((window.end_ns - start) // step)
        if n_per <= 0:
            return
        rivers: dict[str, list[int]] = {}
        for i, d in enumerate(devices):
            if d.attrs.get("river") and d.attrs.get("km") is not None:
                rivers.setdefault(str(d.attrs["river"]), []).append(i)
        keys = samples.key_index()
        sel_base = samples.valid & (samples.ts >= start) & (samples.ts < window.end_ns)
        params = PulseParams(threshold=cfg.pulse_threshold, **cfg.pulse_params)
        for river_name, members in sorted(rivers.items()):
            members.sort(key=lambda i: float(devices[i].attrs["km"]))
            if len(members) < 2:
                continue
            river = River(river_name, tuple(
                RiverStation(devices[i].device_id, float(devices[i].attrs["km"]),
                             str(devices[i].attrs.get("target_class") or "III"), bool(devices[i].attrs.get("lake")))
                for i in members))
            flows = np.array([float(devices[i].attrs.get("flow_m3s", cfg.default_flow_m3s)) for i in members[1:]])
            for item in cfg.pulse_items:
                row_of = {keys[(i, item)]: r for r, i in enumerate(members) if (i, item) in keys}
                if not row_of:
                    continue
                sel = sel_base & np.isin(samples.keys, list(row_of))
                rows = np.array([row_of[k] for k in samples.keys[sel].tolist()], dtype=np.int64)
                per = (samples.ts[sel] - start) // step
                cell = rows * n_per + per
                n = np.bincount(cell, minlength=len(members) * n_per).reshape(len(members), n_per)
                tot = np.bincount(cell, weights=samples.values[sel], minlength=len(members) * n_per)
                with np.errstate(invalid="ignore", divide="ignore"):
                    values = tot.reshape(len(members), n_per) / n
                events = trace_pulses(river, values, start, step, flows, params, item=item)
                for ev in events:
                    if ev.detected_ns < window.new_from_ns - cfg.pulse_lookback_h * NS_PER_HOUR // 2:
                        continue
                    await self._pulse(con, devices[members[river.index(ev.detected_at)]], river_name, ev, stats)

    async def _pulse(self, con, dev: EnvDevice, river: str, ev, stats) -> None:
        at = ns_to_dt(ev.detected_ns)
        if await con.fetchval(_PULSE_SEEN_SQL, river, ev.item, ev.entry_downstream, at):
            return
        evidence = [{"station": e.station_id, "expected": str(ns_to_dt(e.expected_ns)),
                     "observed": str(ns_to_dt(e.observed_ns)) if e.observed_ns is not None else None,
                     "score": e.score, "value": e.value, "seen": e.seen} for e in ev.evidence]
        await con.execute(_PULSE_SQL, at, dev.id, river, ev.item, ev.peak_value, ev.peak_score, ev.entry_upstream,
                          ev.entry_downstream, ev.entry_km[0], ev.entry_km[1], ev.confidence, jdump(evidence))
        stats["pulses"] += 1
        segment = f"entered {ev.entry_upstream or 'above ' + ev.entry_downstream} -> {ev.entry_downstream}"
        t = target(POLLUTION_PULSE, dev, ev.item, f"{segment}, confidence {ev.confidence:.2f}")
        if await raise_once(con, t, ev.detected_ns, ev.peak_value):
            stats["alerts_raised"] += 1


def create(settings: Settings) -> WaterQualityJob:
    e = settings.environment
    return WaterQualityJob(WaterJobConfig(
        interval_s=e.interval_s, lag_s=e.lag_s, backfill_h=e.backfill_h, max_span_h=e.max_span_h,
        below_target_hours=e.below_target_hours, min_daily_hours=e.water_min_daily_hours,
        pulse_items=tuple(e.pulse_items), pulse_step_min=e.pulse_step_min, pulse_threshold=e.pulse_threshold,
        pulse_lookback_h=e.pulse_lookback_h))
