"""Regulator KPIs for 两客一危 fleets per enterprise (or region) and China day.

Definitions, per group g and day d (vehicles of the group in the registry ``Fleet``):

* 入网率 ``network_rate``  = networked vehicles / registered vehicles. A vehicle is networked (入网) when its
  terminal is registered on the platform (``Fleet.networked``).
* 上线率 ``online_rate``   = online vehicles / networked vehicles. Online (上线): a networked vehicle with at
  least one valid position that day.
* 轨迹完整率 ``track_completeness`` = complete mileage / total mileage of the day's tracks. Mileage sums the
  steps between consecutive accepted points; a step longer than ``complete_step_km`` (default 1 km) is a
  hole in the track, so its distance counts in the total but not as complete.
* 数据合格率 ``valid_rate`` = valid points / all points received. Valid: coordinates inside the service
  bounds, not (0, 0), speed within [0, max_valid_kmh], and (optionally) the positioned status bit.
* 漂移率 ``drift_rate``    = online vehicles with at least one drift point / online vehicles; a drift point
  implies a speed above ``drift_kmh`` from the last accepted point. ``drift_point_rate`` = drift points
  / valid points is reported as well.
* ``overspeed_count``, ``night_violations`` = events of that rule starting that day;
  ``fatigue_hours`` = summed duration (start to end) of continuous-driving fatigue events starting that day.

A rate whose denominator is zero is NaN (no data, not 0 %).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wulian.core.kernels.vehicle_rules import vehicle_day_stats
from wulian.core.timebase import CHINA_OFFSET_NS, china_day
from wulian.core.vehicles.rules import Events, Fleet, Rule, Tracks


@dataclass(frozen=True, slots=True)
class KpiParams:
    lat_bounds: tuple[float, float] = (3.8, 53.6)  # China's extent, with margin
    lon_bounds: tuple[float, float] = (73.5, 135.1)
    max_valid_kmh: float = 220.0
    need_fix: bool = False  # require JT/T 808 status bit 1 (positioned); JSON sources have no status word
    drift_kmh: float = 160.0
    drift_relocate: int = 3
    complete_step_km: float = 1.0
    utc_offset_ns: int = CHINA_OFFSET_NS


@dataclass(frozen=True, slots=True)
class DayStats:
    """Per vehicle x day arrays (n_vehicles, n_days) from the track pass."""

    day0: int  # days since 1970-01-01 China time of column 0
    n_points: np.ndarray
    n_valid: np.ndarray
    n_drift: np.ndarray
    km_total: np.ndarray
    km_complete: np.ndarray


@dataclass(frozen=True, slots=True)
class GroupKpis:
    """KPIs as arrays (n_groups, n_days); group index = the dense enterprise or region key."""

    day0: int
    registered: np.ndarray
    networked: np.ndarray
    online: np.ndarray
    network_rate: np.ndarray
    online_rate: np.ndarray
    track_completeness: np.ndarray
    valid_rate: np.ndarray
    drift_rate: np.ndarray
    drift_point_rate: np.ndarray
    overspeed_count: np.ndarray
    fatigue_hours: np.ndarray
    night_violations: np.ndarray


def kpi_records(k: GroupKpis, group_ids=None) -> list[dict]:
    """Per group-day rows for a KPI table; rates with no denominator are None."""
    names = ("network_rate", "online_rate", "track_completeness", "valid_rate", "drift_rate", "drift_point_rate",
             "fatigue_hours")
    counts = ("registered", "networked", "online", "overspeed_count", "night_violations")
    rows = []
    n_groups, n_days = k.registered.shape
    for g in range(n_groups):
        for d in range(n_days):
            row = {"group": group_ids[g] if group_ids is not None else g, "day": k.day0 + d}
            row.update({c: int(getattr(k, c)[g, d]) for c in counts})
            row.update({n: (None if np.isnan(x := getattr(k, n)[g, d]) else float(x)) for n in names})
            rows.append(row)
    return rows


def day_stats(tracks: Tracks, day0: int, n_days: int, params: KpiParams = KpiParams()) -> DayStats:
    nv = tracks.n_vehicles
    arrs = [np.zeros((nv, n_days), np.int64) for _ in range(3)] + [np.zeros((nv, n_days)) for _ in range(2)]
    vehicle_day_stats(tracks.starts, tracks.ts_ns, tracks.lat, tracks.lon, tracks.speed_kmh, tracks.status_bits,
                      params.utc_offset_ns, day0, n_days, *params.lat_bounds, *params.lon_bounds,
                      params.max_valid_kmh, params.need_fix, params.drift_kmh, params.drift_relocate,
                      params.complete_step_km, *arrs)
    return DayStats(day0, *arrs)


def day_stats_numpy(tracks: Tracks, day0: int, n_days: int, params: KpiParams = KpiParams()) -> DayStats:
    """The same statistics with numpy only (no relocation after drift: each point is judged against the
    previous valid point). Kept as an independent baseline for the benchmark and the tests."""
    nv = tracks.n_vehicles
    veh = np.repeat(np.arange(nv, dtype=np.int64), np.diff(tracks.starts))
    day = china_day(tracks.ts_ns, params.utc_offset_ns) - day0
    inday = (day >= 0) & (day < n_days)
    cell = veh * n_days + np.clip(day, 0, n_days - 1)
    la, lo, sp = tracks.lat, tracks.lon, tracks.speed_kmh
    valid = ((la >= params.lat_bounds[0]) & (la <= params.lat_bounds[1]) & (lo >= params.lon_bounds[0])
             & (lo <= params.lon_bounds[1]) & ~((la == 0) & (lo == 0)) & (sp >= 0) & (sp <= params.max_valid_kmh))
    if params.need_fix:
        valid &= (tracks.status_bits & 2) != 0
    valid &= inday
    idx = np.flatnonzero(valid)
    size = nv * n_days
    n_points = np.bincount(cell[inday], minlength=size)
    n_valid = np.bincount(cell[idx], minlength=size)
    a, b = idx[:-1], idx[1:]
    same = veh[a] == veh[b]
    a, b = a[same], b[same]
    p1, p2 = np.radians(la[a]), np.radians(la[b])
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lo[b] - lo[a]) / 2) ** 2
    step = 2 * 6371.0088 * np.arcsin(np.sqrt(np.minimum(1.0, h)))
    dt_h = (tracks.ts_ns[b] - tracks.ts_ns[a]) / 3.6e12
    drift = np.where(dt_h > 0, step > params.drift_kmh * dt_h, step > 0.05)
    n_drift = np.bincount(cell[b[drift]], minlength=size)
    ok = ~drift
    km_total = np.bincount(cell[b[ok]], weights=step[ok], minlength=size)
    comp = ok & (step <= params.complete_step_km)
    km_complete = np.bincount(cell[b[comp]], weights=step[comp], minlength=size)
    shape = (nv, n_days)
    return DayStats(day0, n_points.reshape(shape), n_valid.reshape(shape), n_drift.reshape(shape),
                    km_total.reshape(shape), km_complete.reshape(shape))


def _ratio(num, den):
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def group_kpis(stats: DayStats, fleet: Fleet, events: Events | None, by: str = "enterprise",
               utc_offset_ns: int = CHINA_OFFSET_NS) -> GroupKpis:
    """Aggregate ``stats`` (and ``events``) per group (``by`` = "enterprise" or "region") and day."""
    key = np.asarray(getattr(fleet, by), np.int64)
    n_groups = int(key.max()) + 1 if len(key) else 0
    n_days = stats.n_points.shape[1]

    def per_group(x):  # (n_vehicles, n_days) -> (n_groups, n_days)
        out = np.zeros((n_groups, n_days), np.float64)
        np.add.at(out, key, x)
        return out

    networked = np.asarray(fleet.networked, bool)
    online_v = (stats.n_valid > 0) & networked[:, None]
    drift_v = online_v & (stats.n_drift > 0)
    registered = np.repeat(np.bincount(key, minlength=n_groups)[:, None], n_days, 1).astype(np.float64)
    netw = np.repeat(np.bincount(key, weights=networked, minlength=n_groups)[:, None], n_days, 1)
    online = per_group(online_v.astype(np.float64))

    def per_event(rule: Rule, weight=None):
        out = np.zeros((n_groups, n_days), np.float64)
        if events is None or len(events) == 0:
            return out
        m = events.rule == rule
        d = china_day(events.start_ns[m], utc_offset_ns) - stats.day0
        keep = (d >= 0) & (d < n_days)
        w = np.ones(int(m.sum())) if weight is None else weight(events, m)
        np.add.at(out, (key[events.vehicle[m][keep]], d[keep]), w[keep])
        return out

    return GroupKpis(
        day0=stats.day0,
        registered=registered,
        networked=netw,
        online=online,
        network_rate=_ratio(netw, registered),
        online_rate=_ratio(online, netw),
        track_completeness=_ratio(per_group(stats.km_complete), per_group(stats.km_total)),
        valid_rate=_ratio(per_group(stats.n_valid), per_group(stats.n_points)),
        drift_rate=_ratio(per_group(drift_v.astype(np.float64)), online),
        drift_point_rate=_ratio(per_group(stats.n_drift), per_group(stats.n_valid)),
        overspeed_count=per_event(Rule.OVERSPEED),
        fatigue_hours=per_event(Rule.FATIGUE, lambda ev, m: (ev.end_ns[m] - ev.start_ns[m]) / 3.6e12),
        night_violations=per_event(Rule.NIGHT_COACH),
    )


def warm() -> None:
    """Compile the rule and statistics kernels on tiny inputs before the first real batch."""
    from wulian.core.vehicles.rules import warm as warm_rules

    warm_rules()
    t = np.array([0, 10 * 10**9], np.int64)
    tr = Tracks(np.array([0, 2], np.int64), t, np.array([30.0, 30.001]), np.array([120.0, 120.0]),
                np.array([50.0, 50.0]), np.zeros(2, np.int64), np.zeros(2, np.int64))
    day_stats(tr, 0, 1)
