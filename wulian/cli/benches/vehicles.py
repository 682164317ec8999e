"""``wulian bench vehicles``: every 两客一危 rule and the day's KPIs over a synthetic fleet-day.

Default: 5,000 vehicles x one day of 10-second positions (43.2 M positions). The numba kernels run on
everything; the baselines (the same rule kernel interpreted by CPython, and the KPI statistics in plain
numpy) run on a subset in the same process and are scaled per position for the ratio.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from wulian.core.kernels import vehicle_rules as vk
from wulian.core.timebase import NS_PER_S as _S
from wulian.core.timebase import china_day
from wulian.core.vehicles import kpi as vkpi
from wulian.core.vehicles.rules import Fleet, Geometry, Rule, RuleParams, Tracks, VehicleClass, detect, warm
from wulian.cli.benches import emit

_DAY_START = 1_764_086_400 * _S  # 2025-11-26 00:00 China time, a fixed synthetic day


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def synth(n_vehicles: int, steps: int, step_s: int = 10, seed: int = 1):
    """A fleet-day: drive/stop blocks of 15 min, speed 40-90 km/h while driving, GNSS noise, a few
    offline gaps and drift spikes, alarm bits now and then; coaches follow fixed routes."""
    rng = np.random.default_rng(seed)
    shape = (n_vehicles, steps)
    block = 90  # 15 min of 10 s steps
    n_blocks = -(-steps // block)
    drive = rng.random((n_vehicles, n_blocks)) < 0.35
    cruise = rng.uniform(40, 90, (n_vehicles, n_blocks))
    speed = np.repeat(np.where(drive, cruise, 0.0), block, axis=1)[:, :steps]
    speed += rng.normal(0, 2, shape)
    np.clip(speed, 0, None, out=speed)
    heading = rng.uniform(0, 2 * np.pi, (n_vehicles, 1)) + np.cumsum(rng.normal(0, 0.01, shape), axis=1)
    step_km = speed * (step_s / 3600)
    lat = np.cumsum(step_km * np.cos(heading) / 111.195, axis=1)
    lon = np.cumsum(step_km * np.sin(heading) / (111.195 * 0.85), axis=1)
    del heading, step_km
    lat += rng.uniform(22, 40, (n_vehicles, 1))
    lon += rng.uniform(105, 121, (n_vehicles, 1))
    ts = np.empty(shape, np.int64)
    ts[:] = _DAY_START + np.arange(steps, dtype=np.int64) * step_s * _S
    ts += rng.integers(0, step_s * _S, (n_vehicles, 1))
    # Offline gaps: 3 % of vehicles go silent for 20 min and reappear 5-20 km away.
    for v in np.flatnonzero(rng.random(n_vehicles) < 0.03):
        i = int(rng.integers(100, steps - 200))
        ts[v, i:] += 20 * 60 * _S
        lat[v, i:] += rng.uniform(0.05, 0.2)
    # Drift spikes: a point 50 km off, now and then.
    spikes = rng.random(shape) < 2e-5
    lat[spikes] += 0.5
    alarm = np.zeros(shape, np.int64)
    a = rng.random(shape) < 1e-4
    alarm[a] = 1 << rng.integers(0, 31, int(a.sum()))
    status = np.full(shape, 3, np.int64)  # ACC on, positioned
    starts = np.arange(n_vehicles + 1, dtype=np.int64) * steps
    tracks = Tracks(starts, ts.ravel(), lat.ravel(), lon.ravel(), speed.ravel(), alarm.ravel(), status.ravel())

    fleet = Fleet.uniform(n_vehicles)
    kind = rng.random(n_vehicles)
    fleet.vclass[:] = np.where(kind < 0.4, VehicleClass.COACH_LINE,
                               np.where(kind < 0.6, VehicleClass.COACH_CHARTER, VehicleClass.HAZMAT))
    fleet.night_ban[:] = (kind < 0.4) & (rng.random(n_vehicles) < 0.5)
    fleet.enterprise[:] = rng.integers(0, 200, n_vehicles)
    fleet.region[:] = rng.integers(0, 20, n_vehicles)
    fleet.networked[:] = rng.random(n_vehicles) < 0.98
    # Routes for line coaches: their own planned path (every 60th point), so they mostly stay on route.
    coach = np.flatnonzero(fleet.vclass == VehicleClass.COACH_LINE)
    routes = []
    for r, v in enumerate(coach):
        routes.append(list(zip(lat[v, ::60].tolist(), lon[v, ::60].tolist())))
        fleet.route[v] = r
    # Ten restricted squares around hazardous trucks' areas.
    haz = np.flatnonzero(fleet.vclass == VehicleClass.HAZMAT)
    polys = []
    for v in rng.choice(haz, size=min(10, len(haz)), replace=False):
        c_lat, c_lon = float(lat[v, steps // 2]), float(lon[v, steps // 2])
        polys.append([(c_lat - 0.05, c_lon - 0.05), (c_lat - 0.05, c_lon + 0.05), (c_lat + 0.05, c_lon + 0.05),
                      (c_lat + 0.05, c_lon - 0.05)])
    return tracks, fleet, Geometry.build(polys, routes)


def _subset(tr: Tracks, n: int) -> Tracks:
    end = int(tr.starts[n])
    return Tracks(tr.starts[: n + 1].copy(), tr.ts_ns[:end], tr.lat[:end], tr.lon[:end], tr.speed_kmh[:end],
                  tr.alarm_bits[:end], tr.status_bits[:end])


def _fleet_subset(f: Fleet, n: int) -> Fleet:
    return Fleet(*(getattr(f, name)[:n] for name in Fleet.__slots__))


def _interpreted_rules(tracks: Tracks, fleet: Fleet, g: Geometry, p: RuleParams) -> float:
    """Time the rule kernel's Python source (``py_func``) interpreted by CPython on the same inputs
    (its small helpers are still called through numba's dispatcher)."""
    orig = vk.vehicle_rules
    vk.vehicle_rules = orig.py_func  # detect() looks the kernel up on the module; restored below
    try:
        t0 = time.perf_counter()
        detect(tracks, fleet, g, p)
        return time.perf_counter() - t0
    finally:
        vk.vehicle_rules = orig


def run(args: argparse.Namespace) -> int:
    n_veh = 300 if args.quick else args.vehicles
    steps = int(args.hours * 3600 // 10)
    p = RuleParams()
    _log("compiling kernels ...")
    warm()
    _log(f"synthesising {n_veh} vehicles x {steps} positions ...")
    t0 = time.perf_counter()
    tracks, fleet, geom = synth(n_veh, steps)
    _log(f"  {len(tracks):,} positions in {time.perf_counter() - t0:.1f} s")

    _log("rules (numba) ...")
    t0 = time.perf_counter()
    ev = detect(tracks, fleet, geom, p)
    rules_s = time.perf_counter() - t0
    pps = len(tracks) / rules_s

    nb = max(1, min(args.baseline_vehicles, n_veh))
    _log(f"rules baseline: interpreted kernel on {nb} vehicles ...")
    base_tr, base_fleet = _subset(tracks, nb), _fleet_subset(fleet, nb)
    base_s = _interpreted_rules(base_tr, base_fleet, geom, p)
    base_pps = len(base_tr) / base_s

    day0 = int(china_day(_DAY_START))
    n_days = 2 if args.hours > 0 else 1  # offline gaps push a few points past midnight
    _log("KPIs (numba day statistics + numpy aggregation) ...")
    vkpi.day_stats(_subset(tracks, 1), day0, n_days)  # compile
    t0 = time.perf_counter()
    st = vkpi.day_stats(tracks, day0, n_days)
    ent = vkpi.group_kpis(st, fleet, ev, by="enterprise")
    reg = vkpi.group_kpis(st, fleet, ev, by="region")
    kpi_s = time.perf_counter() - t0

    nk = max(1, min(args.kpi_baseline_vehicles, n_veh))
    _log(f"KPI baseline: numpy day statistics on {nk} vehicles ...")
    sub = _subset(tracks, nk)
    t0 = time.perf_counter()
    vkpi.day_stats_numpy(sub, day0, n_days)
    kpi_np_scaled = (time.perf_counter() - t0) * len(tracks) / len(sub)

    counts = {r.name.lower(): int((ev.rule == r).sum()) for r in Rule}
    out = {
        "bench": "vehicles",
        "vehicles": n_veh,
        "positions": len(tracks),
        "rules_seconds": round(rules_s, 3),
        "positions_per_s": round(pps),
        "rules_baseline": {"kind": "same kernel interpreted (py_func)", "positions": len(base_tr),
                           "positions_per_s": round(base_pps)},
        "rules_speedup": round(pps / base_pps, 1),
        "events": counts,
        "kpi_seconds": round(kpi_s, 3),
        "kpi_baseline": {"kind": "numpy day statistics, scaled from subset", "positions": len(sub),
                         "seconds_scaled": round(kpi_np_scaled, 3)},
        "kpi_speedup": round(kpi_np_scaled / kpi_s, 2),
        "kpi_sample": {"enterprises": int(ent.registered.shape[0]), "regions": int(reg.registered.shape[0]),
                       "online_rate_region0": float(np.nan_to_num(reg.online_rate[0, 0])),
                       "track_completeness_region0": float(np.nan_to_num(reg.track_completeness[0, 0]))},
        "targets": {"positions_per_s": 5_000_000, "kpi_seconds": 10},
        "met": {"positions_per_s": pps >= 5_000_000, "kpi_seconds": kpi_s <= 10},
    }
    emit(out, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vehicles", help="两客一危 rules and KPIs over a fleet-day of positions")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="300 vehicles instead of --vehicles")
    p.add_argument("--vehicles", type=int, default=5000)
    p.add_argument("--hours", type=float, default=24.0, help="hours of 10-second positions per vehicle")
    p.add_argument("--baseline-vehicles", type=int, default=20)
    p.add_argument("--kpi-baseline-vehicles", type=int, default=300)
    p.set_defaults(func=run)
